"""What launchers leave on disk besides the cells: failure records and the launch record.

    cells/<key>/FAILED      JSON: the error (one line), attempt, host, pid, job, log file
    cells/<key>/error.log   the full traceback of the last failure
    launch.json             the cells the latest run planned (with their fingerprints) and,
                            for Slurm, the job and log file of each submitted cell

A cell that completes removes its FAILED and error.log. `anbench status` reads these files
without loading a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anbench.files import atomic_write_json, atomic_write_text
from anbench.registry import AnbenchError
from anbench.store import CellKey, SuiteStore

FAILED = "FAILED"
ERROR_LOG = "error.log"
LAUNCH = "launch.json"
LAUNCH_VERSION = 1


def record_failure(store: SuiteStore, key: CellKey, error: str, *, traceback: str | None = None,
                   attempt: int = 1, log: str | None = None, **extra: Any) -> None:
    """Best effort: a full disk must not hide the original error behind a second one."""
    directory = store.cell_dir(key)
    with contextlib.suppress(OSError):
        if traceback is not None:
            atomic_write_text(directory / ERROR_LOG, traceback)
        logs = [str(directory / ERROR_LOG)] if traceback is not None else []
        if log:
            logs.append(log)
        atomic_write_json(directory / FAILED, {
            "error": error, "attempt": attempt, "host": socket.gethostname(),
            "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "logs": logs, **extra})


def read_failure(store: SuiteStore, key: CellKey) -> dict[str, Any] | None:
    return _read_json(store.cell_dir(key) / FAILED)


def clear_failure(store: SuiteStore, key: CellKey) -> None:
    for name in (FAILED, ERROR_LOG):
        with contextlib.suppress(FileNotFoundError):
            (store.cell_dir(key) / name).unlink()


def read_running(store: SuiteStore, key: CellKey) -> dict[str, Any] | None:
    from anbench.store import RUNNING

    return _read_json(store.cell_dir(key) / RUNNING)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        return {"error": f"{path.name} is unreadable"}
    return data if isinstance(data, dict) else {"error": f"{path.name} is unreadable"}


# ---------------------------------------------------------------------- launch.json
def write_launch(store: SuiteStore, launcher: str, planned: dict[CellKey, str],
                 jobs: dict[CellKey, dict[str, Any]] | None = None) -> None:
    """Record the planned cells and their fingerprints; `jobs` adds or replaces the Slurm job
    of each cell it names (the jobs of other planned cells are kept while the launcher is
    slurm: a later run collects them)."""
    with store.suite_lock():
        previous = read_launch(store, missing_ok=True, damaged_ok=True)
        old_jobs = previous.get("jobs", {}) if previous and launcher == "slurm" else {}
        keep = {rel: job for rel, job in old_jobs.items()
                if rel in {key.relpath for key in planned}}
        keep.update({key.relpath: job for key, job in (jobs or {}).items()})
        atomic_write_json(store.root / LAUNCH, {
            "version": LAUNCH_VERSION, "launcher": launcher,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cells": [{"key": asdict(key), "fingerprint": fp} for key, fp in planned.items()],
            "jobs": keep})


def read_launch(store: SuiteStore, missing_ok: bool = False,
                damaged_ok: bool = False) -> dict[str, Any] | None:
    path = store.root / LAUNCH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cells = [(CellKey(**cell["key"]), str(cell["fingerprint"])) for cell in data["cells"]]
        jobs = data.get("jobs", {})
        if not isinstance(jobs, dict):
            raise ValueError
    except FileNotFoundError:
        if missing_ok:
            return None
        raise AnbenchError(f"no run recorded in {store.root}: run `anbench run` first") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        if damaged_ok:
            return None
        raise AnbenchError(f"{path} is unreadable or damaged; re-run `anbench run` to "
                           "rewrite it") from None
    return {"launcher": data.get("launcher", "?"), "cells": cells, "jobs": jobs}
