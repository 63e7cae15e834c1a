"""`hope continual lm | classify`: the continual-learning benchmarks (docs/continual.md).

    hope continual lm [--archs transformer,hope] [--methods seq,replay,ewc,joint,static_cms]
                      [--domains shakespeare,wiki,bible,pydocs] [--optimizer adamw] [--tokens-per-stage 250000]
                      [--out runs/continual/lm] [--quick]
    hope continual classify [--sources fortunes,kerneldoc] [--pretrain wiki --pretrain-steps 300]
                            [--steps 100] [--task-lr 1e-3] [--seq-len 64] [--quick]

Every (architecture, method) run is resumable after each stage: the same command continues a
stopped suite. `--quick` runs debug-sized models on a few thousand tokens per stage (CI smoke).
"""

from __future__ import annotations

import math
from pathlib import Path

from hope.errors import HopeError

# (full, quick) defaults of the options left unset
LM_DEFAULTS = {"size": ("tiny", "debug"), "tokens_per_stage": (250_000, 3072), "eval_tokens": (16384, 1024),
               "replay_rows": (512, 16), "fisher_rows": (64, 4), "curve_points": (2, 1)}
CLASSIFY_DEFAULTS = {"size": ("tiny", "debug"), "steps": (100, 6), "task_lr": (1e-3, 1e-3), "seq_len": (64, 0), "tasks": (5, 2), "classes_per_task": (2, 2),
                     "train_per_class": (150, 8), "test_per_class": (20, 4), "pretrain_steps": (300, 4),
                     "replay_rows": (128, 8), "fisher_rows": (64, 4)}


def _fill(args, defaults: dict) -> None:
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)


def _settings(args, steps: int):
    from hope.continual.common import Settings

    return Settings(size=args.size, optimizer=args.optimizer, steps=steps, replay_rows=args.replay_rows,
                    replay_share=args.replay_share, ewc_lambda=args.ewc_lambda, fisher_rows=args.fisher_rows,
                    curve_points=getattr(args, "curve_points", 1) or 1, seed=args.seed, overrides=tuple(args.set or ()))


def _lists(args):
    from hope.continual.common import ARCHS, METHODS, parse_list

    return parse_list(args.archs, ARCHS, "arch"), parse_list(args.methods, METHODS, "method")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)


def cmd_lm(args) -> int:
    from hope.continual.common import recipe_name
    from hope.continual.lm import DEFAULT_DOMAINS, continual_lm
    from hope.recipes import get_recipe

    _fill(args, LM_DEFAULTS)
    archs, methods = _lists(args)
    if args.tokens_per_stage < 1 or args.eval_tokens < 1:
        raise HopeError("--tokens-per-stage and --eval-tokens must be >= 1")
    domains = [d.strip() for d in (args.domains or ",".join(DEFAULT_DOMAINS)).split(",") if d.strip()]
    from hope.config import apply_overrides

    tc = apply_overrides(get_recipe(recipe_name("transformer", args.size)), list(args.set or [])).train
    steps = math.ceil(args.tokens_per_stage / (tc.batch_size * tc.seq_len))
    out = Path(args.out or ("runs/continual/lm-quick" if args.quick else "runs/continual/lm"))
    _prepare_out(out, args.overwrite)
    continual_lm(out, domains, archs, methods, _settings(args, steps), args.eval_tokens, progress=not args.no_progress,
                 from_run=args.from_run)
    return 0


def cmd_classify(args) -> int:
    from hope.continual.classify import continual_classify
    from hope.continual.tasks import SOURCES

    _fill(args, CLASSIFY_DEFAULTS)
    archs, methods = _lists(args)
    sources = [s.strip() for s in (args.sources or ",".join(SOURCES)).split(",") if s.strip()]
    if args.seq_len:  # pretraining and tasks alike (0: the recipe's, as --quick does)
        if args.seq_len < 8:
            raise HopeError(f"--seq-len must be >= 8, got {args.seq_len}")
        args.set = [f"train.seq_len={args.seq_len}"] + list(args.set or [])
    out = Path(args.out or ("runs/continual/classify-quick" if args.quick else "runs/continual/classify"))
    _prepare_out(out, args.overwrite)
    continual_classify(out, sources, archs, methods, _settings(args, args.steps), args.tasks, args.classes_per_task,
                       args.train_per_class, args.test_per_class, args.pretrain, args.pretrain_steps,
                       progress=not args.no_progress, from_run=args.from_run, task_lr=args.task_lr)
    return 0


def _common(p) -> None:
    from hope.optim import OPTIMIZER_NAMES

    p.add_argument("--archs", default=None, help="comma-separated: transformer, titans, hope_attention, hope (default all)")
    p.add_argument("--methods", default=None,
                   help="comma-separated: seq, replay, ewc, joint, static_cms (default: all that apply; static_cms "
                        "only to CMS models)")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZER_NAMES,
                   help="outer optimizer of every run, its state carried across stages (default adamw)")
    p.add_argument("--size", default=None, choices=("debug", "tiny", "small", "base"),
                   help="recipe size of every architecture (default tiny; --quick: debug)")
    p.add_argument("--replay-rows", type=int, default=None, help="replay buffer capacity in training sequences")
    p.add_argument("--replay-share", type=float, default=0.25, help="share of every batch drawn from the buffer")
    p.add_argument("--ewc-lambda", type=float, default=100.0, help="EWC penalty strength (default 100)")
    p.add_argument("--fisher-rows", type=int, default=None, help="training sequences per stage for the Fisher")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override fields of every run's recipe, e.g. --set train.lr=1e-3 train.batch_size=8")
    p.add_argument("--out", default=None, help="suite folder (runs, checkpoints, results.json, results.md, plots)")
    p.add_argument("--overwrite", action="store_true", help="start the suite folder afresh")
    p.add_argument("--quick", action="store_true", help="debug-sized models, a few thousand tokens per stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN",
                   help="start every run from this run folder's model, weights and tokenizer (e.g. hope stack's), "
                        "trained with the Transformer recipe's train settings at --size")


def register(sub) -> None:
    p = sub.add_parser("continual", help="continual-learning benchmarks: forgetting across domains and tasks",
                       description="Continual-learning benchmarks (docs/continual.md).")
    csub = p.add_subparsers(dest="continual", required=True)

    q = csub.add_parser("lm", help="domain-incremental language modelling",
                        description="Train every architecture on a sequence of domains with each method; report "
                                    "R, ACC, BWT, forgetting, forward transfer, and forgetting at inference.")
    q.add_argument("--domains", default=None,
                   help="comma-separated corpora in training order (default shakespeare,wiki,bible,pydocs; "
                        "registered names or paths)")
    q.add_argument("--tokens-per-stage", type=int, default=None, help="training tokens per stage (default 250000)")
    q.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens per domain per evaluation (default 16384)")
    q.add_argument("--curve-points", type=int, default=None, help="evaluations per stage for the forgetting curve (default 2)")
    _common(q)
    q.set_defaults(func=cmd_lm)

    q = csub.add_parser("classify", help="class-incremental text classification scored by label likelihood",
                        description="Pretrain every architecture on a general corpus, then train it on tasks of "
                                    "disjoint classes with each method; accuracy among the labels seen so far.")
    q.add_argument("--sources", default=None,
                   help="comma-separated: fortunes, kerneldoc (hope data get NAME) or labelled folders (default both)")
    q.add_argument("--tasks", type=int, default=None, help="tasks per source (default 5)")
    q.add_argument("--classes-per-task", type=int, default=None, help="default 2")
    q.add_argument("--train-per-class", type=int, default=None, help="training items per class (default 150)")
    q.add_argument("--test-per-class", type=int, default=None, help="held-out items per class (default 20)")
    q.add_argument("--steps", type=int, default=None, help="optimizer steps per task (default 100)")
    q.add_argument("--seq-len", type=int, default=None,
                   help="training sequence length, pretraining included; an example's text is cut to fit it "
                        "(default 64; 0: the recipe's)")
    q.add_argument("--pretrain", default="wiki", help="general corpus to pretrain on first (default wiki)")
    q.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default 300; 0: none)")
    q.add_argument("--task-lr", type=float, default=None,
                   help="peak learning rate of the task stages (default 1e-3; pretraining keeps the recipe's)")
    _common(q)
    q.set_defaults(func=cmd_classify)
