"""The `slurm` launcher: one Slurm job per pending cell, submitted as a job array by submitit.

Each job runs `anbench.launchers.execute.run_job` (the same cell function as the local loop)
and writes the cell into the shared suite folder. The coordinator records every job in
launch.json, then (unless `--no-wait`) polls `squeue` and the cell folders: a cell is done when
its COMPLETE marker is there; a job that left the queue without completing its cell failed
(its own FAILED record, or, when Slurm killed it - scancel, time limit, out of memory - one
written here pointing at the job's log), and is resubmitted up to `launcher.retries` times.
A later `anbench run` collects jobs still queued from an earlier one and submits only the rest.

Job states come from `squeue` (not `sacct`, which needs accounting that many clusters and a
local test cluster lack) and job outcomes from submitit's result files.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from anbench import interrupts
from anbench.config import BenchConfig
from anbench.launchers import Launch
from anbench.launchers.execute import CellOutcome, run_job
from anbench.launchers.records import read_failure, read_launch, record_failure, write_launch
from anbench.registry import AnbenchError
from anbench.store import CellKey

# Job states in which a job may still run its cell (squeue's long names).
ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
          "RESV_DEL_HOLD"}
SQUEUE_FAILURES_ALLOWED = 30  # consecutive failed polls before the coordinator gives up


def check_slurm() -> None:
    """Fail before any work when this machine cannot submit Slurm jobs."""
    missing = [cmd for cmd in ("sbatch", "squeue") if shutil.which(cmd) is None]
    if missing:
        raise AnbenchError(f"--launcher slurm: {' and '.join(missing)} not found on PATH; run "
                           "from a Slurm login node (for a local trial cluster: "
                           "scripts/slurm-local.sh start)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise AnbenchError("--launcher slurm needs the submitit package (pip install "
                           "submitit)") from None


def log_folder(config: BenchConfig, root: Path) -> Path:
    configured = config.launcher.slurm.log_dir
    return Path(configured).expanduser().resolve() if configured else root / "slurm"


def queue_states() -> dict[str, str] | None:
    """This user's jobs known to the controller, by job id ("123" or "123_4" for an array
    task) -> state; None when squeue fails."""
    try:
        proc = subprocess.run(["squeue", "--noheader", "--array", "--states=all",
                               f"--user={getpass.getuser()}", "--format=%i %T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _executor(job: Launch) -> Any:
    import submitit

    config = job.ctx.config
    slurm = config.launcher.slurm
    executor = submitit.AutoExecutor(folder=log_folder(config, Path(job.ctx.root)),
                                     cluster="slurm", slurm_max_num_timeout=0)
    params: dict[str, Any] = {"name": f"anbench-{config.run.suite}",
                              "timeout_min": slurm.time_min,
                              "slurm_array_parallelism": slurm.array_parallelism}
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.gpus_per_job:
        params["gpus_per_node"] = slurm.gpus_per_job
    if slurm.cpus_per_job:
        params["cpus_per_task"] = slurm.cpus_per_job
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if slurm.sbatch:
        params["slurm_additional_parameters"] = dict(slurm.sbatch)
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise AnbenchError(f"launcher.slurm: {str(exc).splitlines()[0]}") from None
    return executor


def _submit(job: Launch, keys: list[CellKey], attempts: dict[CellKey, int]
            ) -> dict[CellKey, dict[str, Any]]:
    if not keys:
        return {}
    executor = _executor(job)
    try:
        jobs = executor.map_array(run_job, [job.ctx] * len(keys), keys,
                                  [attempts[key] for key in keys])
    except Exception as exc:  # sbatch refused: bad partition, account, limits ...
        message = str(exc).strip().splitlines()
        raise AnbenchError(f"sbatch failed: {message[-1] if message else type(exc).__name__}"
                           ) from None
    submitted = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {key: {"job": str(j.job_id), "log": str(j.paths.stderr), "attempt": attempts[key],
                  "submitted": submitted} for key, j in zip(keys, jobs, strict=True)}
    write_launch(job.store, "slurm", job.fingerprints, info)
    array = str(jobs[0].job_id).split("_")[0]
    job.log(f"submitted {len(keys)} cells to Slurm as job {array} "
            f"(logs: {log_folder(job.ctx.config, Path(job.ctx.root))})")
    return info


def _job_result(job: Launch, job_id: str) -> tuple[str, Any] | None:
    """What submitit wrote when the job's function returned or raised; None if it never did
    (the job was killed, or never started)."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(log_folder(job.ctx.config, Path(job.ctx.root)), job_id=job_id).result_pickle
    try:
        result = pickle_load(path)
    except Exception:  # missing, half-written or unreadable: the same as none
        return None
    return result if isinstance(result, tuple) and len(result) == 2 else None


def _ended(job: Launch, key: CellKey, info: dict[str, Any], state: str | None) -> CellOutcome:
    """The outcome of a cell whose job left the queue."""
    job_id, attempt = info["job"], int(info.get("attempt", 1))
    if job.store.is_complete(key, job.fingerprints[key]):
        return CellOutcome(key, "done", attempt=attempt)
    result = _job_result(job, job_id)
    if result is not None and result[0] == "success" and isinstance(result[1], CellOutcome):
        outcome = result[1]
        if outcome.status in ("complete", "done") and \
                not job.store.is_complete(key, job.fingerprints[key]):
            outcome = CellOutcome(key, "failed", error="the job reported the cell complete "
                                  "but it is not (another run changed it?)", attempt=attempt)
        return outcome
    if result is not None and result[0] == "error":  # raised outside the cell (e.g. loading)
        error = str(result[1]).strip().splitlines()[-1][:500]
    else:
        error = (f"Slurm job {job_id} ended ({state or 'gone from the queue'}) before the cell "
                 "completed")
        # The job cannot release its lock any more: free it now rather than after the timeout.
        job.store.lock(key.relpath).break_if_holder({"job": job_id}, f"job {job_id} ended")
    failure = read_failure(job.store, key)
    if failure is None or failure.get("job") != job_id:
        record_failure(job.store, key, error, attempt=attempt, log=info.get("log"), job=job_id,
                       state=state)
    job.log(f"{key.label()}: failed (attempt {attempt}, job {job_id}): {error}")
    return CellOutcome(key, "failed", error=error, attempt=attempt)


def _queue() -> dict[str, str]:
    states = queue_states()
    if states is None:
        raise AnbenchError("squeue failed: cannot see the jobs' states (is slurmctld "
                           "reachable?)")
    return states


def launch_slurm(job: Launch) -> None:
    check_slurm()
    record = read_launch(job.store, missing_ok=True, damaged_ok=True) or {"jobs": {}}
    states = _queue()
    tracked: dict[CellKey, dict[str, Any]] = {}
    fresh: list[CellKey] = []
    for key in job.todo:
        info = record["jobs"].get(key.relpath)
        if isinstance(info, dict) and states.get(str(info.get("job"))) in ACTIVE:
            tracked[key] = info  # submitted by an earlier run and still queued or running
        else:
            fresh.append(key)
    if tracked:
        job.log(f"{len(tracked)} cells are still queued or running from an earlier submission; "
                "collecting them")
    tracked.update(_submit(job, fresh, dict.fromkeys(fresh, 1)))
    if not job.wait:
        job.submitted = len(tracked)
        return
    poll_s = job.ctx.config.launcher.slurm.poll_s
    failures = 0
    try:
        while tracked:
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline:
                interrupts.check()
                time.sleep(min(0.2, poll_s))
            states_now = queue_states()
            if states_now is None:
                failures += 1
                if failures > SQUEUE_FAILURES_ALLOWED:
                    _queue()  # raises with the message
                continue
            failures = 0
            retry: dict[CellKey, int] = {}
            for key, info in list(tracked.items()):
                job_id = str(info["job"])
                if job.store.is_complete(key, job.fingerprints[key]):
                    outcome = CellOutcome(key, "done", attempt=int(info.get("attempt", 1)))
                    job.log(f"{key.label()}: complete (job {job_id})")
                elif states_now.get(job_id) in ACTIVE:
                    continue
                else:
                    outcome = _ended(job, key, info, states_now.get(job_id))
                del tracked[key]
                if outcome.status == "failed" and outcome.attempt <= job.retries:
                    retry[key] = outcome.attempt + 1
                else:
                    job.finish(outcome)
            tracked.update(_submit(job, list(retry), retry))
    except KeyboardInterrupt:
        job.log("the Slurm jobs keep running: `anbench status` shows them, the same `anbench "
                "run` collects them, `scancel` stops them")
        raise
