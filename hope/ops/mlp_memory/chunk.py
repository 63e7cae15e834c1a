"""Chunk-parallel inner learning rule on an MLP memory (SPEC section 3; derivation in README.md).

`M(x) = x + W1 sigma(W2 x)`. Per chunk the read is two chained linear-memory reads: W2 (a keyed
layer with DGD, operators built for all chunks at once, see `hope/ops/operators.py`) read with q,
then W1 (plain retention, gradient keys `z_s = sigma(W2_0 k_s)`) read with `sigma(W2_t q_t)`:
the TTT "dual form", a masked C x C product per chunk, with no per-token weights.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

from typing import Optional

import torch

from hope.ops.checks import (DGD_LAYERS, activation, check_groups, check_inputs, dgd_rate, hidden_scale,
                             operator_queries, read_heads, repeat_heads, unit_code)
from hope.ops.chunking import from_chunks, run_segment, run_step, split_segments, to_chunks
from hope.ops.mlp_memory.learn_step import learn_chunk
from hope.ops.operators import (ChunkDecays, chunk_decays, keyed_operators, keyed_step, loop_operators,
                               pair_projections)
from hope.ops.state import MLPMemoryState, check_pos, expand_state, state_dtype, state_step

# the written-out learn-only chunk step (`learn_step.py`); False runs `_mlp_chunk` for every chunk
# (for comparisons: both compute the same function, tests/ops/test_learn_step.py)
LEARN_STEP = True


def _learn_step_fits(self_target: bool, objective: str, hidden_dgd: bool, ref: torch.Tensor, *tensors) -> bool:
    """Whether a chunk of an op that reads nothing can take the learn step: self-generated l2 targets,
    W2 the keyed layer, no autocast, and every tensor in `ref`'s dtype (the written-out backward
    assumes one dtype)."""
    return (LEARN_STEP and self_target and objective == "l2" and not hidden_dgd
            and not torch.is_autocast_enabled(ref.device.type)
            and all(t is not None and t.dtype == ref.dtype for t in tensors))


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
    dgd_layer: str = "key",
    momentum_norm: bool = False,
    dgd_eta: Optional[torch.Tensor] = None,
    recompute: bool = False,
    compile: bool = False,
    self_target: bool = False,
    groups: int = 1,
):
    """Chunk-parallel inner rule on a residual two-layer MLP memory; same contract as naive.

    Args:
        q: [B, T, Hq, D] queries (read after the token's write) of the last Hq <= H heads:
            only those heads are read (Hq = 0: the op only learns), the others cost no read.
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
        dgd: apply the DGD factor to the layer `dgd_layer` names (else `alpha I` on both layers).
        dgd_layer: "key" (SPEC 3): `W2 (alpha I - eta k k^T)`, W1 plain retention; "hidden": the
            output layer in the space of hidden codes, `W1 (alpha I - eta zh zh^T)` with the unit
            code `zh = z / |z|` of the key at the chunk-start weights (`z = sigma(W2_0 k)`, the
            activation W1's gradient is taken on), W2 plain retention: a delta rule over the
            memory's features, so the erase and the write act on the same layer and code.
        objective: "l2" (`1/2 ||M(k) - v||^2`) or "dot" (`-<M(k), v>`).
        expansion: e, the hidden width E = e * D (used only to build a zero state).
        act: sigma, "gelu" (exact) or "silu".
        hidden_norm: W1's step for token s uses `eta_s / max(1, ||z_s||^2)` (see naive.py).

        momentum_norm: momentum as a running mean, `S_t = beta_t S_{t-1} - (1 - beta_t) eta_t g_t`,
            so a constant gradient moves the weights by at most `eta` per token whatever beta is
            (the DGD factor keeps its rate). Off: SPEC 3's `S_t = beta_t S_{t-1} - eta_t g_t`.
        dgd_eta: [B, T, H] rate of the DGD factor, `alpha I - dgd_eta k k^T`, when it differs from
            the write's `eta` (a layer's `mean_step` divides only the write's rate; a rate above
            `alpha` gives the factor a negative eigenvalue along `k`, range (0, 2)); None: `eta`.
        recompute: save only each chunk's start state for the backward and recompute the chunk
            there (`hope.ops.recompute.recompute_region`): activation memory grows with chunks x state instead
            of with every intermediate of every chunk, for one more forward of the op.
        compile: run the per-chunk step under `torch.compile` (`hope.ops.chunking.compiled`); the
            results equal eager to float rounding (tests/ops/test_compile.py).
        self_target: the target of token t is the memory's own read of `v_t` at its chunk-start
            weights, `M_c(v_t) = v_t + W1_0 sigma(W2_0 v_t)` (Hope's self-generated targets, SPEC
            4.2), formed inside the chunk step: `[k; v]` go through W2_0 in one product and the
            l2 error is `(k - v) + (sigma(W2_0 k) - sigma(W2_0 v)) W1_0^T`, one product through
            W1_0 instead of a separate read (the outer gradient reaches W1_0, W2_0 through it).
        groups: the state holds `groups` memories stacked on the head axis (memory-major, `groups *
            H` heads) that all learn from the same k, v, eta, alpha, beta, dgd_eta of H heads (Hope's
            projection memories); only with no read heads (Hq = 0). The chunk operators are then
            built once for the H heads instead of once per memory; equal to repeating the inputs
            `groups` times on the head axis.
    Returns:
        o: [B, T, Hq, D] reads `o_t = q_t + W1_t sigma(W2_t q_t)` of the last Hq heads.
        final_state: MLPMemoryState(W1, W2, S1, S2, W1_chunk, W2_chunk, pos) with full batch
            shapes (the *_chunk are None when the call ends on a chunk boundary), or None.
    """
    B, T, H, D = check_inputs(q, k, v, eta, alpha, beta, chunk_size, objective)
    dgd_eta = dgd_rate(dgd_eta, eta)
    if dgd_layer not in DGD_LAYERS:
        raise ValueError(f"dgd_layer must be one of {DGD_LAYERS}, got {dgd_layer!r}")
    sigma, dsigma = activation(act)
    st = initial_state if initial_state is not None else MLPMemoryState(None, None)
    C = int(chunk_size)
    pos = check_pos(st.pos, C, st.W1_chunk is not None and st.W2_chunk is not None)
    sd = state_dtype(st, q)                                              # state dtype
    groups = check_groups(groups, q)
    if groups > 1 and (pos or compile or sd != k.dtype
                       or not _learn_step_fits(self_target, objective, dgd and dgd_layer == "hidden", k, v)):
        # shared operators only on the learn step's path: elsewhere the inputs are repeated per memory
        k, v, eta, alpha, beta, dgd_eta = repeat_heads(groups, k, v, eta, alpha, beta, dgd_eta)
        H, groups = groups * H, 1
    H = groups * H                                                       # heads of the state
    E = st.W2.shape[-2] if st.W2 is not None else expansion * D
    r, q_ops = read_heads(q, H), operator_queries(q, k)
    W1, S1 = (expand_state(x, (B, H, D, E), q, sd) for x in (st.W1, st.S1))
    W2, S2 = (expand_state(x, (B, H, E, D), q, sd) for x in (st.W2, st.S2))
    W1_0 = W2_0 = None
    if pos:
        W1_0 = expand_state(st.W1_chunk, (B, H, D, E), q, sd)
        W2_0 = expand_state(st.W2_chunk, (B, H, E, D), q, sd)
    seg_kw = dict(dgd=dgd, hidden_dgd=dgd and dgd_layer == "hidden", momentum_norm=momentum_norm,
                  compile=compile, r=r, sigma=sigma, dsigma=dsigma, objective=objective,
                  hidden_norm=hidden_norm, self_target=self_target, act=act, groups=groups)
    outs = []
    for t0, t1, L, resumed in split_segments(T, C, pos):
        seg, (W1, W2, S1, S2), (W1_0, W2_0) = run_segment(
            _mlp_segment, (W1, W2, S1, S2), (W1_0, W2_0) if resumed else (None, None),
            [x[:, t0:t1] for x in (q, k, v, q_ops, eta, alpha, beta, dgd_eta)], L, recompute=recompute,
            full=L == C, **seg_kw)
        outs += seg
    o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, q.shape[2], D)
    pos_end = (pos + T) % C
    final = MLPMemoryState(W1, W2, S1, S2, W1_0 if pos_end else None, W2_0 if pos_end else None,
                           pos_end)
    return o, (final if output_final_state else None)


def _mlp_segment(W1, W2, S1, S2, W1_0, W2_0, q, k, v, q_ops, eta, alpha, beta, dgd_eta, *, L, full, dgd,
                 hidden_dgd, momentum_norm, compile, act, groups, **step_kw):
    """Chunks of L tokens `[B, N*L, ...]` from state (W1, W2, S1, S2): the operators of all of them
    at once (state-independent), then the chunk loop. W1_0, W2_0: chunk-start weights when the
    segment resumes inside a chunk, else None; full: L is the chunk size (else a tail chunk);
    groups: memories of the state sharing the inputs' heads (learn step only, see `chunk_mlp_memory`).
    Returns (reads [B, N*L, Hq, D], W1, W2, S1, S2, the last chunk's start weights W1_0, W2_0)."""
    qc, kc, vc, qoc = (to_chunks(x, L) for x in (q, k, v, q_ops))           # [B, H, N, L, D]
    etac, alphac, betac, dgdc = (to_chunks(x, L) for x in (eta, alpha, beta, dgd_eta))
    dec = chunk_decays(alphac, betac)
    grad_rate = etac * (1 - betac) if momentum_norm else etac               # rate of the gradients
    ops = keyed_operators(kc, qoc, dgdc, dec, dgd and not hidden_dgd, grad_rate)   # W2: keys k, queries q
    # W1 (no DGD): W1_t = gamma_t W1' + m_t S1' - sum_{s<=t} E[t,s] eta_s err_s z_s^T
    # (unused when W1 carries DGD on hidden codes: it is then a keyed layer built per chunk)
    grad_weight = None if hidden_dgd else dec.E * grad_rate.unsqueeze(-2)  # [B, H, N, L, L]: E[t,s] eta_s
    resumed = W1_0 is not None                      # (a resumed segment is one partial chunk)
    seg = []
    N = kc.shape[2]
    # the learn-only fast path: nothing read, a chunk from its start (`_learn_step_fits`)
    hidden_norm = step_kw["hidden_norm"]
    learn_only = (qc.shape[1] == 0 and not resumed
                  and _learn_step_fits(step_kw["self_target"], step_kw["objective"], hidden_dgd, kc,
                                       W1, W2, S1, S2, vc))
    if groups > 1 and not learn_only:
        raise RuntimeError("chunk_mlp_memory: inputs shared by memories (groups > 1) need the learn step")
    for n, (lop, k_n, q_n, v_n, grad_weight_n) in enumerate(zip(
            loop_operators(ops, u_column=True).chunks(), kc.unbind(2), qc.unbind(2), vc.unbind(2),
            [None] * N if grad_weight is None else grad_weight.unbind(2))):
        # W1 with DGD on hidden codes: its keys depend on the chunk-start W2, so its operators are
        # built in the chunk step from this chunk's decays and rates
        w1_rates = ((ChunkDecays(*(x[:, :, n:n + 1] for x in dec)), dgdc[:, :, n:n + 1],
                     grad_rate[:, :, n:n + 1]) if hidden_dgd else None)
        args = (W1, W2, S1, S2, W1_0 if resumed else None, W2_0 if resumed else None, lop, k_n,
                q_n, v_n, grad_weight_n, w1_rates)
        if learn_only and not (compile and full):
            # no read heads, self-generated targets, a chunk from its start: the state update with
            # its backward written out (`learn_step.py`), the same function as `_mlp_chunk`
            W1_0, W2_0 = W1, W2                                         # this chunk's start
            per_head = repeat_heads(groups, k_n, v_n, lop.op[..., L:, :], lop.gamma_C, lop.m_C, lop.P_C,
                                    lop.e_last, lop.d_last, dim=1)
            W1, W2, S1, S2 = learn_chunk(W1, W2, S1, S2, *per_head, act, hidden_norm)
            seg.append(q_n)
            continue
        # compiled: the fast path only (full chunks from a chunk boundary); a resumed or tail
        # chunk, once per call at most, runs eager
        o_n, W1, W2, S1, S2, W1_0, W2_0 = run_step(
            _mlp_chunk, args, compile=compile and full and not resumed, **step_kw)
        seg.append(o_n)
    return (from_chunks(torch.stack(seg, dim=2)), W1, W2, S1, S2, W1_0, W2_0)


def _mlp_chunk(W1, W2, S1, S2, W1_0, W2_0, lop, k_n, q_n, v_n, grad_weight_n, w1_rates, *, r, sigma,
               dsigma, objective, hidden_norm, self_target):
    """One chunk of the MLP memory: reads `[B, Hq, L, D]` and the next W1, W2, S1, S2.

    W1_0, W2_0: the chunk-start weights when the call resumed inside this chunk, else None (the
    chunk starts at W1, W2). self_target: v_n are read through the chunk-start memory to give the
    targets (see `chunk_mlp_memory`). w1_rates: (this chunk's decays, DGD rates, gradient rates) when W1
    carries the DGD factor on hidden codes, else None (W1 in the dual form, no DGD).
    Returns (reads, W1, W2, S1, S2, W1_0, W2_0).
    """
    L = k_n.shape[-2]
    fresh = W1_0 is None
    if fresh:
        W1_0, W2_0 = W1, W2                                                 # chunk-start state
    if self_target:                                     # keys and values through W2_0 at once
        hkv = torch.cat([k_n, v_n], dim=-2) @ W2_0.transpose(-1, -2)        # [B, H, 2L, E]
        h, hv = hkv[..., :L, :], hkv[..., L:, :]
        KT, KS = (h, k_n @ S2.transpose(-1, -2)) if fresh else pair_projections(k_n, W2, S2)
    else:
        KT, KS = pair_projections(k_n, W2, S2)
        h = KT if fresh else k_n @ W2_0.transpose(-1, -2)                   # W2_0 k_s
    QT, QS = pair_projections(q_n, W2[:, r], S2[:, r])
    # gradients at the chunk-start state, for the whole chunk
    z = sigma(h)                                                            # [B, H, L, E]
    if self_target and objective == "l2":      # M(k) - M(v) = (k - v) + W1_0 (sigma(h) - sigma(hv))
        err = (k_n - v_n) + (z - sigma(hv)) @ W1_0.transpose(-1, -2)
    elif self_target:                                                       # -M(v)
        err = -(v_n + sigma(hv) @ W1_0.transpose(-1, -2))
    else:
        err = k_n + z @ W1_0.transpose(-1, -2) - v_n if objective == "l2" else -v_n
    delta = (err @ W1_0) * dsigma(h)                                        # W2's error
    if hidden_norm:                                                         # W1's step / ||z||^2
        err = err / hidden_scale(z).unsqueeze(-1)
    # W1, dual form: o1_t = W1_t sigma(hq_t), with hq_t = W2_t q_t (keyed, DGD)
    hq, W2, S2 = keyed_step(lop, k_n, W2, S2, KT, KS, QT, QS, delta)
    zq = sigma(hq)                                                          # [B, Hq, L, E]
    if w1_rates is not None:
        # W1 as a keyed layer on the unit codes zh (gradient err z^T = (err |z|) zh^T), read with zq
        dec_n, dgd_n, rate_n = w1_rates
        zh, zn = unit_code(z)
        H = z.shape[1]
        q1 = zq if zq.shape[1] == H else torch.cat([zh[:, :H - zq.shape[1]], zq], dim=1)
        lop1 = loop_operators(keyed_operators(zh.unsqueeze(2), q1.unsqueeze(2), dgd_n, dec_n, True, rate_n),
                              u_column=True).chunks()[0]
        KT1, KS1 = pair_projections(zh, W1, S1)
        QT1, QS1 = pair_projections(zq, W1[:, r], S1[:, r])
        o1, W1, S1 = keyed_step(lop1, zh, W1, S1, KT1, KS1, QT1, QS1, err * zn)
        return q_n + o1, W1, W2, S1, S2, W1_0, W2_0
    ZQ_W1, ZQ_S1 = pair_projections(zq, W1[:, r], S1[:, r])                # [B, Hq, L, D]
    o1 = (ZQ_W1 * lop.gamma[:, r] + ZQ_S1 * lop.m[:, r]
          - (grad_weight_n[:, r] * (zq @ z[:, r].transpose(-1, -2))) @ err[:, r])
    W1, S1 = (state_step(W1, lop.gamma_C, S1, lop.m_C, -lop.e_last * err, z),
              state_step(S1, lop.P_C, None, None, -lop.d_last * err, z))
    return q_n + o1, W1, W2, S1, S2, W1_0, W2_0
