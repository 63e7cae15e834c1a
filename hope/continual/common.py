"""What both continual benchmarks share: the methods, the run of one (architecture, method) through a
sequence of stages, resumable after every stage, and the settings every run of a suite shares.

A stage is a sampler of training rows (`Stage.sample(generator, n) -> x, y [n, T]`, targets -100
where unscored). `run_stages` trains a model through the stages in order with one optimizer whose
state carries across stages (momentum is a memory too: paper section 4), the learning-rate schedule
of `hope.schedule.lr_at` restarted in every stage (warmup, cosine), each step a
`hope.models.common.forward_backward` (so CMS models learn in context while they train, as in `hope
train`). After every stage (and before the first) it calls `evaluate(model, stage)` for one score per
task, and `curve_points` times per stage for the forgetting curve. After each stage it writes a
checkpoint (`hope.checkpoint.save_checkpoint`: model, optimizer, RNG, the method's state, and the
scores so far in `state.json`), so a stopped suite continues at the next stage of the run it was in.

Methods (`METHODS`):
* `seq`: the stages one after the other (the lower bound); for CMS models this is the CMS as the
  continual mechanism (its levels learn in context at their periods);
* `replay`: `seq` with a share of every batch drawn from a bounded buffer of earlier stages' rows;
* `ewc`: `seq` plus the EWC penalty of the earlier stages (diagonal Fisher, one lambda);
* `joint`: every stage draws from all tasks at once (the upper bound, same budget);
* `static_cms` (CMS models only): `seq` on the same model with every CMS level static (all periods
  None: same parameters, no fast weights), the paper's "w/o CMS" ablation as a continual learner.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from hope.checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, load_trainer_state, save_checkpoint
from hope.config import Config, apply_overrides
from hope.continual.levels import cms_periods, role_drift
from hope.continual.methods import EWC, ReplayBuffer
from hope.device import resolve_device
from hope.errors import DivergedError, HopeError
from hope.models import build_model, count_parameters
from hope.models.common import forward_backward
from hope.optim import OPTIMIZER_NAMES, build_optimizer
from hope.recipes import get_recipe
from hope.schedule import lr_at

METHODS = ("seq", "replay", "ewc", "joint", "static_cms")
ARCHS = ("transformer", "titans", "hope_attention", "hope")
SIZES = ("debug", "tiny", "small", "base")


@dataclass(frozen=True)
class Settings:
    """What every run of a suite shares (saved beside each run; a resume must match it)."""

    size: str = "tiny"  # recipe size of every architecture: debug | tiny | small | base
    optimizer: str = "adamw"  # one of hope.optim.OPTIMIZER_NAMES, state carried across stages
    steps: int = 122  # optimizer steps per stage (tokens per stage = steps x batch_size x seq_len)
    replay_rows: int = 512  # replay buffer capacity in training rows (x seq_len tokens)
    replay_share: float = 0.25  # share of every batch drawn from the buffer once it holds rows
    ewc_lambda: float = 100.0  # EWC penalty strength
    fisher_rows: int = 64  # training sequences per stage for the diagonal Fisher
    curve_points: int = 2  # evaluations per stage for the forgetting curve (the last one is R's row)
    seed: int = 1337
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE on every run's recipe

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise HopeError(f"unknown size {self.size!r}; available: {', '.join(SIZES)}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise HopeError(f"unknown optimizer {self.optimizer!r}; available: {', '.join(OPTIMIZER_NAMES)}")
        for name in ("steps", "replay_rows", "fisher_rows", "curve_points"):
            if getattr(self, name) < 1:
                raise HopeError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.replay_share < 1:
            raise HopeError(f"replay-share must be in (0, 1), got {self.replay_share}")
        if self.ewc_lambda < 0:
            raise HopeError(f"ewc-lambda must be >= 0, got {self.ewc_lambda}")


@dataclass
class Stage:
    name: str
    sample: Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]  # (generator, rows) -> x, y [rows, T]


def recipe_name(arch: str, size: str) -> str:
    return size if arch == "transformer" else f"{arch}_{size}"


def has_cms(cfg: Config) -> bool:
    """Whether the model's CMS learns in context (some level has a period)."""
    periods = getattr(cfg.model, "cms_periods", None)
    return bool(periods) and getattr(cfg.model, "cms", True) and any(p is not None for p in periods)


def parse_list(value: str | None, known: tuple[str, ...], what: str) -> list[str] | None:
    """`a,b,c` -> ['a', 'b', 'c'], each checked against `known` (None stays None: the default)."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise HopeError(f"--{what}s lists no {what}")
    for v in items:
        if v not in known:
            raise HopeError(f"unknown {what} {v!r}; available: {', '.join(known)}")
    if len(set(items)) != len(items):
        raise HopeError(f"--{what}s names a {what} twice")
    return items


def run_config(arch: str, method: str, settings: Settings, vocab_size: int, base: Config | None = None) -> Config:
    """The recipe of `arch` at `settings.size`, with the suite's overrides, the optimizer, the shared
    vocabulary, and (static_cms) every CMS level static. With `base` (the config of a `--from` run),
    that run's architecture and model, trained with the Transformer recipe's train section at
    `settings.size` (and the overrides)."""
    if base is None:
        cfg = get_recipe(recipe_name(arch, settings.size))
        overrides = [f"model.vocab_size={vocab_size}"]
    else:
        recipe = get_recipe(recipe_name("transformer", settings.size))
        seq_len = min(recipe.train.seq_len, getattr(base.model, "max_seq_len", None) or recipe.train.seq_len)
        cfg = Config(arch=base.arch, model=base.model, train=replace(recipe.train, seq_len=seq_len), data=base.data)
        overrides = []
    cfg = apply_overrides(cfg, list(settings.overrides) + [f"train.optimizer={settings.optimizer}"] + overrides)
    if method == "static_cms":
        if not has_cms(cfg):
            raise HopeError(f"method static_cms does not apply to {arch}: it has no learning CMS "
                            "(it applies to hope_attention and hope)")
        cfg = apply_overrides(cfg, ["model.cms_periods=" + ",".join("None" for _ in cfg.model.cms_periods)])
    return cfg


def load_from_run(path) -> tuple[Config, object, Path]:
    """(config, tokenizer, latest checkpoint) of the run folder `--from` names (`hope train`, `hope stack`)."""
    from hope.data.tokenizer import load_tokenizer
    from hope.runs import folder_kind

    path = Path(path)
    if folder_kind(path) != "run":
        raise HopeError(f"--from takes a run folder (hope train --out, hope stack --out); {path} is a transformers folder")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise HopeError(f"run folder {path} has no checkpoint yet")
    return Config.load(path / "config.json"), load_tokenizer(path / "tokenizer.json"), ckpt


def from_run_archs(archs: list[str] | None, base: Config) -> list[str]:
    if archs is not None and archs != [base.arch]:
        raise HopeError(f"--from runs its own architecture ({base.arch}); drop --archs or pass --archs {base.arch}")
    return [base.arch]


def plan(archs: list[str] | None, methods: list[str] | None, settings: Settings) -> list[tuple[str, str]]:
    """(arch, method) pairs to run, fastest architectures first. By default every method that applies
    to an architecture; an explicitly requested method that does not apply is an error."""
    pairs = []
    for arch in archs or list(ARCHS):
        cms = has_cms(get_recipe(recipe_name(arch, settings.size)))
        for method in methods or list(METHODS):
            if method == "static_cms" and not cms:
                if methods is not None:
                    raise HopeError(f"method static_cms does not apply to {arch}: it has no learning CMS "
                                    "(static_cms applies to hope_attention and hope; leave it out for the others)")
                continue
            pairs.append((arch, method))
    return pairs


def _autocast(device):
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def run_name(arch: str, method: str, settings: Settings) -> str:
    return f"{arch}-{method}-{settings.optimizer}"


def run_stages(run_dir: Path, cfg: Config, method: str, stages: list[Stage], evaluate: Callable,
               settings: Settings, baseline: bool = True, init_from: Path | None = None,
               progress: bool = True, log=print) -> tuple[torch.nn.Module, dict]:
    """Train `cfg`'s model through `stages` with `method`, resuming from the run folder's checkpoint.

    Args:
        run_dir: the run's folder (config.json, checkpoints/).
        cfg: the run's config (batch size, sequence length, learning rate, optimizer from `train`).
        method: one of `METHODS`; `joint` expects `stages` that already mix all tasks.
        stages: one sampler per stage.
        evaluate: `(model, stage) -> list[dict]`, one score dict per task after stage `stage`
            (-1: before the first stage).
        baseline: evaluate before the first stage (the row R[-1]).
        init_from: a checkpoint folder whose weights start the run (a pretrained model).
    Returns:
        (the trained model, its progress: `rows` [stage][task] score dicts, `baseline`, `curve`
        [{stage, step, tokens, scores}], `drift` [stage] {role: how far the stage moved its weights,
        `hope.continual.levels.role_drift`}, `tokens`, `train_seconds`, `parameters`).
    """
    tc = cfg.train
    device = resolve_device(tc.device, "train.device")
    autocast = _autocast(device)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.arch, cfg.model).to(device)
    if init_from is not None:
        load_checkpoint(init_from, model)
    optimizer = build_optimizer(tc.optimizer, list(model.named_parameters()), lr=tc.lr, weight_decay=tc.weight_decay,
                                betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    replay = ReplayBuffer(settings.replay_rows, settings.seed) if method == "replay" else None
    ewc = EWC(settings.ewc_lambda) if method == "ewc" else None
    done = {"stage": 0, "tokens": 0, "train_seconds": 0.0, "rows": [], "baseline": None, "curve": []}
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        done = load_checkpoint(ckpt, model)
        load_trainer_state(ckpt, optimizer, model)
        blob = torch.load(ckpt / "method.pt", map_location="cpu", weights_only=False) if (ckpt / "method.pt").exists() else {}
        if replay is not None:
            replay.load_state_dict(blob["replay"])
        if ewc is not None:
            ewc.load_state_dict({k: (v if k in ("lam", "names") else [t.to(device) for t in v])
                                 for k, v in blob["ewc"].items()})
        log(f"  resuming after stage {done['stage']} of {len(stages)} ({ckpt})")
    elif baseline:
        done["baseline"] = evaluate(model, -1)
        done["curve"].append({"stage": -1, "step": 0, "tokens": 0, "scores": done["baseline"]})

    B, T, steps = tc.batch_size, tc.seq_len, settings.steps
    stage_tc = replace(tc, steps=steps, warmup_steps=min(tc.warmup_steps, max(1, steps // 10)))
    points = sorted({max(1, round(steps * (k + 1) / settings.curve_points)) for k in range(settings.curve_points)})
    periods = cms_periods(model)
    for i in range(done["stage"], len(stages)):
        stage = stages[i]
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        bar = tqdm(total=steps, disable=not progress, dynamic_ncols=True, desc=f"{run_dir.name} {i + 1}/{len(stages)} {stage.name}",
                   mininterval=0.5, leave=False)
        model.train()
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_at(step - 1, stage_tc)
            gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + i) * 65_537 + step)
            k = round(settings.replay_share * B) if replay is not None and len(replay) else 0
            x, y = stage.sample(gen, B - k)
            if k:
                xr, yr = replay.sample(k, gen)
                x, y = torch.cat([x, xr]), torch.cat([y, yr])
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss, _ = forward_backward(model, x, y, None, max(1, int((y != -100).sum())), autocast, truncate=tc.tbptt,
                                       final_state=False)
            if ewc is not None and ewc.active:
                ewc.penalty(model).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            optimizer.step()
            loss = loss / max(1, int((y != -100).sum()))
            if not math.isfinite(loss):
                raise DivergedError(f"{run_dir.name} diverged in stage {i + 1} ({stage.name}) at step {step}")
            done["tokens"] += B * T
            done["train_seconds"] += time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
            if step in points:
                scores = evaluate(model, i)
                done["curve"].append({"stage": i, "step": step, "tokens": done["tokens"], "scores": scores})
                model.train()
        bar.close()
        done["rows"].append(done["curve"][-1]["scores"])
        done.setdefault("drift", []).append(role_drift(start, dict(model.named_parameters()), periods))
        del start
        gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + i) * 65_537 + 999_983)
        if replay is not None:
            replay.add_stage(*stage.sample(gen, settings.replay_rows))
        if ewc is not None:
            ewc.consolidate(model, *(t.to(device) for t in stage.sample(gen, settings.fisher_rows)), autocast)
        done["stage"] = i + 1
        extra = {"method.pt": {"replay": replay.state_dict() if replay else None,
                               "ewc": ewc.state_dict() if ewc else None}}
        state = {k: v for k, v in done.items() if k != "step"}
        save_checkpoint(run_dir, i + 1, model, optimizer, state, extra=extra)
        log(f"  stage {i + 1}/{len(stages)} {stage.name}: " + ", ".join(_short(s) for s in done["rows"][-1]))
    done["parameters"] = count_parameters(model)["total"]
    return model, done


def _short(score: dict) -> str:
    if "loss" in score:
        return f"{score['loss']:.3f}"
    return "-" if score.get("acc") is None else f"{score['acc']:.2f}"


def prepare_run_dir(run_dir: Path, cfg: Config, settings: Settings, extra: dict) -> dict | None:
    """Make the run folder (config.json, settings.json) or check that an existing one was made with
    the same settings. Returns the finished result (result.json) when the run is complete."""
    record = {"settings": asdict(settings), **extra}
    path = run_dir / "settings.json"
    if path.exists():
        have = json.loads(path.read_text())
        if have != json.loads(json.dumps(record)):
            raise HopeError(f"{run_dir} was started with other settings; use another --out, or --overwrite")
        if (run_dir / "result.json").exists():
            return json.loads((run_dir / "result.json").read_text())
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return None


def all_finished_runs(out: Path, runs: list[dict], settings: Settings, extra: dict | list[dict]) -> list[dict]:
    """`runs` (this call's) and every other finished run under `out/runs` made with the same
    settings (and one of the `extra` records, when a list), so that a call running a subset (one
    architecture, one method, one source) reports the whole suite so far; ordered by architecture,
    then method."""
    records = [json.loads(json.dumps({"settings": asdict(settings), **e}))
               for e in (extra if isinstance(extra, list) else [extra])]
    have = {r["name"] for r in runs}
    merged = list(runs)
    for path in sorted((out / "runs").glob("*/result.json")):
        sp = path.parent / "settings.json"
        if path.parent.name in have or not sp.exists() or json.loads(sp.read_text()) not in records:
            continue
        merged.append(json.loads(path.read_text()))

    def order(r):
        arch, method = r.get("arch"), r.get("method")
        return (ARCHS.index(arch) if arch in ARCHS else len(ARCHS),
                METHODS.index(method) if method in METHODS else len(METHODS), r["name"])
    return sorted(merged, key=order)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
