"""Continuum Memory System (SPEC 4.3, paper Eq. 71): MLP blocks that keep learning at their own pace.

A chain of K SwiGLU blocks, pre-norm and residual, ordered from the slowest level to the fastest.
Level l has a period C_l in tokens (None: static, only the outer optimizer changes it). Each stream
(batch row) keeps fast weights Delta_l on top of the meta-learned weights theta_l; the block
computes with theta_l + Delta_l. Every C_l tokens of a stream

    Delta_l <- (1 - decay) Delta_l - lr * (1 / C_l) * sum_{t in the last C_l tokens} grad_{Delta_l} L_task(t)

where L_task is the next-token loss of those tokens (SPEC writes the sum with eta_l; we write
eta_l = lr / C_l so that one `lr` suits every period: docs/DEVIATIONS.md).

The forward pass never changes the fast weights: it is a pure function of (x, state), so feeding
a sequence whole equals feeding it in pieces. The update is a separate step, `cms_step`, taken
after the backward pass of a segment's loss (training) or of the loss of the text just read
(inference); `hope.models.common` drives both.

The step size: by default every level steps by the fixed `lr` and the outer loop treats the update
as a constant (first-order, SPEC 4.3). With `meta` (`model.cms_meta=true`) each learning level has its own
step size `lr * exp(meta_gain * (log_lr[l] - log(lr)))` (initialized to `lr`; `log_lr` a parameter of the
model, whose moves count `meta_gain` times, `model.cms_meta_gain`), and training keeps the
update inside the graph (`hope.models.common.forward_backward`), so the outer gradient reaches the
step sizes and flows through the fast weights into earlier segments (second order, as in MAML).

Variants (SPEC 4.3): `sequential` (the chain, default), `nested` (when level l steps, level l+1 is
re-initialized to level l's current weights), `independent` (levels read the same input in
parallel; outputs mixed by learned softmax weights), and ours, `parallel` (levels read the same
input, each through its own norm, and their outputs are summed: with static levels this is exactly
one SwiGLU whose hidden units are the levels' side by side, so a learning parallel CMS differs from
the plain MLP it replaces only by what its levels learn in context; docs/DEVIATIONS.md).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from hope.errors import HopeError
from hope.layers.init import residual_output

VARIANTS = ("sequential", "nested", "independent", "parallel")


class CMSLevel(nn.Module):
    """One SwiGLU block whose weights can carry per-stream fast weights `{"w1": [B, 2h, d], "w2": [B, d, h]}`."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = residual_output(nn.Linear(hidden, d_model, bias=False))

    def forward(self, x: torch.Tensor, delta: dict | None = None) -> torch.Tensor:
        if delta is None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        w1 = self.gate_up.weight + delta["w1"]  # [B, 2h, d]
        w2 = self.down.weight + delta["w2"]  # [B, d, h]
        gate, up = torch.bmm(x, w1.transpose(1, 2)).chunk(2, dim=-1)
        return torch.bmm(F.silu(gate) * up, w2.transpose(1, 2))

    def zero_delta(self, batch_size: int) -> dict:
        w1, w2 = self.gate_up.weight, self.down.weight
        return {"w1": w1.new_zeros(batch_size, *w1.shape), "w2": w2.new_zeros(batch_size, *w2.shape)}


class CMS(nn.Module):
    """The CMS chain of one block.

    Args:
        d_model: width of the residual stream.
        hidden: SwiGLU hidden width of every level.
        periods: one entry per level, slowest first: a period in tokens, or None for a static level.
        variant: "sequential", "nested", "independent" or "parallel".
        lr: fast-weight learning rate (per-token mean gradient, see module docstring).
        decay: retention of fast weights towards the meta-learned weights, per update (0: none).
        meta: a learned step size per learning level (`log_lr`, initialized to `log(lr)`; training
            keeps the update in the graph); False: the fixed `lr`, first-order.
        meta_gain: the step size is `lr * exp(meta_gain * (log_lr - log(lr)))`: the outer optimizer's
            moves of `log_lr` count `meta_gain` times (1: the step size is `exp(log_lr)`).
    """

    def __init__(self, d_model: int, hidden: int, periods: tuple, variant: str = "sequential", lr: float = 1.0,
                 decay: float = 0.0, norm_eps: float = 1e-6, meta: bool = False, meta_gain: float = 1.0):
        super().__init__()
        if not periods:
            raise HopeError("model.cms_periods needs at least one level")
        for p in periods:
            if p is not None and p <= 0:
                raise HopeError(f"CMS periods must be positive or None, got {p}")
        if variant not in VARIANTS:
            raise HopeError(f"model.cms_variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        learning = [p for p in periods if p is not None]
        if learning and any(p % min(learning) for p in learning):
            raise HopeError(f"every CMS period must be a multiple of the shortest one; got {periods}")
        if meta and learning and not lr > 0:
            raise HopeError("model.cms_meta=true learns log step sizes: model.cms_lr (their start) must be > 0")
        self.periods = tuple(periods)
        self.variant = variant
        if not meta_gain > 0:
            raise HopeError(f"model.cms_meta_gain must be > 0, got {meta_gain}")
        self.lr, self.decay, self.meta_gain = lr, decay, meta_gain
        self.meta = bool(meta and learning)
        self.levels = nn.ModuleList(CMSLevel(d_model, hidden) for _ in periods)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=norm_eps) for _ in periods)
        if variant == "independent":
            self.mix = nn.Parameter(torch.zeros(len(periods)))
        if self.meta:
            self.log_lr = nn.Parameter(torch.full((len(learning),), math.log(lr)))

    def step_sizes(self) -> list:
        """Per level, the step size `lr` of its update (None for a static level): the fixed `lr`, or
        with `meta` the learned one (a tensor in the graph)."""
        out, j = [], 0
        for p in self.periods:
            if p is None:
                out.append(None)
            elif self.meta:
                start = math.log(self.lr)
                out.append((start + self.meta_gain * (self.log_lr[j] - start)).exp())
                j += 1
            else:
                out.append(self.lr)
        return out

    @property
    def segment(self) -> int | None:
        """Shortest learning period (None when every level is static)."""
        learning = [p for p in self.periods if p is not None]
        return min(learning) if learning else None

    def init_state(self, batch_size: int) -> dict:
        deltas = [lvl.zero_delta(batch_size) if p is not None else None for lvl, p in zip(self.levels, self.periods)]
        return {"delta": deltas, "acc": [None] * len(self.periods), "pos": 0, "last": 0}

    def forward(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """x: [B, T, d] -> [B, T, d] (residual included) and the state with its token counter advanced."""
        if state is None:
            state = self.init_state(x.shape[0])
        deltas = state["delta"]
        if self.variant == "independent":
            weights = torch.softmax(self.mix, 0)
            out = sum(w * lvl(norm(x), d) for w, lvl, norm, d in zip(weights, self.levels, self.norms, deltas))
            x = x + out
        elif self.variant == "parallel":
            x = x + sum(lvl(norm(x), d) for lvl, norm, d in zip(self.levels, self.norms, deltas))
        else:
            for lvl, norm, d in zip(self.levels, self.norms, deltas):
                x = x + lvl(norm(x), d)
        return x, {**state, "pos": state["pos"] + x.shape[1]}

    def fast_weights(self, state: dict) -> list[torch.Tensor]:
        return [t for d in state["delta"] if d is not None for t in (d["w1"], d["w2"])]

    def step(self, state: dict, grads: list[torch.Tensor | None], graph: bool = False) -> dict:
        """Accumulate `grads` (summed over tokens, aligned with `fast_weights(state)`) and update every
        level whose period has elapsed since the last step. Returns a new state: detached, or with
        `graph` (the meta-learned step in training) a function of the state, the grads and the step
        sizes that autograd differentiates."""
        with contextlib.nullcontext() if graph else torch.no_grad():
            return self._step(state, grads, graph)

    def _step(self, state: dict, grads: list, graph: bool) -> dict:
        keep = (lambda t: t) if graph else (lambda t: t.detach())
        deltas = [None if d is None else {k: keep(v) for k, v in d.items()} for d in state["delta"]]
        accs = list(state["acc"])
        it = iter(grads)
        for i, d in enumerate(deltas):
            if d is None:
                continue
            g = {k: next(it) for k in ("w1", "w2")}
            g = {k: (torch.zeros_like(d[k]) if g[k] is None else keep(g[k])) for k in g}
            accs[i] = g if accs[i] is None else {k: accs[i][k] + g[k] for k in g}
        pos, last = state["pos"], state["last"]
        due = [p is not None and pos // p != last // p for p in self.periods]
        sizes = self.step_sizes()
        for i, period in enumerate(self.periods):
            if due[i]:
                d, a = deltas[i], accs[i]
                deltas[i] = {k: (1 - self.decay) * d[k] - (sizes[i] / period) * a[k] for k in d}
                accs[i] = None
        if self.variant == "nested":
            # after the steps, level i+1 restarts from level i's weights at the end of each of level i's
            # windows: theta_{i+1} + Delta_{i+1} = theta_i + Delta_i
            for i in range(len(self.levels) - 1):
                if due[i] and deltas[i + 1] is not None:
                    src, dst = self.levels[i], self.levels[i + 1]
                    deltas[i + 1] = {"w1": keep(src.gate_up.weight + deltas[i]["w1"] - dst.gate_up.weight),
                                     "w2": keep(src.down.weight + deltas[i]["w2"] - dst.down.weight)}
                    accs[i + 1] = None
        return {"delta": deltas, "acc": accs, "pos": pos, "last": pos}
