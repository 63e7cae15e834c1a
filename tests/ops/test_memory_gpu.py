"""The chunk forms on a CUDA device equal the CPU reference (float64), gradients included.

Marked `gpu` (deselected by default); run with `pytest -m gpu tests/ops` on a machine with CUDA.
"""

import pytest
import torch

from memory_cases import OPS, assert_close, make_case, run

pytestmark = pytest.mark.gpu


def to_device(inputs, state, device):
    inputs = {n: x.detach().to(device).requires_grad_() for n, x in inputs.items()}
    if state is not None:
        state = type(state)(*(x.detach().to(device).requires_grad_() if isinstance(x, torch.Tensor)
                              else x for x in state))
    return inputs, state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T,C", [(100, 16), (257, 64)])
def test_cuda_chunk_equals_cpu_naive(kind, T, C):
    naive, chunk = OPS[kind]
    inputs, state = make_case(kind, T, init="full", seed=T + C, chunk_size=C)
    kw = dict(chunk_size=C, dgd=True, objective="l2")
    ref = run(naive, inputs, state, **kw)
    got = run(chunk, *to_device(inputs, state, "cuda"), **kw)
    got = {n: x.cpu() if isinstance(x, torch.Tensor) else x for n, x in got.items()}
    assert_close(ref, got)
