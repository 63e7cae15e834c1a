"""`hope bench ... --quick` end to end with tiny settings, and `hope eval niah` on a trained run."""

import json

import pytest

from hope.cli import main

TINY = ["--quick", "--steps", "2", "--eval-size", "4", "--batch-size", "4", "--d-model", "32", "--no-progress"]


def test_bench_formal_quick_writes_report(tmp_path, capsys):
    out = tmp_path / "formal"
    assert main(["bench", "formal", *TINY, "--tasks", "parity", "--models", "transformer,hope", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["results"]["parity"]
    assert set(rows) == {"transformer", "hope"}
    for rec in rows.values():
        assert rec["steps"] == 2 and set(rec["accuracy"]) == {"bin0", "bin1"}
        assert all(0 <= v <= 100 for v in rec["accuracy"].values())
    p = report["parameters"]
    assert abs(p["hope"]["parity"] / p["transformer"]["parity"] - 1) < 0.05
    md = (out / "results.md").read_text()
    assert "| parity |" in md and "46.4 / 0.0" in md  # ours and the paper's
    assert (out / "results.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["bench", "formal", *TINY, "--tasks", "parity", "--models", "transformer,hope", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done already") == 2  # finished pairs are reused


def test_bench_mad_compression_and_niah_lengths(tmp_path):
    assert main(["bench", "mad", *TINY, "--tasks", "compression", "--models", "titans", "--out", str(tmp_path / "m")]) == 0
    rec = json.loads((tmp_path / "m" / "results.json").read_text())["results"]["compression"]["titans"]
    assert set(rec["accuracy"]) == {"test"}
    assert main(["bench", "niah", *TINY, "--tasks", "passkey", "--models", "transformer", "--out", str(tmp_path / "n")]) == 0
    rec = json.loads((tmp_path / "n" / "results.json").read_text())["results"]["passkey"]["transformer"]
    assert list(rec["accuracy"]) == ["x1", "x2", "x4", "x8"]


@pytest.mark.parametrize("argv,msg", [(["--models", "rnn"], "unknown model 'rnn'"),
                                      (["--tasks", "dyck"], "unknown formal language 'dyck'"),
                                      (["--steps", "0"], "--steps must be > 0")])
def test_bench_bad_input(tmp_path, capsys, argv, msg):
    assert main(["bench", "formal", "--quick", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0]


def test_eval_niah_on_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "debug", "--out", str(run), "--no-progress", "--set", "model.d_model=32",
                 "model.max_seq_len=1024", "train.steps=2", "train.eval_every=2", "train.ckpt_every=2",
                 "train.eval_tokens=512", "train.sample_tokens=0"]) == 0
    out = tmp_path / "niah.json"
    assert main(["eval", "niah", "--run", str(run), "--tasks", "niah_single_1", "--lengths", "600,900",
                 "--samples", "2", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["niah_single_1"]
    assert set(res) == {"600", "900"} and all(r["samples"] == 2 and 0 <= r["accuracy"] <= 100 for r in res.values())
    assert "| niah_single_1 |" in capsys.readouterr().out
    assert main(["eval", "niah", "--run", str(run), "--lengths", "2000"]) == 2  # beyond max_seq_len


def test_bench_set_changes_the_named_models_only(tmp_path):
    from hope.bench.common import ModelShape, model_configs, parse_overrides

    archs = ["transformer", "titans", "hope"]
    shape = ModelShape(overrides=parse_overrides(["model.dgd_gate=true", "titans.dgd=true",
                                                  "hope.dgd_eta_max=1.9"], archs))
    cfgs = {a: c for a, (c, _) in model_configs(archs, shape, 16, 64, 64).items()}
    assert cfgs["titans"].dgd and cfgs["titans"].dgd_gate and cfgs["titans"].dgd_eta_max is None
    assert cfgs["hope"].dgd_gate and cfgs["hope"].dgd_eta_max == 1.9
    assert not hasattr(cfgs["transformer"], "dgd")
    base = {a: c for a, (c, _) in model_configs(archs, ModelShape(), 16, 64, 64).items()}
    assert not base["titans"].dgd and base["titans"].momentum_norm  # Hope's inner-rule conventions
    out = tmp_path / "m"
    assert main(["bench", "mad", *TINY, "--tasks", "icr", "--models", "titans", "--out", str(out),
                 "--set", "titans.dgd=true", "--set", "titans.dgd_eta_max=1.5"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["shape"]["overrides"] == [["titans", "dgd", "true"], ["titans", "dgd_eta_max", "1.5"]]


@pytest.mark.parametrize("item,msg", [("model.no_such=1", "no chosen model has the field 'no_such'"),
                                      ("rnn.dgd=true", "must be model or one of"),
                                      ("dgd", "must look like model.FIELD=VALUE"),
                                      ("hope.dgd_eta_max=3", "model.dgd_eta_max must be in (0, 1.96875]")])
def test_bench_set_bad_input(tmp_path, capsys, item, msg):
    assert main(["bench", "mad", *TINY, "--tasks", "icr", "--models", "titans,hope", "--out", str(tmp_path),
                 "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and msg in err[-1]


def test_bench_report_only_trains_nothing(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["bench", "formal", *TINY, "--tasks", "parity", "--models", "transformer", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", "formal", *TINY, "--tasks", "parity,aa_star", "--models", "transformer,titans",
                 "--out", str(out), "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("not trained yet") == 3 and "done already" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["results"] == {"parity": {"transformer": report["results"]["parity"]["transformer"]}, "aa_star": {}}
    assert not (out / "pairs" / "parity__titans.json").exists()
