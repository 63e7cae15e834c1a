"""Run configuration: typed dataclasses, dotted overrides, JSON round trip.

A run is described by a `Config`: the architecture name, that architecture's own config dataclass
(defined at the top of its file in `hope/models/`), a `TrainConfig` and a `DataConfig`. Recipes in
`hope/recipes.py` return complete configs; `apply_overrides` changes fields from `--set` strings such
as `model.d_model=256 train.steps=500`, coercing each value to the field's type and rejecting
unknown keys with the list of valid ones.

The architectures' config classes are registered here by `hope.models` (`register_model_config`), so
this module imports no model: the models import it (for `check_model_shape`), and imports run one way.
Importing any model (or `hope.models`) registers all four.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hope.errors import HopeError

# 2: issue 14 changed Hope's main-memory defaults (HopeConfig.FORMAT1_DEFAULTS); 3: issue 13 made the
# full gradient within a training sequence the default (`train.tbptt` false; FORMAT2_TRAIN_DEFAULTS)
CONFIG_FORMAT = 3
FORMAT2_TRAIN_DEFAULTS = {"tbptt": True}
MODEL_CONFIGS: dict[str, type] = {}  # arch name -> config dataclass, filled by hope.models


def register_model_config(arch: str, config_class: type) -> None:
    """Make `arch` loadable by `Config.from_dict` (called by `hope.models` for each architecture)."""
    MODEL_CONFIGS[arch] = config_class


def model_config_class(arch: str) -> type:
    try:
        return MODEL_CONFIGS[arch]
    except KeyError:
        known = ", ".join(sorted(MODEL_CONFIGS)) or "none registered (import hope.models first)"
        raise HopeError(f"unknown architecture {arch!r}; available: {known}") from None


@dataclass
class TrainConfig:
    """How to train. Token budget per optimizer step = batch_size * grad_accum * seq_len * world size."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step
    seq_len: int = 256  # tokens per training sequence
    optimizer: str = "adamw"  # see hope.optim.OPTIMIZER_NAMES
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear warmup from 0
    weight_decay: float = 0.1  # decoupled, matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 100  # validate every this many steps (and at the end)
    eval_tokens: int = 65536  # validation tokens per evaluation (fixed windows)
    ckpt_every: int = 200  # checkpoint every this many steps (and at the end, and on Ctrl-C)
    log_every: int = 10  # write a training record to metrics.jsonl every this many steps
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16 | float64
    compile: bool = False  # torch.compile the model
    sample_tokens: int = 120  # tokens per sampled line at the end (0: no samples)
    num_samples: int = 3
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    stateful: bool = False  # batch rows are contiguous streams whose in-context state carries across steps
    sampler: str = "random"  # random: windows at random offsets | disjoint: a shuffled order of non-overlapping windows
    tbptt: bool = False  # CMS models: cut the mixers' graph at CMS segment boundaries (False: full gradient)
    parallel: str = "ddp"  # several processes (torchrun): ddp (replicas) | fsdp (FSDP2, sharded; hope/parallel.py)
    trainable: str = "all"  # parameters the outer optimizer trains: all, or some of cms,mixer,norm,embed (TRAINABLE)

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_tokens",
                  "ckpt_every", "log_every")
        _nonnegative(self, "warmup_steps", "weight_decay", "grad_clip", "sample_tokens", "num_samples", "threads")
        if not self.lr > 0:
            raise HopeError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise HopeError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise HopeError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float64"):
            raise HopeError(f"train.dtype must be one of auto, float32, bfloat16, float64; got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise HopeError(f"train.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.sampler not in ("random", "disjoint"):
            raise HopeError(f"train.sampler must be random or disjoint; got {self.sampler!r}")
        if self.sampler == "disjoint" and self.stateful:
            raise HopeError("train.sampler=disjoint draws windows; train.stateful=true reads contiguous streams: "
                            "choose one")
        if self.parallel not in ("ddp", "fsdp"):
            raise HopeError(f"train.parallel must be ddp or fsdp; got {self.parallel!r}")
        parse_groups(self.trainable, "train.trainable")
        from hope.optim import OPTIMIZER_NAMES

        if self.optimizer not in OPTIMIZER_NAMES:
            raise HopeError(f"train.optimizer must be one of {', '.join(OPTIMIZER_NAMES)}; got {self.optimizer!r}")


    @property
    def trainable_groups(self) -> set[str] | None:
        """The groups `trainable` names (None: all parameters)."""
        return parse_groups(self.trainable, "train.trainable")


# `train.trainable` groups, by where a parameter sits (`trainable_group`): the channel mixers (CMS levels
# with their norms and mixing weights; Transformer++'s MLP), the sequence mixers (attention, Titans
# memories), the other norms, and the token embedding with the LM head
TRAINABLE = ("cms", "mixer", "norm", "embed")


def parse_groups(value: str, what: str) -> set[str] | None:
    """`all` -> None, or the `TRAINABLE` groups of a comma-separated list; an unknown or empty name is
    an error naming `what`."""
    if value == "all":
        return None
    groups = {g.strip() for g in value.split(",")}
    if not all(groups) or any(g not in TRAINABLE for g in groups):
        raise HopeError(f"{what} must be all or a comma-separated subset of {','.join(TRAINABLE)}; got {value!r}")
    return groups


def trainable_group(name: str) -> str:
    """The `TRAINABLE` group of a parameter name of `model.named_parameters()`."""
    parts = name.split(".")
    if "cms" in parts or "mlp" in parts:
        return "cms"
    if "mixer" in parts or "attn" in parts:
        return "mixer"
    if parts[0] in ("embed", "lm_head"):
        return "embed"
    return "norm"


@dataclass
class DataConfig:
    """What to train on."""

    corpus: str = "shakespeare"  # "shakespeare" (embedded) or a path to a UTF-8 text file or folder
    tokenizer: str = "bpe"  # bpe (trained on the training split) | bytes | gpt2
    vocab_size: int = 8192  # for tokenizer=bpe
    val_fraction: float = 0.1  # share of works (files) held out; a single file splits by text

    def __post_init__(self) -> None:
        if self.tokenizer not in ("bpe", "bytes", "gpt2"):
            raise HopeError(f"data.tokenizer must be one of bpe, bytes, gpt2; got {self.tokenizer!r}")
        if not 260 <= self.vocab_size <= 65535:
            raise HopeError(f"data.vocab_size must be in [260, 65535], got {self.vocab_size}")
        if not 0 < self.val_fraction < 1:
            raise HopeError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class Config:
    """A complete run: `arch` names an entry of `hope.models.MODELS`; `model` is its config."""

    arch: str
    model: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        max_len = getattr(self.model, "max_seq_len", None)
        if max_len is not None and self.train.seq_len > max_len:
            raise HopeError(
                f"train.seq_len={self.train.seq_len} is larger than model.max_seq_len={max_len}, "
                "the longest sequence the model supports"
            )

    def to_dict(self) -> dict:
        return {"format": CONFIG_FORMAT, "arch": self.arch, "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train), "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A config from its dict. A dict of an older format (none: written before format 2, or by
        hand) takes the defaults of its format for the fields it lacks (`FORMAT1_DEFAULTS` of the model's
        config class, `FORMAT2_TRAIN_DEFAULTS`: the defaults a changed design had before), so old runs
        load and resume as trained."""
        model_cls = model_config_class(d["arch"])
        model, train = d.get("model", {}), d.get("train", {})
        fmt = d.get("format", 1)
        if fmt not in (1, 2, CONFIG_FORMAT):
            raise HopeError(f"config format {fmt!r} is not one this version reads (1 to {CONFIG_FORMAT})")
        if fmt < 2:
            model = {**getattr(model_cls, "FORMAT1_DEFAULTS", {}), **model}
        if fmt < 3:
            train = {**FORMAT2_TRAIN_DEFAULTS, **train}
        return cls(arch=d["arch"], model=_build(model_cls, model, "model"),
                   train=_build(TrainConfig, train, "train"),
                   data=_build(DataConfig, d.get("data", {}), "data"))

    def save(self, path) -> None:
        from hope.checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Config":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise HopeError(f"no config file at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HopeError(f"corrupt config file {path}: {e}") from None
        if not isinstance(d, dict) or "arch" not in d:
            raise HopeError(f"corrupt config file {path}: no 'arch' key")
        return cls.from_dict(d)


def _positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise HopeError(f"{_section(obj)}.{name} must be > 0, got {getattr(obj, name)}")


def check_model_shape(cfg, *positive: str) -> None:
    """What every model config checks: vocabulary, width, depth and heads (and `positive`) above zero,
    and a width the heads divide."""
    _positive(cfg, "vocab_size", "d_model", "n_layers", "n_heads", *positive)
    if cfg.d_model % cfg.n_heads:
        raise HopeError(f"model.d_model={cfg.d_model} must be divisible by model.n_heads={cfg.n_heads}")


def _nonnegative(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise HopeError(f"{_section(obj)}.{name} must be >= 0, got {getattr(obj, name)}")


def _section(obj) -> str:
    return {"TrainConfig": "train", "DataConfig": "data"}.get(type(obj).__name__, "model")


def _build(cls, values: dict, section: str):
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise HopeError(f"unknown key {section}.{unknown[0]}; valid keys: " + ", ".join(f"{section}.{v}" for v in sorted(valid)))
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Coerce `value` (a string from the command line, or a JSON value) to the annotated type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise HopeError(f"{key} expects a comma-separated list, got {value!r}")
        inner = typing.get_args(typ)
        elem = inner[0] if inner else str
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise HopeError(f"{key} expects true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise HopeError(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise HopeError(f"{key} expects an integer, got {value!r}") from None
        if not f.is_integer():
            raise HopeError(f"{key} expects an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise HopeError(f"{key} expects a number, got {value!r}") from None
    if typ is str:
        return str(value)
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a new `Config` with `section.key=value` overrides applied and validated.

    Args:
        cfg: the base config (from a recipe or a run folder).
        overrides: strings like `"model.d_model=256"`, `"train.steps=500"`.
    Returns:
        a new, validated Config. Raises HopeError naming the bad key or value.
    """
    d = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise HopeError(f"override {item!r} must look like section.key=value (e.g. train.steps=500)")
        key, value = item.split("=", 1)
        key = key.strip()
        if key == "arch":
            raise HopeError("the architecture is chosen with --recipe, not overridden")
        section, _, name = key.partition(".")
        if section not in ("model", "train", "data") or not name:
            raise HopeError(f"unknown key {key!r}; keys look like model.<name>, train.<name> or data.<name>")
        if name not in d[section]:
            valid = ", ".join(f"{section}.{k}" for k in sorted(d[section]))
            raise HopeError(f"unknown key {key}; valid keys: {valid}")
        d[section][name] = value
    # the model's own config class, so overrides need no registry lookup
    return Config(arch=cfg.arch, model=_build(type(cfg.model), d["model"], "model"),
                  train=_build(TrainConfig, d["train"], "train"), data=_build(DataConfig, d["data"], "data"))
