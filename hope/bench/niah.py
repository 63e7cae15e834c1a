"""`hope bench niah`: synthetic needle retrieval, trained at one length and tested at 1x, 2x, 4x and 8x it.

Token ids: 0 pad, 1-10 the digits, 11-26 haystack noise, 27 NEEDLE, 28 IS, 29 ASK, 30-45 key symbols.

* passkey: a haystack of random noise tokens holds one needle `NEEDLE d1..d5` at a uniformly random
  depth; the sequence ends with `ASK` and the model must write the five digits (scored: the five
  digit positions, teacher-forced; an example counts when all five are right, which is what greedy
  generation would produce).
* multikey: four needles `NEEDLE k1 k2 IS d1..d4` with distinct two-symbol keys; the query
  `ASK k1 k2 IS` names one of them and the model must write its four digits (the other three are
  distractors).

Every test length keeps the needle and query shapes and grows the haystack, so what changes is how far
back the memory must reach and how much noise it must ignore (length generalization of memory).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hope.bench.common import IGNORE, Budget, Task
from hope.errors import HopeError, check_known

TASKS = ("passkey", "multikey")
DIGIT, NOISE, NEEDLE, IS, ASK, KEY = 1, 11, 27, 28, 29, 30
N_NOISE, N_KEY = 16, 16
VOCAB_SIZE = KEY + N_KEY
SCALES = (1, 2, 4, 8)
SPLIT_LABELS = {f"x{s}": f"{s}x" for s in SCALES}

TRAIN_LEN, QUICK_TRAIN_LEN = 64, 48
BUDGET = Budget(steps=800, batch_size=32, lr=2e-3, eval_size=200)
QUICK = Budget(steps=60, batch_size=16, lr=2e-3, eval_size=32)

PAPER = {
    "_note": "RULER on trained language models at 4K / 8K / 16K tokens (not this synthetic task); see docs/benchmarks.md",
    "passkey": {"transformer": "88.6 / 76.4 / 79.8 (S-NIAH-1)", "hope": "100 / 100 / 100 (S-NIAH-1)"},
}


def needle_example(rng: np.random.Generator, length: int, n_needles: int = 1, digits: int = 5) -> dict:
    """One sequence of exactly `length` tokens.

    Returns tokens, targets, `value` (the answer's token ids), `needle_at` (where the queried needle's
    first digit stands) and `needles_at` (where every needle starts).
    """
    keyed = n_needles > 1
    keys = []
    while len(keys) < n_needles:
        k = tuple(KEY + int(v) for v in rng.integers(0, N_KEY, size=2))
        if k not in keys:
            keys.append(k)
    values = [[DIGIT + int(v) for v in rng.integers(0, 10, size=digits)] for _ in keys]
    needles = [([NEEDLE, *k, IS] if keyed else [NEEDLE]) + v for k, v in zip(keys, values)]
    asked = int(rng.integers(n_needles))
    query = [ASK, *keys[asked], IS] if keyed else [ASK]
    hay = length - sum(map(len, needles)) - len(query) - digits + 1
    if hay < 0:
        raise HopeError(f"a needle sequence of {length} tokens is too short for {n_needles} needle(s)")
    noise = [NOISE + int(v) for v in rng.integers(0, N_NOISE, size=hay)]
    cuts = sorted(int(c) for c in rng.integers(0, hay + 1, size=n_needles))  # insertion points in the noise
    tokens, needles_at, last = [], [], 0
    for cut, needle in zip(cuts, needles):
        tokens += noise[last:cut]
        needles_at.append(len(tokens))
        tokens += needle
        last = cut
    tokens += noise[last:]
    value = values[asked]
    needle_at = needles_at[asked] + len(needles[asked]) - digits
    targets = [IGNORE] * len(tokens) + [IGNORE] * (len(query) - 1) + value
    tokens += query + value[:-1]
    return {"tokens": tokens, "targets": targets, "value": value, "needle_at": needle_at, "needles_at": needles_at}


def _sample(name: str, train_len: int, rng: np.random.Generator, split: str):
    scale = 1 if split == "train" else int(split[1:])
    d = needle_example(rng, scale * train_len, n_needles=4 if name == "multikey" else 1,
                       digits=4 if name == "multikey" else 5)
    return d["tokens"], d["targets"]


def tasks(quick: bool = False, names=None, seed: int = 0) -> list[Task]:
    """The suite's tasks (`seed` is unused: every draw comes from the bench's data streams)."""
    train_len = QUICK_TRAIN_LEN if quick else TRAIN_LEN
    names = names or TASKS
    check_known("needle task", names, TASKS)
    out = []
    for name in names:
        out.append(Task(name, VOCAB_SIZE, partial(_sample, name, train_len), tuple(SPLIT_LABELS),
                        train_len=train_len, max_len=max(SCALES) * train_len))
    return out
