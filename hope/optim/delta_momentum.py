"""Delta momentum: a momentum buffer written by a delta rule, so it can erase stale gradient
directions (SPEC section 5, paper Eq. 49), with an optional running-RMS preconditioner.

SPEC form, for a parameter viewed as a matrix `[fan_out, fan_in]` (a vector is one row, higher-rank
tensors `[shape[0], -1]`) with gradient `g`:

    m <- m (alpha I - g^T g / ||g||_F^2) - eta P(g),      W <- W + m

(`g^T g` is `[fan_in, fan_in]`: the outer-product term acts along the input dimension). We store the
buffer without the learning rate and with the opposite sign, `b = -m / eta`, exactly as
`torch.optim.SGD` stores its momentum:

    b <- alpha b - delta (b g^T) g / ||g||_F^2 + P(g)     (first step: b = P(g))
    W <- W - lr * b                   (nesterov: W <- W - lr * (P(g) + alpha b))

so with `delta = 0` and no preconditioner the operations are those of
`torch.optim.SGD(momentum=alpha, dampening=0, nesterov=...)` one for one (bit-identical), and with
`delta = 1` it is Eq. 49 for a constant lr (like SGD, a scheduled lr scales the whole buffer, not
only new gradients). `delta` in [0, 1] interpolates; the erase uses the raw (weight-decayed) gradient.
The product is formed as `(b g^T) g` or `b (g^T g)`, whichever is cheaper.

Preconditioner (`precondition=True`): `P(g) = g / (sqrt(v / (1 - beta2^t)) + eps)` with
`v <- beta2 v + (1 - beta2) g^2` (the running RMS of gradients, Adam's second moment).
Weight decay is added to the gradient (`g <- g + wd W`), as in SGD, or with
`decoupled_weight_decay=True` applied to the weights (`W <- (1 - lr wd) W`, as AdamW), which is what
one wants with the preconditioner (a coupled decay would be divided by the RMS too).

Defaults: lr 0.01, momentum 0.9, delta 1.0, no Nesterov, no preconditioner (beta2 0.999, eps 1e-8).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from hope.optim._common import as_matrix, check, check_beta, check_nonneg, check_pos


class DeltaMomentum(torch.optim.Optimizer):
    """Momentum with a delta-rule (erasing) write, optionally RMS-preconditioned.

    Args:
        params: parameters or param groups (group keys: all keyword arguments below).
        lr: learning rate (default 0.01).
        momentum: retention `alpha` in [0, 1) (default 0.9).
        delta: strength of the erase term in [0, 1]; 0 is SGD with momentum (default 1.0).
        nesterov: Nesterov update, as torch.optim.SGD (default False).
        weight_decay: weight decay (default 0).
        decoupled_weight_decay: decay the weights directly instead of adding `wd W` to the gradient
            (default False, as SGD).
        precondition: divide gradients by their running RMS (default False).
        beta2: EMA coefficient of the running mean square (default 0.999).
        eps: added to the RMS (default 1e-8).
        foreach: `torch._foreach_*` kernels for the elementwise parts (default True).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        momentum: float = 0.9,
        delta: float = 1.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        precondition: bool = False,
        beta2: float = 0.999,
        eps: float = 1e-8,
        foreach: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, delta=delta, nesterov=nesterov, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, precondition=precondition, beta2=beta2, eps=eps, foreach=foreach,
        )
        self._check_group(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict) -> None:
        check_nonneg("lr", group["lr"])
        check_beta("momentum", group["momentum"])
        d = group["delta"]
        check(isinstance(d, (int, float)) and 0.0 <= d <= 1.0, f"delta must be in [0, 1], got {d!r}")
        check(not group["nesterov"] or group["momentum"] > 0, "nesterov needs momentum > 0")
        check_nonneg("weight_decay", group["weight_decay"])
        check_beta("beta2", group["beta2"])
        check_pos("eps", group["eps"])

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params)
        return loss

    def _group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, alpha, delta, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
        foreach = group["foreach"]
        grads = [p.grad for p in params]
        if wd != 0 and group["decoupled_weight_decay"]:
            if foreach:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                for p in params:
                    p.mul_(1 - lr * wd)
        elif wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd) if foreach else [g.add(p, alpha=wd) for g, p in zip(grads, params)]
        pgrads = grads
        if group["precondition"]:
            beta2, eps = group["beta2"], group["eps"]
            for p in params:
                state = self.state[p]
                if "exp_avg_sq" not in state:
                    state["step"] = 0
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            vs = [self.state[p]["exp_avg_sq"] for p in params]
            bc2_sqrt = [(1 - beta2 ** self.state[p]["step"]) ** 0.5 for p in params]
            if foreach:
                torch._foreach_mul_(vs, beta2)
                torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)
                denom = torch._foreach_sqrt(vs)
                torch._foreach_div_(denom, bc2_sqrt)
                torch._foreach_add_(denom, eps)
                pgrads = torch._foreach_div(grads, denom)
            else:
                pgrads = []
                for g, v, bc in zip(grads, vs, bc2_sqrt):
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    pgrads.append(g / (v.sqrt() / bc).add_(eps))
        if alpha == 0:
            updates = pgrads
        else:
            old = []  # indices of parameters whose buffer existed before this step
            for i, (p, pg) in enumerate(zip(params, pgrads)):
                state = self.state[p]
                if "momentum_buffer" in state:
                    old.append(i)
                else:
                    state["momentum_buffer"] = torch.clone(pg).detach()
            if old:
                bs = [self.state[params[i]]["momentum_buffer"] for i in old]
                gs = [pgrads[i] for i in old]
                erase = [self._erase_term(b, grads[i], delta) for b, i in zip(bs, old)] if delta != 0 else []
                if foreach:
                    torch._foreach_mul_(bs, alpha)
                    if erase:
                        torch._foreach_sub_(bs, erase)
                    torch._foreach_add_(bs, gs)
                else:
                    for j, (b, g) in enumerate(zip(bs, gs)):
                        b.mul_(alpha)
                        if erase:
                            b.sub_(erase[j])
                        b.add_(g)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            if group["nesterov"]:
                updates = torch._foreach_add(pgrads, bufs, alpha=alpha) if foreach else [g.add(b, alpha=alpha) for g, b in zip(pgrads, bufs)]
            else:
                updates = bufs
        if foreach:
            torch._foreach_add_(params, updates, alpha=-lr)
        else:
            for p, u in zip(params, updates):
                p.add_(u, alpha=-lr)

    @staticmethod
    def _erase_term(buf: torch.Tensor, g: torch.Tensor, delta: float) -> torch.Tensor:
        """`delta (b g^T) g / ||g||_F^2` on the matrix views, shaped like `buf` (zero when g = 0)."""
        gm, bm = as_matrix(g), as_matrix(buf)
        rows, cols = gm.shape
        proj = (bm @ gm.T) @ gm if rows <= cols else bm @ (gm.T @ gm)
        return proj.mul_(delta / gm.pow(2).sum().clamp(min=1e-30)).view_as(buf)
