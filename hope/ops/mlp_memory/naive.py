"""Token-by-token reference of the inner learning rule on an MLP memory (SPEC sections 2, 3).

`M(x) = x + W1 sigma(W2 x)` per head, `W2: [E, D]` reads the key and carries the DGD factor,
`W1: [D, E]` gets plain retention (SPEC section 6). The loop materializes `(W1_t, W2_t)` after
every token; it is the ground truth that `chunk.py` must equal.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.checks import (DGD_LAYERS, activation, check_groups, check_inputs, dgd_rate, hidden_scale, read_heads,
                             repeat_heads, unit_code)
from hope.ops.state import MLPMemoryState, check_pos, expand_state, state_dtype


def naive_recurrent_mlp_memory(
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
    dgd_layer: str = "key",
    momentum_norm: bool = False,
    dgd_eta: Optional[torch.Tensor] = None,
    self_target: bool = False,
    groups: int = 1,
):
    """Run the inner rule token by token on a residual two-layer MLP memory.

    Args:
        q: [B, T, Hq, D] queries (read after the token's write) of the last Hq <= H heads
            (Hq = 0: the op only learns).
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
        chunk_size: C (default 32), the mini-batch: gradients of tokens in [nC, (n+1)C) are
            taken at the state after token nC - 1, counting from the start of the stream (a
            resumed state carries its position).
        dgd: apply the DGD factor to the layer `dgd_layer` names (else `alpha I` on both layers).
        dgd_layer: "key" (SPEC 3): `W2 (alpha I - eta k k^T)`, W1 plain retention; "hidden": the
            output layer in the space of hidden codes, `W1 (alpha I - eta zh zh^T)` with the unit
            code `zh = z / |z|` of the key at the chunk-start weights (`z = sigma(W2_0 k)`, the
            activation W1's gradient is taken on), W2 plain retention: a delta rule over the
            memory's features, so the erase and the write act on the same layer and code.
        objective: "l2" (`1/2 ||M(k) - v||^2`) or "dot" (`-<M(k), v>`).
        expansion: e, the hidden width E = e * D (used only to build a zero state).
        act: sigma, "gelu" (exact) or "silu".
        hidden_norm: normalize W1's step by its input: token s uses `eta_s / max(1, ||z_s||^2)`
            for W1 (`z_s = sigma(W2_0 k_s)`), so `eta ||z||^2 <= eta` as unit keys give W2 (a
            normalized-LMS step; see README.md, "Initial state and stability").

        momentum_norm: momentum as a running mean, `S_t = beta_t S_{t-1} - (1 - beta_t) eta_t g_t`,
            so a constant gradient moves the weights by at most `eta` per token whatever beta is
            (the DGD factor keeps its rate). Off: SPEC 3's `S_t = beta_t S_{t-1} - eta_t g_t`.
        dgd_eta: [B, T, H] rate of the DGD factor, `alpha I - dgd_eta k k^T`, when it differs from
            the write's `eta` (a layer's `mean_step` divides only the write's rate; a rate above
            `alpha` gives the factor a negative eigenvalue along `k`, range (0, 2)); None: `eta`.
        self_target: the target of token t is the memory's own read of `v_t` at the start of its
            mini-batch, `M_c(v_t) = v_t + W1_0 sigma(W2_0 v_t)` (Hope's self-generated targets,
            SPEC 4.2); the outer gradient reaches the chunk-start weights through it.
        groups: `groups` memories stacked on the state's head axis (memory-major) learn from the same
            inputs of H heads: the inputs repeated `groups` times on the head axis (no read heads).
    Returns:
        o: [B, T, Hq, D] reads `o_t = q_t + W1_t sigma(W2_t q_t)`.
        final_state: MLPMemoryState(W1, W2, S1, S2, W1_chunk, W2_chunk, pos) with full batch
            shapes (the *_chunk are None when the call ends on a chunk boundary), or None.
    """
    groups = check_groups(groups, q)
    k, v, eta, alpha, beta, dgd_eta = repeat_heads(groups, k, v, eta, alpha, beta, dgd_eta)
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    dgd_eta = dgd_rate(dgd_eta, eta)
    if dgd_layer not in DGD_LAYERS:
        raise ValueError(f"dgd_layer must be one of {DGD_LAYERS}, got {dgd_layer!r}")
    sigma, dsigma = activation(act)
    st = initial_state if initial_state is not None else MLPMemoryState(None, None)
    pos = check_pos(st.pos, chunk_size, st.W1_chunk is not None and st.W2_chunk is not None)
    sd = state_dtype(st, q)                                              # state dtype
    E = st.W2.shape[-2] if st.W2 is not None else expansion * D
    W1 = expand_state(st.W1, (B, H, D, E), q, sd)
    W2 = expand_state(st.W2, (B, H, E, D), q, sd)
    S1 = expand_state(st.S1, (B, H, D, E), q, sd)
    S2 = expand_state(st.S2, (B, H, E, D), q, sd)
    W1_0 = expand_state(st.W1_chunk, (B, H, D, E), q, sd) if pos else W1
    r = read_heads(q, H)
    W2_0 = expand_state(st.W2_chunk, (B, H, E, D), q, sd) if pos else W2

    def mv(W, x):
        return torch.einsum("bhij,bhj->bhi", W, x)

    def outer(a, b):
        return a[..., :, None] * b[..., None, :]

    outs = []
    for t in range(T):
        if (pos + t) % chunk_size == 0:
            W1_0, W2_0 = W1, W2                                  # chunk-start state Theta_{c(t)}
        k_t, v_t, q_t = k[:, t], v[:, t], q[:, t]                # [B, H, D]
        if self_target:                                          # M_c(v_t)
            v_t = v_t + mv(W1_0, sigma(mv(W2_0, v_t)))
        eta_t, alpha_t, beta_t, dgd_t = (x[:, t, :, None, None] for x in (eta, alpha, beta, dgd_eta))
        # g_t = grad_(W1, W2) l(W1_0, W2_0; k_t, v_t) by backpropagation through the MLP
        h_t = mv(W2_0, k_t)                                      # [B, H, E]
        z_t = sigma(h_t)
        if objective == "l2":
            err_t = k_t + mv(W1_0, z_t) - v_t                    # dl/dM(k) = M(k) - v
        else:
            err_t = -v_t                                         # dl/dM(k) = -v
        # delta_t = (W1_0^T err_t) * sigma'(h_t), the error at W2's output
        delta_t = torch.einsum("bhij,bhi->bhj", W1_0, err_t) * dsigma(h_t)
        err1_t = err_t / hidden_scale(z_t)[..., None] if hidden_norm else err_t
        g1_t = outer(err1_t, z_t)                                # [B, H, D, E]
        g2_t = outer(delta_t, k_t)                               # [B, H, E, D]
        # S_t = beta_t S_{t-1} - eta_t g_t
        grad_rate_t = eta_t * (1 - beta_t) if momentum_norm else eta_t
        S1 = beta_t * S1 - grad_rate_t * g1_t
        S2 = beta_t * S2 - grad_rate_t * g2_t
        # Theta_t = Theta_{t-1} A_t + S_t: W1 plain retention, W2 DGD when enabled
        W1A, W2A = alpha_t * W1, alpha_t * W2
        if dgd and dgd_layer == "key":
            W2A = W2A - dgd_t * outer(mv(W2, k_t), k_t)          # W2 (alpha I - dgd_eta k k^T)
        elif dgd:
            zh_t = unit_code(z_t)[0]
            W1A = W1A - dgd_t * outer(mv(W1, zh_t), zh_t)        # W1 (alpha I - dgd_eta zh zh^T)
        W1 = W1A + S1
        W2 = W2A + S2
        # o_t = M_{Theta_t}(q_t)
        outs.append(q_t + mv(W1[:, r], sigma(mv(W2[:, r], q_t))))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, q.shape[2], D)
    pos_end = (pos + T) % chunk_size
    final = MLPMemoryState(W1, W2, S1, S2, W1_0 if pos_end else None, W2_0 if pos_end else None,
                           pos_end)
    return o, (final if output_final_state else None)
