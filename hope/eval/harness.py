"""Zero-shot reasoning through the EleutherAI harness (lm-eval 0.4.13), fully offline.

The task YAMLs of `hope/data/tasks/` read the files that `hope data get` prepares; `task_dir`
writes copies with the data folder filled in, and `run_tasks` hands them with a `Scorer`-backed
`lm_eval.api.model.LM` to `lm_eval.simple_evaluate`. `paper_table` formats the results as SPEC
section 7 (the paper's Table 2) reports them: LAMBADA perplexity and accuracy, then accuracy (acc)
for PIQA, WinoGrande, ARC-e, SIQA and BoolQ and length-normalized accuracy (acc_norm) for HellaSwag
and ARC-c, in percent, with the mean of the eight accuracies.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hope.errors import HopeError

# (task, metric the paper reports, column header)
PAPER_COLUMNS = [
    ("lambada", "perplexity", "LMB ppl"),
    ("lambada", "acc", "LMB acc"),
    ("piqa", "acc", "PIQA"),
    ("hellaswag", "acc_norm", "Hella (acc_n)"),
    ("winogrande", "acc", "Wino"),
    ("arc_easy", "acc", "ARC-e"),
    ("arc_challenge", "acc_norm", "ARC-c (acc_n)"),
    ("siqa", "acc", "SIQA"),
    ("boolq", "acc", "BoolQ"),
]
TASKS = ["lambada", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "siqa", "boolq"]


def parse_tasks(spec: str) -> list[str]:
    from hope.data.registry import resolve_name

    out = []
    for name in (t.strip() for t in spec.split(",") if t.strip()):
        if name in ("all", "reasoning", "paper"):
            out += [t for t in TASKS if t not in out]
            continue
        n = resolve_name(name)
        if n not in TASKS:
            raise HopeError(f"unknown task {name!r}; available: {', '.join(TASKS)} (or all)")
        if n not in out:
            out.append(n)
    if not out:
        raise HopeError("--tasks names no task")
    return out


def task_dir(tasks: list[str], data_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """A folder of the YAMLs of `tasks` with HOPE_DATA_DIR replaced by `data_dir` (default: the data
    cache, where every task's data must be prepared)."""
    from hope.data.registry import data_root, read_manifest

    data_dir = Path(data_dir) if data_dir is not None else data_root()
    if data_dir == data_root():
        missing = [t for t in tasks if read_manifest(t) is None]
        if missing:
            raise HopeError(f"benchmark data not prepared: {', '.join(missing)}; run: hope data get "
                            f"{' '.join(missing) if len(missing) < len(TASKS) else 'reasoning'}")
    out_dir = Path(out_dir) if out_dir is not None else data_root() / "tasks"
    out_dir.mkdir(parents=True, exist_ok=True)
    src = resources.files("hope.data").joinpath("tasks")
    for t in tasks:
        text = src.joinpath(f"{t}.yaml").read_text(encoding="utf-8")
        dest = out_dir / f"{t}.yaml"
        new = text.replace("HOPE_DATA_DIR", str(data_dir.resolve()))
        if not dest.exists() or dest.read_text(encoding="utf-8") != new:
            dest.write_text(new, encoding="utf-8")
    return out_dir


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_tasks(scorer, tasks: list[str], limit: int | None = None, data_dir: Path | None = None,
              progress: bool = True, seed: int = 1234) -> dict:
    """Evaluate `tasks` with the harness. Returns lm-eval's `results` dict (task -> metric -> value)."""
    _offline()
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HopeError("hope eval harness needs the EleutherAI harness: pip install 'hope-nl[eval]'") from None
    from hope.eval.adapter import make_lm

    folder = task_dir(tasks, data_dir)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    out = lm_eval.simple_evaluate(model=make_lm(scorer, progress=progress), tasks=tasks, num_fewshot=0,
                                  limit=limit, task_manager=manager, bootstrap_iters=0, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                  log_samples=False)
    results = {}
    for task, metrics in out["results"].items():
        clean = {k.split(",")[0]: v for k, v in metrics.items() if "," in k and "stderr" not in k}
        n = out.get("n-samples", {}).get(task, {})
        clean["n"] = n.get("effective", n.get("original"))
        results[task] = clean
    return results


def paper_table(results: dict, name: str = "model") -> str:
    """One Markdown table row (with header) in SPEC section 7's format: accuracies in percent."""
    head, row, accs = ["Model"], [name], []
    for task, metric, title in PAPER_COLUMNS:
        if task not in results:
            continue
        v = results[task].get(metric)
        head.append(title)
        if v is None:
            row.append("-")
        elif metric == "perplexity":
            row.append(f"{v:.2f}")
        else:
            row.append(f"{100 * v:.1f}")
            accs.append(v)
    if len(accs) > 1:
        head.append(f"Avg ({len(accs)})")
        row.append(f"{100 * sum(accs) / len(accs):.2f}")
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), "| " + " | ".join(row) + " |"])


def detail_table(results: dict) -> str:
    """Every task with acc and acc_norm (and perplexity where there is one) and the examples used."""
    lines = ["| task | n | acc | acc_norm | perplexity |", "| --- | --- | --- | --- | --- |"]
    for task in [t for t in TASKS if t in results] + [t for t in results if t not in TASKS]:
        r = results[task]
        f = lambda k, d=4: "-" if r.get(k) is None else f"{r[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {task} | {r.get('n', '-')} | {f('acc')} | {f('acc_norm')} | {f('perplexity', 2)} |")
    return "\n".join(lines)
