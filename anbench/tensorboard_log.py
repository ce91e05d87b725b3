"""`run.tensorboard: true`: each cell's loss terms and learning rate as TensorBoard scalars.

The event files sit directly in the cell folder (`cells/<key>/events.out.tfevents.*`), so
`tensorboard --logdir runs/<suite>/cells` shows one run per cell, named by its key path. They are
a log, not a result: the cell's COMPLETE marker does not list them, so a missing or damaged
event file never makes a cell damaged. A cell that is (re)computed starts a fresh log; a
complete cell without one gets it written from the per-step history in its meta.json.

Tags: `loss/total`, `loss/<term>` for every named loss term, and `lr`, at the optimiser step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EVENT_GLOB = "events.out.tfevents.*"
# History fields that are bookkeeping, not loss terms.
NOT_TERMS = frozenset({"loss", "epoch", "step", "lr", "seconds"})


def event_files(cell_dir: Path) -> list[Path]:
    return sorted(Path(cell_dir).glob(EVENT_GLOB))


def clear(cell_dir: Path) -> None:
    """Remove a previous log, so a redone cell does not mix two runs' curves."""
    for path in event_files(cell_dir):
        path.unlink(missing_ok=True)


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard tags and values of one history record."""
    out: dict[str, float] = {}
    if "loss" in record:
        out["loss/total"] = float(record["loss"])
    for name, value in record.items():
        if name not in NOT_TERMS and isinstance(value, int | float) \
                and not isinstance(value, bool):
            out[f"loss/{name}"] = float(value)
    if "lr" in record:
        out["lr"] = float(record["lr"])
    return out


class CellLog:
    """A live event writer for one cell, fed from the training progress callback. The event
    file is opened at the first step, so a method that does not train leaves none."""

    def __init__(self, cell_dir: Path):
        self.cell_dir = Path(cell_dir)
        clear(self.cell_dir)
        self._writer: Any = None

    def record(self, step: int, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for

            self.cell_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.cell_dir))
        for tag, value in scalars(record).items():
            if math.isfinite(value):
                self._writer.add_scalar(tag, value, int(record.get("step", step)))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> CellLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_history(cell_dir: Path, history: Iterable[Mapping[str, Any]]) -> bool:
    """Write a whole stored history as a fresh log; False when there is nothing to write."""
    records = list(history)
    if not records:
        return False
    with CellLog(cell_dir) as log:
        for index, record in enumerate(records, start=1):
            log.record(index, record)
    return True


def backfill(cell_dir: Path) -> bool:
    """Give a complete cell without event files a log from its meta.json history.

    Returns True when it wrote one; a cell with a log, without a readable meta.json or without
    training steps (zero-shot) is left as it is.
    """
    cell_dir = Path(cell_dir)
    if event_files(cell_dir):
        return False
    try:
        meta = json.loads((cell_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    history = meta.get("history") if isinstance(meta, dict) else None
    if not isinstance(history, list):
        return False
    return write_history(cell_dir, [r for r in history if isinstance(r, dict)])
