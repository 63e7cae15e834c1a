"""DMGD, Deep Momentum Gradient Descent: the momentum is a small MLP memory trained online to map
gradients to updates (SPEC section 5, paper Eq. 50; output nonlinearity Eq. 52). Our reading of the
details, recorded in docs/DEVIATIONS.md.

Per parameter tensor, viewed as a matrix `[R, C]` (`[shape[0], -1]`; a vector is one row), with
gradient `g` (rows `g_r`):

    k_r = g_r / s,  s = ||g||_F / sqrt(R)                    keys: rows of unit mean-square norm
    b  <- beta b + k                                         linear momentum of the keys (the value)
    m(x) = x + W1 silu(W2 x),  W1: [C, h], W2: [h, C]        the memory, shared across rows (SPEC 2)
    L2(m) = 1/(2R) sum_r ||m(k_r) - b_r||^2                   inner objective: gradient -> momentum
    W1 <- retention W1 - inner_lr / c1 * dL2/dW1              one normalized inner step per outer step
    W2 <- retention W2 - inner_lr / c2 * dL2/dW2              (Eq. 50)
    U = s m(k)                (nonlinearity None)   or   U = NS_5(m(k))  ("newton_schulz", Eq. 52)
    W <- (1 - lr wd) W - lr_eff U

Read as an associative memory: the keys are the current gradient rows and the values the momentum
rows, so the memory learns (across rows and over time) which update each gradient pattern should
produce, instead of storing one update regardless of the gradient. `W1` starts at zero, so
`m` starts as the identity: the first step is SGD (no momentum), and with `inner_lr = 0` DMGD is SGD
for every step (with "newton_schulz": Muon with momentum 0). `W2` starts as a seeded Gaussian
(`seed` + the parameter's index), so runs are reproducible. `lr_eff` is `lr` without nonlinearity and
Muon's shape-scaled lr (`adjust_lr`) with Newton-Schulz. The inner gradient is computed in closed form
(no autograd inside `step`), and each block's step is normalized by a bound on its curvature
(`c1 = mean_r ||silu(W2 k_r)||^2`, `c2 = 1.21 mean_r ||k_r||^2 ||W1||_F^2`, the normalized LMS rule), so
`inner_lr` in (0, 1] is stable for any width and memory scale.

Defaults: lr 0.01, momentum 0.9, hidden 16, inner_lr 0.5, retention 0.999, no nonlinearity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from hope.optim._common import (
    ADJUST_LR,
    adjusted_lr,
    as_matrix,
    check,
    check_beta,
    check_nonneg,
    check_pos,
    newton_schulz,
)

NONLINEARITIES = (None, "newton_schulz")


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


class DMGD(torch.optim.Optimizer):
    """Deep momentum: an MLP memory per parameter tensor, trained online to map gradients to updates.

    Args:
        params: parameters or param groups (group keys: all keyword arguments below).
        lr: outer learning rate (default 0.01; with "newton_schulz" use a Muon-sized lr, e.g. 0.02).
        momentum: `beta` of the value buffer the memory regresses on, in [0, 1) (default 0.9).
        hidden: hidden width `h` of the memory MLP (default 16).
        inner_lr: the memory's own learning rate; 0 freezes it; (0, 1] is stable (default 0.5).
        retention: the memory's weight retention in (0, 1] (default 0.999).
        nonlinearity: None or "newton_schulz" (Eq. 52) (default None).
        ns_steps: Newton-Schulz iterations (default 5).
        adjust_lr: lr scaling with Newton-Schulz: "spectral" (default), "match_rms" or "none".
        weight_decay: decoupled weight decay (default 0).
        eps: floor of the gradient scale `s` (default 1e-12).
        seed: seed of the memories' initial `W2` (default 0).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        momentum: float = 0.9,
        hidden: int = 16,
        inner_lr: float = 0.5,
        retention: float = 0.999,
        nonlinearity: str | None = None,
        ns_steps: int = 5,
        adjust_lr: str = "spectral",
        weight_decay: float = 0.0,
        eps: float = 1e-12,
        seed: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, hidden=hidden, inner_lr=inner_lr, retention=retention,
            nonlinearity=nonlinearity, ns_steps=ns_steps, adjust_lr=adjust_lr, weight_decay=weight_decay,
            eps=eps, seed=seed,
        )
        self._check_group(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict) -> None:
        check_nonneg("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check(isinstance(group["hidden"], int) and group["hidden"] >= 1, f"hidden must be an int >= 1, got {group['hidden']!r}")
        check_nonneg("inner_lr", group["inner_lr"])
        r = group["retention"]
        check(isinstance(r, (int, float)) and 0.0 < r <= 1.0, f"retention must be in (0, 1], got {r!r}")
        check(group["nonlinearity"] in NONLINEARITIES, f"nonlinearity must be one of {NONLINEARITIES}, got {group['nonlinearity']!r}")
        check(isinstance(group["ns_steps"], int) and 0 < group["ns_steps"] < 100, f"ns_steps must be an int in [1, 99], got {group['ns_steps']!r}")
        check(group["adjust_lr"] in ADJUST_LR, f"adjust_lr must be one of {ADJUST_LR}, got {group['adjust_lr']!r}")
        check_nonneg("weight_decay", group["weight_decay"])
        check_pos("eps", group["eps"])
        check(isinstance(group["seed"], int), f"seed must be an int, got {group['seed']!r}")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def _init_state(self, p: torch.Tensor, group: dict, index: int) -> dict:
        cols = as_matrix(p).shape[1]
        h = group["hidden"]
        gen = torch.Generator().manual_seed(group["seed"] * 1_000_003 + index)
        w2 = torch.randn(h, cols, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        state = self.state[p]
        state["step"] = 0
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["w1"] = torch.zeros(cols, h, device=p.device, dtype=p.dtype)
        state["w2"] = w2
        return state

    @staticmethod
    def memory(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """The memory `m(x) = x + W1 silu(W2 x)` on rows. x: [R, C] -> [R, C]."""
        return x + F.silu(x @ w2.T) @ w1.T

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p] if "w1" in self.state[p] else self._init_state(p, group, index - 1)
                self._param_step(p, state, group)
        return loss

    def _param_step(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["step"] += 1
        g = as_matrix(p.grad)
        rows = g.shape[0]
        s = (g.norm() / math.sqrt(rows)).clamp(min=group["eps"])
        k = g / s
        b = state["momentum_buffer"].view(g.shape)  # contiguous by construction: a view we update in place
        b.mul_(group["momentum"]).add_(k)
        w1, w2 = state["w1"], state["w2"]
        if group["inner_lr"] > 0:
            z = k @ w2.T  # [R, h]
            a = F.silu(z)
            err = (k + a @ w1.T - b) / rows  # dL2/dm(k), [R, C]
            d_w1 = err.T @ a  # [C, h]
            d_w2 = ((err @ w1) * _silu_grad(z)).T @ k  # [h, C]
            # Normalized steps (NLMS): divide by a bound on each block's curvature so that any
            # inner_lr in (0, 1] is stable whatever the widths and the memory's current scale.
            curv1 = a.pow(2).sum() / rows  # trace of A^T A / R, >= the largest eigenvalue
            curv2 = 1.21 * (k.pow(2).sum() / rows) * w1.pow(2).sum()  # silu' <= 1.1
            w1.mul_(group["retention"]).sub_(d_w1 * (group["inner_lr"] / (curv1 + 1e-6)))
            w2.mul_(group["retention"]).sub_(d_w2 * (group["inner_lr"] / (curv2 + 1e-6)))
        u = self.memory(k, w1, w2)
        if group["nonlinearity"] == "newton_schulz":
            u = newton_schulz(u, group["ns_steps"])
            lr = adjusted_lr(group["lr"], group["adjust_lr"], p.shape if p.ndim >= 2 else torch.Size(g.shape))
        else:
            u = u * s
            lr = group["lr"]
        if group["weight_decay"] != 0:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(u.reshape_as(p), alpha=-lr)
