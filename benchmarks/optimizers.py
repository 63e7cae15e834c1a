"""Benchmarks of the deep optimizers (SPEC section 5, hope/optim/).

(1) Continual-learning toy (paper section 4.3, Eq. 45): a linear regressor `y = W x` learns a sequence
    of tasks; task `t` draws inputs from its own subspace `S_t` (the `S_t` are mutually orthogonal and
    randomly rotated, so not coordinate-aligned) with its own teacher. The gradients of task `t` live
    in `S_t`, so an optimizer whose update stays in the span of recent gradients cannot disturb earlier
    tasks, while one that mixes coordinates (Adam's diagonal preconditioner) or keeps writing stale
    directions (momentum) can. Each optimizer's lr is picked from a grid by the mean loss of each task
    right after training it; we then report the loss on the earlier tasks after the last task (and the
    increase over "right after", i.e. forgetting), averaged over seeds.
(2) `--lm`: the tiny Transformer++ on the embedded corpus for a fixed token budget with AdamW, Muon and
    M3, through the training CLI (`python -m hope.cli train --recipe tiny --set train.optimizer=...
    train.steps=N`): final validation loss and wall time.
(3) `--step-time`: the time of one `optimizer.step()` for every `build_optimizer` name on the recipe's
    model (interleaved, so a loaded machine affects all alike; wall times in (2) are not).

Run:
    python benchmarks/optimizers.py                     # (1), about a minute on 2 CPU cores
    python benchmarks/optimizers.py --lm --lm-steps 150 # (1) and (2)
    python benchmarks/optimizers.py --skip-toy --lm --lm-steps 60 \
        --lm-set train.warmup_steps=10 train.eval_tokens=16384 train.sample_tokens=0   # (2) only, small
    python benchmarks/optimizers.py --skip-toy --step-time                               # (3) only
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hope.optim import DMGD, M3, OPTIMIZER_NAMES, DeltaMomentum, Muon, build_optimizer

TOY_OPTIMIZERS = {
    "SGD+momentum (0.9)": (lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9), [0.01, 0.03, 0.1, 0.3]),
    "Adam": (lambda ps, lr: torch.optim.Adam(ps, lr=lr), [0.003, 0.01, 0.03, 0.1]),
    "DeltaMomentum": (lambda ps, lr: DeltaMomentum(ps, lr=lr), [0.01, 0.03, 0.1, 0.3]),
    "DeltaMomentum + RMS precond.": (lambda ps, lr: DeltaMomentum(ps, lr=lr, precondition=True), [0.003, 0.01, 0.03, 0.1]),
    "DMGD": (lambda ps, lr: DMGD(ps, lr=lr), [0.01, 0.03, 0.1, 0.3]),
    "DMGD + Newton-Schulz": (lambda ps, lr: DMGD(ps, lr=lr, nonlinearity="newton_schulz"), [0.01, 0.03, 0.1, 0.3]),
    "Muon": (lambda ps, lr: Muon(ps, lr=lr), [0.01, 0.03, 0.1, 0.3]),
    "M3": (lambda ps, lr: M3(ps, lr=lr), [0.01, 0.03, 0.1, 0.3]),
    "M3, slow memory off (alpha=0)": (lambda ps, lr: M3(ps, lr=lr, alpha=0.0), [0.01, 0.03, 0.1, 0.3]),
    "M3, literal (normalize=False)": (lambda ps, lr: M3(ps, lr=lr, normalize=False), [1e-4, 3e-4, 1e-3, 3e-3]),
}


def make_tasks(seed: int, n_tasks: int, d_in: int, d_out: int, n: int):
    """Inputs of task t: x = Q_t z, Q_t orthonormal columns of a random rotation (blocks disjoint)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen, dtype=torch.float64))
    k = d_in // n_tasks
    tasks = []
    for t in range(n_tasks):
        basis = q[:, t * k:(t + 1) * k]
        x = torch.randn(n, k, generator=gen, dtype=torch.float64) @ basis.T  # [n, d_in]
        teacher = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / k**0.5
        tasks.append((x.float(), (x @ teacher.T).float()))
    return tasks


def task_loss(w: torch.Tensor, task) -> float:
    x, y = task
    return ((x @ w.T - y) ** 2).mean().item()


def run_sequence(make_opt, lr: float, tasks, steps: int, batch: int, seed: int, d_out: int, d_in: int):
    """Train on the tasks in order (one optimizer for the whole sequence, as in continual learning).
    Returns (loss of each task right after training it, loss of each task at the end)."""
    w = torch.nn.Parameter(torch.zeros(d_out, d_in))
    opt = make_opt([w], lr)
    gen = torch.Generator().manual_seed(seed + 1)
    after = []
    for task in tasks:
        x, y = task
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
            opt.zero_grad()
            ((x[idx] @ w.T - y[idx]) ** 2).mean().backward()
            opt.step()
        after.append(task_loss(w.detach(), task))
    end = [task_loss(w.detach(), task) for task in tasks]
    return after, end


def continual_toy(seeds=(0, 1, 2), n_tasks=4, d_in=64, d_out=16, n=512, steps=150, batch=32) -> str:
    finite = lambda v: v == v and v < float("inf")  # noqa: E731
    rows = []
    for name, (make_opt, lrs) in TOY_OPTIMIZERS.items():
        best = None
        for lr in lrs:
            runs = [run_sequence(make_opt, lr, make_tasks(s, n_tasks, d_in, d_out, n), steps, batch, s, d_out, d_in) for s in seeds]
            fit = sum(sum(a) / n_tasks for a, _ in runs) / len(runs)
            if finite(fit) and (best is None or fit < best[0]):
                best = (fit, lr, runs)
        if best is None:
            rows.append(f"| {name} | diverged | | | | |")
            continue
        fit, lr, runs = best
        earlier_end = sum(sum(e[:-1]) / (n_tasks - 1) for _, e in runs) / len(runs)
        earlier_after = sum(sum(a[:-1]) / (n_tasks - 1) for a, _ in runs) / len(runs)
        last = sum(e[-1] for _, e in runs) / len(runs)
        first_end = sum(e[0] for _, e in runs) / len(runs)
        rows.append(f"| {name} | {lr:g} | {fit:.3g} | {earlier_end:.3g} | {earlier_end - earlier_after:+.3g} | {first_end:.3g} | {last:.3g} |")
    init = sum(task_loss(torch.zeros(d_out, d_in), t) for s in seeds for t in make_tasks(s, n_tasks, d_in, d_out, n)) / (len(seeds) * n_tasks)
    header = (
        f"Continual-learning toy: {n_tasks} tasks, linear {d_in}->{d_out}, orthogonal rotated {d_in // n_tasks}-dim input "
        f"subspaces, {steps} steps/task, batch {batch}, mean over seeds {list(seeds)}; loss at W=0: {init:.4f}.\n"
        "lr picked from the grid by the mean loss of each task right after training it (\"fit\").\n\n"
        "| optimizer | lr | fit (after each task) | earlier tasks at end | forgetting (end - after) | task 1 at end | last task at end |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    return header + "\n" + "\n".join(rows)


def lm_benchmark(steps: int, optimizers: list[str], recipe: str, keep: Path | None, overrides: list[str]) -> str:
    """Train `recipe` for `steps` steps with each optimizer via the CLI; read metrics.jsonl."""
    root = keep or Path(tempfile.mkdtemp(prefix="hope-optim-bench-"))
    rows = []
    tokens = None
    for name in optimizers:
        out = root / name
        cmd = [sys.executable, "-m", "hope.cli", "train", "--recipe", recipe, "--set", f"train.optimizer={name}",
               f"train.steps={steps}", *overrides, "--out", str(out), "--overwrite", "--no-progress"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError as e:
            return f"LM benchmark skipped: {e}"
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            if "No module named hope.cli" in proc.stderr or "invalid choice: 'train'" in proc.stderr:
                return "LM benchmark skipped: the training CLI (`hope train`) is not available in this checkout."
            rows.append(f"| {name} | failed (exit {proc.returncode}): {' / '.join(tail)} | | |")
            continue
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        vals = [r for r in records if "val_loss" in r]
        train = [r for r in records if "loss" in r and "val_loss" not in r]
        tokens = max((r.get("tokens", 0) for r in records), default=None)
        val = f"{vals[-1]['val_loss']:.4f}" if vals else "n/a"
        tr = f"{train[-1]['loss']:.4f}" if train else "n/a"
        rows.append(f"| {name} | {val} | {tr} | {wall:.1f} |")
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
    header = (
        f"LM: recipe `{recipe}`, {steps} steps ({tokens:,} tokens) per optimizer, overrides {overrides or 'none'}, "
        "train.lr and schedule otherwise from the recipe; wall time includes start-up, evaluation and sampling.\n\n"
        "| optimizer | final val loss | last train loss | wall time (s) |\n| --- | --- | --- | --- |"
        if tokens else f"LM: recipe `{recipe}`, {steps} steps\n\n| optimizer | final val loss | last train loss | wall time (s) |\n| --- | --- | --- | --- |"
    )
    return header + "\n" + "\n".join(rows)


def step_times(recipe: str, rounds: int, threads: int) -> str:
    """Median time of one `optimizer.step()` on the recipe's model, every `build_optimizer` name, with
    the optimizers interleaved round by round so that machine load affects them alike."""
    from hope.models import build_model
    from hope.recipes import get_recipe

    torch.set_num_threads(threads)
    cfg = get_recipe(recipe)
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model)
    named = list(model.named_parameters())
    for _, p in named:
        p.grad = 1e-3 * torch.randn_like(p)
    opts = {n: build_optimizer(n, named, lr=cfg.train.lr, weight_decay=0.1) for n in OPTIMIZER_NAMES}
    times = {n: [] for n in OPTIMIZER_NAMES}
    with torch.no_grad():
        for r in range(rounds + 1):
            for n, opt in opts.items():
                t0 = time.perf_counter()
                opt.step()
                if r > 0:  # the first round allocates state
                    times[n].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for _, p in named)
    rows = [f"| {n} | {1e3 * sorted(t)[len(t) // 2]:.1f} |" for n, t in times.items()]
    return (f"Optimizer step time: recipe `{recipe}` ({n_params / 1e6:.2f}M parameters), CPU, {threads} thread(s), "
            f"median of {rounds} interleaved rounds.\n\n| optimizer | ms / step |\n| --- | --- |\n" + "\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", action="store_true", help="also run part (2), the LM benchmark through `hope train`")
    parser.add_argument("--skip-toy", action="store_true", help="skip part (1)")
    parser.add_argument("--lm-steps", type=int, default=150, help="optimizer steps per LM run (default 150)")
    parser.add_argument("--lm-recipe", default="tiny", help="training recipe (default tiny)")
    parser.add_argument("--lm-optimizers", default="adamw,muon,m3", help="comma-separated train.optimizer values")
    parser.add_argument("--lm-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra `--set` overrides for every LM run, e.g. train.warmup_steps=10")
    parser.add_argument("--lm-keep", default=None, help="keep the run folders under this directory")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the toy (default 3)")
    parser.add_argument("--step-time", action="store_true", help="also time optimizer.step() on the LM recipe's model")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for --step-time (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.skip_toy:
        print(continual_toy(seeds=tuple(range(args.seeds))))
        print()
    if args.step_time:
        print(step_times(args.lm_recipe, rounds=10, threads=args.threads))
        print()
    if args.lm:
        print(lm_benchmark(args.lm_steps, args.lm_optimizers.split(","), args.lm_recipe,
                           Path(args.lm_keep) if args.lm_keep else None, args.lm_set))


if __name__ == "__main__":
    main()
