"""Chunk-parallel inner learning rule on an MLP memory (SPEC section 3; derivation in README.md).

`M(x) = x + W1 sigma(W2 x)`. Per chunk the read is two chained linear-memory reads: W2 (a keyed
layer with DGD, operators built for all chunks at once, see `hope/ops/utils.py`) read with q,
then W1 (plain retention, gradient keys `z_s = sigma(W2_0 k_s)`) read with `sigma(W2_t q_t)`:
the TTT "dual form", a masked C x C product per chunk, with no per-token weights.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.utils import (MLPMemoryState, activation, check_inputs, check_pos, chunk_decays,
                            expand_state, from_chunks, hidden_scale, keyed_operators, split_segments,
                            stacked_operators, stacked_projections, stacked_step, to_chunks,
                            StackedOperators)


def chunk_mlp_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    initial_state: Optional[MLPMemoryState] = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
    dgd: bool = True,
    objective: str = "l2",
    expansion: int = 2,
    act: str = "gelu",
    hidden_norm: bool = False,
    momentum_norm: bool = False,
):
    """Chunk-parallel inner rule on a residual two-layer MLP memory; same contract as naive.

    Args:
        q: [B, T, H, D] queries (read after the token's write).
        k: [B, T, H, D] keys.
        v: [B, T, H, D] values (targets).
        eta: [B, T, H] inner learning rate, documented range (0, 1/2) (see README.md).
        alpha: [B, T, H] retention in (0, 1]; 1 keeps everything.
        beta: [B, T, H] momentum in [0, 1); 0 disables momentum.
        initial_state: MLPMemoryState, W1/S1 broadcastable to [B, H, D, E], W2/S2 to
            [B, H, E, D] with E = expansion * D; S1, S2 may be None. None means all zeros,
            the identity memory, which is a fixed point of the rule (with W1 = W2 = 0 every
            gradient vanishes): to learn, start from W2 != 0 (e.g. a meta-learned random W2 with
            W1 = 0, still the identity). A state returned by a previous call resumes it exactly,
            also in the middle of a chunk.
        output_final_state: return the state after the last token.
        chunk_size: C (default 32), the mini-batch (gradients at the chunk-start state, chunks
            counted from the start of the stream) and the parallel block.
        dgd: apply `alpha I - eta k k^T` to W2 (else `alpha I`); W1 always gets `alpha I`.
        objective: "l2" (`1/2 ||M(k) - v||^2`) or "dot" (`-<M(k), v>`).
        expansion: e, the hidden width E = e * D (used only to build a zero state).
        act: sigma, "gelu" (exact) or "silu".
        hidden_norm: W1's step for token s uses `eta_s / max(1, ||z_s||^2)` (see naive.py).

        momentum_norm: momentum as a running mean, `S_t = beta_t S_{t-1} - (1 - beta_t) eta_t g_t`,
            so a constant gradient moves the weights by at most `eta` per token whatever beta is
            (the DGD factor keeps `eta`). Off: SPEC 3's `S_t = beta_t S_{t-1} - eta_t g_t`.
    Returns:
        o: [B, T, H, D] reads `o_t = q_t + W1_t sigma(W2_t q_t)`.
        final_state: MLPMemoryState(W1, W2, S1, S2, W1_chunk, W2_chunk, pos) with full batch
            shapes (the *_chunk are None when the call ends on a chunk boundary), or None.
    """
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    sigma, dsigma = activation(act)
    st = initial_state if initial_state is not None else MLPMemoryState(None, None)
    C = int(chunk_size)
    pos = check_pos(st.pos, C, st.W1_chunk is not None and st.W2_chunk is not None)
    E = st.W2.shape[-2] if st.W2 is not None else expansion * D
    # stacked states [W; S]: WS1 [B, H, 2, D, E], WS2 [B, H, 2, E, D]
    WS1 = torch.stack([expand_state(st.W1, (B, H, D, E), q),
                       expand_state(st.S1, (B, H, D, E), q)], dim=2)
    WS2 = torch.stack([expand_state(st.W2, (B, H, E, D), q),
                       expand_state(st.S2, (B, H, E, D), q)], dim=2)
    if pos:
        W1_0 = expand_state(st.W1_chunk, (B, H, D, E), q)
        W2_0 = expand_state(st.W2_chunk, (B, H, E, D), q)
    outs = []
    for t0, t1, L, resumed in split_segments(T, C, pos):
        qc, kc, vc = (to_chunks(x[:, t0:t1], L) for x in (q, k, v))         # [B, H, N, L, D]
        etac, alphac, betac = (to_chunks(x[:, t0:t1], L) for x in (eta, alpha, beta))
        dec = chunk_decays(alphac, betac)
        getac = etac * (1 - betac) if momentum_norm else etac              # rate of the gradients
        ops = keyed_operators(kc, qc, etac, dec, dgd, getac)               # W2: keys k, queries q
        sops = stacked_operators(ops, u_column=True)
        # W1 (no DGD): W1_t = gamma_t W1' + m_t S1' - sum_{s<=t} E[t,s] eta_s err_s z_s^T
        e_eta = dec.E * getac.unsqueeze(-2)                                  # [B, H, N, L, L]
        upd1 = -torch.stack([ops.e_last, ops.d_last], dim=2).unsqueeze(-1)   # [B, H, 2, N, L, 1]
        per_chunk = [StackedOperators(*f) for f in zip(*(x.unbind(2) for x in sops))]
        seg = []
        for sop, k_n, q_n, v_n, ee_n, u1_n in zip(per_chunk, kc.unbind(2), qc.unbind(2),
                                                  vc.unbind(2), e_eta.unbind(2), upd1.unbind(3)):
            KTS, QTS = stacked_projections(k_n, WS2), stacked_projections(q_n, WS2)
            if not resumed:
                W1_0, W2_0 = WS1[:, :, 0], WS2[:, :, 0]                     # chunk-start state
                h = KTS[:, :, 0]                                            # W2_0 k_s
            else:
                h = k_n @ W2_0.transpose(-1, -2)
            # gradients at the chunk-start state, for the whole chunk
            z = sigma(h)                                                    # [B, H, L, E]
            err = k_n + z @ W1_0.transpose(-1, -2) - v_n if objective == "l2" else -v_n
            delta = (err @ W1_0) * dsigma(h)                                # W2's error
            if hidden_norm:                                                 # W1's step / ||z||^2
                err = err / hidden_scale(z).unsqueeze(-1)
            # W2 (keyed, DGD): hq_t = W2_t q_t
            hq, WS2 = stacked_step(sop, k_n, WS2, KTS, QTS, delta)
            # W1, dual form: o1_t = W1_t sigma(hq_t)
            zq = sigma(hq)                                                  # [B, H, L, E]
            QW = stacked_projections(zq, WS1)                               # [B, H, 2, L, D]
            o1 = (QW * sop.read).sum(2) - (ee_n * (zq @ z.transpose(-1, -2))) @ err
            upd = (u1_n * err.unsqueeze(2)).transpose(-1, -2) @ z.unsqueeze(2)     # [B, H, 2, D, E]
            WS1 = (sop.mix @ WS1.flatten(-2)).unflatten(-1, (D, E)) + upd
            seg.append(q_n + o1)
        outs.append(from_chunks(torch.stack(seg, dim=2)))
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, H, D)
    (W1, S1), (W2, S2) = WS1.unbind(2), WS2.unbind(2)
    pos_end = (pos + T) % C
    final = MLPMemoryState(W1, W2, S1, S2, W1_0 if pos_end else None, W2_0 if pos_end else None,
                           pos_end)
    return o, (final if output_final_state else None)
