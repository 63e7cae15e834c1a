"""Titans and self-modifying Titans mixers (SPEC 4.1, 4.2): pieces == whole, naive == chunk ops,
token-by-token == whole, and gradients reaching every parameter under every ablation."""

import pytest
import torch

from mixer_support import BUILDERS, selfmod, titans

from hope.layers.self_modifying import SelfModifyingTitans
from hope.layers.state import detach_state, tree_map
from hope.layers.titans import TitansMixer

D_MODEL, HEADS, T = 16, 2, 40

LAYERS = {
    "titans": lambda **kw: titans(D_MODEL, HEADS, chunk_size=8, **kw),
    "titans-linear-dgd": lambda **kw: titans(D_MODEL, HEADS, chunk_size=4, memory="linear",
                                                  dgd=True, **kw),
    "selfmod": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=8, **kw),
    "selfmod-proj8-mem4": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=8, chunk_mem=4,
                                                           **kw),
    "selfmod-fused": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=4, **kw),
    "selfmod-fused-linear": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=8, chunk_mem=8,
                                                             memory="linear", proj_memory="linear", **kw),
    "selfmod-linear": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=8,
                                                       memory="linear", proj_memory="linear", **kw),
    "selfmod-static-q-silu": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=8,
                                                              static_q=True, activation="silu", **kw),
    # issue 14: an erase gate of its own with negative eigenvalues, slower projection memories,
    # values as the main memory's targets
    "titans-dgd-gate-negative": lambda **kw: titans(D_MODEL, HEADS, chunk_size=8, dgd=True, dgd_gate=True,
                                                    dgd_eta_max=1.9, **kw),
    "selfmod-dgd-gate-proj-offset": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=8, dgd_gate=True,
                                                         dgd_eta_max=1.85, proj_eta_offset=-3.0,
                                                         self_target=False, **kw),
    # retention toward the meta-learned initial state (linear memories)
    "titans-linear-anchor": lambda **kw: titans(D_MODEL, HEADS, chunk_size=8, memory="linear", dgd=True,
                                                anchor=True, **kw),
    "selfmod-linear-anchor": lambda **kw: selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=8, memory="linear",
                                                  proj_memory="linear", anchor=True, self_target=False, **kw),
}

SELFMOD_ABLATIONS = {
    "full": {},
    "no-dgd": {"dgd": False},
    "no-momentum": {"momentum": False},
    "no-retention": {"retention": False},
    "static-k": {"static_k": True},
    "static-v": {"static_v": True},
    "static-q": {"static_q": True},
    "linear": {"memory": "linear", "proj_memory": "linear"},
    "linear-proj-mlp-mem": {"proj_memory": "linear"},
}
TITANS_ABLATIONS = {
    "full": {},
    "dgd": {"dgd": True},
    "no-momentum": {"momentum": False},
    "no-retention": {"retention": False},
    "linear": {"memory": "linear"},
}


def make(name, **kw):
    torch.manual_seed(0)
    return LAYERS[name](**kw).double()


def run_pieces(layer, x, cuts):
    ys, state = [], None
    for a, b in zip([0] + cuts, cuts + [x.shape[1]]):
        y, state = layer(x[:, a:b], state)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def assert_states_close(s1, s2):
    l1, l2 = [], []
    tree_map(l1.append, s1)
    tree_map(l2.append, s2)
    assert len(l1) == len(l2)
    for a, b in zip(l1, l2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(LAYERS))
def test_pieces_equal_whole(name):
    layer = make(name)
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    y, state = layer(x)
    assert y.shape == x.shape
    gen = torch.Generator().manual_seed(1)
    for trial in range(3):
        cuts = sorted(torch.randperm(T - 1, generator=gen)[: 2 + 2 * trial].add(1).tolist())
        yp, sp = run_pieces(layer, x, cuts)
        torch.testing.assert_close(yp, y, rtol=1e-9, atol=1e-10)
        assert_states_close(sp, state)
        assert sp["t"] == T


@pytest.mark.parametrize("name", ["titans", "selfmod", "selfmod-fused", "selfmod-linear"])
def test_token_by_token_equals_whole(name):
    layer = make(name)
    x = torch.randn(2, 21, D_MODEL, dtype=torch.float64)
    y, state = layer(x)
    yp, sp = run_pieces(layer, x, list(range(1, 21)))
    torch.testing.assert_close(yp, y, rtol=1e-9, atol=1e-10)
    assert_states_close(sp, state)


@pytest.mark.parametrize("name", ["titans", "titans-linear-dgd", "selfmod", "selfmod-proj8-mem4",
                                  "selfmod-fused", "selfmod-fused-linear", "selfmod-linear"])
def test_naive_ops_equal_chunk_ops(name):
    fast, ref = make(name), make(name, impl="naive")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 27, D_MODEL, dtype=torch.float64)
    w = torch.randn(2, 27, D_MODEL, dtype=torch.float64)
    # resume from a state in the middle of chunks, to exercise the chunk-start weights
    (y0, s0), (r0, q0) = fast(x[:, :6]), ref(x[:, :6])
    (y, s), (r, q) = fast(x[:, 6:], s0), ref(x[:, 6:], q0)
    torch.testing.assert_close(torch.cat([y0, y], 1), torch.cat([r0, r], 1), rtol=1e-9, atol=1e-10)
    assert_states_close(s, q)
    ((torch.cat([y0, y], 1) * w).sum()).backward()
    ((torch.cat([r0, r], 1) * w).sum()).backward()
    for (n, p), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, pr.grad, rtol=1e-8, atol=1e-10, msg=n)


def check_grads(layer):
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad.abs().sum() > 0
    for n, p in layer.named_parameters():
        assert p.grad is not None, f"{n} gets no gradient"
        assert torch.isfinite(p.grad).all(), n
        if n.endswith(("W1", "W2", "W")) and p.dim() == 4:  # meta-learned initial states [n, H, ...]
            per_head = p.grad.abs().flatten(2).sum(-1)
            assert (per_head > 0).all(), f"{n}: zero gradient for some (memory, head): {per_head}"
        else:
            assert p.grad.abs().sum() > 0, f"{n} has a zero gradient"


@pytest.mark.parametrize("chunk_mem", [8, 4], ids=["separate", "fused"])
@pytest.mark.parametrize("ablation", list(SELFMOD_ABLATIONS))
def test_selfmod_gradients_reach_every_parameter(ablation, chunk_mem):
    torch.manual_seed(0)
    layer = selfmod(D_MODEL, HEADS, chunk_proj=4, chunk_mem=chunk_mem,
                                **SELFMOD_ABLATIONS[ablation]).double()
    check_grads(layer)


@pytest.mark.parametrize("ablation", list(TITANS_ABLATIONS))
def test_titans_gradients_reach_every_parameter(ablation):
    torch.manual_seed(0)
    layer = titans(D_MODEL, HEADS, chunk_size=8, **TITANS_ABLATIONS[ablation]).double()
    check_grads(layer)


def test_selfmod_ablation_structure():
    full = selfmod(D_MODEL, HEADS)
    assert full.proj_names == ("k", "v", "q", "eta", "alpha")
    abl = selfmod(D_MODEL, HEADS, static_k=True, static_q=True, retention=False,
                              momentum=False)
    assert abl.proj_names == ("v", "eta") and abl.static_names == ("k", "q")
    assert abl.W_beta is None and not hasattr(abl, "w_alpha")


def test_selfmod_projection_memories_learn_in_context():
    """After one projection chunk the projection memories have moved away from their initial state
    and the move depends on the tokens read."""
    layer = make("selfmod")
    x = torch.randn(1, 4, D_MODEL, dtype=torch.float64)
    _, s = layer(x)
    assert s["proj"].pos == 0 and (s["proj"].W1 - layer.init_state(1)["proj"].W1).abs().max() > 1e-6
    x2 = x.clone()
    x2[:, 0] += 1.0
    _, s2 = layer(x2)
    assert (s["proj"].W1 - s2["proj"].W1).abs().max() > 1e-6


def test_state_detach_and_init_state_shapes():
    layer = make("selfmod")
    st = layer.init_state(3)
    P = len(layer.proj_names)
    assert st["proj"].W1.shape == (3, P * HEADS, D_MODEL // HEADS, 2 * D_MODEL // HEADS)
    assert st["mem"].W2.shape == (3, HEADS, 2 * D_MODEL // HEADS, D_MODEL // HEADS)
    assert st["conv"]["k"].shape == (3, 3, D_MODEL)
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    _, s = layer(x, st)
    s = detach_state(s)
    y, _ = layer(x, s)
    assert y.shape == x.shape and s["t"] == 5 and s["proj"].pos == 1 and s["mem"].pos == 5


@pytest.mark.parametrize("layer_cls", [TitansMixer, SelfModifyingTitans])
def test_long_stream_stays_bounded_at_init(layer_cls):
    """float32, default options, 1024 tokens of random input in pieces: no blow-up of the memories."""
    torch.manual_seed(0)
    layer = BUILDERS[layer_cls](32, 2)
    x = torch.randn(1, 1024, 32)
    state = None
    with torch.no_grad():
        for i in range(0, 1024, 256):
            y, state = layer(x[:, i:i + 256], state)
            assert torch.isfinite(y).all()
    leaves = []
    tree_map(leaves.append, state)
    assert max(t.abs().max().item() for t in leaves) < 1e3


@pytest.mark.parametrize("name,C", [("titans", 8), ("selfmod-fused", 4)])
def test_mean_step_divides_eta_by_the_chunk(name, C):
    """`mean_step` (default) equals the summed rule with eta_max / C for the write: a chunk steps by its
    mean gradient, while the DGD factor (self-modifying Titans) keeps the token's full eta."""
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y_mean, _ = make(name)(x)
    y_sum, _ = make(name, mean_step=False, eta_max=0.5 / C, dgd_eta_max=0.5)(x)
    torch.testing.assert_close(y_mean, y_sum, rtol=1e-10, atol=1e-12)
    y_plain, _ = make(name, mean_step=False)(x)
    assert (y_plain - y_mean).abs().max() > 1e-6


@pytest.mark.parametrize("layer_cls", [TitansMixer, SelfModifyingTitans])
def test_saturated_eta_on_parallel_keys_stays_bounded(layer_cls):
    """The failure seen in training (docs/DEVIATIONS.md, mean_step): eta at its ceiling on every token
    and a residual stream dominated by one direction (nearly parallel keys), MLP memories, 512 tokens.
    The defaults (mean step, normalized W1 step) stay bounded; the literal summed rule does not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 64, generator=g) * 3 + 0.3 * torch.randn(1, 512, 64, generator=g)

    def peak(**kw):
        torch.manual_seed(0)
        layer = BUILDERS[layer_cls](64, 2, eta_bias=20.0, **kw)
        with torch.no_grad():
            y, state = layer(x)
        leaves = []
        tree_map(leaves.append, state)
        return max(t.abs().max().item() if torch.isfinite(t).all() else float("inf") for t in leaves)

    assert peak() < 1e3
    assert peak(mean_step=False, hidden_norm=False, momentum_norm=False) > 1e6


def test_momentum_norm_keeps_repeated_input_bounded():
    """One token repeated 1024 times (exactly parallel keys), eta at its ceiling and beta ~ 0.88: the
    failure a trained Hope showed on long runs of one token (docs/DEVIATIONS.md). With the running-mean
    momentum (`momentum_norm`) the self-modifying layer stays bounded; with SPEC's momentum it does not."""
    x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0)).expand(1, 1024, 64)

    def peak(**kw):
        torch.manual_seed(0)
        layer = selfmod(64, 2, eta_bias=20.0, beta_bias=2.0, **kw)
        with torch.no_grad():
            _, state = layer(x)
        leaves = []
        tree_map(leaves.append, state)
        return max(t.abs().max().item() if torch.isfinite(t).all() else float("inf") for t in leaves)

    assert peak() < 10                                    # the self-modifying layer's default
    assert peak(momentum_norm=False) > 1e6


@pytest.mark.parametrize("name", ["titans", "titans-linear-dgd", "selfmod", "selfmod-linear"])
def test_recompute_equals_saving_everything(name):
    """`recompute=True` (chunk-start states saved, chunks recomputed in the backward) gives the same
    outputs, states and gradients, also resuming inside a chunk."""
    plain, rec = make(name), make(name, recompute=True)
    rec.load_state_dict(plain.state_dict())
    x = torch.randn(2, 27, D_MODEL, dtype=torch.float64)
    w = torch.randn(2, 27, D_MODEL, dtype=torch.float64)
    outs = []
    for layer in (plain, rec):
        y0, s0 = layer(x[:, :6])
        y1, s1 = layer(x[:, 6:], s0)
        y = torch.cat([y0, y1], 1)
        (y * w).sum().backward()
        outs.append((y, s1))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    assert_states_close(outs[1][1], outs[0][1])
    for (n, p), pr in zip(plain.named_parameters(), rec.parameters()):
        torch.testing.assert_close(pr.grad, p.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_inner_rule_is_checked_and_built_from_the_model_configs():
    from hope.models.hope import HopeConfig
    from hope.models.titans import TitansConfig
    from hope.ops.rule import InnerRule

    for bad in ({"kind": "deep"}, {"chunk_size": 0}, {"eta_max": 1.0}, {"activation": "relu"}):
        with pytest.raises(ValueError, match="InnerRule"):
            InnerRule(**bad)
    main, proj = HopeConfig(memory="mlp", proj_memory="linear", chunk_proj=8, chunk_mem=32, dgd=False).rules()
    assert (main.kind, main.chunk_size, proj.kind, proj.chunk_size) == ("mlp", 32, "linear", 8)
    assert not main.dgd and not proj.dgd and main.momentum_norm
    assert TitansConfig(memory="linear", chunk_size=4).rule() == InnerRule(
        kind="linear", chunk_size=4, dgd=False, momentum_norm=False)
    # the eta, alpha, beta gates are shared by all six memories of the self-modifying layer
    with pytest.raises(ValueError, match="proj_rule.retention must equal rule.retention"):
        SelfModifyingTitans(D_MODEL, HEADS, InnerRule(), InnerRule(retention=False))
