"""Where `hope` keeps derived files: `$HOPE_CACHE`, else `$XDG_CACHE_HOME/hope`, else `~/.cache/hope`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("HOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hope")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
