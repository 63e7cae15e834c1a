"""Page faults and CPU time of a training step, to compare allocator settings (issue 15).

    python benchmarks/page_faults.py                          # hope_tiny, 16 x 128, with hope's malloc tuning
    HOPE_MALLOC_TUNING=0 python benchmarks/page_faults.py     # glibc's defaults

Prints, per step (mean over `--steps` after one warm-up step): minor page faults, system and user
CPU seconds. CPU seconds, unlike wall time, hardly depend on what else the machine runs, so the two
settings can be compared on a shared machine. `import hope` applies the tuning (`hope/__init__.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource

import hope  # noqa: F401  (first: the allocator tuning and the OpenMP spin-wait before torch loads)
import torch

from hope.models import build_model
from hope.models.common import forward_backward
from hope.recipes import get_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="hope_tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_recipe(args.recipe)
    cfg.model.vocab_size = 8192
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randint(0, 8192, (args.batch_size, args.seq_len))
    y = torch.randint(0, 8192, (args.batch_size, args.seq_len))

    def step():
        opt.zero_grad()
        forward_backward(model, x, y, None, x.numel(), contextlib.nullcontext, truncate=cfg.train.tbptt)
        opt.step()

    step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = args.steps
    print(f"{args.recipe} {args.batch_size} x {args.seq_len}, HOPE_MALLOC_TUNING={os.environ.get('HOPE_MALLOC_TUNING', '1')}: "
          f"{(r1.ru_minflt - r0.ru_minflt) / n:,.0f} minor faults, {(r1.ru_stime - r0.ru_stime) / n:.3f} s system, "
          f"{(r1.ru_utime - r0.ru_utime) / n:.3f} s user per step")


if __name__ == "__main__":
    main()
