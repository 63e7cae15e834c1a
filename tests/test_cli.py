"""The `hope` command: help, generate, info, and one clear line for every bad input."""

import subprocess
import sys

import pytest

from cli_support import TINY, error_of

from hope.cli import main


@pytest.mark.parametrize("sub", ["train", "generate", "info"])
def test_help(sub):
    out = subprocess.run([sys.executable, "-m", "hope.cli", sub, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: hope" in out.stdout


def test_generate_and_info(run_dir, capsys):
    assert main(["generate", "--run", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "last val:" in out and '"arch": "transformer"' in out


def test_unknown_key(capsys, tmp_path):
    msg = error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--set", "model.width=3"])
    assert "unknown key model.width" in msg and "model.d_model" in msg


def test_wrong_type_and_range(capsys, tmp_path):
    assert "train.steps expects an integer" in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--set", "train.steps=x"])
    assert "train.lr must be > 0" in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--set", "train.lr=0"])


def test_sequence_longer_than_model(capsys, tmp_path):
    msg = error_of(capsys, ["train", "--recipe", "debug", "--out", str(tmp_path / "r"), "--set", "train.seq_len=1000"])
    assert "model.max_seq_len" in msg
    assert not (tmp_path / "r").exists()


def test_bad_data_path(capsys, tmp_path):
    assert "does not exist" in error_of(capsys, ["train", *TINY, "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "holds no text" in error_of(capsys, ["train", *TINY, "--out", str(tmp_path / "r2"), "--data", str(tmp_path / "empty")])


def test_existing_run_folder_is_not_overwritten(run_dir, capsys):
    before = sorted(p.name for p in run_dir.iterdir())
    msg = error_of(capsys, ["train", "--out", str(run_dir), *TINY])
    assert "already exists" in msg and "--resume" in msg and "--overwrite" in msg
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_prompt_too_long(run_dir, capsys):
    assert "maximum length" in error_of(capsys, ["generate", "--run", str(run_dir), "--prompt", "x" * 300])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_checkpoint_is_named(run_dir, capsys, tmp_path, damage):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    weights = next((run / "checkpoints").glob("step-*")) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    msg = error_of(capsys, ["info", str(run)])
    assert "model.safetensors" in msg and "corrupt" in msg
    msg = error_of(capsys, ["train", "--out", str(run), "--resume", "--no-progress"])
    assert "model.safetensors" in msg


def test_resume_without_run(capsys, tmp_path):
    assert "cannot resume" in error_of(capsys, ["train", "--out", str(tmp_path / "none"), "--resume"])
