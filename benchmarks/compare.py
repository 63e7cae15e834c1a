"""Train Transformer++, Titans, Hope-Attention and Hope on the embedded corpus with one token budget
and compare them (issue 4; the paper's ordering is Hope best).

    python benchmarks/compare.py --tokens 5000000 --out runs/compare          # the tiny recipes
    python benchmarks/compare.py --quick --out /tmp/compare                   # debug recipes, a minute
    python benchmarks/compare.py --tokens 5000000 --out runs/compare --models hope,titans   # add or redo some
    python benchmarks/compare.py --tokens 1000000 --out runs/wiki --set data.corpus=wiki    # another corpus
    python benchmarks/compare.py --size debug --tokens 2000000 --out runs/wiki512 \
        --set data.corpus=wiki train.seq_len=512 train.batch_size=8 --eval-windows 512,2048   # issue 14

`--set` items apply to every model; `ARCH:section.key=value` to one. `--eval-windows` evaluates each
trained model on its corpus's validation split in carried mode (`hope eval ppl`) at each window, and
lifts `model.max_seq_len` of the models that have one to the largest window.

Each model trains with its `<arch>_tiny` recipe (parameter counts matched within 5%), the same
batch shape, seed and number of steps. Finished models are skipped when the command is run again
(their `final.json` exists), so a long comparison can be run in parts. Writes `results.json`,
`results.md` (table) and `loss_curves.png` to the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import hope  # noqa: F401  (first: sets the OpenMP spin-wait before torch loads)
import torch

from hope.config import Config, apply_overrides
from hope.errors import DivergedError, HopeError
from hope.models import build_model
from hope.recipes import get_recipe
from hope.train import count_parameters, train

ARCHS = ("transformer", "titans", "hope_attention", "hope")


def recipe_name(arch: str, size: str) -> str:
    return size if arch == "transformer" else f"{arch}_{size}"


def arch_overrides(arch: str, overrides: list[str]) -> list[str]:
    """The `--set` items for one model: plain ones, and `ARCH:key=value` ones of this ARCH."""
    out = []
    for item in overrides:
        target, colon, rest = item.partition(":")
        if not colon or "=" in target:
            out.append(item)
        elif target not in ARCHS:
            raise HopeError(f"--set {item!r}: {target!r} is not one of {', '.join(ARCHS)}")
        elif target == arch:
            out.append(rest)
    return out


def evaluate_windows(run: Path, windows: list[int], max_tokens: int) -> dict:
    """Carried-mode validation perplexity at each window (`hope eval ppl`), cached in RUN/eval/."""
    from hope.cli import main as hope_cli

    res = {}
    for w in windows:
        path = run / "eval" / f"ppl_window{w}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            rc = hope_cli(["eval", "ppl", "--run", str(run), "--split", "validation", "--window", str(w),
                           "--modes", "carried", "--max-tokens", str(max_tokens), "--out", str(path)])
            if rc == 130:
                raise KeyboardInterrupt
            if rc != 0:
                raise HopeError(f"hope eval ppl failed on {run} at window {w} (its error is printed above)")
        r = json.loads(path.read_text())["results"]
        res[str(w)] = {mode: {"ppl": v["ppl"], "bpb": v["bpb"], "tokens": v["tokens"]} for mode, v in r.items()}
    return res


def run_one(arch: str, size: str, tokens: int, out: Path, overrides: list[str], name: str | None = None) -> dict:
    """Train (or resume, or skip when finished) one model into OUT/<name or arch>; its summary."""
    overrides = arch_overrides(arch, overrides)
    name = name or arch
    cfg = get_recipe(recipe_name(arch, size))
    shaped = apply_overrides(cfg, overrides).train  # the batch shape the run will have
    per_step = shaped.batch_size * shaped.seq_len * shaped.grad_accum
    steps = max(1, math.ceil(tokens / per_step))
    evals = 10
    cfg = apply_overrides(cfg, [f"train.steps={steps}", f"train.eval_every={max(1, steps // evals)}",
                                f"train.ckpt_every={max(1, steps // 4)}", f"train.log_every={max(1, steps // 200)}",
                                f"train.warmup_steps={min(cfg.train.warmup_steps, max(1, steps // 10))}", *overrides])
    run = out / name
    failed = run / "diverged.json"
    try:
        if (run / "final.json").exists() or failed.exists():
            print(f"{name}: done already ({run})")
        elif (run / "checkpoints" / "latest").exists():
            print(f"{name}: resuming")
            train(cfg, run, resume=True)
        else:
            print(f"{name}: {steps} steps of {per_step} tokens")
            train(cfg, run, overwrite=True)
    except DivergedError as e:  # a model that diverges is a result too: record it and go on
        # (any other error, e.g. an unprepared corpus, stops the comparison and is not recorded)
        print(f"{name}: {e}")
        run.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps({"error": str(e)}) + "\n")
    if failed.exists():
        return {"arch": arch, "recipe": recipe_name(arch, size), "error": json.loads(failed.read_text())["error"],
                "run": str(run)}
    final = json.loads((run / "final.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first includes warm-up
    saved = Config.load(run / "config.json")
    with torch.device("meta"):
        model = build_model(saved.arch, saved.model)
    return {"arch": arch, "recipe": recipe_name(arch, size), "tokens": final["tokens"], "steps": final["step"],
            "val_loss": final["val_loss"], "val_ppl": final["val_ppl"], "val_bpb": final["val_bpb"],
            "val_ppl_frozen": final.get("val_ppl_frozen"),
            "unigram_ppl": final.get("unigram_ppl"), "params": count_parameters(model)["total"],
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else float("nan"), "run": str(run)}


def write_table(results: list[dict], out: Path) -> str:
    windows = sorted({int(w) for r in results for w in r.get("carried", {})})
    lines = ["| model | recipe | params | tokens | val loss | val ppl | val ppl, CMS frozen | bits/byte | tokens/s |"
             + "".join(f" carried ppl, window {w} |" for w in windows),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(windows)]
    for r in sorted(results, key=lambda r: r.get("val_loss", float("inf"))):
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['recipe']} | | | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['arch']} | {r['recipe']} | {r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['val_loss']:.4f} | {r['val_ppl']:.2f} | "
                     + (f"{r['val_ppl_frozen']:.2f}" if r.get("val_ppl_frozen") is not None else "-")
                     + f" | {r['val_bpb']:.4f} | {r['tokens_per_s']:,.0f} |"
                     + "".join(f" {_carried(r, w)} |" for w in windows))
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return table


def _carried(r: dict, w: int) -> str:
    modes = r.get("carried", {}).get(str(w))
    if not modes:
        return ""
    text = f"{modes['carried']['ppl']:.2f}"
    if "carried_learn" in modes:
        text += f" ({modes['carried_learn']['ppl']:.2f} learning)"
    return text


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    corpora, sizes = set(), set()
    for r in results:
        if "error" in r:
            continue
        corpora.add(Path(Config.load(Path(r["run"]) / "config.json").data.corpus).name)
        sizes.add(r["recipe"].rsplit("_", 1)[-1])
        records = [json.loads(line) for line in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines() if line]
        val = [(x["tokens"], x["val_loss"]) for x in records if "val_loss" in x]
        ax.plot(*zip(*val), "o-", ms=3, label=f"{r['arch']} ({r['params'] / 1e6:.1f}M)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title(f"{', '.join(sorted(corpora))}, {'/'.join(sorted(sizes))} recipes, equal token budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=5_000_000, help="training tokens per model")
    ap.add_argument("--models", default=",".join(ARCHS))
    ap.add_argument("--size", default="tiny", help="recipe size: debug, tiny, small, base")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--quick", action="store_true", help="debug recipes and 20K tokens: a smoke test")
    ap.add_argument("--set", nargs="+", default=[],
                    help="overrides applied to every model (train.* keys), or ARCH:section.key=value to one")
    ap.add_argument("--eval-windows", default=None, help="e.g. 512,2048: carried-mode validation at each window")
    ap.add_argument("--eval-max-tokens", type=int, default=65536, help="validation tokens per window evaluation")
    args = ap.parse_args()
    size, tokens = ("debug", 20_000) if args.quick else (args.size, args.tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    windows = [int(w) for w in args.eval_windows.split(",")] if args.eval_windows else []
    try:
        results = []
        for a in archs:
            sets = list(args.set)
            if windows and a in ("transformer", "hope_attention"):
                sets.append(f"{a}:model.max_seq_len={max(windows + [get_recipe(recipe_name(a, size)).model.max_seq_len])}")
            r = run_one(a, size, tokens, out, sets)
            if windows and "error" not in r:
                r["carried"] = evaluate_windows(Path(r["run"]), windows, args.eval_max_tokens)
            results.append(r)
    except HopeError as e:  # bad input (an unknown model or key, an unprepared corpus): one line, no traceback
        raise SystemExit(f"error: {e}") from None
    done = {r["arch"]: r for r in results}
    if (out / "results.json").exists():  # keep models finished by earlier invocations
        for r in json.loads((out / "results.json").read_text()):
            done.setdefault(r["arch"], r)
    results = [done[a] for a in ARCHS if a in done]
    print(write_table(results, out))
    plot(results, out)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
