"""The offline task YAMLs load in lm-eval 0.4.13 from local files (the fixtures: four rows of each
prepared set) and run end to end with the adapter. Skipped without the `eval` extra."""

from pathlib import Path

import pytest

from hope.eval.harness import TASKS, paper_table, task_dir

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))


def test_yamls_name_their_data():
    from importlib import resources

    folder = resources.files("hope.data").joinpath("tasks")
    for t in TASKS:
        text = folder.joinpath(f"{t}.yaml").read_text()
        assert f"task: {t}\n" in text and f"HOPE_DATA_DIR/{t}/" in text and "dataset_path: json" in text


def test_task_yamls_load_offline(offline, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    folder = task_dir(TASKS, data_dir=FIXTURES, out_dir=tmp_path / "tasks")
    tasks = TaskManager(include_path=str(folder), include_defaults=False).load(TASKS)["tasks"]
    assert set(tasks) == set(TASKS)
    piqa = tasks["piqa"]
    doc = piqa.dataset["validation"][0]
    assert piqa.doc_to_text(doc).startswith("Question: ") and len(piqa.doc_to_choice(doc)) == 2
    wino = tasks["winogrande"]
    doc = wino.dataset["validation"][0]
    assert wino.doc_to_text(doc) in (0, 1) and wino.doc_to_target(doc).startswith(" ")
    lmb = tasks["lambada"]
    doc = lmb.dataset["test"][0]
    assert lmb.doc_to_text(doc) + lmb.doc_to_target(doc) == doc["text"]
    boolq = tasks["boolq"]
    assert boolq.doc_to_target(boolq.dataset["validation"][0]) in (0, 1)


def test_harness_end_to_end(offline, tiny_model, byte_tok):
    pytest.importorskip("lm_eval")
    from hope.eval.adapter import Scorer
    from hope.eval.harness import run_tasks

    res = run_tasks(Scorer(tiny_model("titans"), byte_tok), ["piqa", "winogrande", "lambada"], limit=2,
                    data_dir=FIXTURES, progress=False)
    assert res["piqa"]["n"] == 2 and 0 <= res["piqa"]["acc"] <= 1 and "acc_norm" in res["piqa"]
    assert res["lambada"]["perplexity"] > 1
    table = paper_table(res, "tiny")
    assert "LMB ppl" in table and "PIQA" in table and "Avg (3)" in table
