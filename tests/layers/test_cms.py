"""CMS semantics (SPEC 4.3): when fast weights change, by how much, and that learning in context helps."""

import pytest
import torch
import torch.nn.functional as F

from hope.layers.state import detach_state
from hope.models import HopeAttention, HopeAttentionConfig

SEG = 4


def model(periods=(None, 2 * SEG, SEG), lr=0.5, **kw):
    torch.manual_seed(0)
    cfg = HopeAttentionConfig(vocab_size=23, d_model=16, n_layers=2, n_heads=2, max_seq_len=128, cms_periods=periods,
                              cms_hidden=8, cms_lr=lr, **kw)
    return HopeAttention(cfg).double()


def deltas(state):
    return [[None if d is None else {k: v.clone() for k, v in d.items()} for d in b["cms"]["delta"]]
            for b in state["blocks"]]


def test_level_changes_exactly_every_period_and_static_never():
    m = model()
    params = {k: v.clone() for k, v in m.state_dict().items()}
    tokens = torch.randint(0, 23, (2, 6 * SEG + 1))
    state, history = None, []
    for a in range(0, tokens.shape[1], SEG):  # read in segments; read() itself also splits at period edges
        _, state = m.read(tokens[:, a:a + SEG + 1][:, :SEG], state)
        history.append((state["blocks"][0]["cms"]["pos"], deltas(state)))
    prev = deltas(m.init_state(2))
    for pos, now in history:
        for block_prev, block_now in zip(prev, now):
            assert block_now[0] is None  # static level: no fast weights at all
            for level, period in ((1, 2 * SEG), (2, SEG)):
                changed = not torch.equal(block_prev[level]["w1"], block_now[level]["w1"])
                assert changed == (pos % period == 0), (pos, period)
        prev = now
    for k, v in m.state_dict().items():
        assert torch.equal(v, params[k]), f"reading changed the meta-learned weight {k}"


def test_update_equals_accumulated_task_gradient():
    """The slow level's step equals -lr / C times the summed next-token-loss gradient of its C tokens,
    computed here with plain autograd segment by segment (the fast level steps in between)."""
    lr = 0.3
    m = model(lr=lr)
    tokens = torch.randint(0, 23, (2, 2 * SEG + 1))
    _, state = m.read(tokens, None)
    got = [b["cms"]["delta"][1] for b in state["blocks"]]

    s = m.init_state(2)
    slow_grads = None
    for a in (0, SEG):
        s = detach_state(s)
        leaves = m.fast_weights(s)
        for w in leaves:
            w.requires_grad_(True)
        logits, s = m(tokens[:, a:a + SEG], s)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, a + 1:a + SEG + 1].flatten(), reduction="sum")
        grads = torch.autograd.grad(loss, leaves)
        # leaves per block: slow w1, slow w2, fast w1, fast w2
        g_slow = [grads[4 * i:4 * i + 2] for i in range(2)]
        slow_grads = g_slow if slow_grads is None else [[x + y for x, y in zip(p, q)] for p, q in zip(slow_grads, g_slow)]
        for i, b in enumerate(s["blocks"]):  # the fast level's own step (period SEG)
            fast = b["cms"]["delta"][2]
            b["cms"]["delta"][2] = {"w1": fast["w1"].detach() - lr / SEG * grads[4 * i + 2],
                                    "w2": fast["w2"].detach() - lr / SEG * grads[4 * i + 3]}
    for i in range(2):
        torch.testing.assert_close(got[i]["w1"], -lr / (2 * SEG) * slow_grads[i][0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got[i]["w2"], -lr / (2 * SEG) * slow_grads[i][1], rtol=1e-9, atol=1e-12)


def test_forward_does_not_learn_and_pieces_equal_whole():
    m = model()
    tokens = torch.randint(0, 23, (2, 37))
    whole, _ = m(tokens)
    state, parts = None, []
    for a, b in ((0, 5), (5, 6), (6, 19), (19, 37)):
        logits, state = m(tokens[:, a:b], state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-10, atol=1e-10)
    assert torch.equal(deltas(state)[0][2]["w1"], torch.zeros_like(deltas(state)[0][2]["w1"]))


def test_token_by_token_generation_equals_full_forward():
    m = model().eval()
    tokens = torch.randint(0, 23, (2, 20))
    whole, _ = m(tokens)
    state, steps = None, []
    for t in range(20):
        logits, state = m(tokens[:, t:t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_learning_in_context_lowers_later_loss(variant):
    """On a text with a skewed token distribution, a CMS that learns while reading predicts the
    later half better than the same model frozen (`learn=False`)."""
    m = model(periods=(None, 2 * SEG, SEG), lr=2.0, cms_variant=variant)
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(23, generator=g) * 3, 0)
    tokens = torch.multinomial(probs, 2 * 96, replacement=True, generator=g).view(2, 96)
    half = tokens.shape[1] // 2

    def later_loss(learn):
        logits, _ = m.read(tokens, None, learn=learn)
        return F.cross_entropy(logits[:, half:-1].flatten(0, 1), tokens[:, half + 1:].flatten()).item()

    assert later_loss(True) < later_loss(False) - 0.05


def test_nested_variant_reinitializes_the_faster_level():
    m = model(periods=(None, 2 * SEG, SEG), cms_variant="nested")
    tokens = torch.randint(0, 23, (1, 2 * SEG))
    _, state = m.read(tokens, None)
    cms, s = m.blocks[0].cms, state["blocks"][0]["cms"]
    slow = cms.levels[1].gate_up.weight + s["delta"][1]["w1"]
    fast = cms.levels[2].gate_up.weight + s["delta"][2]["w1"]
    torch.testing.assert_close(fast, slow)
