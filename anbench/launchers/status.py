"""`anbench status`: the state of each cell the latest run planned, read from disk (and from
`squeue` for cells submitted to Slurm), without loading a model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from anbench.launchers.records import read_failure, read_launch, read_running
from anbench.store import CellKey, SuiteStore

STATES = ("complete", "running", "queued", "pending", "failed")


@dataclass(frozen=True)
class CellStatus:
    key: CellKey
    state: str  # one of STATES
    detail: str = ""
    logs: tuple[str, ...] = ()


def suite_status(store: SuiteStore) -> tuple[str, list[CellStatus]]:
    """(launcher of the latest run, the status of each of its planned cells)."""
    record = read_launch(store)
    jobs = record["jobs"]
    queue: dict[str, str] = {}
    if jobs and shutil.which("squeue"):
        from anbench.launchers.slurm import queue_states

        queue = queue_states() or {}
    return record["launcher"], [_cell_status(store, key, fp, jobs.get(key.relpath), queue)
                                for key, fp in record["cells"]]


def _cell_status(store: SuiteStore, key: CellKey, fingerprint: str, job: object,
                 queue: dict[str, str]) -> CellStatus:
    from anbench.launchers.slurm import ACTIVE

    stored = store.inspect(key)
    if stored is not None and stored.intact and stored.fingerprint == fingerprint:
        return CellStatus(key, "complete")
    job = job if isinstance(job, dict) else {}
    job_id = str(job.get("job", "")) or None
    job_state = queue.get(job_id) if job_id else None
    holder = store.lock(key.relpath).holder()
    if holder is not None:
        where = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
        if holder.get("job"):
            where += f", Slurm job {holder['job']}"
        logs = (str(job["log"]),) if job.get("log") and job_id == holder.get("job") else ()
        return CellStatus(key, "running", where, logs)
    if job_state in ACTIVE:
        state = "queued" if job_state == "PENDING" else "running"
        return CellStatus(key, state, f"Slurm job {job_id} {job_state}",
                          (str(job["log"]),) if job.get("log") else ())
    failure = read_failure(store, key)
    if failure is not None:
        attempt = failure.get("attempt")
        detail = str(failure.get("error", "?")) + (f" (attempt {attempt})" if attempt else "")
        logs = failure.get("logs")
        return CellStatus(key, "failed", detail,
                          tuple(map(str, logs)) if isinstance(logs, list) else ())
    running = read_running(store, key)
    if running is not None:  # started, but its process ended without storing or recording
        logs = (str(running["log"]),) if running.get("log") else ()
        return CellStatus(key, "failed", f"interrupted: {running.get('host', '?')} pid "
                          f"{running.get('pid', '?')} stopped before the cell completed", logs)
    if job_id and job_state is not None:  # it left the queue without starting the cell
        return CellStatus(key, "failed", f"Slurm job {job_id} ended ({job_state}) before the "
                          "cell completed", (str(job["log"]),) if job.get("log") else ())
    if stored is not None:
        why = stored.problem or "stored under other settings"
        return CellStatus(key, "pending", f"{why}; it will be redone")
    return CellStatus(key, "pending")


def format_status(suite: str, launcher: str, cells: list[CellStatus]) -> list[str]:
    counts = {state: sum(c.state == state for c in cells) for state in STATES}
    lines = [f"suite '{suite}' (latest run: {len(cells)} cells, launcher {launcher}): "
             + ", ".join(f"{n} {state}" for state, n in counts.items())]
    order = {state: i for i, state in enumerate(("failed", "running", "queued", "pending"))}
    for cell in sorted((c for c in cells if c.state != "complete"),
                       key=lambda c: order[c.state]):
        lines.append(f"  {cell.state:<8}  {cell.key.label()}"
                     + (f": {cell.detail}" if cell.detail else ""))
        lines += [f"            log: {log}" for log in cell.logs]
    return lines
