"""The harness adapter against lm-eval's own HFLM on the pretrained reference model (SmolLM2-135M):
the same 16 loglikelihood requests (PIQA, ARC-Easy, LAMBADA) must get the same answers.

    hope data get smollm2 piqa arc_easy lambada && python benchmarks/eval_hflm_check.py

Measured (CPU, torch 2.13, transformers 5.24, lm-eval 0.4.13): max |ours - HFLM| = 6.89e-06 nats,
greedy flags equal. The adapter runs with `eos_prefix=False` here, HFLM's convention for a model
without a BOS token; `hope eval harness` prefixes every context with <|endoftext|> instead.
"""
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from hope.data.registry import dataset_dir, read_split
from hope.eval.hf import load_gguf
from hope.eval.adapter import Scorer

torch.set_num_threads(1)
m, tok = load_gguf(dataset_dir("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
pairs = []
for d in read_split("piqa", "validation")[:3]:
    pairs += [(f"Question: {d['goal']}\nAnswer:", " " + d["sol1"]), (f"Question: {d['goal']}\nAnswer:", " " + d["sol2"])]
for d in read_split("arc_easy", "validation")[:2]:
    pairs += [(f"Question: {d['question']}\nAnswer:", " " + t) for t in d["choices"]["text"]]
for d in read_split("lambada", "test")[:2]:
    c, w = d["text"].rsplit(" ", 1)
    pairs.append((c, " " + w))
ours = Scorer(m, tok, batch_size=4, eos_prefix=False).loglikelihood(pairs)
hf = HFLM(pretrained=m.hf, tokenizer=tok.tok, batch_size=4)
theirs = hf.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
same = all(a[1] == b[1] for a, b in zip(ours, theirs))
print(f"{len(pairs)} requests: max |ours - HFLM| = {diff:.2e} nats, greedy flags equal: {same}")
for (c, x), a, b in list(zip(pairs, ours, theirs))[:4]:
    print(f"  {a[0]:10.4f} {b[0]:10.4f}  {x[:40]!r}")
