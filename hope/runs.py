"""Loading what the `hope` commands read: a run folder or a transformers folder.

A run folder is what `hope train --out DIR` writes (`config.json` with an `arch` key, `tokenizer.json`,
`checkpoints/`). A transformers folder is what `hope export` (or `save_pretrained` of one of the
`hope.hf` models) writes: `config.json` with a `model_type` of `HF_MODEL_TYPES`, `model.safetensors`
(keys under `model.`), `tokenizer.json`. `load_run` reads either into the same `Loaded` record, so
`hope generate`, `hope info` and `hope eval ...` take both; reading a transformers folder needs no
`transformers` (the weights are plain safetensors).

Imports run one way: the CLI, `hope.eval` and the benchmarks import this module; it imports the
config, checkpoint, data and model modules below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hope.errors import HopeError

# architecture -> transformers `model_type` (hope/hf.py registers these names)
HF_MODEL_TYPES = {"transformer": "hope_transformer", "titans": "hope_titans", "hope_attention": "hope_attention",
                  "hope": "hope"}
HF_ARCHS = {v: k for k, v in HF_MODEL_TYPES.items()}


@dataclass
class Loaded:
    """A model ready to use and what it came from."""

    cfg: object  # hope.config.Config (train and data sections: the run's, or defaults)
    model: object  # a model of the hope protocol, in eval mode, on the requested device
    tokenizer: object  # hope.data.tokenizer interface: encode, decode, eos_id, vocab_size, token_bytes
    path: Path
    kind: str  # "run" | "transformers"
    source: str  # what the weights were read from (a checkpoint folder name, or a safetensors file)


def folder_kind(path) -> str:
    """'run' or 'transformers' for a folder `load_run` can read; a one-line HopeError otherwise."""
    path = Path(path)
    if not path.exists():
        raise HopeError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise HopeError(f"{path} is a file, not a run folder (pass the folder `hope train --out` or `hope export` wrote)")
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise HopeError(f"{path} holds no run: config.json is missing")
    d = _read_json(cfg_path)
    if "arch" in d:
        return "run"
    if d.get("model_type") in HF_ARCHS:
        return "transformers"
    if "model_type" in d:
        raise HopeError(f"{cfg_path} describes a {d['model_type']!r} model, not one of hope's "
                        f"({', '.join(HF_ARCHS)})")
    raise HopeError(f"corrupt config file {cfg_path}: neither 'arch' nor 'model_type'")


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HopeError(f"corrupt config file {path}: {e}") from None
    if not isinstance(d, dict):
        raise HopeError(f"corrupt config file {path}: not a JSON object")
    return d


def hf_to_config(d: dict):
    """The `Config` of a transformers folder's config.json: model fields from its keys, train and data
    sections from its `hope_run` entry (written by `hope export`; defaults without it)."""
    import dataclasses

    import hope.models  # noqa: F401  (registers the architectures' config classes)
    from hope.config import Config, model_config_class

    arch = HF_ARCHS[d["model_type"]]
    fields = {f.name for f in dataclasses.fields(model_config_class(arch))}
    run = d.get("hope_run") or {}
    return Config.from_dict({"arch": arch, "model": {k: v for k, v in d.items() if k in fields},
                             "train": run.get("train", {}), "data": run.get("data", {})})


def _hf_tokenizer(path: Path, kind: str | None):
    from hope.data.tokenizer import BPETokenizer, ByteTokenizer, EOS, load_tokenizer

    if kind == "bytes":
        return ByteTokenizer()
    tok = load_tokenizer(path / "tokenizer.json")
    if not isinstance(tok, BPETokenizer):
        raise HopeError(f"{path / 'tokenizer.json'} is not a tokenizers file with an {EOS} token")
    return BPETokenizer(tok.tok, kind or tok.kind)


def _hf_weights(path: Path, model) -> str:
    """Load `model.safetensors` (or the shards of `model.safetensors.index.json`) of a transformers
    folder into our model: keys lose their `model.` prefix; a tied LM head may be absent."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise HopeError(f"{path} has no weights: {name} is missing")
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise HopeError(f"corrupt weights file {f}: {e}") from None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise HopeError(f"weights in {path} do not match the model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")
    return ", ".join(files)


def load_run(path, device: str = "cpu", max_seq_len: int | None = None) -> Loaded:
    """Config, model (latest weights, eval mode) and tokenizer of a run folder or a transformers folder.

    Args:
        path: the folder.
        device: auto | cpu | cuda | cuda:N | mps (checked by `hope.device.resolve_device`).
        max_seq_len: lift (or lower) the maximum length of a model that has one (its RoPE tables are
            not weights); positions past the training length are extrapolation.
    """
    from hope.checkpoint import latest_checkpoint, load_checkpoint
    from hope.config import Config
    from hope.data.tokenizer import load_tokenizer
    from hope.device import resolve_device
    from hope.models import build_model

    path = Path(path)
    kind = folder_kind(path)
    dev = resolve_device(device)
    if kind == "run":
        cfg = _with_max_seq_len(Config.load(path / "config.json"), max_seq_len)
        tokenizer = load_tokenizer(path / "tokenizer.json")
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise HopeError(f"run folder {path} has no checkpoint yet")
        model = build_model(cfg.arch, cfg.model)
        load_checkpoint(ckpt, model)
        source = ckpt.name
    else:
        d = _read_json(path / "config.json")
        cfg = _with_max_seq_len(hf_to_config(d), max_seq_len)
        tokenizer = _hf_tokenizer(path, d.get("tokenizer_kind"))
        model = build_model(cfg.arch, cfg.model)
        source = _hf_weights(path, model)
    return Loaded(cfg, model.to(dev).eval(), tokenizer, path, kind, source)


def _with_max_seq_len(cfg, max_seq_len: int | None):
    if max_seq_len is None:
        return cfg
    from dataclasses import replace

    if not hasattr(cfg.model, "max_seq_len"):
        raise HopeError(f"--max-seq-len: a {cfg.arch} model has no maximum length (it reads any length)")
    return replace(cfg, model=replace(cfg.model, max_seq_len=max_seq_len))
