"""Optimizers: AdamW and the deep optimizers of SPEC section 5, behind one factory.

`build_optimizer(name, named_params, lr, weight_decay, ...)` is what `hope/train.py` calls with
`train.optimizer`; every optimizer added here must be reachable through it.

* `DeltaMomentum` (delta_momentum.py): momentum written by a delta rule (Eq. 49), optional RMS
  preconditioner; `delta=0` is torch.optim.SGD with momentum.
* `DMGD` (dmgd.py): deep momentum, an MLP memory per tensor trained online (Eq. 50, 52).
* `Muon` (muon.py): momentum + Newton-Schulz for matrices, AdamW for the rest.
* `M3` (m3.py): multi-scale momentum Muon (Algorithm 1, our reading).
* `newton_schulz` (_common.py): the 5-step quintic orthogonalization they share.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.optim._common import newton_schulz
from hope.optim.delta_momentum import DeltaMomentum
from hope.optim.dmgd import DMGD
from hope.optim.m3 import M3
from hope.optim.muon import Muon

__all__ = ["DMGD", "M3", "DeltaMomentum", "Muon", "OPTIMIZER_NAMES", "build_optimizer", "newton_schulz"]

# 2-D parameters whose names contain these go to AdamW under muon / m3 (standard Muon practice).
ADAMW_MATRIX_NAMES = ("embed", "lm_head")


def _decay_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Matrices (ndim >= 2) decay; norms, biases and gates (ndim < 2) do not."""
    decay = [p for _, p in named_params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in named_params if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _hybrid_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Muon / M3 groups: hidden matrices orthogonalized; embeddings, head, other tensors on AdamW."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    is_matrix = lambda n, p: p.ndim == 2 and not any(s in n for s in ADAMW_MATRIX_NAMES)  # noqa: E731
    matrix = [p for n, p in trainable if is_matrix(n, p)]
    adam_decay = [p for n, p in trainable if not is_matrix(n, p) and p.ndim >= 2]
    adam_no_decay = [p for n, p in trainable if p.ndim < 2]
    groups = [
        {"params": matrix, "use_muon": True, "weight_decay": weight_decay},
        {"params": adam_decay, "use_muon": False, "weight_decay": weight_decay},
        {"params": adam_no_decay, "use_muon": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    name: str,
    named_params: list[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Build the optimizer `name` for a model's `named_parameters()`.

    The same `lr` (an AdamW-sized peak lr, e.g. 1e-3) works for every name, because each deep
    optimizer is built with an lr convention that matches AdamW's update size:

    * "adamw": torch.optim.AdamW, matrices decay, ndim < 2 does not.
    * "muon": `Muon(momentum=0.95, nesterov=True, adjust_lr="match_rms")` on 2-D parameters except
      names containing "embed" / "lm_head"; those and all other tensors use AdamW with `betas`.
      "match_rms" scales each orthogonalized update to RMS ~0.2 x lr (Moonlight), like AdamW's.
    * "m3": `M3(betas=(0.95, 0.999), beta3=0.99, alpha=1.0, slow_every=10, adjust_lr="match_rms")`,
      same parameter split and AdamW fallback as "muon".
    * "delta_momentum": `DeltaMomentum(momentum=0.9, delta=1.0, precondition=True)`, same lr: the RMS
      preconditioner makes the written values Adam-sized, and the delta rule replaces rather than
      accumulates a persistent gradient direction, so there is no `1 / (1 - momentum)` gain to undo.
      Decoupled decay on ndim >= 2.
    * "dmgd": `DMGD(momentum=0.9, hidden=16, inner_lr=0.5, nonlinearity="newton_schulz",
      adjust_lr="match_rms")` on every tensor (Newton-Schulz makes the update scale-free; "match_rms"
      sizes it like AdamW's). Decoupled decay on ndim >= 2.

    Args:
        name: one of `OPTIMIZER_NAMES`.
        named_params: list of (name, parameter) pairs, as `list(model.named_parameters())`.
        lr: peak learning rate (the schedule multiplies it).
        weight_decay: decoupled weight decay for matrices.
        betas: Adam betas (AdamW, and the AdamW fallback of muon / m3).
        fused: use the fused AdamW kernel (GPU; "adamw" only).
    Returns:
        a `torch.optim.Optimizer` whose param groups all carry an `lr` key.
    """
    if name == "adamw":
        kwargs = {"fused": True} if fused else {}
        return torch.optim.AdamW(_decay_groups(named_params, weight_decay), lr=lr, betas=betas, **kwargs)
    if name == "muon":
        return Muon(_hybrid_groups(named_params, weight_decay), lr=lr, momentum=0.95, nesterov=True,
                    adjust_lr="match_rms", adamw_betas=betas)
    if name == "m3":
        return M3(_hybrid_groups(named_params, weight_decay), lr=lr, betas=(0.95, 0.999), beta3=0.99, alpha=1.0,
                  slow_every=10, adjust_lr="match_rms", adamw_betas=betas)
    if name == "delta_momentum":
        return DeltaMomentum(_decay_groups(named_params, weight_decay), lr=lr, momentum=0.9, delta=1.0,
                             precondition=True, decoupled_weight_decay=True)
    if name == "dmgd":
        return DMGD(_decay_groups(named_params, weight_decay), lr=lr, momentum=0.9, hidden=16, inner_lr=0.5,
                    nonlinearity="newton_schulz", adjust_lr="match_rms")
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_NAMES)}")


OPTIMIZER_NAMES = ("adamw", "muon", "m3", "delta_momentum", "dmgd")
