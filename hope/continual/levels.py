"""Which parts of a model moved during a continual run, and how far: the question to ask when a
multi-frequency model forgets as much as a plain one.

Two kinds of movement, both as relative L2 distances:

* **Outer movement** (`role_drift`): how far the outer optimizer moved each part's weights during a
  stage, `||theta_i - theta_{i-1}|| / ||theta_{i-1}||` over all parameters of one role (the
  embedding, the mixers or attention, the MLPs, each CMS level by its period, the norms), from the
  run's per-stage checkpoints. A level that is slow in context is not slow here unless the outer
  loop treats it so.
* **In-context movement** (`context_movement`): how far each learning CMS level's fast weights move
  from its trained weights while the model reads held-out text with no outer optimizer
  (`hope.learn.level_movement`).

`python benchmarks/continual_levels.py --suite SUITE` reports both for the runs of a suite.
"""

from __future__ import annotations

import re

import torch

_LEVEL = re.compile(r"^blocks\.(\d+)\.cms\.levels\.(\d+)\.")


def parameter_role(name: str, periods: dict[int, tuple] | None = None) -> str:
    """The role of parameter `name`: `embedding`, `head`, `norms`, `attention`, `mixer`, `mlp`,
    `cms period P` / `cms static` (a CMS level, by its period; `periods` maps a block index to its
    CMS periods; the levels of a CMS without a learning level are `mlp`), or `other`."""
    m = _LEVEL.match(name)
    if m:
        period = (periods or {}).get(int(m.group(1)), ())
        k = int(m.group(2))
        if period and all(p is None for p in period):
            return "mlp"                                    # a CMS of static levels only is an MLP
        p = period[k] if k < len(period) else "?"
        return "cms static" if p is None else f"cms period {p}"
    if name.startswith("embed."):
        return "embedding"
    if name.startswith(("lm_head.", "head.")):
        return "head"
    if any("norm" in part for part in name.split(".")[:-1]) or name.endswith("norm_weight"):
        return "norms"
    for role, key in (("attention", ".attn."), ("mixer", ".mixer."), ("mlp", ".mlp.")):
        if key in name:
            return role
    return "other"


def cms_periods(model) -> dict[int, tuple]:
    """Block index -> the periods of its CMS levels (empty for a model without a CMS)."""
    return {i: tuple(b.cms.periods) for i, b in enumerate(getattr(model, "blocks", [])) if hasattr(b, "cms")}


@torch.no_grad()
def role_drift(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
               periods: dict[int, tuple] | None = None) -> dict[str, float]:
    """Per role, `||after - before|| / ||before||` over all its parameters (float64 sums); tied
    parameters counted once (by name in `before`)."""
    diff: dict[str, float] = {}
    base: dict[str, float] = {}
    for name, b in before.items():
        role = parameter_role(name, periods)
        a = after[name].to(torch.float64)
        b = b.to(torch.float64)
        diff[role] = diff.get(role, 0.0) + float((a - b).pow(2).sum())
        base[role] = base.get(role, 0.0) + float(b.pow(2).sum())
    return {r: (diff[r] / base[r]) ** 0.5 if base[r] > 0 else float("nan") for r in sorted(diff)}


def context_movement(model, rows: torch.Tensor, window: int) -> dict:
    """Read `rows` [B, L] `window` tokens at a time with the CMS learning (no outer optimizer);
    per period, the mean over layers of ||fast weights - trained weights|| / ||trained weights||
    (`hope.learn.level_movement`). Empty for a model whose CMS does not learn."""
    from hope.learn import level_movement

    if getattr(model, "cms_segment", None) is None or not hasattr(model, "learned_part"):
        return {}
    was = model.training
    model.eval()
    state = None
    for a in range(0, rows.shape[1], window):
        _, state = model.read(rows[:, a:a + window], state, learn=True)
    model.train(was)
    return {str(p): v for p, v in level_movement(model, model.learned_part(state)).items()}
