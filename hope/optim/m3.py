"""M3, Multi-scale Momentum Muon (SPEC section 5; paper Algorithm 1, our reading).

For a matrix parameter `W` with gradient `g_t` at step `t` (a higher-rank tensor is viewed as
`[shape[0], -1]`):

    M1 <- b1 M1 + (1 - b1) g_t                          fast momentum, every step (EMA)
    O1  = NS_5((1 - b1) g_t + b1 M1  if nesterov else M1)
    A  <- A + g_t                                       gradients since the last slow update
    every f steps:  M2 <- b3 M2 + (1 - b3) A;  A <- 0;  O2 = NS_5(M2)     slow momentum (EMA)
    V  <- b2 V + (1 - b2) g_t^2                          Adam-style second moment (EMA)
    D   = (O1 + a O2) / (sqrt(V / (1 - b2^t)) + eps)
    U   = D * rms(O1 + a O2) / rms(D)      if normalize  (keep the orthogonalized update's scale)
    W  <- (1 - lr wd) W - lr_adj U

`O2` is the orthogonalized slow memory from its last update, reused between updates (zero before the
first one, at step f). `lr_adj` is Muon's shape scaling (`adjust_lr`, see `hope.optim.muon`). With
the slow memory off (`alpha=0`: no `M2`, `A`, `O2` state) and no second moment
(`second_moment=False`) this is exactly `Muon` with `momentum=b1`. `normalize=True` (default) is our
addition, recorded in docs/DEVIATIONS.md: the literal division by `sqrt(V)` makes the step scale like
`1/|g|`, so the lr would depend on the gradient scale; renormalizing to the RMS of `O1 + a O2` keeps the
per-entry reshaping by `V` and Muon's lr semantics. `normalize=False` is the literal Algorithm 1.

Parameters off the matrix path (group key `use_muon`, as in `Muon`) follow torch.optim.AdamW exactly.

Defaults: lr 0.02, betas (b1, b2) = (0.95, 0.999), beta3 0.99, alpha 1.0, slow_every 10, eps 1e-8.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hope.optim._common import (
    HybridOptimizer,
    adjusted_lr,
    as_matrix,
    check,
    check_matrix_keys,
    check_beta,
    check_nonneg,
    check_pos,
    newton_schulz,
)


class M3(HybridOptimizer):
    """Multi-scale Momentum Muon for matrices, AdamW for the rest.

    Args:
        params: parameters or param groups (group keys: all keyword arguments below).
        lr: learning rate (default 0.02, as Muon's with adjust_lr="spectral").
        betas: (b1, b2): fast momentum and second-moment EMA coefficients (default (0.95, 0.999)).
        beta3: slow momentum EMA coefficient (default 0.99).
        alpha: weight `a` of the slow term; 0 turns the slow memory off (default 1.0).
        slow_every: `f`, steps between slow-memory updates (default 10).
        second_moment: divide by `sqrt(V) + eps` (default True).
        normalize: rescale the divided update to the RMS of `O1 + a O2` (default True).
        eps: added to `sqrt(V)` (default 1e-8).
        nesterov: Nesterov-style fast momentum (default True).
        ns_steps: Newton-Schulz iterations (default 5).
        weight_decay: decoupled weight decay, both paths (default 0).
        adjust_lr: "spectral" (default), "match_rms" or "none".
        adamw_betas, adamw_eps: AdamW fallback (default (0.9, 0.95), 1e-8).
        use_muon: None (default: ndim == 2), True or False; usually set per group.
        foreach: `torch._foreach_*` kernels for the elementwise parts (default True).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        betas: tuple[float, float] = (0.95, 0.999),
        beta3: float = 0.99,
        alpha: float = 1.0,
        slow_every: int = 10,
        second_moment: bool = True,
        normalize: bool = True,
        eps: float = 1e-8,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr: str = "spectral",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        use_muon: bool | None = None,
        foreach: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas), beta3=beta3, alpha=alpha, slow_every=slow_every,
            second_moment=second_moment, normalize=normalize, eps=eps, nesterov=nesterov, ns_steps=ns_steps,
            weight_decay=weight_decay, adjust_lr=adjust_lr, adamw_betas=tuple(adamw_betas),
            adamw_eps=adamw_eps, use_muon=use_muon, foreach=foreach,
        )
        self._check_group(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict) -> None:
        check_nonneg("lr", group["lr"])
        betas = group["betas"]
        check(isinstance(betas, (tuple, list)) and len(betas) == 2, f"betas must be a pair, got {betas!r}")
        check_beta("betas[0]", betas[0])
        check_beta("betas[1]", betas[1])
        check_beta("beta3", group["beta3"])
        check_nonneg("alpha", group["alpha"])
        check(isinstance(group["slow_every"], int) and group["slow_every"] >= 1, f"slow_every must be an int >= 1, got {group['slow_every']!r}")
        check_pos("eps", group["eps"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_matrix_keys(group)

    def _matrix_step(self, group: dict, params: list[torch.Tensor]) -> None:
        if not params:
            return
        lr, wd, a = group["lr"], group["weight_decay"], group["alpha"]
        b1, b2 = group["betas"]
        slow, second = a != 0, group["second_moment"]
        for p in params:
            state = self.state[p]
            if "m1" not in state:
                state["m3_step"] = 0
                state["m1"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if slow:
                    state["m2"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["grad_sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["o2"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if second:
                    state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            check(not slow or "m2" in state, "alpha changed from 0 to nonzero after the first step")
            check(not second or "v" in state, "second_moment turned on after the first step")
            state["m3_step"] += 1
        grads = [p.grad for p in params]
        m1s = [self.state[p]["m1"] for p in params]
        if group["foreach"]:
            torch._foreach_lerp_(m1s, grads, 1 - b1)
            fast = torch._foreach_lerp(grads, m1s, b1) if group["nesterov"] else m1s
            if slow:
                torch._foreach_add_([self.state[p]["grad_sum"] for p in params], grads)
            if second:
                vs = [self.state[p]["v"] for p in params]
                torch._foreach_mul_(vs, b2)
                torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
        else:
            fast = []
            for p, g, m1 in zip(params, grads, m1s):
                m1.lerp_(g, 1 - b1)
                fast.append(g.lerp(m1, b1) if group["nesterov"] else m1)
                if slow:
                    self.state[p]["grad_sum"].add_(g)
                if second:
                    self.state[p]["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                if wd != 0:
                    p.mul_(1 - lr * wd)
        for p, f in zip(params, fast):
            state = self.state[p]
            t = state["m3_step"]
            u = newton_schulz(as_matrix(f), group["ns_steps"]).reshape_as(p)
            if slow:
                if t % group["slow_every"] == 0:
                    state["m2"].lerp_(state["grad_sum"], 1 - group["beta3"])
                    state["grad_sum"].zero_()
                    state["o2"].copy_(newton_schulz(as_matrix(state["m2"]), group["ns_steps"]).reshape_as(p))
                u = u.add(state["o2"], alpha=a)
            if second:
                denom = (state["v"].sqrt() / (1 - b2**t) ** 0.5).add_(group["eps"])
                d = u / denom
                if group["normalize"]:
                    d.mul_(u.norm() / d.norm().clamp(min=1e-30))
                u = d
            p.add_(u, alpha=-adjusted_lr(lr, group["adjust_lr"], p.shape))
