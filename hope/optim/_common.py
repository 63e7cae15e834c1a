"""Pieces shared by the deep optimizers (SPEC section 5): Newton-Schulz orthogonalization, the
shape-based learning-rate scaling of orthogonalized updates, the AdamW step used as the fallback for
non-matrix parameters, and hyperparameter checks.

The AdamW step reproduces `torch.optim.AdamW` operation by operation (single-tensor and foreach
forms), so that a fallback parameter follows exactly the trajectory torch's AdamW would give it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Quintic Newton-Schulz coefficients of Keller Jordan's Muon (also torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

ADJUST_LR = ("spectral", "match_rms", "none")


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalize a matrix: `U S V^T -> U S' V^T` with `S'` near 1.

    Quintic iteration `X <- a X + (b A + c A^2) X`, `A = X X^T`, started from `G / ||G||_F` (so every
    singular value starts in (0, 1]). With the default coefficients and 5 steps the output's singular
    values lie roughly in [0.7, 1.2] for singular values of the input above ~1e-3 of the largest (not
    exactly 1: the coefficients trade exactness for speed, as in Muon).

    Args:
        g: [m, n] matrix.
        steps: number of iterations.
        eps: floor of the Frobenius norm used to normalize `g`.
        dtype: compute dtype; default bfloat16 on CUDA (as Muon) and float32 elsewhere.
    Returns:
        [m, n] tensor in `g`'s dtype.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D tensor, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    if dtype is None:
        dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(dtype)
    transpose = g.size(0) > g.size(1)
    if transpose:  # iterate on the short side: A is min(m, n) square
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    if transpose:
        x = x.T
    return x.to(g.dtype)


def adjusted_lr(lr: float, mode: str, shape: torch.Size) -> float:
    """Learning rate for an orthogonalized update of a `[fan_out, fan_in]` matrix.

    * "spectral": `lr * sqrt(max(1, fan_out / fan_in))` (Keller Jordan's Muon; Muon-sized lr ~0.02).
    * "match_rms": `lr * 0.2 * sqrt(max(fan_out, fan_in))` (Moonlight): the update's RMS becomes ~0.2,
      that of a typical AdamW update, so an AdamW-tuned lr can be reused unchanged.
    * "none": `lr`.
    """
    fan_out, fan_in = shape[0], math.prod(shape[1:])
    if mode == "spectral":
        return lr * math.sqrt(max(1.0, fan_out / fan_in))
    if mode == "match_rms":
        return lr * 0.2 * math.sqrt(max(fan_out, fan_in))
    return lr


def adamw_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool,
) -> None:
    """One AdamW step (decoupled weight decay), operation-for-operation `torch.optim.AdamW`.

    `steps` are the step counts *after* this step (already incremented by the caller).
    """
    if not params:
        return
    if foreach:
        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        step_size = [(lr / (1 - beta1**s)) * -1 for s in steps]
        bc2_sqrt = [(1 - beta2**s) ** 0.5 for s in steps]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)
        return
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**s)
        denom = (v.sqrt() / (1 - beta2**s) ** 0.5).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


def as_matrix(t: Tensor) -> Tensor:
    """A parameter-shaped tensor as `[shape[0], rest]` (a 1-D tensor as one row, a scalar as 1x1); a view
    when `t` is contiguous, a copy otherwise (`reshape`), so never write through it."""
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def check(cond: bool, message: str) -> None:
    """Raise `ValueError(message)` unless `cond`."""
    if not cond:
        raise ValueError(message)


def check_beta(name: str, value: float) -> None:
    check(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")


def check_nonneg(name: str, value: float) -> None:
    check(isinstance(value, (int, float)) and value >= 0.0 and math.isfinite(value), f"{name} must be >= 0, got {value!r}")


def check_pos(name: str, value: float) -> None:
    check(isinstance(value, (int, float)) and value > 0.0 and math.isfinite(value), f"{name} must be > 0, got {value!r}")


def check_adamw_keys(group: dict) -> None:
    betas = group["adamw_betas"]
    check(isinstance(betas, (tuple, list)) and len(betas) == 2, f"adamw_betas must be a pair, got {betas!r}")
    check_beta("adamw_betas[0]", betas[0])
    check_beta("adamw_betas[1]", betas[1])
    check_pos("adamw_eps", group["adamw_eps"])


def check_matrix_keys(group: dict) -> None:
    """The keys Muon and M3 share: Newton-Schulz steps, lr scaling, the matrix flag, the AdamW fallback."""
    check(isinstance(group["ns_steps"], int) and 0 < group["ns_steps"] < 100, f"ns_steps must be an int in [1, 99], got {group['ns_steps']!r}")
    check(group["adjust_lr"] in ADJUST_LR, f"adjust_lr must be one of {ADJUST_LR}, got {group['adjust_lr']!r}")
    check(group["use_muon"] in (None, True, False), f"use_muon must be None, True or False, got {group['use_muon']!r}")
    check_adamw_keys(group)


def matrix_flag(group: dict, p: Tensor) -> bool:
    """Whether `p` takes the orthogonalized (matrix) path: the group's `use_muon`, or ndim == 2 when None."""
    flag = group["use_muon"]
    return p.ndim == 2 if flag is None else bool(flag)


class HybridOptimizer(torch.optim.Optimizer):
    """Base of Muon and M3: a matrix path (`_matrix_step`, per subclass) and the AdamW fallback.

    Group keys used here: `use_muon`, `lr`, `adamw_betas`, `adamw_eps`, `weight_decay`, `foreach`.
    """

    @staticmethod
    def _check_group(group: dict) -> None:
        raise NotImplementedError

    def _matrix_step(self, group: dict, params: list[Tensor]) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        for p in group["params"]:
            check(p.ndim >= 2 or not matrix_flag(group, p), f"use_muon=True needs parameters with ndim >= 2, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._matrix_step(group, [p for p in group["params"] if p.grad is not None and matrix_flag(group, p)])
            self._adamw_step(group, [p for p in group["params"] if p.grad is not None and not matrix_flag(group, p)])
        return loss

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        if not params:
            return
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        beta1, beta2 = group["adamw_betas"]
        adamw_step(
            params, [p.grad for p in params],
            [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params],
            [self.state[p]["step"] for p in params],
            lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["adamw_eps"],
            weight_decay=group["weight_decay"], foreach=group["foreach"],
        )
