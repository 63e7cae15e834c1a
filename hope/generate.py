"""Sampling with a model's state: read the prompt once (learning from it, for CMS models), then one
token at a time.

Works for every model of the protocol (`forward(tokens, state) -> (logits, state)`): for the
Transformer the state is a KV cache, for recurrent models their in-context memories.
"""

from __future__ import annotations

import torch

from hope.errors import HopeError


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, learn: bool = True) -> torch.Tensor:
    """Continue `prompt` by sampling.

    Args:
        model: any `hope` model.
        prompt: [B, T] token ids, T >= 1.
        max_new_tokens: tokens to add.
        temperature: > 0 samples from softmax(logits / temperature); 0 takes the argmax (greedy).
        top_k: keep only the k most likely tokens before sampling (None or 0: all).
        generator: random generator on the model's device, for reproducible samples.
        learn: models with a Continuum Memory System read the prompt with `model.read`, so their CMS
            levels learn from it (SPEC 4.3); False freezes them. Sampled tokens never drive CMS steps
            (the model would learn from its own guesses); in-context memories update on everything.
    Returns:
        [B, T + max_new_tokens] token ids (the prompt included).
    """
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise HopeError("the prompt must hold at least one token")
    if temperature < 0:
        raise HopeError(f"temperature must be >= 0, got {temperature}")
    limit = getattr(model, "max_seq_len", None)
    if limit is not None and prompt.shape[1] + max_new_tokens > limit:
        raise HopeError(f"prompt ({prompt.shape[1]} tokens) plus {max_new_tokens} new tokens exceeds the model's "
                        f"maximum length of {limit} tokens")
    was_training = model.training
    model.eval()
    out = [prompt]
    if hasattr(model, "read"):
        logits, state = model.read(prompt, None, learn=learn)
    else:
        logits, state = model(prompt)
    for i in range(max_new_tokens):
        last = logits[:, -1].float()
        if temperature == 0:
            nxt = last.argmax(-1, keepdim=True)
        else:
            last = last / temperature
            if top_k:
                kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=generator)
        out.append(nxt)
        if i + 1 < max_new_tokens:
            logits, state = model(nxt, state)
    model.train(was_training)
    return torch.cat(out, dim=1)
