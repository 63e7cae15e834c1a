"""Formal languages (hope/bench/formal.py): membership against independent oracles, generated labels,
balance, length bins, determinism, and the token layout."""

import itertools
import re

import numpy as np
import pytest

from hope.bench import formal
from hope.bench.common import IGNORE, task_rng

ALPHABETS = {"parity": "01", "aa_star": "ab", "abab_star": "ab", "anbn": "ab", "anbncn": "abc", "shuffle2": "()[]"}


def oracle(lang, s):
    """Membership written a second way: regular expressions, counts, a stack-free depth scan."""
    if lang == "parity":
        return re.fullmatch(r"(0*10*1)*0*", s) is not None
    if lang == "aa_star":
        return re.fullmatch(r"(aa)*", s) is not None
    if lang == "abab_star":
        return re.fullmatch(r"(abab)*", s) is not None
    if lang == "anbn":
        m = re.fullmatch(r"(a*)(b*)", s)
        return m is not None and len(m[1]) == len(m[2])
    if lang == "anbncn":
        m = re.fullmatch(r"(a*)(b*)(c*)", s)
        return m is not None and len(m[1]) == len(m[2]) == len(m[3])
    if lang == "shuffle2":
        ok = True
        for o, c in ("()", "[]"):
            depths = np.cumsum([(x == o) - (x == c) for x in s]) if s else np.array([0])
            ok &= bool(depths.min(initial=0) >= 0 and depths[-1] == 0)
        return ok


@pytest.mark.parametrize("lang", formal.LANGUAGES)
def test_member_matches_oracle_on_every_short_string(lang):
    for n in range(0, 9):
        for chars in itertools.product(ALPHABETS[lang], repeat=n):
            s = "".join(chars)
            assert formal.member(lang, s) == oracle(lang, s), (lang, s)


@pytest.mark.parametrize("lang", formal.LANGUAGES)
def test_generated_labels_lengths_and_balance(lang):
    rng = np.random.default_rng(1)
    for (lo, hi), n in ((formal.LENGTHS["train"], 400), (formal.LENGTHS["bin1"], 200)):
        labels = []
        for _ in range(n):
            s, label = formal.sample_string(rng, lang, lo, hi)
            assert label == formal.member(lang, s) == oracle(lang, s), (lang, s, label)
            assert set(s) <= set(ALPHABETS[lang]) and lo <= len(s) <= hi, (lang, s)
            labels.append(label)
        assert 0.35 < np.mean(labels) < 0.65, (lang, np.mean(labels))


def test_negatives_are_near_misses():
    """a^n b^n negatives have the positives' lengths and letters: length alone gives nothing away."""
    rng = np.random.default_rng(0)
    neg = [s for s, y in (formal.sample_string(rng, "anbn", 2, 40) for _ in range(300)) if not y]
    assert all(len(s) % 2 == 0 and s.count("a") + s.count("b") == len(s) for s in neg)
    assert any(s.count("a") == s.count("b") for s in neg)  # order violations, not only count errors


def test_tasks_layout_bins_and_determinism():
    for task in formal.tasks():
        x, y = task.sample(task_rng(0, task.name, "bin0"), "bin0")
        assert x[-1] == formal.QUERY and y[-1] in (formal.ACCEPT, formal.REJECT)
        assert all(t == IGNORE for t in y[:-1]) and len(x) == len(y) <= task.train_len
        rng1, rng2 = task_rng(3, task.name, "bin1"), task_rng(3, task.name, "bin1")
        first = [task.sample(rng1, "bin1") for _ in range(20)]
        assert first == [task.sample(rng2, "bin1") for _ in range(20)]  # same seed, same strings
        rng3 = task_rng(4, task.name, "bin1")
        assert first != [task.sample(rng3, "bin1") for _ in range(20)]  # another seed, others
        assert min(len(x) for x, _ in first) > task.train_len  # bin 1 is longer than every training example
        assert max(len(x) for x, _ in first) <= task.max_len
