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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

import hope
from hope.checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, load_streams, save_checkpoint
from hope.config import Config
from hope.data.corpus import load_corpus
from hope.data.tokenizer import build_tokenizer, load_tokenizer
from hope.data.tokens import get_batch, get_stream_batch, prepare_tokens, val_windows
from hope.errors import DivergedError, HopeError
from hope.generate import generate
from hope.device import resolve_device
from hope.models import build_model, count_parameters
from hope.models.common import forward_backward
from hope.optim import build_optimizer
from hope.schedule import lr_at


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, token_bytes: torch.Tensor, batch_size: int, device, autocast) -> dict:
    """Mean loss (nats/token), perplexity and bits per byte over `windows` [N, T + 1].

    In a distributed run every process takes a share of the windows and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.float64, device=device)
    mine = windows[rank::world]
    for i in range(0, len(mine), batch_size):
        batch = mine[i:i + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast():
            logits, _ = model(x)
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


def plot_losses(metrics_path: Path, png_path: Path) -> bool:
    """Training and validation loss against tokens seen. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    tr = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    va = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1, alpha=0.8)
    if va:
        ax.plot(*zip(*va), "o-", label="validation", lw=1.5)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
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


def train(cfg: Config, out, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train `cfg` into the run folder `out`. Returns the final metrics (and `interrupted`)."""
    out = Path(out)
    tc = cfg.train

    # distribution: torchrun sets WORLD_SIZE / RANK / LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and tc.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if distributed else 0
    device = resolve_device(tc.device, "train.device")
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    if tc.stateful and world > 1:
        raise HopeError("train.stateful does not support several processes yet; run it in one process")
    _prepare_run_dir(out, resume, overwrite, rank)
    if distributed:
        dist.barrier()

    # data and tokenizer: the first process encodes, the others read its cache
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
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=tokenizer.vocab_size))
    if master and not resume:
        cfg.save(out / "config.json")
        atomic_write_text(out / "tokenizer.json", tokenizer.to_json())
        atomic_write_text(out / "run.json", json.dumps({
            "hope_version": hope.__version__, "git_commit": git_commit(), "torch": torch.__version__,
            "argv": sys.argv, "world_size": world, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2) + "\n")

    # model and optimizer
    torch.manual_seed(tc.seed)
    model = build_model(cfg.arch, cfg.model)
    if tc.dtype == "float64":
        model = model.double()
    model.to(device)
    optimizer = build_optimizer(tc.optimizer, list(model.named_parameters()), lr=tc.lr,
                                weight_decay=tc.weight_decay, betas=(tc.beta1, tc.beta2),
                                fused=device.type == "cuda" and tc.dtype != "float64")
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    start_step, tokens_seen = 0, 0
    streams: list = [None] * tc.grad_accum  # in-context state of each micro-batch's streams (train.stateful)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is not None:
            state = load_checkpoint(ckpt, model, optimizer)
            start_step, tokens_seen = state["step"], state["tokens"]
            if tc.stateful:
                streams = load_streams(ckpt, tc.grad_accum, device)
            log(f"resuming from {ckpt} (step {start_step})")
        if master:
            _truncate_metrics(out / "metrics.jsonl", start_step)
    if start_step >= tc.steps:
        log(f"run already has {start_step} of {tc.steps} steps; raise train.steps to continue")
    params = count_parameters(model)
    log(f"{cfg.arch}: {params['total'] / 1e6:.2f}M parameters ({params['non_embedding'] / 1e6:.2f}M non-embedding), "
        f"vocabulary {tokenizer.vocab_size} ({tokenizer.kind}), {len(tokens['train']):,} train / "
        f"{len(tokens['val']):,} validation tokens, device {device}, {world} process(es)")

    raw_model = model
    if tc.compile:
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = (tc.dtype == "auto" and device.type == "cuda") or tc.dtype == "bfloat16"

    def autocast():
        if use_bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    windows = val_windows(tokens["val"], tc.seq_len, tc.eval_tokens)
    token_bytes = torch.from_numpy(tokenizer.token_bytes)
    metrics_path = out / "metrics.jsonl"
    metrics_file = open(metrics_path, "a") if master else open(os.devnull, "w")
    tokens_per_step = tc.batch_size * tc.grad_accum * tc.seq_len * world
    last_val: dict = {}
    interrupted = False

    def record(entry: dict) -> None:
        metrics_file.write(json.dumps(entry) + "\n")
        metrics_file.flush()

    def checkpoint(step: int) -> None:
        if master:
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
                else:
                    gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + step) * 65_537 + index)
                    x, y = get_batch(tokens["train"], tc.batch_size, tc.seq_len, gen)
                x, y = x.to(device), y.to(device)
                last_micro = micro == tc.grad_accum - 1
                sync = contextlib.nullcontext() if not distributed or last_micro else model.no_sync()
                with sync:
                    loss, state = forward_backward(
                        model, x, y, streams[micro], tc.batch_size * tc.seq_len * tc.grad_accum, autocast,
                        no_sync=model.no_sync if distributed else contextlib.nullcontext, raw_model=raw_model)
                if tc.stateful:
                    streams[micro] = state
                loss_sum += loss
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
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
                last_val = evaluate(model, windows, token_bytes, tc.batch_size, device, autocast)
                record({"step": step, "tokens": tokens_seen, **last_val})
                bar.write(f"step {step}: val loss {last_val['val_loss']:.4f}, ppl {last_val['val_ppl']:.2f}, "
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
        log(f"validation perplexity {last_val['val_ppl']:.2f} (unigram baseline {uni:.2f}), "
            f"bits per byte {last_val['val_bpb']:.4f}, {tokens_seen:,} tokens")
        if plot_losses(metrics_path, out / "loss.png"):
            log(f"loss curve: {out / 'loss.png'}")
        else:
            log("loss curve skipped: matplotlib is not installed (pip install 'hope-nl[plot]')")
        if tc.sample_tokens and tc.num_samples:
            gen = torch.Generator(device=device).manual_seed(tc.seed)
            prompt = torch.full((tc.num_samples, 1), tokenizer.eos_id, dtype=torch.long, device=device)
            n_new = tc.sample_tokens
            if raw_model.max_seq_len is not None:
                n_new = min(n_new, raw_model.max_seq_len - 1)
            with autocast():
                ids = generate(raw_model, prompt, n_new, temperature=0.8, top_k=50, generator=gen)
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

    sys.exit(main(["train", *sys.argv[1:]]))
