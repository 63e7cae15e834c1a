"""Level stacking (paper section 7.3, SPEC 4.3): a pretrained Llama-architecture model turned into a
Hope-Attention continual learner.

Attention, norms, embeddings and head are copied. Each layer's SwiGLU MLP becomes that layer's
Continuum Memory System by splitting its hidden units: with K levels, level k holds the k-th slice
of `intermediate_size / K` units (its rows of the gate and up projections, its columns of the down
projection) and its own update period. The levels read the same input (the CMS variant
`independent`), so that the sum of the slices is the pretrained MLP exactly:

    MLP(x) = sum_k down_k(silu(gate_k x) * up_k x) = sum_k (1/K) * (K * down_k)(...)

the CMS mixes its levels with softmax weights that start equal (1/K each), so each slice's down
projection is scaled by K. Every level keeps the MLP's pre-norm weights. With every CMS learning
rate at 0 (or every period None) the stacked model computes the pretrained model's logits; the
test compares them against transformers' (`tests/test_stack.py`). Why slices and not copies: a
copy of the whole MLP per level would change the function (K MLPs instead of one) and multiply the
parameters by K; zero-initialized extra levels would start with no gradient through their gate
(the down projection is zero), so they could not learn from the first updates (docs/DEVIATIONS.md).

`stack_llama(hf_model, periods, ...)` builds the model; `write_stacked_run(...)` writes a run folder
that `hope generate`, `hope eval ...`, `hope learn` and `hope train --resume` read (`hope stack`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hope.errors import HopeError


def load_llama(source: str):
    """(transformers model in float32, its tokenizer) from a GGUF file, `smollm2` (the registry's GGUF,
    `hope data get smollm2`), or a local transformers folder (config.json + safetensors)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise HopeError("hope stack needs transformers: pip install 'hope-nl[hf]' (and gguf for GGUF files)") from None
    if source == "smollm2":
        from hope.data.registry import model_file

        source = str(model_file("smollm2"))
    path = Path(source)
    if not path.exists():
        raise HopeError(f"no model at {path}: pass a .gguf file, a transformers folder or 'smollm2'")
    if path.is_file():
        if path.suffix != ".gguf":
            raise HopeError(f"{path} is not a .gguf file; pass a GGUF file or a transformers folder")
        from hope.eval.hf import load_gguf

        model, tok = load_gguf(path)
        return model.hf, tok.tok
    if not (path / "config.json").exists():
        raise HopeError(f"{path} is not a transformers folder: config.json is missing")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise HopeError(f"cannot load {path}: {str(e).splitlines()[0]}") from None
    return model.eval(), tok


def _check_llama(c) -> None:
    if getattr(c, "model_type", None) != "llama" or getattr(c, "hidden_act", "silu") != "silu":
        raise HopeError(f"level stacking takes Llama-architecture models (SwiGLU, RoPE, RMSNorm); got "
                        f"model_type={getattr(c, 'model_type', None)!r}, hidden_act={getattr(c, 'hidden_act', None)!r}")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise HopeError("level stacking takes models without attention or MLP biases")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise HopeError(f"head_dim {head_dim} x {c.num_attention_heads} heads != hidden_size {c.hidden_size}")
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise HopeError(f"level stacking supports plain RoPE only; this model uses {rope.get('rope_type')!r} scaling")


def _rope_theta(c) -> float:
    rope = getattr(c, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


def stack_llama(hf_model, periods: tuple, cms_lr: float = 0.1, cms_decay: float = 0.0,
                max_seq_len: int | None = 2048):
    """The Hope-Attention model (and its config) of a transformers Llama model, levels stacked.

    Args:
        hf_model: a `LlamaForCausalLM` (or a model of the same layout) in float32.
        periods: CMS periods, one per level, slowest first (None: a static level); their number K
            must divide the MLP's hidden width.
        cms_lr, cms_decay: the CMS fast-weight learning rate and retention (`HopeAttentionConfig`).
        max_seq_len: longest context (RoPE tables, KV cache); None: the model's own.
    """
    from hope.models.hope_attention import HopeAttention, HopeAttentionConfig

    c = hf_model.config
    _check_llama(c)
    k = len(periods)
    if k == 0 or c.intermediate_size % k:
        raise HopeError(f"{k} CMS levels cannot split the MLP's {c.intermediate_size} hidden units evenly")
    longest = getattr(c, "max_position_embeddings", None) or 2048
    cfg = HopeAttentionConfig(
        vocab_size=c.vocab_size, d_model=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        max_seq_len=min(longest, max_seq_len or longest), rope_theta=_rope_theta(c), cms_periods=tuple(periods),
        cms_hidden=c.intermediate_size // k, cms_variant="independent", cms_lr=cms_lr, cms_decay=cms_decay,
        norm_eps=float(c.rms_norm_eps), tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)))
    model = HopeAttention(cfg)
    src = hf_model.state_dict()
    h = cfg.cms_hidden
    with torch.no_grad():
        model.embed.weight.copy_(src["model.embed_tokens.weight"])
        model.norm.weight.copy_(src["model.norm.weight"])
        if not cfg.tie_embeddings:
            model.lm_head.weight.copy_(src["lm_head.weight"])
        for i, block in enumerate(model.blocks):
            p = f"model.layers.{i}."
            attn = block.mixer.attn
            block.norm.weight.copy_(src[p + "input_layernorm.weight"])
            attn.qkv.weight.copy_(torch.cat([src[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
            attn.proj.weight.copy_(src[p + "self_attn.o_proj.weight"])
            gate, up, down = (src[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
            for j, (level, norm) in enumerate(zip(block.cms.levels, block.cms.norms)):
                rows = slice(j * h, (j + 1) * h)
                level.gate_up.weight.copy_(torch.cat([gate[rows], up[rows]]))
                level.down.weight.copy_(k * down[:, rows])
                norm.weight.copy_(src[p + "post_attention_layernorm.weight"])
            block.cms.mix.zero_()
    return model.eval(), cfg


def parse_periods(text: str) -> tuple:
    """`none,512,64` -> (None, 512, 64) (`none` or `static`: a static level)."""
    periods = []
    for item in (t.strip().lower() for t in text.split(",")):
        if item in ("none", "null", "static"):
            periods.append(None)
        elif item.isdigit() and int(item) > 0:
            periods.append(int(item))
        else:
            raise HopeError(f"--periods takes positive integers or none, comma-separated; got {text!r}")
    return tuple(periods)


def hope_tokenizer(hf_tokenizer):
    """This project's tokenizer (`hope.data.tokenizer.BPETokenizer`) of a transformers fast tokenizer."""
    from tokenizers import Tokenizer

    from hope.data.tokenizer import BPETokenizer, EOS

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise HopeError("level stacking needs a fast (tokenizers) tokenizer")
    tok = Tokenizer.from_str(backend.to_str())
    if tok.token_to_id(EOS) is None:
        raise HopeError(f"the model's tokenizer has no {EOS} token, which this project separates documents with")
    return BPETokenizer(tok, "bpe")


def write_stacked_run(out, source: str, periods: tuple, cms_lr: float = 0.1, cms_decay: float = 0.0,
                      max_seq_len: int | None = 2048, overrides: list[str] | None = None,
                      overwrite: bool = False, log=print) -> Path:
    """`hope stack`: a run folder (config.json, tokenizer.json, run.json, checkpoint step 0 without
    optimizer state) holding the stacked model of `source` (see `load_llama`)."""
    import shutil

    from hope import __version__
    from hope.checkpoint import atomic_write_text, save_checkpoint
    from hope.config import Config, DataConfig, TrainConfig, apply_overrides

    out = Path(out)
    exists = out.exists() and any(out.iterdir())
    if exists and not overwrite:
        raise HopeError(f"run folder {out} already exists; pass --overwrite to replace it")
    if any(not o.startswith(("train.", "data.")) for o in overrides or []):
        raise HopeError("hope stack --set takes train.* and data.* keys; the model's come from the pretrained one")
    t0 = time.perf_counter()
    hf_model, hf_tok = load_llama(source)
    tokenizer = hope_tokenizer(hf_tok)
    model, mcfg = stack_llama(hf_model, periods, cms_lr, cms_decay, max_seq_len)
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise HopeError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's embedding {mcfg.vocab_size}")
    # continual pre-training defaults: a small learning rate, short warmup, CPU-sized batches
    train = TrainConfig(steps=100, batch_size=4, seq_len=min(256, mcfg.max_seq_len), lr=3e-4, warmup_steps=10, eval_every=50,
                        eval_tokens=16384, ckpt_every=50, sample_tokens=60, num_samples=1)
    cfg = Config(arch="hope_attention", model=mcfg, train=train,
                 data=DataConfig(corpus="wiki", tokenizer="bpe", vocab_size=tokenizer.vocab_size))
    cfg = apply_overrides(cfg, list(overrides or []))
    if exists:
        shutil.rmtree(out)  # only now: a model that fails to load or stack leaves the old folder alone
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    atomic_write_text(out / "tokenizer.json", tokenizer.to_json())
    record = {"hope_version": __version__, "stacked_from": str(source), "periods": list(periods), "cms_lr": cms_lr,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")
    save_checkpoint(out, 0, model, None, {"tokens": 0})
    n = sum(p.numel() for p in model.parameters())
    log(f"stacked {source} into {out}: hope_attention, {n / 1e6:.1f}M parameters, {mcfg.n_layers} layers, CMS "
        f"periods {list(periods)} of {mcfg.cms_hidden} units each, vocabulary {tokenizer.vocab_size} "
        f"({time.perf_counter() - t0:.0f} s)")
    return out
