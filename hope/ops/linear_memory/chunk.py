"""Chunk-parallel inner learning rule on a linear memory (SPEC section 3; derivation in README.md).

Every state-independent quantity (decays, the DGD triangular solve, the read operators) is built
for all chunks at once; the loop over chunks then costs three matrix products per chunk
(`keyed_products`, `keyed_apply`, shared with the MLP memory's W2). It
equals `naive_recurrent_linear_memory` to rounding.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.utils import (LinearMemoryState, check_inputs, check_pos, chunk_decays, expand_state,
                            from_chunks, keyed_operators, split_segments, to_chunks,
                            unbind_chunks)


def keyed_products(W, S, k, q):
    """KT = K W^T, KS = K S^T, QT = Q W^T, QS = Q S^T in one product.

    W, S: [B, H, Do, Di]; k, q: [B, H, C, Di] -> four [B, H, C, Do].
    """
    C, Do = k.shape[-2], W.shape[-2]
    prods = torch.cat([k, q], dim=-2) @ torch.cat([W, S], dim=-2).transpose(-1, -2)
    return prods[..., :C, :Do], prods[..., :C, Do:], prods[..., C:, :Do], prods[..., C:, Do:]


def keyed_apply(ops, W, S, k, KT, KS, QT, QS, U):
    """Reads and next state of a keyed layer over one chunk (ops: per-chunk KeyedOperators).

    U: [B, H, C, Do], the gradient of token s is `u_s k_s^T`. Returns o [B, H, C, Do], W, S.
    """
    C, Do = k.shape[-2], W.shape[-2]
    if ops.big is not None:
        out = ops.big @ torch.cat([KT, KS, U], dim=-2)            # [B, H, 2C, Do]
        o, Z = out[..., :C, :], out[..., C:, :]
        Z = Z - ops.e_last.unsqueeze(-1) * U
    else:
        o, Z = -(ops.read_u @ U), -ops.e_last.unsqueeze(-1) * U
    o = o + ops.gamma.unsqueeze(-1) * QT + ops.m.unsqueeze(-1) * QS
    Zs = -ops.d_last.unsqueeze(-1) * U
    upd = torch.cat([Z, Zs], dim=-1).transpose(-1, -2) @ k       # [B, H, 2Do, Di]
    W_new = ops.gamma_C[..., None, None] * W + ops.m_C[..., None, None] * S + upd[..., :Do, :]
    S_new = ops.P_C[..., None, None] * S + upd[..., Do:, :]
    return o, W_new, S_new


def chunk_linear_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    initial_state: Optional[LinearMemoryState] = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    dgd: bool = True,
    objective: str = "l2",
):
    """Chunk-parallel inner rule on a linear memory; same contract as the naive form.

    Args:
        q: [B, T, H, D] queries (read after the token's write).
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
        chunk_size: C, the mini-batch and the parallel block (gradients at the chunk-start state).
        dgd: apply the Delta Gradient Descent factor `alpha I - eta k k^T` (else `alpha I`).
        objective: "l2" (`1/2 ||W k - v||^2`) or "dot" (`-<W k, v>`).

    Returns:
        o: [B, T, H, D] reads `o_t = W_t q_t`.
        final_state: LinearMemoryState(W, S, W_chunk, pos), tensors [B, H, D, D] (W_chunk None
            when the call ends on a chunk boundary), or None.
    """
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    st = initial_state if initial_state is not None else LinearMemoryState(None)
    C = int(chunk_size)
    pos = check_pos(st.pos, C, st.W_chunk is not None)
    W = expand_state(st.W, (B, H, D, D), q)
    S = expand_state(st.S, (B, H, D, D), q)
    W0 = expand_state(st.W_chunk, (B, H, D, D), q) if pos else W
    outs = []
    for t0, t1, L, resumed in split_segments(T, C, pos):
        qc, kc, vc = (to_chunks(x[:, t0:t1], L) for x in (q, k, v))         # [B, H, N, L, D]
        etac, alphac, betac = (to_chunks(x[:, t0:t1], L) for x in (eta, alpha, beta))
        ops = unbind_chunks(keyed_operators(kc, qc, etac, chunk_decays(alphac, betac), dgd))
        seg = []
        for ops_n, k_n, q_n, v_n in zip(ops, kc.unbind(2), qc.unbind(2), vc.unbind(2)):
            if not resumed:
                W0 = W                                                      # chunk-start state
            KT, KS, QT, QS = keyed_products(W, S, k_n, q_n)
            if objective == "l2":
                KT0 = KT if W0 is W else k_n @ W0.transpose(-1, -2)
                U = KT0 - v_n                                               # W0 k_s - v_s
            else:
                U = -v_n
            o, W, S = keyed_apply(ops_n, W, S, k_n, KT, KS, QT, QS, U)
            seg.append(o)
        outs.append(from_chunks(torch.stack(seg, dim=2)))
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, H, D)
    pos_end = (pos + T) % C
    final = LinearMemoryState(W, S, W0 if pos_end else None, pos_end)
    return o, (final if output_final_state else None)
