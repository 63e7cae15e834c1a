"""Training in several processes on CPU (gloo): 2 processes equal 1 process with 2 micro-batches, with
DDP and with FSDP2 (`train.parallel=fsdp`, CMS in-context steps included), and a run resumed under
FSDP (or from an FSDP checkpoint in one process) equals the uninterrupted run."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hope.cli import main

ARGS = ["--no-progress", "--set", "model.d_model=32", "train.steps=6", "train.eval_every=3",
        "train.ckpt_every=3", "train.eval_tokens=1024", "train.sample_tokens=0", "train.log_every=1"]
needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torchrun")


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def torchrun(out, recipe, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hope.train", "--recipe", recipe, "--out", str(out), *ARGS, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@needs_torchrun
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_gradient_accumulation(tmp_path, parallel):
    torchrun(tmp_path / "two", "debug", f"train.parallel={parallel}")
    assert main(["train", "--recipe", "debug", "--out", str(tmp_path / "single"), *ARGS, "train.grad_accum=2"]) == 0
    two, single = losses(tmp_path / "two"), losses(tmp_path / "single")
    assert len(two) == 6
    assert two == pytest.approx(single, rel=1e-5)


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("recipe,parallel", [("titans_debug", "fsdp"), ("hope_attention_debug", "fsdp"),
                                             ("hope_debug", "fsdp"), ("hope_debug", "ddp")])
def test_two_processes_equal_gradient_accumulation_for_memory_models(tmp_path, recipe, parallel):
    """About 15 s each. DDP on Hope needs find_unused_parameters (its memories' initial states get no
    gradient in CMS segments: see hope/models/common.py's forward_backward)."""
    torchrun(tmp_path / "fsdp", recipe, f"train.parallel={parallel}", "train.steps=4")
    assert main(["train", "--recipe", recipe, "--out", str(tmp_path / "single"), *ARGS, "train.steps=4",
                 "train.grad_accum=2"]) == 0
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)


@needs_torchrun
def test_fsdp_resume_equals_uninterrupted_with_cms_steps(tmp_path):
    """Hope (CMS steps every 16 tokens): FSDP for 2 steps, then resumed under FSDP, and resumed in one
    process from the gathered FSDP checkpoint, both give the losses of one uninterrupted process."""
    flat = ["train.min_lr_ratio=1", "train.warmup_steps=0", "train.ckpt_every=2"]  # lr independent of train.steps
    torchrun(tmp_path / "fsdp", "hope_debug", "train.parallel=fsdp", "train.steps=2", *flat)
    shutil.copytree(tmp_path / "fsdp", tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hope.train",
           "--out", str(tmp_path / "fsdp"), "--resume", "--no-progress", "--set", "train.steps=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout
    assert main(["train", "--out", str(tmp_path / "one"), "--resume", "--no-progress", "--set", "train.steps=4",
                 "train.grad_accum=2"]) == 0
    assert main(["train", "--recipe", "hope_debug", "--out", str(tmp_path / "single"), *ARGS, "train.steps=4",
                 "train.grad_accum=2", *flat]) == 0
    single = losses(tmp_path / "single")
    assert len(single) == 4
    assert losses(tmp_path / "fsdp") == pytest.approx(single, rel=1e-5)
    assert losses(tmp_path / "one") == pytest.approx(single, rel=1e-5)
    resumes = json.loads((tmp_path / "fsdp" / "run.json").read_text())["resumes"]
    assert resumes[0]["from_checkpoint"] == "step-0000002" and resumes[0]["world_size"] == 2


def test_fsdp_refuses_what_it_cannot_shard(capsys, tmp_path, monkeypatch):
    from hope.config import apply_overrides
    from hope.errors import HopeError
    from hope.parallel import check_fsdp
    from hope.recipes import get_recipe

    with pytest.raises(HopeError, match="adamw only"):
        check_fsdp(apply_overrides(get_recipe("debug"), ["train.optimizer=muon"]))
    with pytest.raises(HopeError, match="nested"):
        check_fsdp(apply_overrides(get_recipe("hope_debug"), ["model.cms_variant=nested"]))
    with pytest.raises(HopeError, match="train.parallel must be ddp or fsdp"):
        apply_overrides(get_recipe("debug"), ["train.parallel=zero3"])
