"""Hope-Attention (SPEC 4.4): causal softmax attention as the sequence mixer, then the Continuum Memory
System as the channel mixer. The attention's KV cache and the CMS fast weights form the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hope.config import check_model_shape
from hope.errors import HopeError
from hope.layers.attention import AttentionMixer
from hope.layers.cms import CMS, VARIANTS
from hope.models.common import CMSLanguageModel, MixerCMSBlock


@dataclass
class HopeAttentionConfig:
    vocab_size: int = 8192  # set from the tokenizer when a run starts
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: n_heads
    max_seq_len: int = 1024  # longest sequence (RoPE tables, KV cache)
    rope_theta: float = 10000.0
    cms_periods: tuple[int | None, ...] = (None, 128, 64)  # slowest level first; None = static
    cms_hidden: int = 176  # SwiGLU width of every CMS level
    cms_variant: str = "parallel"  # parallel | sequential | nested | independent (docs/DEVIATIONS.md)
    cms_lr: float = 0.01  # fast-weight learning rate (per-token mean gradient)
    cms_decay: float = 0.0  # pull of the fast weights towards the meta-learned ones, per update
    cms_meta: bool = False  # learned CMS step sizes, the update inside the training graph (second order)
    cms_meta_gain: float = 1.0  # the learned step sizes move this many times faster than other parameters
    cms: bool = True  # False: the ablation "no CMS" (one static MLP of width len(cms_periods) * cms_hidden)
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    init_std: float = 0.02

    # the CMS variant before issue 13, for configs written without a format (hope.config.Config.from_dict)
    FORMAT1_DEFAULTS: ClassVar[dict] = {"cms_variant": "sequential"}

    def __post_init__(self) -> None:
        check_model_shape(self, "max_seq_len")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise HopeError(f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}")
        check_cms_fields(self)


def check_cms_fields(cfg) -> None:
    """Checks of the CMS fields shared by the configs of Hope and Hope-Attention."""
    if cfg.cms_hidden <= 0:
        raise HopeError(f"model.cms_hidden must be > 0, got {cfg.cms_hidden}")
    if cfg.cms_variant not in VARIANTS:
        raise HopeError(f"model.cms_variant must be one of {', '.join(VARIANTS)}; got {cfg.cms_variant!r}")
    periods = [p for p in cfg.cms_periods if p is not None]
    if not cfg.cms_periods or any(p <= 0 for p in periods):
        raise HopeError(f"model.cms_periods must list positive periods or none; got {cfg.cms_periods}")
    if periods and any(p % min(periods) for p in periods):
        raise HopeError(f"every CMS period must be a multiple of the shortest one; got {cfg.cms_periods}")
    if cfg.cms_lr < 0 or not 0 <= cfg.cms_decay < 1:
        raise HopeError("model.cms_lr must be >= 0 and model.cms_decay in [0, 1)")
    if cfg.cms_meta and periods and not cfg.cms_lr > 0:
        raise HopeError("model.cms_meta=true learns log step sizes starting from model.cms_lr, which must be > 0")


def build_cms(cfg) -> CMS:
    """The CMS of one block; with `cms=False`, one static SwiGLU of the same total width."""
    if not cfg.cms:
        return CMS(cfg.d_model, cfg.cms_hidden * len(cfg.cms_periods), (None,), norm_eps=cfg.norm_eps)
    return CMS(cfg.d_model, cfg.cms_hidden, tuple(cfg.cms_periods), cfg.cms_variant, cfg.cms_lr, cfg.cms_decay,
               cfg.norm_eps, cfg.cms_meta, cfg.cms_meta_gain)


class HopeAttention(CMSLanguageModel):
    config_class = HopeAttentionConfig

    def __init__(self, cfg: HopeAttentionConfig):
        blocks = [MixerCMSBlock(AttentionMixer(cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.rope_theta,
                                               cfg.n_kv_heads),
                                build_cms(cfg), cfg.d_model, cfg.norm_eps) for _ in range(cfg.n_layers)]
        super().__init__(cfg, blocks)
