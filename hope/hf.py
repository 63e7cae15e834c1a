"""Hugging Face `transformers` models for the four architectures (extra `hf`: transformers >= 5).

For each architecture of `hope.models.MODELS` a `PretrainedConfig` and a `PreTrainedModel` +
`GenerationMixin` class, registered with `AutoConfig` and `AutoModelForCausalLM` under the model types
of `hope.runs.HF_MODEL_TYPES` (`hope_transformer`, `hope_titans`, `hope_attention`, `hope`):

    import hope                       # registers them as soon as transformers is imported
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("runs/tiny-hf")     # written by `hope export`
    tok = AutoTokenizer.from_pretrained("runs/tiny-hf")
    ids = tok("ROMEO:", return_tensors="pt").input_ids             # [<|endoftext|>, ...] as in training
    out = model.generate(ids, max_new_tokens=50, do_sample=False)

The model wraps one of our models (`.model`, state-dict keys `model.*`); its config holds that
model's config fields. The cache is our in-context state (KV cache, memories, CMS fast weights),
carried opaquely in a `HopeCache` through `cache` (`past_key_values` in transformers 4): `generate`
feeds only the tokens the state has not read. With `learn_prompt` (the default, as `hope generate`),
CMS models learn from the prompt while reading it (`model.read`, SPEC 4.3); a plain forward never
changes the CMS fast weights, so scoring (lm-eval's `hf` backend) equals `hope.eval.adapter.Scorer`.
Our models read every token: a left-padded batch (an `attention_mask` with zeros) is refused.

`export_run(run, out)` writes a run folder as such a folder (safetensors weights, config, and the
tokenizer as a `PreTrainedTokenizerFast` whose post-processor puts `<|endoftext|>` in front, like
every document in training). `register()` is idempotent; `hope/__init__.py` calls it when
transformers is imported (see `_register_when_transformers_loads` there).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import typing
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from hope.errors import HopeError

    raise HopeError("the transformers integration needs transformers >= 5: pip install 'hope-nl[hf]'") from e

from hope.config import _build, model_config_class
from hope.errors import HopeError
from hope.models import MODELS, build_model
from hope.runs import HF_MODEL_TYPES

# transformers 5 names the cache `cache`; transformers 4 `past_key_values`
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class HopeCache:
    """Our in-context state as the `cache` of transformers: opaque, never cropped or reordered.

    Args:
        state: what `model(tokens, state)` returned (KVCache, or the dict of memories and CMS weights).
        seq_length: tokens the state has read.
    """

    is_compileable = False
    is_croppable = False
    is_linear = (True,)  # stateful: generate must not slice inputs by a KV length

    def __init__(self, state, seq_length: int):
        self.state = state
        self.seq_length = seq_length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_length

    def __repr__(self) -> str:
        return f"HopeCache(seq_length={self.seq_length})"


class _HopeHFConfig(PretrainedConfig):
    """Base of the four configs. Each subclass (`_make_classes`) declares the fields of its
    architecture's config dataclass (validated by it in `__post_init__`), and these:

    Args:
        learn_prompt: CMS models learn from the prompt in `generate` (as `hope generate`; False freezes).
        tokenizer_kind: bytes | bpe | gpt2, the tokenizer the model was trained with (`hope export`).
        hope_run: the run's train and data sections, its path and checkpoint (`hope export`).
    """

    arch = ""
    learn_prompt: bool = True
    tokenizer_kind: str | None = None
    hope_run: dict | None = None
    tie_word_embeddings: bool = True
    max_position_embeddings: int | None = None  # what lm-eval's HFLM reads as the model's length

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        cfg = self.hope_config()  # raises HopeError naming a bad field
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            setattr(self, f.name, list(value) if isinstance(value, tuple) else value)
        self.tie_word_embeddings = cfg.tie_embeddings
        self.max_position_embeddings = getattr(cfg, "max_seq_len", None)

    def hope_config(self):
        """Our config dataclass (`hope.models.<Arch>Config`) of these fields."""
        cls = model_config_class(self.arch)
        return _build(cls, {f.name: getattr(self, f.name) for f in dataclasses.fields(cls)}, "model")


class _HopeForCausalLM(PreTrainedModel, GenerationMixin):
    """Base of the four models: `self.model` is ours; forward returns logits and a `HopeCache`."""

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # no assisted generation (the state cannot go back)
    _supports_sdpa = True

    def __init__(self, config: _HopeHFConfig):
        super().__init__(config)
        self.model = build_model(config.arch, config.hope_config())
        # the tied LM head is one tensor with the embedding: saved once, re-tied on load
        self._tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"} if config.tie_embeddings else {}
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is our state, made by the first forward

    def _init_weights(self, module) -> None:
        # Our modules initialize themselves; what transformers leaves uninitialized after loading are the
        # RoPE tables (non-persistent buffers, never saved), rebuilt here.
        if isinstance(getattr(module, "rope_cos", None), torch.Tensor):
            from hope.layers.attention import rope_tables

            n, half = module.rope_cos.shape
            cos, sin = rope_tables(n, 2 * half, self.config.rope_theta)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    @property
    def max_seq_len(self):
        return self.model.max_seq_len

    def forward(self, input_ids: torch.LongTensor | None = None, cache: HopeCache | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, return_dict: bool | None = None, learn: bool = False,
                past_key_values: HopeCache | None = None, inputs_embeds=None, **kwargs):
        """
        Args:
            input_ids: [B, T] the tokens after those the cache has read.
            cache: a `HopeCache` from an earlier call (None: new sequences); `past_key_values` alike.
            attention_mask: [B, T_total] of ones, or None (padding inside a sequence is refused).
            labels: [B, T] targets as transformers has them (shifted inside; -100 is not scored).
            learn: CMS models read with `model.read(..., learn=True)` (in-context learning).
        Returns:
            CausalLMOutputWithPast with logits [B, T, V] (float32), the mean loss when `labels`
            are given, and the cache after these tokens.
        """
        if inputs_embeds is not None:
            raise ValueError("hope models take input_ids, not inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("hope models read every token: pad on the right, or pass one prompt at a time "
                             "(the attention mask has zeros)")
        past = cache if cache is not None else past_key_values
        if past is not None and not isinstance(past, HopeCache):
            if past.get_seq_length() != 0:
                raise ValueError(f"hope models carry their own state; got a non-empty {type(past).__name__}")
            past = None
        state, start = (past.state, past.seq_length) if past is not None else (None, 0)
        if learn and hasattr(self.model, "read"):
            logits, state = self.model.read(input_ids, state, learn=True)
        else:
            logits, state = self.model(input_ids, state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        new_cache = HopeCache(state, start + input_ids.shape[1]) if use_cache is not False else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEY: new_cache})

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      learn: bool | None = None, use_cache: bool = True, **kwargs):
        """Feed only what the state has not read; learn from the prompt (CMS models) on the first call."""
        past = cache if cache is not None else past_key_values
        seen = past.seq_length if isinstance(past, HopeCache) else 0
        inputs = {"input_ids": input_ids[:, seen:].contiguous(), CACHE_KEY: past if seen else None,
                  "use_cache": use_cache}
        if not seen:
            inputs["learn"] = self.config.learn_prompt if learn is None else learn
        return inputs


def _make_classes(arch: str):
    """The config and model classes of `arch`: the config declares the fields of our config dataclass."""
    title = {"transformer": "HopeTransformer", "titans": "HopeTitans", "hope_attention": "HopeAttention",
             "hope": "Hope"}[arch]
    ns = {"model_type": HF_MODEL_TYPES[arch], "arch": arch, "__module__": __name__, "__annotations__": {}}
    for f in dataclasses.fields(model_config_class(arch)):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        ns["__annotations__"][f.name] = typing.Any  # checked by our dataclass, not by transformers
        ns[f.name] = dataclasses.field(default_factory=lambda d=default: list(d)) if isinstance(default, tuple) \
            else default
    config_cls = type(f"{title}HFConfig", (_HopeHFConfig,), ns)
    model_cls = type(f"{title}ForCausalLM", (_HopeForCausalLM,), {"config_class": config_cls, "__module__": __name__})
    return config_cls, model_cls


HF_CLASSES = {arch: _make_classes(arch) for arch in MODELS}  # arch -> (config class, model class)
globals().update({c.__name__: c for pair in HF_CLASSES.values() for c in pair})
_registered = False


def register() -> None:
    """Register the four architectures with AutoConfig and AutoModelForCausalLM (idempotent)."""
    global _registered
    if _registered:
        return
    for config_cls, model_cls in HF_CLASSES.values():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True


register()


def hf_config(cfg, tokenizer, hope_run: dict | None = None) -> _HopeHFConfig:
    """The transformers config of our `Config` `cfg` with `tokenizer`'s token ids."""
    config_cls, _ = HF_CLASSES[cfg.arch]
    eos = tokenizer.eos_id
    return config_cls(**dataclasses.asdict(cfg.model), tokenizer_kind=tokenizer.kind, hope_run=hope_run,
                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


def from_hope(model, cfg, tokenizer, hope_run: dict | None = None) -> _HopeForCausalLM:
    """A transformers model holding a copy of our `model`'s weights."""
    _, model_cls = HF_CLASSES[cfg.arch]
    hf = model_cls(hf_config(cfg, tokenizer, hope_run))
    hf.model.load_state_dict(model.state_dict())
    return hf.eval()


def hf_tokenizer(tokenizer):
    """Our tokenizer as a `PreTrainedTokenizerFast`: `tok(text)` gives `[<eos>] + encode(text)` (the
    document separator every training document follows), `add_special_tokens=False` the bare ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hope.data.tokenizer import _byte_level_alphabet

    if tokenizer.kind == "bytes":
        # byte i is token i: a BPE without merges over the byte-level alphabet; NUL (0) ends a document
        tok = Tokenizer(models.BPE(vocab=dict(_byte_level_alphabet()), merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        eos = next(c for c, b in _byte_level_alphabet().items() if b == tokenizer.eos_id)
    else:
        tok = Tokenizer.from_str(tokenizer.to_json())
        eos = tok.id_to_token(tokenizer.eos_id)
    tok.post_processor = processors.TemplateProcessing(single=f"{eos} $A", pair=f"{eos} $A {eos} $B",
                                                       special_tokens=[(eos, tokenizer.eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos,
                                   model_max_length=int(1e30), clean_up_tokenization_spaces=False)


def export_run(run, out, overwrite: bool = False) -> Path:
    """Write run folder `run` (latest checkpoint) as a transformers folder `out`, atomically.

    Returns:
        `out`, holding config.json, generation_config.json, model.safetensors, tokenizer.json and
        tokenizer_config.json.
    """
    from hope.checkpoint import match_umask
    from hope.runs import load_run

    loaded = load_run(run)
    if loaded.kind != "run":
        raise HopeError(f"{run} is already a transformers folder")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise HopeError(f"{out} already exists; pass --overwrite to replace it")
    cfg = loaded.cfg
    meta = {"train": dataclasses.asdict(cfg.train), "data": dataclasses.asdict(cfg.data),
            "run": str(Path(run).resolve()), "checkpoint": loaded.source}
    hf = from_hope(loaded.model, cfg, loaded.tokenizer, meta)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(loaded.tokenizer).save_pretrained(tmp)
        for f in tmp.iterdir():
            match_umask(f)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    json.loads((out / "config.json").read_text())  # written whole
    return out
