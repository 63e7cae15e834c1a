"""benchmarks/ablation.py: every row is one valid Hope config switch, at matched parameters, and the
report renders what was measured (the run itself is `python benchmarks/ablation.py --quick`)."""

import pytest
from conftest import load_benchmark


@pytest.fixture
def ablation():
    return load_benchmark("ablation")


def test_rows_are_the_papers_switches(ablation):
    from hope.bench import mad
    from hope.bench.common import ModelShape, model_configs, parse_overrides

    assert list(ablation.ROWS)[:8] == list(ablation.PAPER) and len(ablation.PAPER) == 8
    task = mad.tasks(False, ["icr"])[0]
    seen = set()
    for row, (_, overrides) in ablation.ROWS.items():
        cfg = ablation.lm_config(overrides, 10).model
        changed = {k for k, v in vars(cfg).items() if v != getattr(ablation.lm_config([], 10).model, k)}
        if row == "spec_memory":  # the design our default replaces, not a paper row
            assert changed == {"memory", "self_target"}
            continue
        assert len(changed) == (0 if row == "full" else 1)
        seen |= changed
        shape = ModelShape(overrides=parse_overrides([f"hope.{o.split('.', 1)[1]}" for o in overrides], ["hope"]))
        configs = model_configs(["transformer", "hope"], shape, task.vocab_size, task.train_len, task.max_len)
        assert abs(configs["hope"][1] / configs["transformer"][1] - 1) < 0.05
    assert seen == {"dgd", "momentum", "retention", "cms", "static_k", "static_v", "static_q"}


def test_markdown_reports_measured_rows_only(ablation):
    rec = {"accuracy": {"test": 87.5}, "diverged": None, "params": 107_916}
    report = {"settings": {"lm_steps": 150, "recall_tasks": ["icr"], "base": [], "seed": 0,
                           "recall_budget": {"steps": 600, "batch_size": 32}},
              "rows": {"full": {"lm": {"val_ppl": 9.625, "val_bpb": 3.27, "params": 117_452}, "recall": {"icr": rec}},
                       "no_dgd": {"recall": {"icr": {**rec, "diverged": "loss nan at step 3"}}}}}
    md = ablation.markdown(report)
    assert "| Hope (full) | 9.625 | 3.2700 | 117,452 | 87.5 | 107,916 | 12.24 / 58.1 |" in md
    assert "| w/o DGD |  |  |  | diverged | 107,916 | 13.41 / 56.5 |" in md
