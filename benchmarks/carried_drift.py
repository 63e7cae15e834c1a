"""Loss by position of a long stream read with the state carried, and with parts of every mixer's
state reset at each window: which memory of a recurrent model stops working past its training length.

    python benchmarks/carried_drift.py --run runs/compare_wiki512/hope                 # resets: proj, mem, proj+mem
    python benchmarks/carried_drift.py --run runs/compare_wiki512/titans --length 16384

The validation split of the run's corpus is read as one stream (`[eos] doc [eos] doc ...`, as
`hope eval ppl`), cut into `--streams` contiguous pieces of `--length` tokens read side by side; each
piece starts from a fresh state and is read `--window` tokens at a time, the CMS frozen (a plain
forward). "carried" keeps every state; "reset X" puts the mixers' state entries X (Hope: `proj`, the
projection memories, and `mem`, the main memory; Titans: `mem`) back to their initial values after
every window, and keeps the rest (convolution caches, CMS, positions). Writes `drift.json` and
`drift.png` (mean loss per window against its position) to `--out` (default RUN/eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hope.errors import HopeError


def reset_entries(state, init, keys: tuple[str, ...]):
    """`state` with the entries `keys` of every mixer state (a dict holding "mem") taken from `init`."""
    if isinstance(state, dict):
        if "mem" in state and "t" in state:                     # a memory mixer's state
            return {k: (init[k] if k in keys else v) for k, v in state.items()}
        return {k: reset_entries(v, init[k], keys) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(reset_entries(s, i, keys) for s, i in zip(state, init))
    return state


def window_losses(model, rows: torch.Tensor, window: int, keys: tuple[str, ...]) -> list[float]:
    """rows [B, L + 1] -> mean next-token loss of every window, reading with the state carried and
    the mixers' `keys` reset after each window."""
    from hope.eval.scoring import _nll

    init = model.init_state(rows.shape[0]) if keys else None
    state, out = None, []
    for a in range(0, rows.shape[1] - 1, window):
        b = min(rows.shape[1] - 1, a + window)
        with torch.no_grad():
            logits, state = model(rows[:, a:b], state)
        if keys:
            state = reset_entries(state, init, keys)
        out.append(round(_nll(logits, rows[:, a + 1:b + 1]).mean().item(), 5))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder of a recurrent model (titans, hope)")
    ap.add_argument("--data", default=None, help="corpus (default: the run's)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--length", type=int, default=8192, help="tokens per stream piece")
    ap.add_argument("--window", type=int, default=None, help="tokens per call (default: the run's train.seq_len)")
    ap.add_argument("--streams", type=int, default=8, help="pieces read side by side")
    ap.add_argument("--resets", default=None,
                    help="semicolon-separated sets of state entries, e.g. 'proj;mem;proj,mem' (default: the "
                         "model's memories one by one and together)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from hope.eval.cli import eval_documents
        from hope.eval.scoring import stream_ids
        from hope.runs import load_run

        loaded = load_run(args.run)
        model, cfg = loaded.model, loaded.cfg
        if getattr(model, "max_seq_len", None) is not None:
            raise HopeError(f"{args.run} is an attention model ({cfg.arch}): it carries no memory state")
        window = args.window or cfg.train.seq_len
        _, split, docs = eval_documents(args.data or cfg.data.corpus, args.split, cfg)
        ids = stream_ids(docs, loaded.tokenizer)
        if ids.numel() < args.streams * args.length + 1:
            raise HopeError(f"the {split} split holds {ids.numel():,} tokens, fewer than --streams x --length + 1 "
                            f"= {args.streams * args.length + 1:,}")
        rows = torch.stack([ids[b * args.length:(b + 1) * args.length + 1] for b in range(args.streams)])
        mixer_keys = [k for k in ("proj", "mem") if k in model.init_state(1)["blocks"][0]["mixer"]]
        resets = ([tuple(s.split(",")) for s in args.resets.split(";")] if args.resets else
                  [(k,) for k in mixer_keys] + ([tuple(mixer_keys)] if len(mixer_keys) > 1 else []))
        bad = [k for r in resets for k in r if k not in mixer_keys]
        if bad:
            raise HopeError(f"unknown state entry {bad[0]!r}; {cfg.arch} has {', '.join(mixer_keys)}")
    except HopeError as e:
        raise SystemExit(f"error: {e}") from None
    res = {"run": str(args.run), "arch": cfg.arch, "window": window, "length": args.length,
           "streams": args.streams, "split": split, "curves": {}}
    for keys in [()] + resets:
        name = "carried" if not keys else "reset " + "+".join(keys)
        curve = window_losses(model, rows, window, keys)
        res["curves"][name] = curve
        print(f"{name:16s} mean {sum(curve) / len(curve):.4f}   by window: " + " ".join(f"{x:.2f}" for x in curve))
    out = Path(args.out or Path(args.run) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(res, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, curve in res["curves"].items():
        ax.plot([window * (i + 1) for i in range(len(curve))], curve, "o-", ms=3, label=name)
    ax.axvline(cfg.train.seq_len, color="gray", ls=":", label="training length")
    ax.set_xlabel("tokens read (end of window)")
    ax.set_ylabel("loss of the window (nats / token)")
    ax.set_title(f"{cfg.arch}: {split} stream, window {window}, CMS frozen")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "drift.png")
    print(f"wrote {out / 'drift.json'}, {out / 'drift.png'}")


if __name__ == "__main__":
    main()
