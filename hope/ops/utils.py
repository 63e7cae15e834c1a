"""Shared pieces of the inner-learning-rule ops (SPEC sections 2 and 3).

Holds the memory state types, the activations of the MLP memory with their derivatives, input
checks, and the chunk algebra shared by `linear_memory/chunk.py` and `mlp_memory/chunk.py`:
the within-chunk decay matrices of retention (alpha) and momentum (beta), and the operators of a
"keyed" layer (a weight matrix whose gradients are rank-1 terms `u_s k_s^T` on the same keys that
its DGD factor uses). The derivation is in `linear_memory/README.md`.

Conventions: a weight maps `x -> W x` with `W: [D_out, D_in]`; batched states are
`[B, H, D_out, D_in]`. Chunked tensors are `[B, H, N, C, ...]`.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

OBJECTIVES = ("l2", "dot")
ACTIVATIONS = ("gelu", "silu")


class LinearMemoryState(NamedTuple):
    """State of a linear memory `M(x) = W x`, per stream and head.

    W: [B, H, D, D] weights (`[D_out, D_in]` per head), or anything broadcastable to it.
    S: momentum ("past surprise") of the same shape, or None for zeros.
    W_chunk: the weights at the start of the current, unfinished mini-batch (gradients of its
        remaining tokens are taken there); needed only when pos > 0.
    pos: tokens of the current mini-batch already written (0 at a chunk boundary). A call
        resuming from a returned state must use the same chunk_size.
    """

    W: torch.Tensor
    S: Optional[torch.Tensor] = None
    W_chunk: Optional[torch.Tensor] = None
    pos: int = 0


class MLPMemoryState(NamedTuple):
    """State of an MLP memory `M(x) = x + W1 sigma(W2 x)`, per stream and head.

    W1: [B, H, D, E] output layer (E = expansion * D), or broadcastable to it.
    W2: [B, H, E, D] input layer (reads the key; carries the DGD factor), or broadcastable.
    S1, S2: momenta of the same shapes, or None for zeros.
    W1_chunk, W2_chunk: weights at the start of the current, unfinished mini-batch (pos > 0).
    pos: tokens of the current mini-batch already written (0 at a chunk boundary).
    """

    W1: torch.Tensor
    W2: torch.Tensor
    S1: Optional[torch.Tensor] = None
    S2: Optional[torch.Tensor] = None
    W1_chunk: Optional[torch.Tensor] = None
    W2_chunk: Optional[torch.Tensor] = None
    pos: int = 0


def check_pos(pos: int, chunk_size: int, has_chunk_state: bool) -> int:
    """Validate the resume position of a state."""
    pos = int(pos)
    if not 0 <= pos < chunk_size:
        raise ValueError(f"state.pos must be in [0, chunk_size={chunk_size}), got {pos}")
    if pos and not has_chunk_state:
        raise ValueError("a state with pos > 0 needs its chunk-start weights (W_chunk)")
    return pos


def check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective):
    """Validate shapes and flags shared by every memory op; return (B, T, H, D).

    `q` may have fewer heads than `k` and `v` (`[B, T, Hq, D]`, `0 <= Hq <= H`): the op then reads
    only the last Hq heads (see `read_heads`).
    """
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k, v must share a [B, T, H, D] shape, got {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = k.shape
    if q.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != D or q.shape[2] > H:
        raise ValueError(f"q must be [B, T, Hq, D] = [{B}, {T}, <= {H}, {D}] (reads of the last Hq "
                         f"heads), got {tuple(q.shape)}")
    for name, g in (("eta", eta), ("alpha", alpha), ("beta", beta)):
        if g.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return B, T, H, D


def read_heads(q: torch.Tensor, H: int) -> slice:
    """The heads an op reads: the last `Hq = q.shape[2]` of its `H` (all of them when Hq == H).

    Stacked memories whose reads are not needed (e.g. Hope's projection memories, which only
    learn) go first and cost no read at all.
    """
    return slice(H - q.shape[2], H)


def operator_queries(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Queries for every head, `[B, T, H, D]`, to build the chunk operators with: `q` on the read
    heads, `k` on the unread ones (their read rows are built, cheap at C x C, and never used)."""
    H = k.shape[2]
    return q if q.shape[2] == H else torch.cat([k[:, :, :read_heads(q, H).start], q], dim=2)


def state_dtype(state, ref: torch.Tensor) -> torch.dtype:
    """The dtype an op keeps its state in: the widest of `ref` (the queries) and the state's
    tensors. Under bf16 autocast a float32 (meta-learned) state stays float32 even when the
    inputs arrive in bf16; a model cast to bf16 keeps bf16 states; float64 stays float64."""
    dtype = ref.dtype
    for x in state:
        if isinstance(x, torch.Tensor):
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def expand_state(x: Optional[torch.Tensor], shape, ref: torch.Tensor,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Broadcast a (possibly shared, e.g. `[H, D, D]` meta-learned) state to `shape`; None -> zeros.

    dtype: of the result (default `ref.dtype`); ref gives the device of zeros. Broadcasting keeps
    the autograd link, so gradients reach a shared initial state summed over the batch.
    """
    dtype = dtype or ref.dtype
    if x is None:
        return ref.new_zeros(shape, dtype=dtype)
    return torch.broadcast_to(x.to(dtype), shape)


def hidden_scale(z: torch.Tensor) -> torch.Tensor:
    """`max(1, ||z||^2)` over the last axis: the divisor of W1's step under `hidden_norm`."""
    return z.square().sum(-1).clamp(min=1.0)


def _gelu(h):
    return F.gelu(h)  # exact (erf) GELU


def _dgelu(h):
    cdf = 0.5 * (1.0 + torch.erf(h * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + h * pdf


def _silu(h):
    return F.silu(h)


def _dsilu(h):
    s = torch.sigmoid(h)
    return s * (1.0 + h * (1.0 - s))


# module-level functions (not closures made per call), so a compiled chunk step sees the same
# function objects on every call and is not recompiled
_ACTIVATIONS = {"gelu": (_gelu, _dgelu), "silu": (_silu, _dsilu)}


def activation(name: str):
    """Return `(sigma, dsigma)` for the MLP memory; both are differentiable torch expressions."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return _ACTIVATIONS[name]


@functools.cache
def compiled(step):
    """`step` (a chunk step of an op) under `torch.compile` (inductor), built once per function.

    Inductor fuses the step's elementwise work on states and chunk tensors into a few kernels and
    plans its memory; the same compiled step serves every full chunk of every layer of one shape.
    The first call of each variant compiles (tens of seconds on CPU): a variant per shape, per
    read-head slice, per grad mode, and per which state tensors require grad (a fresh state's
    zero momentum does not), so the limit of compiled variants per function is raised to 64.
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(step, dynamic=False)


def _contiguous(x):
    if isinstance(x, torch.Tensor):
        return x.contiguous()
    if isinstance(x, tuple) and hasattr(x, "_fields"):                       # operator NamedTuples
        return type(x)(*(_contiguous(y) for y in x))
    return x


def run_step(step, args, *, compile: bool = False, recompute: bool = False, **kwargs):
    """One chunk of an op: `step(*args, **kwargs)`, compiled and/or recomputed in the backward.

    compile: through `compiled(step)`, with every tensor argument made contiguous first (a chunk
        sliced out of a segment has strides that depend on the segment's length, and an expanded
        meta-learned state has zero strides: each would be a new compiled variant).
    recompute: under `torch.utils.checkpoint` when autograd records, so that the backward keeps
        only the chunk's inputs (its start state) and recomputes the rest.
    """
    fn = step
    if compile:
        fn, args = compiled(step), tuple(_contiguous(a) for a in args)
    fn = functools.partial(fn, **kwargs)
    if recompute and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, ...] with T = N*C -> [B, H, N, C, ...]."""
    if x.dim() == 3:
        return rearrange(x, "b (n c) h -> b h n c", c=C)
    return rearrange(x, "b (n c) h d -> b h n c d", c=C)


def from_chunks(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, N*C, H, D]."""
    return rearrange(x, "b h n c d -> b (n c) h d")


def split_segments(T: int, C: int, pos: int = 0):
    """Token ranges processed with one set of chunk operators, as `(t0, t1, L, resumed)`.

    Mini-batch boundaries sit at multiples of C from the start of the stream. A call that resumes
    `pos` tokens into a chunk first finishes that chunk (`resumed=True`: its gradients are taken
    at the saved chunk-start state); then come the full chunks, then a shorter tail chunk with
    its own operators. Padding instead of a tail would corrupt the final state, since momentum is
    added at every token.
    """
    segs = []
    t0 = 0
    if pos:
        t1 = min(C - pos, T)
        segs.append((0, t1, t1, True))
        t0 = t1
    n_full = (T - t0) // C
    if n_full:
        segs.append((t0, t0 + n_full * C, C, False))
        t0 += n_full * C
    if T > t0:
        segs.append((t0, T, T - t0, False))
    return segs


def _prod_matrix(g: torch.Tensor) -> torch.Tensor:
    """Segment products `G[t, s] = prod_{r=s+1..t} g_r` for t >= s, 0 above the diagonal.

    g: [..., C] -> [..., C, C]. Built with a cumulative product down the columns of a matrix
    holding `g_t` below the diagonal and 1 elsewhere, so no division appears: exact zeros (beta = 0,
    momentum off) are fine, and so are its gradients (cumprod's backward handles zeros).
    """
    C = g.shape[-1]
    below = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    m = torch.where(below, g.unsqueeze(-1), torch.ones((), dtype=g.dtype, device=g.device))
    return torch.cumprod(m, dim=-2).tril()


class ChunkDecays(NamedTuple):
    """Scalar decay algebra of one chunk (all [..., C] or [..., C, C]; t, s index the chunk).

    The recurrence `S_t = beta_t S_{t-1} - eta_t g_t`, `Theta_t = alpha_t Theta_{t-1} + S_t + ...`
    unrolls over a chunk into
      `S_t     = P[t] S_0 - sum_{s<=t} D[t, s] eta_s g_s`
      `Theta_t = gamma[t] Theta_0 + m[t] S_0 - sum_{s<=t} E[t, s] eta_s g_s + (DGD terms)`
    """

    gamma: torch.Tensor       # [.., C]    prod_{r<=t} alpha_r
    gamma_prev: torch.Tensor  # [.., C]    gamma[t-1] (1 at t=0)
    P: torch.Tensor           # [.., C]    prod_{r<=t} beta_r
    m: torch.Tensor           # [.., C]    sum_{j<=t} Gam[t, j] P[j]: weight of S_0 in Theta_t
    m_prev: torch.Tensor      # [.., C]    m[t-1] (0 at t=0)
    Gam: torch.Tensor         # [.., C, C] prod_{r=s+1..t} alpha_r, lower incl. diagonal
    Gam_prev: torch.Tensor    # [.., C, C] Gam[t-1, s], strictly lower
    D: torch.Tensor           # [.., C, C] prod_{r=s+1..t} beta_r, lower incl. diagonal
    E: torch.Tensor           # [.., C, C] Gam @ D: weight of eta_s g_s in Theta_t
    E_prev: torch.Tensor      # [.., C, C] E[t-1, s] = Gam_prev @ D: weight in Theta_{t-1}


def chunk_decays(alpha: torch.Tensor, beta: torch.Tensor) -> ChunkDecays:
    """alpha, beta: [..., C] -> ChunkDecays (see the class for the meaning of each field)."""
    gamma = torch.cumprod(alpha, dim=-1)
    P = torch.cumprod(beta, dim=-1)
    Gam = _prod_matrix(alpha)
    D = _prod_matrix(beta)
    Gam_prev = F.pad(Gam[..., :-1, :], (0, 0, 1, 0))
    gamma_prev = F.pad(gamma[..., :-1], (1, 0), value=1.0)
    m = (Gam @ P.unsqueeze(-1)).squeeze(-1)
    m_prev = F.pad(m[..., :-1], (1, 0))
    E = Gam @ D
    E_prev = F.pad(E[..., :-1, :], (0, 0, 1, 0))  # = Gam_prev @ D: row t-1 of E
    return ChunkDecays(gamma, gamma_prev, P, m, m_prev, Gam, Gam_prev, D, E, E_prev)


class KeyedOperators(NamedTuple):
    """Precomputed (state-independent) operators of a keyed layer, stacked over the chunks of a
    segment (N axis after H); `stacked_operators` arranges them for the chunk loop.

    For a chunk with start state (Theta, S), keys K, queries Q, and per-token error vectors U (the
    gradient of token s is `u_s k_s^T`), with `KT = K Theta^T`, `KS = K S^T`, `QT`, `QS` alike:
      with DGD  `[O'; Z] = big @ [KT; KS; U]`, without `O' = -read_u @ U`, `Z = -e_last * U`
      reads    `O       = O' + gamma * QT + m * QS`          (o_t = Theta_t q_t)
      state    `Theta_C = gamma_C Theta + m_C S + Z^T K`
      momentum `S_C     = P_C S - (d_last * U)^T K`
    """

    big: Optional[torch.Tensor]     # [B, H, (N,) 2C, 3C] with DGD, else None
    read_u: Optional[torch.Tensor]  # [B, H, (N,) C, C] without DGD, else None
    e_last: torch.Tensor            # [B, H, (N,) C] E[C-1, s] eta_s
    d_last: torch.Tensor            # [B, H, (N,) C] D[C-1, s] eta_s
    gamma: torch.Tensor             # [B, H, (N,) C]
    m: torch.Tensor                 # [B, H, (N,) C]
    gamma_C: torch.Tensor           # [B, H, (N,)]
    m_C: torch.Tensor               # [B, H, (N,)]
    P_C: torch.Tensor               # [B, H, (N,)]


def keyed_operators(k, q, eta, dec: ChunkDecays, dgd: bool, geta=None) -> KeyedOperators:
    """Build the operators of a keyed layer (gradient keys = DGD keys = k).

    k, q: [B, H, N, C, D]; eta: [B, H, N, C]; dec: decays over the same chunks.

    DGD: `Theta_t = alpha_t Theta_{t-1} + S_t + y_t k_t^T` with `y_t = -eta_t Theta_{t-1} k_t`;
    expanding `Theta_{t-1} k_t` over the chunk gives the unit lower-triangular system
    `(I + diag(eta) L) Y = -diag(eta) [gamma_prev*KT + m_prev*KS - (E_prev o KK^T) diag(eta) U]`,
    `L = Gam_prev o KK^T` (strictly lower), solved once per chunk, independent of the state.

    geta: the rate of the gradient terms when it differs from the DGD factor's `eta` (the ops'
    `momentum_norm`: `(1 - beta) eta`); None means `eta`.
    """
    geta = eta if geta is None else geta
    C = k.shape[-2]
    qk = q @ k.transpose(-1, -2)                  # [.., C, C] q_t . k_s
    # reads: -sum_{s<=t} E[t,s] eta_s (k_s . q_t) u_s
    read_u = (dec.E * qk) * geta.unsqueeze(-2)    # [.., C, C]
    e_last = dec.E[..., -1, :] * geta             # [.., C] weight of -u_s in Z
    d_last = dec.D[..., -1, :] * geta             # [.., C] weight of -u_s in Zs
    big = None
    if dgd:
        eye = torch.eye(C, dtype=k.dtype, device=k.device)
        kk = k @ k.transpose(-1, -2)              # [.., C, C] k_s . k_t
        A = eye + eta.unsqueeze(-1) * (dec.Gam_prev * kk)
        # Tn = (I + diag(eta) L)^{-1} diag(-eta): Y = Tn [gamma_prev*KT + m_prev*KS - Ek U]
        Tn = torch.linalg.solve_triangular(A, torch.diag_embed(-eta), upper=False,
                                           unitriangular=True)
        Ek = (dec.E_prev * kk) * geta.unsqueeze(-2)  # [t, s]: E_prev[t,s] eta_s k_s.k_t
        # Y = X [KT; KS; U]; the reads of the y_j k_j^T terms are (Gam o QK^T) Y, and the
        # chunk-end state holds Gam[C-1, j] y_j
        X = torch.cat([Tn * dec.gamma_prev.unsqueeze(-2), Tn * dec.m_prev.unsqueeze(-2),
                       -(Tn @ Ek)], dim=-1)                     # [.., C, 3C]
        # the U block also gets the direct terms: -read_u in the reads, -e_last u_s in Z
        big = torch.cat([(dec.Gam * qk) @ X - F.pad(read_u, (2 * C, 0)),
                         dec.Gam[..., -1, :].unsqueeze(-1) * X
                         - F.pad(torch.diag_embed(e_last), (2 * C, 0))], dim=-2)  # [.., 2C, 3C]
        read_u = None
    return KeyedOperators(big, read_u, e_last, d_last, dec.gamma, dec.m, dec.gamma[..., -1],
                          dec.m[..., -1], dec.P[..., -1])


class LoopOperators(NamedTuple):
    """A keyed layer's chunk operators in the layout the chunk loop runs on (see `keyed_step`).

    The layer's weights W and momentum S are kept as two tensors (never stacked: a stacked state
    costs a copy per chunk and a 2 x 2 matrix product over the whole state, which is memory-bound
    and slow on CPU). `op` acts on the columns `[KT; KS]` (plus the error rows `U` unless folded)
    and gives `[O'; Z]`; then
      reads    `O   = O' + gamma * QT + m * QS`                (o_t = Theta_t q_t)
      weights  `W_C = gamma_C W + m_C S + Z^T K`
      momentum `S_C = P_C S - (d_last * U)^T K`
    Only the dense C x C blocks are stored (the diagonal ones are applied elementwise), which
    keeps the precomputed operators at about 4-6 C numbers per token.
    """

    op: torch.Tensor       # [B, H, (N,) 2C, 2C] (U folded) or [.., 2C, 3C] (U as a column)
    u_coef: torch.Tensor   # [B, H, (N,) 2C, C]  the U block, for folding constant parts of U
    gamma: torch.Tensor    # [B, H, (N,) C, 1]   weight of QT in the reads
    m: torch.Tensor        # [B, H, (N,) C, 1]   weight of QS in the reads
    e_last: torch.Tensor   # [B, H, (N,) C, 1]   chunk-end weights of the gradients (minus)
    d_last: torch.Tensor   # [B, H, (N,) C, 1]   momentum update weights (minus)
    gamma_C: torch.Tensor  # [B, H, (N,)]
    m_C: torch.Tensor      # [B, H, (N,)]
    P_C: torch.Tensor      # [B, H, (N,)]

    def chunks(self):
        """The per-chunk operators of operators stacked over chunks (the N axis, dim 2)."""
        return [LoopOperators(*f) for f in zip(*(x.unbind(2) for x in self))]


def loop_operators(ops: KeyedOperators, u_column: bool, u_in_kt: bool = False) -> LoopOperators:
    """Arrange KeyedOperators (stacked over chunks) into LoopOperators.

    u_column: keep U as a third column block (U computed per chunk, e.g. the MLP's delta).
    u_in_kt: the error is `U = KT - const` (the linear memory's l2 objective at the current
        state): add the U block to the KT block; the caller adds `-u_coef @ const`.
    """
    C = ops.gamma.shape[-1]
    if ops.big is not None:
        op = ops.big                                                       # [.., 2C, 3C]
    else:
        op = F.pad(torch.cat([-ops.read_u, -torch.diag_embed(ops.e_last)], dim=-2), (2 * C, 0))
    u_coef = op[..., 2 * C:]                                               # [.., 2C, C]
    if u_in_kt:
        op = op[..., :2 * C] + F.pad(u_coef, (0, C))
    elif not u_column:
        op = op[..., :2 * C]
    return LoopOperators(op, u_coef, ops.gamma.unsqueeze(-1), ops.m.unsqueeze(-1),
                         ops.e_last.unsqueeze(-1), ops.d_last.unsqueeze(-1), ops.gamma_C, ops.m_C,
                         ops.P_C)


def pair_projections(x: torch.Tensor, W: torch.Tensor, S: torch.Tensor):
    """`(x W^T, x S^T)`: x [B, H, C, Di], W, S [B, H, Do, Di] -> two [B, H, C, Do]."""
    return x @ W.transpose(-1, -2), x @ S.transpose(-1, -2)


def _dot(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`sum_ij g[b, h, i, j] x[b, h, i, j]` -> [B, H], as a batched matrix product (no temporary)."""
    B, H = g.shape[:2]
    if not (g.is_contiguous() and x.is_contiguous()):
        return (g * x).sum((-1, -2))
    return torch.bmm(g.view(B * H, 1, -1), x.view(B * H, -1, 1)).view(B, H)


class _StateStep(torch.autograd.Function):
    """`a W + b S + G^T K` with a hand-written backward: each input's gradient in one pass over the
    state (autograd's would form `g * W` and `g * S` as state-sized temporaries for the scalars'
    gradients, and clone the output gradient for the in-place accumulation)."""

    @staticmethod
    def forward(ctx, W, a, S, b, G, K):
        B, H, Do, Di = W.shape
        out = W * a[..., None, None]
        if S is not None:
            out.addcmul_(S, b[..., None, None])
        out.view(B * H, Do, Di).baddbmm_(G.transpose(-1, -2).reshape(B * H, Do, -1),
                                         K.reshape(B * H, -1, Di))
        ctx.save_for_backward(W, a, S, b, G, K)
        return out

    @staticmethod
    def backward(ctx, g):
        W, a, S, b, G, K = ctx.saved_tensors
        B, H, Do, Di = W.shape
        need = ctx.needs_input_grad
        g = g.contiguous()
        gW = g * a[..., None, None] if need[0] else None
        ga = _dot(g, W) if need[1] else None
        gS = g * b[..., None, None] if S is not None and need[2] else None
        gb = _dot(g, S) if S is not None and need[3] else None
        g3 = g.view(B * H, Do, Di)
        gG = torch.bmm(K.reshape(B * H, -1, Di), g3.transpose(-1, -2)).view(G.shape) if need[4] else None
        gK = torch.bmm(G.reshape(B * H, -1, Do), g3).view(K.shape) if need[5] else None
        return gW, ga, gS, gb, gG, gK


def state_step(W, a, S, b, G, K):
    """`a W + b S + G^T K` per batch and head, the chunk-end update of a weight or momentum.

    W: [B, H, Do, Di]; a: [B, H]; S, b: the same or None (no S term); G: [B, H, C, Do];
    K: [B, H, C, Di]. The outer products accumulate into the decayed state in place (`baddbmm_`),
    and the backward is written out (`_StateStep`) so that each gradient costs one state pass.

    Runs in W's dtype with autocast off, so under bf16 autocast a float32 state (the ops keep the
    widest of the inputs' and the initial state's dtype, `state_dtype`) stays float32; a bf16
    state would lose the small per-chunk updates (after 2,048 tokens the MLP memory's W1 / W2 were off
    by 2.6% / 2.8% from float64 with a bf16 state, 0.6% / 0.8% with this;
    `tests/ops/test_memory_facts.py::test_bf16_autocast_keeps_float32_state`).
    """
    dt = W.dtype
    with torch.autocast(W.device.type, enabled=False):
        W = torch.broadcast_to(W, (*a.shape, *W.shape[-2:]))
        if S is not None:
            S, b = torch.broadcast_to(S.to(dt), W.shape), b.to(dt)
        return _StateStep.apply(W, a.to(dt), S, b, G.to(dt), K.to(dt))


def keyed_step(lop, k, W, S, KT, KS, QT, QS, U, const=None):
    """One chunk of a keyed layer: reads and next weights and momentum.

    lop: one chunk's LoopOperators; k: [B, H, C, Di]; W, S: [B, H, Do, Di];
    KT, KS: `pair_projections` of the chunk's keys; QT, QS: those of its queries for the read
    heads, the last Hq of the H (`[B, Hq, C, Do]`, Hq = 0 reads nothing); U: [B, H, C, Do], the
    error rows (the gradient of token s is `u_s k_s^T`), used as a column when op has one and
    for the momentum update; const: [B, H, 2C, Do] added to `[O'; Z]` (folded part of U).
    Returns o [B, Hq, C, Do] (`Theta_t q_t`), the next W and the next S.
    """
    C, H, Hq = k.shape[-2], k.shape[1], QT.shape[1]
    r = slice(H - Hq, H)                                                    # the read heads
    cols = torch.cat([KT, KS, U] if lop.op.shape[-1] > 2 * C else [KT, KS], dim=-2)
    if Hq == H:
        out = lop.op @ cols                                                 # [B, H, 2C, Do]
        if const is not None:
            out = out + const
        o, Z = out[..., :C, :], out[..., C:, :]
    else:                                                                   # reads of the last Hq only
        Z = lop.op[..., C:, :] @ cols
        o = lop.op[:, r, :C, :] @ cols[:, r]
        if const is not None:
            Z, o = Z + const[..., C:, :], o + const[:, r, :C, :]
    o = o + QT * lop.gamma[:, r] + QS * lop.m[:, r]
    W_next = state_step(W, lop.gamma_C, S, lop.m_C, Z, k)
    S_next = state_step(S, lop.P_C, None, None, -lop.d_last * U, k)
    return o, W_next, S_next
