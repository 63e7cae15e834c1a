"""Scoring token streams with any `hope` model: per-token negative log-likelihoods in independent
windows, with the model's state carried, or with a sliding context; bits per byte.

Every function returns the loss of each predicted token (`nll[i]` = -log p(ids[i + 1] | ids[:i + 1]
as far as the model sees it), in nats, float64) so callers can sum, average per position, or convert:

* bits per byte = sum(nll) / (ln 2 * bytes of the predicted tokens): tokenizer-independent, since
  every tokenizer spells the same text with the same bytes (`tokenizer.token_bytes`);
* perplexity = exp(mean nll).

Models with a `max_seq_len` (Transformer++, Hope-Attention) cannot carry their state without bound:
their "carried" mode is a sliding window (each block of `window` tokens is scored after up to
`max_seq_len - window` tokens of context). Recurrent models (Titans, Hope) carry their state through
the whole stream. With `learn=True`, models that have `read` learn in context while reading (CMS).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from hope.errors import HopeError


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Total loss in nats over text of `n_bytes` UTF-8 bytes -> bits per byte."""
    if n_bytes <= 0:
        raise HopeError("bits per byte need at least one byte")
    return nats / (n_bytes * math.log(2))


def summarize(nll: torch.Tensor, targets: torch.Tensor, token_bytes: np.ndarray | torch.Tensor) -> dict:
    """Mean loss, perplexity and bits per byte of per-token losses `nll [N]` for `targets [N]`."""
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    n_bytes = int(tb[targets.long()].sum().item())
    total = float(nll.double().sum())
    loss = total / max(1, nll.numel())
    return {"loss": loss, "ppl": math.exp(loss), "bpb": bits_per_byte(total, n_bytes), "tokens": int(nll.numel()),
            "bytes": n_bytes}


def stream_ids(docs: list[str], tokenizer) -> torch.Tensor:
    """Documents as one stream `[eos] doc1 [eos] doc2 [eos] ...` (int64): the first token of every
    document is predicted after an end-of-document token, as in training."""
    ids = [tokenizer.eos_id]
    for i in range(0, len(docs), 16):
        for enc in tokenizer.encode_batch(docs[i:i + 16]):
            ids.extend(enc)
            ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def _forward(model, x: torch.Tensor, state, learn: bool):
    """One call of the model: `read` (learning in context) or a plain forward without gradients."""
    if learn and hasattr(model, "read"):
        return model.read(x, state, learn=True)
    with torch.no_grad():
        return model(x, state)


def _nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], targets [B, T] -> losses [B, T] float64."""
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape).double()


def independent_nll(model, ids: torch.Tensor, window: int, batch_size: int = 8, learn: bool = False) -> torch.Tensor:
    """Consecutive non-overlapping windows of `window` predictions, each read from a fresh state.

    Window k reads ids[k*W : k*W + W] and predicts ids[k*W + 1 : k*W + W + 1] (windows share their
    boundary token, as `hope.data.tokens.val_windows`); the last window may be shorter.
    Args:
        ids: [N] token ids, N >= 2.
    Returns:
        nll [N - 1] for targets ids[1:].
    """
    if ids.numel() < 2 or window < 1:
        raise HopeError("need at least 2 tokens and a window >= 1")
    device = next(model.parameters()).device
    n = ids.numel() - 1
    full = n // window
    out = []
    if full:
        wins = ids[:full * window + 1].unfold(0, window + 1, window)  # [full, W + 1]
        for i in range(0, full, batch_size):
            b = wins[i:i + batch_size].to(device)
            logits, _ = _forward(model, b[:, :-1], None, learn)
            out.append(_nll(logits, b[:, 1:]).flatten().cpu())
    if n > full * window:
        b = ids[full * window:][None].to(device)
        logits, _ = _forward(model, b[:, :-1], None, learn)
        out.append(_nll(logits, b[:, 1:]).flatten().cpu())
    return torch.cat(out)


def carried_nll(model, ids: torch.Tensor, window: int, learn: bool = False, streams: int = 1,
                batch_size: int = 8) -> torch.Tensor:
    """Every token predicted with as much context as the model can carry (see the module docstring).

    Recurrent models read the stream in pieces of `window` tokens with the state carried. With
    `streams > 1` the stream is cut into that many contiguous parts read side by side (a batch); each
    part starts from a fresh state. Models with `max_seq_len` use a sliding window instead.
    Args:
        ids: [N] token ids.
    Returns:
        nll [N - 1] for targets ids[1:].
    """
    limit = getattr(model, "max_seq_len", None)
    if limit is not None:
        return sliding_nll(model, ids, window, limit, learn=learn, batch_size=batch_size)
    device = next(model.parameters()).device
    n = ids.numel() - 1
    streams = max(1, min(streams, n // max(1, window)))
    part = n // streams
    rows = torch.stack([ids[b * part:b * part + part + 1] for b in range(streams)])  # [S, part + 1]
    out = [_carry(model, rows.to(device), window, learn).cpu().flatten()]
    if n > streams * part:  # the remainder, read as one more stream
        out.append(_carry(model, ids[streams * part:][None].to(device), window, learn).cpu().flatten())
    return torch.cat(out)


def _carry(model, rows: torch.Tensor, window: int, learn: bool) -> torch.Tensor:
    """rows [B, L + 1] -> nll [B, L], reading `window` tokens at a time with the state carried."""
    state, out = None, []
    length = rows.shape[1] - 1
    for a in range(0, length, window):
        b = min(length, a + window)
        logits, state = _forward(model, rows[:, a:b], state, learn)
        out.append(_nll(logits, rows[:, a + 1:b + 1]))
    return torch.cat(out, 1)


def sliding_nll(model, ids: torch.Tensor, window: int, context: int, learn: bool = False,
                batch_size: int = 8) -> torch.Tensor:
    """Blocks of `window` predictions, each scored after up to `context - window` earlier tokens, read
    from a fresh state (the standard strided evaluation of attention models). Returns nll [N - 1]."""
    if window > context:
        raise HopeError(f"window {window} exceeds the model's maximum length {context}")
    device = next(model.parameters()).device
    n = ids.numel() - 1
    jobs = []  # (start of the read, first scored target position, end)
    for s in range(0, n, window):
        e = min(n, s + window)
        jobs.append((max(0, e - context), s, e))
    out: dict[int, torch.Tensor] = {}
    by_len: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for j in jobs:
        by_len.setdefault((j[2] - j[0], j[2] - j[1]), []).append(j)
    for (length, scored), group in by_len.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            x = torch.stack([ids[r:e + 1] for r, _, e in chunk]).to(device)  # [b, length + 1]
            logits, _ = _forward(model, x[:, :-1], None, learn)
            nll = _nll(logits[:, -scored:], x[:, -scored:]).cpu()
            for (_, s, _), row in zip(chunk, nll):
                out[s] = row
    return torch.cat([out[s] for _, s, _ in jobs])


def position_nll(model, rows: torch.Tensor, window: int, learn: bool = False) -> torch.Tensor:
    """Loss at every position of each row, the whole row in one context.

    Args:
        rows: [B, L + 1] token ids (L <= max_seq_len for attention models).
        window: recurrent models read `window` tokens at a time with the state carried.
    Returns:
        nll [B, L].
    """
    limit = getattr(model, "max_seq_len", None)
    if limit is not None and rows.shape[1] - 1 > limit:
        raise HopeError(f"context of {rows.shape[1] - 1} tokens exceeds the model's maximum length {limit}")
    device = next(model.parameters()).device
    rows = rows.to(device)
    if limit is not None:
        window = rows.shape[1] - 1
    return _carry(model, rows, window, learn).cpu()
