"""Any `hope` model (or a wrapped Hugging Face causal LM, `hope.eval.hf`) as an EleutherAI harness
model: `loglikelihood`, `loglikelihood_rolling` and `generate_until`.

`Scorer` holds the logic and needs no `lm_eval` (the tests use it directly); `make_lm(scorer)`
returns the `lm_eval.api.model.LM` subclass instance the harness calls.

Conventions (those of lm-eval's own `HFLM`):
* every context starts after the tokenizer's end-of-document token, as every document did in
  training (`[eos] + encode(context)`);
* a context's trailing spaces move to the continuation, and the continuation's tokens are those of
  `encode(context + continuation)` after the context's (so BPE merges across the seam are the ones
  the model saw in training);
* inputs longer than a model's `max_seq_len` lose their oldest tokens; recurrent models read
  inputs longer than `chunk` tokens in pieces with their state carried (they see everything).

`loglikelihood` is batched: requests sorted by length, right-padded (causal models ignore what
follows), one forward per batch. With `learn=True`, models that have `read` learn from the context
while reading it (CMS, SPEC 4.3), one request at a time. `generate_until` is greedy, one request at a
time with the state carried token by token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hope.eval.scoring import carried_nll, sliding_nll


class Scorer:
    """Log-likelihoods and greedy generation of a model of the `hope` protocol.

    Args:
        model: `logits, state = model(tokens [B, T], state)`; optional `max_seq_len`, `read`.
        tokenizer: `encode`, `decode`, `eos_id` (the token every context starts after).
        batch_size: requests per forward in `loglikelihood`.
        learn: read contexts with `model.read(..., learn=True)` (models that have it).
        chunk: longest piece a recurrent model reads at once.
        eos_prefix: start every context with `eos_id` (False: only empty contexts, as lm-eval's HFLM
            does for models without a BOS token; used to compare with HFLM).
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, learn: bool = False, chunk: int = 2048,
                 eos_prefix: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.learn = learn and hasattr(model, "read")
        self.chunk = chunk
        self.eos_prefix = eos_prefix
        self.nonfinite = 0  # requests whose log-likelihood came out NaN or infinite (a broken model)
        self.max_length = getattr(model, "max_seq_len", None)
        self.device = next(model.parameters()).device

    # ---------------------------------------------------------------- tokens

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n = len(context) - len(context.rstrip())
        if n:
            continuation, context = context[-n:] + continuation, context[:-n]
        ctx = self.tokenizer.encode(context) if context else []
        whole = self.tokenizer.encode(context + continuation)
        if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
            cont = whole[len(ctx):]
        else:
            cont = self.tokenizer.encode(continuation)
        return ([self.tokenizer.eos_id] if self.eos_prefix or not ctx else []) + ctx, cont

    # ---------------------------------------------------------------- loglikelihood

    def loglikelihood(self, pairs: list[tuple[str, str]], progress: bool = False) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding would produce it."""
        encoded = [self.encode_pair(c, x) for c, x in pairs]
        return self.loglikelihood_tokens(encoded, progress)

    def loglikelihood_tokens(self, encoded: list[tuple[list[int], list[int]]],
                             progress: bool = False) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        results: list[tuple[float, bool] | None] = [None] * len(encoded)
        inputs = []
        for i, (ctx, cont) in enumerate(encoded):
            toks = ctx + cont
            if self.max_length is not None and len(toks) - 1 > self.max_length:
                toks = toks[-(self.max_length + 1):]
            inputs.append((i, toks, len(cont)))
        is_long = [self.max_length is None and len(toks) - 1 > self.chunk for _, toks, _ in inputs]
        long = [r for r, flag in zip(inputs, is_long) if flag]
        short = sorted((r for r, flag in zip(inputs, is_long) if not flag), key=lambda r: -len(r[1]))
        bar = tqdm(total=len(inputs), disable=not progress, desc="loglikelihood", dynamic_ncols=True)
        if self.learn:
            long, short = long + short, []
        for i, toks, n in long:
            results[i] = self._score_carried(toks, n)
            bar.update(1)
        for a in range(0, len(short), self.batch_size):
            group = short[a:a + self.batch_size]
            width = len(group[0][1]) - 1
            x = torch.full((len(group), width), self.tokenizer.eos_id, dtype=torch.long)
            for row, (_, toks, _) in enumerate(group):
                x[row, :len(toks) - 1] = torch.tensor(toks[:-1])
            with torch.no_grad():
                logits, _ = self.model(x.to(self.device))
            for row, (i, toks, n) in enumerate(group):
                end = len(toks) - 1
                lp = F.log_softmax(logits[row, end - n:end].float(), -1).cpu()  # [n, V]: only the continuation
                target = torch.tensor(toks[-n:])
                results[i] = (float(lp.gather(1, target[:, None]).double().sum()), bool((lp.argmax(-1) == target).all()))
            bar.update(len(group))
        bar.close()
        self.nonfinite += sum(1 for lp, _ in results if not math.isfinite(lp))
        return results

    def _score_carried(self, toks: list[int], n: int) -> tuple[float, bool]:
        """One sequence read in pieces with the state carried (learning in context when `learn`)."""
        x = torch.tensor(toks[:-1], device=self.device)[None]
        state, pieces = None, []
        for a in range(0, x.shape[1], self.chunk):
            piece = x[:, a:a + self.chunk]
            if self.learn:
                logits, state = self.model.read(piece, state, learn=True)
            else:
                with torch.no_grad():
                    logits, state = self.model(piece, state)
            pieces.append(logits[0, :, :].float())
        lp = F.log_softmax(torch.cat(pieces)[-n:], -1).cpu()
        target = torch.tensor(toks[-n:])
        return float(lp.gather(1, target[:, None]).double().sum()), bool((lp.argmax(-1) == target).all())

    # ---------------------------------------------------------------- rolling

    def loglikelihood_rolling(self, texts: list[str], progress: bool = False) -> list[float]:
        """Log-likelihood of each whole text (perplexity tasks): every token after `[eos]`, in windows
        of `max_seq_len` (attention models) or read whole with the state carried (recurrent ones)."""
        from tqdm.auto import tqdm

        out = []
        for text in tqdm(texts, disable=not progress, desc="loglikelihood_rolling", dynamic_ncols=True):
            ids = torch.tensor([self.tokenizer.eos_id] + self.tokenizer.encode(text))
            if ids.numel() < 2:
                out.append(0.0)
                continue
            if self.max_length is not None:
                nll = sliding_nll(self.model, ids, self.max_length, self.max_length, learn=self.learn)
            else:
                nll = carried_nll(self.model, ids, self.chunk, learn=self.learn)
            out.append(-float(nll.sum()))
            self.nonfinite += not math.isfinite(out[-1])
        return out

    # ---------------------------------------------------------------- generation

    def generate_until(self, requests: list[tuple[str, dict]], progress: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        eos_text = self.tokenizer.decode([self.tokenizer.eos_id]) or None
        out = []
        for context, kwargs in tqdm(requests, disable=not progress, desc="generate_until", dynamic_ncols=True):
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = [self.tokenizer.eos_id] + self.tokenizer.encode(context)
            if self.max_length is not None:
                ids = ids[-max(1, self.max_length - max_new):]
            out.append(self._greedy(ids, until, max_new, eos_text))
        return out

    def _greedy(self, ids: list[int], until: list[str], max_new: int, eos_text: str | None) -> str:
        x = torch.tensor(ids, device=self.device)[None]
        if self.learn:
            logits, state = self.model.read(x, None, learn=True)
        else:
            with torch.no_grad():
                logits, state = self.model(x)
        new: list[int] = []
        text = ""
        with torch.no_grad():
            for step in range(max_new):
                nxt = int(logits[0, -1].argmax())
                if nxt == self.tokenizer.eos_id:
                    break
                new.append(nxt)
                text = self.tokenizer.decode(new)
                if any(u and u in text for u in until):
                    break
                if self.max_length is not None and len(ids) + len(new) >= self.max_length:
                    break
                logits, state = self.model(torch.tensor([[nxt]], device=self.device), state)
        for u in until:
            if u and u in text:
                text = text.split(u)[0]
        return text


def make_lm(scorer: Scorer, progress: bool = True):
    """An `lm_eval.api.model.LM` that answers the harness's requests with `scorer`."""
    from lm_eval.api.model import LM

    class HopeLM(LM):
        def __init__(self):
            super().__init__()
            self.scorer = scorer

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self.scorer.loglikelihood([r.args for r in requests], progress=progress and not disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self.scorer.loglikelihood_rolling([r.args[0] for r in requests],
                                                     progress=progress and not disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self.scorer.generate_until([r.args for r in requests], progress=progress and not disable_tqdm)

    return HopeLM()
