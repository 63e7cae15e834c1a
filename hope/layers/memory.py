"""Meta-learned initial states of per-head in-context memories and how layers read them (SPEC 2, 3).

`MemoryBank` owns the initial state of `n` memories x `H` heads of one kind (`"mlp"`: the residual
MLP `M(x) = x + W1 sigma(W2 x)`; `"linear"`: `M(x) = W x`), as nn.Parameters `[n, H, ...]`. Its
stream state is the op's state (`MLPMemoryState` / `LinearMemoryState`) with the `n` memories
stacked on the head axis (`n * H` heads, memory-major), so one op call updates them all.

`read_start(state, x)` applies the weights of the current mini-batch's start (`*_chunk` when the
state is inside a chunk, else the current weights): the chunk-start state `M_c` of SPEC 4.2.

einops legend: b batch, t tokens, h heads (n * H when stacked), d feature, e hidden.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hope.ops import (LinearMemoryState, MLPMemoryState, chunk_linear_memory, chunk_mlp_memory,
                      naive_recurrent_linear_memory, naive_recurrent_mlp_memory)
from hope.ops.utils import activation as _activation

KINDS = ("mlp", "linear")
IMPLS = ("chunk", "naive")
_OPS = {
    ("mlp", "chunk"): chunk_mlp_memory,
    ("mlp", "naive"): naive_recurrent_mlp_memory,
    ("linear", "chunk"): chunk_linear_memory,
    ("linear", "naive"): naive_recurrent_linear_memory,
}


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def chunk_ranges(T: int, C: int, pos: int):
    """Token ranges `(t0, t1)` of the mini-batches of a call that starts `pos` tokens into one."""
    out, t0 = [], 0
    while t0 < T:
        t1 = min(T, t0 + (C - pos if t0 == 0 and pos else C))
        out.append((t0, t1))
        t0 = t1
    return out


class MemoryBank(nn.Module):
    """Meta-learned initial states of `n` memories per head, and their op.

    Args:
        kind: "mlp" or "linear".
        n: number of memories (stacked on the head axis in the stream state).
        n_heads: H.
        head_dim: D (input and output width of every memory).
        expansion: e, hidden width E = e * D of an MLP memory.
        activation: sigma of an MLP memory, "gelu" or "silu".
        w1_std: std of the initial W1 of an MLP memory, relative to 1/sqrt(E) (0: the identity).
        linear_init: initial W of a linear memory: "zeros", "identity" or "random" (std 1/sqrt(D)).
        impl: "chunk" (chunk-parallel ops) or "naive" (token-by-token reference ops).
        hidden_norm: an MLP memory's W1 step for token s is `eta_s / max(1, ||sigma(W2 k_s)||^2)`
            (the ops' `hidden_norm`; docs/DEVIATIONS.md). Ignored by linear memories.
        mean_step: `update` passes `eta / chunk_size` to the op: a mini-batch takes the step of its
            *mean* gradient, so `eta` bounds the whole chunk's step however correlated its keys
            (docs/DEVIATIONS.md). Off: every token's gradient gets the full `eta` (a sum).
        momentum_norm: the ops' `momentum_norm` (momentum as a running mean of the gradients).
        recompute: the chunk ops' `recompute` (save chunk-start states only, recompute each chunk
            in the backward); the naive ops ignore it.

    Attribute `compile` (default False; not a config field, `train.compile` sets it through
    `hope.models.common.compile_model`): the chunk ops run their per-chunk step under
    `torch.compile`.
    """

    def __init__(self, kind: str, n: int, n_heads: int, head_dim: int, expansion: int = 2,
                 activation: str = "gelu", w1_std: float = 0.0, linear_init: str = "zeros",
                 impl: str = "chunk", hidden_norm: bool = True, mean_step: bool = True,
                 momentum_norm: bool = False, recompute: bool = False):
        super().__init__()
        check_choice("memory kind", kind, KINDS)
        check_choice("impl", impl, IMPLS)
        self.kind, self.n, self.n_heads, self.head_dim = kind, n, n_heads, head_dim
        self.expansion, self.activation, self.impl = expansion, activation, impl
        self.hidden_norm, self.mean_step, self.momentum_norm = hidden_norm, mean_step, momentum_norm
        self.recompute = recompute
        self.compile = False
        self.sigma = _activation(activation)[0]
        D, E = head_dim, expansion * head_dim
        if kind == "mlp":
            # W2 reads unit-norm keys: std 1/sqrt(D) keeps W2 k of order 1
            self.W1 = nn.Parameter(torch.randn(n, n_heads, D, E) * (w1_std / math.sqrt(E)))
            self.W2 = nn.Parameter(torch.randn(n, n_heads, E, D) / math.sqrt(D))
        else:
            check_choice("linear_init", linear_init, ("zeros", "identity", "random"))
            if linear_init == "random":
                init = torch.randn(n, n_heads, D, D) / math.sqrt(D)
            elif linear_init == "identity":
                init = torch.eye(D).expand(n, n_heads, D, D).clone()
            else:
                init = torch.zeros(n, n_heads, D, D)
            self.W = nn.Parameter(init)

    def init_state(self, batch_size: int):
        """The meta-learned initial state expanded over the batch: `[B, n * H, ...]` (keeps grad)."""
        def ex(p):
            p = p.flatten(0, 1)
            return p.expand(batch_size, *p.shape)
        if self.kind == "mlp":
            return MLPMemoryState(ex(self.W1), ex(self.W2))
        return LinearMemoryState(ex(self.W))

    def read_start(self, state, x: torch.Tensor) -> torch.Tensor:
        """Read `x: [B, T, n*H, D]` with the state at the start of the current mini-batch."""
        if self.kind == "mlp":
            W1 = state.W1_chunk if state.pos else state.W1
            W2 = state.W2_chunk if state.pos else state.W2
            h = torch.einsum("bhed,bthd->bthe", W2.to(x.dtype), x)
            return x + torch.einsum("bhde,bthe->bthd", W1.to(x.dtype), self.sigma(h))
        W = state.W_chunk if state.pos else state.W
        return torch.einsum("bhij,bthj->bthi", W.to(x.dtype), x)

    def update(self, state, q, k, v, eta, alpha, beta, chunk_size: int, dgd: bool):
        """Run the inner rule (SPEC 3) from `state`; returns (reads, new state).

        q: [B, T, Hq, D] queries of the last Hq of the n*H stacked heads (Hq = 0: learn only);
        k, v: [B, T, n*H, D]; the reads are [B, T, Hq, D].
        """
        op = _OPS[(self.kind, self.impl)]
        if self.mean_step:
            eta = eta / chunk_size
        extra = dict(expansion=self.expansion, act=self.activation,
                     hidden_norm=self.hidden_norm) if self.kind == "mlp" else {}
        extra["momentum_norm"] = self.momentum_norm
        if self.impl == "chunk":
            extra["recompute"], extra["compile"] = self.recompute, self.compile
        return op(q, k, v, eta, alpha, beta, initial_state=state, output_final_state=True,
                  chunk_size=chunk_size, dgd=dgd, objective="l2", **extra)
