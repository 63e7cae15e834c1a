"""Class-incremental text classification tasks, built offline from labelled text.

Sources (`load_source`):
* `fortunes`: Debian's fortune cookies, one item per fortune, labelled by category
  (`hope data get fortunes`);
* `kerneldoc`: paragraphs of the Linux kernel documentation, labelled by subsystem (`networking`,
  `filesystems`, `scsi`, ...; `hope data get kerneldoc`), held out by whole document;
* a folder of your own: one entry per class, named by the class; a file holds items separated by
  lines of `%` (the fortune format; a file without them is one item), a sub-folder holds one item per
  file. Its items are split by a hash of the text (10% held out).

`build_tasks` picks `n_tasks * classes_per_task` classes (those with enough training and held-out
items, in a seeded order), groups them into tasks of disjoint classes, and takes a seeded sample of
training and test items per class. Held-out items come from the source's test split and never
occur as training text (texts that do are dropped from the test side). Everything is a function of
the items and the seed: the same call gives the same tasks.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from hope.data.registry import REGISTRY, read_split, resolve_name
from hope.errors import HopeError

SOURCES = tuple(n for n, e in REGISTRY.items() if e.kind == "labelled")


@dataclass(frozen=True)
class Item:
    label: str
    text: str
    split: str  # train | test


@dataclass(frozen=True)
class Task:
    classes: tuple[str, ...]
    train: tuple[Item, ...]
    test: tuple[Item, ...]


def label_name(label: str) -> str:
    """The words the model is scored on for a class: `men-women` -> `men women`."""
    return re.sub(r"[-_]+", " ", label).strip()


def _hash_split(text: str, test_pct: int = 10) -> str:
    return "test" if int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100 < test_pct else "train"


def load_folder(path: Path) -> list[Item]:
    """Items of a labelled folder of your own (see the module docstring)."""
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    items = []
    for entry in entries:
        files = sorted(f for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else [entry]
        label = entry.stem if entry.is_file() else entry.name
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            parts = re.split(r"(?m)^%\s*$", text) if entry.is_file() else [text]
            items += [Item(label, p.strip("\n"), _hash_split(p.strip("\n"))) for p in parts if p.strip()]
    if not items:
        raise HopeError(f"labelled folder {path} holds no text")
    return items


def load_source(name: str) -> list[Item]:
    """The items of a registered labelled source (train and test splits) or of a labelled folder."""
    registered = resolve_name(name)
    if registered is not None and REGISTRY[registered].kind == "labelled":
        return [Item(r["label"], r["text"], split) for split in ("train", "test") for r in read_split(registered, split)]
    p = Path(name).expanduser()
    if registered is None and p.is_dir():
        return load_folder(p)
    raise HopeError(f"unknown source {name!r}; available: {', '.join(SOURCES)}, or a folder with one entry per class")


def build_tasks(items: list[Item], n_tasks: int, classes_per_task: int, train_per_class: int, test_per_class: int,
                seed: int = 0) -> list[Task]:
    """`n_tasks` tasks of `classes_per_task` disjoint classes each (see the module docstring).

    Classes qualify with at least `train_per_class` training items and `test_per_class` held-out items
    (after dropping held-out texts that also occur in training). Raises a HopeError when fewer than
    `n_tasks * classes_per_task` classes qualify.
    """
    if n_tasks < 1 or classes_per_task < 1 or train_per_class < 1 or test_per_class < 1:
        raise HopeError("tasks, classes per task and items per class must all be >= 1")
    train_texts = {it.text for it in items if it.split == "train"}
    by_class: dict[str, dict[str, list[str]]] = {}
    for it in items:
        if it.split == "test" and it.text in train_texts:
            continue  # never score a text the model was trained on
        by_class.setdefault(it.label, {"train": [], "test": []})[it.split].append(it.text)
    ok = sorted(c for c, s in by_class.items() if len(set(s["train"])) >= train_per_class and len(set(s["test"])) >= test_per_class)
    need = n_tasks * classes_per_task
    if len(ok) < need:
        raise HopeError(f"only {len(ok)} classes have {train_per_class} training and {test_per_class} held-out items; "
                        f"{n_tasks} tasks of {classes_per_task} classes need {need} (fewer tasks or items per class)")
    rng = random.Random(seed)
    rng.shuffle(ok)
    tasks = []
    for t in range(n_tasks):
        classes = tuple(ok[t * classes_per_task:(t + 1) * classes_per_task])
        train, test = [], []
        for c in classes:
            for split, n, out in (("train", train_per_class, train), ("test", test_per_class, test)):
                texts = sorted(set(by_class[c][split]))
                random.Random(f"{seed}/{c}/{split}").shuffle(texts)
                out += [Item(c, x, split) for x in texts[:n]]
        tasks.append(Task(classes, tuple(train), tuple(test)))
    return tasks
