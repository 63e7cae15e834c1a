"""Shared fixtures: a per-session cache folder so token files are encoded once per test run."""

import os

import pytest

import hope  # noqa: F401  (before torch: sets the OpenMP spin-wait, see hope/__init__.py)
import torch

# the user's data folder, for the slow tests that read prepared data (the tests themselves get a fresh one)
USER_HOPE_CACHE = os.environ.get("HOPE_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hope")


@pytest.fixture(autouse=True, scope="session")
def _hope_cache(tmp_path_factory):
    old = os.environ.get("HOPE_CACHE")
    os.environ["HOPE_CACHE"] = str(tmp_path_factory.mktemp("hope-cache"))
    yield
    if old is None:
        os.environ.pop("HOPE_CACHE", None)
    else:
        os.environ["HOPE_CACHE"] = old


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """One trained debug run folder for the CLI tests (tests that change it work on a copy)."""
    from cli_support import TINY

    from hope.cli import main
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, for its tests."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
