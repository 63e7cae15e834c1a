"""Transformer++: the attention baseline of SPEC 4.4 (Llama-style).

Pre-norm blocks `x <- x + Attn(RMSNorm(x)); x <- x + SwiGLU(RMSNorm(x))` with rotary position
embeddings and causal `scaled_dot_product_attention`. The in-context state is a KV cache, so
`forward(tokens, state)` continues a sequence and token-by-token generation reproduces the full
forward's logits.

einops legend: b batch, n tokens (queries), m tokens (keys, cache included), h heads, d head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hope.config import check_model_shape
from hope.errors import HopeError
from hope.layers.attention import Attention, apply_rope, rope_tables  # noqa: F401  (re-exported)
from hope.layers.init import init_weights, residual_output


@dataclass
class TransformerConfig:
    vocab_size: int = 8192  # set from the tokenizer when a run starts
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_mult: float = 8 / 3  # SwiGLU hidden width = ffn_mult * d_model, rounded up to a multiple of 32
    max_seq_len: int = 1024  # longest sequence, prompt plus generation (RoPE tables are this long)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True  # share the embedding matrix with the LM head
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_model_shape(self, "max_seq_len")
        if self.head_dim % 2:
            raise HopeError(f"head dimension d_model / n_heads = {self.head_dim} must be even for RoPE")
        if self.ffn_mult <= 0:
            raise HopeError(f"model.ffn_mult must be > 0, got {self.ffn_mult}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return 32 * math.ceil(self.ffn_mult * self.d_model / 32)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens read so far: per layer `[B, pos, H, D]`."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    pos: int = 0

    def detach(self) -> "KVCache":
        return KVCache([k.detach() if k is not None else None for k in self.keys],
                       [v.detach() if v is not None else None for v in self.values], self.pos)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = residual_output(nn.Linear(hidden, d_model, bias=False))

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_dim)

    def forward(self, x, cos, sin, past_k=None, past_v=None):
        a, k, v = self.attn(self.attn_norm(x), cos, sin, past_k, past_v)
        x = x + a
        x = x + self.mlp(self.mlp_norm(x))
        return x, k, v


class Transformer(nn.Module):
    """Transformer++ language model. `forward(tokens, state=None) -> (logits, KVCache)`."""

    config_class = TransformerConfig

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers)
        (`hope.layers.init`, the same for every model)."""
        init_weights(self, self.config.init_std, self.config.n_layers)

    def init_state(self, batch_size: int) -> KVCache:
        n = self.config.n_layers
        return KVCache([None] * n, [None] * n, 0)

    def forward(self, tokens: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """
        Args:
            tokens: [B, T] token ids.
            state: a KVCache from `init_state` or an earlier call; None starts a new sequence.
        Returns:
            logits [B, T, V] (float32) and the KV cache extended by these tokens.
        """
        if state is None:
            state = self.init_state(tokens.shape[0])
        b, n = tokens.shape
        start = state.pos
        if start + n > self.config.max_seq_len:
            raise HopeError(
                f"sequence of {start + n} tokens exceeds model.max_seq_len={self.config.max_seq_len}"
            )
        cos, sin = self.rope_cos[start:start + n], self.rope_sin[start:start + n]
        x = self.embed(tokens)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, state.keys[i], state.values[i])
            keys.append(k)
            values.append(v)
        logits = self.lm_head(self.norm(x)).float()
        return logits, KVCache(keys, values, start + n)
