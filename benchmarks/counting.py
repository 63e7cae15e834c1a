"""What the benchmark scripts count besides time: matmul FLOPs, kernel calls, saved activations.

Shared by `throughput.py` (whole training steps) and `ops.py` (one memory op).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# profiler events that move no data (views, metadata, allocations) are not counted as kernels
NOT_KERNELS = {"view", "as_strided", "reshape", "_reshape_alias", "expand", "transpose", "permute",
               "unsqueeze", "squeeze", "select", "slice", "t", "detach", "alias", "unbind", "split",
               "split_with_sizes", "narrow", "empty", "empty_strided", "empty_like", "resolve_conj",
               "resolve_neg", "lift_fresh", "_unsafe_view", "unflatten", "flatten", "contiguous",
               "numpy_T", "mT", "diagonal", "chunk", "broadcast_to", "expand_as", "view_as", "set_",
               "result_type", "to", "_to_copy_noop", "is_same_size", "_has_compatible_shallow_copy_type",
               "real", "conj", "item", "_local_scalar_dense"}


def count_compiled_kernels() -> None:
    """Make inductor's CPU kernels appear as profiler events (`cpp_fused_*`) so that `kernel_calls`
    counts them: call before anything is compiled (it changes the generated code)."""
    from torch._inductor import config as inductor_config
    inductor_config.cpp.enable_kernel_profile = True


def kernel_calls(fn) -> int:
    """Leaf aten ops of one call of `fn` (ops with no aten op below them), views excluded, plus the
    fused kernels of compiled code (inductor's `cpp_fused_*` / `triton_*` calls; on CPU only when
    `count_compiled_kernels()` ran before compiling): the CPU analogue of kernel launches."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    n = 0
    for ev in prof.events():
        if ev.name.startswith(("cpp_fused", "triton_")):
            n += 1
            continue
        if not ev.name.startswith("aten::") or ev.name[6:] in NOT_KERNELS:
            continue
        if not any(c.name.startswith("aten::") for c in ev.cpu_children):
            n += 1
    return n


class _FlopCount(TorchDispatchMode):
    """Sum of the FLOPs torch's flop counter knows (matmuls, convolutions, attention) of every op
    dispatched under it. `FlopCounterMode` itself also tracks modules with backward hooks, which
    `torch.autograd.grad` rejects ("A leaf node was passed to _will_engine_execute_node"), and a
    training step with learning CMS levels takes its inner gradients with `autograd.grad`."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def matmul_flops(fn) -> int:
    """Matmul FLOPs of one call of `fn`, forward and backward (torch's flop formulas)."""
    with _FlopCount() as fc:
        fn()
    return fc.total


def saved_bytes(forward) -> tuple[object, int]:
    """Run `forward()` and count the bytes autograd saves for the backward (distinct storages):
    activation memory, independent of the allocator. Returns (the output, bytes)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        if isinstance(t, torch.Tensor):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, total
