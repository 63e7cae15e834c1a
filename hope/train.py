"""The training loop, flat and top to bottom.

Resolve the config, set up device and distribution, prepare data and tokenizer, build the model
and the optimizer, then loop: learning-rate schedule, validation, checkpoint, micro-steps,
clipping, step, logging. A final validation prints perplexity and bits per byte beside a unigram
baseline, writes a loss curve and a few samples.

Run it: `hope train [--recipe tiny] [--set train.steps=500 ...] [--out DIR]`, or data-parallel on
CPU: `torchrun --nproc_per_node=2 -m hope.train --recipe debug --out runs/ddp` (gloo backend; nccl
on GPUs). Ctrl-C finishes the current step, writes a checkpoint and exits; `--resume` continues
with the same losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

import hope
from hope import parallel
from hope.checkpoint import (atomic_write_text, latest_checkpoint, load_checkpoint, load_streams, load_trainer_state,
                             save_checkpoint)
from hope.config import Config, trainable_group
from hope.data.corpus import load_corpus
from hope.data.tokenizer import build_tokenizer, load_tokenizer
from hope.data.tokens import get_batch, get_disjoint_batch, get_stream_batch, prepare_tokens, val_windows
from hope.errors import DivergedError, HopeError
from hope.generate import generate
from hope.device import resolve_device
from hope.models import build_model, count_parameters
from hope.models.common import compile_model, forward_backward
from hope.optim import build_optimizer
from hope.schedule import lr_at


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, token_bytes: torch.Tensor, batch_size: int, device, autocast,
             init_state=lambda batch: None, same_calls: bool = False, learn: bool = False) -> dict:
    """Mean loss (nats/token), perplexity and bits per byte over `windows` [N, T + 1].

    With `learn`, a model whose CMS learns in context reads every window learning (`model.read`: each
    token scored before the model learns from it), as it trains; otherwise the CMS is frozen.

    In a distributed run every process takes a share of the windows and the sums are all-reduced.
    `init_state(batch)` gives each batch's starting state (a sharded model's, `hope.parallel`); with
    `same_calls` (FSDP, whose forward is collective) every process runs as many forwards as the
    busiest one, scoring nothing in the extra ones.
    """
    was_training = model.training
    model.eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    mine = windows[rank::world]
    calls = math.ceil(math.ceil(len(windows) / world) / batch_size) if same_calls else math.ceil(len(mine) / batch_size)
    for i in range(0, calls * batch_size, batch_size):
        batch = mine[i:i + batch_size].to(device)
        if len(batch) == 0:  # an extra forward that only keeps the processes in step
            with autocast():
                model(windows[:1, :-1].to(device), init_state(1))
            continue
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast():
            if learn:
                logits, _ = model.read(x, init_state(len(x)), learn=True)
            else:
                logits, _ = model(x, init_state(len(x)))
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        nats += loss.double()
        count += y.numel()
        nbytes += token_bytes.to(device)[y].sum().double()
    if world > 1:
        for t in (nats, count, nbytes):
            dist.all_reduce(t)
    model.train(was_training)
    loss = (nats / count).item()
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_bpb": (nats / (nbytes * math.log(2))).item()}


def unigram_baseline(train_ids: np.ndarray, windows: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model of the training split on the validation targets."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = windows[:, 1:].numpy().ravel()
    return float(math.exp(-logp[targets].mean()))


def loss_figure(records: list[dict], title: str, baseline_ppl: float | None = None):
    """The matplotlib figure of `plot_losses`: training and validation loss against tokens seen, and
    the unigram baseline's loss (log of its perplexity) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    va = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1, alpha=0.8)
    if va:
        ax.plot(*zip(*va), "o-", label="validation", lw=1.5)
    if baseline_ppl is not None:
        ax.axhline(math.log(baseline_ppl), color="gray", ls="--", lw=1,
                   label=f"unigram baseline (ppl {baseline_ppl:.1f})")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: Path, png_path: Path, baseline_ppl: float | None = None) -> bool:
    """Write `loss_figure` of a metrics file as a PNG, atomically. False when matplotlib is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig = loss_figure(records, metrics_path.parent.name, baseline_ppl)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if hasattr(signal, "SIGINT") and _is_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool, rank: int) -> None:
    if resume:
        if not (out / "config.json").exists():
            raise HopeError(f"cannot resume: {out} holds no run (config.json is missing)")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise HopeError(f"run folder {out} already exists; pass --resume to continue it or --overwrite to replace it")
        if rank == 0:
            shutil.rmtree(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


REPEAT_WARNING = 10  # warn when a run reads its training tokens more often than this (docs/DEVIATIONS.md)


def _load_data(cfg: Config, out: Path, resume: bool, rank: int, distributed: bool):
    """Corpus, tokenizer and token ids: the first process encodes, the others read its cache."""
    corpus = load_corpus(cfg.data.corpus, cfg.data.val_fraction)
    for turn in (0, 1) if distributed else (0,):
        if (rank == 0) == (turn == 0):
            if resume:
                tokenizer = load_tokenizer(out / "tokenizer.json")
            else:
                tokenizer = build_tokenizer(cfg.data.tokenizer, corpus.train, corpus.digest, cfg.data.vocab_size)
            tokens = prepare_tokens(corpus, tokenizer)
        if distributed:
            dist.barrier()
    return corpus, tokenizer, tokens


def _write_run_record(out: Path, resume: bool, world: int) -> None:
    """run.json: version, commit and command of the run; each resume appends its own."""
    entry = {"hope_version": hope.__version__, "git_commit": git_commit(), "torch": torch.__version__,
             "argv": sys.argv, "world_size": world, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = out / "run.json"
    if not resume or not path.exists():
        record = {**entry, "created": entry.pop("time")}
    else:
        record = json.loads(path.read_text())
        step = latest_checkpoint(out)
        entry["from_checkpoint"] = step.name if step is not None else None
        record.setdefault("resumes", []).append(entry)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def train(cfg: Config, out, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train `cfg` into the run folder `out`. Returns the final metrics (and `interrupted`)."""
    # distribution: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        backend = "nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    try:
        return _train(cfg, Path(out), resume, overwrite, progress, world)
    finally:
        # a process group left to the interpreter's exit can abort it ("terminate called without an
        # active exception" from gloo's threads): the group this call made, this call destroys
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, out: Path, resume: bool, overwrite: bool, progress: bool, world: int) -> dict:
    tc = cfg.train
    distributed = world > 1
    rank = dist.get_rank() if distributed else 0
    device = resolve_device(tc.device, "train.device")
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    fsdp = distributed and tc.parallel == "fsdp"
    if tc.stateful and world > 1:
        raise HopeError("train.stateful does not support several processes yet; run it in one process")
    if fsdp:
        parallel.check_fsdp(cfg)
    fresh = not resume and not (out.exists() and any(out.iterdir()))
    _prepare_run_dir(out, resume, overwrite, rank)
    if distributed:
        dist.barrier()
    try:
        corpus, tokenizer, tokens = _load_data(cfg, out, resume, rank, distributed)
    except BaseException:
        # a failed data check leaves no empty run folder behind
        if master and fresh and not (out / "config.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tokenizer.vocab_size))
    if master:
        if corpus.skipped:
            kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(corpus.skipped.items()))
            log(f"note: skipped {sum(corpus.skipped.values())} file(s) under {cfg.data.corpus} whose extension is not a "
                f"text one ({kinds}); hope.data.corpus.TEXT_SUFFIXES lists those read")
        _write_run_record(out, resume, world)
        # a resume records what it changed (train.*, the corpus); the tokenizer stays the run's
        cfg.save(out / "config.json")
        if not resume:
            atomic_write_text(out / "tokenizer.json", tokenizer.to_json())
    tokens_per_step = tc.batch_size * tc.grad_accum * tc.seq_len * world
    passes = tc.steps * tokens_per_step / max(1, len(tokens["train"]))
    if passes > REPEAT_WARNING:
        log(f"warning: {tc.steps} steps of {tokens_per_step:,} tokens read the {len(tokens['train']):,} training tokens "
            f"{passes:.0f} times: expect the model to memorize them (a larger corpus, or fewer train.steps)")

    # model and optimizer
    torch.manual_seed(tc.seed)
    model = build_model(cfg.arch, cfg.model)
    if tc.dtype == "float64":
        model = model.double()
    model.to(device)
    use_bf16 = (tc.dtype == "auto" and device.type == "cuda") or tc.dtype == "bfloat16"
    params = count_parameters(model)
    start_step, tokens_seen = 0, 0
    streams: list = [None] * tc.grad_accum  # in-context state of each micro-batch's streams (train.stateful)
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model)  # weights into the whole model, before any sharding
        start_step, tokens_seen = state["step"], state["tokens"]
    raw_model = model
    if fsdp:
        # bf16 parameters on a GPU, except where the in-context state is made from them (docs/DEVIATIONS.md)
        parallel.shard(model, bf16_params=use_bf16 and device.type == "cuda" and not parallel.has_param_state(model))
    named = list(model.named_parameters())
    if tc.trainable_groups is not None:
        if fsdp:
            raise HopeError("train.trainable other than all does not support train.parallel=fsdp yet; use ddp")
        for name, p in named:
            p.requires_grad_(trainable_group(name) in tc.trainable_groups)
        named = [(n, p) for n, p in named if p.requires_grad]
        if not named:
            raise HopeError(f"train.trainable={tc.trainable} selects no parameter of {cfg.arch}")
        log(f"training {sum(p.numel() for _, p in named) / 1e6:.2f}M parameters ({tc.trainable}); the rest frozen")
    optimizer = build_optimizer(tc.optimizer, named, lr=tc.lr,
                                weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2),
                                fused=device.type == "cuda" and tc.dtype != "float64")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    if ckpt is not None:
        load_trainer_state(ckpt, optimizer, model, sharded=fsdp)
        if tc.stateful:
            streams = load_streams(ckpt, tc.grad_accum, device)
        log(f"resuming from {ckpt} (step {start_step})")
    if resume and master:
        _truncate_metrics(out / "metrics.jsonl", start_step)
    if start_step >= tc.steps:
        log(f"run already has {start_step} of {tc.steps} steps; raise train.steps to continue")
    log(f"{cfg.arch}: {params['total'] / 1e6:.2f}M parameters ({params['non_embedding'] / 1e6:.2f}M non-embedding), "
        f"vocabulary {tokenizer.vocab_size} ({tokenizer.kind}), {len(tokens['train']):,} train / "
        f"{len(tokens['val']):,} validation tokens, device {device}, {world} process(es)"
        + (", FSDP" if fsdp else ", DDP" if distributed else ""))

    # the unsharded copy the first process writes checkpoints and samples from (FSDP)
    plain = None
    if fsdp and master:
        plain = build_model(cfg.arch, cfg.model)
        plain = plain.double() if tc.dtype == "float64" else plain
    if tc.compile:
        model = compile_model(model)
    sync = None
    if fsdp:
        sync = parallel.GradSync(raw_model)
        # blocks return their KV tensors and memories, views that nothing modifies in place (the
        # equality tests of tests/test_distributed.py would catch a dropped all-gather)
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    elif distributed:
        # a Hope memory's meta-learned initial state takes part in the first CMS segment of a batch only
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                          find_unused_parameters=parallel.has_param_state(raw_model))

    def fresh_state(batch: int):
        return parallel.initial_state(raw_model, batch) if fsdp else None

    def autocast():
        if use_bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    windows = val_windows(tokens["val"], tc.seq_len, tc.eval_tokens)
    token_bytes = torch.from_numpy(tokenizer.token_bytes)
    learns = getattr(raw_model, "cms_segment", None) is not None and not fsdp

    def validate() -> dict:
        """The validation figures; a model whose CMS learns in context is validated learning, as it
        trains (`val_*`), and frozen beside it (`val_*_frozen`). FSDP validates frozen only."""
        frozen = evaluate(model, windows, token_bytes, tc.batch_size, device, autocast, fresh_state, fsdp)
        if not learns:
            return frozen
        learning = evaluate(raw_model, windows, token_bytes, tc.batch_size, device, autocast, fresh_state, learn=True)
        return {**learning, **{f"{k}_frozen": v for k, v in frozen.items()}}

    metrics_path = out / "metrics.jsonl"
    metrics_file = open(metrics_path, "a") if master else open(os.devnull, "w")
    last_val: dict = {}
    interrupted = False

    def record(entry: dict) -> None:
        metrics_file.write(json.dumps(entry) + "\n")
        metrics_file.flush()

    def checkpoint(step: int) -> None:
        if fsdp:
            # gathered to the first process, written as an unsharded checkpoint (any world size resumes it)
            weights, optim_state = parallel.full_state(raw_model, optimizer)
            if master:
                plain.load_state_dict(weights)
                save_checkpoint(out, step, plain, None, {"tokens": tokens_seen}, optimizer_state=optim_state)
        elif master:
            save_checkpoint(out, step, raw_model, optimizer, {"tokens": tokens_seen},
                            extra={"streams.pt": streams} if tc.stateful and world == 1 else None)
        if distributed:
            dist.barrier()

    bar = tqdm(total=tc.steps, initial=start_step, disable=not (progress and master), dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30, desc="train")
    t_last, tok_last = time.perf_counter(), tokens_seen
    step = start_step
    with _StopFlag() as stop:
        model.train()
        for step in range(start_step + 1, tc.steps + 1):
            scale = lr_at(step - 1, tc)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * scale
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in range(tc.grad_accum):
                # one stream of batches per (step, global micro-batch index): 2 processes x 1 micro-batch
                # read exactly what 1 process x 2 micro-batches reads
                index = rank * tc.grad_accum + micro
                if tc.stateful:
                    x, y = get_stream_batch(tokens["train"], tc.batch_size, tc.seq_len, step, index, world * tc.grad_accum)
                elif tc.sampler == "disjoint":
                    x, y = get_disjoint_batch(tokens["train"], tc.batch_size, tc.seq_len, tc.seed,
                                              (step - 1) * world * tc.grad_accum + index)
                else:
                    gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + step) * 65_537 + index)
                    x, y = get_batch(tokens["train"], tc.batch_size, tc.seq_len, gen)
                x, y = x.to(device), y.to(device)
                last_micro = micro == tc.grad_accum - 1
                start_state = streams[micro] if streams[micro] is not None else fresh_state(tc.batch_size)
                if fsdp:
                    sync.set(last_micro)  # reduce-scatter gradients once, in the last micro-batch
                    no_sync, outer = sync.off, contextlib.nullcontext()
                elif distributed:
                    no_sync, outer = model.no_sync, contextlib.nullcontext() if last_micro else model.no_sync()
                else:
                    no_sync, outer = contextlib.nullcontext, contextlib.nullcontext()
                with outer:
                    loss, state = forward_backward(
                        model, x, y, start_state, tc.batch_size * tc.seq_len * tc.grad_accum, autocast,
                        no_sync=no_sync, raw_model=raw_model, truncate=tc.tbptt, final_state=tc.stateful)
                if tc.stateful:
                    streams[micro] = state
                loss_sum += loss
            grad_norm = parallel.full_tensor(
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")))
            optimizer.step()
            tokens_seen += tokens_per_step
            train_loss = loss_sum / (tc.batch_size * tc.seq_len * tc.grad_accum)
            if distributed:
                t = torch.tensor(train_loss, device=device)
                dist.all_reduce(t)
                train_loss = t.item() / world
            if not math.isfinite(train_loss):
                raise DivergedError(f"training diverged at step {step} (loss {train_loss}); lower train.lr")
            now = time.perf_counter()
            if step % tc.log_every == 0 or step == tc.steps:
                tps = (tokens_seen - tok_last) / max(now - t_last, 1e-9)
                t_last, tok_last = now, tokens_seen
                record({"step": step, "tokens": tokens_seen, "loss": train_loss, "lr": tc.lr * scale,
                        "grad_norm": float(grad_norm), "tokens_per_s": tps})
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(1)
            if step % tc.eval_every == 0 or step == tc.steps:
                last_val = validate()
                record({"step": step, "tokens": tokens_seen, **last_val})
                frozen = f" (frozen CMS {last_val['val_ppl_frozen']:.2f})" if "val_ppl_frozen" in last_val else ""
                bar.write(f"step {step}: val loss {last_val['val_loss']:.4f}, ppl {last_val['val_ppl']:.2f}{frozen}, "
                          f"bpb {last_val['val_bpb']:.4f}") if master else None
            if step % tc.ckpt_every == 0 or step == tc.steps:
                checkpoint(step)
            stop_now = stop.requested
            if distributed:
                flag = torch.tensor(int(stop_now), device=device)
                dist.all_reduce(flag)
                stop_now = bool(flag.item())
            if stop_now:
                if step % tc.ckpt_every and step != tc.steps:
                    checkpoint(step)
                interrupted = True
                bar.write(f"interrupted: checkpoint at step {step} written to {out}; continue with --resume") if master else None
                break
    bar.close()
    metrics_file.close()
    result = {"step": step, "tokens": tokens_seen, "interrupted": interrupted, **last_val}
    if interrupted or step < start_step + 1:
        return result

    # final report: perplexity beside a unigram baseline, a loss curve, samples
    if master:
        uni = unigram_baseline(tokens["train"], windows, tokenizer.vocab_size)
        result["unigram_ppl"] = uni
        frozen = f", {last_val['val_ppl_frozen']:.2f} with the CMS frozen" if "val_ppl_frozen" in last_val else ""
        log(f"validation perplexity {last_val['val_ppl']:.2f}{frozen} (unigram baseline {uni:.2f}), "
            f"bits per byte {last_val['val_bpb']:.4f}, {tokens_seen:,} tokens")
        if plot_losses(metrics_path, out / "loss.png", uni):
            log(f"loss curve: {out / 'loss.png'}")
        else:
            log("loss curve skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
        if tc.sample_tokens and tc.num_samples:
            gen = torch.Generator(device=device).manual_seed(tc.seed)
            prompt = torch.full((tc.num_samples, 1), tokenizer.eos_id, dtype=torch.long, device=device)
            sampler = plain.to(device) if fsdp else raw_model  # the gathered final weights under FSDP
            n_new = tc.sample_tokens
            if sampler.max_seq_len is not None:
                n_new = min(n_new, sampler.max_seq_len - 1)
            with autocast():
                ids = generate(sampler, prompt, n_new, temperature=0.8, top_k=50, generator=gen)
            samples = [tokenizer.decode(row[1:].tolist()) for row in ids.cpu()]
            atomic_write_text(out / "samples.txt", "\n\n---\n\n".join(samples) + "\n")
            log("samples:")
            for s in samples:
                log("  | " + " ".join(s.split())[:200])
        atomic_write_text(out / "final.json", json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    # `python -m hope.train ...` (what torchrun launches) = `hope train ...`; the CLI imports this module,
    # never the reverse (this block runs only when the file is the program)
    from hope.cli import main

    code = main(["train", *sys.argv[1:]])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker whose run is over leaves without the interpreter's teardown: under load, a static
        # destructor behind the (already destroyed) gloo group aborts it at exit with "terminate called without
        # an active exception" (no Python frame left), which torchrun reports as a failed run
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
