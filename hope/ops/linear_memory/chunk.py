"""Chunk-parallel inner learning rule on a linear memory (SPEC section 3; derivation in README.md).

Every state-independent quantity (decays, the DGD triangular solve, the read operators, and
the values' share of the error) is built for all chunks at once; the loop over chunks then runs
a few matrix products per chunk (`pair_projections`, `keyed_step` in `hope/ops/operators.py`)
on the weights W and momentum S. It equals `naive_recurrent_linear_memory` to rounding.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.checks import check_inputs, dgd_rate, operator_queries, read_heads
from hope.ops.chunking import from_chunks, run_segment, run_step, split_segments, to_chunks
from hope.ops.operators import chunk_decays, keyed_operators, keyed_step, loop_operators, pair_projections
from hope.ops.state import LinearMemoryState, check_pos, expand_state, state_dtype


def chunk_linear_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    initial_state: Optional[LinearMemoryState] = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
    dgd: bool = True,
    objective: str = "l2",
    momentum_norm: bool = False,
    dgd_eta: Optional[torch.Tensor] = None,
    recompute: bool = False,
    compile: bool = False,
    self_target: bool = False,
):
    """Chunk-parallel inner rule on a linear memory; same contract as the naive form.

    Args:
        q: [B, T, Hq, D] queries (read after the token's write) of the last Hq <= H heads:
            only those heads are read (Hq = 0: the op only learns), the others cost no read.
        k: [B, T, H, D] keys.
        v: [B, T, H, D] values (targets).
        eta: [B, T, H] inner learning rate, documented range (0, 1) for unit-norm keys
            (see README.md).
        alpha: [B, T, H] retention in (0, 1]; 1 keeps everything.
        beta: [B, T, H] momentum in [0, 1); 0 disables momentum.
        initial_state: LinearMemoryState with W, S broadcastable to [B, H, D, D] (e.g. a
            meta-learned [H, D, D]); S may be None. None means W = 0, S = 0. A state returned
            by a previous call resumes it exactly, also in the middle of a chunk.
        output_final_state: return the state after the last token.
        chunk_size: C (default 32), the mini-batch (gradients at the chunk-start state, chunks
            counted from the start of the stream) and the parallel block.
        dgd: apply the Delta Gradient Descent factor `alpha I - eta k k^T` (else `alpha I`).
        objective: "l2" (`1/2 ||W k - v||^2`) or "dot" (`-<W k, v>`).

        momentum_norm: momentum as a running mean, `S_t = beta_t S_{t-1} - (1 - beta_t) eta_t g_t`,
            so a constant gradient moves the weights by at most `eta` per token whatever beta is
            (the DGD factor keeps its rate). Off: SPEC 3's `S_t = beta_t S_{t-1} - eta_t g_t`.
        dgd_eta: [B, T, H] rate of the DGD factor, `alpha I - dgd_eta k k^T`, when it differs from
            the write's `eta` (a layer's `mean_step` divides only the write's rate; a rate above
            `alpha` gives the factor a negative eigenvalue along `k`, range (0, 2)); None: `eta`.
        recompute: save only each chunk's start state for the backward and recompute the chunk
            there (`hope.ops.recompute.recompute_region`; see `chunk_mlp_memory`).
        compile: run the per-chunk step under `torch.compile` (`hope.ops.chunking.compiled`); the
            results equal eager to float rounding (tests/ops/test_compile.py).
        self_target: the target of token t is the memory's own read of `v_t` at its chunk-start
            weights, `W_c v_t` (Hope's self-generated targets, SPEC 4.2), formed in the chunk step:
            the l2 error is `W_c (k - v)`, one product (the outer gradient reaches W_c through it).
    Returns:
        o: [B, T, Hq, D] reads `o_t = W_t q_t` of the last Hq heads.
        final_state: LinearMemoryState(W, S, W_chunk, pos), tensors [B, H, D, D] (W_chunk None
            when the call ends on a chunk boundary), or None.
    """
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    dgd_eta = dgd_rate(dgd_eta, eta)
    st = initial_state if initial_state is not None else LinearMemoryState(None)
    C = int(chunk_size)
    pos = check_pos(st.pos, C, st.W_chunk is not None)
    sd = state_dtype(st, q)                                              # state dtype
    W, S = (expand_state(x, (B, H, D, D), q, sd) for x in (st.W, st.S))  # [B, H, D, D]
    W0 = expand_state(st.W_chunk, (B, H, D, D), q, sd) if pos else None
    r, q_ops = read_heads(q, H), operator_queries(q, k)
    seg_kw = dict(dgd=dgd, momentum_norm=momentum_norm, compile=compile, r=r, objective=objective,
                  self_target=self_target)
    outs = []
    for t0, t1, L, resumed in split_segments(T, C, pos):
        seg, (W, S), (W0,) = run_segment(
            _linear_segment, (W, S), (W0 if resumed else None,),
            [x[:, t0:t1] for x in (q, k, v, q_ops, eta, alpha, beta, dgd_eta)], L, recompute=recompute,
            full=L == C, **seg_kw)
        outs += seg
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, q.shape[2], D)
    pos_end = (pos + T) % C
    final = LinearMemoryState(W, S, W0 if pos_end else None, pos_end)
    return o, (final if output_final_state else None)


def _linear_segment(W, S, W0, q, k, v, q_ops, eta, alpha, beta, dgd_eta, *, L, full, dgd, momentum_norm,
                    compile, r, objective, self_target):
    """Chunks of L tokens `[B, N*L, ...]` from state (W, S): the operators of all of them at once
    (state-independent), then the chunk loop. W0: the chunk-start weights when the segment resumes
    inside a chunk, else None; full: L is the chunk size (else a tail chunk).
    Returns (reads [B, N*L, Hq, D], W, S, the last chunk's start weights)."""
    qc, kc, vc, qoc = (to_chunks(x, L) for x in (q, k, v, q_ops))           # [B, H, N, L, D]
    etac, alphac, betac, dgdc = (to_chunks(x, L) for x in (eta, alpha, beta, dgd_eta))
    ops = keyed_operators(kc, qoc, dgdc, chunk_decays(alphac, betac), dgd,
                          etac * (1 - betac) if momentum_norm else etac)
    # the error u_s = W0 k_s - v_s (l2) or -v_s (dot): fold it into the operator, except
    # when W0 is a saved chunk-start state that differs from the current weights, or when the
    # targets are the memory's own reads (u_s = W0 (k_s - v_s), formed in the chunk step)
    fresh = W0 is None
    fold = fresh and not self_target
    lops = loop_operators(ops, u_column=not fold, u_in_kt=fold and objective == "l2")
    const = -(lops.u_coef @ vc) if fold else None                          # [B, H, N, 2L, D]
    consts = const.unbind(2) if fold else [None] * kc.shape[2]
    seg = []
    for lop, c_n, k_n, q_n, v_n in zip(lops.chunks(), consts, kc.unbind(2), qc.unbind(2),
                                       vc.unbind(2)):
        # compiled: the fast path only (full chunks from a chunk boundary)
        o, W, S, W0 = run_step(_linear_chunk, (W, S, None if fresh else W0, lop, c_n, k_n, q_n, v_n),
                               compile=compile and fresh and full, r=r, objective=objective,
                               self_target=self_target)
        seg.append(o)
    return from_chunks(torch.stack(seg, dim=2)), W, S, W0


def _linear_chunk(W, S, W0, lop, c_n, k_n, q_n, v_n, *, r, objective, self_target):
    """One chunk of the linear memory: reads `[B, Hq, L, D]`, the next W and S, and the chunk-start
    weights (W0 when the call resumed inside this chunk, else W). The error is U = W0 k - v, or
    W0 (k - v) under self_target (-v and -W0 v under the dot objective); fold: the operator
    already holds it (c_n its constant part) and U serves the momentum update only."""
    KT, KS = pair_projections(k_n, W, S)
    QT, QS = pair_projections(q_n, W[:, r], S[:, r])
    if W0 is None:
        W0 = W                                                                  # chunk-start state
    if self_target:
        U = ((k_n - v_n) @ W0.transpose(-1, -2) if objective == "l2"
             else -(v_n @ W0.transpose(-1, -2)))
    else:                                  # (also for the momentum when the error is folded)
        K_start = KT if W0 is W else k_n @ W0.transpose(-1, -2)
        U = K_start - v_n if objective == "l2" else -v_n
    o, W_next, S_next = keyed_step(lop, k_n, W, S, KT, KS, QT, QS, U, const=c_n)
    return o, W_next, S_next, W0
