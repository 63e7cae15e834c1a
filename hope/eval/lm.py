"""Language-model evaluation of a run: perplexity and bits per byte on a held-out split, and loss as
a function of position in the context (the paper's context-usage figure).

`perplexity(model, tokenizer, docs, ...)` reads the documents as one stream (`[eos] doc [eos] doc
...`) and reports, side by side,
* `carried`: long context. Recurrent models carry their state through the whole stream; attention
  models score each block of `window` tokens after up to `max_seq_len - window` tokens of context;
* `independent`: non-overlapping windows of `window` tokens, each from a fresh state (what
  training's validation measures);
* for models with `read` (the Continuum Memory System), each mode twice: CMS learning in context on
  (`carried_learn`, `independent_learn`: every window learns from itself as it reads) and off.

`context_curve(model, tokenizer, docs, length)` cuts long documents into pieces of `length` tokens,
reads each piece from a fresh state and averages the loss at every position (again with in-context
learning on and off where the model has it).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from hope.errors import HopeError
from hope.eval.scoring import carried_nll, independent_nll, position_nll, stream_ids, summarize


def perplexity(model, tokenizer, docs: list[str], window: int, max_tokens: int | None = None, batch_size: int = 8,
               streams: int = 8, modes: tuple[str, ...] = ("carried", "independent"), learn: bool = True,
               log=print) -> dict:
    """Per mode: loss (nats / token), perplexity, bits per byte, tokens, bytes, seconds."""
    ids = stream_ids(docs, tokenizer)
    if max_tokens is not None:
        ids = ids[:max_tokens + 1]
    if ids.numel() < 2:
        raise HopeError("the split has no tokens to evaluate")
    targets = ids[1:]
    tb = tokenizer.token_bytes
    runs = []
    learns = learn and hasattr(model, "read") and getattr(model, "cms_segment", None) is not None
    for mode in modes:
        if mode == "independent":
            runs.append(("independent", lambda: independent_nll(model, ids, window, batch_size)))
            if learns:
                runs.append(("independent_learn", lambda: independent_nll(model, ids, window, batch_size, learn=True)))
        elif mode == "carried":
            runs.append(("carried", lambda: carried_nll(model, ids, window, False, streams, batch_size)))
            if learns:
                runs.append(("carried_learn", lambda: carried_nll(model, ids, window, True, streams, batch_size)))
        else:
            raise HopeError(f"unknown mode {mode!r}; use carried, independent")
    out = {}
    for name, fn in runs:
        t0 = time.perf_counter()
        nll = fn()
        out[name] = {**summarize(nll, targets, tb), "seconds": round(time.perf_counter() - t0, 2)}
        log(f"  {name:<14} loss {out[name]['loss']:.4f}  ppl {out[name]['ppl']:.2f}  bpb {out[name]['bpb']:.4f}  "
            f"({out[name]['tokens']:,} tokens, {out[name]['seconds']:.1f} s)")
    return out


def context_rows(docs: list[str], tokenizer, length: int, max_rows: int) -> torch.Tensor:
    """Pieces `[N, length + 1]` of the documents that are at least that long: each document, after
    an end-of-document token, cut into consecutive pieces (at most `max_rows` in all, spread over the
    documents in turn so that no single document dominates)."""
    per_doc = []
    for i in range(0, len(docs), 16):
        for enc in tokenizer.encode_batch(docs[i:i + 16]):
            ids = [tokenizer.eos_id] + enc
            pieces = [ids[a:a + length + 1] for a in range(0, len(ids) - length, length + 1)]
            if pieces:
                per_doc.append(pieces)
    rows, k = [], 0
    while len(rows) < max_rows and any(k < len(p) for p in per_doc):
        rows += [p[k] for p in per_doc if k < len(p)][:max_rows - len(rows)]
        k += 1
    if not rows:
        raise HopeError(f"no document holds {length + 1} tokens; lower --length")
    return torch.tensor(rows, dtype=torch.long)


def context_curve(model, tokenizer, docs: list[str], length: int, window: int, max_rows: int = 32,
                  batch_size: int = 8, learn_modes: tuple[bool, ...] = (False, True), log=print) -> dict:
    """Mean loss at each position 0 .. length - 1 over pieces of long documents, and the same in
    buckets of powers of two. Keys: `positions`, `rows`, and per mode (`no_learn`, `learn`) the
    per-position means `loss`, bucket means `bucket_loss` over `buckets` [lo, hi)."""
    rows = context_rows(docs, tokenizer, length, max_rows)
    buckets = [(0, 1)] + [(2 ** k, min(length, 2 ** (k + 1))) for k in range(int(math.log2(length)) + 1)
                          if 2 ** k < length]
    out = {"length": length, "rows": int(rows.shape[0]), "buckets": buckets, "modes": {}}
    for learn in learn_modes:
        if learn and not (hasattr(model, "read") and getattr(model, "cms_segment", None) is not None):
            continue
        name = "learn" if learn else "no_learn"
        t0 = time.perf_counter()
        nll = torch.cat([position_nll(model, rows[i:i + batch_size], window, learn)
                         for i in range(0, rows.shape[0], batch_size)])  # [N, length]
        mean = nll.mean(0)
        out["modes"][name] = {"loss": [round(float(v), 5) for v in mean],
                              "bucket_loss": [round(float(mean[a:b].mean()), 5) for a, b in buckets],
                              "mean_loss": float(mean.mean()), "seconds": round(time.perf_counter() - t0, 2)}
        log(f"  {name:<9} " + "  ".join(f"[{a},{b}) {v:.3f}" for (a, b), v in
                                         zip(buckets, out["modes"][name]["bucket_loss"])))
    return out


def plot_context(curve: dict, png_path, title: str) -> bool:
    """Loss against position (log scale, means over log-spaced bins), one line per mode. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, m in curve["modes"].items():
        y = np.asarray(m["loss"])
        # mean over log-spaced bins of positions (1-based): every position early on, wider bins later
        edges = np.unique(np.round(np.geomspace(1, len(y) + 1, 48)).astype(int))
        x = [np.sqrt(a * (b - 1)) if b - 1 > a else a for a, b in zip(edges[:-1], edges[1:])]
        smooth = [y[a - 1:b - 1].mean() for a, b in zip(edges[:-1], edges[1:])]
        ax.plot(x, smooth, "o-", ms=2.5, lw=1.5, label=f"in-context learning {'on' if name == 'learn' else 'off'}"
                if len(curve["modes"]) > 1 else name)
    ax.set_xscale("log")
    ax.set_xlabel("token position in the context (1 = first prediction)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"{title} ({curve['rows']} pieces of {curve['length']} tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return True
