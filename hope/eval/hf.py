"""A Hugging Face causal LM behind the `hope` model protocol, so the evaluation code (`Scorer`, the
harness adapter) runs on real pretrained models too: `forward(tokens, state) -> (logits, state)` with
the KV cache as the state, and `max_seq_len` from the model's config.

`load_gguf(path)` loads a GGUF file (e.g. SmolLM2-135M of `hope data get smollm2`) through
transformers (needs `transformers`, `gguf` and `accelerate`: extra `eval`), dequantized to float32.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hope.errors import HopeError


class HFCausalLM(nn.Module):
    def __init__(self, hf_model, max_seq_len: int | None = None):
        super().__init__()
        self.hf = hf_model
        self.max_seq_len = max_seq_len or getattr(hf_model.config, "max_position_embeddings", None)

    def forward(self, tokens: torch.Tensor, state=None):
        # transformers 5 names the KV cache `cache`; earlier versions `past_key_values`
        key = "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"
        out = self.hf(input_ids=tokens, use_cache=True, **{key: state})
        return out.logits.float(), getattr(out, key)


class HFTokenizer:
    """`encode` / `decode` / `eos_id` / `token_bytes` over a transformers tokenizer. `eos_id` is the
    token every context starts after: `<|endoftext|>` when the vocabulary has it, else BOS or EOS."""

    kind = "hf"

    def __init__(self, tok):
        self.tok = tok
        vocab = tok.get_vocab()
        eos = vocab.get("<|endoftext|>")
        if eos is None:
            eos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if eos is None:
            raise HopeError("the tokenizer has no end-of-text, BOS or EOS token")
        self.eos_id = int(eos)
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            out[i] = max(1, len(self.tok.decode([i]).encode("utf-8")))
        return out


def load_gguf(path: str | Path, threads: int | None = None):
    """(model, tokenizer) of a GGUF file, dequantized to float32 on the CPU (about 40 s for 135M)."""
    path = Path(path)
    if not path.is_file():
        raise HopeError(f"no GGUF file at {path}")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise HopeError("loading a GGUF model needs transformers and gguf: pip install 'hope-nl[eval]'") from None
    if threads:
        torch.set_num_threads(threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise HopeError(f"loading {path.name} needs {e.name or 'gguf'}: pip install 'hope-nl[eval]'") from None
    except ValueError as e:  # transformers asks for accelerate / gguf with a ValueError
        raise HopeError(f"cannot load {path.name}: {str(e).splitlines()[0]}") from None
    return HFCausalLM(model.eval()), HFTokenizer(tok)
