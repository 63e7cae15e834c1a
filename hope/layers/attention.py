"""Causal softmax attention (SPEC 4.4): Transformer++'s attention and Hope-Attention's mixer.

`Attention(x, cos, sin, past_k, past_v)`: RoPE and causal SDPA, used by `hope.models.transformer`.
`AttentionMixer(x, state) -> (y, state)`: the same attention behind the `(x, state)` interface of
the Titans mixers; the state is `{"k": [B, n, H, D], "v": ..., "pos": n}`.

einops legend: b batch, n tokens (queries), m tokens (keys, cache included), h heads, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hope.errors import HopeError
from hope.layers.init import residual_output


def rope_tables(max_len: int, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables `[max_len, dim / 2]` in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of `x: [B, n, H, D]` by `cos, sin: [n, D/2]`."""
    x1, x2 = x.chunk(2, dim=-1)
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Causal multi-head softmax attention with RoPE (Transformer++'s); `proj` is the residual output.

    `n_kv_heads` < `n_heads` shares each key/value head among `n_heads / n_kv_heads` consecutive query
    heads (grouped-query attention, as in Llama 2/3 and SmolLM2: `hope stack` needs it); the rows of
    `qkv` are the queries, then the keys, then the values. The KV cache holds `n_kv_heads` heads."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise HopeError(f"d_model={d_model} must split into {n_heads} heads of even width (RoPE)")
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise HopeError(f"model.n_kv_heads={n_kv_heads} must divide model.n_heads={n_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)
        self.proj = residual_output(nn.Linear(d_model, d_model, bias=False))

    def forward(self, x, cos, sin, past_k=None, past_v=None):
        """x: [B, n, d]; cos, sin: [n, D/2] at the new tokens' positions. Returns y and the full k, v."""
        b, n, _ = x.shape
        h, g, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).view(b, n, h + 2 * g, hd).split((h, g, g), dim=2)  # [b, n, h|g, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        m = k.shape[1]
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [b, h|g, n|m, d]
        if g != h:
            kh, vh = kh.repeat_interleave(h // g, dim=1), vh.repeat_interleave(h // g, dim=1)
        if m == n:
            y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        else:
            # query i sits at absolute position m - n + i and sees keys 0 .. m - n + i
            mask = torch.ones(n, m, dtype=torch.bool, device=x.device).tril(diagonal=m - n)
            y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, n, -1)
        return self.proj(y), k, v


class AttentionMixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, max_seq_len: int, rope_theta: float = 10000.0,
                 n_kv_heads: int | None = None):
        super().__init__()
        self.attn = Attention(d_model, n_heads, n_kv_heads)
        self.max_seq_len = max_seq_len
        cos, sin = rope_tables(max_seq_len, self.attn.head_dim, rope_theta)
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
