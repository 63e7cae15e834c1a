"""Causal softmax attention as a sequence mixer with a KV-cache state (Hope-Attention's mixer, SPEC 4.4).

`AttentionMixer(x, state) -> (y, state)`: the Transformer++ attention (RoPE, SDPA) behind the same
`(x, state)` interface as the Titans mixers; the state is `{"k": [B, n, H, D], "v": ..., "pos": n}`.
"""

from __future__ import annotations

import torch
from torch import nn

from hope.errors import HopeError
from hope.models.transformer import Attention, TransformerConfig, rope_tables


class AttentionMixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, max_seq_len: int, rope_theta: float = 10000.0):
        super().__init__()
        cfg = TransformerConfig(d_model=d_model, n_heads=n_heads, max_seq_len=max_seq_len, rope_theta=rope_theta)
        self.attn = Attention(cfg)
        self.max_seq_len = max_seq_len
        cos, sin = rope_tables(max_seq_len, cfg.head_dim, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_state(self, batch_size: int) -> dict:
        return {"k": None, "v": None, "pos": 0}

    def forward(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        state = state or self.init_state(x.shape[0])
        start, n = state["pos"], x.shape[1]
        if start + n > self.max_seq_len:
            raise HopeError(f"sequence of {start + n} tokens exceeds model.max_seq_len={self.max_seq_len}")
        cos, sin = self.rope_cos[start:start + n], self.rope_sin[start:start + n]
        y, k, v = self.attn(x, cos, sin, state["k"], state["v"])
        return y, {"k": k, "v": v, "pos": start + n}
