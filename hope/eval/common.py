"""What the `hope eval ...` subcommands share: loading the model to evaluate (a run folder, a
transformers folder or a GGUF file), CPU threads, JSON output, and the documents of `--data`.

Below `hope.eval.cli` and `hope.eval.niah`, which both import it (imports run one way).
"""

from __future__ import annotations

import json
from pathlib import Path

from hope.errors import HopeError


def set_threads(args) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def load_for_eval(args):
    """(name, model, tokenizer, cfg or None) from `--run` (a run or transformers folder) or `--gguf`."""
    if getattr(args, "gguf", None):
        from hope.data.registry import model_file
        from hope.device import resolve_device
        from hope.eval.hf import load_gguf

        resolve_device(args.device)
        path = Path(args.gguf)
        if args.gguf == "smollm2":
            path = model_file("smollm2")
        model, tok = load_gguf(path)
        return path.stem, model, tok, None
    if not args.run:
        raise HopeError("pass --run RUN_DIR (or --gguf for a pretrained GGUF model)")
    from hope.runs import load_run

    r = load_run(args.run, args.device, getattr(args, "max_seq_len", None))
    if getattr(args, "state", None):
        from hope.learn import describe, use_state

        print(f"learned state {args.state}: {describe(use_state(r, args.state), r.model)}")
    return Path(args.run).name, r.model, r.tokenizer, r.cfg


def write_json(path, obj) -> None:
    from hope.checkpoint import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(obj, indent=2) + "\n")
    print(f"wrote {path}")


def eval_documents(data: str, split: str, cfg=None) -> tuple[str, str, list[str]]:
    """(label, split used, documents) of `--data`: a registered corpus (`hope data list`), or a UTF-8
    text file or folder, as `hope train --data` reads it.

    A file or folder has a train and a validation part (split by `data.val_fraction` of `cfg`, the
    training run's, so a run evaluated on its own text sees the validation part it never trained on);
    `test` reads its validation part.
    """
    from hope.data.corpus import corpus_documents, load_path
    from hope.data.registry import get_entry, resolve_name

    if resolve_name(data) is not None:
        entry = get_entry(data)
        if entry.kind != "corpus":
            raise HopeError(f"{entry.name!r} is a benchmark, not a text corpus (use hope eval harness)")
        return entry.name, split, corpus_documents(entry.name, split)
    if not Path(data).expanduser().exists():
        raise HopeError(f"--data {data!r} is neither a registered corpus (hope data list) nor an existing file or folder")
    corpus = load_path(data, cfg.data.val_fraction if cfg is not None else 0.1)
    used = "train" if split == "train" else "validation"
    return str(data), used, corpus.train if used == "train" else corpus.val
