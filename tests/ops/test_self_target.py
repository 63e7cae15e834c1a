"""`self_target=True`: the ops learn the memory's own read of v at the chunk-start state (Hope's
self-generated targets, SPEC 4.2), formed inside the op.

* the naive op with `self_target` equals the naive op called chunk by chunk with the targets read
  outside at each chunk's start state (the definition the layers used before, gradients included);
* chunk == naive (float64) for outputs, final states and every gradient, over objectives, DGD
  layers, read heads, initial states, and a call resumed inside a chunk.
"""

import pytest
import torch

from hope.ops import LinearMemoryState, MLPMemoryState
from hope.ops.checks import activation
from memory_cases import OPS, assert_close, make_case, run


def read(kind, state, x, act="gelu"):
    """M(x) at a state's current weights: x [B, T, H, D]."""
    if kind == "linear":
        return torch.einsum("bhij,bthj->bthi", state.W, x)
    sigma = activation(act)[0]
    h = torch.einsum("bhed,bthd->bthe", state.W2, x)
    return x + torch.einsum("bhde,bthe->bthd", state.W1, sigma(h))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_naive_self_target_is_reads_at_chunk_starts(kind):
    """One call with self_target == chunk-by-chunk calls on targets read at each chunk start."""
    naive = OPS[kind][0]
    T, C = 40, 16
    inputs, state = make_case(kind, T, init="full", seed=11, chunk_size=C)
    kw = dict(chunk_size=C, dgd=True, objective="l2")
    ref = run(naive, inputs, state, self_target=True, **kw)

    def pieces(**inp):
        st, outs = state, []
        for t0 in range(0, T, C):
            piece = {n: x[:, t0:t0 + C] for n, x in inp.items()}
            piece["v"] = read(kind, st, piece["v"])          # ("full" states are [B, H, ...])
            o, st = naive(**piece, initial_state=st, output_final_state=True, **kw)
            outs.append(o)
        return torch.cat(outs, dim=1), st

    def op(initial_state, output_final_state, **inp):
        return pieces(**inp)

    got = run(op, inputs, state)                          # (run passes the state; pieces use it)
    assert ref["grad.v"].abs().max() > 0
    assert_close(ref, got, tol=1e-12)
    plain = run(naive, inputs, state, **kw)
    assert (plain["final.W" if kind == "linear" else "final.W1"]
            - ref["final.W" if kind == "linear" else "final.W1"]).abs().max() > 1e-6


CASES = [  # (T, C, init, objective, dgd_layer, n_read, momentum_norm)
    (63, 16, "full", "l2", "key", 2, False),
    (100, 16, "shared", "l2", "key", 0, True),
    (40, 1, "full", "l2", "key", 1, False),
    (57, 64, "full", "dot", "key", 2, False),
    (63, 16, "full", "l2", "hidden", 0, True),
]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T,C,init,obj,dgd_layer,n_read,mnorm", CASES)
def test_self_target_chunk_equals_naive(kind, T, C, init, obj, dgd_layer, n_read, mnorm):
    if kind == "linear" and dgd_layer == "hidden":
        pytest.skip("linear memories have one layer")
    naive, chunk = OPS[kind]
    inputs, state = make_case(kind, T, init=init, seed=T + C, chunk_size=C)
    inputs["q"] = inputs["q"][:, :, 2 - n_read:].detach().requires_grad_()
    kw = dict(chunk_size=C, dgd=True, objective=obj, momentum_norm=mnorm, self_target=True)
    if kind == "mlp":
        kw.update(dgd_layer=dgd_layer, hidden_norm=True)
    ref, got = run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw)
    assert ref["grad.v"].abs().max() > 0
    assert_close(ref, got)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_self_target_resumed_inside_a_chunk(kind):
    """Pieces that cut chunks (5, 37, 80 of 100, C = 16) equal one call, chunk op vs naive."""
    naive, chunk = OPS[kind]
    T, C = 100, 16
    inputs, state = make_case(kind, T, init="full", seed=5, chunk_size=C)
    kw = dict(chunk_size=C, dgd=True, objective="l2", self_target=True)
    whole, final = naive(**inputs, initial_state=state, output_final_state=True, **kw)
    outs, st = [], state
    bounds = (0, 5, 37, 80, T)
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, st = chunk(**{n: x[:, a:b] for n, x in inputs.items()}, initial_state=st,
                      output_final_state=True, **kw)
        outs.append(o)
    assert isinstance(st, LinearMemoryState if kind == "linear" else MLPMemoryState)
    assert_close({"o": whole, **final._asdict()}, {"o": torch.cat(outs, dim=1), **st._asdict()})
