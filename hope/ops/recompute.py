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
the recomputation; autocast is restored as it was. Regions may nest.
"""

from __future__ import annotations

import torch

_DEVICES = ("cpu", "cuda")


class _Region:
    """The saved-tensor hooks of one recomputed region."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args
        self.count = 0                       # tensors saved by the forward, in order
        self.recomputed = {}                 # graph task id -> {index: tensor}
        self.autocast = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _DEVICES
                         if d == "cpu" or torch.cuda.is_available()}

    def pack(self, x):
        i = self.count
        self.count += 1
        return i

    def unpack(self, i):
        gid = torch._C._current_graph_task_id()
        if gid == -1:                        # saved tensors read outside a backward pass: no cache
            return self._run()[i]
        if gid not in self.recomputed:
            self.recomputed[gid] = self._run()
            # drop what this backward pass did not use when it ends
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self.recomputed.pop(gid, None))
        return self.recomputed[gid].pop(i)

    def _run(self) -> dict:
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
        if len(out) != self.count:
            raise RuntimeError(f"recompute: the region saved {len(out)} tensors when recomputed, "
                               f"{self.count} in the forward (it must run the same code both times)")
        return out


def recompute_region(fn, *args):
    """`fn(*args)`, keeping only `args` for the backward and recomputing the rest there (module
    docstring). Without grad mode it is a plain call."""
    if not torch.is_grad_enabled():
        return fn(*args)
    region = _Region(fn, args)
    with torch.autograd.graph.saved_tensors_hooks(region.pack, region.unpack):
        return fn(*args)
