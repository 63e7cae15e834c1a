"""The outputs of a continual suite: `results.json` (every run, the command, commit, machine, date),
`results.md` (methods x architectures), and per run a heatmap of `R` and the forgetting curve (each
task's score across the whole schedule), as PNGs (matplotlib, Agg backend; skipped with a notice
when it is missing: `pip install 'hope-nl[plot]'`).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path

import hope
from hope.continual.common import write_json
from hope.continual.metrics import learning_score


def header(kind: str, settings, extra: dict) -> dict:
    from dataclasses import asdict

    from hope.train import git_commit

    return {"benchmark": kind, "command": " ".join(["hope", *sys.argv[1:]]) if sys.argv else None,
            "git_commit": git_commit(), "hope_version": hope.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
            "date": time.strftime("%Y-%m-%d"), "settings": asdict(settings), **extra}


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    """One table row per run: final average, BWT, forgetting, FWT, tokens/s."""
    lm = results["benchmark"] == "lm"
    lines = [f"# hope continual {results['benchmark']}", "",
             f"`{results.get('command')}` at {results.get('git_commit') or '?'}, {results.get('machine')}, "
             f"{results.get('date')}.", ""]
    if lm:
        lines += [f"Domains in order: {', '.join(results['domains'])}; {results['tokens_per_stage']:,} tokens per stage. "
                  "avg ppl = exp(mean final loss over domains); BWT, forgetting and FWT in nats/token "
                  "(negative BWT and positive forgetting mean the model forgot; docs/continual.md).", "",
                  "| architecture | method | optimizer | avg ppl | avg bpb | BWT | forgetting | FWT | tokens/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines += [f"Sources: {', '.join(results['sources'])}; tasks of {results['classes_per_task']} classes, "
                  f"{results['steps_per_task']} steps per task. Accuracy among the labels seen so far; "
                  "learning acc: the mean accuracy of each task just after it was learned.", "",
                  "| source | architecture | method | optimizer | final avg acc | BWT | forgetting | learning acc | tokens/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        if "diverged" in r:
            lines.append(f"| {r.get('source', '') + ' | ' if not lm else ''}{r['arch']} | {r['method']} | {r['optimizer']} | "
                         f"diverged: {r['diverged']} |")
            continue
        m = r["metrics"]
        if lm:
            lines.append(f"| {r['arch']} | {r['method']} | {r['optimizer']} | {_fmt(m['avg_ppl'], 2)} | {_fmt(m['avg_bpb'], 4)} | "
                         f"{_fmt(m['bwt'])} | {_fmt(m['forgetting'])} | {_fmt(m['fwt'])} | {r['tokens_per_s']:,.0f} |")
        else:
            learning = learning_score(r["R_acc"]) if r.get("R_acc") else None  # (results made before the column)
            lines.append(f"| {r['source']} | {r['arch']} | {r['method']} | {r['optimizer']} | {_fmt(m['acc'])} | "
                         f"{_fmt(m['bwt'])} | {_fmt(m['forgetting'])} | {_fmt(learning)} | {r['tokens_per_s']:,.0f} |")
    inf = [r for r in results["runs"] if r.get("inference_forgetting")]
    if inf:
        lines += ["", "Forgetting at inference (no outer optimizer): loss on held-out "
                  f"{inf[0]['inference_forgetting']['a']} after reading it, then after also reading "
                  f"{inf[0]['inference_forgetting']['b']}, with the CMS learning in context on and off.", "",
                  "| architecture | method | CMS learning | A fresh | after A | after A then B | in-context forgetting |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in inf:
            for mode, v in r["inference_forgetting"]["modes"].items():
                lines.append(f"| {r['arch']} | {r['method']} | {mode} | {_fmt(v['fresh'])} | {_fmt(v['after_a'])} | "
                             f"{_fmt(v['after_b'])} | {_fmt(v['after_b'] - v['after_a'])} |")
    return "\n".join(lines) + "\n"


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def heatmap(run: dict, key: str, tasks: list[str], path: Path) -> bool:
    """R[i, j] of one run (rows: before training, then after each stage; columns: tasks)."""
    plt = _plt()
    if plt is None:
        return False
    rows = ([run["baseline"]] if run.get("baseline") else []) + run["rows"]
    labels = (["before"] if run.get("baseline") else []) + [f"after {i + 1}" for i in range(len(run["rows"]))]
    values = [[math.nan if s.get(key) is None else s[key] for s in row] for row in rows]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 2, 0.55 * len(rows) + 1.6), dpi=120)
    im = ax.imshow(values, cmap="viridis_r" if key == "loss" else "viridis", aspect="auto")
    lo, hi = im.get_clim()
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                t = (v - lo) / max(1e-12, hi - lo)
                light = t < 0.4 if key == "loss" else t > 0.6  # the yellow end of viridis: dark text
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="k" if light else "w", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"{run['name']}: {'loss (nats/token)' if key == 'loss' else 'accuracy'}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def curve(run: dict, key: str, tasks: list[str], path: Path) -> bool:
    """Each task's score against training tokens over the whole schedule; stage boundaries dashed."""
    plt = _plt()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    pts = run["curve"]
    xs = [p["tokens"] for p in pts]
    for j, task in enumerate(tasks):
        ys = [math.nan if p["scores"][j].get(key) is None else p["scores"][j][key] for p in pts]
        ax.plot(xs, ys, "o-", ms=3, lw=1.5, label=task)
    per_stage = run["tokens"] / max(1, len(run["rows"]))
    for i in range(1, len(run["rows"])):
        ax.axvline(i * per_stage, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats/token)" if key == "loss" else "accuracy (labels seen so far)")
    ax.set_title(run["name"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, plt, path)
    return True


def write_report(out: Path, results: dict, key: str, log=print) -> None:
    """results.json, results.md and the PNGs of every finished run under `out`."""
    write_json(out / "results.json", results)
    from hope.checkpoint import atomic_write_text

    atomic_write_text(out / "results.md", markdown(results))
    plotted = True
    for r in results["runs"]:
        if "diverged" in r:
            continue
        tasks = r["tasks"]
        plotted &= heatmap(r, key, tasks, out / f"R_{r['name']}.png")
        plotted &= curve(r, key, tasks, out / f"curve_{r['name']}.png")
    if not plotted:
        log("plots skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
