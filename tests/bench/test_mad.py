"""MAD tasks (hope/bench/mad.py): every scored target is what the task says it is, and nothing else is scored."""

import numpy as np
import pytest

from hope.bench import mad
from hope.bench.common import IGNORE, task_rng


def scored(d):
    return [(t, y) for t, y in enumerate(d["targets"]) if y != IGNORE]


@pytest.mark.parametrize("noise", [0, 13])
def test_recall_scores_values_of_keys_seen_before(noise):
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = mad.recall(rng, pairs=26, noise=noise)
        toks, kv = d["tokens"], d["map"]
        assert len(toks) == len(d["targets"]) == 52 + noise
        assert sum(1 <= t <= 8 for t in toks) == 26 and sum(t > 16 for t in toks) == noise
        seen, expect = set(), []
        for p in d["pairs_at"]:
            key, val = toks[p] - 1, toks[p + 1]
            assert val == 9 + kv[key]  # one map per sequence
            if key in seen:
                expect.append((p, val))
            seen.add(key)
        assert scored(d) == expect  # exactly the repeats, at the key, predicting the next token


def test_fuzzy_recall_scores_value_motifs_of_repeated_keys():
    rng = np.random.default_rng(1)
    for _ in range(50):
        d = mad.fuzzy_recall(rng, length=64)
        toks = d["tokens"]
        assert len(toks) <= 64 and all(1 <= t <= 16 for t in toks)
        for t, y in scored(d):
            assert 9 <= y <= 16 and toks[t + 1] == y  # a value symbol, the next input
        # rebuild the pairs from the map and check the scored tokens are the repeated pairs' values
        expected, pos, seen = [], 0, set()
        while pos < len(toks):
            key = next(k for k in d["map"] if tuple(v - 1 for v in toks[pos:pos + len(k)]) == k
                       and pos + len(k) < len(toks) and toks[pos + len(k)] > 8
                       and tuple(v - 9 for v in toks[pos + len(k):pos + len(k) + len(d["map"][k])]) == d["map"][k])
            val = d["map"][key]
            if key in seen:
                expected += [(pos + len(key) - 1 + j, 9 + v) for j, v in enumerate(val)]
            seen.add(key)
            pos += len(key) + len(val)
        assert scored(d) == expected


def test_selective_copy_answer_is_the_scattered_tokens_in_order():
    rng = np.random.default_rng(2)
    for _ in range(50):
        d = mad.selective_copy(rng, blanks=56, copy=8)
        toks, region = d["tokens"], d["tokens"][:64]
        assert [region[p] for p in d["positions"]] == d["answer"]
        assert [t for t in region if t != 1] == d["answer"] and toks[64] == 2
        assert [y for _, y in scored(d)] == d["answer"] and scored(d)[0][0] == 64


def test_compression_targets_are_the_input():
    d = mad.compression(np.random.default_rng(3), length=16)
    assert d["tokens"][:-1] == d["targets"] and d["tokens"][-1] == 1 and min(d["targets"]) >= 2


def test_memorization_map_is_fixed_and_keys_distinct():
    kv = mad.memorization_map(5, 512)
    assert np.array_equal(kv, mad.memorization_map(5, 512)) and not np.array_equal(kv, mad.memorization_map(6, 512))
    rng = np.random.default_rng(4)
    for _ in range(20):
        d = mad.memorization(rng, 16, kv)
        keys = d["tokens"][0::2]
        assert len(set(keys)) == 16
        assert [y for _, y in scored(d)] == [513 + kv[k - 1] for k in keys]


def test_tasks_are_deterministic_and_fit_their_vocabulary():
    for task in mad.tasks(seed=0):
        a = [task.sample(task_rng(0, task.name, "test"), "test") for _ in range(5)]
        b = [task.sample(task_rng(0, task.name, "test"), "test") for _ in range(5)]
        assert a == b
        rng1, rng2 = task_rng(0, task.name, "train"), task_rng(0, task.name, "train")
        assert [task.sample(rng1, "train") for _ in range(10)] == [task.sample(rng2, "train") for _ in range(10)]
        for x, y in a:
            assert 0 < min(x) and max(x) < task.vocab_size and len(x) <= task.max_len
            assert all(t == IGNORE or 0 < t < task.vocab_size for t in y)
