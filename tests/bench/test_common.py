"""The shared bench machinery (hope/bench/common.py): masked losses, matched sizes, padding, scoring."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hope.bench import formal, mad, niah
from hope.bench.common import ARCHS, IGNORE, PAD, ModelShape, collate, evaluate, model_configs, task_rng
from hope.models import build_model
from hope.models.common import forward_backward


class NextTokenOracle(nn.Module):
    """Predicts every position's next input token exactly."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, x, state=None):
        nxt = torch.cat([x[:, 1:], torch.full_like(x[:, :1], PAD)], 1)
        return F.one_hot(nxt, self.vocab_size).float(), None


def test_scored_targets_are_the_next_inputs():
    """Every scored target but the last is the next input (teacher forcing), so "every scored token
    right" equals exact match of greedy generation; the metric can fail (formal labels are not inputs)."""
    for task in [t for t in mad.tasks(quick=True) if not t.decode_len] + niah.tasks(quick=True):
        examples = [task.sample(task_rng(0, task.name, s), s) for s in task.splits for _ in range(8)]
        for x, y in examples:
            scored = [t for t, v in enumerate(y) if v != IGNORE]
            assert scored and all(y[t] == x[t + 1] for t in scored if t + 1 < len(x)), task.name
        # with the last answer token appended as an input, predicting the next input is perfect
        extended = [(x + [y[-1]], y + [IGNORE]) if y[-1] != IGNORE else (x, y) for x, y in examples]
        assert evaluate(NextTokenOracle(task.vocab_size), None, extended, 4) == {"token": 1.0, "sequence": 1.0}
    task = formal.tasks(quick=True)[0]
    examples = [task.sample(task_rng(0, task.name, "bin0"), "bin0") for _ in range(8)]
    assert evaluate(NextTokenOracle(task.vocab_size), None, examples, 4)["sequence"] == 0.0


def test_collate_pads_right():
    x, y = collate([([5, 6, 7], [IGNORE, IGNORE, 2]), ([5], [3])])
    assert x.tolist() == [[5, 6, 7], [5, PAD, PAD]] and y.tolist() == [[IGNORE, IGNORE, 2], [3, IGNORE, IGNORE]]


@pytest.mark.parametrize("arch", ["transformer", "hope_attention"])
def test_forward_backward_scores_only_unmasked_targets(arch):
    task = mad.tasks(quick=True, names=["icr"])[0]
    cfg, _ = model_configs([arch], ModelShape(d_model=32), task.vocab_size, task.train_len, task.max_len)[arch]
    model = build_model(arch, cfg)
    x, y = collate([task.sample(task_rng(0, "icr", "train"), "train") for _ in range(3)])
    n = int((y != IGNORE).sum())
    loss, _ = forward_backward(model, x, y, None, n)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits, _ = model(x)
    mask = y != IGNORE
    ref = F.cross_entropy(logits[mask], y[mask], reduction="sum")
    (ref / n).backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
    model.zero_grad()
    loss, _ = forward_backward(model, x, torch.full_like(y, IGNORE), None, 1)  # nothing scored: no NaN
    assert loss == 0 and all(not p.grad.any() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("memory", ["mlp", "linear"])
def test_every_suite_matches_parameter_counts(memory):
    for task in (formal.tasks()[0], mad.tasks(names=["memorization", "icr"])[0], niah.tasks()[0]):
        configs = model_configs(ARCHS, ModelShape(memory=memory), task.vocab_size, task.train_len, task.max_len)
        target = configs["transformer"][1]
        assert set(configs) == set(ARCHS)
        for arch, (cfg, n) in configs.items():
            assert abs(n / target - 1) < 0.05, (task.name, arch, n, target)
            assert cfg.vocab_size == task.vocab_size
            assert getattr(cfg, "max_seq_len", task.max_len) >= task.max_len
            periods = [p for p in getattr(cfg, "cms_periods", ()) if p]
            assert not periods or min(periods) >= task.train_len  # one CMS segment per training sequence
