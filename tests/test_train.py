"""End-to-end training on the debug recipe: the loss falls, resume is exact, bad input is refused."""

import json
import signal

import pytest

import hope.train
from hope.cli import main
from hope.config import apply_overrides
from hope.recipes import get_recipe
from hope.train import lr_at, train

FAST = ["model.d_model=32", "train.eval_tokens=2048", "train.sample_tokens=20", "train.num_samples=1"]


def losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_debug_recipe_learns(tmp_path):
    cfg = get_recipe("debug")
    result = train(cfg, tmp_path / "run", progress=False)
    steps = losses(tmp_path / "run")
    assert len(steps) == cfg.train.steps
    first = sum(steps[s] for s in range(1, 6)) / 5
    last = sum(steps[s] for s in range(cfg.train.steps - 4, cfg.train.steps + 1)) / 5
    assert last < first - 0.5, (first, last)
    assert result["val_ppl"] < result["unigram_ppl"]
    for name in ("config.json", "tokenizer.json", "run.json", "metrics.jsonl", "samples.txt", "final.json",
                 "checkpoints/latest"):
        assert (tmp_path / "run" / name).exists(), name


def test_resume_after_ctrl_c_reproduces_losses(tmp_path, monkeypatch):
    cfg = apply_overrides(get_recipe("debug"), FAST + ["train.steps=12", "train.ckpt_every=5", "train.eval_every=6"])
    train(cfg, tmp_path / "straight", progress=False)

    def interrupt_at_step_7(step, tc):
        if step == 6:  # 0-based: the schedule of step 7
            signal.raise_signal(signal.SIGINT)
        return lr_at(step, tc)

    monkeypatch.setattr(hope.train, "lr_at", interrupt_at_step_7)
    result = train(cfg, tmp_path / "resumed", progress=False)
    assert result["interrupted"] and result["step"] == 7
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step-0000007"
    monkeypatch.undo()
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_lr_schedule():
    tc = get_recipe("debug").train
    assert lr_at(0, tc) == pytest.approx(1 / tc.warmup_steps)
    assert lr_at(tc.warmup_steps - 1, tc) == pytest.approx(1.0)
    assert lr_at(tc.steps - 1, tc) == pytest.approx(tc.min_lr_ratio, abs=1e-3)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(tc.warmup_steps, tc.steps))


@pytest.mark.parametrize("arch", ["titans", "hope_attention", "hope"])
def test_every_architecture_trains_resumes_and_generates(arch, tmp_path, capsys):
    args = ["--recipe", f"{arch}_debug", "--no-progress", "--set", "train.steps=4", "train.eval_every=2",
            "train.ckpt_every=2", "train.eval_tokens=512", "train.sample_tokens=0", "train.batch_size=4",
            "train.seq_len=32", "train.log_every=1"]
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    assert all(map(lambda v: v == v, losses(tmp_path / "run").values()))  # finite
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_ppl" in r]
    assert len(evals) == 2
    # a CMS that learns in context is validated learning, as trained, with the frozen figure beside it
    learns = arch != "titans"
    assert all(("val_ppl_frozen" in r) == learns for r in evals)
    if learns:
        assert all(r["val_ppl"] != r["val_ppl_frozen"] for r in evals)
    capsys.readouterr()
    for flag in ([], ["--no-learn"]):
        assert main(["generate", "--run", str(tmp_path / "run"), "--prompt", "KING:", "--max-new-tokens", "5", *flag]) == 0
        assert capsys.readouterr().out.startswith("KING:")


@pytest.mark.parametrize("arch", ["hope_attention", "hope"])
def test_meta_learned_step_and_full_gradient_train(arch, tmp_path):
    """model.cms_meta with train.tbptt=false: the whole sequence in one graph, the step sizes learned."""
    import torch

    from hope.checkpoint import latest_checkpoint, load_checkpoint
    from hope.models import build_model

    cfg = apply_overrides(get_recipe(f"{arch}_debug"), FAST + [
        "train.steps=3", "train.eval_every=3", "train.seq_len=32", "train.batch_size=2", "train.log_every=1",
        "model.cms_meta=true", "train.tbptt=false", "train.warmup_steps=1"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert all(v == v for v in losses(tmp_path / "run").values()) and result["val_ppl"] == result["val_ppl"]
    from hope.config import Config

    saved = Config.load(tmp_path / "run" / "config.json")
    model = build_model(saved.arch, saved.model)
    load_checkpoint(latest_checkpoint(tmp_path / "run"), model)
    start = torch.log(torch.tensor(saved.model.cms_lr))
    moved = [float((b.cms.log_lr.detach() - start).abs().max()) for b in model.blocks]
    assert all(m > 0 for m in moved), moved


def test_stateful_streams_resume_exactly(tmp_path, monkeypatch):
    """`train.stateful` carries each row's in-context state across steps; the checkpoint keeps it."""
    cfg = apply_overrides(get_recipe("hope_attention_debug"), FAST + [
        "train.steps=6", "train.ckpt_every=3", "train.eval_every=3", "train.stateful=true", "train.seq_len=32",
        "train.batch_size=4"])
    train(cfg, tmp_path / "straight", progress=False)

    def interrupt_at_step_4(step, tc):
        if step == 3:
            signal.raise_signal(signal.SIGINT)
        return lr_at(step, tc)

    monkeypatch.setattr(hope.train, "lr_at", interrupt_at_step_4)
    assert train(cfg, tmp_path / "resumed", progress=False)["interrupted"]
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000004" / "streams.pt").exists()
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
