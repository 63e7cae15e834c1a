"""Which levels moved in a continual run, how far, with which periods (`hope.continual.levels`).

    python benchmarks/continual_levels.py --suite benchmarks/results/continual/lm
    python benchmarks/continual_levels.py --suite benchmarks/results/continual/lm --runs hope-seq-adamw
    python benchmarks/continual_levels.py --suite benchmarks/results/continual/lm --checkpoints runs/stage_ckpts

For every run of a `hope continual lm` suite that has a checkpoint of every stage (`hope.checkpoint`
keeps the last two in `RUN/checkpoints/`, so `--checkpoints ROOT` reads copies kept as
`ROOT/RUN/step-000000i`; they are not committed), and for each stage:

* the outer movement of every role (embedding, mixers / attention, MLPs, each CMS level by period,
  norms): `||theta_i - theta_{i-1}|| / ||theta_{i-1}||` over the stage, and from the initialization
  (rebuilt from the run's seed, as `hope.continual.common.run_stages` builds it);
* for a CMS model, the in-context movement: the trained model reads `--rows` x `--read` held-out
  tokens of every domain with the CMS learning and no outer optimizer; ||fast - trained|| /
  ||trained|| per period (mean over layers and domains).

Writes `levels.json` and `levels.md` to `--out` (default: the suite folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hope.checkpoint import load_checkpoint
from hope.config import Config
from hope.continual.common import recipe_name
from hope.continual.levels import cms_periods, context_movement, role_drift
from hope.continual.lm import load_domains, shared_tokenizer
from hope.data.tokens import prepare_tokens
from hope.errors import HopeError
from hope.models import build_model
from hope.recipes import get_recipe


def stage_checkpoints(run_dir: Path, root: Path | None = None) -> list[Path]:
    where = root / run_dir.name if root is not None else run_dir / "checkpoints"
    return sorted(p for p in where.glob("step-*") if p.is_dir())


def analyse_run(run_dir: Path, val_rows: list[torch.Tensor] | None, window: int, root: Path | None = None) -> dict:
    cfg = Config.load(run_dir / "config.json")
    ckpts = stage_checkpoints(run_dir, root)
    domains = json.loads((run_dir / "settings.json").read_text())["domains"]
    if [int(p.name.split("-")[1]) for p in ckpts] != list(range(1, len(domains) + 1)):
        raise HopeError(f"{run_dir.name}: need a checkpoint of every stage 1..{len(domains)}, found "
                        f"{[p.name for p in ckpts]} (not committed; keep copies with --checkpoints)")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.arch, cfg.model)
    periods = cms_periods(model)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    prev = init
    stages = []
    for i, ckpt in enumerate(ckpts):
        load_checkpoint(ckpt, model)
        now = {k: v.detach().clone() for k, v in model.named_parameters()}
        row = {"stage": i + 1, "stage_drift": role_drift(prev, now, periods), "from_init": role_drift(init, now, periods)}
        if val_rows is not None:
            limit = getattr(model, "max_seq_len", None) or 10 ** 9
            moves = [context_movement(model, r[:, :limit], window) for r in val_rows]
            if moves and moves[0]:
                row["in_context"] = {p: sum(m[p] for m in moves) / len(moves) for p in moves[0]}
        stages.append(row)
        prev = now
    return {"run": run_dir.name, "arch": cfg.arch, "periods": list(periods.get(0, ())), "stages": stages}


def markdown(results: list[dict], domains: list[str]) -> str:
    lines = ["# Which levels moved", "",
             f"Stages: {', '.join(domains)}. Outer movement: `||theta_i - theta_(i-1)|| / ||theta_(i-1)||` over each stage "
             "(from the initialization in brackets), per role. In-context: ||fast - trained|| / ||trained|| after reading "
             "held-out text of every domain, per period.", ""]
    for r in results:
        roles = list(r["stages"][0]["stage_drift"])
        lines += [f"## {r['run']}", "", "| stage | " + " | ".join(roles) + " |", "| --- |" + " ---: |" * len(roles)]
        for s, name in zip(r["stages"], domains):
            lines.append(f"| {s['stage']} {name} | " + " | ".join(
                f"{s['stage_drift'][k]:.3f} ({s['from_init'][k]:.3f})" for k in roles) + " |")
        if "in_context" in r["stages"][0]:
            periods = list(r["stages"][0]["in_context"])
            lines += ["", "| after stage | " + " | ".join(f"in context, period {p}" for p in periods) + " |",
                      "| --- |" + " ---: |" * len(periods)]
            for s, name in zip(r["stages"], domains):
                lines.append(f"| {s['stage']} {name} | " + " | ".join(f"{s['in_context'][p]:.2e}" for p in periods) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="a hope continual lm --out folder")
    ap.add_argument("--runs", default=None, help="comma-separated run names (default: every run with checkpoints)")
    ap.add_argument("--rows", type=int, default=4, help="held-out streams read per domain")
    ap.add_argument("--read", type=int, default=512, help="tokens read per stream")
    ap.add_argument("--checkpoints", default=None, help="ROOT holding ROOT/RUN/step-* copies of every stage")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suite = Path(args.suite)
    root = Path(args.checkpoints) if args.checkpoints else None
    names = args.runs.split(",") if args.runs else (
        sorted(p.name for p in root.iterdir() if p.is_dir()) if root else
        [p.parent.name for p in sorted(suite.glob("runs/*/checkpoints"))])
    if not names:
        raise SystemExit(f"no run under {suite}/runs has checkpoints")
    record = json.loads((suite / "runs" / names[0] / "settings.json").read_text())
    domains = record["domains"]
    base = get_recipe(recipe_name("transformer", record["settings"]["size"]))
    corpora = load_domains(domains)
    tokenizer = shared_tokenizer(base.data.tokenizer, corpora, base.data.vocab_size)
    val = [torch.from_numpy(prepare_tokens(c, tokenizer)["val"][:args.rows * args.read].astype("int64")).view(args.rows, args.read)
           for c in corpora]
    torch.set_grad_enabled(False)
    results = []
    for name in names:
        print(f"{name} ...", flush=True)
        results.append(analyse_run(suite / "runs" / name, val, window=base.train.seq_len, root=root))
    out = Path(args.out) if args.out else suite
    (out / "levels.json").write_text(json.dumps({"domains": domains, "rows": args.rows, "read": args.read,
                                                 "runs": results}, indent=2) + "\n")
    (out / "levels.md").write_text(markdown(results, domains))
    print(markdown(results, domains))


if __name__ == "__main__":
    main()
