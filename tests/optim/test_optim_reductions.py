"""Each deep optimizer reduced to a known optimizer equals it step for step (bitwise where the
operations are the same, SPEC section 5): DeltaMomentum(delta=0) == SGD(momentum), M3 without slow
memory and second moment == Muon, Muon / M3 fallbacks == AdamW, DMGD with a frozen memory == SGD / Muon
without momentum; and the foreach paths equal the single-tensor paths."""

import pytest
import torch

from hope.optim import DMGD, M3, DeltaMomentum, Muon

SHAPES = [(6, 4), (3, 7), (5,), (2, 3, 4), ()]


def make_params(shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def make_grads(shapes, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def run(make_opt, shapes=SHAPES, steps=7, lrs=None):
    """Apply fixed gradients for `steps` steps; optionally change every group's lr per step (a schedule)."""
    params = make_params(shapes)
    opt = make_opt(params)
    traj = []
    for t, grads in enumerate(make_grads(shapes, steps)):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        traj.append([p.detach().clone() for p in params])
    return traj


def assert_same(a, b):
    for step_a, step_b in zip(a, b, strict=True):
        for x, y in zip(step_a, step_b, strict=True):
            assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize(
    "kw",
    [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.8, weight_decay=0.1), dict(momentum=0.0)],
    ids=["momentum", "nesterov", "weight_decay", "no_momentum"],
)
def test_delta_momentum_without_delta_is_sgd(kw, foreach):
    lrs = [0.1, 0.05, 0.05, 0.02, 0.02, 0.01, 0.01]
    ours = run(lambda ps: DeltaMomentum(ps, lr=0.1, delta=0.0, foreach=foreach, **kw), lrs=lrs)
    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.1, foreach=foreach, **kw), lrs=lrs)
    assert_same(ours, ref)


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_m3_without_slow_memory_and_second_moment_is_muon(nesterov, foreach):
    common = dict(lr=0.02, nesterov=nesterov, weight_decay=0.01, foreach=foreach)
    ours = run(lambda ps: M3(ps, betas=(0.9, 0.999), alpha=0.0, second_moment=False, **common))
    ref = run(lambda ps: Muon(ps, momentum=0.9, **common))
    assert_same(ours, ref)


@pytest.mark.parametrize("opt_cls", [Muon, M3])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_fallback_is_adamw(opt_cls, foreach):
    """Non-matrix parameters (and matrices flagged use_muon=False) follow torch.optim.AdamW bitwise."""
    shapes = [(5,), (3, 4, 2), (), (4, 3)]
    kw = dict(lr=1e-2, weight_decay=0.1, foreach=foreach)

    def ours(ps):
        return opt_cls([{"params": ps[:3]}, {"params": ps[3:], "use_muon": False}], adamw_betas=(0.9, 0.99), adamw_eps=1e-6, **kw)

    a = run(ours, shapes=shapes, lrs=[1e-2, 1e-2, 5e-3, 5e-3, 1e-3, 1e-3, 1e-3])
    b = run(lambda ps: torch.optim.AdamW(ps, betas=(0.9, 0.99), eps=1e-6, **kw), shapes=shapes,
            lrs=[1e-2, 1e-2, 5e-3, 5e-3, 1e-3, 1e-3, 1e-3])
    assert_same(a, b)


def test_muon_matrix_path_matches_torch_muon_math():
    """Muon's matrix path is torch.optim.Muon's algorithm (same momentum, NS coefficients, lr scaling);
    torch computes Newton-Schulz in bfloat16, we in float32 on CPU, so compare loosely."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon not available")
    shapes = [(8, 4), (4, 8)]
    for adjust, torch_fn in [("spectral", "original"), ("match_rms", "match_rms_adamw")]:
        a = run(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, adjust_lr=adjust), shapes=shapes, steps=3)
        b = run(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1, adjust_lr_fn=torch_fn), shapes=shapes, steps=3)
        for x, y in zip(a[-1], b[-1]):
            torch.testing.assert_close(x, y, atol=0.03, rtol=0)


def test_dmgd_with_frozen_memory_is_sgd():
    ours = run(lambda ps: DMGD(ps, lr=0.1, inner_lr=0.0))
    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.1))
    for x, y in zip(ours[-1], ref[-1]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_dmgd_with_frozen_memory_and_newton_schulz_is_muon_without_momentum():
    shapes = [(6, 4), (3, 7)]
    ours = run(lambda ps: DMGD(ps, lr=0.02, inner_lr=0.0, nonlinearity="newton_schulz"), shapes=shapes)
    ref = run(lambda ps: Muon(ps, lr=0.02, momentum=0.0, nesterov=False), shapes=shapes)
    for x, y in zip(ours[-1], ref[-1]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_dmgd_first_step_is_normalized_gradient_step_then_memory_learns():
    """W1 starts at 0 (m is the identity), so the first update is the gradient; then the memory moves."""
    params = make_params([(6, 4)])
    opt = DMGD(params, lr=0.1)
    w0 = params[0].detach().clone()
    grads = make_grads([(6, 4)], 3)
    params[0].grad = grads[0][0].clone()
    opt.step()
    # the inner step at t=1 has zero error (b = k = m(k)) so the update is exactly -lr g (up to rounding)
    torch.testing.assert_close(params[0].detach(), w0 - 0.1 * grads[0][0], rtol=1e-12, atol=1e-12)
    for g in grads[1:]:
        params[0].grad = g[0].clone()
        opt.step()
    assert opt.state[params[0]]["w1"].abs().max() > 0


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps, fe: DeltaMomentum(ps, lr=0.05, foreach=fe),
        lambda ps, fe: DeltaMomentum(ps, lr=0.05, precondition=True, nesterov=True, weight_decay=0.1, foreach=fe),
        lambda ps, fe: Muon(ps, weight_decay=0.1, foreach=fe),
        lambda ps, fe: M3(ps, slow_every=3, weight_decay=0.1, foreach=fe),
        lambda ps, fe: M3(ps, slow_every=2, normalize=False, nesterov=False, foreach=fe),
    ],
    ids=["delta", "delta_precond_nesterov_wd", "muon", "m3", "m3_literal"],
)
def test_foreach_equals_single_tensor(make_opt):
    assert_same(run(lambda ps: make_opt(ps, True)), run(lambda ps: make_opt(ps, False)))


def test_delta_momentum_erases_the_current_gradient_direction():
    """With alpha = 1, delta = 1 and a rank-1 gradient g = u v^T, the buffer loses its component along v
    before the new gradient is written (Eq. 49)."""
    p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    opt = DeltaMomentum([p], lr=1.0, momentum=0.999999, delta=1.0)
    p.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    b0 = opt.state[p]["momentum_buffer"].clone()
    u, v = torch.randn(3, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    p.grad = u @ v.T
    opt.step()
    b1 = opt.state[p]["momentum_buffer"]
    expected = 0.999999 * b0 - (b0 @ v) @ v.T / (v.T @ v) + u @ v.T
    torch.testing.assert_close(b1, expected)
