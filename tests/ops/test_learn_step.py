"""The learn-only chunk step of the MLP memory with its backward written out
(`hope/ops/mlp_memory/learn_step.py`) computes the same function as the autograd-tracked chunk
step `_mlp_chunk` (fresh chunk, self-generated l2 targets, no read heads): states and every input
gradient in float64, with some chunk-end states unused (None output gradients), and its double
backward (a meta-learned outer loop differentiates the backward) against finite differences.
Through the whole op, chunk == naive for this case is tested in `test_self_target.py`."""

import pytest
import torch

import hope.ops.mlp_memory.chunk as chunk_op
from hope.ops.checks import activation
from hope.ops.mlp_memory.learn_step import learn_chunk
from hope.ops.operators import chunk_decays, keyed_operators, loop_operators

B, H, L, D, E = 2, 3, 4, 5, 7


def inputs(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, low=0.0):
        return (low + scale * torch.rand(*shape, generator=g, dtype=dtype)) if low else \
            scale * torch.randn(*shape, generator=g, dtype=dtype)
    k = torch.nn.functional.normalize(r(B, H, 1, L, D), dim=-1)
    return [x.requires_grad_() for x in (
        r(B, H, D, E, scale=0.5), r(B, H, E, D, scale=0.5), r(B, H, D, E, scale=0.1),
        r(B, H, E, D, scale=0.1), k, r(B, H, 1, L, D), r(B, H, 1, L, scale=0.4, low=1e-3),
        r(B, H, 1, L, scale=0.2, low=0.8), r(B, H, 1, L, scale=0.9, low=1e-3))]


def operators(k, eta, alpha, beta):
    dec = chunk_decays(alpha, beta)
    return loop_operators(keyed_operators(k, k, eta, dec, True, eta * (1 - beta)), u_column=True).chunks()[0]


def reference(act, hidden_norm):
    sigma, dsigma = activation(act)

    def f(W1, W2, S1, S2, k, v, eta, alpha, beta):
        lop = operators(k, eta, alpha, beta)
        k0 = k[:, :, 0]
        out = chunk_op._mlp_chunk(W1, W2, S1, S2, None, None, lop, k0, k0[:, :0], v[:, :, 0],
                                  k0.new_zeros(B, H, L, L), None, r=slice(H, H), sigma=sigma,
                                  dsigma=dsigma, objective="l2", hidden_norm=hidden_norm, self_target=True)
        return out[1:5]
    return f


def fused(act, hidden_norm):
    def f(W1, W2, S1, S2, k, v, eta, alpha, beta):
        lop = operators(k, eta, alpha, beta)
        return learn_chunk(W1, W2, S1, S2, k[:, :, 0], v[:, :, 0], lop.op[..., L:, :], lop.gamma_C, lop.m_C,
                           lop.P_C, lop.e_last, lop.d_last, act, hidden_norm)
    return f


@pytest.mark.parametrize("act,hidden_norm", [("gelu", True), ("gelu", False), ("silu", True)])
def test_learn_step_equals_the_autograd_chunk_step(act, hidden_norm):
    x = inputs(seed=3)
    ref, got = reference(act, hidden_norm)(*x), fused(act, hidden_norm)(*x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-13)
    cot = [torch.randn_like(t) for t in ref]
    g_ref = torch.autograd.grad(ref, x, cot, retain_graph=True)
    g_got = torch.autograd.grad(got, x, cot, retain_graph=True)
    for a, b in zip(g_ref, g_got):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    # only some chunk-end states used: the others' output gradients are None
    g_ref = torch.autograd.grad(ref[0].sum() + ref[3].square().sum(), x)
    g_got = torch.autograd.grad(got[0].sum() + got[3].square().sum(), x)
    for a, b in zip(g_ref, g_got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_learn_step_double_backward():
    x = inputs(seed=5)
    assert torch.autograd.gradgradcheck(fused("gelu", True), x)


def test_the_op_takes_the_learn_step_for_learn_only_calls(monkeypatch):
    """`chunk_mlp_memory` with no read heads and self-generated l2 targets runs the learn step,
    and gives what the autograd-tracked chunk step gives (`LEARN_STEP=False`)."""
    calls = []
    real = chunk_op.learn_chunk
    monkeypatch.setattr(chunk_op, "learn_chunk", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    T, C = 40, 16
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64).requires_grad_()
    eta, alpha, beta = (0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64) + s for s in (0.01, 0.69, 0.0))
    W1 = (0.3 * torch.randn(H, D, 2 * D, generator=g, dtype=torch.float64)).requires_grad_()
    W2 = (0.3 * torch.randn(H, 2 * D, D, generator=g, dtype=torch.float64)).requires_grad_()
    from hope.ops import MLPMemoryState, chunk_mlp_memory
    outs = {}
    for flag in (True, False):
        monkeypatch.setattr(chunk_op, "LEARN_STEP", flag)
        _, st = chunk_mlp_memory(k[:, :, :0], k, v, eta, alpha, beta, MLPMemoryState(W1, W2), True, chunk_size=C,
                                 self_target=True, hidden_norm=True, momentum_norm=True)
        loss = sum((t * t).sum() for t in (st.W1, st.W2, st.S1, st.S2, st.W1_chunk, st.W2_chunk))
        outs[flag] = (st, torch.autograd.grad(loss, (v, W1, W2)))
    assert len(calls) == 3                                  # two full chunks and the tail
    for a, b in zip(outs[True][0][:6] + outs[True][1], outs[False][0][:6] + outs[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert outs[True][0].pos == outs[False][0].pos == T % C


@pytest.mark.parametrize("impl", ["chunk", "naive"])
@pytest.mark.parametrize("learn_step", [True, False])
def test_memories_sharing_their_inputs(monkeypatch, impl, learn_step):
    """`groups=G`: G memories stacked on the heads learn from one set of inputs (the chunk op builds
    the operators once for them): equal to the inputs repeated G times, gradients included; also
    on the path without the learn step, where the op repeats them itself."""
    from hope.ops import MLPMemoryState, chunk_mlp_memory, naive_recurrent_mlp_memory

    monkeypatch.setattr(chunk_op, "LEARN_STEP", learn_step)
    op = chunk_mlp_memory if impl == "chunk" else naive_recurrent_mlp_memory
    G, T, C, dt = 3, 21, 8, torch.float64
    g = torch.Generator().manual_seed(4)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=dt), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, D, generator=g, dtype=dt).requires_grad_()
    eta = (0.3 * torch.rand(B, T, H, generator=g, dtype=dt) + 0.01).requires_grad_()
    alpha = (0.3 * torch.rand(B, T, H, generator=g, dtype=dt) + 0.69).requires_grad_()
    beta = (0.8 * torch.rand(B, T, H, generator=g, dtype=dt)).requires_grad_()
    W1 = (0.3 * torch.randn(G * H, D, 2 * D, generator=g, dtype=dt)).requires_grad_()
    W2 = (0.3 * torch.randn(G * H, 2 * D, D, generator=g, dtype=dt)).requires_grad_()
    inputs = (k, v, eta, alpha, beta, W1, W2)
    kw = dict(chunk_size=C, self_target=True, hidden_norm=True, momentum_norm=True)
    outs = []
    for groups in (G, 1):
        xs = (k, v, eta, alpha, beta)
        if groups == 1:
            xs = tuple(x.repeat(1, 1, G, *([1] * (x.dim() - 3))) for x in xs)
        _, st = op(k[:, :, :0], *xs, MLPMemoryState(W1, W2), True, groups=groups, **kw)
        loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=dt).view(t.shape)).sum()
                   for t in (st.W1, st.W2, st.S1, st.S2))
        outs.append((st, torch.autograd.grad(loss, inputs)))
    for a, b in zip(outs[0][0][:4] + outs[0][1], outs[1][0][:4] + outs[1][1]):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="groups"):
        op(k[:, :, :1], k, v, eta, alpha, beta, MLPMemoryState(W1, W2), True, groups=G, **kw)
