"""`hope eval ppl` / `hope eval context` on tiny models: the numbers agree with the scoring
functions, CMS models get their learning pass, and the CLI writes JSON and a plot."""

import json
import math

import pytest
import torch

from hope.eval.lm import context_curve, context_rows, perplexity, plot_context
from hope.eval.scoring import independent_nll, stream_ids

DOCS = ["First document, long enough to be cut into pieces. " * 6, "Second one, shorter. " * 3,
        "A third document with its own words and letters. " * 5]


def test_perplexity_modes(tiny_model, byte_tok):
    model = tiny_model("hope")
    res = perplexity(model, byte_tok, DOCS, window=32, streams=2, log=lambda *a: None)
    assert set(res) == {"carried", "carried_learn", "independent", "independent_learn"}
    ids = stream_ids(DOCS, byte_tok)
    nll = independent_nll(model, ids, 32)
    assert res["independent"]["loss"] == pytest.approx(float(nll.mean()), rel=1e-9)
    learned = independent_nll(model, ids, 32, learn=True)
    assert res["independent_learn"]["loss"] == pytest.approx(float(learned.mean()), rel=1e-9)
    assert not torch.allclose(nll, learned)  # the CMS learned within each window
    assert res["independent"]["bpb"] == pytest.approx(float(nll.sum()) / (len(ids) - 1) / math.log(2), rel=1e-9)
    assert res["carried"]["tokens"] == len(ids) - 1


def test_context_rows_and_curve(tiny_model, byte_tok, tmp_path):
    rows = context_rows(DOCS, byte_tok, 100, max_rows=5)
    assert rows.shape == (5, 101) and rows[0, 0] == byte_tok.eos_id  # each document's first piece after [eos]
    curve = context_curve(tiny_model("hope"), byte_tok, DOCS, 100, 32, max_rows=4, log=lambda *a: None)
    assert set(curve["modes"]) == {"no_learn", "learn"} and len(curve["modes"]["learn"]["loss"]) == 100
    assert curve["buckets"][0] == (0, 1) and curve["buckets"][-1] == (64, 100)
    pytest.importorskip("matplotlib")
    assert plot_context(curve, tmp_path / "c.png", "test") and (tmp_path / "c.png").stat().st_size > 1000


def test_eval_cli_on_a_debug_run(tmp_path, monkeypatch, capsys):
    """`hope eval ppl` and `hope eval context` on a 4-step debug run (Shakespeare, built in)."""
    from hope.cli import main

    run = tmp_path / "run"
    assert main(["train", "--recipe", "debug", "--set", "train.steps=4", "train.eval_every=4", "train.ckpt_every=4",
                 "train.sample_tokens=0", "--out", str(run), "--no-progress"]) == 0
    assert main(["eval", "ppl", "--run", str(run), "--data", "shakespeare", "--max-tokens", "3000",
                 "--out", str(tmp_path / "ppl.json")]) == 0
    res = json.loads((tmp_path / "ppl.json").read_text())["results"]
    assert res["carried"]["tokens"] == 3000 and res["independent"]["bpb"] > 0
    assert main(["eval", "context", "--run", str(run), "--data", "shakespeare", "--length", "128",
                 "--max-pieces", "4"]) == 0
    assert (run / "eval" / "context_shakespeare.json").exists()
    assert main(["eval", "ppl", "--run", str(run), "--data", "shakespeare", "--window", "999"]) == 2
    assert "exceeds the model's maximum length" in capsys.readouterr().err
    # dynamic evaluation, its learning rate tuned on the validation split
    assert main(["eval", "ppl", "--run", str(run), "--data", "shakespeare", "--max-tokens", "1024", "--modes",
                 "independent", "--dynamic", "--dynamic-tune-tokens", "512", "--out", str(tmp_path / "dyn.json")]) == 0
    dyn = json.loads((tmp_path / "dyn.json").read_text())["results"]["dynamic"]
    assert dyn["tokens"] == 1024 and dyn["lr"] == min((float(k) for k in dyn["tuning"]), key=lambda k: dyn["tuning"][f"{k:g}"])
    assert main(["eval", "ppl", "--run", str(run), "--data", "shakespeare", "--dynamic", "--dynamic-lr", "x"]) == 2
    assert "--dynamic-lr must be a number" in capsys.readouterr().err
