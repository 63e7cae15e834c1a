"""Optimizers: AdamW and the deep optimizers of SPEC section 5, behind one factory.

`build_optimizer(name, named_params, lr, weight_decay, ...)` is what `hope/train.py` calls with
`train.optimizer`; every optimizer added here must be reachable through it.
"""

from __future__ import annotations

import torch
from torch import nn


def _decay_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Matrices (ndim >= 2) decay; norms, biases and gates (ndim < 2) do not."""
    decay = [p for _, p in named_params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in named_params if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    name: str,
    named_params: list[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build the optimizer `name` for a model's `named_parameters()`.

    Args:
        name: one of `OPTIMIZER_NAMES`.
        named_params: list of (name, parameter) pairs, as `list(model.named_parameters())`.
        lr: peak learning rate (the schedule multiplies it).
        weight_decay: decoupled weight decay for matrices.
        betas: Adam betas.
        fused: use the fused AdamW kernel (GPU).
    Returns:
        a `torch.optim.Optimizer` whose param groups all carry an `lr` key.
    """
    if name == "adamw":
        kwargs = {"fused": True} if fused else {}
        return torch.optim.AdamW(_decay_groups(named_params, weight_decay), lr=lr, betas=betas, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_NAMES)}")


OPTIMIZER_NAMES = ("adamw",)
