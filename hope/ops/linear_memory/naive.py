"""Token-by-token reference of the inner learning rule on a linear memory (SPEC sections 2, 3).

`M(x) = W x` per head with `W: [D_out, D_in]`, trained in context by the general rule of SPEC
section 3 (paper Eq. 88 with Titans momentum), materializing `W_t` after every token. This is the
ground truth that `chunk.py` must equal; it favours transcription over speed.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.checks import check_inputs, dgd_rate, read_heads
from hope.ops.state import LinearMemoryState, check_pos, expand_state, state_dtype


def naive_recurrent_linear_memory(
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
    self_target: bool = False,
):
    """Run the inner rule token by token on a linear memory.

    Args:
        q: [B, T, Hq, D] queries (read after the token's write) of the last Hq <= H heads
            (Hq = 0: the op only learns).
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
        chunk_size: C (default 32), the mini-batch: gradients of tokens in [nC, (n+1)C) are
            taken at the state after token nC - 1, counting from the start of the stream (a
            resumed state carries its position).
        dgd: apply the Delta Gradient Descent factor `alpha I - eta k k^T` (else `alpha I`).
        objective: "l2" (`1/2 ||W k - v||^2`) or "dot" (`-<W k, v>`).

        momentum_norm: momentum as a running mean, `S_t = beta_t S_{t-1} - (1 - beta_t) eta_t g_t`,
            so a constant gradient moves the weights by at most `eta` per token whatever beta is
            (the DGD factor keeps its rate). Off: SPEC 3's `S_t = beta_t S_{t-1} - eta_t g_t`.
        dgd_eta: [B, T, H] rate of the DGD factor, `alpha I - dgd_eta k k^T`, when it differs from
            the write's `eta` (a layer's `mean_step` divides only the write's rate; a rate above
            `alpha` gives the factor a negative eigenvalue along `k`, range (0, 2)); None: `eta`.
        self_target: the target of token t is the memory's own read of `v_t` at the start of its
            mini-batch, `W_c v_t` (Hope's self-generated targets, SPEC 4.2).
    Returns:
        o: [B, T, Hq, D] reads `o_t = W_t q_t`.
        final_state: LinearMemoryState(W, S, W_chunk, pos), tensors [B, H, D, D] (W_chunk None
            when the call ends on a chunk boundary), or None.
    """
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    dgd_eta = dgd_rate(dgd_eta, eta)
    st = initial_state if initial_state is not None else LinearMemoryState(None)
    pos = check_pos(st.pos, chunk_size, st.W_chunk is not None)
    sd = state_dtype(st, q)                                              # state dtype
    W = expand_state(st.W, (B, H, D, D), q, sd)
    S = expand_state(st.S, (B, H, D, D), q, sd)
    W0 = expand_state(st.W_chunk, (B, H, D, D), q, sd) if pos else W
    r = read_heads(q, H)
    outs = []
    for t in range(T):
        if (pos + t) % chunk_size == 0:
            W0 = W                                               # chunk-start state Theta_{c(t)}
        k_t, v_t, q_t = k[:, t], v[:, t], q[:, t]                # [B, H, D]
        if self_target:                                          # M_c(v_t) = W0 v_t
            v_t = torch.einsum("bhij,bhj->bhi", W0, v_t)
        eta_t, alpha_t, beta_t, dgd_t = (x[:, t, :, None, None] for x in (eta, alpha, beta, dgd_eta))
        # g_t = grad_W l(W0; k_t, v_t) = u_t k_t^T
        if objective == "l2":
            u_t = torch.einsum("bhij,bhj->bhi", W0, k_t) - v_t   # W0 k_t - v_t
        else:
            u_t = -v_t
        g_t = u_t[..., :, None] * k_t[..., None, :]
        # S_t = beta_t S_{t-1} - eta_t g_t
        S = beta_t * S - (eta_t * (1 - beta_t) if momentum_norm else eta_t) * g_t
        # W_t = W_{t-1} A_t + S_t, A_t = alpha_t I - dgd_eta_t k_t k_t^T (DGD) or alpha_t I
        WA = alpha_t * W
        if dgd:
            Wk = torch.einsum("bhij,bhj->bhi", W, k_t)
            WA = WA - dgd_t * Wk[..., :, None] * k_t[..., None, :]
        W = WA + S
        # o_t = W_t q_t
        outs.append(torch.einsum("bhij,bhj->bhi", W[:, r], q_t))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, q.shape[2], D)
    pos_end = (pos + T) % chunk_size
    final = LinearMemoryState(W, S, W0 if pos_end else None, pos_end)
    return o, (final if output_final_state else None)
