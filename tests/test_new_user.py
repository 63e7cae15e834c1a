"""The rough edges a new user hit (issue 18), one test each: bad devices, Ctrl-C while importing, odd
arguments, evaluating on one's own text, data that needs an extra, help that lists every recipe, and
what a run folder records (resumes, file modes, a lost `latest` pointer, skipped files, repeats, the
baseline in loss.png)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

import hope.cli
from cli_support import TINY, error_of

from hope.cli import main
from hope.recipes import RECIPES


@pytest.mark.parametrize("device,message", [("foo", "is not a device"), ("cuda:7", "CUDA"), ("mps", "MPS")])
@pytest.mark.parametrize("command", [["generate", "--run", "{run}"], ["eval", "ppl", "--run", "{run}"],
                                     ["eval", "niah", "--run", "{run}", "--tasks", "niah_single_1"]],
                         ids=["generate", "eval-ppl", "eval-niah"])
def test_one_line_for_a_device_that_is_not_there(run_dir, capsys, command, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7 or device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has that device")
    argv = [a.format(run=run_dir) for a in command] + ["--device", device]
    msg = error_of(capsys, argv)
    assert f"--device={device}" in msg and message in msg


def test_ctrl_c_while_importing_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(hope.cli, "build_parser", interrupted)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_in_the_first_second_prints_no_traceback():
    # -X importtime slows the imports down (and logs them to stderr), so the signal lands inside them
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "hope.cli", "generate", "--run", "nowhere"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        pytest.skip("the command finished before the signal")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-2000:]
    assert proc.returncode == 130 and err.splitlines()[-1] == "interrupted"


def test_num_samples_and_a_file_for_a_folder(run_dir, capsys):
    assert "--num-samples must be >= 1" in error_of(capsys, ["generate", "--run", str(run_dir), "--num-samples", "0"])
    readme = run_dir / "config.json"
    msg = error_of(capsys, ["info", str(readme)])
    assert "is a file, not a run folder" in msg


def test_eval_ppl_on_the_users_own_text(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(10):
        (texts / f"doc{i}.txt").write_text(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 40)
    run = tmp_path / "mine"
    assert main(["train", "--out", str(run), "--data", str(texts), *TINY]) == 0
    capsys.readouterr()
    # default: the corpus the run trained on, its validation part
    assert main(["eval", "ppl", "--run", str(run), "--modes", "independent", "--out", str(tmp_path / "a.json")]) == 0
    assert f"{texts} validation split, 1 documents" in capsys.readouterr().out
    a = json.loads((tmp_path / "a.json").read_text())
    # a file of one's own
    assert main(["eval", "ppl", "--run", str(run), "--data", str(texts / "doc3.txt"), "--modes", "independent",
                 "--out", str(tmp_path / "b.json")]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["data"] == str(texts) and b["data"].endswith("doc3.txt")
    assert 0 < b["results"]["independent"]["loss"] < 10
    assert "neither a registered corpus" in error_of(capsys, ["eval", "ppl", "--run", str(run), "--data", "nope/x"])


def test_data_get_checks_the_extra_before_downloading(monkeypatch, capsys, tmp_path):
    import importlib.util

    from hope.data import registry

    monkeypatch.setenv("HOPE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    monkeypatch.setattr(registry, "download", lambda *a, **k: pytest.fail("downloaded before checking"))
    msg = error_of(capsys, ["data", "get", "reasoning"])
    assert "needs pyarrow" in msg and "nothing was downloaded" in msg
    assert not (tmp_path / "data" / "piqa").exists()


def test_a_failed_preparation_leaves_no_folder(monkeypatch, tmp_path):
    from hope.data import registry
    from hope.errors import HopeError

    monkeypatch.setenv("HOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(registry, "download", lambda *a, **k: tmp_path / "fake.whl")

    def broken(archive):
        raise HopeError("broken archive")

    entry = registry.REGISTRY["pg"]
    monkeypatch.setitem(registry.REGISTRY, "pg", registry.Entry(entry.name, entry.kind, entry.description,
                                                                entry.source, broken))
    with pytest.raises(HopeError, match="broken"):
        registry.get("pg", progress=False, log=lambda *a: None)
    assert not registry.dataset_dir("pg").exists()


def test_a_failed_data_check_leaves_no_run_folder(capsys, tmp_path):
    (tmp_path / "short.txt").write_text("too short")
    msg = error_of(capsys, ["train", *TINY, "--out", str(tmp_path / "r"), "--data", str(tmp_path / "short.txt")])
    assert "at least 1000" in msg
    assert not (tmp_path / "r").exists()


def test_help_lists_every_recipe():
    out = subprocess.run([sys.executable, "-m", "hope.cli", "train", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    assert all(name in text for name in RECIPES), text


def test_resume_is_recorded_and_files_are_readable(run_dir, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--set", "train.steps=6"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["resumes"][0]["from_checkpoint"] == "step-0000004" and "argv" in record["resumes"][0]
    umask = os.umask(0)
    os.umask(umask)
    for f in [run / "config.json", *(run / "checkpoints").glob("step-*/model.safetensors")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


def test_a_lost_latest_pointer_falls_back_to_the_newest_step(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    (run / "checkpoints" / "latest").unlink()
    assert main(["info", str(run)]) == 0
    assert "step-0000004" in capsys.readouterr().out


def test_skipped_files_and_repeated_corpus_are_reported(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("A small text that the run will read many times over. " * 30)
    (texts / "b.txt").write_text("Another one, just as small, read over and over again. " * 30)
    (texts / "photo.jpg").write_bytes(b"\xff\xd8 not text")
    (texts / "table.xlsx").write_bytes(b"PK not text")
    assert main(["train", "--out", str(tmp_path / "r"), "--data", str(texts), *TINY, "train.steps=40",
                 "train.eval_every=40", "train.ckpt_every=40"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 file(s)" in out and "1 .jpg" in out and "1 .xlsx" in out
    assert "times: expect the model to memorize them" in out


def test_loss_curve_draws_the_unigram_baseline():
    pytest.importorskip("matplotlib")
    import math

    from hope.train import loss_figure

    records = [{"tokens": 10, "loss": 5.0}, {"tokens": 20, "loss": 4.0, "val_loss": 4.2}]
    fig = loss_figure(records, "run", baseline_ppl=100.0)
    lines = fig.axes[0].get_lines()
    baseline = [ln for ln in lines if "unigram" in ln.get_label()]
    assert len(baseline) == 1 and baseline[0].get_ydata()[0] == pytest.approx(math.log(100.0))


def test_eval_context_past_the_trained_length_needs_max_seq_len(run_dir, capsys, tmp_path):
    """An attention model refuses a context longer than its maximum length, and `--max-seq-len` lifts
    it (RoPE tables are not weights); a model without a maximum length says it needs none."""
    from hope.config import Config
    from hope.runs import load_run

    limit = Config.load(run_dir / "config.json").model.max_seq_len
    argv = ["eval", "context", "--run", str(run_dir), "--data", "shakespeare", "--length", str(2 * limit),
            "--max-pieces", "2", "--out", str(tmp_path)]
    assert "exceeds the model's maximum length" in error_of(capsys, argv)
    assert main([*argv, "--max-seq-len", str(2 * limit)]) == 0
    curve = json.loads((tmp_path / "context_shakespeare.json").read_text())
    assert curve["length"] == 2 * limit and len(curve["modes"]["no_learn"]["loss"]) == 2 * limit
    assert load_run(run_dir, max_seq_len=2 * limit).model.max_seq_len == 2 * limit
