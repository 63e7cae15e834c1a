"""The README's main-job figure, from a run of `hope train` (recipe `tiny`, the default).

    hope train --out runs/main_job && python benchmarks/main_job.py --run runs/main_job

Writes `benchmarks/results/main_job.json` (the figures, the command, the git commit and torch version
of the run, the machine and the date) and prints the README's sentence. Wall time is the span from
`run.json`'s creation to `final.json`'s write (the run's own clock: data preparation, training,
evaluation and samples).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

from hope.checkpoint import atomic_write_text
from hope.runs import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run folder of `hope train`")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "main_job.json"))
    args = ap.parse_args()
    run = Path(args.run)
    loaded = load_run(run)
    final = json.loads((run / "final.json").read_text())
    record = json.loads((run / "run.json").read_text())
    start = datetime.fromisoformat(record["created"]).timestamp()
    wall = (run / "final.json").stat().st_mtime - start
    from hope.models import count_parameters

    tc = loaded.cfg.train
    out = {"params": count_parameters(loaded.model)["total"], "steps": final["step"], "tokens": final["tokens"],
           "batch": f"{tc.batch_size} x {tc.seq_len}", "val_ppl": final["val_ppl"], "val_bpb": final["val_bpb"],
           "unigram_ppl": final["unigram_ppl"], "wall_s": round(wall, 1),
           "command": " ".join(["hope", *record["argv"][1:]]), "git_commit": record["git_commit"],
           "torch": record["torch"], "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "date": record["created"][:10], "written": time.strftime("%Y-%m-%d")}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    m, s = divmod(round(wall), 60)
    print(f"The main job (`hope train`, recipe `tiny`: {out['params'] / 1e6:.2f}M parameters, {out['steps']} steps of "
          f"{out['batch']} tokens = {out['tokens'] / 1e6:.2f}M tokens) on {os.cpu_count()} CPU cores: {m} min {s} s, "
          f"validation perplexity {out['val_ppl']:.2f} against {out['unigram_ppl']:.1f} for a unigram model of the "
          f"training split, {out['val_bpb']:.4f} bits per byte (measured {out['date']} at commit "
          f"{(out['git_commit'] or 'unknown')[:7]}; `{Path(args.out).name}`).")


if __name__ == "__main__":
    main()
