"""DGD as the layers apply it (SPEC 3; issue 14): `mean_step` divides only the write's rate, the DGD
factor keeps the token's eta (or its own ceiling `dgd_eta_max`, up to a negative eigenvalue), and the
layers stay bounded with negative eigenvalues on adversarial inputs."""

import pytest
import torch
import torch.nn.functional as F

from mixer_support import selfmod, titans

from hope.errors import HopeError
from hope.layers.memory import MemoryBank, chunk_ranges
from hope.layers.state import tree_map
from hope.models import HopeConfig, TitansConfig
from hope.ops.rule import InnerRule


def one_token(kind, eta, alpha, **rule):
    """A memory bank's state after one token whose target is the memory's own read of the key, so
    the gradient is zero and only the DGD factor acts: returns (weights reading k before, after, k)."""
    torch.manual_seed(0)
    D = 8
    bank = MemoryBank(InnerRule(kind=kind, chunk_size=16, **rule), 1, 2, D, linear_init="random")
    bank = bank.double()
    state = bank.init_state(1)
    k = F.normalize(torch.randn(1, 1, 2, D, dtype=torch.float64), dim=-1)
    with torch.no_grad():
        target = bank.read_start(state, k)
        _, new = bank.update(state, k, k, target, torch.full((1, 1, 2), eta, dtype=torch.float64),
                             torch.full((1, 1, 2), alpha, dtype=torch.float64),
                             torch.zeros(1, 1, 2, dtype=torch.float64))
    key_layer = (lambda s: s.W) if kind == "linear" else (lambda s: s.W2)
    return key_layer(state), key_layer(new), k[0, 0]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("dgd_eta_max,expected", [(None, 0.99 - 0.4), (1.9, 0.99 - 0.4 * 1.9 / 0.5)])
def test_transition_along_the_key_is_alpha_minus_eta(kind, dgd_eta_max, expected):
    """With `mean_step` (C = 16) the transition along k is `alpha - eta_t` (issue 14 measured 0.965
    before the fix, for the specified 0.59); with `dgd_eta_max` 1.9 it is negative. Orthogonal to k
    the weights only decay by alpha."""
    W, W_new, k = one_token(kind, 0.4, 0.99, dgd_eta_max=dgd_eta_max)
    for h in range(2):
        Wk, W_new_k = W[0, h] @ k[h], W_new[0, h] @ k[h]
        torch.testing.assert_close(W_new_k, expected * Wk)
        u = torch.randn(k.shape[-1], dtype=torch.float64)
        u = u - (u @ k[h]) * k[h]
        torch.testing.assert_close(W_new[0, h] @ u, 0.99 * (W[0, h] @ u))
    assert expected < 0 or dgd_eta_max is None


def test_without_dgd_mean_step_divides_the_write_only():
    write, factor = InnerRule(dgd=False, chunk_size=16).rates(torch.tensor([0.32]))
    assert factor is None and torch.allclose(write, torch.tensor([0.02]))
    write, factor = InnerRule(chunk_size=16).rates(torch.tensor([0.32]))
    assert torch.allclose(write, torch.tensor([0.02])) and torch.allclose(factor, torch.tensor([0.32]))
    write, factor = InnerRule(chunk_size=16, mean_step=False).rates(torch.tensor([0.32]))
    assert factor is None and torch.allclose(write, torch.tensor([0.32]))


def test_dgd_eta_max_is_checked():
    InnerRule(dgd_eta_max=1.96875)                           # 2 - eta_max / C, the largest allowed
    with pytest.raises(ValueError, match=r"dgd_eta_max must be in \(0, 1.96875\]"):
        InnerRule(dgd_eta_max=2.0)
    InnerRule(dgd_eta_max=2.0, objective="dot")              # the dot write does not erase
    with pytest.raises(ValueError, match=r"\(0, 1.5\]"):
        InnerRule(dgd_eta_max=1.9, mean_step=False)
    with pytest.raises(HopeError, match="model.dgd_eta_max"):
        HopeConfig(dgd_eta_max=2.5)
    with pytest.raises(HopeError, match="model.dgd_eta_max"):
        TitansConfig(dgd=True, dgd_eta_max=-1.0)
    assert HopeConfig(dgd_eta_max=1.9).rules()[0].dgd_eta_max == 1.9


def _peak(layer, x):
    with torch.no_grad():
        _, state = layer(x)
    leaves = []
    tree_map(leaves.append, state)
    return max(t.abs().max().item() if torch.isfinite(t).all() else float("inf") for t in leaves)


ADVERSARIAL = {
    # one token repeated: exactly parallel keys, every token erased along the same direction
    "repeated": lambda g: torch.randn(1, 1, 64, generator=g).expand(1, 1024, 64),
    # one large direction plus noise: nearly parallel keys (what broke training, docs/DEVIATIONS.md)
    "parallel": lambda g: torch.randn(1, 1, 64, generator=g) * 3 + 0.3 * torch.randn(1, 1024, 64, generator=g),
    # alternating between two inputs: the sign flips a negative eigenvalue allows
    "alternating": lambda g: torch.randn(1, 2, 64, generator=g).repeat(1, 512, 1),
}


@pytest.mark.parametrize("data", list(ADVERSARIAL))
@pytest.mark.parametrize("build,memory", [(titans, "mlp"), (titans, "linear"), (selfmod, "mlp"),
                                          (selfmod, "linear")])
def test_negative_eigenvalues_stay_bounded(build, memory, data):
    """dgd_eta_max at its largest, eta and retention at their ceilings (alpha ~ 1), 1024 tokens of
    adversarial input: every state entry stays bounded."""
    x = ADVERSARIAL[data](torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    extra = dict(proj_memory=memory) if build is selfmod else {}
    layer = build(64, 2, memory=memory, dgd=True, dgd_eta_max=1.96875, eta_bias=20.0, alpha_bias=20.0,
                  **extra)
    assert _peak(layer, x) < 1e3


@pytest.mark.parametrize("dgd", [False, True])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_one_shot_write_then_read(kind, dgd):
    """The main memory of self-modifying Titans at its initial state (the identity) writes one pair
    (k, v) with its self-generated target M_c(v) = v, then reads k back: the read moves from k
    straight towards v, by the write's rate, and the DGD factor shrinks it (issue 14, cause 4).

    Linear: W' k = (alpha - eta_d) k + (1 - beta) eta_w (v - k). MLP (W1 = 0): the read moves towards
    v by (1 - beta) eta_w z.z' / max(1, |z|^2), z = sigma(W2 k), z' = sigma(W2' k), and DGD, which
    shrinks W2 along k, makes z' smaller than z: on an MLP memory the erase of the key-reading layer
    also weakens the value just written (the reason `dgd_gate` exists; docs/DEVIATIONS.md)."""
    torch.manual_seed(0)
    D, eta, alpha, beta = 16, 0.4, 0.999, 0.5
    rule = InnerRule(kind=kind, chunk_size=16, momentum_norm=True, dgd=dgd)
    bank = MemoryBank(rule, 1, 1, D, linear_init="identity").double()
    state = bank.init_state(1)
    k, v = (F.normalize(torch.randn(1, 1, 1, D, dtype=torch.float64), dim=-1) for _ in range(2))
    gate = lambda x: torch.full((1, 1, 1), x, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        target = bank.read_start(state, v)
        torch.testing.assert_close(target, v)                          # the identity's read
        _, new = bank.update(state, k, k, target, gate(eta), gate(alpha), gate(beta))
        read = bank.read_start(new._replace(pos=0), k)[0, 0, 0]
    k, v = k[0, 0, 0], v[0, 0, 0]
    eta_w, eta_d = eta / 16, (eta if dgd else 0.0)
    if kind == "linear":
        torch.testing.assert_close(read, (alpha - eta_d) * k + (1 - beta) * eta_w * (v - k))
    else:
        W2 = bank.W2[0, 0].detach()
        z, z_new = bank.sigma(W2 @ k), bank.sigma((alpha - eta_d) * (W2 @ k))
        moved = (1 - beta) * eta_w * (z @ z_new) / max(1.0, float(z @ z))
        torch.testing.assert_close(read, k + moved * (v - k))
        if dgd:
            assert z @ z_new < 0.7 * (z @ z)                          # the erase costs the write


def _bank(anchor, D=6):
    torch.manual_seed(1)
    return MemoryBank(InnerRule(kind="linear", chunk_size=4, anchor=anchor), 1, 2, D,
                      linear_init="random").double()


def _stream(bank, eta, alpha, T=12, D=6):
    torch.manual_seed(2)
    k = F.normalize(torch.randn(1, T, 2, D, dtype=torch.float64), dim=-1)
    v, q = torch.randn(1, T, 2, D, dtype=torch.float64), F.normalize(torch.randn(1, T, 2, D, dtype=torch.float64), dim=-1)
    full = lambda x: torch.full((1, T, 2), x, dtype=torch.float64)
    return bank.update(bank.init_state(1), q, k, v, full(eta), full(alpha), full(0.0))[0], q


def test_anchor_is_the_same_rule_without_decay_and_decays_to_the_init_with_it():
    """With alpha = 1 and DGD off, retention toward W0 and toward zero coincide (the anchored bank
    runs its op on W - W0 with targets v - W0 k, exactly the l2 gradient); with nothing written
    (eta 0) and alpha < 1, the plain memory's reads fade by alpha^t while the anchored ones stay W0 q."""
    plain, anchored = _bank(False), _bank(True)
    for bank in (plain, anchored):
        bank.rule = InnerRule(kind="linear", chunk_size=4, anchor=bank.rule.anchor, dgd=False)
    torch.testing.assert_close(_stream(anchored, 0.3, 1.0)[0], _stream(plain, 0.3, 1.0)[0])
    o_plain, q = _stream(plain, 0.0, 0.9)
    o_anchor, _ = _stream(anchored, 0.0, 0.9)
    W0q = torch.einsum("hij,bthj->bthi", anchored.W[0], q)
    torch.testing.assert_close(o_anchor, W0q)
    decay = 0.9 ** torch.arange(1, 13, dtype=torch.float64).view(1, 12, 1, 1)
    torch.testing.assert_close(o_plain, decay * W0q)


def test_anchor_needs_a_linear_l2_memory():
    with pytest.raises(ValueError, match="anchor"):
        InnerRule(kind="mlp", anchor=True)
    with pytest.raises(ValueError, match="anchor"):
        InnerRule(kind="linear", objective="dot", anchor=True)
    main, proj = HopeConfig(anchor=True, memory="linear", proj_memory="mlp").rules()
    assert main.anchor and not proj.anchor
    assert not TitansConfig(anchor=True).rule().anchor and TitansConfig(anchor=True, memory="linear").rule().anchor


@pytest.mark.parametrize("kind,anchor", [("linear", False), ("linear", True), ("mlp", False)])
def test_bank_self_target_equals_targets_read_at_each_chunk_start(kind, anchor):
    """`MemoryBank.update(..., self_target=True)` (targets formed inside the op, or under `anchor`
    read one mini-batch at a time) equals the layer's former loop: one update per chunk with the
    targets `read_start(state, v)`; reads, final state and gradients, starting inside a chunk."""
    torch.manual_seed(3)
    rule = InnerRule(kind=kind, chunk_size=4, anchor=anchor)
    bank = MemoryBank(rule, 2, 2, 6, w1_std=0.3, linear_init="random").double()
    T, H = 11, 4
    k, q = (F.normalize(torch.randn(1, T, H, 6, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(1, T, H, 6, dtype=torch.float64, requires_grad=True)
    eta, alpha, beta = (torch.full((1, T, H), x, dtype=torch.float64) for x in (0.3, 0.95, 0.5))
    start = bank.update(bank.init_state(1), q[:, :3], k[:, :3], v[:, :3].detach(), eta[:, :3], alpha[:, :3],
                        beta[:, :3])[1]                                  # 3 tokens into a chunk

    def loss(o, st):
        return o.square().sum() + sum(x.square().sum() for x in st if isinstance(x, torch.Tensor))

    o, st = bank.update(start, q[:, 3:], k[:, 3:], v[:, 3:], eta[:, 3:], alpha[:, 3:], beta[:, 3:], self_target=True)
    g = torch.autograd.grad(loss(o, st), [v, *bank.parameters()], retain_graph=True)  # (start is shared)
    outs, st2 = [], start
    for t0, t1 in chunk_ranges(T - 3, 4, start.pos):
        sl = slice(3 + t0, 3 + t1)
        o2, st2 = bank.update(st2, q[:, sl], k[:, sl], bank.read_start(st2, v[:, sl]), eta[:, sl],
                              alpha[:, sl], beta[:, sl])
        outs.append(o2)
    g2 = torch.autograd.grad(loss(torch.cat(outs, 1), st2), [v, *bank.parameters()])
    torch.testing.assert_close(o, torch.cat(outs, 1))
    for a, b in zip(st, st2):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b)
    assert g[0].abs().max() > 0
