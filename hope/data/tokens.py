"""Token-id caches on disk (memory-mapped) and the batches cut from them.

`prepare_tokens` encodes the train and validation documents once, joined by the end-of-document
token, into `uint16` (or `uint32`) files under `<cache>/tokens/<key>/`, keyed by a hash of the
corpus and the tokenizer; later runs map the files without re-encoding. Training batches are random
windows drawn with a generator seeded by (seed, step, rank, micro-step), so a resumed run sees the
same batches as an uninterrupted one without saving sampler state.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import numpy as np
import torch

from hope.errors import HopeError
from hope.paths import cache_dir


def _encode_to_file(docs: list[str], tokenizer, path, dtype) -> int:
    ids: list[np.ndarray] = []
    for i in range(0, len(docs), 16):
        for enc in tokenizer.encode_batch(docs[i:i + 16]):
            ids.append(np.asarray(enc + [tokenizer.eos_id], dtype=dtype))
    arr = np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)
    tmp = f"{path}.tmp{os.getpid()}"
    arr.tofile(tmp)
    os.replace(tmp, path)
    return len(arr)


def prepare_tokens(corpus, tokenizer) -> dict[str, np.ndarray]:
    """Encode (or map from cache) the corpus splits. Returns {"train": memmap, "val": memmap}."""
    key = hashlib.sha256((corpus.digest + tokenizer.to_json()).encode()).hexdigest()[:16]
    folder = cache_dir("tokens", key)
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    meta_path = folder / "meta.json"
    meta = None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            for split in ("train", "val"):
                if os.path.getsize(folder / f"{split}.bin") != meta[split] * np.dtype(dtype).itemsize:
                    meta = None
                    break
        except (OSError, ValueError, KeyError, TypeError):
            meta = None  # a damaged cache entry is rebuilt
    if meta is None:
        meta = {split: _encode_to_file(getattr(corpus, split), tokenizer, folder / f"{split}.bin", dtype)
                for split in ("train", "val")}
        tmp = folder / f"meta.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    out = {}
    for split in ("train", "val"):
        if meta[split] < 2:
            raise HopeError(f"the {split} split of corpus {corpus.name!r} has no tokens")
        out[split] = np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r", shape=(meta[split],))
    return out


def _windows(data: np.ndarray, starts: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows `data[s : s + seq_len + 1]` as inputs x and next-token targets y, [B, T] int64."""
    t = torch.from_numpy(np.stack([np.asarray(data[s:s + seq_len + 1], dtype=np.int64) for s in starts]))
    return t[:, :-1], t[:, 1:]


def get_batch(data: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows: x [B, T] and targets y [B, T] (x shifted by one), int64."""
    if len(data) < seq_len + 1:
        raise HopeError(f"the training split has {len(data)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator).tolist()
    return _windows(data, starts, seq_len)


def get_disjoint_batch(data: np.ndarray, batch_size: int, seq_len: int, seed: int, index: int):
    """`train.sampler=disjoint`: window `index * batch_size + b` of a shuffled order (seeded by `seed`)
    of the non-overlapping windows `[k * seq_len, (k + 1) * seq_len]` of the data, so no token is read
    twice before every window has been read once (then the same order repeats). Windows share their
    boundary token, as input of one and target of the other. Returns x, y [B, T] int64."""
    n = (len(data) - 1) // seq_len
    if n < 1:
        raise HopeError(f"the training split has {len(data)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
    order = _window_order(n, seed)
    starts = [int(order[(index * batch_size + b) % n]) * seq_len for b in range(batch_size)]
    return _windows(data, starts, seq_len)


@functools.lru_cache(maxsize=4)
def _window_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def get_stream_batch(data: np.ndarray, batch_size: int, seq_len: int, step: int, index: int, n_groups: int):
    """Contiguous streams (`train.stateful`): row b of micro-batch group `index` is stream
    `index * batch_size + b`, which starts at an even share of the data and reads the next `seq_len`
    tokens at every step (1-based), wrapping around at the end. Returns x, y [B, T] int64."""
    span = len(data) - seq_len - 1
    if span <= 0:
        raise HopeError(f"the training split has {len(data)} tokens, fewer than train.seq_len + 1 = {seq_len + 1}")
    n_streams = batch_size * n_groups
    starts = [((index * batch_size + b) * (span // n_streams) + (step - 1) * seq_len) % span for b in range(batch_size)]
    return _windows(data, starts, seq_len)


def val_windows(data: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Consecutive non-overlapping windows `[N, seq_len + 1]` from the start of the validation split.

    Windows share their boundary token (window i's last target is window i+1's first input).
    At most `max_tokens` predicted tokens; at least one window (a short split gives a shorter one).
    """
    n = max(1, min(max_tokens // seq_len, (len(data) - 1) // seq_len))
    if (len(data) - 1) < seq_len:
        return torch.from_numpy(np.asarray(data, dtype=np.int64))[None]
    arr = np.asarray(data[: n * seq_len + 1], dtype=np.int64)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None]
    return torch.from_numpy(arr[idx])
