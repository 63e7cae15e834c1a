"""Causal depthwise convolution with a carried cache (SPEC 4.1, 4.2: `conv4` on k, v, q).

`y_t = sum_{j=0..K-1} w_j * x_{t-K+1+j}` per channel, reading the last `K - 1` inputs of the
previous call from a cache, so a sequence fed in pieces gives the same outputs as fed whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Module):
    """Depthwise causal convolution of width `kernel_size` over `[B, T, C]`, no bias.

    Args:
        channels: C.
        kernel_size: K (4 in SPEC).
    """

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)
        self.weight = nn.Parameter(conv.weight.detach().clone())  # [C, 1, K], PyTorch's default init

    def init_cache(self, batch_size: int, ref: torch.Tensor) -> torch.Tensor:
        """Zeros `[B, K - 1, C]`: the stream starts after K - 1 zero inputs."""
        return ref.new_zeros(batch_size, self.kernel_size - 1, self.channels)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, T, C], cache: [B, K-1, C] -> (y [B, T, C], new cache [B, K-1, C])."""
        xp = torch.cat([cache.to(x.dtype), x], dim=1)                       # [B, K-1+T, C]
        y = F.conv1d(xp.transpose(1, 2), self.weight.to(x.dtype), groups=self.channels)
        return y.transpose(1, 2), xp[:, xp.shape[1] - (self.kernel_size - 1):]
