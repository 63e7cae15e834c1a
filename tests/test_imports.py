"""Imports inside the package run one way: no module of the CLI, training, data, evaluation or
benchmark parts is part of an import cycle (function-level imports count; `__main__` blocks do not).
Also: `import hope` stays cheap (no torch, no transformers)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import hope

ROOT = Path(hope.__file__).parent
# the other parts (ops, layers, model files) are checked by their own tests
CHECKED = ("hope.cli", "hope.train", "hope.config", "hope.checkpoint", "hope.runs", "hope.schedule", "hope.device", "hope.parallel",
           "hope.hf", "hope.recipes", "hope.generate", "hope.models", "hope.data", "hope.eval", "hope.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            node.body = []  # the script entry point is not an import of the module
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in modules}
    return out


def test_no_import_cycles_through_the_cli_data_and_eval_parts():
    files = {module_name(f): f for f in ROOT.rglob("*.py")}
    graph = {m: imports_of(f, set(files)) - {m} for m, f in files.items()}
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])

    def checked(m):  # hope.models means the registry package itself, not the model files
        return any(m == p or (m.startswith(p + ".") and p != "hope.models") for p in CHECKED)

    bad = [c for c in cycles if any(checked(m) for m in c)]
    assert not bad, "import cycles: " + "; ".join(" -> ".join(c) for c in bad[:5])


def test_import_hope_is_cheap():
    code = "import sys, hope; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _openmp_env_after_import(env: dict) -> dict:
    code = "import os, hope; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return {"GOMP_SPINCOUNT": out[0], "OMP_WAIT_POLICY": out[1]}


def test_import_sets_a_short_openmp_spin_unless_the_user_chose():
    """`import hope` (before torch) sets libgomp's spin to 1,000 on Linux, PASSIVE elsewhere, and
    leaves either variable alone when the user set one (docs/DEVIATIONS.md, "Runtime defaults")."""
    linux = sys.platform == "linux"
    assert _openmp_env_after_import({}) == ({"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "None"} if linux
                                            else {"GOMP_SPINCOUNT": "None", "OMP_WAIT_POLICY": "PASSIVE"})
    assert _openmp_env_after_import({"OMP_WAIT_POLICY": "ACTIVE"}) == {"GOMP_SPINCOUNT": "None",
                                                                       "OMP_WAIT_POLICY": "ACTIVE"}
    assert _openmp_env_after_import({"GOMP_SPINCOUNT": "7"}) == {"GOMP_SPINCOUNT": "7", "OMP_WAIT_POLICY": "None"}
