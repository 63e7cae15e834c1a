"""What a pretrained model forgets when it adapts to a new domain (issue 17): SmolLM2-135M level-stacked
into Hope-Attention (`hope stack`), against plain fine-tuning of the same model on the same tokens,
and against learning in context only (`hope learn`, no outer optimizer).

Arms, each from the same pretrained weights and the same `--tokens` of the new domain's training split:
* `cms`: `hope stack --periods none,512,64` (each MLP split into a static level and two learning ones),
  then `hope train --resume --data DOMAIN` (AdamW on every parameter, the CMS learning in context as in
  training from scratch);
* `finetune`: `hope stack --periods none,none,none` (every level static: the pretrained model
  exactly), the same training: plain fine-tuning;
* `learn`: the `cms` model before training reads the same tokens with `hope learn` (no optimizer) and
  is evaluated from the learned state;
* `lora`: the `finetune` model with rank-16 LoRA adapters (peft) on its attention and MLP projections,
  trained on the same batches with its own learning rate (`--lora-lr`, 1e-3: LoRA's usual 10x), merged.
Before and after: perplexity on the domain's and on `wiki`'s validation split (`hope eval ppl`,
independent windows; CMS models also with their levels learning from each window, `*_learn`), and
zero-shot accuracy (`hope eval harness`, PIQA / ARC-Easy / HellaSwag, the first `--limit` examples).

Every step is a `hope` command; a step whose output exists is skipped, so the script resumes.

    python benchmarks/level_stacking.py --work /tmp/level_stacking    # about an hour on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from hope.eval.harness import PAPER_COLUMNS

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "level_stacking"


def hope(*args: str) -> None:
    cmd = [sys.executable, "-m", "hope.cli", *args]
    print("$ hope " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def write_domain(domain: str, tokens: int, folder: Path) -> int:
    """The first documents of the domain's training split, cut to about `tokens` SmolLM2 tokens, as files."""
    from hope.data.corpus import corpus_documents
    from hope.data.tokenizer import load_tokenizer

    tok = load_tokenizer(folder.parent / "cms" / "tokenizer.json")
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, doc in enumerate(corpus_documents(domain, "train")):
        ids = tok.encode(doc)[:tokens - total]
        (folder / f"{i:04d}.txt").write_text(tok.decode(ids), encoding="utf-8")
        total += len(ids)
        if total >= tokens:
            break
    return total


def evaluate(run: Path, tag: str, args, state: Path | None = None) -> None:
    extra = ["--state", str(state)] if state else []
    for data in (args.domain, "wiki"):
        out = OUT / f"ppl_{tag}_{data}.json"
        if not out.exists():
            hope("eval", "ppl", "--run", str(run), "--data", data, "--split", "validation", "--window", "256",
                 "--max-tokens", str(args.eval_tokens), "--modes", "independent", "--out", str(out), *extra)
    out = OUT / f"harness_{tag}.json"
    if not out.exists():
        hope("eval", "harness", "--run", str(run), "--tasks", "piqa,arc_easy,hellaswag", "--limit", str(args.limit),
             "--no-progress", "--out", str(out), *extra)


def train_lora(run: Path, rank: int, lr: float) -> None:
    """LoRA (peft) on the attention and MLP projections of the static stacked model in `run`, trained on
    the batches `hope train --resume` reads (the same seeds, schedule, clipping and tokens), then merged
    into the weights and written as the run's checkpoint at the last step."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model

    from hope.checkpoint import save_checkpoint
    from hope.data.corpus import load_corpus
    from hope.data.tokens import get_batch, prepare_tokens
    from hope.models import build_model
    from hope.runs import load_run
    from hope.schedule import lr_at

    loaded = load_run(run)
    cfg, tc = loaded.cfg, loaded.cfg.train
    tokens = prepare_tokens(load_corpus(cfg.data.corpus, cfg.data.val_fraction), loaded.tokenizer)
    torch.manual_seed(tc.seed)
    model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                               target_modules=["qkv", "proj", "gate_up", "down"]), loaded.model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    print(f"LoRA rank {rank}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters", flush=True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(tc.beta1, tc.beta2), weight_decay=0.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, tc.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * lr_at(step - 1, tc)
        gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + step) * 65_537)  # hope train's batches
        x, y = get_batch(tokens["train"], tc.batch_size, tc.seq_len, gen)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        print(f"  step {step}: loss {loss.item():.4f} ({step * x.numel() / (time.perf_counter() - t0):.0f} tokens/s)",
              flush=True)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "merge") and hasattr(module, "base_layer"):
                module.merge()
        merged = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
        plain = build_model(cfg.arch, cfg.model)
        plain.load_state_dict(merged)
    save_checkpoint(run, tc.steps, plain, None, {"tokens": tc.steps * tc.batch_size * tc.seq_len})


def table(args) -> str:
    rows = []
    for tag, label in (("before", "pretrained (before)"), ("cms", "CMS level stacking, trained"),
                       ("finetune", "plain fine-tuning"), ("lora", "LoRA fine-tuning"),
                       ("learn", "CMS learning in context only")):
        ppl = {d: json.loads((OUT / f"ppl_{tag}_{d}.json").read_text())["results"] for d in (args.domain, "wiki")
               if (OUT / f"ppl_{tag}_{d}.json").exists()}
        h = OUT / f"harness_{tag}.json"
        res = json.loads(h.read_text())["results"] if h.exists() else {}
        acc = {t: res[t][m] for t, m, _ in PAPER_COLUMNS if t in res and m in res[t]}
        if not ppl:
            continue

        def cell(d, mode="independent"):
            r = ppl.get(d, {}).get(mode)
            return f"{r['ppl']:.2f}" if r else "-"
        rows.append(f"| {label} | {cell(args.domain)} | {cell(args.domain, 'independent_learn')} | {cell('wiki')} | "
                    f"{cell('wiki', 'independent_learn')} | "
                    + " | ".join(f"{acc[t]:.3f}" if t in acc else "-" for t in ("piqa", "arc_easy", "hellaswag")) + " |")
    head = (f"| model | {args.domain} ppl | {args.domain} ppl, CMS learning | wiki ppl | wiki ppl, CMS learning | "
            "PIQA | ARC-Easy | HellaSwag |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    return head + "\n" + "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/level_stacking", help="folder for the run folders (about 2 GB)")
    ap.add_argument("--domain", default="bible", help="the new domain (a registered corpus)")
    ap.add_argument("--tokens", type=int, default=32768, help="training tokens of the new domain per arm")
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate of both trained arms")
    ap.add_argument("--cms-lr", type=float, default=0.1, help="CMS fast-weight learning rate of the stacked model")
    ap.add_argument("--eval-tokens", type=int, default=8192, help="validation tokens per perplexity")
    ap.add_argument("--limit", type=int, default=100, help="examples per zero-shot task")
    ap.add_argument("--lora-rank", type=int, default=16, help="LoRA rank of the lora arm (needs peft)")
    ap.add_argument("--lora-lr", type=float, default=1e-3, help="peak learning rate of the lora arm")
    args = ap.parse_args()
    work = Path(args.work)
    OUT.mkdir(parents=True, exist_ok=True)
    batch, seq = 4, 256
    steps = max(1, args.tokens // (batch * seq))
    common = [f"data.corpus={args.domain}", f"train.steps={steps}", f"train.batch_size={batch}", f"train.seq_len={seq}",
              f"train.lr={args.lr}", "train.warmup_steps=4", f"train.eval_every={steps}", f"train.ckpt_every={steps}",
              "train.eval_tokens=4096", "train.sample_tokens=0", "train.log_every=1"]
    for arm, periods in (("cms", "none,512,64"), ("finetune", "none,none,none"), ("learn", "none,512,64"),
                         ("lora", "none,none,none")):
        if not (work / arm / "config.json").exists():
            hope("stack", "--gguf", "smollm2", "--periods", periods, "--cms-lr", str(args.cms_lr), "--out",
                 str(work / arm), "--overwrite", "--set", *common)
    evaluate(work / "finetune", "before", args)  # every level static: the pretrained model exactly
    docs = work / "domain_docs"
    if not docs.exists():
        print(f"{write_domain(args.domain, args.tokens, docs):,} {args.domain} tokens written to {docs}")
    state = work / "learn.state"
    if not state.exists():
        hope("learn", "--run", str(work / "learn"), "--data", str(docs), "--state-out", str(state), "--no-progress")
    evaluate(work / "learn", "learn", args, state)
    for arm in ("cms", "finetune"):
        if not (work / arm / "checkpoints" / f"step-{steps:07d}").exists():
            hope("train", "--resume", "--out", str(work / arm), "--no-progress")
        evaluate(work / arm, arm, args)
    if not (work / "lora" / "checkpoints" / f"step-{steps:07d}").exists():
        train_lora(work / "lora", args.lora_rank, args.lora_lr)
    evaluate(work / "lora", "lora", args)
    md = (f"# Level stacking: what SmolLM2-135M keeps when it adapts to {args.domain}\n\n"
          f"`python benchmarks/level_stacking.py --domain {args.domain} --tokens {args.tokens} --lr {args.lr} "
          f"--cms-lr {args.cms_lr} --eval-tokens {args.eval_tokens} --limit {args.limit}`; {steps} steps of "
          f"{batch} x {seq} tokens ({steps * batch * seq:,} {args.domain} tokens) per trained arm, the same tokens read "
          f"by `hope learn`. Perplexity on the first {args.eval_tokens:,} validation tokens in windows of 256; "
          f"accuracy on the first {args.limit} examples of each task (zero-shot, CMS frozen while scoring).\n\n"
          + table(args) + "\n")
    (OUT / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
