"""What the `hope bench` suites share: bench-sized models with matched parameter counts, one training
and test loop for every (task, model) pair, and the report.

A task (`Task`) draws examples from a seeded `numpy` generator. An example is `(tokens, targets)`:
`targets[t]` is the label of position t or `IGNORE` (-100, not scored). Every task but compression
is next-token prediction with masked targets, `targets[t] == tokens[t + 1]` at scored positions (the
answer follows in the input, teacher-forced), so "every scored token is the argmax" equals exact
match of greedy generation, and the training step is `hope.models.common.forward_backward` (whose
cross-entropy skips -100). Formal languages score one token, the accept / reject label after the
string. Compression (`decode_len > 0`) reads the last position's final hidden state into a small
decoder (MAD's construction); its targets are the tokens to reconstruct.

Models (`model_configs`): d_model 64, 2 layers, 2 heads by default; Titans' SwiGLU width and the CMS
width of Hope / Hope-Attention are solved so that every model has the Transformer's parameter count
within 5%. CMS periods are at least the training length, so a training sequence is one CMS segment
(`forward_backward` cuts gradients at segment boundaries) and the CMS acts as a static MLP chain on
these short sequences; docs/DEVIATIONS.md ("Benchmarks (issue 6)").

Every pair trains with the same `Budget` (steps, batch, learning rate), the same data stream and the
same initialization seed; each pair's result is written to `OUT/pairs/` as soon as it is done, so a
suite that was stopped continues where it stopped (with the same settings).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hope.config import TrainConfig
from hope.errors import HopeError
from hope.models import (HopeAttentionConfig, HopeConfig, TitansConfig, TransformerConfig, build_model, count_parameters,
                         get_model_class)
from hope.models.common import forward_backward
from hope.optim import build_optimizer
from hope.schedule import lr_at

IGNORE = -100  # target of an unscored position (F.cross_entropy's default ignore_index)
PAD = 0  # every bench vocabulary reserves id 0 for right padding
ARCHS = ("transformer", "titans", "hope_attention", "hope")
CHUNK = 16  # chunk of the Titans / Hope inner rules (the fastest on CPU at these sizes)

Example = tuple[list[int], list[int]]


@dataclass(frozen=True)
class Task:
    name: str
    vocab_size: int
    sample: Callable[[np.random.Generator, str], Example]  # (rng, split) -> one example; split "train" or a test split
    splits: tuple[str, ...]  # test sets, in report order
    train_len: int  # longest training example, in tokens
    max_len: int  # longest example of any split
    metric: str = "sequence"  # "sequence": all scored tokens right; "token": share of scored tokens right
    decode_len: int = 0  # > 0: compression; a decoder reconstructs this many tokens from the last hidden state


@dataclass(frozen=True)
class Budget:
    """The same for every model of a suite."""

    steps: int
    batch_size: int = 32
    lr: float = 2e-3  # AdamW peak; linear warmup over 10% of the steps, cosine to 10%
    weight_decay: float = 0.1
    eval_size: int = 500  # test examples per split


@dataclass(frozen=True)
class ModelShape:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    memory: str | None = None  # main memory of Titans and Hope: mlp | linear; None: each model's default
    # (Titans mlp, SPEC 4.1; Hope linear, docs/DEVIATIONS.md); Hope's projection memories are linear
    overrides: tuple[tuple[str, str, str], ...] = ()  # (arch or "model", field, value) from `--set`


def parse_overrides(items, archs) -> tuple[tuple[str, str, str], ...]:
    """`--set` items `model.FIELD=VALUE` (every model whose config has FIELD) or `ARCH.FIELD=VALUE`
    (one model) as `(target, field, value)`; a field no chosen model has is an error."""
    out = []
    for item in items or ():
        key, eq, value = item.partition("=")
        target, _, name = key.strip().partition(".")
        if not eq or not name:
            raise HopeError(f"--set {item!r} must look like model.FIELD=VALUE or ARCH.FIELD=VALUE")
        if target != "model" and target not in ARCHS:
            raise HopeError(f"--set {item!r}: the part before the dot must be model or one of {', '.join(ARCHS)}")
        scope = [a for a in archs if target in ("model", a)]
        classes = {a: get_model_class(a).config_class for a in scope}
        if not scope or not any(name in {f.name for f in dataclasses.fields(c)} for c in classes.values()):
            fields = sorted({f.name for c in classes.values() for f in dataclasses.fields(c)})
            raise HopeError(f"--set {item!r}: no chosen model has the field {name!r}"
                            + (f"; fields: {', '.join(fields)}" if fields else ""))
        out.append((target, name, value.strip()))
    return tuple(out)


def _apply_overrides(arch: str, cfg, overrides):
    from hope.config import _build

    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    changed = {name: value for target, name, value in overrides if target in ("model", arch) and name in values}
    return _build(type(cfg), {**values, **changed}, "model") if changed else cfg


# ---------------------------------------------------------------- models

def _config(arch: str, shape: ModelShape, vocab_size: int, train_len: int, max_len: int, width: int):
    cfg = _base_config(arch, shape, vocab_size, train_len, max_len, width)
    return _apply_overrides(arch, cfg, shape.overrides)


def _base_config(arch: str, shape: ModelShape, vocab_size: int, train_len: int, max_len: int, width: int):
    shared = dict(vocab_size=vocab_size, d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads)
    period = CHUNK * math.ceil(train_len / CHUNK)  # the shortest CMS period covers a training sequence
    if arch == "transformer":
        return TransformerConfig(**shared, max_seq_len=max_len)
    if arch == "titans":
        # the inner-rule conventions of Hope (momentum_norm on; mean_step, hidden_norm as both default),
        # so that Titans and Hope differ only in their mechanisms (issue 14)
        return TitansConfig(**shared, ffn_hidden=width, memory=shape.memory or TitansConfig.memory,
                            chunk_size=CHUNK, momentum_norm=True)
    if arch == "hope_attention":
        return HopeAttentionConfig(**shared, max_seq_len=max_len, cms_periods=(None, 2 * period, period), cms_hidden=width)
    if arch == "hope":
        return HopeConfig(**shared, memory=shape.memory or HopeConfig.memory, proj_memory="linear", chunk_proj=CHUNK, chunk_mem=CHUNK,
                          cms_periods=(None, 2 * period, period), cms_hidden=width)
    raise HopeError(f"unknown model {arch!r}; available: {', '.join(ARCHS)}")


def n_params(arch: str, config) -> int:
    with torch.device("meta"):
        return count_parameters(build_model(arch, config))["total"]


def model_configs(archs, shape: ModelShape, vocab_size: int, train_len: int, max_len: int,
                  tolerance: float = 0.05) -> dict[str, tuple[object, int]]:
    """{arch: (config, parameters)} with parameter counts within `tolerance` of the Transformer's.

    The count is affine in the one free width (Titans' SwiGLU width, the CMS width), so two counts
    give the width that matches.
    """
    target = n_params("transformer", _config("transformer", shape, vocab_size, train_len, max_len, 0))
    out = {}
    for arch in archs:
        if arch == "transformer":
            out[arch] = (_config(arch, shape, vocab_size, train_len, max_len, 0), target)
            continue
        c8, c16 = (n_params(arch, _config(arch, shape, vocab_size, train_len, max_len, w)) for w in (8, 16))
        slope = (c16 - c8) / 8
        width = max(1, round(8 + (target - c8) / slope))
        cfg = _config(arch, shape, vocab_size, train_len, max_len, width)
        n = n_params(arch, cfg)
        if abs(n / target - 1) > tolerance:
            raise HopeError(f"{arch} cannot match the Transformer's {target:,} parameters at d_model {shape.d_model} "
                            f"({n:,} at the smallest width); choose a larger d_model or --memory linear")
        out[arch] = (cfg, n)
    return out


class Decoder(nn.Module):
    """MAD compression's decoder: the compressed vector and a position embedding, through a 2-layer MLP."""

    def __init__(self, d_model: int, length: int, vocab_size: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(length, d_model) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, vocab_size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, D] -> logits [B, length, V]."""
        pos = self.pos.expand(z.shape[0], -1, -1)
        return self.mlp(torch.cat([z[:, None].expand_as(pos), pos], -1))


def _last_hidden(model, x: torch.Tensor) -> torch.Tensor:
    """The final-norm output at the last position, [B, D] (every model applies `model.norm` before its head)."""
    seen = {}
    handle = model.norm.register_forward_hook(lambda mod, inp, out: seen.__setitem__("h", out))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["h"][:, -1].float()


# ---------------------------------------------------------------- data

def task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """The generator of one data stream: the same for every model."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode())])


def collate(examples: list[Example], decode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `[B, T]` tokens (PAD) and targets (IGNORE); for compression the targets are `[B, n]`."""
    width = max(len(t) for t, _ in examples)
    x = torch.full((len(examples), width), PAD, dtype=torch.long)
    y = torch.full((len(examples), max(len(t) for _, t in examples) if decode else width), IGNORE, dtype=torch.long)
    for i, (tok, tgt) in enumerate(examples):
        x[i, :len(tok)] = torch.tensor(tok)
        y[i, :len(tgt)] = torch.tensor(tgt)
    return x, y


def length_batches(examples: list[Example], batch_size: int, rng: np.random.Generator | None = None):
    """Batches of examples of similar length (less padding); shuffled by `rng` if given."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = [[examples[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def train_batches(task: Task, rng: np.random.Generator, batch_size: int, pool: int = 16):
    """An endless stream of training batches: pools of `pool` batches, bucketed by length."""
    while True:
        yield from length_batches([task.sample(rng, "train") for _ in range(batch_size * pool)], batch_size, rng)


def test_sets(task: Task, seed: int, size: int) -> dict[str, list[Example]]:
    out = {}
    for split in task.splits:
        rng = task_rng(seed, task.name, split)
        out[split] = [task.sample(rng, split) for _ in range(size)]
    return out


# ---------------------------------------------------------------- training and testing

def _loss_backward(model, decoder, x, y, task: Task) -> tuple[float, int]:
    """Forward and backward of one batch; returns (summed loss, scored tokens)."""
    n = int((y != IGNORE).sum())
    if decoder is None:
        loss, _ = forward_backward(model, x, y, None, max(n, 1))
        return loss, n
    logits = decoder(_last_hidden(model, x))
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    (loss / max(n, 1)).backward()
    return loss.item(), n


@torch.no_grad()
def evaluate(model, decoder, examples: list[Example], batch_size: int) -> dict[str, float]:
    """Share of scored tokens predicted right (`token`) and of examples with every one right (`sequence`)."""
    was = model.training
    model.eval()
    right_tok = total_tok = right_seq = 0
    for batch in length_batches(examples, batch_size):
        x, y = collate(batch, decode=decoder is not None)
        logits = decoder(_last_hidden(model, x)) if decoder is not None else model(x)[0]
        mask = y != IGNORE
        right = (logits.argmax(-1) == y) & mask
        right_tok += int(right.sum())
        total_tok += int(mask.sum())
        right_seq += int((right | ~mask).all(1).sum())
    model.train(was)
    return {"token": right_tok / max(total_tok, 1), "sequence": right_seq / len(examples)}


def train_and_test(task: Task, arch: str, config, budget: Budget, seed: int, progress: bool = True) -> dict:
    """Train `arch` on `task` with `budget`, then score every test split. Returns a JSON-able record."""
    torch.manual_seed(seed)
    model = build_model(arch, config)
    decoder = Decoder(config.d_model, task.decode_len, task.vocab_size) if task.decode_len else None
    named = list(model.named_parameters()) + ([(f"decoder.{k}", p) for k, p in decoder.named_parameters()]
                                              if decoder is not None else [])
    opt = build_optimizer("adamw", named, lr=budget.lr, weight_decay=budget.weight_decay)
    schedule = TrainConfig(steps=budget.steps, warmup_steps=max(1, budget.steps // 10), lr=budget.lr)
    params = [p for _, p in named]
    batches = train_batches(task, task_rng(seed, task.name, "train"), budget.batch_size)
    losses, diverged = [], None
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(budget.steps), desc=f"{task.name} {arch}", disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = budget.lr * lr_at(step, schedule)
        opt.zero_grad(set_to_none=True)
        x, y = collate(next(batches), decode=decoder is not None)
        loss, n = _loss_backward(model, decoder, x, y, task)
        loss /= max(n, 1)
        if not math.isfinite(loss):
            diverged = f"loss {loss} at step {step + 1}"
            break
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    bar.close()
    train_s = time.perf_counter() - t0
    record = {"task": task.name, "arch": arch, "params": count_parameters(model)["total"], "steps": len(losses),
              "train_s": round(train_s, 2), "s_per_step": round(train_s / max(len(losses), 1), 4),
              "final_loss": float(np.mean(losses[-max(1, len(losses) // 20):])) if losses else None,
              "loss_curve": [round(float(v), 4) for v in losses[::max(1, len(losses) // 100)]],
              "diverged": diverged, "accuracy": {}, "token_accuracy": {}}
    if diverged:
        return record
    t0 = time.perf_counter()
    for split, examples in test_sets(task, seed, budget.eval_size).items():
        acc = evaluate(model, decoder, examples, budget.batch_size)
        record["accuracy"][split] = 100 * acc[task.metric]
        record["token_accuracy"][split] = 100 * acc["token"]  # per scored token, also for sequence metrics
    record["test_s"] = round(time.perf_counter() - t0, 2)
    return record


# ---------------------------------------------------------------- a suite and its report

def run_suite(suite: str, tasks: list[Task], archs: list[str], budget: Budget, shape: ModelShape, seed: int,
              out: Path, paper: dict, split_labels: dict[str, str], progress: bool = True,
              overwrite: bool = False, report_only: bool = False) -> dict:
    """Train and test every (task, model) pair; write `results.json`, `results.md` and `results.png` to `out`.

    report_only: train nothing; the report holds the pairs already in `out/pairs` with these settings.
    """
    out = Path(out)
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    settings = {"suite": suite, "budget": dataclasses.asdict(budget), "shape": dataclasses.asdict(shape), "seed": seed}
    results: dict[str, dict[str, dict]] = {}
    models: dict[str, dict] = {}
    t_start = time.perf_counter()
    for task in tasks:
        configs = model_configs(archs, shape, task.vocab_size, task.train_len, task.max_len)
        print(f"{task.name}: parameters " + ", ".join(f"{a} {n:,}" for a, (_, n) in configs.items()))
        results[task.name] = {}
        for arch, (cfg, n) in configs.items():
            models.setdefault(arch, {})[task.name] = n
            path = out / "pairs" / f"{task.name}__{arch}.json"
            key = {**settings, "task": task.name, "config": dataclasses.asdict(cfg)}
            old = json.loads(path.read_text()) if path.exists() and not overwrite else None
            if old is not None and old.get("key") == json.loads(json.dumps(key)):
                rec = old["record"]
                print(f"  {arch}: done already ({path})")
            elif report_only:
                print(f"  {arch}: not trained yet (--report-only)")
                continue
            else:
                rec = train_and_test(task, arch, cfg, budget, seed, progress)
                _write(path, {"key": key, "record": rec})
            results[task.name][arch] = rec
            acc = ", ".join(f"{split_labels.get(s, s)} {v:.1f}" for s, v in rec["accuracy"].items())
            print(f"  {arch}: " + (f"diverged ({rec['diverged']})" if rec["diverged"] else
                                   f"{acc} ({rec['train_s']:.0f} s, {1000 * rec['s_per_step']:.0f} ms/step, "
                                   f"final loss {rec['final_loss']:.3f})"))
    report = {"suite": suite, "settings": settings, "parameters": models, "results": results, "paper": paper,
              "split_labels": split_labels, "wall_s": round(time.perf_counter() - t_start, 1)}
    _write(out / "results.json", report)
    table = markdown_report(report)
    (out / "results.md").write_text(table)
    print()
    print(table)
    if plot_report(report, out / "results.png"):
        print(f"wrote {out / 'results.png'}")
    else:
        print("plot skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    return report


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def memory_label(memory: str | None) -> str:
    """The main memories of a report's settings, in words."""
    if memory:
        return f"{memory} memories"
    return f"main memories: titans {TitansConfig.memory}, hope {HopeConfig.memory}"


def markdown_report(report: dict) -> str:
    """Our accuracies (%) per task and model, parameter counts, and the paper's numbers (SPEC 7)."""
    res, labels = report["results"], report["split_labels"]
    archs = list(dict.fromkeys(a for row in res.values() for a in row))
    splits = list(dict.fromkeys(s for row in res.values() for r in row.values() for s in r["accuracy"]))
    b = report["settings"]["budget"]
    s = report["settings"]["shape"]
    lines = [f"# hope bench {report['suite']}", "",
             f"Accuracy (%) on {' / '.join(labels.get(x, x) for x in splits)}; {b['steps']} steps of "
             f"{b['batch_size']} examples, lr {b['lr']}, d_model {s['d_model']}, {s['n_layers']} layers, "
             f"{memory_label(s.get('memory'))}, seed {report['settings']['seed']}, {b['eval_size']} test examples per split.",
             "", "| task | " + " | ".join(archs) + " |", "| --- |" + " ---: |" * len(archs)]
    for task, row in res.items():
        cells = []
        for a in archs:
            r = row.get(a)
            if r is None:
                cells.append("")
            elif r["diverged"]:
                cells.append("diverged")
            else:
                cells.append(" / ".join(f"{r['accuracy'][x]:.1f}" for x in splits if x in r["accuracy"]))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "Parameters: " + "; ".join(
        f"{a} " + ", ".join(sorted({f'{n:,}' for n in report['parameters'][a].values()})) for a in archs) + "."]
    times = {a: sum(row[a]["train_s"] + row[a].get("test_s", 0) for row in res.values() if a in row) for a in archs}
    lines += ["", "Time (train + test, s): " + ", ".join(f"{a} {t:.0f}" for a, t in times.items()) + "."]
    paper = report.get("paper") or {}
    if paper:
        rows = {t: row for t, row in paper.items() if not t.startswith("_")}
        p_archs = [a for a in ARCHS if any(a in row for row in rows.values())]
        lines += ["", f"The paper (SPEC 7): {paper.get('_note', '')}".rstrip(), "",
                  "| task | " + " | ".join(p_archs) + " |", "| --- |" + " ---: |" * len(p_archs)]
        for task, row in rows.items():
            lines.append(f"| {task} | " + " | ".join(row.get(a, "-") for a in p_archs) + " |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict, png: Path) -> bool:
    """Grouped bars (one panel per test split), or accuracy against length when the splits are lengths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    res, labels = report["results"], report["split_labels"]
    tasks = list(res)
    archs = list(dict.fromkeys(a for row in res.values() for a in row))
    splits = list(dict.fromkeys(s for row in res.values() for r in row.values() for s in r["accuracy"]))

    def acc(task, arch, split):
        r = res[task].get(arch)
        return float("nan") if r is None or r["diverged"] else r["accuracy"].get(split, float("nan"))

    if report["suite"] == "niah":
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), dpi=110, squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for a in archs:
                ax.plot(range(len(splits)), [acc(task, a, s) for s in splits], "o-", label=a)
            ax.set_xticks(range(len(splits)), [labels.get(s, s) for s in splits])
            ax.set_title(task)
            ax.set_ylim(-3, 103)
            ax.set_xlabel("test length / training length")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("exact match (%)")
    else:
        fig, axes = plt.subplots(1, len(splits), figsize=(max(6, 1.3 * len(tasks)) * len(splits), 3.8), dpi=110,
                                 squeeze=False)
        width = 0.8 / len(archs)
        for ax, split in zip(axes[0], splits):
            for i, a in enumerate(archs):
                ax.bar(np.arange(len(tasks)) + (i - (len(archs) - 1) / 2) * width,
                       [acc(t, a, split) for t in tasks], width, label=a)
            ax.set_xticks(range(len(tasks)), tasks, rotation=20)
            ax.set_title(labels.get(split, split))
            ax.set_ylim(0, 103)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"hope bench {report['suite']}")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True
