"""One chunk of an MLP memory that only learns, with its backward written out (issue 15).

Hope's projection memories (k, v, q, eta, alpha) learn from self-generated targets and are never
read inside the op (the layer reads them at chunk starts), so their chunk step is the state update
alone. `_mlp_chunk` in `chunk.py` computes it with autograd-tracked products; this module computes
the same function as one `torch.autograd.Function` whose backward is written by hand:

* each state-sized gradient is formed once, by one product over the chunk's tokens with all its
  contributions stacked on the token axis, accumulated in place into the decayed output gradient
  (autograd forms one state-sized product per use of a state and adds them);
* the decays' scalar gradients are batched dot products over the states, with no temporaries.

On CPU the projection memories' states do not fit the cache (four 5.9 MB tensors per `hope_tiny`
layer at batch 16), so every pass over a state costs memory traffic; this halves the passes of the
backward. The forward is the same arithmetic as `_mlp_chunk` (its fresh, self-target, l2 branch
without read heads); `tests/ops/test_learn_step.py` checks both directions against it in float64,
the double backward included.

Per batch and head, with `W1: [D, E]`, `W2: [E, D]`, momenta `S1`, `S2` of the same shapes, keys
and values `k, v: [L, D]` of a chunk of L tokens, and the keyed layer's chunk operator `op`
(`[L, 3L]`, the Z rows of `LoopOperators.op`):

    h = k W2^T, hv = v W2^T, z = sigma(h), KS = k S2^T
    err   = (k - v) + (z - sigma(hv)) W1^T          (l2 error of M_c(k) against M_c(v))
    delta = (err W1) * sigma'(h)                     (W2's error)
    errn  = err / max(1, |z|^2)  (hidden_norm)  or  err
    Z     = op [h; KS; delta]
    W2'   = gamma W2 + m S2 + Z^T k                  S2' = P S2 - (d * delta)^T k
    W1'   = gamma W1 + m S1 - (e * errn)^T z         S1' = P S1 - (d * errn)^T z

with `gamma, m, P` ([B, H]) the chunk's decays and `e, d` ([B, H, L, 1]) the gradients' chunk-end
weights (`LoopOperators`).
"""

from __future__ import annotations

import math

import torch

from hope.ops.checks import activation, hidden_scale
from hope.ops.state import _dot


def _d2gelu(h, _):
    """Second derivative of the exact GELU: `phi(h) (2 - h^2)`."""
    return torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi)) * (2.0 - h * h)


def _d2silu(h, _):
    s = torch.sigmoid(h)
    return s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))


_SECOND = {"gelu": _d2gelu, "silu": _d2silu}


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[B, H, m, n] -> [B*H, m, n] (a copy only for an expanded, e.g. meta-learned, state)."""
    return x.reshape(-1, *x.shape[-2:])


def _scaled(x, a, y=None, b=None):
    """`a x + b y` per batch and head as a fresh contiguous tensor (None terms are skipped;
    None when both are)."""
    out = None
    if x is not None:
        out = x * a[..., None, None]
    if y is not None:
        out = y * b[..., None, None] if out is None else out.addcmul_(y, b[..., None, None])
    return out


def _acc(out, left_t, right):
    """`out + left_t^T right` per batch and head, in place into `out` (fresh when None).

    left_t: [B, H, n, Do], right: [B, H, n, Di] -> [B, H, Do, Di]."""
    if out is None:
        return left_t.transpose(-1, -2) @ right
    B, H, Do, Di = out.shape
    out.view(B * H, Do, Di).baddbmm_(_flat(left_t).transpose(-1, -2), _flat(right))
    return out


class _LearnChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W1, W2, S1, S2, k, v, op, gamma, m, P, e, d, act, hidden_norm):
        sigma, dsigma = activation(act)
        L = k.shape[-2]
        hkv = torch.cat([k, v], dim=-2) @ W2.transpose(-1, -2)             # [B, H, 2L, E]
        h, hv = hkv[..., :L, :], hkv[..., L:, :]
        KS = k @ S2.transpose(-1, -2)
        z = sigma(h)
        zd = z - sigma(hv)
        err = (k - v) + zd @ W1.transpose(-1, -2)                            # [B, H, L, D]
        a = err @ W1                                                         # [B, H, L, E]
        delta = a * dsigma(h)
        s = hidden_scale(z).unsqueeze(-1) if hidden_norm else None
        errn = err / s if hidden_norm else err
        Z = op @ torch.cat([h, KS, delta], dim=-2)                           # [B, H, L, E]
        W2n = _acc(_scaled(W2, gamma, S2, m), Z, k)
        S2n = _acc(_scaled(S2, P), -d * delta, k)
        W1n = _acc(_scaled(W1, gamma, S1, m), -e * errn, z)
        S1n = _acc(_scaled(S1, P), -d * errn, z)
        ctx.save_for_backward(W1, W2, S1, S2, k, v, op, gamma, m, P, e, d, hkv, KS, err, a)
        ctx.act, ctx.hidden_norm = act, hidden_norm
        ctx.set_materialize_grads(False)     # an unused chunk-end state gets None, not zeros
        return W1n, W2n, S1n, S2n

    @staticmethod
    def backward(ctx, G1, G2, H1, H2):
        W1, W2, S1, S2, k, v, op, gamma, m, P, e, d, hkv, KS, err, a = ctx.saved_tensors
        sigma, dsigma = activation(ctx.act)
        L = k.shape[-2]
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # a double backward (create_graph): the intermediates saved by the forward are not
            # linked to the inputs in the graph, so they are formed again from them here
            hkv = torch.cat([k, v], dim=-2) @ W2.transpose(-1, -2)
            KS = k @ S2.transpose(-1, -2)
        h, hv = hkv[..., :L, :], hkv[..., L:, :]
        z, dh_act = sigma(h), dsigma(h)
        zd = z - sigma(hv)
        if torch.is_grad_enabled():
            err = (k - v) + zd @ W1.transpose(-1, -2)
            a = err @ W1
        delta = a * dh_act
        if ctx.hidden_norm:
            sq = z.square().sum(-1, keepdim=True)
            s = sq.clamp(min=1.0)                                            # hidden_scale(z)
            errn = err / s
        else:
            errn = err
        G1, G2, H1, H2 = (None if g is None else g.contiguous() for g in (G1, G2, H1, H2))

        # scalar decays: gamma scales W1, W2; m scales S1, S2 into the weights; P the momenta
        dgamma = dm = dP = None
        if need[7] or need[8] or need[9]:
            zero = k.new_zeros(k.shape[:2])
            dgamma, dm, dP = zero, zero, zero
            for Gw, W, S in ((G1, W1, S1), (G2, W2, S2)):
                if Gw is not None:
                    dgamma, dm = dgamma + _dot(Gw, W), dm + _dot(Gw, S)
            for Hs, S in ((H1, S1), (H2, S2)):
                if Hs is not None:
                    dP = dP + _dot(Hs, S)

        # the rank-L writes: W2' += Z^T k, S2' += (-d delta)^T k, W1' += (-e errn)^T z, S1' += (-d errn)^T z
        dk_rank = []                         # dk's terms from the rank-L writes
        dZ = ddelta = derrn = dz = None
        de = dd = None
        cols = torch.cat([h, KS, delta], dim=-2)                             # [B, H, 3L, E]
        if G2 is not None:
            dZ = k @ G2.transpose(-1, -2)                                    # [B, H, L, E]
            dk_rank.append((op @ cols) @ G2)
        if H2 is not None:
            dU2 = k @ H2.transpose(-1, -2)
            dk_rank.append((-d * delta) @ H2)
            ddelta = -d * dU2
            dd = -(delta * dU2).sum(-1, keepdim=True)
        if G1 is not None:
            dU1 = z @ G1.transpose(-1, -2)                                   # [B, H, L, D]
            dz = (-e * errn) @ G1
            derrn = -e * dU1
            de = -(errn * dU1).sum(-1, keepdim=True)
        if H1 is not None:
            dV1 = z @ H1.transpose(-1, -2)
            dz = (-d * errn) @ H1 if dz is None else dz + (-d * errn) @ H1
            derrn = -d * dV1 if derrn is None else derrn - d * dV1
            dd_1 = -(errn * dV1).sum(-1, keepdim=True)
            dd = dd_1 if dd is None else dd + dd_1
        if dz is None:
            dz = torch.zeros_like(z)

        # Z = op [h; KS; delta]
        dop = dh = dKS = None
        if dZ is not None:
            dop = dZ @ cols.transpose(-1, -2) if need[6] else None
            dcols = op.transpose(-1, -2) @ dZ                                # [B, H, 3L, E]
            dh, dKS = dcols[..., :L, :], dcols[..., L:2 * L, :]
            ddelta = dcols[..., 2 * L:, :] if ddelta is None else ddelta + dcols[..., 2 * L:, :]
        if dh is None:
            dh = torch.zeros_like(h)

        # errn = err / max(1, |z|^2)
        if derrn is None:
            derr = torch.zeros_like(err)
        elif ctx.hidden_norm:
            derr = derrn / s
            ds = -(derrn * err).sum(-1, keepdim=True) / (s * s)
            dz = dz + (ds * (sq >= 1).to(ds.dtype)) * (2.0 * z)         # clamp passes at >= 1
        else:
            derr = derrn
        # delta = (err W1) * sigma'(h)
        da = None
        if ddelta is not None:
            da = ddelta * dh_act
            dh = dh + ddelta * a * _SECOND[ctx.act](h, None)
            derr = derr + da @ W1.transpose(-1, -2)
        # err = (k - v) + zd W1^T
        gz = derr @ W1                                                       # [B, H, L, E]
        dv = -derr
        dh = dh + (dz + gz) * dh_act
        dhv = -gz * dsigma(hv)
        # h, hv = [k; v] W2^T
        dhkv = torch.cat([dh, dhv], dim=-2)
        dkv = dhkv @ W2
        dk = sum(dk_rank, derr + dkv[..., :L, :])
        dv = dv + dkv[..., L:, :]
        if dKS is not None:
            dk = dk + dKS @ S2

        # the states: decayed output gradients plus one accumulated product each
        dW1 = dW2 = dS1 = dS2 = None
        if need[0]:
            left = torch.cat([err, derr], dim=-2) if da is not None else derr
            right = torch.cat([da, zd], dim=-2) if da is not None else zd
            dW1 = _acc(_scaled(G1, gamma), left, right)
        if need[1]:
            dW2 = _acc(_scaled(G2, gamma), dhkv, torch.cat([k, v], dim=-2))
        if need[2]:
            dS1 = _scaled(G1, m, H1, P)
            dS1 = torch.zeros_like(S1) if dS1 is None else dS1
        if need[3]:
            dS2 = _scaled(G2, m, H2, P)
            dS2 = _acc(dS2, dKS, k) if dKS is not None else (torch.zeros_like(S2) if dS2 is None else dS2)
        return (dW1, dW2, dS1, dS2, dk if need[4] else None, dv if need[5] else None, dop,
                dgamma, dm, dP, de if need[10] else None, dd if need[11] else None, None, None)


def learn_chunk(W1, W2, S1, S2, k, v, op, gamma, m, P, e, d, act: str, hidden_norm: bool):
    """The chunk-end state `(W1', W2', S1', S2')` of an MLP memory that learns a chunk with
    self-generated targets and reads nothing (module docstring; `op`: `[B, H, L, 3L]`, the Z rows of
    the keyed layer's chunk operator; `e, d`: `[B, H, L, 1]`)."""
    return _LearnChunk.apply(W1, W2, S1, S2, k, v, op, gamma, m, P, e, d, act, hidden_norm)
