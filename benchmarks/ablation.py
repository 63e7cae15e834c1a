"""The paper's ablation table of Hope (SPEC 7, issue 14): each of Hope's mechanisms switched off in turn,
at one budget, on language modeling and the MAD recall tasks, beside the paper's numbers.

    python benchmarks/ablation.py --out benchmarks/results/ablation            # 8 rows + SPEC's main memory, resumable
    python benchmarks/ablation.py --quick --out /tmp/ablation                  # a smoke run, a few minutes
    python benchmarks/ablation.py --rows full,no_dgd --set model.proj_eta_offset=-4   # a subset, another base

Rows: full, no DGD, no momentum, no retention, no CMS, static k, static v, static q (each one Hope
config switch, `ROWS`). Every row gets the same budget, data and seed:
* **Language modeling**: the `hope_debug` recipe (d_model 64, 2 layers, byte tokenizer) on the
  embedded Shakespeare corpus, `--lm-steps` steps of 16 x 128 tokens; validation perplexity (per
  byte) and bits per byte. Parameter counts differ a little between rows (a static projection has
  no projection memory, no CMS is one MLP of the chain's width) and are reported.
* **MAD recall**: `hope bench mad`'s models and budget (about 108K parameters, matched to the
  bench's Transformer within 5% for every row) on in-context recall and noisy recall
  (`--recall-tasks`).
Each finished (row, part) is written to `OUT/rows/` at once and reused when the command runs again
with the same settings. Writes `results.json`, `results.md` and `results.png` to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import hope  # noqa: F401  (first: sets the OpenMP spin-wait before torch loads)
import torch

from hope.bench import mad
from hope.bench.common import ModelShape, model_configs, parse_overrides, train_and_test
from hope.config import Config, apply_overrides
from hope.errors import HopeError
from hope.recipes import get_recipe
from hope.train import train

ROWS = {  # name: (label, Hope config overrides)
    "full": ("Hope (full)", []),
    "no_dgd": ("w/o DGD", ["model.dgd=false"]),
    "no_momentum": ("w/o momentum", ["model.momentum=false"]),
    "no_retention": ("w/o retention", ["model.retention=false"]),
    "no_cms": ("w/o CMS", ["model.cms=false"]),
    "static_k": ("static k", ["model.static_k=true"]),
    "static_v": ("static v", ["model.static_v=true"]),
    "static_q": ("static q", ["model.static_q=true"]),
    # not in the paper's table: SPEC 4.2's main memory, which our default replaces (docs/DEVIATIONS.md)
    "spec_memory": ("SPEC's main memory (MLP, targets M_c(v))", ["model.memory=mlp", "model.self_target=true"]),
}
# SPEC 7: average LM perplexity / average reasoning accuracy of the paper's 1.3B-scale ablation
PAPER = {"full": (12.24, 58.1), "no_dgd": (13.41, 56.5), "no_momentum": (13.58, 56.9),
         "no_retention": (13.71, 57.2), "no_cms": (13.04, 57.3), "static_k": (13.77, 56.9),
         "static_v": (13.90, 55.1), "static_q": (12.19, 57.4)}
RECALL = ("icr", "noisy_icr")


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _cached(path: Path, key: dict):
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("key") == json.loads(json.dumps(key)):
            return old["record"]
    return None


def lm_config(overrides: list[str], steps: int) -> Config:
    cfg = get_recipe("hope_debug")
    return apply_overrides(cfg, [f"train.steps={steps}", "train.batch_size=16", "train.seq_len=128",
                                 f"train.warmup_steps={max(1, steps // 10)}", f"train.eval_every={max(1, steps // 4)}",
                                 f"train.ckpt_every={max(1, steps // 2)}", f"train.log_every={max(1, steps // 50)}",
                                 "train.eval_tokens=32768", "train.sample_tokens=0", *overrides])


def run_lm(row: str, overrides: list[str], steps: int, out: Path) -> dict:
    cfg = lm_config(overrides, steps)
    key = {"config": cfg.to_dict()}
    path = out / "rows" / f"{row}__lm.json"
    rec = _cached(path, key)
    if rec is not None:
        print(f"  {row} lm: done already")
        return rec
    run = out / "lm_runs" / row
    t0 = time.perf_counter()
    resume = (run / "checkpoints" / "latest").exists() and (run / "config.json").exists() \
        and Config.load(run / "config.json").to_dict() == cfg.to_dict()
    train(cfg, run, resume=resume, overwrite=not resume)
    final = json.loads((run / "final.json").read_text())
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rec = {"val_ppl": final["val_ppl"], "val_bpb": final["val_bpb"], "val_loss": final["val_loss"],
           "tokens": final["tokens"], "params": _params(cfg), "train_s": round(time.perf_counter() - t0, 1),
           "val_curve": [(r["tokens"], r["val_loss"]) for r in curve if "val_loss" in r]}
    _write(path, {"key": key, "record": rec})
    return rec


def _params(cfg: Config) -> int:
    from hope.models import build_model, count_parameters

    with torch.device("meta"):
        return count_parameters(build_model(cfg.arch, cfg.model))["total"]


def run_recall(row: str, overrides: list[str], budget, out: Path, seed: int, progress: bool,
               tasks=RECALL) -> dict:
    sets = [f"hope.{o.split('.', 1)[1]}" for o in overrides]
    shape = ModelShape(overrides=parse_overrides(sets, ["hope"]))
    recs = {}
    for task in mad.tasks(False, list(tasks), seed=seed):
        cfg, n = model_configs(["transformer", "hope"], shape, task.vocab_size, task.train_len, task.max_len)["hope"]
        key = {"budget": dataclasses.asdict(budget), "config": dataclasses.asdict(cfg), "seed": seed}
        path = out / "rows" / f"{row}__{task.name}.json"
        rec = _cached(path, key)
        if rec is None:
            rec = train_and_test(task, "hope", cfg, budget, seed, progress)
            _write(path, {"key": key, "record": rec})
        else:
            print(f"  {row} {task.name}: done already")
        recs[task.name] = rec
    return recs


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = ["# Hope ablation (benchmarks/ablation.py)", "",
             f"Language modeling: `hope_debug` (d_model 64, 2 layers, bytes) on Shakespeare, {s['lm_steps']} steps "
             f"of 16 x 128 tokens, validation perplexity per byte. MAD recall: the `hope bench mad` models "
             f"(parameters matched to its Transformer) and budget ({s['recall_budget']['steps']} steps of "
             f"{s['recall_budget']['batch_size']}), accuracy (%). Base overrides: "
             f"{', '.join(s['base']) or 'none'}. Seed {s['seed']}.", "",
             "| row | LM val ppl | bits/byte | params (LM) | " + " | ".join(s["recall_tasks"]) + " | params (MAD) | paper: ppl / acc |",
             "| --- | ---: | ---: | ---: |" + " ---: |" * len(s["recall_tasks"]) + " ---: | --- |"]
    for row, r in report["rows"].items():
        lm, rc = r.get("lm"), r.get("recall", {})
        cells = [ROWS[row][0],
                 f"{lm['val_ppl']:.3f}" if lm else "", f"{lm['val_bpb']:.4f}" if lm else "",
                 f"{lm['params']:,}" if lm else ""]
        for t in s["recall_tasks"]:
            x = rc.get(t)
            cells.append("" if x is None else ("diverged" if x["diverged"] else f"{x['accuracy']['test']:.1f}"))
        cells.append(", ".join(sorted({f"{x['params']:,}" for x in rc.values()})))
        cells.append("{} / {}".format(*PAPER[row]) if row in PAPER else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The paper's numbers are the average LM perplexity and reasoning accuracy of its 1.3B-parameter "
              "ablation (SPEC 7); ours are a CPU-sized check of the same switches: compare the ordering of rows."]
    return "\n".join(lines) + "\n"


def plot(report: dict, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = list(report["rows"])
    labels = [ROWS[r][0] for r in rows]
    tasks = report["settings"]["recall_tasks"]
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(5 * (1 + len(tasks)), 4), dpi=110, squeeze=False)
    axes = axes[0]
    ppl = [report["rows"][r].get("lm", {}).get("val_ppl", math.nan) for r in rows]
    axes[0].barh(labels, ppl, color="tab:blue")
    axes[0].set_xlabel("LM validation perplexity per byte (lower is better)")
    axes[0].set_xlim(min(p for p in ppl if p == p) * 0.97 if any(p == p for p in ppl) else 0, None)
    for ax, t in zip(axes[1:], tasks):
        acc = [(report["rows"][r].get("recall", {}).get(t) or {}).get("accuracy", {}).get("test", math.nan)
               for r in rows]
        ax.barh(labels, acc, color="tab:green")
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"MAD {t} accuracy (%)")
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Hope ablation: one mechanism off per row")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--parts", default="lm,recall", help="lm, recall or both")
    ap.add_argument("--lm-steps", type=int, default=300, help="LM training steps of 16 x 128 tokens")
    ap.add_argument("--recall-steps", type=int, default=None, help="MAD training steps (default: the bench's 600)")
    ap.add_argument("--recall-tasks", default=",".join(RECALL), help="MAD tasks of the recall part")
    ap.add_argument("--set", action="append", default=[], metavar="model.FIELD=VALUE",
                    help="a Hope config override applied to every row first (the design under test); repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="20 LM steps, 30 MAD steps, 64 test examples: a smoke run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    try:
        bad = [r for r in rows if r not in ROWS] + [f"part {p}" for p in parts if p not in ("lm", "recall")]
        if bad:
            raise HopeError(f"unknown {bad[0]!r}; rows: {', '.join(ROWS)}; parts: lm, recall")
        if any(not s.startswith("model.") for s in args.set):
            raise HopeError("--set takes model.FIELD=VALUE overrides of the Hope config")
        if args.threads:
            torch.set_num_threads(args.threads)
        budget = mad.QUICK if args.quick else mad.BUDGET
        if args.recall_steps:
            budget = dataclasses.replace(budget, steps=args.recall_steps)
        if args.quick:
            budget = dataclasses.replace(budget, steps=30)
        lm_steps = 20 if args.quick else args.lm_steps
        out = Path(args.out)
        tasks = [t.strip() for t in args.recall_tasks.split(",") if t.strip()]
        bad = [t for t in tasks if t not in mad.TASKS]
        if bad:
            raise HopeError(f"unknown MAD task {bad[0]!r}; tasks: {', '.join(mad.TASKS)}")
        report = {"settings": {"lm_steps": lm_steps, "recall_tasks": tasks, "recall_budget": dataclasses.asdict(budget), "base": args.set,
                               "seed": args.seed, "quick": args.quick}, "rows": {}, "paper": PAPER}
        if (out / "results.json").exists():       # rows finished by earlier invocations with these settings
            old = json.loads((out / "results.json").read_text())
            if old.get("settings") == json.loads(json.dumps(report["settings"])):
                report["rows"] = old["rows"]
        for row in rows:
            overrides = [*args.set, *ROWS[row][1]]
            print(f"{row}: {', '.join(overrides) or 'defaults'}")
            entry = report["rows"].setdefault(row, {})
            if "lm" in parts:
                entry["lm"] = run_lm(row, overrides, lm_steps, out)
                print(f"  {row} lm: val ppl {entry['lm']['val_ppl']:.3f}")
            if "recall" in parts:
                entry["recall"] = run_recall(row, overrides, budget, out, args.seed, not args.no_progress, tasks)
                print(f"  {row} recall: " + ", ".join(f"{t} {r['accuracy'].get('test', float('nan')):.1f}"
                                                      for t, r in entry["recall"].items()))
            report["rows"] = {r: report["rows"][r] for r in ROWS if r in report["rows"]}
            _write(out / "results.json", report)
    except HopeError as e:
        raise SystemExit(f"error: {e}") from None
    (out / "results.md").write_text(markdown(report))
    print(markdown(report))
    if plot(report, out / "results.png"):
        print(f"wrote {out / 'results.png'}")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
