"""Training throughput of the four architectures at one recipe size, as ratios to Transformer++.

    python benchmarks/throughput.py --size tiny                   # CPU
    python benchmarks/throughput.py --size small --device cuda    # one GPU, bf16 autocast

One training step = the segment-wise forward and backward of `hope.models.common.forward_backward`
(CMS steps included) and an AdamW step, on random tokens with the recipe's batch shape. Reports the
median of `--steps` timed steps after `--warmup` untimed ones, all models measured in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from dataclasses import replace

import hope  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads)
import torch

from hope.models import build_model
from hope.models.common import forward_backward
from hope.recipes import get_recipe
from hope.train import count_parameters

ARCHS = ("transformer", "titans", "hope_attention", "hope")


def measure(arch: str, size: str, device: torch.device, steps: int, warmup: int, batch_size: int | None) -> dict:
    cfg = get_recipe(size if arch == "transformer" else f"{arch}_{size}")
    model = build_model(arch, replace(cfg.model, vocab_size=8192)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B = batch_size or cfg.train.batch_size
    T = cfg.train.seq_len
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8192, (B, T + 1), generator=gen).to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        forward_backward(model, x[:, :-1], x[:, 1:], None, B * T, autocast)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"arch": arch, "params": count_parameters(model)["total"], "tokens_per_s": B * T / sec, "step_s": sec,
            "peak_gib": peak, "batch": f"{B} x {T}"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=",".join(ARCHS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--check", action="store_true",
                    help="first compare each model's logits on --device (float32) with CPU float64")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.check:
        for arch in args.models.split(","):
            print(f"{arch}: max |logits - float64 CPU reference| = {check(arch.strip(), device):.2e}", flush=True)
    rows = []
    for arch in args.models.split(","):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(measure(arch.strip(), args.size, device, args.steps, args.warmup, args.batch_size))
        print(f"{arch}: {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    base = next((r["tokens_per_s"] for r in rows if r["arch"] == "transformer"), None)
    print(f"\n{args.size} recipes on {device} ({torch.get_num_threads()} threads), median of {args.steps} steps")
    print("| model | params | batch | tokens/s | step (s) | step time / Transformer++'s | peak GiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{base / r['tokens_per_s']:.2f}" if base else "-"
        peak = "-" if math.isnan(r["peak_gib"]) else f"{r['peak_gib']:.1f}"  # measured on CUDA only
        print(f"| {r['arch']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | "
              f"{ratio} | {peak} |")


if __name__ == "__main__":
    main()
