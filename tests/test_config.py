import pytest

from hope.config import Config, apply_overrides
from hope.errors import HopeError
from hope.recipes import RECIPES, get_recipe


def test_override_coerces_types():
    cfg = apply_overrides(get_recipe("debug"), ["model.d_model=128", "train.lr=1e-3", "train.compile=true"])
    assert cfg.model.d_model == 128 and isinstance(cfg.model.d_model, int)
    assert cfg.train.lr == 1e-3
    assert cfg.train.compile is True


def test_unknown_key_lists_valid_ones():
    with pytest.raises(HopeError, match=r"unknown key train\.stepz; valid keys: .*train\.steps"):
        apply_overrides(get_recipe("debug"), ["train.stepz=3"])
    with pytest.raises(HopeError, match="unknown key"):
        apply_overrides(get_recipe("debug"), ["optim.lr=3"])


def test_wrong_type_is_named():
    with pytest.raises(HopeError, match=r"train\.steps expects an integer, got 'many'"):
        apply_overrides(get_recipe("debug"), ["train.steps=many"])
    with pytest.raises(HopeError, match=r"train\.compile expects true or false"):
        apply_overrides(get_recipe("debug"), ["train.compile=maybe"])


@pytest.mark.parametrize("override,message", [
    ("train.lr=-1", r"train\.lr must be > 0"),
    ("train.steps=0", r"train\.steps must be > 0"),
    ("model.n_heads=3", r"divisible by model\.n_heads"),
    ("data.tokenizer=words", r"data\.tokenizer must be one of"),
    ("train.optimizer=sgd9", r"train\.optimizer must be one of"),
    ("train.seq_len=4096", r"larger than model\.max_seq_len"),
], ids=["negative-lr", "zero-steps", "heads", "tokenizer", "optimizer", "seq-len"])
def test_out_of_range(override, message):
    with pytest.raises(HopeError, match=message):
        apply_overrides(get_recipe("debug"), [override])


def test_malformed_override():
    with pytest.raises(HopeError, match="section.key=value"):
        apply_overrides(get_recipe("debug"), ["train.steps"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_round_trip(name, tmp_path):
    cfg = get_recipe(name)
    cfg.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == cfg


def test_corrupt_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HopeError, match="corrupt config file"):
        Config.load(tmp_path / "config.json")


def test_config_without_format_loads_hope_as_trained_before_the_change():
    """A run written before format 2 has no `self_target` (or, by hand, no `memory`): it reads the old
    defaults (SPEC's MLP main memory with self-generated targets); a current file reads as written."""
    new = get_recipe("hope_debug")
    assert new.model.memory == "linear" and new.model.self_target is False
    old = new.to_dict()
    del old["format"], old["model"]["self_target"], old["model"]["memory"]
    loaded = Config.from_dict(old)
    assert loaded.model.memory == "mlp" and loaded.model.self_target is True
    old["model"]["memory"] = "linear"                      # a stored value wins over the old default
    assert Config.from_dict(old).model.memory == "linear"
    assert Config.from_dict(new.to_dict()) == new
    with pytest.raises(HopeError, match="config format 9"):
        Config.from_dict({**new.to_dict(), "format": 9})


def test_format_2_runs_resume_with_the_truncated_gradient_they_trained_with():
    """Format 3 made the full gradient within a training sequence the default (`train.tbptt` false);
    a format-2 file without the key trained truncated and keeps doing so."""
    new = get_recipe("hope_attention_debug")
    assert new.train.tbptt is False
    old = {**new.to_dict(), "format": 2}
    del old["train"]["tbptt"]
    assert Config.from_dict(old).train.tbptt is True
    old["train"]["tbptt"] = False                          # a stored value wins
    assert Config.from_dict(old).train.tbptt is False
    assert Config.from_dict(new.to_dict()).train.tbptt is False
