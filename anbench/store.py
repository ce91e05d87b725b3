"""The results store of one suite: `OUT/SUITE/`.

    config.yaml        the resolved config of the latest run
    manifest.json      package versions, git commit, backbone and weights hash, device
    results.csv        one long table, rebuilt from the complete cells (never appended to)
    cells/<key>/       rows.csv, arrays.npz (logits, labels, text features), prompts.pt,
                       meta.json, and COMPLETE, written last: a cell without it is redone
    locks/             one lock per cell (two runs of one suite never run the same cell) and
                       one for results.csv

Every file is written atomically, so a killed run leaves either nothing or a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from anbench.files import (
    atomic_save_npz,
    atomic_save_torch,
    atomic_write_json,
    atomic_write_text,
)

RESULT_COLUMNS = ["suite", "dataset", "backbone", "method", "train_noise", "shots", "seed",
                  "split", "eval_noise", "severity", "alpha", "metric", "value"]
MARKER = "COMPLETE"


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
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class SuiteStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.locks_dir = self.root / "locks"

    @property
    def results_path(self) -> Path:
        return self.root / "results.csv"

    def cell_dir(self, key: CellKey) -> Path:
        return self.cells_dir / key.relpath

    def completed_fingerprint(self, key: CellKey) -> str | None:
        marker = self.cell_dir(key) / MARKER
        try:
            return json.loads(marker.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            return None

    def is_complete(self, key: CellKey, cell_fingerprint: str) -> bool:
        return self.completed_fingerprint(key) == cell_fingerprint

    @contextlib.contextmanager
    def claim(self, key: CellKey) -> Iterator[bool]:
        """Hold the cell's lock while running it; yields False if another run holds it."""
        lock_path = self.locks_dir / (key.relpath.replace("/", "__") + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def write_cell(self, key: CellKey, cell_fingerprint: str, rows: pd.DataFrame,
                   arrays: dict[str, Any], prompts: dict[str, Any] | None,
                   meta: dict[str, Any]) -> None:
        directory = self.cell_dir(key)
        (directory / MARKER).unlink(missing_ok=True)  # a half-rewritten cell is incomplete
        atomic_write_text(directory / "rows.csv", rows[RESULT_COLUMNS].to_csv(index=False))
        atomic_save_npz(directory / "arrays.npz", arrays)
        if prompts is not None:
            atomic_save_torch(directory / "prompts.pt", prompts)
        atomic_write_json(directory / "meta.json", {"key": asdict(key), **meta})
        atomic_write_json(directory / MARKER, {"fingerprint": cell_fingerprint})

    def complete_cells(self) -> list[Path]:
        return sorted(marker.parent for marker in self.cells_dir.rglob(MARKER))

    def collect(self) -> pd.DataFrame:
        frames = [pd.read_csv(cell / "rows.csv", keep_default_na=False, na_values=[""])
                  for cell in self.complete_cells()]
        if not frames:
            return pd.DataFrame(columns=RESULT_COLUMNS)
        return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]

    def write_results(self) -> Path:
        """Rebuild results.csv from every complete cell (under a lock, atomically)."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.locks_dir / "results.lock")):
            atomic_write_text(self.results_path, self.collect().to_csv(index=False))
        return self.results_path
