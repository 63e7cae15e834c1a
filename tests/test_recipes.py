"""Every recipe builds, and architectures of one size have parameter counts within 5% of Transformer++."""

import pytest
import torch

from hope.models import build_model
from hope.recipes import RECIPES, get_recipe
from hope.train import count_parameters

SIZES = ("debug", "tiny", "small", "base")


def n_params(recipe: str) -> int:
    cfg = get_recipe(recipe)
    with torch.device("meta"):
        return count_parameters(build_model(cfg.arch, cfg.model))["total"]


@pytest.mark.parametrize("recipe", sorted(r for r in RECIPES if r not in SIZES))
def test_parameter_counts_match_transformer(recipe):
    size = recipe.rsplit("_", 1)[1]
    ratio = n_params(recipe) / n_params(size)
    assert abs(ratio - 1) < 0.05, f"{recipe}: {ratio:.3f} x the Transformer's parameters"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_on_its_sequence_length(recipe):
    cfg = get_recipe(recipe)
    assert cfg.train.seq_len <= (getattr(cfg.model, "max_seq_len", None) or cfg.train.seq_len)
