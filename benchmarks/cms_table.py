"""Does the Continuum Memory System earn its place (issue 13)? Hope-Attention and Hope with no CMS, a
static CMS, a CMS learning first-order (with and without truncation at CMS segments) and a CMS with
meta-learned step sizes, beside Transformer++ with and without dynamic evaluation, at one budget.

    python benchmarks/cms_table.py --setting ctx128 --out benchmarks/results/cms_table/ctx128
    python benchmarks/cms_table.py --setting wiki512 --out benchmarks/results/cms_table/wiki512
    python benchmarks/cms_table.py --setting ctx128 --rows transformer,ha_meta --out ...   # some rows
    python benchmarks/cms_table.py --quick --out /tmp/cms_table                             # smoke run

Settings (`SETTINGS`): `ctx128` is the embedded Shakespeare corpus, 300 steps of 16 x 128 tokens
(614,400 tokens) with the tiny recipes; `wiki512` is Wikipedia at 512 tokens of context, 256 steps of
8 x 512 (1,048,576 tokens, drawn as disjoint windows, `train.sampler=disjoint`: no token seen twice).

Every row is trained with its tiny recipe (parameter counts within 5% of Transformer++'s), the same
seed, batch shape and schedule, into `OUT/<row>/`; a finished row is skipped when the command runs
again and an interrupted one resumes from its last checkpoint. Each trained model is then evaluated
on one held-out stream (the validation split after its first `--tune-tokens` tokens, `--eval-tokens`
long) in windows of the training length, every window read from a fresh state as in training:
* frozen: the CMS fast weights stay at zero;
* learning: the CMS learns in context as in training (CMS rows);
* learning, carried: as learning, but each window's CMS starts from where the previous window's left
  it (the mixers still start fresh), so the CMS adapts across the whole stream as dynamic evaluation
  does (`carried_cms_nll`);
* learning, carried, steps x tuned: the same with every CMS step size multiplied by the best of
  `STEP_SCALES` on the first `--tune-tokens` validation tokens (the freedom dynamic evaluation has);
* dynamic (Krause et al.): after scoring each window, one SGD step on all parameters with that
  window's loss, carried across the whole stream; its learning rate is the best of
  `hope.eval.dynamic.DEFAULT_LRS` (and 0) on the first `--tune-tokens` validation tokens.
Also reported: the last validation figures of training (`val_ppl`, `val_ppl_frozen`), tokens/s and
the learned CMS step sizes per block and level (meta rows). Writes `results.json`, `results.md` and
`val_curves.png` (validation perplexity during training) to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import hope  # noqa: F401  (first: sets the OpenMP spin-wait before torch loads)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import run_one  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hope.checkpoint import atomic_write_text  # noqa: E402
from hope.errors import HopeError  # noqa: E402
from hope.eval.dynamic import DEFAULT_LRS  # noqa: E402

SETTINGS = {
    "ctx128": {"tokens": 614_400, "sets": ["train.sample_tokens=0"]},
    "wiki512": {"tokens": 1_048_576, "sets": ["data.corpus=wiki", "train.seq_len=512", "train.batch_size=8",
                                              "train.sampler=disjoint", "train.sample_tokens=0"]},
}

# row: (label, architecture, overrides)
ROWS = {
    "transformer": ("Transformer++", "transformer", []),
    "ha_no_cms": ("Hope-Attention, no CMS (one SwiGLU)", "hope_attention", ["model.cms=false"]),
    "ha_static": ("Hope-Attention, static CMS", "hope_attention", ["model.cms_periods=None,None,None"]),
    "ha_first_order": ("Hope-Attention, CMS first-order, truncated", "hope_attention",
                       ["model.cms_meta=false", "train.tbptt=true"]),
    "ha_first_order_full": ("Hope-Attention, CMS first-order, full gradient", "hope_attention",
                            ["model.cms_meta=false", "train.tbptt=false"]),
    "ha_meta": ("Hope-Attention, CMS meta-learned step", "hope_attention", ["model.cms_meta=true", "train.tbptt=false"]),
    "hope_no_cms": ("Hope, no CMS (one SwiGLU)", "hope", ["model.cms=false"]),
    "hope_static": ("Hope, static CMS", "hope", ["model.cms_periods=None,None,None"]),
    "hope_first_order": ("Hope, CMS first-order, truncated", "hope", ["model.cms_meta=false", "train.tbptt=true"]),
    "hope_first_order_full": ("Hope, CMS first-order, full gradient", "hope",
                              ["model.cms_meta=false", "train.tbptt=false"]),
    "hope_meta": ("Hope, CMS meta-learned step", "hope", ["model.cms_meta=true", "train.tbptt=false"]),
}
DYNAMIC_ROWS = ("transformer", "ha_no_cms", "hope_no_cms")  # CMS-free models the anchor is run on


def per_step(size: str, sets: list[str]) -> int:
    """Training tokens per step of the tiny (or debug) Transformer++ recipe under `sets`."""
    from hope.config import apply_overrides
    from hope.recipes import get_recipe

    tc = apply_overrides(get_recipe(size), [s for s in sets if s.startswith("train.")]).train
    return tc.batch_size * tc.seq_len * tc.grad_accum


def step_sizes(model) -> dict:
    """{block: [step size per learning level, slowest first]} of a model whose CMS learns its steps."""
    out = {}
    for i, block in enumerate(getattr(model, "blocks", [])):
        cms = getattr(block, "cms", None)
        if getattr(cms, "meta", False):
            with torch.no_grad():
                out[str(i)] = [round(float(v), 5) for v in cms.step_sizes() if v is not None]
    return out


def carried_cms_nll(model, ids: torch.Tensor, window: int) -> torch.Tensor:
    """Per-token losses [N - 1] of the stream `ids` read in consecutive windows, each window's mixers
    from a fresh state and its CMS from where the previous window left it, learning as it reads: the
    CMS's multi-frequency dynamic evaluation, carried across the stream as Krause et al.'s is.
    `(N - 1)` must be a multiple of `window`."""
    n = ids.numel() - 1
    if n % window:
        raise HopeError(f"carried CMS evaluation needs a whole number of {window}-token windows, got {n} tokens")
    learned = model.learned_part(model.fresh_state(1))
    out = []
    for a in range(0, n, window):
        row = ids[a:a + window + 1][None]
        logits, state = model.read(row[:, :-1], model.state_from(learned, 1), learn=True)
        out.append(F.cross_entropy(logits[0].float(), row[0, 1:], reduction="none").double())
        learned = model.learned_part(state)
    return torch.cat(out)


STEP_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # test-time multipliers of the CMS step sizes (tuned)


@contextlib.contextmanager
def scaled_steps(model, scale: float):
    """Every CMS level of `model` steps `scale` times its own step size inside the block."""
    saved = [(b.cms.lr, b.cms.log_lr.detach().clone() if b.cms.meta else None) for b in model.blocks]
    try:
        with torch.no_grad():
            for b in model.blocks:
                if b.cms.meta:
                    b.cms.log_lr.add_(math.log(scale) / b.cms.meta_gain)
                else:
                    b.cms.lr = b.cms.lr * scale
        yield
    finally:
        with torch.no_grad():
            for b, (lr, log_lr) in zip(model.blocks, saved):
                b.cms.lr = lr
                if log_lr is not None:
                    b.cms.log_lr.copy_(log_lr)


MODES = ("frozen", "learning", "learning_carried", "learning_carried_tuned", "dynamic")


def evaluate(run: Path, dynamic: bool, tune_tokens: int, eval_tokens: int, batch_size: int = 8,
             modes: tuple = MODES) -> dict:
    """The figures of a trained run on its corpus's validation stream after the first `tune_tokens`
    tokens (module docstring), each cached in RUN/eval/cms_table.json under the settings it used."""
    from hope.eval.common import eval_documents
    from hope.eval.dynamic import best_on_grid, dynamic_nll, tune_lr
    from hope.eval.scoring import independent_nll, stream_ids, summarize
    from hope.runs import load_run

    path = run / "eval" / "cms_table.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if "modes" not in cached:
        cached = {"modes": {}}  # a cache of the first format is recomputed
    loaded = load_run(run)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.cfg
    window = cfg.train.seq_len
    learns = getattr(model, "cms_segment", None) is not None
    wanted = {"frozen": {}, "learning": {}, "learning_carried": {}, "learning_carried_tuned": {"scales": list(STEP_SCALES)},
              "dynamic": {"lrs": list(DEFAULT_LRS)}}
    wanted = {m: {"tune_tokens": tune_tokens, "eval_tokens": eval_tokens, "window": window, **k}
              for m, k in wanted.items() if (m != "dynamic" or dynamic) and (not m.startswith("learning") or learns)}
    def current(m):  # cached under the settings this call wants
        return cached["modes"].get(m, {}).get("key") == wanted[m]

    todo = [m for m in wanted if m in modes and not current(m)]
    if todo:
        _, _, docs = eval_documents(cfg.data.corpus, "validation", cfg)
        ids = stream_ids(docs, tok)
        if ids.numel() < tune_tokens + eval_tokens + 1:
            raise HopeError(f"{run}: the validation split has {ids.numel():,} tokens, fewer than --tune-tokens + "
                            f"--eval-tokens + 1 = {tune_tokens + eval_tokens + 1:,}")
        tune, held = ids[:tune_tokens + 1], ids[tune_tokens:tune_tokens + eval_tokens + 1]
    for mode in todo:
        print(f"{run.name}: evaluating {mode} on {eval_tokens:,} validation tokens")
        if mode == "frozen":
            res = summarize(independent_nll(model, held, window, batch_size), held[1:], tok.token_bytes)
        elif mode == "learning":
            res = summarize(independent_nll(model, held, window, batch_size, learn=True), held[1:], tok.token_bytes)
        elif mode == "learning_carried":
            res = summarize(carried_cms_nll(model, held, window), held[1:], tok.token_bytes)
        elif mode == "learning_carried_tuned":
            # the freedom dynamic evaluation has: the step sizes scaled by the best of STEP_SCALES on
            # the tuning tokens (whose length is cut to whole windows)
            tune_w = tune[:(tune.numel() - 1) // window * window + 1]

            def tuning_loss(scale):
                with scaled_steps(model, scale):
                    return carried_cms_nll(model, tune_w, window).mean()

            best, losses = best_on_grid(STEP_SCALES, tuning_loss, label="CMS step x")
            with scaled_steps(model, best):
                res = summarize(carried_cms_nll(model, held, window), held[1:], tok.token_bytes)
            res.update(scale=best, tuning={str(k): v for k, v in losses.items()})
        else:
            lr, losses = tune_lr(model, tune, window)
            res = {**summarize(dynamic_nll(model, held, window, lr), held[1:], tok.token_bytes), "lr": lr,
                   "tuning": {str(k): v for k, v in losses.items()}}
        cached["modes"][mode] = {"key": wanted[mode], "results": res}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=2) + "\n")
    out = {m: cached["modes"][m]["results"] for m in wanted if current(m)}
    out["step_sizes"] = step_sizes(model)
    return out


def _ppl(r: dict, mode: str) -> str:
    v = r.get("eval", {}).get(mode)
    return f"{v['ppl']:.2f}" if v else "-"


def write_table(rows: list[dict], out: Path, setting: str) -> str:
    lines = ["| row | params | tokens | val ppl (training's validation) | frozen | learning | learning, carried "
             "| learning, carried, steps x tuned | dynamic eval (lr) | tokens/s | learned step sizes (block: slow, fast) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | | | {r['error']} | | | | | | | |")
            continue
        val = f"{r['val_ppl']:.2f}" + (f" ({r['val_ppl_frozen']:.2f} frozen)" if r.get("val_ppl_frozen") else "")
        dyn = r.get("eval", {}).get("dynamic")
        tuned = r.get("eval", {}).get("learning_carried_tuned")
        sizes = r.get("eval", {}).get("step_sizes") or {}
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | {val} | "
                     f"{_ppl(r, 'frozen')} | {_ppl(r, 'learning')} | {_ppl(r, 'learning_carried')} | "
                     + (f"{tuned['ppl']:.2f} (x{tuned['scale']:g})" if tuned else "-") + " | "
                     + (f"{dyn['ppl']:.2f} ({dyn['lr']:g})" if dyn else "-")
                     + f" | {r['tokens_per_s']:,.0f} | "
                     + "; ".join(f"{b}: {', '.join(f'{s:.4f}' for s in v)}" for b, v in sizes.items()) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "results.md", f"Setting `{setting}` ({SETTINGS[setting]}); command: "
                                    f"`python benchmarks/cms_table.py --setting {setting} --out {out}`\n\n" + table)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    return table


def plot(rows: list[dict], out: Path) -> None:
    """Validation perplexity during training, one line per row (learning; dashed: frozen)."""
    try:
        import matplotlib
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        if "error" in r:
            continue
        recs = [json.loads(line) for line in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines() if line]
        val = [(x["tokens"], x["val_ppl"]) for x in recs if "val_ppl" in x]
        line, = ax.plot(*zip(*val), "o-", ms=3, label=r["label"])
        frozen = [(x["tokens"], x["val_ppl_frozen"]) for x in recs if "val_ppl_frozen" in x]
        if frozen:
            ax.plot(*zip(*frozen), "--", color=line.get_color(), lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity (dashed: CMS frozen)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "val_curves.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="ctx128", choices=sorted(SETTINGS))
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tune-tokens", type=int, default=16_384, help="validation tokens that tune dynamic evaluation")
    ap.add_argument("--eval-tokens", type=int, default=65_536, help="validation tokens evaluated after them")
    ap.add_argument("--quick", action="store_true", help="debug recipes, 8K tokens, small evaluation: a smoke run")
    ap.add_argument("--set", nargs="+", default=[], help="more overrides for every row")
    ap.add_argument("--eval-modes", default=",".join(MODES),
                    help="evaluations to compute now (others are read from the cache or left out): " + ", ".join(MODES))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    modes = tuple(m.strip() for m in args.eval_modes.split(",") if m.strip())
    if set(modes) - set(MODES):
        raise SystemExit(f"error: unknown --eval-modes {', '.join(sorted(set(modes) - set(MODES)))}; modes are {', '.join(MODES)}")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {', '.join(unknown)}; rows are {', '.join(ROWS)}")
    setting = SETTINGS[args.setting]
    size, tokens = ("debug", 8192) if args.quick else ("tiny", setting["tokens"])
    tune, held = (1024, 2048) if args.quick else (args.tune_tokens, args.eval_tokens)
    # validation during training: 3 times, on 16K tokens (the full held-out figures come after)
    sets = [*setting["sets"], *args.set]
    if args.quick and args.setting == "wiki512":
        sets = [s for s in sets if not s.startswith("train.batch_size")]
    steps = math.ceil(tokens / per_step(size, sets))
    sets = ["train.eval_tokens=16384", f"train.eval_every={max(1, math.ceil(steps / 3))}", *sets]

    def finished() -> dict:
        # rows finished by earlier invocations, or by one running beside this one on other rows: read
        # again before every write, so two invocations on disjoint rows do not drop each other's rows
        path = out / "results.json"
        return {r["row"]: r for r in json.loads(path.read_text())} if path.exists() else {}

    mine = {}
    try:
        for name in names:
            label, arch, overrides = ROWS[name]
            r = run_one(arch, size, tokens, out, sets + overrides, name=name)
            r.update(row=name, label=label)
            if "error" not in r:
                r["eval"] = evaluate(Path(r["run"]), name in DYNAMIC_ROWS, tune, held, modes=modes)
            mine[name] = r
            done = {**finished(), **mine}
            write_table([done[n] for n in ROWS if n in done], out, args.setting)
    except HopeError as e:
        raise SystemExit(f"error: {e}") from None
    done = {**finished(), **mine}
    rows = [done[n] for n in ROWS if n in done]
    print(write_table(rows, out, args.setting))
    plot(rows, out)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'val_curves.png'}")


if __name__ == "__main__":
    main()
