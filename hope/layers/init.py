"""One initialization for every model, chosen by the role of a weight, not by its name.

Layers mark the linear maps whose output is added to the residual stream with
`residual_output(linear)` (attention's output projection, a mixer's `W_o`, the down projection of
every MLP and CMS level). `init_weights(model, std, n_layers)` then draws, in the order of `model.modules()`:

* every `nn.Embedding` and every other `nn.Linear` weight from Normal(0, std) (biases are kept:
  the gates of the memory mixers set theirs);
* every residual output from Normal(0, std / sqrt(2 n_layers)) (GPT-2's depth scale), whatever
  the number of residual branches in a block: a Hope block with a K-level CMS has 1 + K of them,
  each initialized like one of a Transformer++ block's two. (Scaling by the number of branches
  instead, std / sqrt(R), made the 3-level static chain of Hope-Attention worse: 214.3 against
  193.2 validation perplexity at 614K tokens, docs/DEVIATIONS.md.)

Weights shared by two modules (a tied LM head) are drawn once. Parameters that are not weights of
Linear or Embedding modules (memory initial states, norms, static per-head maps) keep their own
initialization.
"""

from __future__ import annotations

import math

from torch import nn

RESIDUAL = "_hope_residual_output"


def residual_output(linear: nn.Linear) -> nn.Linear:
    """Mark `linear` as a residual output projection (its output is added to the residual stream)."""
    setattr(linear, RESIDUAL, True)
    return linear


def is_residual_output(module: nn.Module) -> bool:
    return getattr(module, RESIDUAL, False)


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """Initialize `model`'s Embedding and Linear weights by role (module docstring): residual
    outputs Normal(0, std / sqrt(2 n_layers)), the others Normal(0, std)."""
    res_std = std / math.sqrt(2 * n_layers)
    seen = set()
    for mod in model.modules():
        if not isinstance(mod, (nn.Linear, nn.Embedding)) or id(mod.weight) in seen:
            continue
        seen.add(id(mod.weight))
        nn.init.normal_(mod.weight, std=res_std if is_residual_output(mod) else std)
