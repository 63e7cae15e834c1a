"""The deep optimizers in the training loop (`train.optimizer=...`): a run interrupted after a
checkpoint and resumed through the CLI reproduces the uninterrupted run's losses exactly (the real
checkpoint path: `torch.load(weights_only=True)` of the optimizer state)."""

import json
import signal

import pytest

import hope.train
from hope.cli import main
from hope.config import apply_overrides
from hope.recipes import get_recipe
from hope.train import lr_at, train

FAST = ["model.d_model=32", "train.eval_tokens=1024", "train.sample_tokens=0", "train.steps=6",
        "train.ckpt_every=3", "train.eval_every=6", "train.warmup_steps=2"]


def losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.parametrize("name", ["muon", "m3", "delta_momentum", "dmgd"])
def test_training_resume_is_exact(name, tmp_path, monkeypatch):
    cfg = apply_overrides(get_recipe("debug"), FAST + [f"train.optimizer={name}"])
    train(cfg, tmp_path / "straight", progress=False)

    def interrupt_at_step_4(step, tc):
        if step == 3:  # 0-based: the schedule of step 4
            signal.raise_signal(signal.SIGINT)
        return lr_at(step, tc)

    monkeypatch.setattr(hope.train, "lr_at", interrupt_at_step_4)
    result = train(cfg, tmp_path / "resumed", progress=False)
    assert result["interrupted"] and result["step"] == 4
    monkeypatch.undo()
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    straight = losses(tmp_path / "straight")
    assert losses(tmp_path / "resumed") == straight
    assert straight[6] < straight[1]
