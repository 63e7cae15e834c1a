"""A model that keeps learning for its user: read documents with the Continuum Memory System learning
(SPEC 4.3 at inference, no outer optimizer), keep what it learned in a state file, continue later.

What persists is the CMS: every level's fast weights, the gradient it has accumulated towards its
next update, and the token counters that say when each level steps. The sequence mixers' states
(the attention's KV cache, the Titans memories) are context, not learning: each document starts
them fresh, as every training sequence does, and a model with a longest context (`max_seq_len`)
starts them afresh whenever a document outgrows it. So reading documents one call at a time, with
the state saved and loaded in between, computes exactly what reading them in one call computes.

    learned = learn(model, tokenizer, [("notes.txt", text)])        # or continue: learned=load_state(...)
    save_state("notes.state", learned, fingerprint(run))
    model.learned_state = learned                                     # generate / evaluate with it

`hope learn --run RUN --data PATH --state-out STATE` is the command; `hope generate --state STATE`
and `hope eval ppl --state STATE` use the file. A state file is safetensors: the tensors, and in its
metadata the counters, the digests of the documents read (a document read before is skipped), the
fingerprint of the model it belongs to, and a SHA-256 of its tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from hope.errors import HopeError

FORMAT = "hope-learned-state/1"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_learns(model) -> None:
    if getattr(model, "cms_segment", None) is None or not hasattr(model, "learned_part"):
        raise HopeError("this model has no Continuum Memory System that learns in context (every CMS level is "
                        "static, or the architecture has none): there is nothing for it to learn while reading")


def learn(model, tokenizer, documents: list[tuple[str, str]], learned: dict | None = None, window: int = 512,
          progress: bool = True, on_document=None) -> tuple[dict, dict]:
    """Read `documents` ((name, text) pairs) in order, the CMS learning, and return the learned state
    and what it cost: {"documents", "skipped", "tokens", "loss"} (loss: mean next-token loss while
    reading, nats / token, each token scored before the model learned from it).

    Args:
        learned: a learned state to continue from (`load_state`, or an earlier call's); None: the
            model's own meta-learned weights.
        window: tokens read per call of `model.read` (the logits of one window are held at once).
        on_document: called as `on_document(learned)` after each document (to save progress).
    """
    from tqdm.auto import tqdm

    check_learns(model)
    if window <= 0:
        raise HopeError(f"--window must be >= 1, got {window}")
    device = next(model.parameters()).device
    learned = learned if learned is not None else model.learned_part(model.fresh_state(1))
    seen = set(learned.get("documents", []))
    longest = getattr(model, "max_seq_len", None)
    todo = [(n, t) for n, t in documents if _digest(t) not in seen]
    stats = {"documents": 0, "skipped": len(documents) - len(todo), "tokens": 0, "loss": None}
    nats = 0.0
    bar = tqdm(total=len(todo), disable=not progress, desc="learn", unit="doc", dynamic_ncols=True)
    for name, text in todo:
        ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(text)], dtype=torch.long, device=device)
        state, context = model.state_from(learned, 1), 0
        for a in range(0, ids.shape[1], window):
            piece = ids[:, a:a + window]
            if longest is not None and context + piece.shape[1] > longest:
                state, context = model.state_from(model.learned_part(state), 1), 0
            logits, state = model.read(piece, state, learn=True)
            context += piece.shape[1]
            if piece.shape[1] > 1:
                nats += F.cross_entropy(logits[0, :-1], piece[0, 1:], reduction="sum").item()
                stats["tokens"] += piece.shape[1] - 1
        learned = {**model.learned_part(state), "documents": [*learned.get("documents", []), _digest(text)]}
        stats["documents"] += 1
        bar.set_postfix_str(f"{name[-30:]} loss {nats / max(1, stats['tokens']):.3f}")
        bar.update()
        if on_document is not None:
            on_document(learned)
    bar.close()
    stats["loss"] = nats / stats["tokens"] if stats["tokens"] else None
    return learned, stats


def fingerprint(loaded) -> dict:
    """What a state file must match: the architecture, the model config and the weights it was learned on
    (`hope.runs.Loaded`; the weights by the checkpoint manifest's SHA-256 where there is one)."""
    from dataclasses import asdict

    weights = None
    manifest = Path(loaded.path) / "checkpoints" / loaded.source / "manifest.json"
    if loaded.kind == "run" and manifest.exists():
        weights = json.loads(manifest.read_text())["model.safetensors"]["sha256"]
    return {"arch": loaded.cfg.arch, "model": json.loads(json.dumps(asdict(loaded.cfg.model))), "weights": weights}


def _flatten(learned: dict) -> tuple[dict, list]:
    tensors, layout = {}, []
    for i, cms in enumerate(learned["cms"]):
        levels = []
        for part in ("delta", "acc"):
            for j, d in enumerate(cms[part]):
                if d is None:
                    levels.append(None)
                    continue
                for k, t in d.items():
                    tensors[f"cms.{i}.{part}.{j}.{k}"] = t.detach().to("cpu", torch.float32).contiguous()
                levels.append(sorted(d))
        layout.append({"levels": levels, "pos": cms["pos"], "last": cms["last"]})
    return tensors, layout


def _tensor_sha(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode() + b"\0" + tensors[k].numpy().tobytes())
    return h.hexdigest()


def save_state(path, learned: dict, model_fingerprint: dict) -> None:
    """Write `learned` atomically (a temporary file, fsync, rename): an interrupted write leaves the old file."""
    from safetensors.torch import save_file

    from hope.checkpoint import match_umask

    path = Path(path)
    tensors, layout = _flatten(learned)
    meta = {"format": FORMAT, "fingerprint": json.dumps(model_fingerprint, sort_keys=True),
            "layout": json.dumps(layout), "pos": str(learned["pos"]),
            "documents": json.dumps(learned.get("documents", [])), "sha256": _tensor_sha(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        match_umask(tmp)  # the user's umask, as every file a run writes
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path, model_fingerprint: dict | None = None, device="cpu") -> dict:
    """Read a state file; with `model_fingerprint`, refuse one that belongs to another model (one line)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise HopeError(f"no state file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on malformed or truncated files
        raise HopeError(f"corrupt state file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get("format") != FORMAT:
        raise HopeError(f"{path} is not a hope learned-state file (format {meta.get('format')!r})")
    if _tensor_sha(tensors) != meta.get("sha256"):
        raise HopeError(f"corrupt state file {path}: checksum mismatch")
    saved = json.loads(meta["fingerprint"])
    if model_fingerprint is not None:
        want = json.loads(json.dumps(model_fingerprint, sort_keys=True))
        if saved["arch"] != want["arch"] or saved["model"] != want["model"]:
            diff = sorted(k for k in set(saved["model"]) | set(want["model"])
                          if saved["model"].get(k) != want["model"].get(k))
            raise HopeError(f"{path} was learned by another model ({saved['arch']}"
                            + (f", differing in model.{', model.'.join(diff[:3])}" if diff else "")
                            + f") and does not fit this {want['arch']} run")
        if saved["weights"] != want["weights"]:
            raise HopeError(f"{path} was learned on other weights than the run's latest checkpoint (trained since?); "
                            "learn again from the run's weights")
    cms = []
    for i, entry in enumerate(json.loads(meta["layout"])):
        n = len(entry["levels"]) // 2
        parts = {}
        for p_i, part in enumerate(("delta", "acc")):
            parts[part] = [None if keys is None else {k: tensors[f"cms.{i}.{part}.{j}.{k}"].to(device) for k in keys}
                           for j, keys in enumerate(entry["levels"][p_i * n:(p_i + 1) * n])]
        cms.append({**parts, "pos": entry["pos"], "last": entry["last"]})
    return {"cms": cms, "pos": int(meta["pos"]), "documents": json.loads(meta["documents"])}


@torch.no_grad()
def level_movement(model, learned: dict) -> dict:
    """How far each CMS level moved: per period, the mean over layers of ||Delta|| / ||theta|| (the fast
    weights against the meta-learned weights of that level, both projections together; for several
    streams, the root mean square over them)."""
    out: dict = {}
    for block, cms in zip(model.blocks, learned["cms"]):
        for period, level, d in zip(block.cms.periods, block.cms.levels, cms["delta"]):
            if d is None:
                continue
            theta = level.gate_up.weight.pow(2).sum() + level.down.weight.pow(2).sum()
            delta = (d["w1"].pow(2).sum() + d["w2"].pow(2).sum()) / d["w1"].shape[0]
            out.setdefault(period, []).append(float((delta / theta).sqrt()))
    return {p: sum(v) / len(v) for p, v in out.items()}


def describe(learned: dict, model=None) -> str:
    text = f"{len(learned.get('documents', []))} documents, {learned['pos']:,} tokens read"
    if model is not None:
        moved = level_movement(model, learned)
        text += "; ||fast weights|| / ||weights|| by period: " + ", ".join(f"{p}: {v:.2e}" for p, v in moved.items())
    return text


def use_state(loaded, path) -> dict:
    """Load the state file `path` for the run `loaded` (`hope.runs.Loaded`) and make every fresh stream
    of its model start from it (`model.learned_state`). Returns the state."""
    check_learns(loaded.model)
    device = next(loaded.model.parameters()).device
    learned = load_state(path, fingerprint(loaded), device)
    loaded.model.learned_state = learned
    return learned
