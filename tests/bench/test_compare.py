"""benchmarks/compare.py: a diverged model is a recorded result, any other error stops the comparison."""

import json

import pytest
from conftest import load_benchmark

from hope.errors import DivergedError, HopeError


@pytest.fixture
def compare():
    return load_benchmark("compare")


def test_divergence_is_recorded_and_skipped_on_rerun(compare, tmp_path, monkeypatch):
    calls = []

    def diverge(cfg, run, **kw):
        calls.append(run)
        raise DivergedError("training diverged at step 3 (loss nan); lower train.lr")

    monkeypatch.setattr(compare, "train", diverge)
    result = compare.run_one("titans", "debug", 2048, tmp_path, [])
    assert "diverged at step 3" in result["error"]
    assert json.loads((tmp_path / "titans" / "diverged.json").read_text())["error"] == result["error"]
    assert "diverged at step 3" in compare.write_table([result], tmp_path)
    assert compare.run_one("titans", "debug", 2048, tmp_path, [])["error"] == result["error"]
    assert len(calls) == 1  # the rerun does not train the diverged model again


def test_bad_input_is_not_recorded_as_a_result(compare, tmp_path, monkeypatch):
    def unprepared(cfg, run, **kw):
        raise HopeError("corpus 'wiki' is not prepared; run: hope data get wiki")

    monkeypatch.setattr(compare, "train", unprepared)
    with pytest.raises(HopeError, match="not prepared"):
        compare.run_one("titans", "debug", 2048, tmp_path, [])
    assert not (tmp_path / "titans" / "diverged.json").exists()


def test_cli_prints_one_line_for_bad_input(compare, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["compare.py", "--quick", "--out", str(tmp_path), "--models", "titans",
                                     "--set", "train.no_such_key=1"])
    with pytest.raises(SystemExit) as e:
        compare.main()
    assert str(e.value).startswith("error: ") and "no_such_key" in str(e.value)


def test_arch_overrides(compare):
    sets = ["train.steps=5", "transformer:model.max_seq_len=2048", "hope:model.dgd=false"]
    assert compare.arch_overrides("transformer", sets) == ["train.steps=5", "model.max_seq_len=2048"]
    assert compare.arch_overrides("titans", sets) == ["train.steps=5"]
    with pytest.raises(HopeError, match="'rnn' is not one of"):
        compare.arch_overrides("titans", ["rnn:model.dgd=true"])


def test_steps_follow_the_overridden_batch_shape(compare, tmp_path, monkeypatch):
    seen = {}

    def capture(cfg, run, **kw):
        seen["train"] = cfg.train
        raise HopeError("stop here")

    monkeypatch.setattr(compare, "train", capture)
    with pytest.raises(HopeError, match="stop here"):
        compare.run_one("titans", "debug", 40960, tmp_path, ["train.seq_len=128", "train.batch_size=4"])
    assert seen["train"].steps == 80 and seen["train"].seq_len == 128  # 40960 / (4 x 128)
