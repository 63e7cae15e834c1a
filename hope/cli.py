"""The `hope` command: subcommands mapped to plain functions.

    hope train [--recipe tiny] [--set train.steps=500 model.d_model=256] [--data PATH] [--out DIR]
    hope generate --run DIR --prompt "..." [--max-new-tokens 200 --temperature 0.8 --top-k 50]
    hope info DIR
    hope export --run DIR --out HF_DIR    a transformers folder (AutoModelForCausalLM.from_pretrained)
    hope stack --gguf smollm2 --periods none,512,64 --out RUN   level stacking of a pretrained Llama (hope/stack.py)
    hope learn --run RUN --data PATH --state-out STATE          keep learning from documents (hope/learn.py)
    hope bench formal|mad|niah [--quick] [--models ...] [--out DIR]   (hope/bench/cli.py)
    hope continual lm|classify [--quick] [--archs ...] [--methods ...]   (hope/continual/cli.py)

`generate`, `info` and `eval ...` read a run folder or a transformers folder (`hope.runs.load_run`).
Every user error (`HopeError`) is printed as one line `error: ...` with exit status 2; Ctrl-C, even
while the command is still importing torch, prints `interrupted` and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hope.errors import HopeError


def cmd_train(args) -> int:
    from hope.config import Config, apply_overrides
    from hope.recipes import get_recipe
    from hope.train import train

    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.corpus={args.data}")
    out = Path(args.out or f"runs/{args.recipe}")
    if args.resume:
        if args.overwrite:
            raise HopeError("--resume and --overwrite exclude each other")
        if not (out / "config.json").exists():
            raise HopeError(f"cannot resume: {out} holds no run (config.json is missing)")
        # the data may change (continual pre-training of a run on new text); its tokenizer stays the run's
        bad = [o for o in overrides if not o.startswith(("train.", "data.corpus=", "data.val_fraction="))]
        if bad:
            raise HopeError(f"only train.* keys, data.corpus and data.val_fraction may change when resuming; "
                            f"got {bad[0]!r}")
        cfg = apply_overrides(Config.load(out / "config.json"), overrides)
    else:
        cfg = apply_overrides(get_recipe(args.recipe), overrides)
    result = train(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 130 if result.get("interrupted") else 0


def cmd_stack(args) -> int:
    from hope.stack import parse_periods, write_stacked_run

    if (args.gguf is None) == (args.hf is None):
        raise HopeError("pass one of --gguf (a .gguf file or smollm2) and --hf (a transformers folder)")
    periods = parse_periods(args.periods)
    write_stacked_run(args.out, args.gguf or args.hf, periods, args.cms_lr, args.cms_decay, args.max_seq_len,
                      args.set, args.overwrite)
    print(f"next: hope train --resume --out {args.out} --data CORPUS --set train.steps=N   (continual pre-training)\n"
          f"      hope learn --run {args.out} --data PATH --state-out STATE   (learn from documents, no optimizer)")
    return 0


def cmd_generate(args) -> int:
    import torch

    from hope.generate import generate
    from hope.runs import load_run

    if args.max_new_tokens < 0:
        raise HopeError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise HopeError(f"--num-samples must be >= 1, got {args.num_samples}")
    run = load_run(args.run, args.device)
    model, tokenizer = run.model, run.tokenizer
    if args.state:
        from hope.learn import use_state

        use_state(run, args.state)
    device = next(model.parameters()).device
    ids = [tokenizer.eos_id] + tokenizer.encode(args.prompt)
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, generator=gen,
                   learn=not args.no_learn)
    for i, row in enumerate(out.cpu()):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(tokenizer.decode(row[1:].tolist()))
    return 0


def cmd_learn(args) -> int:
    import torch

    from hope.data.corpus import read_text_files
    from hope.learn import check_learns, describe, fingerprint, learn, load_state, save_state
    from hope.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    _, names, texts, _, _ = read_text_files(args.data)
    run = load_run(args.run, args.device)
    check_learns(run.model)
    fp = fingerprint(run)
    device = next(run.model.parameters()).device
    learned = load_state(args.state, fp, device) if args.state else None
    if learned is not None:
        print(f"continuing from {args.state}: {describe(learned, run.model)}")
    done = {"state": learned}

    def keep(state):
        done["state"] = state

    try:
        with torch.no_grad():
            learned, stats = learn(run.model, run.tokenizer, list(zip(names, texts)), learned, args.window,
                                   progress=not args.no_progress, on_document=keep)
    except KeyboardInterrupt:
        if done["state"] is not None and done["state"] is not learned:
            save_state(args.state_out, done["state"], fp)
            print(f"interrupted: the state after the last whole document is in {args.state_out}; run the same "
                  f"command with --state {args.state_out} to read the rest", file=sys.stderr)
        raise
    save_state(args.state_out, learned, fp)
    loss = f", loss while reading {stats['loss']:.4f} nats/token" if stats["loss"] is not None else ""
    print(f"read {stats['documents']} documents ({stats['tokens']:,} tokens{loss}); skipped {stats['skipped']} read "
          f"before; wrote {args.state_out}: {describe(learned, run.model)}")
    return 0


def cmd_info(args) -> int:
    from hope.models import count_parameters
    from hope.runs import load_run

    loaded = load_run(args.run)
    run, cfg, model, tokenizer = loaded.path, loaded.cfg, loaded.model, loaded.tokenizer
    params = count_parameters(model)
    print(f"run:         {run}" + (" (transformers folder)" if loaded.kind == "transformers" else ""))
    print(f"arch:        {cfg.arch}")
    print(f"parameters:  {params['total']:,} ({params['non_embedding']:,} non-embedding)")
    print(f"tokenizer:   {tokenizer.kind}, vocabulary {tokenizer.vocab_size}")
    print(f"{'checkpoint:' if loaded.kind == 'run' else 'weights:':<13}{loaded.source}")
    records = []
    if (run / "metrics.jsonl").exists():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last_train = next((r for r in reversed(records) if "loss" in r), None)
    last_val = next((r for r in reversed(records) if "val_loss" in r), None)
    if last_train:
        print(f"last train:  step {last_train['step']}, loss {last_train['loss']:.4f}, "
              f"{last_train['tokens']:,} tokens, {last_train['tokens_per_s']:,.0f} tokens/s")
    if last_val:
        print(f"last val:    step {last_val['step']}, loss {last_val['val_loss']:.4f}, "
              f"ppl {last_val['val_ppl']:.2f}, bpb {last_val['val_bpb']:.4f}")
    print("config:")
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def cmd_export(args) -> int:
    from hope.hf import export_run

    out = export_run(args.run, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}) after `import hope`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hope.recipes import RECIPES

    parser = argparse.ArgumentParser(prog="hope", description="Nested Learning and the Hope architecture.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a language model", description="Train a model from a named recipe.")
    p.add_argument("--recipe", default="tiny", metavar="NAME",
                   help="named recipe (default tiny): " + ", ".join(RECIPES))
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config fields, e.g. --set model.d_model=256 train.steps=500")
    p.add_argument("--data", default=None, help="a UTF-8 text file or folder (default: the embedded Shakespeare)")
    p.add_argument("--out", default=None, help="run folder (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stack", help="turn a pretrained Llama model into a Hope-Attention continual learner",
                       description="Level stacking (paper section 7.3): copy a pretrained Llama-architecture model's "
                                   "attention, norms and embeddings into a hope_attention run folder and split each "
                                   "layer's MLP into CMS levels of the given periods (hope/stack.py). Needs transformers "
                                   "(and gguf for GGUF files).")
    p.add_argument("--gguf", default=None, help="a .gguf file, or smollm2 (hope data get smollm2)")
    p.add_argument("--hf", default=None, help="a local transformers folder (config.json, safetensors, tokenizer)")
    p.add_argument("--periods", default="none,512,64",
                   help="CMS period of each level, slowest first; none = static (default none,512,64); the number "
                        "of levels must divide the MLP width")
    p.add_argument("--cms-lr", type=float, default=0.1, help="CMS fast-weight learning rate (default 0.1)")
    p.add_argument("--cms-decay", type=float, default=0.0, help="CMS retention towards the meta-learned weights")
    p.add_argument("--max-seq-len", type=int, default=2048, help="longest context (default 2048)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="train.* / data.* fields of the run's config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("generate", help="sample text from a trained run", description="Sample text from a run.")
    p.add_argument("--run", required=True, help="run folder or transformers folder (hope export)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k filter")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-learn", action="store_true",
                   help="freeze the Continuum Memory System while reading the prompt (CMS models)")
    p.add_argument("--state", default=None, help="a learned-state file (hope learn) to start from")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("learn", help="let a run's CMS learn from documents and keep what it learned",
                       description="Read a file or folder of text with the Continuum Memory System learning "
                                   "(no outer optimizer) and save the learned state (hope/learn.py). --state "
                                   "continues from an earlier state; documents it has read are skipped.")
    p.add_argument("--run", required=True, help="run folder or transformers folder of a CMS model")
    p.add_argument("--data", required=True, help="a UTF-8 text file or folder (every text file under it)")
    p.add_argument("--state", default=None, help="learned-state file to continue from")
    p.add_argument("--state-out", required=True, help="where to write the learned state (may equal --state)")
    p.add_argument("--window", type=int, default=512, help="tokens read at a time (default 512)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("info", help="describe a run folder", description="Config, parameter count, last metrics.")
    p.add_argument("run", help="run folder or transformers folder (hope export)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a run as a Hugging Face transformers folder",
                       description="Write the latest weights, config and tokenizer of a run as a transformers "
                                   "folder (safetensors; AutoModelForCausalLM after `import hope`). Needs transformers.")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=cmd_export)
    from hope.eval.cli import register
    register(sub)
    from hope.bench.cli import register as register_bench
    register_bench(sub)
    from hope.continual.cli import register as register_continual
    register_continual(sub)
    return parser


def _parse_deferring_ctrl_c(argv):
    """Build the parser (it imports torch: a second or more) with Ctrl-C held until the imports finish.

    A KeyboardInterrupt raised inside torch's own import can leave a C++ thread that aborts the
    interpreter at exit (status -6, "terminate called without an active exception"); a Ctrl-C
    held until after the import is the same interrupt without that risk."""
    import signal
    import threading

    if not hasattr(signal, "SIGINT") or threading.current_thread() is not threading.main_thread():
        return build_parser().parse_args(argv)
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        parser = build_parser()
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse_deferring_ctrl_c(argv)
        return args.func(args)
    except HopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
