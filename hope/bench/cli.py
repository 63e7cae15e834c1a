"""The `bench` subcommand of `hope` (registered into `hope.cli.build_parser`).

    hope bench formal [--quick] [--models transformer,titans,hope_attention,hope] [--tasks parity,anbn]
    hope bench mad    [--quick] [--out runs/bench/mad] [--steps N --batch-size N --lr F --eval-size N]
    hope bench niah   [--quick] [--memory linear] [--threads 2]

Writes results.json, results.md and results.png to --out (default runs/bench/SUITE, with a `_quick`
suffix under --quick); pairs already trained with the same settings are reused (--overwrite redoes them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hope.errors import HopeError


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_bench(args) -> int:
    import torch

    from hope.bench import formal, mad, niah
    from hope.bench.common import ARCHS, ModelShape, parse_overrides, run_suite

    suite = {"formal": formal, "mad": mad, "niah": niah}[args.suite]
    archs = _csv(args.models) or list(ARCHS)
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise HopeError(f"unknown model {bad[0]!r} in --models; available: {', '.join(ARCHS)}")
    budget = suite.QUICK if args.quick else suite.BUDGET
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                 ("eval_size", args.eval_size)) if v is not None}
    for k, v in changes.items():
        if not v > 0:
            raise HopeError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    budget = dataclasses.replace(budget, **changes)
    shape = ModelShape(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, memory=args.memory,
                       overrides=parse_overrides(args.set, archs))
    names = _csv(args.tasks)
    tasks = suite.tasks(args.quick, names, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/bench/{args.suite}{'_quick' if args.quick else ''}")
    print(f"hope bench {args.suite}: {len(tasks)} task(s) x {len(archs)} model(s), {budget.steps} steps of "
          f"{budget.batch_size}, lr {budget.lr}, {torch.get_num_threads()} thread(s) -> {out}")
    run_suite(args.suite, tasks, archs, budget, shape, args.seed, out, suite.PAPER, suite.SPLIT_LABELS,
              progress=not args.no_progress, overwrite=args.overwrite, report_only=args.report_only)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="synthetic capability suites, every model side by side",
                              description="Train and test every model on the paper's synthetic suites "
                                          "(docs/benchmarks.md).")
    p.add_argument("suite", choices=["formal", "mad", "niah"], help="formal languages, MAD tasks, or needle retrieval")
    p.add_argument("--quick", action="store_true", help="a smoke version: a minute or two on a CPU")
    p.add_argument("--models", default=None, help="comma-separated (default: transformer,titans,hope_attention,hope)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks (default: all)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench/SUITE[_quick])")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the suite's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate")
    p.add_argument("--eval-size", type=int, default=None, help="test examples per split")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=2)
    p.add_argument("--memory", default=None, choices=["mlp", "linear"],
                   help="main memory of Titans and Hope (default: each model's own, Titans mlp, Hope linear)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field: model.FIELD=VALUE (every model that has it) or ARCH.FIELD=VALUE "
                        "(e.g. hope.dgd_eta_max=1.9, titans.dgd=true); repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--overwrite", action="store_true", help="retrain pairs already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the pairs already in --out (a suite still running)")
    p.set_defaults(func=cmd_bench)
