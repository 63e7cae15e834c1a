"""Reruns the evaluation tables of issue 7's closing note.

    python benchmarks/eval_reference.py smollm2 [--limit 100]          # pretrained reference model, 8 tasks
    python benchmarks/eval_reference.py runs RUN_DIR [RUN_DIR ...] [--limit 200] [--max-tokens N]

`smollm2` runs `hope eval harness --gguf smollm2` (needs `hope data get smollm2 reasoning`); `runs`
runs `hope eval ppl --data wiki` and `hope eval harness --tasks all` on each run folder and prints
one table of both (needs `hope data get wiki reasoning`). Keep OMP_NUM_THREADS=1 on shared machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hope.cli import main as hope
from hope.eval.harness import PAPER_COLUMNS


def run_one(run: str, limit: int | None, max_tokens: int | None, out: Path) -> dict:
    name = Path(run).name
    args = ["eval", "ppl", "--run", run, "--data", "wiki", "--out", str(out / f"{name}_ppl.json")]
    if max_tokens:
        args += ["--max-tokens", str(max_tokens)]
    if hope(args) != 0:
        raise SystemExit(f"hope eval ppl failed on {run}")
    args = ["eval", "harness", "--run", run, "--tasks", "all", "--no-progress", "--out", str(out / f"{name}_h.json")]
    if limit:
        args += ["--limit", str(limit)]
    if hope(args) != 0:
        raise SystemExit(f"hope eval harness failed on {run}")
    return {"ppl": json.loads((out / f"{name}_ppl.json").read_text())["results"],
            "harness": json.loads((out / f"{name}_h.json").read_text())["results"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["smollm2", "runs"])
    p.add_argument("runs", nargs="*")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    a = p.parse_args()
    if a.what == "smollm2":
        args = ["eval", "harness", "--gguf", "smollm2", "--tasks", "all", "--no-progress"]
        return hope(args + (["--limit", str(a.limit)] if a.limit else []))
    out = Path(tempfile.mkdtemp(prefix="hope-eval-"))
    rows = {r: run_one(r, a.limit, a.max_tokens, out) for r in a.runs}
    head = ["run", "Wiki ppl (carried)", "Wiki ppl (indep.)", "Wiki bpb (carried)"] + [c[2] for c in PAPER_COLUMNS]
    print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for run, r in rows.items():
        carried = r["ppl"].get("carried_learn", r["ppl"]["carried"])
        cells = [Path(run).name, f"{carried['ppl']:.2f}", f"{r['ppl']['independent']['ppl']:.2f}", f"{carried['bpb']:.3f}"]
        for task, metric, _ in PAPER_COLUMNS:
            v = r["harness"].get(task, {}).get(metric)
            cells.append("-" if v is None else f"{v:.2f}" if metric == "perplexity" else f"{100 * v:.1f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
