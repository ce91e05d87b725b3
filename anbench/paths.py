"""Where anbench keeps what it builds: `$ANBENCH_CACHE`, else `~/.cache/anbench`.

Nothing is ever written into a dataset folder; few-shot splits, backbones and other derived
files live under this cache, each keyed by what produced it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: `$ANBENCH_CACHE` if set and non-empty, else `~/.cache/anbench`."""
    value = os.environ.get("ANBENCH_CACHE", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "anbench"


def data_root_default() -> Path | None:
    """The default data root for the CoOp datasets: `$ANBENCH_DATA` if set, else None."""
    value = os.environ.get("ANBENCH_DATA", "").strip()
    return Path(value).expanduser() if value else None
