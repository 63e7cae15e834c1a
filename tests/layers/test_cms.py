"""CMS semantics (SPEC 4.3): when fast weights change, by how much, and that learning in context helps."""

import math

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


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent", "parallel"])
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


def test_static_parallel_cms_is_one_wide_swiglu():
    """The parallel variant with static levels computes exactly one SwiGLU whose hidden units are
    the levels' side by side (with the levels' norm weights equal, as at init); the sequential chain
    does not."""
    from hope.layers.cms import CMS

    torch.manual_seed(0)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for variant, equal in (("parallel", True), ("sequential", False)):
        cms = CMS(16, 8, (None, None, None), variant).double()
        for norm in cms.norms:  # trained norms differ; give them one common weight
            norm.weight.data.copy_(torch.linspace(0.5, 1.5, 16, dtype=torch.float64))
        wide_up = torch.cat([lvl.gate_up.weight.view(2, 8, 16) for lvl in cms.levels], dim=1).view(48, 16)
        wide_down = torch.cat([lvl.down.weight for lvl in cms.levels], dim=1)
        gate, up = F.linear(cms.norms[0](x), wide_up).chunk(2, dim=-1)
        want = x + F.linear(F.silu(gate) * up, wide_down)
        got, _ = cms(x, None)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12) == equal


def test_nested_variant_reinitializes_the_faster_level():
    m = model(periods=(None, 2 * SEG, SEG), cms_variant="nested")
    tokens = torch.randint(0, 23, (1, 2 * SEG))
    _, state = m.read(tokens, None)
    cms, s = m.blocks[0].cms, state["blocks"][0]["cms"]
    slow = cms.levels[1].gate_up.weight + s["delta"][1]["w1"]
    fast = cms.levels[2].gate_up.weight + s["delta"][2]["w1"]
    torch.testing.assert_close(fast, slow)


def _reference_meta_grads(m, tokens, lrs_of):
    """Plain reference of the meta-learned step: the whole sequence unrolled segment by segment, every
    CMS update written out here inside the graph (create_graph), the mixers' state never cut, then
    the gradient of the summed loss with respect to every parameter. A segment's CMS gradient is
    taken with respect to a copy of the fast weights made for that segment, so it covers the
    segment's own use of them (not earlier segments' reads held in the KV cache), as at inference."""
    B, T = tokens.shape[0], tokens.shape[1] - 1
    s = m.init_state(B)
    periods = m.blocks[0].cms.periods
    acc = [[None] * len(periods) for _ in m.blocks]
    total = 0.0
    for a in range(0, T, SEG):
        for b in s["blocks"]:
            b["cms"]["delta"] = [None if d is None else {k: v.clone() if v.requires_grad else v.requires_grad_(True)
                                                          for k, v in d.items()} for d in b["cms"]["delta"]]
        leaves = m.fast_weights(s)
        logits, s = m(tokens[:, a:a + SEG], s)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, a + 1:a + SEG + 1].flatten(), reduction="sum")
        grads = iter(torch.autograd.grad(loss, leaves, create_graph=True))
        total = total + loss
        pos = a + SEG
        for i, b in enumerate(s["blocks"]):
            lrs = lrs_of(m.blocks[i].cms)
            for lvl, period in enumerate(periods):
                if period is None:
                    continue
                g = {"w1": next(grads), "w2": next(grads)}
                acc[i][lvl] = g if acc[i][lvl] is None else {k: acc[i][lvl][k] + g[k] for k in g}
                if pos % period == 0:
                    d = b["cms"]["delta"][lvl]
                    b["cms"]["delta"][lvl] = {k: d[k] - lrs[lvl] / period * acc[i][lvl][k] for k in d}
                    acc[i][lvl] = None
    params = [p for _, p in m.named_parameters()]
    return total, torch.autograd.grad(total, params, allow_unused=True)


def hope_model(lr=0.4, **kw):
    from hope.models import Hope, HopeConfig

    torch.manual_seed(0)
    cfg = HopeConfig(vocab_size=23, d_model=16, n_layers=2, n_heads=2, chunk_mem=2, chunk_proj=2,
                     cms_periods=(None, 2 * SEG, SEG), cms_hidden=8, cms_lr=lr, **kw)
    return Hope(cfg).double()


@pytest.mark.parametrize("build", [model, hope_model], ids=["hope_attention", "hope"])
def test_meta_learned_step_outer_gradient_equals_unrolled_reference(build):
    """With model.cms_meta, the outer gradient of every parameter, the learned step sizes included, is
    that of the whole sequence unrolled with the CMS updates inside the graph (second order: for
    Hope through the double backward of its memory ops)."""
    from hope.models.common import forward_backward

    m = build(lr=0.4, cms_meta=True)
    with torch.no_grad():                       # distinct step sizes per level and block
        for i, b in enumerate(m.blocks):
            b.cms.log_lr.copy_(torch.log(torch.tensor([0.3 + 0.1 * i, 0.6 - 0.1 * i], dtype=torch.float64)))
    tokens = torch.randint(0, 23, (2, 4 * SEG + 1))

    def lrs(cms):
        j = iter(cms.log_lr.exp())
        return [None if p is None else next(j) for p in cms.periods]

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):                # CPU flash attention has no double backward
        want_loss, want = _reference_meta_grads(m, tokens, lrs)
    m.zero_grad()
    loss, _ = forward_backward(m, tokens[:, :-1], tokens[:, 1:], None, 1.0, truncate=False)
    assert loss == pytest.approx(want_loss.item(), rel=1e-12)
    for (name, p), g in zip(m.named_parameters(), want):
        if g is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-10, msg=name)
    for b in m.blocks:
        assert b.cms.log_lr.grad.abs().min() > 0       # the step sizes get a gradient

    # first-order reference: the same unrolled loop with the step sizes detached and the update a
    # constant differs from the meta gradient (the check above is not vacuous)
    m.zero_grad()
    m2 = build(lr=0.4)
    m2.load_state_dict({k: v for k, v in m.state_dict().items() if "log_lr" not in k})
    forward_backward(m2, tokens[:, :-1], tokens[:, 1:], None, 1.0)
    embed_meta = dict(zip([n for n, _ in m.named_parameters()], want))["embed.weight"]
    assert (m2.embed.weight.grad - embed_meta).abs().max() > 1e-6


def test_meta_model_reads_with_its_learned_step_sizes():
    m = model(lr=0.4, cms_meta=True)
    with torch.no_grad():
        for b in m.blocks:
            b.cms.log_lr.fill_(torch.log(torch.tensor(0.2)))
    m_fixed = model(lr=0.2)
    m_fixed.load_state_dict({k: v for k, v in m.state_dict().items() if "log_lr" not in k})
    tokens = torch.randint(0, 23, (2, 3 * SEG))
    logits, state = m.read(tokens)
    logits_fixed, state_fixed = m_fixed.read(tokens)
    torch.testing.assert_close(logits, logits_fixed, rtol=0, atol=1e-6)    # float32 logits
    assert not any(t.requires_grad for t in m.fast_weights(state))
    for a, b in zip(m.fast_weights(state), m_fixed.fast_weights(state_fixed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)    # through float32 logits
    m_other = model(lr=0.4)                                    # another step size reads differently
    m_other.load_state_dict(m_fixed.state_dict())
    assert (m_other.read(tokens)[0] - logits).abs().max() > 1e-5


def test_meta_gain_multiplies_the_moves_of_the_step_sizes():
    """model.cms_meta_gain k: the step size is lr * exp(k (log_lr - log lr)), so it starts at lr and a
    move of log_lr counts k times; the model then reads as one with that fixed step size."""
    from hope.errors import HopeError

    m = model(lr=0.4, cms_meta=True, cms_meta_gain=3.0).requires_grad_(False)
    assert all(abs(float(s) - 0.4) < 1e-6 for s in m.blocks[0].cms.step_sizes() if s is not None)
    with torch.no_grad():
        for b in m.blocks:
            b.cms.log_lr.add_(0.1)
    want = 0.4 * math.exp(0.3)
    assert all(abs(float(s) - want) < 1e-6 for s in m.blocks[1].cms.step_sizes() if s is not None)
    m_fixed = model(lr=want)
    m_fixed.load_state_dict({k: v for k, v in m.state_dict().items() if "log_lr" not in k})
    tokens = torch.randint(0, 23, (2, 3 * SEG))
    torch.testing.assert_close(m.read(tokens)[0], m_fixed.read(tokens)[0], rtol=0, atol=1e-6)
    with pytest.raises(HopeError, match="cms_meta_gain"):
        model(lr=0.4, cms_meta=True, cms_meta_gain=0.0)


def test_meta_needs_a_positive_start():
    from hope.errors import HopeError

    with pytest.raises(HopeError, match="cms_meta"):
        model(lr=0.0, cms_meta=True)


def test_full_gradient_reaches_the_first_segments_mixer_state():
    """train.tbptt=false: the loss of the last segment alone reaches a Hope memory's meta-learned
    initial state through the first segments (the default truncation cuts it off)."""
    from hope.models import Hope, HopeConfig
    from hope.models.common import forward_backward

    torch.manual_seed(0)
    cfg = HopeConfig(vocab_size=23, d_model=16, n_layers=1, n_heads=2, chunk_mem=2, chunk_proj=2,
                     cms_periods=(None, SEG), cms_hidden=8, cms_lr=0.3)
    m = Hope(cfg).double()
    x = torch.randint(0, 23, (2, 3 * SEG))
    y = torch.full_like(x, -100)
    y[:, -SEG:] = torch.randint(0, 23, (2, SEG))                  # only the last segment is scored
    W0 = m.blocks[0].mixer.memory.W
    for truncate, reaches in ((True, False), (False, True)):
        m.zero_grad()
        forward_backward(m, x, y, None, 1.0, truncate=truncate)
        got = W0.grad is not None and bool(W0.grad.abs().max() > 1e-12)
        assert got == reaches, truncate


def test_full_gradient_takes_the_same_cms_steps():
    """The full-gradient path changes what the outer gradient sees, not the fast weights: its CMS
    steps equal the truncated path's (both first-order)."""
    from hope.models.common import forward_backward

    m = model(lr=0.3)
    tokens = torch.randint(0, 23, (2, 4 * SEG + 1))
    _, s1 = forward_backward(m, tokens[:, :-1], tokens[:, 1:], None, 1.0, truncate=True)
    g1 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    _, s2 = forward_backward(m, tokens[:, :-1], tokens[:, 1:], None, 1.0, truncate=False)
    for a, b in zip(m.fast_weights(s1), m.fast_weights(s2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any((p.grad - g1[n]).abs().max() > 1e-9 for n, p in m.named_parameters() if n in g1)
