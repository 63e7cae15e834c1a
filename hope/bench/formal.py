"""`hope bench formal`: the six formal languages of Irie et al. 2023 (SPEC 7), as sequence classification.

Each example is a string of the language's alphabet, then a query token; the model must emit ACCEPT
or REJECT at the query (one scored token; a chance level of 50%: labels are balanced). Training
strings have lengths in one range; "bin 0" tests fresh strings of the same range, "bin 1" longer
strings that no training example reached (Bhattamishra et al. 2020's bins, which Irie et al. follow).

The languages and how the negatives are made (same length distribution as the positives wherever the
language allows it, so that length alone does not give the label away):
* parity: bit strings; accept iff the number of 1s is even. Uniform bits, so labels are balanced.
* aa_star, (aa)*: a^n; accept iff n is even (the label is the length's parity).
* abab_star, (abab)*: positives (abab)^k; negatives are alternating prefixes of a length that is not a
  multiple of 4, or a positive with one symbol flipped.
* anbn, a^n b^n: negatives of the same length 2n: a^m b^(2n-m) with m != n, or a positive with one a
  and one b exchanged.
* anbncn, a^n b^n c^n: negatives of length 3n: block sizes moved off (n, n, n) with the order kept,
  or a positive with two symbols of different blocks exchanged.
* shuffle2, Shuffle-2: interleavings of two Dyck-1 words, over ( ) and [ ]; accept iff each bracket
  type is balanced on its own (no prefix closes more than it opened, all closed at the end).
  Negatives: a positive with one bracket reversed (counts off), or with a closing bracket exchanged
  with an earlier opening one of its type (counts right, a prefix goes negative).

`member(lang, s)` decides membership directly from the definition; every generated label is checked
against it (tests/bench/test_formal.py).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hope.bench.common import IGNORE, Budget, Task
from hope.errors import HopeError, check_known

LANGUAGES = ("parity", "aa_star", "abab_star", "anbn", "anbncn", "shuffle2")
SYMBOLS = "01abc()[]"
QUERY, ACCEPT, REJECT = 1, 2, 3  # 0 is padding
SYMBOL_ID = {c: 4 + i for i, c in enumerate(SYMBOLS)}
VOCAB_SIZE = 4 + len(SYMBOLS)

# string lengths (train and bin 0, bin 1); for the counting languages, n ranges (bin 1 doubles the longest)
LENGTHS = {"train": (2, 40), "bin1": (41, 80)}
QUICK_LENGTHS = {"train": (2, 16), "bin1": (17, 32)}

SPLIT_LABELS = {"bin0": "bin 0", "bin1": "bin 1"}

BUDGET = Budget(steps=1200, batch_size=32, lr=2e-3, eval_size=500)
QUICK = Budget(steps=80, batch_size=16, lr=2e-3, eval_size=64)

PAPER = {
    "_note": "accuracy (%) on bin 0 / bin 1; the paper reports Transformer only for three languages",
    "parity": {"transformer": "46.4 / 0.0", "hope": "100 / 100"},
    "aa_star": {"transformer": "0 / 0", "hope": "100 / 100"},
    "abab_star": {"transformer": "0 / 0", "hope": "100 / 100"},
    "anbn": {"hope": "100 / 100"},
    "anbncn": {"hope": "100 / 100"},
    "shuffle2": {"hope": "100 / 100"},
}


# ---------------------------------------------------------------- membership (from the definitions)

def _dyck_ok(s: str, open_: str, close: str) -> bool:
    depth = 0
    for c in s:
        depth += (c == open_) - (c == close)
        if depth < 0:
            return False
    return depth == 0


def member(lang: str, s: str) -> bool:
    """Whether the string `s` belongs to the language `lang`."""
    if lang == "parity":
        return set(s) <= set("01") and s.count("1") % 2 == 0
    if lang == "aa_star":
        return set(s) <= {"a"} and len(s) % 2 == 0
    if lang == "abab_star":
        return len(s) % 4 == 0 and s == "ab" * (len(s) // 2)
    if lang == "anbn":
        n = len(s) // 2
        return len(s) % 2 == 0 and s == "a" * n + "b" * n
    if lang == "anbncn":
        n = len(s) // 3
        return len(s) % 3 == 0 and s == "a" * n + "b" * n + "c" * n
    if lang == "shuffle2":
        return set(s) <= set("()[]") and _dyck_ok(s, "(", ")") and _dyck_ok(s, "[", "]")
    raise HopeError(f"unknown language {lang!r}; available: {', '.join(LANGUAGES)}")


# ---------------------------------------------------------------- generators

def _swap(s: str, i: int, j: int) -> str:
    c = list(s)
    c[i], c[j] = c[j], c[i]
    return "".join(c)


def _dyck(rng: np.random.Generator, pairs: int, open_: str, close: str) -> str:
    """A random Dyck-1 word with `pairs` pairs: a shuffled multiset rotated at its lowest prefix sum
    (the cycle lemma), so every prefix is >= 0."""
    seq = np.array([1] * pairs + [-1] * pairs)
    rng.shuffle(seq)
    start = int(np.argmin(np.cumsum(seq))) + 1 if pairs else 0
    seq = np.roll(seq, -start)
    return "".join(open_ if v > 0 else close for v in seq)


def _positive(rng, lang: str, lo: int, hi: int) -> str:
    if lang == "abab_star":
        return "abab" * int(rng.integers(max(1, -(-lo // 4)), hi // 4 + 1))
    if lang == "anbn":
        n = int(rng.integers(max(1, -(-lo // 2)), hi // 2 + 1))
        return "a" * n + "b" * n
    if lang == "anbncn":
        n = int(rng.integers(max(1, -(-lo // 3)), hi // 3 + 1))
        return "a" * n + "b" * n + "c" * n
    if lang == "shuffle2":
        total = int(rng.integers(max(1, -(-lo // 2)), hi // 2 + 1))  # pairs of brackets in all
        p = int(rng.integers(0, total + 1))
        u, v = _dyck(rng, p, "(", ")"), _dyck(rng, total - p, "[", "]")
        take_u = rng.permutation([True] * len(u) + [False] * len(v))
        iu, iv, out = iter(u), iter(v), []
        for t in take_u:
            out.append(next(iu) if t else next(iv))
        return "".join(out)
    raise AssertionError(lang)


def _negative(rng, lang: str, lo: int, hi: int) -> str:
    """A near miss of the language (see the module docstring); checked with `member` by the caller."""
    if lang == "abab_star":
        if rng.random() < 0.5:
            n = int(rng.integers(lo, hi + 1))
            while n % 4 == 0:
                n = int(rng.integers(lo, hi + 1))
            return ("ab" * hi)[:n]
        s = _positive(rng, lang, lo, hi)
        i = int(rng.integers(len(s)))
        return s[:i] + ("b" if s[i] == "a" else "a") + s[i + 1:]
    if lang == "anbn":
        s = _positive(rng, lang, lo, hi)
        n = len(s) // 2
        if rng.random() < 0.5 and n > 1:
            m = n
            while m == n:
                m = int(rng.integers(1, 2 * n))
            return "a" * m + "b" * (2 * n - m)
        return _swap(s, int(rng.integers(n)), n + int(rng.integers(n)))
    if lang == "anbncn":
        s = _positive(rng, lang, lo, hi)
        n = len(s) // 3
        if rng.random() < 0.5 and n > 1:
            counts = [n, n, n]
            src, dst = rng.choice(3, size=2, replace=False)
            d = int(rng.integers(1, n))
            counts[src] -= d
            counts[dst] += d
            return "a" * counts[0] + "b" * counts[1] + "c" * counts[2]
        i, j = rng.choice(3, size=2, replace=False)
        return _swap(s, int(i) * n + int(rng.integers(n)), int(j) * n + int(rng.integers(n)))
    if lang == "shuffle2":
        s = _positive(rng, lang, lo, hi)
        if rng.random() < 0.5:
            i = int(rng.integers(len(s)))
            return s[:i] + {"(": ")", ")": "(", "[": "]", "]": "["}[s[i]] + s[i + 1:]
        # exchange a closing bracket with an opening one of its type before it: counts stay, a prefix dips
        closes = [i for i, c in enumerate(s) if c in ")]"]
        i = int(rng.choice(closes))
        opener = "(" if s[i] == ")" else "["
        j = int(rng.choice([k for k in range(i) if s[k] == opener]))
        return _swap(s, i, j)
    raise AssertionError(lang)


def sample_string(rng: np.random.Generator, lang: str, lo: int, hi: int) -> tuple[str, bool]:
    """A string of length in [lo, hi] (as far as the language allows) and whether it is in the language;
    accepted and rejected strings are equally likely."""
    if lang == "parity":
        s = "".join(rng.choice(["0", "1"], size=int(rng.integers(lo, hi + 1))))
        return s, member(lang, s)
    if lang == "aa_star":
        s = "a" * int(rng.integers(lo, hi + 1))
        return s, member(lang, s)
    if rng.random() < 0.5:
        return _positive(rng, lang, lo, hi), True
    while True:
        s = _negative(rng, lang, lo, hi)
        if not member(lang, s):
            return s, False


def encode(s: str, label: bool) -> tuple[list[int], list[int]]:
    """Tokens `s + QUERY` and targets: the label at the query, IGNORE elsewhere."""
    tokens = [SYMBOL_ID[c] for c in s] + [QUERY]
    return tokens, [IGNORE] * len(s) + [ACCEPT if label else REJECT]


def _sample(lang: str, lengths: dict, rng: np.random.Generator, split: str):
    lo, hi = lengths["bin1" if split == "bin1" else "train"]
    return encode(*sample_string(rng, lang, lo, hi))


def tasks(quick: bool = False, names=None, seed: int = 0) -> list[Task]:
    """The suite's tasks (`seed` is unused: every draw comes from the bench's data streams)."""
    lengths = QUICK_LENGTHS if quick else LENGTHS
    names = names or LANGUAGES
    check_known("formal language", names, LANGUAGES)
    out = []
    for lang in names:
        out.append(Task(lang, VOCAB_SIZE, partial(_sample, lang, lengths), ("bin0", "bin1"),
                        train_len=lengths["train"][1] + 1, max_len=lengths["bin1"][1] + 1))
    return out
