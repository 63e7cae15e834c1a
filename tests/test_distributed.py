"""Data-parallel training on CPU (gloo): 2 processes equal 1 process with 2 micro-batches."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hope.cli import main

ARGS = ["--recipe", "debug", "--no-progress", "--set", "model.d_model=32", "train.steps=6", "train.eval_every=3",
        "train.ckpt_every=3", "train.eval_tokens=1024", "train.sample_tokens=0", "train.log_every=1"]


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torchrun")
def test_two_processes_equal_gradient_accumulation(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hope.train", "--out", str(tmp_path / "ddp"), *ARGS]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert main(["train", "--out", str(tmp_path / "single"), *ARGS, "train.grad_accum=2"]) == 0
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(ddp) == 6
    assert ddp == pytest.approx(single, rel=1e-5)
