"""Training throughput of the four architectures at one recipe size, as ratios to Transformer++.

    python benchmarks/throughput.py --size tiny                          # CPU, the recipes' batch
    python benchmarks/throughput.py --size tiny --batch-size 4 --seq-len 1024   # longer context
    python benchmarks/throughput.py --size small --device cuda            # one GPU, bf16 autocast

One training step = the segment-wise forward and backward of `hope.models.common.forward_backward`
(CMS steps included) and an AdamW step, on random tokens with the recipe's batch shape. For every
model, all measured in this process, it prints:
* training tokens/s (median of `--steps` timed steps after `--warmup` untimed ones; the models' steps
  alternate, so a slow spell of a shared machine falls on all of them) and the ratio of its step time
  to Transformer++'s;
* matmul FLOPs per token of one step (torch's flop formulas, `torch.utils.flop_counter`, forward and
  backward) and the FLOP ratio to Transformer++;
* the overhead factor: measured step-time ratio / FLOP ratio (1.0: as fast as its arithmetic);
* kernel calls per token: leaf `aten::` ops of one step in the torch profiler (views and
  allocations excluded), the CPU analogue of kernel launches;
* peak memory of one step: the growth of `max_memory_allocated` over one step on CUDA; on CPU, in a
  fresh subprocess per model (`--no-memory` skips it), over its first step: the growth of the
  process's peak resident set, and the growth of the bytes malloc has handed out (`HeapSampler`,
  glibc only), which leaves out the freed memory the heap keeps for reuse.

`--compile` applies `train.compile` to every model (`hope.models.common.compile_model`: the memory
ops' per-chunk steps for Titans and Hope, the whole model otherwise); the warm-up steps then include
compilation, so give it `--warmup 2` at least.

`--recompute` sets `model.recompute=true` on the models that have it (Titans, Hope): their memory
ops keep only chunk-start states for the backward and recompute each chunk there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import hope  # noqa: F401  (first: sets the OpenMP spin-wait before torch loads)
import torch
from counting import count_compiled_kernels, kernel_calls, matmul_flops

from hope.models import build_model
from hope.models.common import compile_model, forward_backward
from hope.recipes import get_recipe
from hope.train import count_parameters

ARCHS = ("transformer", "titans", "hope_attention", "hope")



def setup(arch: str, size: str, device: torch.device, batch_size: int | None, seq_len: int | None,
          recompute: bool = False, compile: bool = False):
    cfg = get_recipe(size if arch == "transformer" else f"{arch}_{size}")
    mcfg = replace(cfg.model, vocab_size=8192)
    if recompute and hasattr(mcfg, "recompute"):
        mcfg = replace(mcfg, recompute=True)
    torch.manual_seed(0)
    model = build_model(arch, mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    called = compile_model(model) if compile else model
    B = batch_size or cfg.train.batch_size
    T = seq_len or cfg.train.seq_len
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8192, (B, T + 1), generator=gen).to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        forward_backward(called, x[:, :-1], x[:, 1:], None, B * T, autocast, raw_model=model, final_state=False)
        opt.step()
    return model, step, B, T


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(archs: list[str], args, device: torch.device) -> list[dict]:
    """Time every model's training step, the models' timed steps alternating (model 1, 2, .., 1, 2,
    ..) so that a slower or faster spell of a shared machine falls on all of them alike; then count
    FLOPs and kernels. Returns one row per model."""
    setups = [setup(arch, args.size, device, args.batch_size, args.seq_len, args.recompute, args.compile)
              for arch in archs]
    times = [[] for _ in archs]
    for i in range(args.warmup + args.steps):
        for j, (_, step, _, _) in enumerate(setups):
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            if i >= args.warmup:
                times[j].append(time.perf_counter() - t)
    rows = []
    for arch, (model, step, B, T), ts in zip(archs, setups, times):
        sec = statistics.median(ts)
        row = {"arch": arch, "params": count_parameters(model)["total"], "tokens_per_s": B * T / sec,
               "step_s": sec, "batch": f"{B} x {T}", "flops_per_token": float("nan"),
               "kernels_per_token": float("nan")}
        if not args.no_counts:
            row["flops_per_token"] = matmul_flops(step) / (B * T)
            row["kernels_per_token"] = kernel_calls(step) / (B * T)
        rows.append(row)
        if device.type == "cuda":  # growth of the allocator's peak over one step of this model
            sync(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            sync(device)
            row["peak_gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return rows


class HeapSampler:
    """Peak of the bytes glibc's malloc has handed out and not taken back (`mallinfo2`: in-use
    chunks of all arenas plus mmapped blocks), sampled every `period` seconds by a thread while the
    `with` block runs. Unlike the resident set it does not count freed memory that the heap keeps
    for reuse (hope's allocator tuning keeps up to 1 GiB, and fragmentation more), so it measures
    what the step itself holds. Peaks shorter than `period` can be missed, and each sample locks
    the arenas, which slows the sampled code a little (use it for memory, not time). `peak` is
    None off glibc."""

    def __init__(self, period: float = 5e-4):
        import ctypes
        import threading

        self.period, self.peak, self._threading = period, None, threading
        try:
            libc = ctypes.CDLL("libc.so.6")

            class Info(ctypes.Structure):
                _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                           "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

            libc.mallinfo2.restype = Info
            self._info = libc.mallinfo2
        except (OSError, AttributeError):
            self._info = None

    def in_use(self) -> int | None:
        if self._info is None:
            return None
        info = self._info()
        return info.uordblks + info.hblkhd

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.in_use())
            time.sleep(self.period)

    def __enter__(self):
        if self._info is not None:
            self.peak = self.in_use()
            self._stop = self._threading.Event()
            self._thread = self._threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._info is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.in_use())


def cpu_peak_child(arch: str, args) -> dict:
    """Memory of the first training step (run in a subprocess), in GiB: `peak_gib`, the growth of
    peak RSS above the RSS before the step, and `heap_peak_gib`, the growth of the bytes malloc has
    handed out (`HeapSampler`; NaN off glibc). The first step, because hope's allocator tuning keeps
    freed memory in the heap: a second step reuses the first one's pages and would show no growth."""
    _, step, _, _ = setup(arch, args.size, torch.device("cpu"), args.batch_size, args.seq_len, args.recompute, args.compile)
    with open("/proc/self/statm") as f:
        rss_now = int(f.read().split()[1]) * resource.getpagesize()
    try:
        # reset the peak (VmHWM): Linux keeps ru_maxrss across fork and exec, so the child would
        # otherwise report its parent's peak (the benchmark process holding every model)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    sampler = HeapSampler()
    heap_now = sampler.in_use()
    with sampler:
        step()
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    heap = float("nan") if heap_now is None else (sampler.peak - heap_now) / 2**30
    return {"peak_gib": (hwm - rss_now) / 2**30, "heap_peak_gib": heap}


def cpu_peak(arch: str, args) -> dict:
    cmd = [sys.executable, __file__, "--size", args.size, "--models", arch, "--memory-child"]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.seq_len:
        cmd += ["--seq-len", str(args.seq_len)]
    for flag in ("recompute", "compile"):
        if getattr(args, flag):
            cmd += [f"--{flag}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def check(arch: str, device: torch.device) -> float:
    """Largest absolute logit difference between `device` float32 and CPU float64, debug size, 96 tokens."""
    cfg = get_recipe("debug" if arch == "transformer" else f"{arch}_debug")
    torch.manual_seed(0)
    ref = build_model(arch, cfg.model).double()
    model = build_model(arch, cfg.model).to(device)
    model.load_state_dict(ref.state_dict())
    x = torch.randint(0, cfg.model.vocab_size, (2, 96))
    with torch.no_grad():
        want, _ = ref(x)
        got, _ = model(x.to(device))
    return (got.double().cpu() - want).abs().max().item()


def fmt(x, spec):
    return "-" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=",".join(ARCHS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--recompute", action="store_true", help="model.recompute=true where the model has it")
    ap.add_argument("--compile", action="store_true", help="train.compile=true for every model")
    ap.add_argument("--no-counts", action="store_true", help="skip the FLOP and kernel counts (one step each)")
    ap.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory subprocesses")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true",
                    help="first compare each model's logits on --device (float32) with CPU float64")
    args = ap.parse_args()
    if args.compile:
        count_compiled_kernels()
    archs = [a.strip() for a in args.models.split(",")]
    if args.memory_child:
        print(json.dumps(cpu_peak_child(archs[0], args)))
        return
    device = torch.device(args.device)
    if args.check:
        for arch in archs:
            print(f"{arch}: max |logits - float64 CPU reference| = {check(arch, device):.2e}", flush=True)
    rows = measure(archs, args, device)
    for row in rows:
        if device.type == "cpu":
            row.update({"peak_gib": float("nan"), "heap_peak_gib": float("nan")} if args.no_memory
                       else cpu_peak(row["arch"], args))
        print(f"{row['arch']}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
    base = next((r for r in rows if r["arch"] == "transformer"), None)
    cpu = device.type != "cuda"
    print(f"\n{args.size} recipes on {device} ({torch.get_num_threads()} threads), median of {args.steps} steps"
          f"{', recompute' if args.recompute else ''}{', compiled' if args.compile else ''}; peak memory: "
          + ("growth of peak RSS and of malloc's bytes in use (heap) over the first step" if cpu
             else "growth of max_memory_allocated over one step"))
    print("| model | params | batch | tokens/s | step (s) | step / Transformer++ | MFLOP/token | FLOPs / "
          "Transformer++ | overhead factor | kernels/token | "
          + ("peak RSS GiB | heap peak GiB |" if cpu else "peak GiB |"))
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if cpu else ""))
    for r in rows:
        ratio = r["step_s"] / base["step_s"] if base else float("nan")
        fratio = r["flops_per_token"] / base["flops_per_token"] if base else float("nan")
        over = ratio / fratio if not math.isnan(fratio) else float("nan")
        print(f"| {r['arch']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['tokens_per_s']:,.0f} | "
              f"{r['step_s']:.3f} | {fmt(ratio, '.2f')} | {fmt(r['flops_per_token'] / 1e6, '.1f')} | "
              f"{fmt(fratio, '.2f')} | {fmt(over, '.2f')} | {fmt(r['kernels_per_token'], '.2f')} | "
              f"{fmt(r['peak_gib'], '.2f')} |" + (f" {fmt(r['heap_peak_gib'], '.2f')} |" if cpu else ""))


if __name__ == "__main__":
    main()
