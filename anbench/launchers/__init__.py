"""Where the cells of a run execute: `local` (this process, one after another), `processes`
(worker processes on this machine, one GPU each with `--gpus`) or `slurm` (one job per cell as
a job array through submitit). Every launcher runs a cell through
`anbench.launchers.execute.execute_cell`; the runner keeps the grid, results and report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anbench.launchers.execute import CellOutcome, RunContext
from anbench.registry import AnbenchError
from anbench.store import CellKey, SuiteStore

LAUNCHERS = ("local", "processes", "slurm")


class CellsFailed(AnbenchError):
    """Some cells failed after their retries; the others are stored (exit status 1)."""

    exit_code = 1


def check_launcher(config: Any) -> None:
    """Launcher settings that cannot work fail before anything is written."""
    name = config.run.launcher
    if not config.launcher.wait and name != "slurm":
        raise AnbenchError(f"--no-wait needs --launcher slurm (the {name} launcher runs the "
                           "cells inside this command)")
    if name == "processes":
        from anbench.launchers.processes import check_gpus, worker_slots

        worker_slots(config)
        check_gpus(config)
    elif name == "slurm":
        from anbench.launchers.slurm import check_slurm

        check_slurm()


@dataclass
class Launch:
    """One run's pending cells and what a launcher reports back to the runner."""

    ctx: RunContext
    store: SuiteStore
    todo: list[CellKey]
    fingerprints: dict[CellKey, str]  # of every planned cell, by key
    retries: int
    log: Callable[[str], None]
    quiet: bool
    finish: Callable[[CellOutcome], None]  # a cell's final outcome (after its retries)
    label: Callable[[str], None] = lambda text: None  # what the progress bar shows now
    wait: bool = True
    env: Any = None  # the runner's CellEnvironment (local launcher only)
    outcomes: list[CellOutcome] = field(default_factory=list)
    submitted: int = 0  # cells handed to a scheduler and left running (--no-wait)


def launch(name: str, job: Launch) -> None:
    if name == "local":
        from anbench.launchers.local import launch_local as run
    elif name == "processes":
        from anbench.launchers.processes import launch_processes as run
    elif name == "slurm":
        from anbench.launchers.slurm import launch_slurm as run
    else:
        raise AnbenchError(f"unknown launcher '{name}'; known: {', '.join(LAUNCHERS)}")
    run(job)
