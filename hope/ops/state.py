"""Memory states of the ops and their chunk-end update (SPEC sections 2 and 3).

The state types (`LinearMemoryState`, `MLPMemoryState`), how an op broadcasts a (possibly shared,
meta-learned) initial state and picks its dtype, and `state_step`, the one state-sized write of a
chunk: `a W + b S + G^T K` with a written-out backward.

Conventions: a weight maps `x -> W x` with `W: [D_out, D_in]`; batched states are
`[B, H, D_out, D_in]`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class LinearMemoryState(NamedTuple):
    """State of a linear memory `M(x) = W x`, per stream and head.

    W: [B, H, D, D] weights (`[D_out, D_in]` per head), or anything broadcastable to it.
    S: momentum ("past surprise") of the same shape, or None for zeros.
    W_chunk: the weights at the start of the current, unfinished mini-batch (gradients of its
        remaining tokens are taken there); needed only when pos > 0.
    pos: tokens of the current mini-batch already written (0 at a chunk boundary). A call
        resuming from a returned state must use the same chunk_size.
    """

    W: torch.Tensor
    S: Optional[torch.Tensor] = None
    W_chunk: Optional[torch.Tensor] = None
    pos: int = 0


class MLPMemoryState(NamedTuple):
    """State of an MLP memory `M(x) = x + W1 sigma(W2 x)`, per stream and head.

    W1: [B, H, D, E] output layer (E = expansion * D), or broadcastable to it.
    W2: [B, H, E, D] input layer (reads the key; carries the DGD factor), or broadcastable.
    S1, S2: momenta of the same shapes, or None for zeros.
    W1_chunk, W2_chunk: weights at the start of the current, unfinished mini-batch (pos > 0).
    pos: tokens of the current mini-batch already written (0 at a chunk boundary).
    """

    W1: torch.Tensor
    W2: torch.Tensor
    S1: Optional[torch.Tensor] = None
    S2: Optional[torch.Tensor] = None
    W1_chunk: Optional[torch.Tensor] = None
    W2_chunk: Optional[torch.Tensor] = None
    pos: int = 0


def check_pos(pos: int, chunk_size: int, has_chunk_state: bool) -> int:
    """Validate the resume position of a state."""
    pos = int(pos)
    if not 0 <= pos < chunk_size:
        raise ValueError(f"state.pos must be in [0, chunk_size={chunk_size}), got {pos}")
    if pos and not has_chunk_state:
        raise ValueError("a state with pos > 0 needs its chunk-start weights (W_chunk)")
    return pos


def state_dtype(state, ref: torch.Tensor) -> torch.dtype:
    """The dtype an op keeps its state in: the widest of `ref` (the queries) and the state's
    tensors. Under bf16 autocast a float32 (meta-learned) state stays float32 even when the
    inputs arrive in bf16; a model cast to bf16 keeps bf16 states; float64 stays float64."""
    dtype = ref.dtype
    for x in state:
        if isinstance(x, torch.Tensor):
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def expand_state(x: Optional[torch.Tensor], shape, ref: torch.Tensor,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Broadcast a (possibly shared, e.g. `[H, D, D]` meta-learned) state to `shape`; None -> zeros.

    dtype: of the result (default `ref.dtype`); ref gives the device of zeros. Broadcasting keeps
    the autograd link, so gradients reach a shared initial state summed over the batch.
    """
    dtype = dtype or ref.dtype
    if x is None:
        return ref.new_zeros(shape, dtype=dtype)
    return torch.broadcast_to(x.to(dtype), shape)


def _dot(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`sum_ij g[b, h, i, j] x[b, h, i, j]` -> [B, H], as a batched matrix product (no temporary)."""
    B, H = g.shape[:2]
    if not (g.is_contiguous() and x.is_contiguous()):
        return (g * x).sum((-1, -2))
    return torch.bmm(g.view(B * H, 1, -1), x.view(B * H, -1, 1)).view(B, H)


class _StateStep(torch.autograd.Function):
    """`a W + b S + G^T K` with a hand-written backward: each input's gradient in one pass over the
    state (autograd's would form `g * W` and `g * S` as state-sized temporaries for the scalars'
    gradients, and clone the output gradient for the in-place accumulation)."""

    @staticmethod
    def forward(ctx, W, a, S, b, G, K):
        B, H, Do, Di = W.shape
        out = W * a[..., None, None]
        if S is not None:
            out.addcmul_(S, b[..., None, None])
        out.view(B * H, Do, Di).baddbmm_(G.transpose(-1, -2).reshape(B * H, Do, -1),
                                         K.reshape(B * H, -1, Di))
        ctx.save_for_backward(W, a, S, b, G, K)
        return out

    @staticmethod
    def backward(ctx, g):
        W, a, S, b, G, K = ctx.saved_tensors
        B, H, Do, Di = W.shape
        need = ctx.needs_input_grad
        g = g.contiguous()
        gW = g * a[..., None, None] if need[0] else None
        ga = _dot(g, W) if need[1] else None
        gS = g * b[..., None, None] if S is not None and need[2] else None
        gb = _dot(g, S) if S is not None and need[3] else None
        g3 = g.view(B * H, Do, Di)
        gG = torch.bmm(K.reshape(B * H, -1, Di), g3.transpose(-1, -2)).view(G.shape) if need[4] else None
        gK = torch.bmm(G.reshape(B * H, -1, Do), g3).view(K.shape) if need[5] else None
        return gW, ga, gS, gb, gG, gK


def state_step(W, a, S, b, G, K):
    """`a W + b S + G^T K` per batch and head, the chunk-end update of a weight or momentum.

    W: [B, H, Do, Di]; a: [B, H]; S, b: the same or None (no S term); G: [B, H, C, Do];
    K: [B, H, C, Di]. The outer products accumulate into the decayed state in place (`baddbmm_`),
    and the backward is written out (`_StateStep`) so that each gradient costs one state pass.

    Runs in W's dtype with autocast off, so under bf16 autocast a float32 state (the ops keep the
    widest of the inputs' and the initial state's dtype, `state_dtype`) stays float32; a bf16
    state would lose the small per-chunk updates (after 2,048 tokens the MLP memory's W1 / W2 were off
    by 2.6% / 2.8% from float64 with a bf16 state, 0.6% / 0.8% with this;
    `tests/ops/test_memory_facts.py::test_bf16_autocast_keeps_float32_state`).
    """
    dt = W.dtype
    with torch.autocast(W.device.type, enabled=False):
        W = torch.broadcast_to(W, (*a.shape, *W.shape[-2:]))
        if S is not None:
            S, b = torch.broadcast_to(S.to(dt), W.shape), b.to(dt)
        return _StateStep.apply(W, a.to(dt), S, b, G.to(dt), K.to(dt))
