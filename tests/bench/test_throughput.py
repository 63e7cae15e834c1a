"""benchmarks/throughput.py and benchmarks/counting.py: the counts of one training step."""

from pathlib import Path

import torch
from conftest import load_benchmark


def test_flops_and_kernels_of_a_hope_step_with_learning_cms(monkeypatch):
    """Hope's training step takes its CMS levels' inner gradients with `torch.autograd.grad`, which
    `FlopCounterMode`'s module hooks rejected; the count must run and see the step's products."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # its imports
    tp = load_benchmark("throughput")
    counting = load_benchmark("counting")
    model, step, B, T = tp.setup("hope", "debug", torch.device("cpu"), 2, 32)
    assert model.cms_segment is not None                    # the CMS learns inside the sequence
    flops = counting.matmul_flops(step)
    # at least the output layer's three products (forward, two backward) of every token
    d, V = model.config.d_model, 8192
    assert flops > 3 * 2 * B * T * d * V
    assert counting.kernel_calls(step) > B * T


def test_flop_count_of_one_product():
    counting = load_benchmark("counting")
    a, b = torch.randn(3, 5, requires_grad=True), torch.randn(5, 7)

    def f():
        (a @ b).sum().backward()
    assert counting.matmul_flops(f) == 2 * (2 * 3 * 5 * 7)  # a @ b, and the gradient of a


def test_heap_sampler_sees_a_transient_allocation(monkeypatch):
    """The CPU memory figure counts what a step holds: a 64 MiB tensor alive for 50 ms inside the
    block shows in the sampled peak, and is gone from the bytes in use after it is freed."""
    import time

    import pytest
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    tp = load_benchmark("throughput")
    sampler = tp.HeapSampler()
    before = sampler.in_use()
    if before is None:
        pytest.skip("no glibc mallinfo2 here")
    with sampler:
        x = torch.ones(16 << 20)                            # 64 MiB, touched
        time.sleep(0.05)
        del x
    assert sampler.peak - before >= (64 << 20)
    assert sampler.in_use() - before < (16 << 20)
