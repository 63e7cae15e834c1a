"""The ops' `compile=True` (per-chunk step under torch.compile, CPU inductor) equals eager.

Float32 on CPU; tolerance 1e-5 relative to each tensor's scale: inductor reorders and fuses
float32 arithmetic (e.g. a fused multiply-add instead of a rounded product), so the two agree to
float32 rounding accumulated over a few chunks, not bitwise.
"""

import pytest
import torch

from hope.ops import chunk_linear_memory, chunk_mlp_memory
from hope.ops.state import LinearMemoryState, MLPMemoryState

B, H, D, C = 2, 2, 8, 4


def inputs(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
               for _ in range(3))
    eta = 0.4 * torch.rand(B, T, H, generator=g)
    alpha = 0.9 + 0.1 * torch.rand(B, T, H, generator=g)
    beta = 0.5 * torch.rand(B, T, H, generator=g)
    return [x.requires_grad_() for x in (q, k, v, eta, alpha, beta)]


def states(kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return MLPMemoryState(torch.randn(H, D, 2 * D, generator=g).mul(0.1).requires_grad_(),
                              torch.randn(H, 2 * D, D, generator=g).mul(D ** -0.5).requires_grad_())
    return LinearMemoryState(torch.randn(H, D, D, generator=g).mul(D ** -0.5).requires_grad_())


def run(kind, compile, T=8, resume=False, recompute=False, self_target=False):
    """Reads, final weights and every input's gradient of a loss on both."""
    op = chunk_mlp_memory if kind == "mlp" else chunk_linear_memory
    xs, st = inputs(T), states(kind)
    kw = dict(output_final_state=True, chunk_size=C, dgd=True, momentum_norm=True,
              recompute=recompute, compile=compile, self_target=self_target,
              **({"hidden_norm": True} if kind == "mlp" else {}))
    outs = []
    o, final = op(*xs, initial_state=st, **kw)
    outs.append(o)
    if resume:  # continue 2 tokens into a chunk: the resumed step (saved chunk-start weights)
        o, final = op(*(x[:, :6] for x in xs), initial_state=final, **kw)
        outs.append(o)
    weights = [w for w in final if isinstance(w, torch.Tensor)]
    loss = sum(x.square().sum() for x in outs + weights)
    params = [x for x in (*xs, *st) if isinstance(x, torch.Tensor)]
    return outs + weights + list(torch.autograd.grad(loss, params))


def assert_close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        scale = y.abs().max().clamp(min=1e-6)
        assert ((x - y).abs().max() / scale) < 1e-5


def test_compiled_mlp_step_equals_eager():
    """Hope's and Titans' main memory, two full chunks: reads, final state and gradients."""
    assert_close(run("mlp", compile=True), run("mlp", compile=False))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("recompute", [False, True])
def test_compiled_step_equals_eager_resumed(kind, recompute):
    """A tail chunk (T = 10, C = 4), then a call that resumes 2 tokens into a chunk."""
    assert_close(run(kind, compile=True, T=10, resume=True, recompute=recompute),
                 run(kind, compile=False, T=10, resume=True, recompute=recompute))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_compiled_self_target_step_equals_eager(kind):
    """Self-generated targets formed in the compiled chunk step (Hope's projection memories)."""
    assert_close(run(kind, compile=True, T=10, self_target=True),
                 run(kind, compile=False, T=10, self_target=True))


def test_compile_model_compiles_memory_steps_or_the_whole_model():
    """`train.compile`: models with memory ops compile their chunk steps, others the whole model."""
    from hope.layers.memory import MemoryBank
    from hope.models import build_model
    from hope.models.common import compile_model
    from hope.recipes import get_recipe

    hope_model = build_model("hope", get_recipe("hope_debug").model)
    assert compile_model(hope_model) is hope_model
    banks = [m for m in hope_model.modules() if isinstance(m, MemoryBank)]
    assert banks and all(b.compile for b in banks)
    transformer = build_model("transformer", get_recipe("debug").model)
    assert isinstance(compile_model(transformer), torch._dynamo.eval_frame.OptimizedModule)


def test_compile_model_keeps_a_meta_learned_cms_eager():
    """The meta-learned CMS step needs a double backward, which compiled code refuses: warn, run eager."""
    from dataclasses import replace

    from hope.models import build_model
    from hope.models.common import compile_model
    from hope.recipes import get_recipe

    model = build_model("hope_attention", replace(get_recipe("hope_attention_debug").model, cms_meta=True))
    with pytest.warns(UserWarning, match="cms_meta"):
        assert compile_model(model) is model


@pytest.mark.slow
def test_compiled_first_order_cms_trains_like_eager():
    """A whole-model compile with a CMS learning in training (inner gradients with retain_graph before
    the outer backward): the step runs, and its loss and gradients equal eager's (float32, 1e-4)."""
    from dataclasses import replace

    from hope.models import build_model
    from hope.models.common import compile_model, forward_backward
    from hope.recipes import get_recipe

    cfg = replace(get_recipe("hope_attention_debug").model, cms_meta=False)
    x = torch.randint(0, cfg.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model("hope_attention", cfg)
        assert model.cms_segment is not None
        called = compile_model(model) if compiled else model
        loss, _ = forward_backward(called, x[:, :-1], x[:, 1:], None, 128, raw_model=model)
        results.append((loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l0, g0), (l1, g1) = results
    assert abs(l0 - l1) <= 1e-4 * abs(l0) and len(g0) == len(g1)
    for a, b in zip(g0, g1):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max().clamp(min=1e-6)
