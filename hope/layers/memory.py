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
from hope.ops.checks import activation as _activation
from hope.ops.checks import repeat_heads
from hope.ops.recompute import recompute_region
from hope.ops.rule import InnerRule

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
        rule: the inner rule (`hope.ops.rule.InnerRule`): kind, expansion, activation, chunk size,
            DGD, the stability switches and recompute. `rule.mean_step`: `update` passes
            `eta / chunk_size` as the write's rate, so a mini-batch takes the step of its *mean*
            gradient and `eta` bounds the whole chunk's step however correlated its keys, while the
            DGD factor keeps the token's `eta` (`InnerRule.rates`; docs/DEVIATIONS.md).
        n: number of memories (stacked on the head axis in the stream state).
        n_heads: H.
        head_dim: D (input and output width of every memory).
        w1_std: std of the initial W1 of an MLP memory, relative to 1/sqrt(E) (0: the identity).
        linear_init: initial W of a linear memory: "zeros", "identity" or "random" (std 1/sqrt(D)).
        impl: "chunk" (chunk-parallel ops) or "naive" (token-by-token reference ops, which ignore
            `rule.recompute`).

    Attribute `compile` (default False; not a config field, `train.compile` sets it through
    `hope.models.common.compile_model`): the chunk ops run their per-chunk step under
    `torch.compile`.
    """

    def __init__(self, rule: InnerRule, n: int, n_heads: int, head_dim: int, w1_std: float = 0.0,
                 linear_init: str = "zeros", impl: str = "chunk"):
        super().__init__()
        check_choice("impl", impl, IMPLS)
        self.rule, self.n, self.n_heads, self.head_dim, self.impl = rule, n, n_heads, head_dim, impl
        self.compile = False
        self.sigma = _activation(rule.activation)[0]
        D, E = head_dim, rule.expansion * head_dim
        if rule.kind == "mlp":
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

    @property
    def kind(self) -> str:
        """"mlp" or "linear" (the rule's)."""
        return self.rule.kind

    def init_state(self, batch_size: int):
        """The meta-learned initial state expanded over the batch: `[B, n * H, ...]` (keeps grad)."""
        def ex(p):
            p = p.flatten(0, 1)
            return p.expand(batch_size, *p.shape)
        if self.kind == "mlp":
            return MLPMemoryState(ex(self.W1), ex(self.W2))
        if self.rule.anchor:                  # the state is what the stream wrote, W - W0
            return LinearMemoryState(torch.zeros_like(ex(self.W)))
        return LinearMemoryState(ex(self.W))

    def read_start(self, state, x: torch.Tensor, recompute: bool | None = None) -> torch.Tensor:
        """Read `x` with the state at the start of the current mini-batch.

        x: `[B, T, n*H, D]` (each memory its own input) or `[B, T, H, D]` (every memory reads the
        same input, broadcast without a copy); returns `[B, T, n*H, D]`. Under `rule.recompute`
        the read is recomputed in the backward (its hidden activations are `n*H*E` numbers per
        token, more than the state a chunk keeps); `recompute` overrides the rule's switch.
        """
        if (self.rule.recompute if recompute is None else recompute) and torch.is_grad_enabled():
            return recompute_region(self._read_start, state, x)
        return self._read_start(state, x)

    def _read_start(self, state, x: torch.Tensor) -> torch.Tensor:
        n, H = self.n, self.n_heads
        shared = x.shape[2] == H and n > 1
        xs = x.unsqueeze(2) if shared else x.unflatten(2, (n, H))           # [B, T, n or 1, H, D]
        if self.kind == "mlp":
            W1 = state.W1_chunk if state.pos else state.W1
            W2 = state.W2_chunk if state.pos else state.W2
            W1, W2 = (w.to(x.dtype).unflatten(1, (n, H)) for w in (W1, W2))
            h = torch.einsum("bnhed,btnhd->btnhe", W2, xs.expand(-1, -1, n, -1, -1))
            out = xs + torch.einsum("bnhde,btnhe->btnhd", W1, self.sigma(h))
        else:
            W = (state.W_chunk if state.pos else state.W).to(x.dtype).unflatten(1, (n, H))
            if self.rule.anchor:              # the state holds W - W0
                W = W + self.W.to(x.dtype)
            out = torch.einsum("bnhij,btnhj->btnhi", W, xs.expand(-1, -1, n, -1, -1))
        return out.flatten(2, 3)

    def update(self, state, q, k, v, eta, alpha, beta, dgd_eta=None, self_target: bool = False,
               recompute: bool | None = None, shared: bool = False):
        """Run the inner rule (SPEC 3) from `state`; returns (reads, new state).

        q: [B, T, Hq, D] queries of the last Hq of the n*H stacked heads (Hq = 0: learn only);
        k, v: [B, T, n*H, D]; the reads are [B, T, Hq, D]; dgd_eta: [B, T, n*H], the DGD gate's
        rate under `rule.dgd_gate` (else unused). self_target: each token learns the target
        `M_c(v_t)`, the memory's read of its v at the start of the token's mini-batch (SPEC 4.2),
        formed inside the op (`self_target` of the ops); under `rule.anchor` (the op's state is
        `W - W0`) the targets are read with `read_start` one mini-batch at a time instead.
        recompute: overrides `rule.recompute` for this call (a caller that recomputes a group of
        chunks itself turns the op's own per-chunk recompute off).
        shared: k, v, eta, alpha, beta, dgd_eta have H heads, the same for all `n` memories (which
        then only learn: q has 0 heads); the MLP ops build their chunk operators once for them
        (the ops' `groups`), otherwise they are repeated per memory here.
        """
        if shared and self.n > 1 and (self.kind != "mlp" or self.rule.anchor):
            k, v, eta, alpha, beta, dgd_eta = repeat_heads(self.n, k, v, eta, alpha, beta, dgd_eta)
            shared = False
        if self_target and self.rule.anchor:
            outs = []
            for t0, t1 in chunk_ranges(k.shape[1], self.rule.chunk_size, state.pos):
                o, state = self.update(state, q[:, t0:t1], k[:, t0:t1],
                                       self.read_start(state, v[:, t0:t1], recompute),
                                       eta[:, t0:t1], alpha[:, t0:t1], beta[:, t0:t1],
                                       None if dgd_eta is None else dgd_eta[:, t0:t1], recompute=recompute)
                outs.append(o)
            return (torch.cat(outs, dim=1) if outs else q.new_zeros(*q.shape)), state
        op = _OPS[(self.kind, self.impl)]
        eta, dgd_eta = self.rule.rates(eta, dgd_eta)
        extra = {"compile": self.compile} if self.impl == "chunk" else {}
        if self_target:
            extra["self_target"] = True
        if shared and self.n > 1:
            extra["groups"] = self.n
        if self.rule.anchor:                  # the op runs on W - W0: its l2 gradient needs v - W0 k
            W0 = self.W.flatten(0, 1).to(k.dtype)                               # [n*H, D, D]
            v = v - torch.einsum("hij,bthj->bthi", W0, k)
        kwargs = self.rule.op_kwargs(self.impl)
        if recompute is not None and "recompute" in kwargs:
            kwargs["recompute"] = recompute
        o, new = op(q, k, v, eta, alpha, beta, initial_state=state, output_final_state=True,
                    dgd_eta=dgd_eta, **kwargs, **extra)
        if self.rule.anchor and q.shape[2]:
            o = o + torch.einsum("hij,bthj->bthi", W0[W0.shape[0] - q.shape[2]:], q)
        return o, new
