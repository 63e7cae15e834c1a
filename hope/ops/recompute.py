"""Recompute a region in the backward instead of saving its intermediates: `recompute_region`.

What `torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)` does, with one difference
that matters for Hope's training step: the CMS takes its inner gradients with
`torch.autograd.grad(..., retain_graph=True)` once per segment, and such a partial backward unpacks
only some of a region's saved tensors (those on a path to the CMS's fast weights). torch's
checkpoint recomputes the whole region and keeps every recomputed tensor that was not unpacked until
the graph itself is freed, by the outer backward: at `hope_small`, 2 x 1024, 0.5 GiB per segment,
held to the end of the forward (measured with `benchmarks/throughput.py`'s heap sampler). Here a
backward pass drops what it recomputed when it ends (an autograd engine callback).

The region must be deterministic (no dropout: no RNG state is replayed) and run the same code in
the recomputation (checked: the number, shapes and dtypes of the tensors it saves); autocast is
restored as it was. Its inputs must not change in place afterwards (checked). Regions may nest,
but an inner region's inputs are then kept until the graph is freed; a region cannot take
gradients itself (`torch.autograd.grad` inside it).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

_DEVICES = ("cpu", "cuda")


class _Region:
    """The saved-tensor hooks of one recomputed region."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args
        # the inputs' versions: an input changed in place after the forward would recompute
        # something else (torch's checkpoint refuses it too)
        self.versions = [(t, t._version) for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        self.saved = []                      # (shape, dtype, device) of each tensor the forward saved
        self.recomputed = {}                 # graph task id -> {index: tensor}
        self.autocast = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _DEVICES
                         if d == "cpu" or torch.cuda.is_available()}

    def pack(self, x):
        self.saved.append((x.shape, x.dtype, x.device))
        return len(self.saved) - 1

    def unpack(self, i):
        gid = torch._C._current_graph_task_id()
        if gid == -1:                        # saved tensors read outside a backward pass: no cache
            return self._run()[i]
        if gid not in self.recomputed:
            self.recomputed[gid] = self._run()
            # drop what this backward pass did not use when it ends
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self.recomputed.pop(gid, None))
        try:
            return self.recomputed[gid].pop(i)
        except KeyError:
            raise RuntimeError("recompute: a saved tensor of the region was read twice in one backward "
                               "pass") from None

    def _run(self) -> dict:
        for t, version in self.versions:
            if t._version != version:
                raise RuntimeError("recompute: an input of the region was modified in place after the "
                                   "forward; the backward would recompute from the changed value")
        out = {}

        def pack(x):
            out[len(out)] = x.detach()
            return len(out) - 1

        contexts = [torch.autocast(d, dtype=dt, enabled=on) for d, (on, dt) in self.autocast.items()]
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda i: out[i]):
            for c in contexts:
                c.__enter__()
            try:
                self.fn(*self.args)
            finally:
                for c in reversed(contexts):
                    c.__exit__(None, None, None)
        if [(x.shape, x.dtype, x.device) for x in out.values()] != self.saved:
            raise RuntimeError(f"recompute: the region saved {len(out)} tensors when recomputed and "
                               f"{len(self.saved)} in the forward, or others of other shapes or types "
                               "(it must run the same code both times)")
        return out


def recompute_region(fn, *args):
    """`fn(*args)`, keeping only `args` for the backward and recomputing the rest there (module
    docstring). Without grad mode it is a plain call."""
    if not torch.is_grad_enabled():
        return fn(*args)
    region = _Region(fn, args)
    with torch.autograd.graph.saved_tensors_hooks(region.pack, region.unpack):
        return fn(*args)
