"""Checkpoints that a crash cannot corrupt.

A checkpoint is a folder `RUN/checkpoints/step-NNNNNNN/` holding `model.safetensors` (weights),
`trainer.pt` (optimizer and RNG state) and `state.json` (step and counters), plus `manifest.json`
with each file's size and SHA-256. It is written under a temporary name, flushed to disk, renamed
into place, and only then named in `RUN/checkpoints/latest` (itself replaced atomically). Loading
verifies the manifest, so a truncated or damaged file is reported by name instead of half-loaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from hope.errors import HopeError
from hope.paths import sha256_file

KEEP = 2  # checkpoints kept per run (the newest ones)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def match_umask(path) -> None:
    """Give a file the mode `open()` would have (0644 under the usual umask). safetensors writes its
    files with mode 0600, which left the weights unreadable to the group the rest of a run folder is
    shared with."""
    os.chmod(path, 0o666 & ~_umask())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, extra: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write a checkpoint for `step` and point `latest` at it. Returns its folder.

    Without `optimizer` (and `optimizer_state`) it holds the weights only; resuming it starts a fresh
    optimizer (`hope stack` writes such a step 0).

    `extra` maps further file names to objects saved with `torch.save` (the in-context state of
    stateful training streams). `optimizer_state` replaces `optimizer.state_dict()`: the gathered
    state of a sharded optimizer, keyed by parameter names (`hope.parallel.full_state`)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    match_umask(tmp / "model.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if optimizer_state is not None:
        blob = {"optimizer": optimizer_state, "optimizer_keys": "names"}
    elif optimizer is None:
        # weights only (`hope stack`): a resumed run starts its optimizer afresh
        blob = {"optimizer": None, "optimizer_keys": "none"}
    else:
        blob = {"optimizer": optimizer.state_dict(), "optimizer_keys": "ids"}
    torch.save({**blob, "rng": rng}, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for fname, obj in (extra or {}).items():
        torch.save(obj, tmp / fname)
    files = ("model.safetensors", "trainer.pt", "state.json", *(extra or {}))
    manifest = {}
    for f in files:
        _fsync(tmp / f)
        manifest[f] = {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
    atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `checkpoints/latest` names; without that pointer, the newest `step-*` folder.

    The pointer is written last, so a crash (or a user's cleanup) can leave complete `step-*` folders
    without it; loading verifies the folder's manifest either way."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists():
        steps = sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []
        return steps[-1] if steps else None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise HopeError(f"{pointer} names {path.name}, which does not exist")
    return path


def verify_checkpoint(path: Path) -> dict:
    """Check every file against the manifest; return state.json's content."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise HopeError(f"checkpoint {path} is incomplete: {manifest_path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HopeError(f"corrupt checkpoint file {manifest_path}") from None
    for name, want in manifest.items():
        f = path / name
        if not f.exists():
            raise HopeError(f"checkpoint file {f} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise HopeError(f"corrupt checkpoint file {f}: {size} bytes, expected {want['bytes']} (truncated?)")
        if sha256_file(f) != want["sha256"]:
            raise HopeError(f"corrupt checkpoint file {f}: checksum mismatch")
    return json.loads((path / "state.json").read_text())


def load_weights(path: Path, model: torch.nn.Module) -> None:
    f = path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(f), strict=False)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise HopeError(f"corrupt checkpoint file {f}: {e}") from None
    if missing or unexpected:
        raise HopeError(f"checkpoint file {f} does not match the model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load weights (and optimizer + RNG state when `optimizer` is given). Returns state.json."""
    state = verify_checkpoint(path)
    load_weights(path, model)
    if optimizer is not None:
        load_trainer_state(path, optimizer, model)
    return state


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                       sharded: bool = False) -> None:
    """Optimizer and RNG state of a verified checkpoint into `optimizer` (of `model`'s parameters).
    When `sharded` (FSDP), the saved state must be keyed by parameter names (a checkpoint written under
    FSDP); otherwise either kind loads."""
    f = path / "trainer.pt"
    try:
        blob = torch.load(f, map_location="cpu", weights_only=True)
        by_names = blob.get("optimizer_keys") == "names"
        if blob.get("optimizer") is None:
            pass  # a checkpoint of weights only: the optimizer starts afresh
        elif sharded or by_names:
            if not by_names:
                raise HopeError(f"{f} was written without train.parallel=fsdp; resume it with train.parallel=ddp")
            from hope.parallel import load_optimizer

            load_optimizer(model, optimizer, blob["optimizer"])
        else:
            saved = [len(g["params"]) for g in blob["optimizer"]["param_groups"]]
            if saved != [len(g["params"]) for g in optimizer.param_groups]:
                raise HopeError(f"{f} holds the optimizer state of other parameters (did train.trainable change?); "
                                "resume with the run's own train.trainable")
            optimizer.load_state_dict(blob["optimizer"])
    except HopeError:
        raise
    except Exception as e:
        raise HopeError(f"corrupt checkpoint file {f}: {e}") from None
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])


def load_streams(path: Path, n: int, device) -> list:
    """The carried in-context states of stateful training (`streams.pt`), moved to `device`."""
    from hope.layers.state import state_to

    f = path / "streams.pt"
    if not f.exists():
        return [None] * n
    try:
        # our own checksummed file (verified by load_checkpoint); its states hold NamedTuples
        streams = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:
        raise HopeError(f"corrupt checkpoint file {f}: {e}") from None
    return [state_to(s, device) for s in streams]
