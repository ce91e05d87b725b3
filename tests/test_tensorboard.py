"""`run.tensorboard: true`: event files per cell that TensorBoard's own reader loads, holding
the same numbers as meta.json's history; not part of the COMPLETE marker; backfilled for
complete cells, cleared when a cell is redone."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

import anbench
from anbench.store import MARKER, SuiteStore
from anbench.tensorboard_log import event_files, scalars
from tests.suite_fixtures import tiny_bench_yaml


def read_events(cell_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(cell_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def quiet_run(**kwargs) -> anbench.Suite:
    with contextlib.redirect_stdout(io.StringIO()):
        return anbench.run(quiet=True, **kwargs)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory):
    where = tmp_path_factory.mktemp("tb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANBENCH_BENCH_YAML", str(tiny_bench_yaml(where / "bench.yaml")))
        args = {"methods": "zeroshot,coop", "noise": "drop", "out": where / "runs"}
        yield quiet_run(tensorboard=True, **args), args


def test_scalars_of_a_history_record():
    record = {"loss": 1.5, "ce": 1.0, "sim": 0.5, "epoch": 0, "step": 3, "lr": 0.01,
              "seconds": 0.2}
    assert scalars(record) == {"loss/total": 1.5, "loss/ce": 1.0, "loss/sim": 0.5, "lr": 0.01}


def test_events_hold_the_history(suite):
    handle, _ = suite
    cell = handle.cell(method="coop")
    events = read_events(cell.directory)
    history = json.loads((cell.directory / "meta.json").read_text())["history"]
    assert set(events) == {"loss/total", "loss/ce", "lr"}
    assert [s for s, _ in events["loss/total"]] == [r["step"] for r in history]
    for tag, field in (("loss/total", "loss"), ("loss/ce", "ce"), ("lr", "lr")):
        assert [v for _, v in events[tag]] == pytest.approx([r[field] for r in history],
                                                            rel=1e-6)
    # zero-shot does not train: no log
    assert not event_files(handle.cell(method="zeroshot").directory)


def test_events_are_not_part_of_the_marker(suite):
    handle, _ = suite
    cell = handle.cell(method="coop")
    marker = json.loads((cell.directory / MARKER).read_text())
    assert not any(name.startswith("events.") for name in marker["files"])
    stored = SuiteStore(handle.root).inspect(cell.key)
    assert stored is not None and stored.intact
    for path in event_files(cell.directory):  # a damaged log does not damage the cell
        path.write_bytes(b"garbage")
    assert SuiteStore(handle.root).inspect(cell.key).intact


def test_complete_cells_get_a_log_and_redone_cells_a_fresh_one(suite):
    handle, args = suite
    cell = handle.cell(method="coop")
    for path in event_files(cell.directory):
        path.unlink()
    marker = (cell.directory / MARKER).stat().st_mtime_ns
    quiet_run(tensorboard=True, **args)  # nothing to train: the log is written from meta.json
    assert (cell.directory / MARKER).stat().st_mtime_ns == marker
    assert len(event_files(cell.directory)) == 1
    assert len(read_events(cell.directory)["loss/total"]) == len(cell.history)
    # changed settings redo the cell; without the switch its old log must not survive
    quiet_run(**args, **{"methods.coop.lr": 0.01})
    assert (cell.directory / MARKER).stat().st_mtime_ns != marker
    assert not event_files(cell.directory)
