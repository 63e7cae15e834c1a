"""Titans (LMM) sequence mixer: one neural memory per head trained in context (SPEC 4.1, 3).

    k, v, q = SiLU(conv4(W_k x)), SiLU(conv4(W_v x)), SiLU(conv4(W_q x))   k, q L2-normalized per head
    eta     = eta_max * sigmoid(W_eta x)        alpha = sigmoid(W_alpha x)        beta = sigmoid(W_beta x)
    M_t     = inner rule of SPEC 3 on l(M; k_t, v_t) (Titans: no DGD, targets v, momentum, retention)
    y       = W_o( RMSNorm_head(M_t(q_t)) * SiLU(W_g x) )

The memory update is one call of `chunk_mlp_memory` / `chunk_linear_memory` over the whole input;
the op resumes mid-chunk, so the layer needs no chunking of its own.

einops legend: b batch, t tokens, h heads, d head feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hope.layers.conv import CausalConv1d
from hope.layers.init import residual_output
from hope.layers.memory import MemoryBank
from hope.ops.rule import InnerRule


class TitansMixer(nn.Module):
    """Titans (LMM) token mixer. `y, state = layer(x, state)`, `x, y: [B, T, d_model]`.

    Args:
        d_model: model width.
        n_heads: H, head_dim = d_model / H; one memory per head.
        rule: the memory's inner rule (`hope.ops.rule.InnerRule`; default: an MLP memory with
            Titans' rule, no DGD). Its `momentum` off sets beta = 0 (and drops W_beta), its
            `retention` off sets alpha = 1 (and drops W_alpha), `eta = eta_max * sigmoid(.)`.
        conv_size: width of the causal depthwise convolutions.
        impl: "chunk" (default) or "naive" (token-by-token reference ops, for tests).
        eta_bias, alpha_bias, beta_bias: initial biases of the gate maps (eta ~ 0.06, alpha ~ 0.9997,
            beta = 0.5 at the defaults).
        dgd_bias: initial bias of the DGD gate under `rule.dgd_gate` (`W_dgd`, a `Linear(d_model, H)`:
            `dgd_eta = rule.dgd_max * sigmoid(W_dgd x)`).
        eps: epsilon of the per-head RMSNorm and the L2 normalization.
    """

    def __init__(self, d_model: int, n_heads: int, rule: InnerRule = InnerRule(dgd=False), *,
                 conv_size: int = 4, impl: str = "chunk", eta_bias: float = -2.0,
                 alpha_bias: float = 8.0, beta_bias: float = 0.0, dgd_bias: float = -2.0, eps: float = 1e-6):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.rule, self.eps = rule, eps
        self.W_k = nn.Linear(d_model, d_model, bias=False)
        self.W_v = nn.Linear(d_model, d_model, bias=False)
        self.W_q = nn.Linear(d_model, d_model, bias=False)
        self.convs = nn.ModuleDict({n: CausalConv1d(d_model, conv_size) for n in "kvq"})
        self.W_eta = nn.Linear(d_model, n_heads)
        nn.init.constant_(self.W_eta.bias, eta_bias)
        self.W_alpha = nn.Linear(d_model, n_heads) if rule.retention else None
        self.W_dgd = nn.Linear(d_model, n_heads) if rule.dgd and rule.dgd_gate else None
        if self.W_dgd is not None:
            nn.init.constant_(self.W_dgd.bias, dgd_bias)
        self.W_beta = nn.Linear(d_model, n_heads) if rule.momentum else None
        for lin, b in ((self.W_alpha, alpha_bias), (self.W_beta, beta_bias)):
            if lin is not None:
                nn.init.constant_(lin.bias, b)
        self.memory = MemoryBank(rule, 1, n_heads, self.head_dim, w1_std=0.0, linear_init="zeros",
                                 impl=impl)
        self.norm_weight = nn.Parameter(torch.ones(n_heads, self.head_dim))
        self.W_g = nn.Linear(d_model, d_model, bias=False)
        self.W_o = residual_output(nn.Linear(d_model, d_model, bias=False))

    def init_state(self, batch_size: int) -> dict:
        """{"mem": op state [B, H, ...] from the meta-learned init, "conv": {k, v, q: [B, K-1, d]}, "t": 0}."""
        ref = self.W_o.weight
        return {"mem": self.memory.init_state(batch_size),
                "conv": {n: c.init_cache(batch_size, ref) for n, c in self.convs.items()},
                "t": 0}

    def gates(self, x: torch.Tensor):
        """eta, alpha, beta: [B, T, H] from x: [B, T, d_model]."""
        eta = self.rule.eta_max * torch.sigmoid(self.W_eta(x))
        alpha = torch.sigmoid(self.W_alpha(x)) if self.rule.retention else eta.new_ones(eta.shape)
        beta = torch.sigmoid(self.W_beta(x)) if self.rule.momentum else eta.new_zeros(eta.shape)
        return eta, alpha, beta

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """W_o(RMSNorm_head(o) * SiLU(W_g x)); o: [B, T, H, D]."""
        o = F.rms_norm(o, (self.head_dim,), eps=self.eps) * self.norm_weight
        return self.W_o(o.flatten(2) * F.silu(self.W_g(x)))

    def forward(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """x: [B, T, d_model] -> (y [B, T, d_model], state after the last token)."""
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B)
        H, D = self.n_heads, self.head_dim
        conv = {}
        kvq = {}
        for n, W in (("k", self.W_k), ("v", self.W_v), ("q", self.W_q)):
            y, conv[n] = self.convs[n](W(x), state["conv"][n])
            kvq[n] = F.silu(y).view(B, T, H, D)
        k = F.normalize(kvq["k"], dim=-1, eps=self.eps)
        q = F.normalize(kvq["q"], dim=-1, eps=self.eps)
        eta, alpha, beta = self.gates(x)
        dgd_eta = self.rule.dgd_max * torch.sigmoid(self.W_dgd(x)) if self.W_dgd is not None else None
        o, mem = self.memory.update(state["mem"], q, k, kvq["v"], eta, alpha, beta, dgd_eta)
        return self.output(o, x), {"mem": mem, "conv": conv, "t": state["t"] + T}
