"""Text corpora as lists of documents, split into train and validation by document.

The default corpus is Shakespeare, embedded in the package (`hope/data/corpus/`, see SOURCE.md
there). `--data PATH` takes any UTF-8 text file or folder of `.txt`/`.md`/... files. Splits are
deterministic: documents sorted by name, every k-th one held out (k = round(1 / val_fraction)); a
corpus with a single document is split by text, its last `val_fraction` going to validation.
Registered corpora (`hope data get wiki`) come with their own splits from `hope.data.registry`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hope.data.registry import get_entry, read_manifest, read_split, resolve_name
from hope.errors import HopeError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".tex", ".py", ".json", ".jsonl", ".csv", ".html", "")


@dataclass
class Corpus:
    """Documents of one corpus, split. `digest` identifies the content (cache key)."""

    name: str
    train: list[str]
    val: list[str]
    digest: str
    skipped: dict[str, int] = field(default_factory=dict)  # files of a folder not read: extension -> count


def _split(names: list[str], texts: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    if len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - val_fraction))
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > 0 else cut
        if cut <= 0 or cut >= len(text):
            raise HopeError("the corpus is too short to split into train and validation")
        return [text[:cut]], [text[cut:]]
    every = max(2, round(1 / val_fraction))
    order = sorted(range(len(names)), key=lambda i: names[i])
    val_idx = {order[i] for i in range(every // 2, len(order), every)} or {order[-1]}
    train = [texts[i] for i in order if i not in val_idx]
    val = [texts[i] for i in order if i in val_idx]
    return train, val


def load_shakespeare(val_fraction: float = 0.1) -> Corpus:
    """The embedded Shakespeare corpus (42 works), split by work."""
    raw = resources.files("hope.data").joinpath("corpus/shakespeare.jsonl.xz").read_bytes()
    records = [json.loads(line) for line in lzma.decompress(raw).decode("utf-8").splitlines() if line.strip()]
    names = [r["title"] for r in records]
    texts = [r["text"] for r in records]
    train, val = _split(names, texts, val_fraction)
    digest = hashlib.sha256(raw + f"|{val_fraction}".encode()).hexdigest()[:16]
    return Corpus("shakespeare", train, val, digest)


def read_text_files(path: str | os.PathLike):
    """The non-empty UTF-8 text files of a file or a folder (recursively, hidden files skipped, sorted):
    (path, relative names, texts, skipped extensions -> count, a running SHA-256 of names and bytes)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise HopeError(f"data path {p} does not exist")
    skipped: dict[str, int] = {}
    if p.is_dir():
        visible = [f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)]
        files = sorted(f for f in visible if f.suffix.lower() in TEXT_SUFFIXES)
        for f in visible:
            if f.suffix.lower() not in TEXT_SUFFIXES:
                skipped[f.suffix.lower()] = skipped.get(f.suffix.lower(), 0) + 1
        if not files:
            raise HopeError(f"data folder {p} holds no text files ({', '.join(s for s in TEXT_SUFFIXES if s)})")
    else:
        files = [p]
    names, texts = [], []
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HopeError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if "\x00" in text:
            raise HopeError(f"{f} looks binary (contains NUL bytes), not text")
        if not text.strip():
            continue
        rel = str(f.relative_to(p)) if p.is_dir() else f.name
        names.append(rel)
        texts.append(text)
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    if not texts:
        raise HopeError(f"data path {p} holds no text (all files are empty)")
    return p, names, texts, skipped, h


def load_path(path: str | os.PathLike, val_fraction: float = 0.1) -> Corpus:
    """A UTF-8 text file, or every text file under a folder (recursively), split by file."""
    p, names, texts, skipped, h = read_text_files(path)
    if sum(len(t) for t in texts) < 1000:
        raise HopeError(f"data path {p} holds only {sum(len(t) for t in texts)} characters; need at least 1000")
    train, val = _split(names, texts, val_fraction)
    h.update(f"|{val_fraction}".encode())
    return Corpus(p.name, train, val, h.hexdigest()[:16], skipped)


def corpus_documents(name: str, split: str) -> list[str]:
    """The document texts of one split of a registered corpus (Shakespeare's test is its validation)."""
    entry = get_entry(name)
    if entry.kind != "corpus":
        raise HopeError(f"{entry.name!r} is a benchmark, not a text corpus")
    if entry.source is None:
        c = load_shakespeare()
        return c.train if split == "train" else c.val
    return [r["text"] for r in read_split(entry.name, split)]


def load_registered_corpus(name: str, val_fraction: float = 0.1) -> Corpus:
    """A registered corpus as a training `Corpus` (train and validation splits; the test split is
    kept out of training). `val_fraction` is ignored: the registry's split is fixed."""
    entry = get_entry(name)
    if entry.source is None or entry.kind != "corpus":
        raise HopeError(f"{entry.name!r} is not a downloadable text corpus")
    manifest = read_manifest(entry.name)
    if manifest is None:
        raise HopeError(f"corpus {entry.name!r} is not prepared; run: hope data get {entry.name}")
    train = corpus_documents(entry.name, "train")
    val = corpus_documents(entry.name, "validation")
    digest = hashlib.sha256((manifest["files"]["train.jsonl"]["sha256"] +
                             manifest["files"]["validation.jsonl"]["sha256"]).encode()).hexdigest()[:16]
    return Corpus(entry.name, train, val, digest)


def load_corpus(spec: str, val_fraction: float = 0.1) -> Corpus:
    """`spec` is "shakespeare", a name of `hope.data.registry` (`hope data get NAME`), or a path."""
    if spec == "shakespeare":
        return load_shakespeare(val_fraction)
    # registered corpora (wiki, pg, bible, pydocs) take precedence over a path of the same name
    if resolve_name(spec) is not None and get_entry(spec).kind == "corpus":
        return load_registered_corpus(spec, val_fraction)
    return load_path(spec, val_fraction)
