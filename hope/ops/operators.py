"""The state-independent chunk algebra shared by `linear_memory/chunk.py` and `mlp_memory/chunk.py`
(SPEC section 3; the derivation is in `linear_memory/README.md`).

* `ChunkDecays`: the within-chunk decay matrices of retention (alpha) and momentum (beta);
* `KeyedOperators` / `LoopOperators`: the operators of a "keyed" layer, a weight matrix whose
  gradients are rank-1 terms `u_s k_s^T` on the same keys its DGD factor uses, built for all
  chunks of a segment at once, and arranged for the chunk loop;
* `keyed_step`: one chunk of a keyed layer from its start state (a few batched products).

Conventions: a weight maps `x -> W x` with `W: [D_out, D_in]`; batched states are
`[B, H, D_out, D_in]`. Chunked tensors are `[B, H, N, C, ...]`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from hope.ops.state import state_step


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
      with DGD  `[O'; Z] = dgd_op @ [KT; KS; U]`, without `O' = -read_u @ U`, `Z = -e_last * U`
      reads    `O       = O' + gamma * QT + m * QS`          (o_t = Theta_t q_t)
      state    `Theta_C = gamma_C Theta + m_C S + Z^T K`
      momentum `S_C     = P_C S - (d_last * U)^T K`
    """

    dgd_op: Optional[torch.Tensor]     # [B, H, (N,) 2C, 3C] with DGD, else None
    read_u: Optional[torch.Tensor]  # [B, H, (N,) C, C] without DGD, else None
    e_last: torch.Tensor            # [B, H, (N,) C] E[C-1, s] eta_s
    d_last: torch.Tensor            # [B, H, (N,) C] D[C-1, s] eta_s
    gamma: torch.Tensor             # [B, H, (N,) C]
    m: torch.Tensor                 # [B, H, (N,) C]
    gamma_C: torch.Tensor           # [B, H, (N,)]
    m_C: torch.Tensor               # [B, H, (N,)]
    P_C: torch.Tensor               # [B, H, (N,)]


def keyed_operators(k, q, eta, dec: ChunkDecays, dgd: bool, grad_rate=None) -> KeyedOperators:
    """Build the operators of a keyed layer (gradient keys = DGD keys = k).

    k, q: [B, H, N, C, D]; eta: [B, H, N, C], the DGD factor's rate; dec: decays over the same chunks.

    DGD: `Theta_t = alpha_t Theta_{t-1} + S_t + y_t k_t^T` with `y_t = -eta_t Theta_{t-1} k_t`;
    expanding `Theta_{t-1} k_t` over the chunk gives the unit lower-triangular system
    `(I + diag(eta) L) Y = -diag(eta) [gamma_prev*KT + m_prev*KS - (E_prev o KK^T) diag(eta) U]`,
    `L = Gam_prev o KK^T` (strictly lower), solved once per chunk, independent of the state.

    grad_rate: the rate of the gradient terms when it differs from the DGD factor's `eta` (the ops'
    `momentum_norm`: `(1 - beta) eta`; their `dgd_eta`: the write keeps its own rate); None means `eta`.
    """
    grad_rate = eta if grad_rate is None else grad_rate
    C = k.shape[-2]
    qk = q @ k.transpose(-1, -2)                  # [.., C, C] q_t . k_s
    # reads: -sum_{s<=t} E[t,s] eta_s (k_s . q_t) u_s
    read_u = (dec.E * qk) * grad_rate.unsqueeze(-2)    # [.., C, C]
    e_last = dec.E[..., -1, :] * grad_rate             # [.., C] weight of -u_s in Z
    d_last = dec.D[..., -1, :] * grad_rate             # [.., C] weight of -u_s in Zs
    dgd_op = None
    if dgd:
        eye = torch.eye(C, dtype=k.dtype, device=k.device)
        kk = k @ k.transpose(-1, -2)              # [.., C, C] k_s . k_t
        A = eye + eta.unsqueeze(-1) * (dec.Gam_prev * kk)
        # Tn = (I + diag(eta) L)^{-1} diag(-eta): Y = Tn [gamma_prev*KT + m_prev*KS - Ek U]
        Tn = torch.linalg.solve_triangular(A, torch.diag_embed(-eta), upper=False,
                                           unitriangular=True)
        Ek = (dec.E_prev * kk) * grad_rate.unsqueeze(-2)  # [t, s]: E_prev[t,s] eta_s k_s.k_t
        # Y = X [KT; KS; U]; the reads of the y_j k_j^T terms are (Gam o QK^T) Y, and the
        # chunk-end state holds Gam[C-1, j] y_j
        X = torch.cat([Tn * dec.gamma_prev.unsqueeze(-2), Tn * dec.m_prev.unsqueeze(-2),
                       -(Tn @ Ek)], dim=-1)                     # [.., C, 3C]
        # the U block also gets the direct terms: -read_u in the reads, -e_last u_s in Z
        dgd_op = torch.cat([(dec.Gam * qk) @ X - F.pad(read_u, (2 * C, 0)),
                         dec.Gam[..., -1, :].unsqueeze(-1) * X
                         - F.pad(torch.diag_embed(e_last), (2 * C, 0))], dim=-2)  # [.., 2C, 3C]
        read_u = None
    return KeyedOperators(dgd_op, read_u, e_last, d_last, dec.gamma, dec.m, dec.gamma[..., -1],
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
    if ops.dgd_op is not None:
        op = ops.dgd_op                                                       # [.., 2C, 3C]
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
