"""hope.continual: metrics on hand-made matrices, the task builders, replay and EWC, and `--quick`
smoke runs of both benchmarks through the CLI (on small text made here: no prepared data needed)."""

import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from cli_support import error_of
from hope.cli import main
from hope.continual import metrics
from hope.continual.methods import EWC, ReplayBuffer, ewc_penalty
from hope.continual.tasks import Item, build_tasks, label_name, load_folder
from hope.errors import HopeError

# accuracies after each of 3 tasks (rows) on each task (columns)
ACC = [[0.9, 0.1, 0.2],
       [0.6, 0.8, 0.3],
       [0.5, 0.7, 0.9]]


def test_metrics_on_accuracies():
    assert metrics.average(ACC) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert metrics.backward_transfer(ACC) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    # best before the last stage minus final: task 0: 0.9 - 0.5, task 1: 0.8 - 0.7
    assert metrics.forgetting(ACC) == pytest.approx((0.4 + 0.1) / 2)
    # R[j-1, j] - b_j for j = 1, 2
    assert metrics.forward_transfer(ACC, [0.0, 0.05, 0.1]) == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)
    assert metrics.forward_transfer(ACC, None) is None
    assert metrics.learning_score(ACC) == pytest.approx((0.9 + 0.8 + 0.9) / 3)  # the diagonal
    assert metrics.summary(ACC)["learning"] == pytest.approx(metrics.learning_score(ACC))


def test_metrics_on_losses_are_signed_like_accuracies():
    loss = [[2.0, 5.0], [2.6, 3.0]]  # task 0's loss grew by 0.6 while learning task 1
    assert metrics.backward_transfer(loss, higher_is_better=False) == pytest.approx(-0.6)
    assert metrics.forgetting(loss, higher_is_better=False) == pytest.approx(0.6)
    assert metrics.forward_transfer(loss, [6.0, 6.0], higher_is_better=False) == pytest.approx(1.0)
    s = metrics.summary(loss, higher_is_better=False, baseline=[6.0, 6.0])
    assert s["acc"] == pytest.approx(2.8) and s["forgetting"] == pytest.approx(0.6)


def test_metrics_skip_undefined_entries_and_reject_bad_shapes():
    nan = math.nan
    R = [[0.9, nan], [0.4, 0.8]]  # class-incremental: task 1 not scorable before it is learned
    assert metrics.average(R) == pytest.approx(0.6)
    assert metrics.forgetting(R) == pytest.approx(0.5)
    assert metrics.backward_transfer([[1.0]]) is None and metrics.forgetting([[1.0]]) is None
    with pytest.raises(HopeError):
        metrics.average([[1.0, 2.0]])


def _items():
    rng = random.Random(0)
    items = []
    for c in ("alpha", "beta", "gamma", "delta", "eps-ilon", "zeta"):
        for i in range(30):
            items.append(Item(c, f"{c} text {i} {rng.random():.6f}", "train" if i < 22 else "test"))
    # a held-out text that is also a training text must never be scored
    items.append(Item("alpha", "alpha text 0 shared", "train"))
    items.append(Item("alpha", "alpha text 0 shared", "test"))
    return items


def test_task_builder_disjoint_deterministic_and_clean():
    items = _items()
    tasks = build_tasks(items, n_tasks=3, classes_per_task=2, train_per_class=10, test_per_class=5, seed=3)
    classes = [c for t in tasks for c in t.classes]
    assert len(classes) == len(set(classes)) == 6
    train_texts = {it.text for t in tasks for it in t.train}
    for t in tasks:
        assert {it.label for it in t.train} == {it.label for it in t.test} == set(t.classes)
        assert all(it.text not in train_texts for it in t.test)
        assert len(t.train) == 20 and len(t.test) == 10
    assert tasks == build_tasks(list(reversed(items)), 3, 2, 10, 5, seed=3)  # same items, any order: same tasks
    assert tasks != build_tasks(items, 3, 2, 10, 5, seed=4)
    with pytest.raises(HopeError, match="classes"):
        build_tasks(items, 4, 2, 10, 5)
    assert label_name("men-women") == "men women"


def test_labelled_folder(tmp_path):
    (tmp_path / "jokes").write_text("one\n%\ntwo\n%\nthree\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a document")
    items = load_folder(tmp_path)
    assert sorted((it.label, it.text) for it in items) == [("docs", "a document"), ("jokes", "one"),
                                                          ("jokes", "three"), ("jokes", "two")]


def test_replay_buffer_is_bounded_and_shared_between_stages():
    buf = ReplayBuffer(capacity=30, seed=1)
    for s in range(5):
        x = torch.full((100, 8), s)
        buf.add_stage(x, x + 1)
        assert len(buf) <= 30
        assert [len(sx) for sx, _ in buf.stages] == [30 // (s + 1)] * (s + 1)
    x, y = buf.sample(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 8) and torch.equal(y, x + 1)
    assert set(x[:, 0].tolist()) <= set(range(5))
    state = buf.state_dict()
    other = ReplayBuffer(1)
    other.load_state_dict(state)
    assert len(other) == len(buf)


def test_ewc_penalty_zero_at_anchor_and_gradient():
    torch.manual_seed(0)
    shapes = [(3, 4), (5,)]
    anchor = [torch.randn(s, dtype=torch.float64) for s in shapes]
    fisher = [torch.rand(s, dtype=torch.float64) for s in shapes]
    assert ewc_penalty(anchor, fisher, anchor, 7.0).item() == 0.0
    params = [(a + torch.randn_like(a)).requires_grad_() for a in anchor]
    assert torch.autograd.gradcheck(lambda *p: ewc_penalty(list(p), fisher, anchor, 7.0), params)
    ewc_penalty(params, fisher, anchor, 7.0).backward()
    for p, f, a in zip(params, fisher, anchor):
        torch.testing.assert_close(p.grad, 7.0 * f * (p.detach() - a))


def test_ewc_consolidate_on_a_model():
    from hope.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=16))
    x = torch.randint(0, 32, (3, 8))
    ewc = EWC(lam=10.0)
    ewc.consolidate(model, x, x.roll(-1, 1), lambda: torch.autocast("cpu", enabled=False))
    assert ewc.active and all((f >= 0).all() for f in ewc.fisher)
    assert sum(float(f.sum()) for f in ewc.fisher) > 0
    assert ewc.penalty(model).item() == 0.0
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    assert ewc.penalty(model).item() > 0


def _domain(path, seed: int, words: list[str]):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


QUICK = ["--quick", "--no-progress", "--seed", "1"]


def test_lm_quick_smoke_and_resume(tmp_path, capsys):
    a = _domain(tmp_path / "a.txt", 0, ["the", "king", "shall", "thou", "art", "lord"])
    b = _domain(tmp_path / "b.txt", 1, ["def", "return", "import", "class", "self", "none"])
    out = tmp_path / "out"
    args = ["continual", "lm", *QUICK, "--domains", f"{a},{b}", "--tokens-per-stage", "1024", "--eval-tokens", "256",
            "--out", str(out)]
    assert main([*args, "--archs", "transformer", "--methods", "seq,replay,ewc,joint"]) == 0
    assert main([*args, "--archs", "hope_attention", "--methods", "seq,static_cms"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["benchmark"] == "lm" and res["domains"] == ["a.txt", "b.txt"]
    runs = {r["name"]: r for r in res["runs"]}
    # the report holds every finished run in --out with these settings, not only the last call's
    assert list(runs) == ["transformer-seq-adamw", "transformer-replay-adamw", "transformer-ewc-adamw",
                          "transformer-joint-adamw", "hope_attention-seq-adamw", "hope_attention-static_cms-adamw"]
    first = json.loads((out / "runs" / "transformer-seq-adamw" / "result.json").read_text())
    assert np.array(first["R_loss"]).shape == (2, 2) and len(first["baseline"]) == 2
    assert all(math.isfinite(v) for v in first["metrics"].values() if v is not None)
    # how far each stage moved each role's weights
    assert len(first["drift"]) == 2 and {"attention", "mlp", "embedding"} <= set(first["drift"][0])
    assert all(d["mlp"] > 0 for d in first["drift"])
    cms_roles = set(runs["hope_attention-seq-adamw"]["drift"][0])
    assert "cms static" in cms_roles and any(r.startswith("cms period") for r in cms_roles)
    probe = runs["hope_attention-seq-adamw"]["inference_forgetting"]["modes"]
    # how far each learning level moved while reading, by period
    moved = probe["learn"]["moved_after_b"]
    assert "moved_after_b" not in probe["frozen"] and all(v > 0 for v in moved.values()) and len(moved) >= 1
    assert "inference_forgetting" not in runs["hope_attention-static_cms-adamw"]
    assert (out / "results.md").read_text().count("| hope_attention |") >= 2
    assert (out / "results.md").read_text().count("| transformer |") >= 4
    pytest.importorskip("matplotlib")
    assert (out / "R_transformer-seq-adamw.png").exists() and (out / "curve_transformer-seq-adamw.png").exists()
    # resumable: a run whose result is lost is rebuilt from its checkpoint, with the same scores
    (out / "runs" / "transformer-seq-adamw" / "result.json").unlink()
    capsys.readouterr()
    assert main([*args, "--archs", "transformer", "--methods", "seq"]) == 0
    assert "resuming after stage 2" in capsys.readouterr().out
    again = json.loads((out / "runs" / "transformer-seq-adamw" / "result.json").read_text())
    assert again["R_loss"] == first["R_loss"]


def test_classify_quick_smoke(tmp_path):
    src = tmp_path / "labelled"
    src.mkdir()
    for c, words in {"cats": ["purr", "meow", "whisker"], "dogs": ["bark", "woof", "fetch"],
                     "fish": ["swim", "fin", "gill"], "birds": ["wing", "tweet", "nest"]}.items():
        rng = random.Random(c)
        (src / c).write_text("\n%\n".join(" ".join(rng.choice(words) for _ in range(6)) + f" {i}" for i in range(200)))
    general = _domain(tmp_path / "general.txt", 2, ["a", "general", "corpus", "of", "words"])
    out = tmp_path / "out"
    assert main(["continual", "classify", *QUICK, "--sources", str(src), "--pretrain", general, "--archs", "transformer",
                 "--methods", "seq,replay", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["seq", "replay"]
    r = res["runs"][0]
    assert r["R_acc"][0][1] is None and all(0 <= v <= 1 for v in r["R_acc"][1])
    assert (out / "pretrain" / "transformer-adamw" / "result.json").exists()
    assert (out / "tokenizer.json").exists()  # the suite's tokenizer, checked by every later call
    # a call running another subset into the same folder reports the whole suite so far
    assert main(["continual", "classify", *QUICK, "--sources", str(src), "--pretrain", general, "--archs", "transformer",
                 "--methods", "joint", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["seq", "replay", "joint"]
    # --task-lr: the task stages at another learning rate, the pretrained model reused
    assert main(["continual", "classify", *QUICK, "--sources", str(src), "--pretrain", general, "--archs", "transformer",
                 "--methods", "seq", "--task-lr", "1e-4", "--out", str(out)]) == 2       # another setting, same --out
    assert main(["continual", "classify", *QUICK, "--sources", str(src), "--pretrain", general, "--archs", "transformer",
                 "--methods", "seq", "--task-lr", "1e-4", "--out", str(tmp_path / "out2")]) == 0
    run = json.loads((tmp_path / "out2" / "runs" / "labelled-transformer-seq-adamw" / "config.json").read_text())
    assert run["train"]["lr"] == 1e-4


def test_bad_input_is_one_line(tmp_path, capsys):
    a = _domain(tmp_path / "a.txt", 0, ["x", "y"])
    (tmp_path / "empty").mkdir()
    base = ["continual", "lm", *QUICK, "--out", str(tmp_path / "o")]
    assert "unknown domain 'nowhere'" in error_of(capsys, [*base, "--domains", f"{a},nowhere"])
    assert "unknown method 'sgd'" in error_of(capsys, [*base, "--domains", f"{a},{a}x", "--methods", "sgd"])
    assert "static_cms does not apply to transformer" in error_of(
        capsys, [*base, "--domains", f"{a},{a}", "--archs", "transformer", "--methods", "static_cms"])
    assert "holds no text" in error_of(capsys, [*base, "--domains", f"{a},{tmp_path / 'empty'}"])
    assert "unknown source" in error_of(capsys, ["continual", "classify", *QUICK, "--sources", "nowhere",
                                                 "--out", str(tmp_path / "o2")])


def _deb(tmp_path, files: dict) -> "Path":
    """A minimal .deb holding `files` (path -> bytes), built with dpkg-deb."""
    import shutil
    import subprocess

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: fake\nVersion: 1\nArchitecture: all\nMaintainer: x <x@y>\n"
                                             "Description: test\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(tmp_path / "fake.deb")], check=True,
                   capture_output=True)
    return tmp_path / "fake.deb"


def test_prepare_fortunes_and_kerneldoc(tmp_path):
    import gzip

    from hope.data import registry

    shared = "the same fortune in two categories"
    cats = "\n%\n".join([f"cat fortune {i}" for i in range(40)] + [shared]) + "\n%\n"
    dogs = "\n%\n".join([f"dog fortune {i}" for i in range(40)] + [shared, "dog fortune 0"]) + "\n"
    deb = _deb(tmp_path / "f", {"usr/share/games/fortunes/cats": cats.encode(),
                                "usr/share/games/fortunes/dogs": dogs.encode(),
                                "usr/share/games/fortunes/cats.dat": b"\x00binary index"})
    splits = registry._prepare_fortunes(deb)
    texts = [r["text"] for s in splits.values() for r in s]
    assert shared not in texts and len(texts) == len(set(texts)) == 80  # cross-label and repeated texts dropped
    assert {r["label"] for s in splits.values() for r in s} == {"cats", "dogs"}
    assert splits == registry._prepare_fortunes(deb)
    para = "Networking paragraph about sockets and queues, long enough to count as one item of its class. " * 3
    deb = _deb(tmp_path / "k", {
        "usr/share/doc/linux-doc-6.1/Documentation/networking/a.rst.gz": gzip.compress((para + "\n\n" + para + "x").encode()),
        "usr/share/doc/linux-doc-6.1/Documentation/scsi/b.rst": (para.replace("Networking", "SCSI")).encode(),
        "usr/share/doc/linux-doc-6.1/Documentation/x86/c.rst": (para.replace("Networking", "x86")).encode()})
    recs = [r for s in registry._prepare_kerneldoc(deb).values() for r in s]
    assert sorted(r["label"] for r in recs) == ["networking", "networking", "scsi"]  # x86 is an architecture
    by_doc = {}
    for split, rs in registry._prepare_kerneldoc(deb).items():
        for r in rs:
            by_doc.setdefault(r["title"].split("#")[0], set()).add(split)
    assert all(len(s) == 1 for s in by_doc.values())  # a document's paragraphs share one split


def test_parameter_roles_and_role_drift():
    from hope.continual.levels import cms_periods, context_movement, parameter_role, role_drift
    from hope.models import build_model
    from hope.recipes import get_recipe

    cfg = get_recipe("hope_attention_debug")
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model)
    periods = cms_periods(model)
    roles = {parameter_role(n, periods) for n, _ in model.named_parameters()}
    levels = {("cms static" if p is None else f"cms period {p}") for p in cfg.model.cms_periods}
    assert levels <= roles and "embedding" in roles and "attention" in roles and "other" not in roles
    assert parameter_role("blocks.0.mlp.down.weight") == "mlp"
    before = {n: p.detach().double() for n, p in model.named_parameters()}    # float64: the 1.5x is exact
    after = {n: p.clone() for n, p in before.items()}
    moved = next(n for n in after if parameter_role(n, periods) == sorted(levels - {"cms static"})[0])
    after[moved] = after[moved] * 1.5                               # one level's one matrix, by half its size
    drift = role_drift(before, after, periods)
    role = parameter_role(moved, periods)
    same = [n for n in before if parameter_role(n, periods) == role]
    want = float(before[moved].double().norm() * 0.5 / torch.sqrt(sum(before[n].double().pow(2).sum() for n in same)))
    assert drift[role] == pytest.approx(want, rel=1e-12)
    assert all(v == 0.0 for r, v in drift.items() if r != role)

    rows = torch.randint(0, cfg.model.vocab_size, (2, 4 * min(p for p in cfg.model.cms_periods if p)))
    moves = context_movement(model, rows, window=rows.shape[1] // 2)
    assert set(moves) == {str(p) for p in cfg.model.cms_periods if p is not None}
    assert all(v > 0 for v in moves.values())
    static = build_model(cfg.arch, replace(cfg.model, cms_periods=(None,) * len(cfg.model.cms_periods)))
    assert context_movement(static, rows, window=8) == {}


def test_classify_suite_keeps_one_tokenizer(tmp_path):
    """A suite folder keeps the tokenizer of its first call (trained on the task texts of its
    sources); a call that builds another one is refused, so pretrained checkpoints never continue
    with another vocabulary."""
    from hope.continual.classify import _check_tokenizer

    class Tok:
        def __init__(self, text):
            self.text = text

        def to_json(self):
            return self.text

    _check_tokenizer(tmp_path, Tok('{"vocab": 1}'))
    _check_tokenizer(tmp_path, Tok('{"vocab": 1}'))
    with pytest.raises(HopeError, match="another tokenizer"):
        _check_tokenizer(tmp_path, Tok('{"vocab": 2}'))
