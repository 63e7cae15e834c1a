"""Muon: momentum, then Newton-Schulz orthogonalization of the update (SPEC section 5, "Muon").

For a matrix parameter `W` (`[fan_out, fan_in]`; a higher-rank tensor is viewed as `[shape[0], -1]`)
with gradient `G`:

    M <- beta M + (1 - beta) G                     (EMA momentum, torch.optim.Muon's convention)
    U  = (1 - beta) G + beta M   if nesterov else M
    W <- (1 - lr wd) W - lr_adj NS_5(U)            (NS_5: `newton_schulz`, 5 quintic steps)

`lr_adj = adjusted_lr(lr, adjust_lr, W.shape)`: "spectral" `lr sqrt(max(1, fan_out/fan_in))` (default;
lr ~0.02 as in Keller Jordan's Muon) or "match_rms" `lr 0.2 sqrt(max(fan_out, fan_in))` (Moonlight;
reuse an AdamW-tuned lr). Parameters not on the matrix path follow AdamW exactly (torch.optim.AdamW,
same lr, `adamw_betas`, `adamw_eps`, decoupled `weight_decay`).

Which path a parameter takes: the group key `use_muon` (True: matrix path, needs ndim >= 2; False:
AdamW); when None (default), ndim == 2 takes the matrix path and everything else AdamW. Embeddings and
output heads are matrices but conventionally use AdamW: put them in a group with `use_muon=False`
(`hope.optim.build_optimizer` does this for names containing "embed" or "lm_head").

Example:
    opt = Muon([{"params": hidden_matrices},
                {"params": embeddings_and_gains, "use_muon": False, "lr": 3e-4}], lr=0.02)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hope.optim._common import (
    HybridOptimizer,
    adjusted_lr,
    as_matrix,
    check_matrix_keys,
    check_beta,
    check_nonneg,
    newton_schulz,
)


class Muon(HybridOptimizer):
    """Muon for matrices, AdamW for the rest.

    Args:
        params: parameters or param groups (group keys: all keyword arguments below).
        lr: learning rate (default 0.02, Muon-sized with adjust_lr="spectral").
        momentum: momentum EMA coefficient `beta` in [0, 1) (default 0.95).
        nesterov: Nesterov-style update (default True).
        ns_steps: Newton-Schulz iterations (default 5).
        weight_decay: decoupled weight decay, both paths (default 0).
        adjust_lr: "spectral" (default), "match_rms" or "none" (see module docstring).
        adamw_betas: AdamW betas for the fallback (default (0.9, 0.95)).
        adamw_eps: AdamW eps for the fallback (default 1e-8).
        use_muon: None (default: ndim == 2), True or False; usually set per group.
        foreach: use `torch._foreach_*` kernels for the elementwise parts (default True).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
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
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
            adjust_lr=adjust_lr, adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps, use_muon=use_muon,
            foreach=foreach,
        )
        self._check_group(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict) -> None:
        check_nonneg("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_matrix_keys(group)

    def _matrix_step(self, group: dict, params: list[torch.Tensor]) -> None:
        if not params:
            return
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        if group["foreach"]:
            torch._foreach_lerp_(bufs, grads, 1 - beta)
            updates = torch._foreach_lerp(grads, bufs, beta) if group["nesterov"] else bufs
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
        else:
            updates = []
            for g, buf in zip(grads, bufs):
                buf.lerp_(g, 1 - beta)
                updates.append(g.lerp(buf, beta) if group["nesterov"] else buf)
        for p, u in zip(params, updates):
            o = newton_schulz(as_matrix(u), group["ns_steps"]).reshape_as(p)
            if not group["foreach"] and wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(o, alpha=-adjusted_lr(lr, group["adjust_lr"], p.shape))
