"""Forward+backward time of the Titans / self-modifying Titans mixers vs causal SDPA attention.

B=8, T=256, d_model=192, 4 heads (the brief's setting). Run:
    python tests/layers/bench_mixers.py [cpu|cuda] [config ...]
a config is `attn`, `titans,chunk_size=16` or `selfmod,chunk_proj=16,chunk_mem=64` (keyword options).
"""

import sys
import time

import torch
import torch.nn.functional as F
from mixer_support import selfmod, titans
from torch import nn

B, T, D, H = 8, 256, 192, 4


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.o = nn.Linear(D, D, bias=False)

    def forward(self, x, state=None):
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, D)), None


def parse(cfg):
    name, *kv = cfg.split(",")
    kw = {}
    for item in kv:
        k, v = item.split("=")
        kw[k] = int(v) if v.isdigit() else (v == "True") if v in ("True", "False") else v
    return {"attn": lambda: Attention(), "titans": lambda: titans(D, H, **kw),
            "selfmod": lambda: selfmod(D, H, **kw)}[name]()


def bench(m, device, n=3):
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    ts = []
    for _ in range(n + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y, _ = m(x)
        y.square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return min(ts[1:])


if __name__ == "__main__":
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    cfgs = sys.argv[2:] or ["attn", "titans", "selfmod"]
    torch.manual_seed(0)
    for cfg in cfgs:
        m = parse(cfg).to(device)
        print(f"{device} threads={torch.get_num_threads()} {cfg:45s} {bench(m, device) * 1e3:9.1f} ms fwd+bwd",
              flush=True)
