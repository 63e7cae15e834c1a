"""Domain-incremental language modelling (`hope continual lm`) and forgetting at inference.

A sequence of domains (default shakespeare -> wiki -> bible -> pydocs, from `hope data get`; any
registered corpus or text path), one tokenizer shared by all stages (the recipe's: a byte-level BPE
trained on an equal share of every domain's training split, or bytes at `debug`), the same number
of optimizer steps (tokens) per stage. After each stage every domain's validation split is scored
(`hope.train.evaluate`: loss, perplexity, bits per byte over fixed windows), filling
`R[i, j]` = loss on domain j after stage i, plus the row before the first stage (for forward
transfer). `joint` trains every stage on all domains mixed (each row of a batch from a random domain).

Forgetting at inference (`inference_forgetting`): a trained CMS model reads held-out text of domain
A, then of domain B, learning in context (`model.read`, no outer optimizer), and its loss on the
held-out continuation of A is measured fresh, after A, and after A then B, with CMS learning on and
off. The state carries the mixers' memories (and KV caches) in both modes; only the CMS levels
differ, so the difference between the modes is what the CMS's own in-context learning does.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hope.continual.common import (Settings, Stage, all_finished_runs, from_run_archs, has_cms, load_from_run, plan,
                                   prepare_run_dir, recipe_name, run_config, run_name, run_stages, write_json)
from hope.continual.metrics import summary
from hope.continual.report import header, write_report
from hope.data.corpus import load_corpus
from hope.data.registry import REGISTRY, resolve_name
from hope.data.tokenizer import build_tokenizer
from hope.data.tokens import get_batch, prepare_tokens, val_windows
from hope.errors import DivergedError, HopeError
from hope.recipes import get_recipe
from hope.train import evaluate, git_commit

DEFAULT_DOMAINS = ("shakespeare", "wiki", "bible", "pydocs")
TOKENIZER_CHARS = 2_000_000  # characters of each domain's training split the shared BPE is trained on


def load_domain(name: str):
    """The corpus `name` (a registered corpus or a path), with a one-line error for an unknown name, an
    unprepared corpus or an empty one."""
    entry = REGISTRY.get(resolve_name(name) or "")
    if entry is None and not Path(name).expanduser().exists():
        known = ", ".join(n for n, e in REGISTRY.items() if e.kind == "corpus")
        raise HopeError(f"unknown domain {name!r}; available: {known}, or a path to a text file or folder")
    if entry is not None and entry.kind != "corpus":
        raise HopeError(f"{entry.name!r} is not a text corpus and cannot be a domain")
    return load_corpus(name)


def load_domains(names: list[str]) -> list:
    """The corpora of `names` (`load_domain`), at least two and no repeats."""
    if len(names) < 2:
        raise HopeError("a continual benchmark needs at least two domains (--domains a,b,...)")
    if len(set(names)) != len(names):
        raise HopeError("--domains names a domain twice")
    return [load_domain(n) for n in names]


def shared_tokenizer(kind: str, corpora: list, vocab_size: int):
    """One tokenizer for all stages: a BPE trained on up to `TOKENIZER_CHARS` of every domain's
    training split (cached by the domains' digests), or bytes / GPT-2's BPE."""
    mix = []
    for c in corpora:
        n = 0
        for doc in c.train:
            if n >= TOKENIZER_CHARS:
                break
            mix.append(doc[:TOKENIZER_CHARS - n])
            n += len(mix[-1])
    digest = hashlib.sha256(("|".join(c.digest for c in corpora) + f"|{TOKENIZER_CHARS}").encode()).hexdigest()[:16]
    return build_tokenizer(kind, mix, digest, vocab_size)


def inference_forgetting(model, val_a: np.ndarray, val_b: np.ndarray, read_len: int, b_len: int, probe_len: int,
                         rows: int = 8) -> dict:
    """Held-out loss on a continuation of domain A: fresh, after reading A, after reading A then B.

    Row r reads `read_len` tokens of A's validation split, is probed on the next `probe_len` tokens
    (from a copy of the state, without learning), then reads `b_len` tokens of B's and is probed
    again. Per mode (`learn`: the CMS learns in context while reading; `frozen`: it does not) the
    mean probe loss in nats/token: {"fresh", "after_a", "after_b"}; with learning, also how far each
    CMS level moved (`moved_after_a`, `moved_after_b`: period -> ||fast weights|| / ||weights||,
    `hope.learn.level_movement`).
    """
    from hope.learn import level_movement

    need_a, need_b = read_len + probe_len + 1, b_len
    rows = max(1, min(rows, len(val_a) // need_a, len(val_b) // need_b))
    if len(val_a) < need_a or len(val_b) < need_b:
        raise HopeError("the validation splits are too short for the forgetting-at-inference probe")
    a = torch.from_numpy(np.stack([np.asarray(val_a[r * need_a:(r + 1) * need_a], dtype=np.int64) for r in range(rows)]))
    b = torch.from_numpy(np.stack([np.asarray(val_b[r * need_b:(r + 1) * need_b], dtype=np.int64) for r in range(rows)]))
    device = next(model.parameters()).device
    a, b = a.to(device), b.to(device)
    read, probe = a[:, :read_len], a[:, read_len:]
    model.eval()

    def probe_loss(state) -> float:
        with torch.no_grad():
            logits, _ = model(probe[:, :-1], state)
        return float(F.cross_entropy(logits.float().flatten(0, 1), probe[:, 1:].flatten()))

    out = {"a_tokens": read_len, "b_tokens": b_len, "probe_tokens": probe_len, "rows": rows, "modes": {}}
    for mode, learn in (("learn", True), ("frozen", False)):
        fresh = probe_loss(None)
        _, state = model.read(read, None, learn=learn)
        after_a = probe_loss(state)
        moved_a = level_movement(model, model.learned_part(state))
        _, state = model.read(b, state, learn=learn)
        out["modes"][mode] = {"fresh": fresh, "after_a": after_a, "after_b": probe_loss(state)}
        if learn:
            out["modes"][mode].update(moved_after_a={str(k): v for k, v in moved_a.items()},
                                      moved_after_b={str(k): v for k, v in
                                                     level_movement(model, model.learned_part(state)).items()})
    return out


def continual_lm(out: Path, domains: list[str], archs: list[str] | None, methods: list[str] | None,
                 settings: Settings, eval_tokens: int, progress: bool = True, log=print,
                 from_run: str | None = None) -> dict:
    """Run every (architecture, method) of the plan on `domains`; write the report after each run.
    Returns the results dict (also in `out/results.json`). `from_run`: start every run from that run
    folder's model, weights and tokenizer (a pretrained or level-stacked model) instead of a recipe."""
    start, init = None, None
    if from_run is not None:
        start, tokenizer, init = load_from_run(from_run)
        archs = from_run_archs(archs, start)
    pairs = plan(archs, methods, settings)
    commit = git_commit()  # the code the suite runs (HEAD may move while it runs)
    corpora = load_domains(domains)
    base = get_recipe(recipe_name("transformer", settings.size))
    if start is None:
        tokenizer = shared_tokenizer(base.data.tokenizer, corpora, base.data.vocab_size)
    else:
        base = run_config(start.arch, "seq", settings, tokenizer.vocab_size, start)
    tokens = [prepare_tokens(c, tokenizer) for c in corpora]
    for name, t in zip(domains, tokens):
        if len(t["train"]) < base.train.seq_len + 1:
            raise HopeError(f"domain {name!r} has only {len(t['train'])} training tokens")
    token_bytes = torch.from_numpy(tokenizer.token_bytes)
    labels = [c.name for c in corpora]
    log("domains: " + ", ".join(f"{n} ({len(t['train']):,} train / {len(t['val']):,} val tokens)"
                                 for n, t in zip(labels, tokens)) + f"; tokenizer {tokenizer.kind} {tokenizer.vocab_size}")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    suite = {"domains": labels, "eval_tokens": eval_tokens, **({"from": str(from_run)} if from_run else {})}
    for arch, method in pairs:
        cfg = run_config(arch, method, settings, tokenizer.vocab_size, start)
        tc = cfg.train
        name = run_name(arch, method, settings)
        run_dir = out / "runs" / name
        windows = [val_windows(t["val"], tc.seq_len, eval_tokens) for t in tokens]
        result = prepare_run_dir(run_dir, cfg, settings, suite)
        if result is None:
            log(f"{name}: {settings.steps} steps x {tc.batch_size} x {tc.seq_len} tokens per stage")

            def score(model, stage, windows=windows, tc=tc):
                rows = []
                for w in windows:
                    v = evaluate(model, w, token_bytes, tc.batch_size, next(model.parameters()).device,
                                 contextlib.nullcontext)
                    rows.append({"loss": v["val_loss"], "ppl": v["val_ppl"], "bpb": v["val_bpb"]})
                return rows

            stages = _stages(tokens, labels, tc, method)
            try:
                model, done = run_stages(run_dir, cfg, method, stages, score, settings, init_from=init,
                                         progress=progress, log=log)
            except DivergedError as e:
                result = {"name": name, "arch": arch, "method": method, "optimizer": settings.optimizer, "diverged": str(e)}
            else:
                result = _result(name, arch, method, settings, labels, done, tc)
                if has_cms(cfg):
                    L = min(tc.seq_len * 2, (model.max_seq_len or 10 ** 9) // 4)
                    result["inference_forgetting"] = {"a": labels[0], "b": labels[1], **inference_forgetting(
                        model, tokens[0]["val"], tokens[1]["val"], read_len=L, b_len=2 * L, probe_len=L // 2)}
            write_json(run_dir / "result.json", result)
        runs.append(result)
        every = all_finished_runs(out, runs, settings, suite)
        results = header("lm", settings, {"git_commit": commit, "domains": labels,
                                          "tokens_per_stage": settings.steps * tc.batch_size * tc.seq_len,
                                          "eval_tokens": eval_tokens, "tokenizer": f"{tokenizer.kind} {tokenizer.vocab_size}",
                                          "runs": every})
        write_report(out, results, "loss", log)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return results


def _stages(tokens: list[dict], labels: list[str], tc, method: str) -> list[Stage]:
    def one(data):
        return lambda gen, n: get_batch(data, n, tc.seq_len, gen)

    def mixed(gen, n):
        pick = torch.randint(0, len(tokens), (n,), generator=gen).tolist()
        xs, ys = zip(*(get_batch(tokens[d]["train"], 1, tc.seq_len, gen) for d in pick))
        return torch.cat(xs), torch.cat(ys)

    if method == "joint":
        return [Stage(f"all ({i + 1})", mixed) for i in range(len(tokens))]
    return [Stage(label, one(t["train"])) for label, t in zip(labels, tokens)]


def _result(name, arch, method, settings, labels, done, tc) -> dict:
    R = [[s["loss"] for s in row] for row in done["rows"]]
    base = [s["loss"] for s in done["baseline"]] if done.get("baseline") else None
    m = summary(R, higher_is_better=False, baseline=base)
    final = done["rows"][-1]
    m["avg_ppl"] = float(np.exp(m["acc"]))
    m["avg_bpb"] = float(np.mean([s["bpb"] for s in final]))
    return {"name": name, "arch": arch, "method": method, "optimizer": settings.optimizer, "tasks": labels,
            "parameters": done["parameters"], "steps_per_stage": settings.steps, "batch_size": tc.batch_size,
            "seq_len": tc.seq_len, "tokens": done["tokens"], "train_seconds": round(done["train_seconds"], 1),
            "tokens_per_s": done["tokens"] / max(1e-9, done["train_seconds"]), "metrics": m,
            "R_loss": R, "baseline": done.get("baseline"), "rows": done["rows"], "curve": done["curve"],
            **({"drift": done["drift"]} if done.get("drift") else {})}
