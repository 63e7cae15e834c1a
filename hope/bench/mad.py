"""`hope bench mad`: the MAD synthetic tasks of Poli et al. 2024 (SPEC 7), at CPU-sized lengths.

Each task is next-token prediction with masked targets (scored positions predict the next input
token); the score is the share of scored tokens predicted right (MAD's accuracy). Token ids: 0 pad,
then the task's specials, then its symbols. MAD's lengths are halved or quartered (docs/DEVIATIONS.md);
vocabularies are MAD's.

* icr (in-context recall): 8 keys and 8 values (vocabulary 16); each sequence draws its own key ->
  value map and lists 32 random key-value pairs. Scored: the value after every key that appeared
  before in the sequence (a first occurrence cannot be known).
* fuzzy_icr: keys and values are motifs of 1 to 3 tokens (8 key and 8 value symbols), 6 pairs per map;
  scored: every value token of a pair whose key appeared before. The key's end is not marked, so the
  first value token is ambiguous when a key is a prefix of another: the paper's numbers sit near 50%.
* noisy_icr: icr with noise tokens (a separate vocabulary of 16) inserted between pairs (20% of the
  sequence); noise is never scored.
* selective_copy: 8 tokens (vocabulary 16) scattered among 56 blank tokens, then a copy marker; the
  model must write the 8 tokens in order (scored: the marker and the first 7 answer tokens).
* compression: 16 random tokens (vocabulary 16) and a compression token; a 2-layer MLP decoder with
  a position embedding must reconstruct every token from the model's final hidden state at the
  compression token alone (MAD's construction). Scored: the 16 reconstructed tokens.
* memorization: one fixed map of 512 keys to 512 values (vocabulary 1,024, MAD's first harder
  setting: at its baseline of 256 every model here is at 100% within a few dozen steps), the same in
  training and test; sequences of 16 distinct keys, each followed by its value (scored), so nothing
  can be recalled from the context: the map must be stored in the weights.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hope.bench.common import IGNORE, Budget, Task
from hope.errors import check_known

TASKS = ("icr", "fuzzy_icr", "noisy_icr", "selective_copy", "compression", "memorization")
SPLIT_LABELS = {"test": "test"}

BUDGET = Budget(steps=600, batch_size=32, lr=2e-3, eval_size=500)
QUICK = Budget(steps=60, batch_size=16, lr=2e-3, eval_size=64)

PAPER = {
    "_note": "accuracy (%); the paper does not report noisy recall or Hope-Attention",
    "icr": {"transformer": "100", "titans": "100", "hope": "100"},
    "fuzzy_icr": {"transformer": "47.9", "titans": "50.0", "hope": "52.1"},
    "selective_copy": {"transformer": "96.2", "titans": "99.4", "hope": "99.7"},
    "compression": {"transformer": "49.4", "titans": "49.8", "hope": "51.2"},
    "memorization": {"transformer": "83.7", "titans": "83.4", "hope": "85.2"},
}

# sizes: full, quick
SIZES = {
    "icr": ({"pairs": 32}, {"pairs": 12}),
    "fuzzy_icr": ({"length": 64}, {"length": 24}),
    "noisy_icr": ({"pairs": 26, "noise": 13}, {"pairs": 10, "noise": 5}),
    "selective_copy": ({"blanks": 56, "copy": 8}, {"blanks": 20, "copy": 4}),
    "compression": ({"length": 16}, {"length": 8}),
    "memorization": ({"pairs": 16, "n_keys": 512}, {"pairs": 8, "n_keys": 128}),
}


def _kv_map(rng, n_keys: int, n_values: int) -> np.ndarray:
    return rng.integers(0, n_values, size=n_keys)


def recall(rng: np.random.Generator, pairs: int, noise: int = 0, n_keys: int = 8, n_noise: int = 16) -> dict:
    """In-context recall (noisy with `noise` > 0): ids 1..8 keys, 9..16 values, 17.. noise.

    Returns tokens, targets, and `pairs_at`: the position of every (key, value) pair in the tokens.
    """
    kv = _kv_map(rng, n_keys, n_keys)
    keys = rng.integers(0, n_keys, size=pairs)
    noise_at = set(rng.choice(pairs + noise, size=noise, replace=False).tolist()) if noise else set()
    tokens, targets, seen, pairs_at, k = [], [], set(), [], 0
    for slot in range(pairs + noise):
        if slot in noise_at:
            tokens.append(1 + 2 * n_keys + int(rng.integers(n_noise)))
            targets.append(IGNORE)
            continue
        key = int(keys[k])
        k += 1
        pairs_at.append(len(tokens))
        tokens += [1 + key, 1 + n_keys + int(kv[key])]
        targets += [1 + n_keys + int(kv[key]) if key in seen else IGNORE, IGNORE]
        seen.add(key)
    return {"tokens": tokens, "targets": targets, "pairs_at": pairs_at, "map": kv}


def fuzzy_recall(rng: np.random.Generator, length: int, n_pairs: int = 6, n_sym: int = 8, motif: int = 3) -> dict:
    """Fuzzy recall: ids 1..8 key symbols, 9..16 value symbols; motifs of 1..`motif` symbols.

    Pairs are drawn from a map of `n_pairs` distinct key motifs until `length` tokens are filled (a
    pair that does not fit is dropped). Returns tokens, targets and the map (key motif -> value motif).
    """
    keys: list[tuple] = []
    while len(keys) < n_pairs:
        k = tuple(int(v) for v in rng.integers(0, n_sym, size=int(rng.integers(1, motif + 1))))
        if k not in keys:
            keys.append(k)
    values = [tuple(int(v) for v in rng.integers(0, n_sym, size=int(rng.integers(1, motif + 1)))) for _ in keys]
    tokens, targets, seen = [], [], set()
    while True:
        i = int(rng.integers(n_pairs))
        kt, vt = [1 + s for s in keys[i]], [1 + n_sym + s for s in values[i]]
        if len(tokens) + len(kt) + len(vt) > length:
            break
        start = len(tokens)
        tokens += kt + vt
        targets += [IGNORE] * (len(kt) + len(vt))
        if i in seen:  # the position before each value token predicts it
            for j, v in enumerate(vt):
                targets[start + len(kt) - 1 + j] = v
        seen.add(i)
    return {"tokens": tokens, "targets": targets, "map": dict(zip(keys, values))}


def selective_copy(rng: np.random.Generator, blanks: int, copy: int, n_sym: int = 16) -> dict:
    """ids: 1 blank, 2 copy marker, 3.. symbols. Returns tokens, targets, `answer` and `positions`
    (where the answer's tokens stand among the blanks)."""
    positions = np.sort(rng.choice(blanks + copy, size=copy, replace=False))
    answer = [3 + int(s) for s in rng.integers(0, n_sym, size=copy)]
    region = [1] * (blanks + copy)
    for p, s in zip(positions, answer):
        region[p] = s
    tokens = region + [2] + answer[:-1]
    targets = [IGNORE] * len(region) + answer
    return {"tokens": tokens, "targets": targets, "answer": answer, "positions": positions.tolist()}


def compression(rng: np.random.Generator, length: int, n_sym: int = 16) -> dict:
    """ids: 1 compression token, 2.. symbols; targets are the symbols to reconstruct."""
    seq = [2 + int(s) for s in rng.integers(0, n_sym, size=length)]
    return {"tokens": seq + [1], "targets": seq}


def memorization_map(seed: int, n_keys: int = 128) -> np.ndarray:
    """The fixed key -> value map of the memorization task (a function of the seed only)."""
    return np.random.default_rng([seed, 7919]).integers(0, n_keys, size=n_keys)


def memorization(rng: np.random.Generator, pairs: int, kv: np.ndarray) -> dict:
    """ids 1..n keys, n+1..2n values (vocabulary 2n + 1 with padding), n = len(kv)."""
    n = len(kv)
    keys = rng.choice(n, size=pairs, replace=False)
    tokens, targets = [], []
    for k in keys:
        tokens += [1 + int(k), 1 + n + int(kv[k])]
        targets += [1 + n + int(kv[k]), IGNORE]
    return {"tokens": tokens, "targets": targets}


def _as_example(make, rng, split):
    d = make(rng)
    return d["tokens"], d["targets"]


def tasks(quick: bool = False, names=None, seed: int = 0) -> list[Task]:
    names = names or TASKS
    check_known("MAD task", names, TASKS)
    out = []
    for name in names:
        size = SIZES[name][1 if quick else 0]
        if name in ("icr", "noisy_icr"):
            make, vocab = partial(recall, **size), 1 + 16 + (16 if name == "noisy_icr" else 0)
            length = 2 * size["pairs"] + size.get("noise", 0)
        elif name == "fuzzy_icr":
            make, vocab, length = partial(fuzzy_recall, **size), 17, size["length"]
        elif name == "selective_copy":
            make, vocab, length = partial(selective_copy, **size), 19, size["blanks"] + 2 * size["copy"]
        elif name == "compression":
            make, vocab, length = partial(compression, **size), 18, size["length"] + 1
        else:
            n = size["n_keys"]
            make = partial(memorization, kv=memorization_map(seed, n), pairs=size["pairs"])
            vocab, length = 2 * n + 1, 2 * size["pairs"]
        out.append(Task(name, vocab, partial(_as_example, make), ("test",), train_len=length, max_len=length,
                        metric="token", decode_len=size["length"] if name == "compression" else 0))
    return out
