"""benchmarks/cms_table.py: the CMS carried across an evaluation stream, and its test-time step scale."""

import pytest
import torch
from conftest import load_benchmark

from hope.eval.scoring import independent_nll
from hope.models import HopeAttention, HopeAttentionConfig

W = 8


@pytest.fixture
def table():
    return load_benchmark("cms_table")


def model(meta: bool):
    torch.manual_seed(0)
    cfg = HopeAttentionConfig(vocab_size=23, d_model=16, n_layers=2, n_heads=2, max_seq_len=64,
                              cms_periods=(None, W, W // 2), cms_hidden=8, cms_lr=0.5, cms_meta=meta)
    return HopeAttention(cfg).double().eval()


@pytest.mark.parametrize("meta", [False, True], ids=["first_order", "meta"])
def test_carried_cms_reads_the_first_window_as_independent_and_carries_after(table, meta):
    m = model(meta)
    ids = torch.randint(0, 23, (4 * W + 1,))
    carried = table.carried_cms_nll(m, ids, W)
    alone = independent_nll(m, ids, W, learn=True)
    torch.testing.assert_close(carried[:W], alone[:W], rtol=0, atol=1e-5)  # float32 logits
    assert (carried[W:] - alone[W:]).abs().max() > 1e-4  # later windows start from the learned CMS
    with pytest.raises(Exception, match="whole number"):
        table.carried_cms_nll(m, ids[:-1], W)


def sizes(m):
    with torch.no_grad():
        return [[None if s is None else float(s) for s in b.cms.step_sizes()] for b in m.blocks]


@pytest.mark.parametrize("meta", [False, True], ids=["first_order", "meta"])
def test_scaled_steps_multiplies_every_step_size_and_restores_them(table, meta):
    m = model(meta)
    before = sizes(m)
    ids = torch.randint(0, 23, (2 * W + 1,))
    with table.scaled_steps(m, 10.0):
        scaled = sizes(m)
        loss_scaled = table.carried_cms_nll(m, ids, W)
    for b0, b1 in zip(before, scaled):
        for s0, s1 in zip(b0, b1):
            assert (s0 is None and s1 is None) or s1 == pytest.approx(10 * s0, rel=1e-6)
    assert sizes(m) == before
    assert (loss_scaled - table.carried_cms_nll(m, ids, W)).abs().max() > 1e-4
    if meta:
        assert table.step_sizes(m) == {str(i): [round(s, 5) for s in b if s is not None] for i, b in enumerate(before)}


def test_invocations_on_disjoint_rows_keep_each_others_rows(table, tmp_path, monkeypatch):
    """Two invocations of the table on different rows at once (one per core) share results.json: each
    reads it again before writing, so neither drops a row the other finished meanwhile."""
    import json

    def fake_row(name):
        run = tmp_path / name
        run.mkdir(exist_ok=True)
        (run / "metrics.jsonl").write_text(json.dumps({"tokens": 10, "val_ppl": 100.0}) + "\n")
        return {"arch": "x", "params": 1e6, "tokens": 10, "val_ppl": 100.0, "tokens_per_s": 1.0, "run": str(run)}

    def other_invocation_finishes(row):
        path = tmp_path / "results.json"
        rows = json.loads(path.read_text()) if path.exists() else []
        rows = [*rows, {**fake_row(row), "row": row, "label": row, "eval": {}}]
        path.write_text(json.dumps(rows))

    def run_one(arch, size, tokens, out, overrides, name):
        other_invocation_finishes({"ha_no_cms": "transformer", "ha_static": "hope_meta"}[name])
        return fake_row(name)

    monkeypatch.setattr(table, "run_one", run_one)
    monkeypatch.setattr(table, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr("sys.argv", ["cms_table.py", "--rows", "ha_no_cms,ha_static", "--out", str(tmp_path)])
    table.main()
    rows = [r["row"] for r in json.loads((tmp_path / "results.json").read_text())]
    assert rows == ["transformer", "ha_no_cms", "ha_static", "hope_meta"]  # in the table's order
    assert "hope_meta" in (tmp_path / "results.md").read_text()
