"""How the ops cut a call into chunks and run one chunk: layouts, segments, compile, recompute.

einops legend: b batch, t tokens, h heads, d feature, n chunks, c tokens of a chunk.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange

from hope.ops.recompute import recompute_region


@functools.cache
def compiled(step):
    """`step` (a chunk step of an op) under `torch.compile` (inductor), built once per function.

    Inductor fuses the step's elementwise work on states and chunk tensors into a few kernels and
    plans its memory; the same compiled step serves every full chunk of every layer of one shape.
    The first call of each variant compiles (tens of seconds on CPU): a variant per shape, per
    read-head slice, per grad mode, and per which state tensors require grad (a fresh state's
    zero momentum does not), so the limit of compiled variants per function is raised to 64.
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(step, dynamic=False)


def _contiguous(x):
    if isinstance(x, torch.Tensor):
        return x.contiguous()
    if isinstance(x, tuple) and hasattr(x, "_fields"):                       # operator NamedTuples
        return type(x)(*(_contiguous(y) for y in x))
    if isinstance(x, tuple):
        return tuple(_contiguous(y) for y in x)
    return x


def run_step(step, args, *, compile: bool = False, **kwargs):
    """One chunk of an op: `step(*args, **kwargs)`, compiled when asked.

    compile: through `compiled(step)`, with every tensor argument made contiguous first (a chunk
        sliced out of a segment has strides that depend on the segment's length, and an expanded
        meta-learned state has zero strides: each would be a new compiled variant).
    """
    if compile:
        return compiled(step)(*(_contiguous(a) for a in args), **kwargs)
    return step(*args, **kwargs)


def run_segment(segment, state: tuple, start: tuple, inputs: list, L: int, *,
                recompute: bool = False, **kwargs):
    """Run a segment of chunks of L tokens: `segment(*state, *start, *inputs, L=L, **kwargs)`
    returns `(reads, *next state, *the last chunk's start weights)`.

    state: the carried state (weights, momenta); start: the chunk-start weights when the segment
    resumes inside a chunk, else Nones (a resumed segment is one partial chunk); inputs: the
    segment's `[B, N*L, ...]` tensors. recompute (when autograd records): one chunk per
    `hope.ops.recompute.recompute_region` (a checkpoint), its operators included, so the backward
    keeps only each chunk's start state and inputs and recomputes the rest. Returns (list of reads,
    next state, start weights).
    """
    n = len(state)
    fn = functools.partial(segment, L=L, **kwargs)
    if not (recompute and torch.is_grad_enabled()):
        o, *rest = fn(*state, *start, *inputs)
        return [o], tuple(rest[:n]), tuple(rest[n:])
    outs, last = [], start
    for c0 in range(0, inputs[0].shape[1], L):
        o, *rest = recompute_region(fn, *state, *start, *(x[:, c0:c0 + L] for x in inputs))
        outs.append(o)
        state, last = tuple(rest[:n]), tuple(rest[n:])
    return outs, state, last


def to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, ...] with T = N*C -> [B, H, N, C, ...]."""
    if x.dim() == 3:
        return rearrange(x, "b (n c) h -> b h n c", c=C)
    return rearrange(x, "b (n c) h d -> b h n c d", c=C)


def from_chunks(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, N*C, H, D]."""
    return rearrange(x, "b h n c d -> b (n c) h d")


def split_segments(T: int, C: int, pos: int = 0):
    """Token ranges processed with one set of chunk operators, as `(t0, t1, L, resumed)`.

    Mini-batch boundaries sit at multiples of C from the start of the stream. A call that resumes
    `pos` tokens into a chunk first finishes that chunk (`resumed=True`: its gradients are taken
    at the saved chunk-start state); then come the full chunks, then a shorter tail chunk with
    its own operators. Padding instead of a tail would corrupt the final state, since momentum is
    added at every token.
    """
    segs = []
    t0 = 0
    if pos:
        t1 = min(C - pos, T)
        segs.append((0, t1, t1, True))
        t0 = t1
    n_full = (T - t0) // C
    if n_full:
        segs.append((t0, t0 + n_full * C, C, False))
        t0 += n_full * C
    if T > t0:
        segs.append((t0, T, T - t0, False))
    return segs
