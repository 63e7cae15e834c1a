"""The model protocol for every architecture (SPEC 4.4), in float64 on CPU: pieces equal whole,
token-by-token equals the full forward, gradients reach every parameter under every ablation."""

import dataclasses

import pytest
import torch

from hope.layers.state import detach_state, state_to
from hope.models import MODELS, Hope, HopeAttention, HopeConfig, Titans, build_model

V = 29


def small_config(arch: str, **kw):
    base = {"vocab_size": V, "d_model": 16, "n_layers": 2, "n_heads": 2}
    extra = {
        "transformer": {"max_seq_len": 128},
        "hope_attention": {"max_seq_len": 128, "cms_periods": (None, 16, 8), "cms_hidden": 8},
        "titans": {"ffn_hidden": 16, "chunk_size": 4},
        "hope": {"cms_periods": (None, 16, 8), "cms_hidden": 8, "chunk_proj": 4, "chunk_mem": 4},
    }[arch]
    return MODELS[arch].config_class(**{**base, **extra, **kw})


def build(arch: str, **kw):
    torch.manual_seed(0)
    return MODELS[arch](small_config(arch, **kw)).double().eval()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_pieces_equal_whole(arch):
    model = build(arch)
    tokens = torch.randint(0, V, (2, 45))
    whole, _ = model(tokens)
    g = torch.Generator().manual_seed(7)
    for _ in range(2):
        cuts = sorted(set(torch.randint(1, 45, (5,), generator=g).tolist()))
        state, parts = None, []
        for a, b in zip([0, *cuts], [*cuts, 45]):
            logits, state = model(tokens[:, a:b], state)
            parts.append(logits)
        torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_token_by_token_equals_full_forward(arch):
    model = build(arch)
    tokens = torch.randint(0, V, (2, 21))
    whole, _ = model(tokens)
    state = model.init_state(2)
    steps = []
    for t in range(21):
        logits, state = model(tokens[:, t:t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("arch", ["hope", "titans", "hope_attention"])
def test_state_detaches_moves_and_saves(arch, tmp_path):
    model = build(arch)
    tokens = torch.randint(0, V, (1, 30))
    whole, _ = model(tokens)
    _, state = model(tokens[:, :13])
    state = state_to(detach_state(state), "cpu")
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=False)
    rest, _ = model(tokens[:, 13:], loaded)
    torch.testing.assert_close(rest, whole[:, 13:], rtol=1e-9, atol=1e-10)


ABLATIONS = {
    "full": {}, "no-dgd": {"dgd": False}, "no-momentum": {"momentum": False}, "no-retention": {"retention": False},
    "no-cms": {"cms": False}, "static-k": {"static_k": True}, "static-v": {"static_v": True},
    "static-q": {"static_q": True}, "mlp-main-memory": {"memory": "mlp"},
    "self-target": {"self_target": True}, "spec-main-memory": {"memory": "mlp", "self_target": True},
    "mlp-proj-memories": {"proj_memory": "mlp"}, "nested-cms": {"cms_variant": "nested"},
    "independent-cms": {"cms_variant": "independent"},
}


def assert_all_gradients(model, tokens):
    model.train()
    logits, _ = model(tokens)
    logits.pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("ablation", list(ABLATIONS), ids=list(ABLATIONS))
def test_hope_gradients_reach_every_parameter(ablation):
    model = build("hope", tie_embeddings=False, **ABLATIONS[ablation])
    assert_all_gradients(model, torch.randint(0, V, (2, 19)))


@pytest.mark.parametrize("arch,kw", [("titans", {}), ("titans", {"memory": "linear"}), ("titans", {"dgd": True}),
                                     ("hope_attention", {}), ("transformer", {})],
                         ids=["titans", "titans-linear", "titans-dgd", "hope-attention", "transformer"])
def test_gradients_reach_every_parameter(arch, kw):
    model = build(arch, tie_embeddings=False, **kw)
    assert_all_gradients(model, torch.randint(0, V, (2, 19)))


def test_ablation_flags_change_the_model():
    """Every switch changes the forward pass (except `nested`, which changes only the CMS step)."""
    tokens = torch.randint(0, V, (1, 20))
    full, _ = build("hope")(tokens)
    for name, kw in ABLATIONS.items():
        if name not in ("full", "nested-cms"):
            other, _ = build("hope", **kw)(tokens)
            assert not torch.allclose(other, full), name


def test_read_with_and_without_learning():
    model = build("hope", cms_lr=1.0)
    tokens = torch.randint(0, V, (2, 40))
    frozen, _ = model.read(tokens, learn=False)
    plain, _ = model(tokens)
    torch.testing.assert_close(frozen, plain)
    learned, _ = model.read(tokens, learn=True)
    torch.testing.assert_close(learned[:, :8], plain[:, :8])  # the first CMS step happens after 8 tokens
    assert not torch.allclose(learned[:, 8:], plain[:, 8:])


def test_layers_do_not_import_models():
    """`hope.layers` sits below `hope.models`: importing any layer first loads no model module."""
    import subprocess
    import sys
    code = ("import sys, hope.layers.attention, hope.layers.titans, hope.layers.self_modifying, hope.layers.cms; "
            "print(sorted(m for m in sys.modules if m.startswith('hope.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("arch", ["hope", "titans"])
def test_training_step_reaches_meta_learned_memory_states(arch):
    """forward_backward (CMS segments included) trains the mixers' meta-learned initial states (SPEC 2):
    a fresh state keeps its graph in the first segment."""
    from hope.models.common import forward_backward
    from hope.recipes import get_recipe
    torch.manual_seed(0)
    model = build_model(arch, get_recipe(f"{arch}_debug").model)
    x = torch.randint(0, 256, (2, 49))
    forward_backward(model, x[:, :-1], x[:, 1:], None, 96)
    states = {n: p for n, p in model.named_parameters() if n.endswith(("memory.W1", "memory.W2", "memory.W", "proj.W", "proj.W1", "proj.W2"))}
    assert states
    for n, p in states.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} gets no gradient"


@pytest.mark.parametrize("cms_meta", [False, True])
def test_hope_training_step_with_recompute_equals_saving_everything(cms_meta):
    """`model.recompute=true` (the projection memories recomputed by groups of chunks, the ops'
    chunks one at a time) leaves Hope's training step unchanged: the CMS's inner gradients
    (`autograd.grad` with the graph kept, and with `cms_meta` a double backward) and the outer
    backward go through the same checkpoints."""
    from hope.models.common import forward_backward
    x = torch.randint(0, V, (2, 42), generator=torch.Generator().manual_seed(1))
    out = []
    for recompute in (False, True):
        model = build("hope", proj_memory="mlp", recompute=recompute, cms_meta=cms_meta).train()
        loss, state = forward_backward(model, x[:, :-1], x[:, 1:], None, 82)
        out.append((loss, state, {n: p.grad for n, p in model.named_parameters()}))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12)
    for n, g in out[0][2].items():
        torch.testing.assert_close(out[1][2][n], g, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("arch,kw", [("hope", {}), ("hope", {"cms_meta": True}), ("hope_attention", {}),
                                     ("hope", {"truncate": True})])
def test_training_step_without_the_final_state(monkeypatch, arch, kw):
    """`final_state=False` (the caller drops the state after the batch) skips the last segment's CMS
    step and its inner gradient: the same loss and parameter gradients, one `autograd.grad` fewer."""
    import hope.models.common as common
    truncate = kw.pop("truncate", False)
    x = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(2))
    calls, real = [], torch.autograd.grad
    monkeypatch.setattr(common.torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = []
    for final in (True, False):
        calls.clear()
        model = build(arch, **kw).train()
        loss, state = common.forward_backward(model, x[:, :-1], x[:, 1:], None, 64, truncate=truncate,
                                              final_state=final)
        out.append((loss, state, {n: p.grad for n, p in model.named_parameters()}, len(calls)))
    assert out[0][1] is not None and out[1][1] is None
    assert out[1][0] == out[0][0]
    if not truncate:
        assert out[1][3] == out[0][3] - 1 > 0
    for n, g in out[0][2].items():
        torch.testing.assert_close(out[1][2][n], g, rtol=1e-12, atol=0, msg=n)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_initialization_by_role(arch):
    """Every model draws its weights by role (hope.layers.init): Linear and Embedding weights
    Normal(0, std); the residual outputs (attention / mixer output projections, every MLP and CMS
    level) Normal(0, std / sqrt(2 n_layers)) whatever their number per block; gates keep their biases."""
    from hope.layers.init import is_residual_output

    cfg = small_config(arch, d_model=64, n_heads=4, **({"cms_hidden": 64} if arch.startswith("hope") else {}))
    torch.manual_seed(0)
    model = MODELS[arch](cfg)
    res = [m for m in model.modules() if is_residual_output(m)]
    per_block = {"transformer": 2, "titans": 2, "hope_attention": 4, "hope": 4}[arch]
    assert len(res) == per_block * cfg.n_layers
    want = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    for m in res:
        assert abs(float(m.weight.detach().std()) - want) < 0.1 * want
    others = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and not is_residual_output(m)
              and m.weight.numel() >= 1024]
    assert others and all(abs(float(m.weight.detach().std()) - cfg.init_std) < 0.1 * cfg.init_std for m in others)
    if arch in ("titans", "hope"):  # gate biases untouched by the weight init
        b = model.blocks[0].mixer.b_eta if arch == "hope" else model.blocks[0].mixer.W_eta.bias
        assert float(b.detach().abs().min()) > 0.5
