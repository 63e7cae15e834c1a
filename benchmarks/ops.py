"""Speed of the memory ops (hope/ops) against causal attention, forward + backward, on CPU.

For B=4, H=8, d_h=64 and T in {512, 2048}: median wall time of forward+backward of
`chunk_linear_memory`, `chunk_mlp_memory`, `naive_recurrent_*` (T=512 only by default: the token
loop takes tens of seconds at 2048) and causal `scaled_dot_product_attention` of the same shape,
all in one process, printed as a table with ratios to attention and to the naive form. Timings
are interleaved (attention, linear, MLP in turn) so that load from other processes biases the
ratios less; the naive forms run once each without warm-up (the MLP one takes minutes).

On a CPU shared with other jobs, run with `OMP_WAIT_POLICY=PASSIVE`: with libgomp's default (spinning)
policy each of the chunk loop's many small multi-threaded ops can wait out a whole time slice
of a descheduled thread, which made them 10-30x slower here (one fused attention call is barely
affected). The header prints the policy in force.

A second table gives, for attention and the two chunk ops at each T, one forward+backward's
matmul FLOPs (`FlopCounterMode`), kernel calls (leaf aten ops in the profiler plus compiled
kernels; per chunk for the ops) and activation memory (the bytes autograd saves for the backward,
counted with `saved_tensors_hooks`: independent of the allocator). `--compile` runs the ops' chunk
steps under torch.compile, `--recompute` keeps only chunk-start states for the backward.

Run: python benchmarks/ops.py [--T 512 2048] [--repeats 5] [--chunk-size 32] [--naive-max-T 512]
     [--naive-repeats 1] [--threads N] [--device cpu] [--compile] [--recompute]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from counting import count_compiled_kernels, kernel_calls, matmul_flops, saved_bytes

from hope.ops import (LinearMemoryState, MLPMemoryState, chunk_linear_memory, chunk_mlp_memory,
                      naive_recurrent_linear_memory, naive_recurrent_mlp_memory)


def make_inputs(B, T, H, D, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    leaf = lambda x: x.to(device).requires_grad_()  # noqa: E731
    return dict(
        q=leaf(F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)),
        k=leaf(F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)),
        v=leaf(torch.randn(B, T, H, D, generator=g)),
        eta=leaf(0.5 * torch.rand(B, T, H, generator=g)),
        alpha=leaf(0.9 + 0.1 * torch.rand(B, T, H, generator=g)),
        beta=leaf(0.9 * torch.rand(B, T, H, generator=g)),
    )


def memory_case(op, kind, H, D, device="cpu", **kw):
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        state = LinearMemoryState(torch.zeros(H, D, D, device=device, requires_grad=True))
    else:
        w2 = torch.randn(H, 2 * D, D, generator=g) / D ** 0.5
        state = MLPMemoryState(torch.zeros(H, D, 2 * D, device=device, requires_grad=True),
                               w2.to(device).requires_grad_())

    def fn(inp):
        o, _ = op(**inp, initial_state=state, **kw)
        return o
    return fn


def attention(inp):
    q, k, v = (x.transpose(1, 2) for x in (inp["q"], inp["k"], inp["v"]))  # [B, H, T, D]
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def fwd_bwd_seconds(fn, inp):
    for x in inp.values():
        x.grad = None
    sync = torch.cuda.synchronize if out_device(inp).type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn(inp)
    out.backward(torch.ones_like(out))
    sync()
    return time.perf_counter() - t0


def out_device(inp):
    return next(iter(inp.values())).device


def median_times(fns, inp, repeats, warmup=True):
    """Median seconds of each fn, measured in interleaved rounds after one warm-up round.

    Interleaving makes the ratios robust to load that changes over the run (a shared machine).
    """
    times = {name: [] for name in fns}
    for r in range(repeats + int(warmup)):
        for name, fn in fns.items():
            dt = fwd_bwd_seconds(fn, inp)
            if r or not warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def counts(fn, inp, n_chunks):
    """(MFLOP, kernel calls per chunk, saved MiB) of one forward+backward of fn."""
    def fwd_bwd():
        out = fn(inp)
        out.backward(torch.ones_like(out))
    flops = matmul_flops(fwd_bwd)
    kernels = kernel_calls(fwd_bwd)
    out, saved = saved_bytes(lambda: fn(inp))
    out.backward(torch.ones_like(out))
    return flops / 1e6, kernels / n_chunks, saved / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--naive-max-T", type=int, default=512)
    ap.add_argument("--naive-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="the ops' chunk steps under torch.compile")
    ap.add_argument("--recompute", action="store_true", help="the ops recompute chunks in the backward")
    args = ap.parse_args()
    if args.compile:
        count_compiled_kernels()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, H, D, C, dev = args.B, args.H, args.D, args.chunk_size, args.device
    print(f"device={dev} B={B} H={H} d_h={D} chunk_size={C} threads={torch.get_num_threads()} "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')} "
          f"torch={torch.__version__}; forward+backward, median of {args.repeats} runs")
    print(f"{'T':>6} {'op':<8} {'attn ms':>9} {'chunk ms':>9} {'naive ms':>9} "
          f"{'chunk/attn':>10} {'naive/chunk':>11}")
    kinds = (("linear", naive_recurrent_linear_memory, chunk_linear_memory),
             ("mlp", naive_recurrent_mlp_memory, chunk_mlp_memory))
    table = []
    for T in args.T:
        inp = make_inputs(B, T, H, D, device=dev)
        fns = {"attn": attention}
        for kind, _, chunk in kinds:
            fns[kind] = memory_case(chunk, kind, H, D, device=dev, chunk_size=C,
                                    compile=args.compile, recompute=args.recompute)
        med = median_times(fns, inp, args.repeats)
        if T <= args.naive_max_T:  # up to minutes per run: no warm-up, --naive-repeats runs
            naive = {kind: memory_case(op, kind, H, D, device=dev, chunk_size=C)
                     for kind, op, _ in kinds}
            med.update({f"naive-{k}": t for k, t in
                        median_times(naive, inp, args.naive_repeats, warmup=False).items()})
        for kind, _, _ in kinds:
            t_attn, t_chunk, t_naive = med["attn"], med[kind], med.get(f"naive-{kind}")
            if t_naive is not None:
                naive_s, ratio_s = f"{1e3 * t_naive:9.1f}", f"{t_naive / t_chunk:11.1f}"
            else:
                naive_s, ratio_s = f"{'skipped':>9}", f"{'-':>11}"
            print(f"{T:>6} {kind:<8} {1e3 * t_attn:9.1f} {1e3 * t_chunk:9.1f} {naive_s} "
                  f"{t_chunk / t_attn:10.2f} {ratio_s}", flush=True)
        for name in ("attn", "linear", "mlp"):
            table.append((T, name, *counts(fns[name], inp, 1 if name == "attn" else -(-T // C))))
    print(f"\nper forward+backward{' (compiled chunk steps)' if args.compile else ''}"
          f"{' (recompute)' if args.recompute else ''}")
    print("| T | op | MFLOP | kernel calls (per chunk for the ops) | saved for backward (MiB) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for T, name, mflop, kernels, saved in table:
        # FlopCounterMode has no formula for CPU's fused attention kernel
        flops = f"{mflop:,.0f}" if mflop else "-"
        print(f"| {T} | {name} | {flops} | {kernels:,.0f} | {saved:,.1f} |")


if __name__ == "__main__":
    main()
