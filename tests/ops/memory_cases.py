"""Inputs and comparisons shared by the tests of the memory ops (tests/ops).

`make_case` builds float64 inputs in the documented ranges (unit-norm keys, eta in (0, 1/2)
scaled down for large chunks, alpha in (0.8, 1), beta in (0, 0.6) or exactly 0), optionally an
initial state; `run` calls an op and backpropagates a fixed random projection of its outputs and
final state; `assert_close` compares two such runs tensor by tensor with a relative error bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hope.ops import (LinearMemoryState, MLPMemoryState, chunk_linear_memory, chunk_mlp_memory,
                      naive_recurrent_linear_memory, naive_recurrent_mlp_memory)

OPS = {
    "linear": (naive_recurrent_linear_memory, chunk_linear_memory),
    "mlp": (naive_recurrent_mlp_memory, chunk_mlp_memory),
}


def make_case(kind, T, init="none", momentum=True, B=2, H=2, D=4, expansion=2, seed=0,
              chunk_size=1, dtype=torch.float64):
    """Leaf tensors (requires_grad) for one test case.

    eta is drawn in (0, eta_max) with eta_max = 0.5 * min(1, D / chunk_size): a mini-batch of C
    unit keys in D dimensions takes a step of about eta * C / D along each direction, and
    the comparisons are only meaningful while the inner loop does not diverge.

    init: "none" (state None), "shared" (weights only, [H, ...], broadcast over the batch) or
    "full" (weights and momenta, [B, H, ...]).
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    def unif(lo, hi):
        return (lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=dtype)).requires_grad_()

    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=dtype), dim=-1).requires_grad_()
    q = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=dtype), dim=-1).requires_grad_()
    eta_max = 0.5 * min(1.0, D / chunk_size)
    inputs = dict(q=q, k=k, v=rnd(B, T, H, D), eta=unif(0.0, eta_max), alpha=unif(0.8, 1.0),
                  beta=unif(0.0, 0.6) if momentum else torch.zeros(B, T, H, dtype=dtype,
                                                                   requires_grad=True))
    E = expansion * D
    state = None
    if kind == "linear":
        if init == "shared":
            state = LinearMemoryState(rnd(H, D, D, scale=0.5))
        elif init == "full":
            state = LinearMemoryState(rnd(B, H, D, D, scale=0.5), rnd(B, H, D, D, scale=0.1))
    else:
        s = 0.5 / D ** 0.5
        if init == "shared":
            state = MLPMemoryState(rnd(H, D, E, scale=s), rnd(H, E, D, scale=2 * s))
        elif init == "full":
            state = MLPMemoryState(rnd(B, H, D, E, scale=s), rnd(B, H, E, D, scale=2 * s),
                                   rnd(B, H, D, E, scale=0.1 * s), rnd(B, H, E, D, scale=0.1 * s))
    return inputs, state


def state_tensors(state):
    """The tensor fields of a state (None fields skipped)."""
    if state is None:
        return []
    return [x for x in state if isinstance(x, torch.Tensor)]


def run(op, inputs, state, seed=1, **kw):
    """Call `op`, backpropagate a random projection of (o, final state); return every tensor.

    Returns a dict: "o", "final.<field>", "grad.<input>", "grad.state<i>".
    """
    for x in list(inputs.values()) + state_tensors(state):
        x.grad = None
    o, final = op(**inputs, initial_state=state, output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum()
    out = {"o": o.detach()}
    for name, x in final._asdict().items():
        if isinstance(x, torch.Tensor):
            loss = loss + (x * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)).sum()
            out[f"final.{name}"] = x.detach()
        else:
            out[f"final.{name}"] = x
    leaves = list(inputs.items()) + [(f"state{i}", x) for i, x in enumerate(state_tensors(state))]
    grads = torch.autograd.grad(loss, [x for _, x in leaves], allow_unused=True)
    for (name, _), gr in zip(leaves, grads):
        out[f"grad.{name}"] = gr
    return out


def rel_err(a, b):
    """max |a - b| / max |a| (0 when both are zero)."""
    a, b = a.detach(), b.detach()
    scale = a.abs().max()
    diff = (a - b).abs().max()
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close(ref, got, tol=1e-9):
    assert ref.keys() == got.keys()
    for name in ref:
        a, b = ref[name], got[name]
        if a is None or b is None or not isinstance(a, torch.Tensor):
            assert (a is None) == (b is None) if not isinstance(a, int) else a == b, name
            continue
        assert a.shape == b.shape, name
        if a.numel() == 0:
            continue
        assert a.abs().max() < 1e4, f"{name}: reference diverged, the comparison means nothing"
        err = rel_err(a, b)
        assert err < tol, f"{name}: relative error {err:.3e}"
