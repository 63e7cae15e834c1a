"""chunk_* equals naive_recurrent_* (float64): outputs, final state, every gradient.

The default run checks a covering set of cases (every length, chunk size, initial-state kind,
DGD on/off, momentum on/off and objective appears, each with both memory kinds); the full grid
is marked slow (`pytest -m slow tests/ops`). Also: resuming from a returned state, inside a chunk
and at a chunk edge, equals one call.
"""

import itertools

import pytest

from memory_cases import OPS, assert_close, make_case, run

# (T, chunk_size, init, dgd, momentum, objective)
COVER = [
    (1, 1, "full", True, True, "l2"),
    (1, 64, "none", False, False, "dot"),
    (7, 16, "none", True, False, "dot"),
    (7, 1, "shared", False, True, "l2"),
    (63, 16, "full", False, True, "l2"),
    (63, 64, "shared", True, True, "dot"),
    (100, 16, "full", True, True, "l2"),
    (100, 64, "none", False, True, "dot"),
    (100, 1, "full", True, False, "l2"),
    (257, 64, "full", True, True, "l2"),
    (257, 16, "shared", True, False, "dot"),
    (257, 1, "full", False, False, "l2"),
    (128, 64, "full", True, True, "dot"),
]


def case_id(kind, T, C, init, dgd, mom, obj, act=None):
    parts = [kind, f"T{T}", f"C{C}", f"init-{init}", "dgd" if dgd else "nodgd",
             "mom" if mom else "nomom", obj]
    return "-".join(parts + ([act] if act else []))


def params(cases):
    out = []
    for kind in ("linear", "mlp"):
        for i, (T, C, init, dgd, mom, obj) in enumerate(cases):
            act = ("gelu", "silu")[i % 2] if kind == "mlp" else None
            out.append(pytest.param(kind, T, C, init, dgd, mom, obj, act,
                                    id=case_id(kind, T, C, init, dgd, mom, obj, act)))
    return out


def check(kind, T, C, init, dgd, mom, obj, act):
    naive, chunk = OPS[kind]
    inputs, state = make_case(kind, T, init=init, momentum=mom, seed=T * 7 + C, chunk_size=C)
    kw = dict(chunk_size=C, dgd=dgd, objective=obj)
    if act:
        kw["act"] = act
    assert_close(run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw))


@pytest.mark.parametrize("kind,T,C,init,dgd,mom,obj,act", params(COVER))
def test_chunk_equals_naive(kind, T, C, init, dgd, mom, obj, act):
    check(kind, T, C, init, dgd, mom, obj, act)


GRID = list(itertools.product((1, 7, 63, 100, 257), (1, 16, 64), ("none", "shared", "full"),
                              (True, False), (True, False), ("l2", "dot")))


@pytest.mark.slow
@pytest.mark.parametrize("kind,T,C,init,dgd,mom,obj,act", params(GRID))
def test_chunk_equals_naive_grid(kind, T, C, init, dgd, mom, obj, act):
    check(kind, T, C, init, dgd, mom, obj, act)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
@pytest.mark.parametrize("splits", [(37,), (48,), (5, 37, 80), (16, 32, 96)],
                         ids=["inside", "edge", "inside-x3", "edges-x3"])
def test_continuation(kind, impl, splits):
    """[0, T) in one call equals the pieces run in turn from each returned state (C = 16)."""
    import torch

    op = OPS[kind][0 if impl == "naive" else 1]
    T, C = 100, 16
    inputs, state = make_case(kind, T, init="full", seed=3, chunk_size=C)
    kw = dict(chunk_size=C, dgd=True, objective="l2")
    whole, final = op(**inputs, initial_state=state, output_final_state=True, **kw)
    outs, st = [], state
    bounds = (0,) + splits + (T,)
    for a, b in zip(bounds[:-1], bounds[1:]):
        piece = {n: (x[:, a:b]) for n, x in inputs.items()}
        o, st = op(**piece, initial_state=st, output_final_state=True, **kw)
        outs.append(o)
    assert_close({"o": whole, **final._asdict()},
                 {"o": torch.cat(outs, dim=1), **st._asdict()}, tol=1e-12)


@pytest.mark.parametrize("T,C,dgd,act", [(63, 16, True, "gelu"), (100, 1, False, "silu"),
                                         (257, 64, True, "silu")])
def test_hidden_norm_chunk_equals_naive(T, C, dgd, act):
    """`hidden_norm` (W1's step / max(1, ||z||^2)): chunk == naive, with W2 large enough that
    ||z||^2 falls on both sides of 1."""
    from hope.ops import MLPMemoryState

    naive, chunk = OPS["mlp"]
    inputs, state = make_case("mlp", T, init="full", seed=T + C, chunk_size=C)
    state = MLPMemoryState(state.W1, (state.W2 * 4).detach().requires_grad_(), state.S1, state.S2)
    kw = dict(chunk_size=C, dgd=dgd, objective="l2", act=act, hidden_norm=True)
    assert_close(run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw))


def test_hidden_norm_step():
    """One token, C = 1, no momentum, no retention: W1 moves by -eta err z^T / max(1, ||z||^2)
    and W2 exactly as without the normalization."""
    import torch
    from hope.ops import MLPMemoryState, naive_recurrent_mlp_memory
    from hope.ops.checks import activation

    g = torch.Generator().manual_seed(0)
    D, E = 4, 8
    for scale in (0.1, 3.0):                                   # ||z||^2 below and above 1
        W1 = torch.randn(1, 1, D, E, generator=g, dtype=torch.float64) * 0.3
        W2 = torch.randn(1, 1, E, D, generator=g, dtype=torch.float64) * scale
        k = torch.nn.functional.normalize(torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64), dim=-1)
        v = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64)
        eta, one, zero = (torch.full((1, 1, 1), x, dtype=torch.float64) for x in (0.3, 1.0, 0.0))
        out = {}
        for hn in (False, True):
            _, st = naive_recurrent_mlp_memory(k, k, v, eta, one, zero, MLPMemoryState(W1, W2),
                                               output_final_state=True, chunk_size=1, dgd=False,
                                               hidden_norm=hn)
            out[hn] = st
        z = activation("gelu")[0](W2[0, 0] @ k[0, 0, 0])
        err = k[0, 0, 0] + W1[0, 0] @ z - v[0, 0, 0]
        n = max(1.0, float(z.square().sum()))
        assert (float(z.square().sum()) > 1) == (scale > 1)
        torch.testing.assert_close(out[True].W1[0, 0], W1[0, 0] - 0.3 * torch.outer(err, z) / n)
        torch.testing.assert_close(out[False].W1[0, 0], W1[0, 0] - 0.3 * torch.outer(err, z))
        torch.testing.assert_close(out[True].W2, out[False].W2)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T,C,dgd,obj", [(63, 16, True, "l2"), (100, 1, False, "l2"), (257, 64, True, "dot")])
def test_momentum_norm_chunk_equals_naive(kind, T, C, dgd, obj):
    """`momentum_norm` (S = beta S - (1 - beta) eta g): chunk == naive, outputs, states, gradients."""
    naive, chunk = OPS[kind]
    inputs, state = make_case(kind, T, init="full", seed=T + 3 * C, chunk_size=C)
    kw = dict(chunk_size=C, dgd=dgd, objective=obj, momentum_norm=True)
    if kind == "mlp":
        kw["hidden_norm"] = True
    assert_close(run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw))


def test_momentum_norm_is_a_running_mean():
    """Linear memory, C = 1, no DGD, alpha = 1, constant beta: momentum_norm equals the plain rule
    with eta scaled by (1 - beta) (so the weights move by at most eta per token under a constant
    gradient), and differs from the plain rule."""
    import torch
    from hope.ops import naive_recurrent_linear_memory

    inputs, state = make_case("linear", 40, init="full", seed=5)
    inputs = {n: x.detach() for n, x in inputs.items()}
    inputs["alpha"] = torch.ones_like(inputs["alpha"])
    inputs["beta"] = torch.full_like(inputs["beta"], 0.9)
    state = type(state)(*(x.detach() if torch.is_tensor(x) else x for x in state))
    kw = dict(initial_state=state, chunk_size=1, dgd=False, output_final_state=True)
    o_norm, s_norm = naive_recurrent_linear_memory(**inputs, momentum_norm=True, **kw)
    scaled = dict(inputs, eta=inputs["eta"] * 0.1)
    o_ref, s_ref = naive_recurrent_linear_memory(**scaled, **kw)
    torch.testing.assert_close(o_norm, o_ref)
    torch.testing.assert_close(s_norm.W, s_ref.W)
    o_plain, _ = naive_recurrent_linear_memory(**inputs, **kw)
    assert (o_plain - o_norm).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("n_read", [0, 1, 2])
def test_reads_of_the_last_heads(kind, n_read):
    """q with Hq < H heads reads only the last Hq heads: chunk == naive (outputs, state, every
    gradient), the reads equal the full op's reads of those heads and the final state is the
    full op's; also when the call resumes inside a chunk (the chunk-start-state path)."""
    import torch

    naive, chunk = OPS[kind]
    T, C, H = 37, 16, 3
    inputs, state = make_case(kind, T, init="full", H=H, seed=11 + n_read, chunk_size=C)
    kw = dict(chunk_size=C, dgd=True, objective="l2")
    part = dict(inputs, q=inputs["q"][:, :, H - n_read:].detach().requires_grad_())
    got = run(chunk, part, state, **kw)
    assert got["o"].shape == (2, T, n_read, 4)
    assert_close(run(naive, part, state, **kw), got)
    full = run(chunk, inputs, state, **kw)
    assert_close({"o": full["o"][:, :, H - n_read:]}, {"o": got["o"]}, tol=1e-12)
    assert_close({n: v for n, v in full.items() if n.startswith("final.")},
                 {n: v for n, v in got.items() if n.startswith("final.")}, tol=1e-12)
    # resume at token 21 (inside the second chunk): pieces == one call
    with torch.no_grad():
        o1, st = chunk(**{n: x[:, :21] for n, x in part.items()}, initial_state=state,
                       output_final_state=True, **kw)
        o2, st = chunk(**{n: x[:, 21:] for n, x in part.items()}, initial_state=st,
                       output_final_state=True, **kw)
        one, final = chunk(**part, initial_state=state, output_final_state=True, **kw)
    assert_close({"o": one, **final._asdict()}, {"o": torch.cat([o1, o2], dim=1), **st._asdict()},
                 tol=1e-12)


def test_query_heads_checked():
    """More query heads than memory heads, or another width, is a clear error."""
    import torch

    from hope.ops import chunk_linear_memory

    inputs, _ = make_case("linear", 5, H=2)
    for q in (torch.cat([inputs["q"]] * 2, dim=2), inputs["q"][..., :3]):
        with pytest.raises(ValueError, match="q must be"):
            chunk_linear_memory(**dict(inputs, q=q))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T,C,lo,hi,mom,obj", [(63, 16, 0.0, 0.9, True, "l2"), (100, 1, 1.0, 1.9, False, "l2"),
                                              (257, 64, 1.2, 1.95, True, "dot"), (40, 16, 1.5, 2.0, True, "l2")])
def test_separate_dgd_rate_chunk_equals_naive(kind, T, C, lo, hi, mom, obj):
    """A DGD factor `alpha I - dgd_eta k k^T` with its own rate, also above alpha (a negative
    eigenvalue along k): chunk == naive, outputs, states and every gradient (dgd_eta's included)."""
    import torch

    naive, chunk = OPS[kind]
    inputs, state = make_case(kind, T, init="full", momentum=mom, seed=T + C, chunk_size=C)
    g = torch.Generator().manual_seed(T)
    inputs["dgd_eta"] = (lo + (hi - lo) * torch.rand(inputs["eta"].shape, generator=g,
                                                     dtype=torch.float64)).requires_grad_()
    kw = dict(chunk_size=C, dgd=True, objective=obj, momentum_norm=mom)
    ref, got = run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw)
    assert ref["grad.dgd_eta"].abs().max() > 0
    assert_close(ref, got)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_dgd_rate_defaults_to_eta_and_is_checked(impl):
    import torch

    inputs, state = make_case("linear", 20, init="full", seed=2, chunk_size=4)
    kw = dict(initial_state=state, chunk_size=4, output_final_state=True)
    op = OPS["linear"][impl == "chunk"]
    o, _ = op(**inputs, **kw)
    o_same, _ = op(**inputs, dgd_eta=inputs["eta"], **kw)
    torch.testing.assert_close(o, o_same)
    o_other, _ = op(**inputs, dgd_eta=2 * inputs["eta"], **kw)
    assert (o - o_other).abs().max() > 1e-4
    with pytest.raises(ValueError, match="dgd_eta must be"):
        op(**inputs, dgd_eta=inputs["eta"][:, :-1], **kw)


@pytest.mark.parametrize("T,C,init,mom,obj,hidden_norm,act,n_read", [
    (63, 16, "full", True, "l2", True, "gelu", 2), (100, 1, "shared", False, "l2", False, "silu", 2),
    (257, 64, "none", True, "dot", True, "gelu", 1), (40, 16, "full", True, "l2", True, "silu", 0)])
def test_hidden_dgd_chunk_equals_naive(T, C, init, mom, obj, hidden_norm, act, n_read):
    """An MLP memory with the DGD factor on its output layer's unit hidden codes (`dgd_layer="hidden"`),
    with a DGD rate of its own: chunk == naive, outputs, states and every gradient; reads of some
    heads only."""
    import torch

    naive, chunk = OPS["mlp"]
    inputs, state = make_case("mlp", T, init=init, momentum=mom, seed=T + 5 * C, chunk_size=C)
    if init == "none":                       # the all-zero MLP is a fixed point: start from W2 != 0
        from hope.ops import MLPMemoryState
        state = MLPMemoryState(None, (0.5 * torch.randn(2, 8, 4, dtype=torch.float64)).requires_grad_())
    g = torch.Generator().manual_seed(T)
    inputs["dgd_eta"] = (1.5 * torch.rand(inputs["eta"].shape, generator=g, dtype=torch.float64)).requires_grad_()
    inputs["q"] = inputs["q"][:, :, 2 - n_read:].detach().requires_grad_()
    kw = dict(chunk_size=C, dgd=True, objective=obj, momentum_norm=mom, hidden_norm=hidden_norm, act=act,
              dgd_layer="hidden")
    ref, got = run(naive, inputs, state, **kw), run(chunk, inputs, state, **kw)
    assert ref["grad.dgd_eta"].abs().max() > 0
    assert_close(ref, got)
    key = run(naive, inputs, state, **{**kw, "dgd_layer": "key"})
    assert (key["o"] - ref["o"]).abs().max() > 1e-6 if n_read else (key["final.W1"] - ref["final.W1"]).abs().max() > 1e-6
