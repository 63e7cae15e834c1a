"""Self-modifying Titans: Hope's sequence mixer (SPEC 4.2, 3; paper section 8).

Six in-context memories per head: the projection memories `k, v, q, eta, alpha` and the main
memory `mem`. For projection chunk c (C_proj tokens) and main-memory chunk c' (C_mem tokens):

    x_h          = split_heads(W_in x)
    k_t          = l2norm(conv4(M_k,c(x_h,t)))       v_t = l2norm(conv4(M_v,c(x_h,t)))  (l2norm: ours)
    q_t          = l2norm(conv4(M_q,c(x_h,t)))
    eta_t        = eta_max * sigmoid(w_eta . M_eta,c(x_h,t) + b_eta)
    alpha_t      = sigmoid(w_alpha . M_alpha,c(x_h,t) + b_alpha)        beta_t = sigmoid(W_beta x)
    every projection memory M_box: inner rule on l(M_box; k_t, M_box,c(v_t)) over chunk c,
        the new state takes effect from chunk c + 1
    main memory: inner rule on l(M_mem; k_t, M_mem,c'(v_t)), read o_t = M_mem,t(q_t)
    y            = W_o( RMSNorm_head(o) * SiLU(W_g x) )

`M_box,c` is the state at the start of the chunk (the op's `*_chunk` weights when a call resumes
inside a chunk). The self-generated targets `M_box,c(v_t)` are formed by the op from v_t and the
chunk-start weights, in the autograd graph: inside the op they are constants of the inner loss (the
op differentiates the inner loss analytically w.r.t. the memory weights only), while the outer loss
backpropagates into them, and through them into v_t and the chunk-start weights. All memories
update with the token's eta_t, alpha_t, beta_t (our reading, docs/DEVIATIONS.md).

The projection memories are stacked on the head axis (one op call per projection chunk for all of
them, which share one set of inputs: the op builds their chunk operators once, `shared=True`);
the main memory runs one op call for the whole call. Under `rule.recompute` the projection loop
is recomputed in the backward by groups of about sqrt(N) of its N chunks. The self-generated targets are formed
inside the ops (`self_target=True`: the read of v at the chunk-start weights shares its products
with the keys' gradient); the loops run over chunks, never over tokens. (An
earlier path also stacked the main memory with them when C_proj == C_mem: it read the main memory
with x_h and discarded the read, and sliced the read heads out of the stacked state, which costs a
state-sized zero fill in the backward; it was 1.3-1.4x slower on CPU at `hope_tiny`.)

einops legend: b batch, t tokens, h heads, p projection memories, d head feature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hope.layers.conv import CausalConv1d
from hope.layers.init import residual_output
from hope.layers.memory import MemoryBank, chunk_ranges
from hope.ops.checks import repeat_heads
from hope.ops.recompute import recompute_region
from hope.ops.rule import InnerRule


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans token mixer. `y, state = layer(x, state)`, `x, y: [B, T, d_model]`.

    Args:
        d_model: model width.
        n_heads: H, head_dim = d_model / H; every memory is per head.
        rule: inner rule of the main memory (`hope.ops.rule.InnerRule`: kind, expansion,
            activation, chunk size C_mem, DGD, the stability switches, recompute). Its `momentum`
            off sets beta = 0 (and drops W_beta), `retention` off sets alpha = 1 (and drops the
            alpha memory and its read-out), `eta = eta_max * sigmoid(.)`; these three gates are
            shared by all six memories.
        proj_rule: inner rule of the projection memories k, v, q, eta, alpha (default: `rule`);
            its chunk size C_proj is also the delay of their effect. Must agree with `rule` on
            momentum, retention and eta_max (the gates are shared).
        static_k, static_v, static_q: replace that projection memory by a static per-head linear
            map `W x_h` (outer level only).
        conv_size: width of the causal depthwise convolutions on k, v, q.
        impl: "chunk" (default) or "naive" (token-by-token reference ops, for tests).
        dgd_bias: initial bias of the DGD gate under `rule.dgd_gate`: `dgd_eta = rule.dgd_max *
            sigmoid(w_dgd . M_eta,c(x_h,t) + b_dgd)`, a read-out of the eta memory of its own, shared by
            the six memories like the other gates.
        eta_bias, alpha_bias, beta_bias: initial biases of the gates (eta ~ 0.06, alpha ~ 0.9997,
            beta = 0.5 at the defaults).
        proj_w1_std: initial W1 of MLP projection memories, std relative to 1/sqrt(E), so the
            five projection memories start as distinct near-identity maps.
        proj_eta_offset: None (default): the projection memories learn with the token's eta, as the
            main memory. A number: each projection memory and head has its own learned offset of
            the eta gate's pre-activation, initialized to this value (`eta_box = eta_max *
            sigmoid(pre + b_box)`), so the outer loop can make the projections move slower (or
            faster) than the main memory (docs/DEVIATIONS.md, issue 14).
        self_target: the main memory learns the self-generated target `M_mem,c(v_t)` (SPEC 4.2);
            False: the value `v_t` itself, as Titans does (an ablation; the projection memories
            keep their self-generated targets).
        normalize_v: L2-normalize v per head like k and q (not in SPEC 4.2; docs/DEVIATIONS.md):
            with self-generated targets `M_c(v)` an inner step on a memory is
            `W <- W (I - eta (k - v) k^T)` (linear case), expansive when `v . k > 1`; without it
            the layer diverges at init within a few hundred tokens.
        eps: epsilon of the per-head RMSNorm and the L2 normalization.
    """

    def __init__(self, d_model: int, n_heads: int, rule: InnerRule = InnerRule(momentum_norm=True),
                 proj_rule: InnerRule | None = None, *, static_k: bool = False,
                 static_v: bool = False, static_q: bool = False, conv_size: int = 4,
                 impl: str = "chunk", eta_bias: float = -2.0, alpha_bias: float = 8.0,
                 beta_bias: float = 0.0, dgd_bias: float = -2.0, proj_w1_std: float = 0.2,
                 proj_eta_offset: float | None = None,
                 self_target: bool = True,
                 normalize_v: bool = True, eps: float = 1e-6):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        proj_rule = rule if proj_rule is None else proj_rule
        for name in ("momentum", "retention", "eta_max"):
            if getattr(proj_rule, name) != getattr(rule, name):
                raise ValueError(f"proj_rule.{name} must equal rule.{name} (the gates are shared by "
                                 f"all memories), got {getattr(proj_rule, name)} and {getattr(rule, name)}")
        H = n_heads
        D = self.head_dim = d_model // n_heads
        self.d_model, self.n_heads = d_model, n_heads
        self.rule, self.proj_rule = rule, proj_rule
        self.eps, self.normalize_v, self.self_target = eps, normalize_v, self_target
        static = {"k": static_k, "v": static_v, "q": static_q}
        # projection memories, in the order they are stacked on the head axis
        self.proj_names = (tuple(n for n in "kvq" if not static[n]) + ("eta",)
                           + (("alpha",) if rule.retention else ()))
        self.static_names = tuple(n for n in "kvq" if static[n])
        self.W_in = nn.Linear(d_model, d_model, bias=False)
        self.static = nn.ParameterDict({n: nn.Parameter(torch.randn(H, D, D) / math.sqrt(D))
                                        for n in self.static_names})
        self.proj = MemoryBank(proj_rule, len(self.proj_names), H, D, w1_std=proj_w1_std,
                               linear_init="random", impl=impl)
        # the identity start (W1 = 0, or W = I): a zero linear memory would be a fixed point of
        # self-generated targets (target M_c(v) = 0, no error, no update)
        self.memory = MemoryBank(rule, 1, H, D, w1_std=0.0, linear_init="identity", impl=impl)
        self.convs = nn.ModuleDict({n: CausalConv1d(d_model, conv_size) for n in "kvq"})
        self.w_eta = nn.Parameter(torch.randn(H, D) * (0.1 / math.sqrt(D)))
        self.b_eta = nn.Parameter(torch.full((H,), float(eta_bias)))
        self.dgd_gate = rule.dgd and rule.dgd_gate
        if proj_rule.dgd_gate != rule.dgd_gate:
            raise ValueError("proj_rule.dgd_gate must equal rule.dgd_gate (the gates are shared by all memories)")
        if self.dgd_gate:
            self.w_dgd = nn.Parameter(torch.randn(H, D) * (0.1 / math.sqrt(D)))
            self.b_dgd = nn.Parameter(torch.full((H,), float(dgd_bias)))
        self.b_eta_proj = (None if proj_eta_offset is None else
                           nn.Parameter(torch.full((len(self.proj_names) * H,), float(proj_eta_offset))))
        # (flat [P*H], memory-major like the stacked heads: a gate bias, no weight decay)
        if rule.retention:
            self.w_alpha = nn.Parameter(torch.randn(H, D) * (0.1 / math.sqrt(D)))
            self.b_alpha = nn.Parameter(torch.full((H,), float(alpha_bias)))
        self.W_beta = nn.Linear(d_model, H) if rule.momentum else None
        if rule.momentum:
            nn.init.constant_(self.W_beta.bias, beta_bias)
        self.norm_weight = nn.Parameter(torch.ones(H, D))
        self.W_g = nn.Linear(d_model, d_model, bias=False)
        self.W_o = residual_output(nn.Linear(d_model, d_model, bias=False))

    def init_state(self, batch_size: int) -> dict:
        """{"proj": op state, projection memories stacked on heads [B, P*H, ...] in `proj_names`
        order; "mem": op state [B, H, ...]; "conv": {k, v, q: [B, K-1, d]}; "t": tokens read}."""
        ref = self.W_o.weight
        return {"proj": self.proj.init_state(batch_size),
                "mem": self.memory.init_state(batch_size),
                "conv": {n: c.init_cache(batch_size, ref) for n, c in self.convs.items()},
                "t": 0}

    def project(self, proj, xh, raw, t0, t1, conv, recompute: bool | None = None):
        """k, v, q [B, L, H, D], eta, alpha [B, L, H], the projection memories' own eta [B, L, P*H]
        (None when they learn with the token's eta, without `proj_eta_offset`) and the DGD gate's
        rate [B, L, H] (None without `rule.dgd_gate`) of one projection chunk `[t0, t1)`.

        proj: state of the projection memories (read at its chunk start); xh: [B, L, H, D];
        raw: outputs of the static projections over the whole call; conv: caches, updated in place;
        recompute: overrides the projection rule's switch for the read (None: the rule's).
        """
        B, L, H, D = xh.shape
        P = len(self.proj_names)
        rd = self.proj.read_start(proj, xh, recompute).view(B, L, P, H, D)  # every memory reads x_h
        idx = {n: i for i, n in enumerate(self.proj_names)}
        out = {}
        for n in "kvq":
            c = rd[:, :, idx[n]] if n in idx else raw[n][:, t0:t1]
            y, conv[n] = self.convs[n](c.reshape(B, L, H * D), conv[n])
            y = y.view(B, L, H, D)
            out[n] = y if n == "v" and not self.normalize_v else F.normalize(y, dim=-1, eps=self.eps)
        pre = (rd[:, :, idx["eta"]] * self.w_eta).sum(-1) + self.b_eta
        eta = self.rule.eta_max * torch.sigmoid(pre)
        if self.b_eta_proj is None:
            eta_proj = None                                             # the token's eta, shared
        else:                                                           # memory-major, as stacked
            eta_proj = self.rule.eta_max * torch.sigmoid(pre.unsqueeze(2) + self.b_eta_proj.view(P, H)).flatten(2)
        if self.rule.retention:
            alpha = torch.sigmoid((rd[:, :, idx["alpha"]] * self.w_alpha).sum(-1) + self.b_alpha)
        else:
            alpha = eta.new_ones(eta.shape)
        dgd = (self.rule.dgd_max * torch.sigmoid((rd[:, :, idx["eta"]] * self.w_dgd).sum(-1) + self.b_dgd)
               if self.dgd_gate else None)
        return out["k"], out["v"], out["q"], eta, alpha, eta_proj, dgd

    def _projections(self, proj, conv, xh, raw, beta, ranges, recompute):
        """The projection loop over the chunks `ranges` (`(t0, t1)` in the call): each chunk's
        k, v, q, eta, alpha, DGD rate from the chunk-start states, then every projection memory
        learns the chunk. Returns (per chunk those six, the state after, the conv caches after)."""
        P = len(self.proj_names)
        conv = dict(conv)
        outs = []
        for t0, t1 in ranges:
            k, v, q, eta, alpha, eta_proj, dgd = self.project(proj, xh[:, t0:t1], raw, t0, t1, conv, recompute)
            # no queries (zero heads): the projection memories only learn, nothing is read; their
            # targets M_box,c(v_t) are read inside the op (self_target), every memory reading v.
            # All learn on k and v with the token's gates: one set of inputs for the P memories
            # (`shared`), unless each has its own eta offset
            if eta_proj is None:
                _, proj = self.proj.update(proj, k[:, :, :0], k, v, eta, alpha, beta[:, t0:t1], dgd,
                                           self_target=True, recompute=recompute, shared=True)
            else:
                kP, vP, alphaP, betaP, dgdP = repeat_heads(P, k, v, alpha, beta[:, t0:t1], dgd)
                _, proj = self.proj.update(proj, kP[:, :, :0], kP, vP, eta_proj, alphaP, betaP, dgdP,
                                           self_target=True, recompute=recompute)
            outs.append((k, v, q, eta, alpha, dgd))
        return outs, proj, conv

    def forward(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """x: [B, T, d_model] -> (y [B, T, d_model], state after the last token)."""
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B)
        H, D = self.n_heads, self.head_dim
        xh = self.W_in(x).view(B, T, H, D)
        beta = torch.sigmoid(self.W_beta(x)) if self.rule.momentum else x.new_zeros(B, T, H)
        raw = {n: torch.einsum("bthd,hed->bthe", xh, self.static[n]) for n in self.static_names}
        conv = dict(state["conv"])
        proj, mem = state["proj"], state["mem"]
        # the projection memories, chunk by chunk: chunk c's k, v, q, eta, alpha come from their
        # chunk-start states, and each memory learns from chunk c with its self-generated targets
        ranges = chunk_ranges(T, self.proj_rule.chunk_size, proj.pos)
        if self.proj_rule.recompute and torch.is_grad_enabled() and len(ranges) > 1:
            # recompute by groups of about sqrt(N) of the N chunks: the backward keeps the states at
            # group starts and recomputes one group at a time (about 2 sqrt(N) states held, not N)
            g = math.ceil(math.sqrt(len(ranges)))
            outs = []
            for i in range(0, len(ranges), g):
                o, proj, conv = recompute_region(self._projections, proj, conv, xh, raw, beta, ranges[i:i + g], False)
                outs += o
        else:
            outs, proj, conv = self._projections(proj, conv, xh, raw, beta, ranges, None)
        ks, vs, qs, etas, alphas, dgds = zip(*outs)
        k, v, q, eta, alpha = (torch.cat(z, dim=1) for z in (ks, vs, qs, etas, alphas))
        dgd = torch.cat(dgds, dim=1) if self.dgd_gate else None
        # the main memory, one op call for the whole call (its operators built for all chunks at
        # once); self-generated targets M_mem,c'(v_t) are read inside the op at each chunk's start
        o, mem = self.memory.update(mem, q, k, v, eta, alpha, beta, dgd, self_target=self.self_target)
        o = F.rms_norm(o, (D,), eps=self.eps) * self.norm_weight
        y = self.W_o(o.flatten(2) * F.silu(self.W_g(x)))
        return y, {"proj": proj, "mem": mem, "conv": conv, "t": state["t"] + T}
