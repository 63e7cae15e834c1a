"""Class-incremental text classification (`hope continual classify`), scored by the language model.

Each source (`hope.continual.tasks`) becomes a sequence of tasks of disjoint classes. A training
example is one sequence `[eos] text "\\nTopic:" " label" [eos]` with only the label and the final
end-of-document token scored (the text is context); a test item is classified by the model's
log-likelihood of `" label" [eos]` after `[eos] text "\\nTopic:"` for every label seen so far (a
closed set, no separate head: the same scoring runs on any model of the `hope` protocol, through
`hope.eval.adapter.Scorer`). The final end-of-document token makes a label that is a prefix of
another (`linux`, `linuxcookie`) a complete answer of its own.

Every architecture is first pretrained on a general corpus (`--pretrain`, `--pretrain-steps`;
once per architecture and optimizer, shared by all methods), then trained on the tasks in order with
each method (`hope.continual.common`). `R[i, j]` = accuracy on task j's held-out items after task i
among the labels of tasks 0..i (NaN for j > i); ACC, BWT and forgetting as `hope.continual.metrics`.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hope.checkpoint import atomic_write_text, latest_checkpoint
from hope.continual.common import (Settings, Stage, all_finished_runs, from_run_archs, load_from_run, plan, prepare_run_dir, recipe_name,
                                   run_config, run_name, run_stages, write_json)
from hope.continual.lm import load_domain, shared_tokenizer
from hope.continual.metrics import summary
from hope.continual.report import header, write_report
from hope.continual.tasks import Task, build_tasks, label_name, load_source
from hope.data.corpus import Corpus
from hope.data.tokens import get_batch, prepare_tokens, val_windows
from hope.config import apply_overrides
from hope.errors import DivergedError, HopeError
from hope.eval.adapter import Scorer
from hope.recipes import get_recipe
from hope.train import evaluate, git_commit

PROMPT = "\nTopic:"
IGNORE = -100


def encode_example(tokenizer, text: str, label: str, max_len: int) -> tuple[list[int], list[int]]:
    """(context, continuation) token ids of one example, at most `max_len + 1` tokens together: the
    text is cut so that the prompt and the label always fit."""
    cont = tokenizer.encode(" " + label_name(label)) + [tokenizer.eos_id]
    prompt = tokenizer.encode(PROMPT)
    room = max_len + 1 - 1 - len(prompt) - len(cont)
    if room < 1:
        raise HopeError(f"label {label!r} does not fit a training sequence of {max_len} tokens")
    return [tokenizer.eos_id] + tokenizer.encode(text)[:room] + prompt, cont


def training_rows(tokenizer, task: Task, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [N, seq_len]: one example per row, right-padded; targets only on the label and the final
    end-of-document token."""
    x = torch.full((len(task.train), seq_len), tokenizer.eos_id, dtype=torch.long)
    y = torch.full((len(task.train), seq_len), IGNORE, dtype=torch.long)
    for r, it in enumerate(task.train):
        ctx, cont = encode_example(tokenizer, it.text, it.label, seq_len)
        row = ctx + cont
        x[r, :len(row) - 1] = torch.tensor(row[:-1])
        y[r, len(ctx) - 1:len(row) - 1] = torch.tensor(cont)
    return x, y


def accuracy(model, tokenizer, items, labels: list[str], seq_len: int, batch_size: int = 16) -> float:
    """Share of `items` whose own label has the highest log-likelihood among `labels`."""
    scorer = Scorer(model, tokenizer, batch_size=batch_size)
    pairs = [encode_example(tokenizer, it.text, lab, seq_len) for it in items for lab in labels]
    lls = np.array([lp for lp, _ in scorer.loglikelihood_tokens(pairs)]).reshape(len(items), len(labels))
    pred = lls.argmax(1)
    return float(np.mean([labels[p] == it.label for p, it in zip(pred, items)]))


def _rows_sampler(x: torch.Tensor, y: torch.Tensor):
    def sample(gen, n):
        idx = torch.randint(0, len(x), (n,), generator=gen)
        return x[idx], y[idx]
    return sample


def continual_classify(out: Path, sources: list[str], archs: list[str] | None, methods: list[str] | None,
                       settings: Settings, n_tasks: int, classes_per_task: int, train_per_class: int,
                       test_per_class: int, pretrain: str, pretrain_steps: int, progress: bool = True,
                       log=print, from_run: str | None = None, task_lr: float | None = None) -> dict:
    """Pretrain every architecture once, then run every (source, architecture, method). `from_run`:
    every run starts from that run folder's model, weights and tokenizer (no pretraining here).
    `task_lr`: the peak learning rate of the task stages (None: the recipe's, as in pretraining)."""
    if task_lr is not None and not task_lr > 0:
        raise HopeError(f"--task-lr must be > 0, got {task_lr}")
    start = None
    if from_run is not None:
        start, run_tokenizer, from_ckpt = load_from_run(from_run)
        archs = from_run_archs(archs, start)
        pretrain, pretrain_steps = f"--from {from_run}", 0
    pairs = plan(archs, methods, settings)
    commit = git_commit()  # the code the suite runs (HEAD may move while it runs)
    settings = replace(settings, curve_points=1)  # scoring every label is costly: once per task
    if not sources:
        raise HopeError("--sources lists no source")
    all_tasks = {}
    for s in sources:
        all_tasks[s] = build_tasks(load_source(s), n_tasks, classes_per_task, train_per_class, test_per_class,
                                   settings.seed)
    if start is None:
        general = [load_domain(pretrain)]
        base = get_recipe(recipe_name("transformer", settings.size))
        task_texts = [it.text for s in sorted(all_tasks) for t in all_tasks[s] for it in t.train]  # any order of --sources
        digest = hashlib.sha256("\n".join(task_texts).encode()).hexdigest()[:16]
        tokenizer = shared_tokenizer(base.data.tokenizer, [general[0], Corpus("tasks", task_texts, [], digest)],
                                     base.data.vocab_size)
        gen_tokens = prepare_tokens(general[0], tokenizer)
    else:
        tokenizer = run_tokenizer
    out.mkdir(parents=True, exist_ok=True)
    _check_tokenizer(out, tokenizer)
    runs = []
    extras = {s: {"source": s, "tasks": [list(t.classes) for t in all_tasks[s]], "pretrain": pretrain,
                  "pretrain_steps": pretrain_steps, "train_per_class": train_per_class,
                  "test_per_class": test_per_class, **({"task_lr": task_lr} if task_lr is not None else {})}
              for s in sources}
    for s in sources:
        tasks = all_tasks[s]
        log(f"{s}: " + "; ".join(f"task {i + 1}: {', '.join(t.classes)}" for i, t in enumerate(tasks)))
    for arch, method in pairs:
        if start is None:
            cfg0 = run_config(arch, "seq", settings, tokenizer.vocab_size)
            init = _pretrained(out, arch, cfg0, settings, gen_tokens, tokenizer, pretrain, pretrain_steps, progress, log)
        else:
            init = from_ckpt
        for s in sources:
            tasks = all_tasks[s]
            cfg = run_config(arch, method, settings, tokenizer.vocab_size, start)
            if task_lr is not None:
                cfg = apply_overrides(cfg, [f"train.lr={task_lr}"])
            tc = cfg.train
            name = f"{Path(s).name}-{run_name(arch, method, settings)}"
            run_dir = out / "runs" / name
            data = [training_rows(tokenizer, t, tc.seq_len) for t in tasks]
            extra = extras[s]
            result = prepare_run_dir(run_dir, cfg, settings, extra)
            if result is None:
                log(f"{name}: {len(tasks)} tasks, {settings.steps} steps x {tc.batch_size} examples per task")

                def score(model, stage, tasks=tasks, tc=tc):
                    seen = [c for t in tasks[:stage + 1] for c in t.classes]
                    return [{"acc": accuracy(model, tokenizer, t.test, seen, tc.seq_len, tc.batch_size) if j <= stage
                             else None} for j, t in enumerate(tasks)]

                if method == "joint":
                    xs, ys = torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])
                    stages = [Stage(f"all ({i + 1})", _rows_sampler(xs, ys)) for i in range(len(tasks))]
                else:
                    stages = [Stage("+".join(t.classes), _rows_sampler(*d)) for t, d in zip(tasks, data)]
                try:
                    _, done = run_stages(run_dir, cfg, method, stages, score, settings, baseline=False,
                                         init_from=init, progress=progress, log=log)
                except DivergedError as e:
                    result = {"name": name, "source": s, "arch": arch, "method": method,
                              "optimizer": settings.optimizer, "diverged": str(e)}
                else:
                    R = [[np.nan if c["acc"] is None else c["acc"] for c in row] for row in done["rows"]]
                    result = {"name": name, "source": Path(s).name, "arch": arch, "method": method,
                              "optimizer": settings.optimizer, "tasks": ["+".join(t.classes) for t in tasks],
                              "parameters": done["parameters"], "tokens": done["tokens"],
                              "train_seconds": round(done["train_seconds"], 1),
                              "tokens_per_s": done["tokens"] / max(1e-9, done["train_seconds"]),
                              "metrics": summary(R, higher_is_better=True),
                              "avg_acc_after_each": [float(np.nanmean(r[:i + 1])) for i, r in enumerate(R)],
                              "R_acc": [[None if np.isnan(v) else v for v in r] for r in R],
                              "rows": done["rows"], "baseline": None, "curve": done["curve"],
                              **({"drift": done["drift"]} if done.get("drift") else {})}
                write_json(run_dir / "result.json", result)
            runs.append(result)
            results = header("classify", settings, {"git_commit": commit, 
                "sources": [Path(s).name for s in sources], "classes_per_task": classes_per_task, "n_tasks": n_tasks,
                "steps_per_task": settings.steps, "train_per_class": train_per_class,
                "test_per_class": test_per_class, "pretrain": pretrain, "pretrain_steps": pretrain_steps,
                "task_lr": task_lr if task_lr is not None else "recipe", "tokenizer": f"{tokenizer.kind} {tokenizer.vocab_size}",
                "runs": all_finished_runs(out, runs, settings, list(extras.values()))})
            write_report(out, results, "acc", log)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def _check_tokenizer(out: Path, tokenizer) -> None:
    """Keep the suite's tokenizer in `out/tokenizer.json` and refuse a call that would use another:
    the tokenizer is trained on the task texts of the sources in the call, and the pretrained models
    and runs of a suite folder must all read the same token ids (a call with other `--sources` into
    the same folder would otherwise continue their checkpoints with another vocabulary)."""
    path, text = out / "tokenizer.json", tokenizer.to_json()
    if not path.exists():
        atomic_write_text(path, text)
    elif path.read_text() != text:
        raise HopeError(f"{out} holds a suite made with another tokenizer (built from the task texts of the "
                        f"sources of its first call: the same --sources, in any order, or use another --out)")


def _pretrained(out: Path, arch: str, cfg, settings: Settings, tokens: dict, tokenizer, corpus: str, steps: int,
                progress: bool, log) -> Path | None:
    """The checkpoint of `arch` pretrained on the general corpus (trained once, then reused)."""
    if steps <= 0:
        return None
    pre = replace(settings, steps=steps, curve_points=1)
    run_dir = out / "pretrain" / f"{arch}-{settings.optimizer}"
    token_bytes = torch.from_numpy(tokenizer.token_bytes)
    windows = val_windows(tokens["val"], cfg.train.seq_len, cfg.train.eval_tokens)
    done = prepare_run_dir(run_dir, cfg, pre, {"corpus": corpus})
    if done is None:
        log(f"pretraining {arch} on {corpus}: {steps} steps x {cfg.train.batch_size} x {cfg.train.seq_len} tokens")

        def score(model, stage):
            import contextlib

            v = evaluate(model, windows, token_bytes, cfg.train.batch_size, next(model.parameters()).device,
                         contextlib.nullcontext)
            return [{"loss": v["val_loss"], "ppl": v["val_ppl"]}]

        stage = Stage(corpus, lambda gen, n: get_batch(tokens["train"], n, cfg.train.seq_len, gen))
        _, d = run_stages(run_dir, cfg, "seq", [stage], score, pre, baseline=False, progress=progress, log=log)
        write_json(run_dir / "result.json", {"val": d["rows"][-1][0], "tokens": d["tokens"]})
    return latest_checkpoint(run_dir)
