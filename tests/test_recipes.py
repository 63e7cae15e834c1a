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


CMS_RECIPES = sorted(r for r in RECIPES if r.startswith("hope"))


@pytest.mark.parametrize("recipe", CMS_RECIPES)
def test_every_learning_cms_level_steps_inside_a_training_sequence(recipe, monkeypatch):
    """SPEC 4.3: each learning level steps in training as at inference, and while the sequence goes on,
    so its new weights are read (and, with the meta-learned step, its step size is trained). The
    recipe's periods and training length drive a debug-width model of the same architecture."""
    from dataclasses import replace

    from hope.layers.cms import CMS
    from hope.models.common import forward_backward

    cfg = get_recipe(recipe)
    arch = recipe.rsplit("_", 1)[0]
    small = get_recipe(f"{arch}_debug").model
    fields = {"cms_periods": cfg.model.cms_periods}
    if hasattr(small, "max_seq_len"):
        fields["max_seq_len"] = cfg.train.seq_len
    model = build_model(arch, replace(small, **fields))
    T = cfg.train.seq_len
    steps = []  # (position, level) of every fast-weight step that changed a level's weights
    original = CMS._step

    def spy(self, state, grads, graph):
        new = original(self, state, grads, graph)
        for i, (old, d) in enumerate(zip(state["delta"], new["delta"])):
            if d is not None and not torch.equal(old["w1"], d["w1"]):
                steps.append((state["pos"], i))
        return new

    monkeypatch.setattr(CMS, "_step", spy)
    torch.manual_seed(0)
    x = torch.randint(0, small.vocab_size, (1, T + 1))
    _, state = forward_backward(model, x[:, :-1], x[:, 1:], None, T, truncate=cfg.train.tbptt)
    learning = [i for i, p in enumerate(cfg.model.cms_periods) if p is not None]
    assert learning, f"{recipe} has no learning CMS level"
    for i in learning:
        inside = [pos for pos, level in steps if level == i and pos < T]
        assert inside, f"{recipe}: CMS level {i} (period {cfg.model.cms_periods[i]}) never steps inside its " \
                        f"{T}-token training sequence"
        for block in state["blocks"]:  # and what it learned is in the state handed on
            assert block["cms"]["delta"][i]["w1"].abs().sum() > 0
