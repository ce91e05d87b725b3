"""The results store of one suite: `OUT/SUITE/`.

    config.yaml        the resolved config of the latest run that trained a cell
    manifest.json      package versions, git commit, backbone and weights hash, device
    results.csv        one long table, rebuilt from the complete, current cells (never appended)
    cells/<key>/       rows.csv, arrays.npz (logits, labels, text features), prompts.pt,
                       meta.json, and COMPLETE, written last
    locks/             one lock per cell (two runs of one suite never run the same cell) and
                       one for the suite-level files: exclusive lock files with a heartbeat
                       (anbench.locks), which also hold on network file systems

COMPLETE lists every file of the cell with its size and SHA-256: a cell counts as complete only
when all of them are present and intact, so a truncated, deleted or edited file makes the cell
damaged (reported and redone), never merged. Every file is written atomically, so a killed run
leaves either nothing or a whole file, plus at most a temporary file that the next run that
holds the same lock removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from anbench.files import (
    atomic_save_npz,
    atomic_save_torch,
    atomic_write_json,
    atomic_write_text,
)
from anbench.hashing import file_digest, json_digest
from anbench.locks import LockFile
from anbench.results_schema import RESULT_COLUMNS, RESULT_DTYPES, with_modality

MARKER = "COMPLETE"
MARKER_VERSION = 2
RUNNING = "RUNNING"  # written when a run starts a cell; the COMPLETE marker replaces it
TEMP_SUFFIX = ".tmp"  # anbench.files writes `.<name>.<random>.tmp` next to the target


@dataclass(frozen=True)
class CellKey:
    """One trained model: a method on a dataset and seed, under one training noise."""

    backbone: str
    dataset: str
    method: str
    train_noise: str
    shots: int
    seed: int

    @property
    def relpath(self) -> str:
        return (f"{self.backbone}/{self.dataset}/{self.method}/{self.train_noise}/"
                f"shots{self.shots}-seed{self.seed}")

    def label(self) -> str:
        noise = "" if self.train_noise == "none" else f" [{self.train_noise}]"
        return f"{self.method}{noise} on {self.dataset} (seed {self.seed})"


def fingerprint(data: Any) -> str:
    return json_digest(data, 16)


@dataclass(frozen=True)
class StoredCell:
    """A cell folder that holds a COMPLETE marker, and whether its files are intact."""

    key: CellKey | None
    directory: Path
    fingerprint: str | None
    weights_hash: str | None
    problem: str | None  # None: every listed file is present and intact

    @property
    def intact(self) -> bool:
        return self.problem is None and self.key is not None


class Claim:
    """A held (truthy) or refused (falsy) claim on a cell. `lost` turns true if another run
    took the lock over while this one stalled: its result must then not be stored."""

    def __init__(self, lock: LockFile | None):
        self.lock = lock

    def __bool__(self) -> bool:
        return self.lock is not None

    @property
    def lost(self) -> bool:
        return self.lock is not None and (self.lock.lost or not self.lock.held)


class SuiteStore:
    def __init__(self, root: Path, lock_timeout_s: float = 300.0, heartbeat_s: float = 30.0):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.locks_dir = self.root / "locks"
        self.lock_timeout_s = lock_timeout_s
        self.heartbeat_s = heartbeat_s
        self._verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256

    @property
    def results_path(self) -> Path:
        return self.root / "results.csv"

    def cell_dir(self, key: CellKey) -> Path:
        return self.cells_dir / key.relpath

    # ------------------------------------------------------------------ reading and checking
    def _digest(self, path: Path) -> str:
        stat = path.stat()
        token = (str(path), stat.st_size, stat.st_mtime_ns)
        if token not in self._verified:
            self._verified[token] = file_digest(path, length=64)
        return self._verified[token]

    def inspect_dir(self, directory: Path) -> StoredCell | None:
        """The state of one cell folder; None when it has no marker (never finished)."""
        marker_path = directory / MARKER
        if not marker_path.is_file():
            return None
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
            key = CellKey(**marker["key"])
            files = marker["files"]
            if not isinstance(files, dict) or not files:
                raise ValueError
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
            return StoredCell(None, directory, None, None,
                              "COMPLETE marker is unreadable or was written by an older "
                              "anbench")
        problem = None
        for name, expected in sorted(files.items()):
            path = directory / name
            if not path.is_file():
                problem = f"{name} is missing"
            elif path.stat().st_size != expected.get("size"):
                problem = (f"{name} has {path.stat().st_size} bytes, expected "
                           f"{expected.get('size')}")
            elif self._digest(path) != expected.get("sha256"):
                problem = f"{name} does not match its recorded SHA-256"
            if problem:
                break
        return StoredCell(key, directory, marker.get("fingerprint"),
                          marker.get("weights_hash"), problem)

    def inspect(self, key: CellKey) -> StoredCell | None:
        return self.inspect_dir(self.cell_dir(key))

    def completed_fingerprint(self, key: CellKey) -> str | None:
        """The fingerprint of the cell if it is complete and intact, else None."""
        cell = self.inspect(key)
        return cell.fingerprint if cell is not None and cell.intact else None

    def is_complete(self, key: CellKey, cell_fingerprint: str) -> bool:
        return self.completed_fingerprint(key) == cell_fingerprint

    def stored_cells(self) -> list[StoredCell]:
        """Every cell folder with a marker, intact or damaged, in a stable order."""
        cells = []
        for marker in sorted(self.cells_dir.rglob(MARKER)):
            cell = self.inspect_dir(marker.parent)
            if cell is not None:
                cells.append(cell)
        return cells

    # ------------------------------------------------------------------ locks
    def lock(self, relpath: str) -> LockFile:
        """The lock of a cell folder, named by its path under cells/."""
        return LockFile(self.locks_dir / (relpath.replace("/", "__") + ".lock"),
                        timeout_s=self.lock_timeout_s, heartbeat_s=self.heartbeat_s)

    @contextlib.contextmanager
    def claim(self, key: CellKey) -> Iterator[Claim]:
        """Hold the cell's lock while running it; yields a falsy claim if another run holds
        it. The holder removes temporary files that a killed writer left in the cell folder."""
        lock = self.lock(key.relpath)
        if not lock.try_acquire():
            yield Claim(None)
            return
        try:
            remove_temp_files(self.cell_dir(key))
            yield Claim(lock)
        finally:
            lock.release()

    def mark_running(self, key: CellKey, **extra: Any) -> Path:
        """Say which process is computing the cell (for people and tools watching a run);
        `extra` adds e.g. the Slurm job and its log file."""
        path = self.cell_dir(key) / RUNNING
        atomic_write_json(path, {"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
        return path

    # ------------------------------------------------------------------ writing

    def write_cell(self, key: CellKey, cell_fingerprint: str, rows: pd.DataFrame,
                   arrays: dict[str, Any], prompts: dict[str, Any] | None,
                   meta: dict[str, Any], weights_hash: str | None = None) -> None:
        directory = self.cell_dir(key)
        (directory / MARKER).unlink(missing_ok=True)  # a half-rewritten cell is incomplete
        for stale in ("prompts.pt",):  # a file the new result may not rewrite
            (directory / stale).unlink(missing_ok=True)
        if "modality" not in rows.columns:  # rows made before the column existed: inferred
            rows = with_modality(rows)
        atomic_write_text(directory / "rows.csv", rows[RESULT_COLUMNS].to_csv(index=False))
        atomic_save_npz(directory / "arrays.npz", arrays)
        names = ["rows.csv", "arrays.npz", "meta.json"]
        if prompts is not None:
            atomic_save_torch(directory / "prompts.pt", prompts)
            names.append("prompts.pt")
        atomic_write_json(directory / "meta.json", {"key": asdict(key), **meta})
        files = {name: {"size": (directory / name).stat().st_size,
                        "sha256": file_digest(directory / name, length=64)} for name in names}
        atomic_write_json(directory / MARKER, {
            "version": MARKER_VERSION, "key": asdict(key), "fingerprint": cell_fingerprint,
            "weights_hash": weights_hash, "files": files})
        (directory / RUNNING).unlink(missing_ok=True)

    def read_rows(self, cell: StoredCell) -> pd.DataFrame:
        frame = pd.read_csv(cell.directory / "rows.csv", keep_default_na=False, na_values=[""],
                            dtype=RESULT_DTYPES)
        if "modality" not in frame.columns:  # a cell stored before the column: inferred
            frame = with_modality(frame)
        if list(frame.columns) != RESULT_COLUMNS:
            raise ValueError("unexpected columns")
        return frame

    def collect(self, keep: Callable[[StoredCell], bool] | None = None) -> pd.DataFrame:
        """The rows of every intact cell that `keep` accepts (all intact cells by default)."""
        frames = []
        for cell in self.stored_cells():
            if not cell.intact or (keep is not None and not keep(cell)):
                continue
            try:
                frames.append(self.read_rows(cell))
            except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
                continue  # unreadable despite matching hashes: treated as not complete
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in RESULT_DTYPES.items()})
        return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]

    @contextlib.contextmanager
    def suite_lock(self) -> Iterator[None]:
        """Serialises writers of the suite-level files; the holder clears their temp files."""
        with LockFile(self.locks_dir / "results.lock", timeout_s=self.lock_timeout_s,
                      heartbeat_s=self.heartbeat_s):
            remove_temp_files(self.root)
            yield

    def write_results(self, keep: Callable[[StoredCell], bool] | None = None) -> Path:
        """Rebuild results.csv from the intact cells `keep` accepts (atomically, and only
        when its content changes, so a finished suite on read-only storage still reports)."""
        text = self.collect(keep).to_csv(index=False)
        if self._unchanged(self.results_path, text):
            return self.results_path
        with self.suite_lock():
            atomic_write_text(self.results_path, text)
        return self.results_path

    @staticmethod
    def _unchanged(path: Path, text: str) -> bool:
        try:
            return path.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            return False

    def result_keys(self) -> set[CellKey]:
        """The cells that results.csv holds (empty when there is no readable results.csv)."""
        try:
            frame = pd.read_csv(self.results_path, keep_default_na=False, dtype=RESULT_DTYPES,
                                usecols=["dataset", "backbone", "method", "train_noise",
                                         "shots", "seed"])
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError):
            return set()
        return {CellKey(r.backbone, r.dataset, r.method, r.train_noise, int(r.shots),
                        int(r.seed)) for r in frame.drop_duplicates().itertuples()}

    def stale_cells(self) -> list[StoredCell]:
        """Intact cells that results.csv leaves out: computed under other settings."""
        current = self.result_keys()
        return [c for c in self.stored_cells() if c.intact and c.key not in current]

    def prune(self) -> list[Path]:
        """Delete stale, damaged and unfinished cell folders (not those another run holds)."""
        if not self.results_path.is_file():
            return []
        current = self.result_keys()
        removed = []
        for directory in sorted({p.parent for p in self.cells_dir.rglob("*") if p.is_file()}):
            cell = self.inspect_dir(directory)
            if cell is not None and cell.intact and cell.key in current:
                continue
            key = cell.key if cell is not None and cell.key is not None else None
            if key is not None:
                with self.claim(key) as mine:
                    if mine:
                        shutil.rmtree(directory)
                        removed.append(directory)
                continue
            if not _is_running(self, directory):
                shutil.rmtree(directory)
                removed.append(directory)
        return removed


def _is_running(store: SuiteStore, directory: Path) -> bool:
    """Whether another run holds the lock of an unfinished cell folder (named by its path)."""
    relpath = directory.relative_to(store.cells_dir).as_posix()
    return store.lock(relpath).holder() is not None


def remove_temp_files(directory: Path) -> None:
    """Remove `.<name>.*.tmp` files that a writer killed between write and rename left."""
    if not directory.is_dir():
        return
    for path in directory.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
