"""Does learning while reading help? Loss by token position on held-out text, CMS learning on vs off.

    python benchmarks/in_context.py --run runs/compare/hope_attention --length 1024 --out benchmarks/results

Reads windows of `--length` tokens from the validation works of the run's corpus with
`model.read(tokens, learn=True)` (the Continuum Memory System takes its steps as it reads, SPEC 4.3)
and with `learn=False` (frozen), and reports the mean loss of the first and later half of the
windows for both, plus a plot of loss against position (`in_context.png`) and the numbers
(`in_context.json`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import hope  # noqa: F401  (first: sets the OpenMP spin-wait before torch loads)
import torch
import torch.nn.functional as F

from hope.runs import load_run
from hope.data.corpus import load_corpus


def position_losses(model, windows: torch.Tensor, learn: bool, batch_size: int) -> np.ndarray:
    """Mean next-token loss at each position, [T - 1], over `windows` [N, T]."""
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size]
        logits, _ = model.read(x, None, learn=learn)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        total += loss.view(len(x), -1).sum(0).double()
    return (total / len(windows)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder of a model with a CMS (hope, hope_attention)")
    ap.add_argument("--length", type=int, default=1024, help="tokens per window")
    ap.add_argument("--windows", type=int, default=16, help="windows read (from the validation works)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default=None, help="output folder (default: the run folder)")
    ap.add_argument("--cms-lr", type=float, default=None,
                    help="override the fast-weight learning rate at reading time (default: the trained one)")
    args = ap.parse_args()
    torch.manual_seed(0)
    run = load_run(args.run)
    cfg, model, tokenizer = run.cfg, run.model, run.tokenizer
    if not hasattr(model, "read") or model.cms_segment is None:
        raise SystemExit(f"{cfg.arch} has no learning CMS: nothing to compare")
    if args.cms_lr is not None:
        for block in model.blocks:
            block.cms.lr = args.cms_lr
    limit = getattr(model, "max_seq_len", None)
    length = min(args.length, limit) if limit else args.length
    corpus = load_corpus(cfg.data.corpus, cfg.data.val_fraction)
    ids = np.concatenate([np.asarray(tokenizer.encode(doc), dtype=np.int64) for doc in corpus.val])
    stride = max(length, (len(ids) - length) // max(1, args.windows - 1))
    starts = list(range(0, len(ids) - length, stride))[: args.windows]
    windows = torch.from_numpy(np.stack([ids[s:s + length] for s in starts]))
    model.eval()
    on = position_losses(model, windows, True, args.batch_size)
    off = position_losses(model, windows, False, args.batch_size)
    half = len(on) // 2
    result = {"run": args.run, "arch": cfg.arch, "windows": len(windows), "length": length,
              "cms_periods": list(getattr(cfg.model, "cms_periods", [])),
              "cms_lr": model.blocks[0].cms.lr,
              "learn_first_half": float(on[:half].mean()), "learn_later_half": float(on[half:].mean()),
              "frozen_first_half": float(off[:half].mean()), "frozen_later_half": float(off[half:].mean())}
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "in_context.json").write_text(json.dumps({**result, "learn": on.tolist(), "frozen": off.tolist()}) + "\n")
    print(f"{cfg.arch}, {len(windows)} windows of {length} tokens")
    print("| CMS | loss, first half | loss, later half |\n| --- | ---: | ---: |")
    print(f"| learning | {result['learn_first_half']:.4f} | {result['learn_later_half']:.4f} |")
    print(f"| frozen | {result['frozen_first_half']:.4f} | {result['frozen_later_half']:.4f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = max(1, len(on) // 32)
    pos = np.arange(len(on))[: len(on) // bins * bins].reshape(-1, bins).mean(1)
    def binned(curve):
        return curve[: len(pos) * bins].reshape(-1, bins).mean(1)

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), dpi=120, sharex=True)
    for name, curve in (("CMS learning while reading", on), ("CMS frozen (--no-learn)", off)):
        ax.plot(pos, binned(curve), label=name)
    ax.set_ylabel("next-token loss")
    ax.set_title(f"{cfg.arch}: held-out text, {len(windows)} windows, cms_lr {result['cms_lr']:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    ax2.plot(pos, binned(on - off), color="C2")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xlabel("token position")
    ax2.set_ylabel("learning - frozen")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "in_context.png")
    print(f"wrote {out / 'in_context.png'}, {out / 'in_context.json'}")


if __name__ == "__main__":
    main()
