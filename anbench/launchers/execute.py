"""The one function every launcher runs a cell through, wherever the cell runs.

`execute_cell` resolves the cell's spec, claims the cell's lock, skips it if another run
completed it meanwhile, runs `anbench.cell.run_cell`, stores the result (COMPLETE last) and
records a failure under the cell folder instead of losing the other cells. The local loop calls
it in-process; worker processes and Slurm jobs call it through `run_job`, after rebuilding the
coordinator's config from a picklable `RunContext`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from anbench.cell import CellEnvironment, Progress, resolve_cell, run_cell
from anbench.config import BenchConfig, dump_config
from anbench.files import atomic_write_json, atomic_write_text
from anbench.launchers.records import clear_failure, record_failure
from anbench.registry import AnbenchError, load_plugin
from anbench.store import CellKey, SuiteStore

# Errors of the input or of the machine: every other cell would meet them too, so the local
# loop stops on them (one line from the CLI) instead of recording each cell as failed.
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, AnbenchError) or (
        isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS)


def _loaded_plugins() -> tuple[str, ...]:
    """Every plugin this process loaded, with file paths made absolute for other processes."""
    from anbench import registry

    specs = []
    for spec in sorted(registry._loaded_plugins):  # the registry's own record of loads
        path = Path(spec).expanduser()
        specs.append(str(path.resolve()) if spec.endswith(".py") or path.exists() else spec)
    return tuple(specs)


@dataclass(frozen=True)
class RunContext:
    """What a process needs to run any cell of a run: picklable (no plugin objects)."""

    config: BenchConfig
    eval_noise: tuple[str, ...]
    eval_datasets: tuple[str, ...]  # cross-dataset protocol: datasets only evaluated on
    root: str  # the suite folder, absolute
    cwd: str
    plugins: tuple[str, ...]

    @classmethod
    def create(cls, config: BenchConfig, eval_noise: list[str], eval_datasets: list[str],
               root: Path) -> RunContext:
        return cls(config, tuple(eval_noise), tuple(eval_datasets), str(Path(root).resolve()),
                   os.getcwd(), _loaded_plugins())

    def resolve(self, key: CellKey, weights_hash: str) -> Any:
        return resolve_cell(self.config, key, list(self.eval_noise), weights_hash,
                            list(self.eval_datasets))

    def store(self) -> SuiteStore:
        launcher = self.config.launcher
        return SuiteStore(Path(self.root), lock_timeout_s=launcher.lock_timeout_s,
                          heartbeat_s=launcher.heartbeat_s)

    def prepare_process(self) -> None:
        """In a fresh process: the coordinator's folder (relative paths) and plugins."""
        os.chdir(self.cwd)
        for plugin in self.plugins:
            load_plugin(plugin)


@dataclass
class CellOutcome:
    key: CellKey
    status: str  # "done", "complete" (by another run), "busy" (another run holds it), "failed"
    seconds: float = 0.0
    summary: str = ""
    error: str | None = None
    attempt: int = 1


def execute_cell(ctx: RunContext, key: CellKey, env: CellEnvironment, store: SuiteStore, *,
                 log: Callable[[str], None], progress: Progress | None = None,
                 attempt: int = 1, job: dict[str, Any] | None = None,
                 reraise_fatal: bool = False) -> CellOutcome:
    """Claim, run and store one cell; a failure is recorded under the cell folder.

    `job` (e.g. the Slurm job id and its log file) goes into the RUNNING and FAILED records.
    With `reraise_fatal`, errors of the input or machine propagate after being recorded.
    """
    spec = ctx.resolve(key, env.backbone.weights_hash)
    if store.is_complete(key, spec.fingerprint):
        return CellOutcome(key, "complete", attempt=attempt)
    with store.claim(key) as claim:
        if not claim:  # another run of this suite is on it
            return CellOutcome(key, "busy", attempt=attempt)
        stored = store.inspect(key)
        if stored is not None and stored.intact and stored.fingerprint == spec.fingerprint:
            return CellOutcome(key, "complete", attempt=attempt)
        if stored is not None and stored.problem:
            log(f"{key.label()}: damaged ({stored.problem}); redoing it")
        try:
            write_run_files(store, ctx.config, env)
            store.mark_running(key, attempt=attempt, **(job or {}))
            with _training_log(ctx.config, store.cell_dir(key), progress) as logged:
                result = run_cell(spec, env, progress=logged)
            if claim.lost:
                raise RuntimeError("another run took this cell's lock over while it ran (a "
                                   "stall longer than launcher.lock_timeout_s); result dropped")
            store.write_cell(key, spec.fingerprint, result.rows, result.arrays, result.prompts,
                             result.meta, weights_hash=spec.weights_hash)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            record_failure(store, key, error, traceback=traceback.format_exc(),
                           attempt=attempt, log=(job or {}).get("log"),
                           job=(job or {}).get("job"))
            if reraise_fatal and is_fatal(exc):
                raise
            log(f"{key.label()}: failed (attempt {attempt}): {error}")
            return CellOutcome(key, "failed", error=error, attempt=attempt)
        clear_failure(store, key)
    seconds = float(result.meta["seconds"])
    log(f"{key.label()}: {result.summary()} ({seconds:.0f} s)")
    return CellOutcome(key, "done", seconds=seconds, summary=result.summary(), attempt=attempt)


def execute_group(ctx: RunContext, keys: Sequence[CellKey], env: CellEnvironment,
                  store: SuiteStore, *, log: Callable[[str], None],
                  progress: Progress | None = None, attempt: int = 1,
                  reraise_fatal: bool = False) -> list[CellOutcome]:
    """`execute_cell` for the cells of one fused group (`anbench.cell_group.plan_groups`):
    each is checked, claimed and stored on its own (one folder per cell, as alone); the claimed
    ones run together. A member that fails is recorded and the others still stored. Returns
    the outcomes in the order of `keys`."""
    from anbench.cell_group import run_group

    specs = {key: ctx.resolve(key, env.backbone.weights_hash) for key in keys}
    outcomes: dict[CellKey, CellOutcome] = {}
    with contextlib.ExitStack() as stack:
        claims: dict[CellKey, Any] = {}
        for key in keys:
            spec = specs[key]
            if store.is_complete(key, spec.fingerprint):
                outcomes[key] = CellOutcome(key, "complete", attempt=attempt)
                continue
            claim = stack.enter_context(store.claim(key))
            if not claim:  # another run of this suite is on it
                outcomes[key] = CellOutcome(key, "busy", attempt=attempt)
                continue
            stored = store.inspect(key)
            if stored is not None and stored.intact and stored.fingerprint == spec.fingerprint:
                outcomes[key] = CellOutcome(key, "complete", attempt=attempt)
                continue
            if stored is not None and stored.problem:
                log(f"{key.label()}: damaged ({stored.problem}); redoing it")
            claims[key] = claim
        todo = [key for key in keys if key in claims]
        if todo:
            write_run_files(store, ctx.config, env)
            events = {}
            for key in todo:
                store.mark_running(key, attempt=attempt)
                events[key] = stack.enter_context(
                    _training_log(ctx.config, store.cell_dir(key), None))

            def step(done: int, total: int, records: dict[int, dict[str, Any]]) -> None:
                for index, record in records.items():
                    events[todo[index]](done, total, record)
                if progress is not None:
                    progress(done, total, next(iter(records.values())))

            for index, result in run_group([specs[key] for key in todo], env, progress=step,
                                           log=log):
                key = todo[index]
                outcomes[key] = _store_result(ctx, store, key, specs[key], claims[key], result,
                                              log=log, attempt=attempt,
                                              reraise_fatal=reraise_fatal)
        for key in todo:  # not reached by the group (e.g. an earlier member's fatal error)
            if key not in outcomes:
                error = "its fused group stopped before this cell ran"
                record_failure(store, key, error, attempt=attempt)
                outcomes[key] = CellOutcome(key, "failed", error=error, attempt=attempt)
    return [outcomes[key] for key in keys]


def _store_result(ctx: RunContext, store: SuiteStore, key: CellKey, spec: Any, claim: Any,
                  result: Any, *, log: Callable[[str], None], attempt: int,
                  reraise_fatal: bool) -> CellOutcome:
    """Store one group member's result (or record its error) as `execute_cell` does."""
    try:
        if isinstance(result, Exception):
            raise result
        if claim.lost:
            raise RuntimeError("another run took this cell's lock over while it ran (a "
                               "stall longer than launcher.lock_timeout_s); result dropped")
        store.write_cell(key, spec.fingerprint, result.rows, result.arrays, result.prompts,
                         result.meta, weights_hash=spec.weights_hash)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        record_failure(store, key, error, traceback="".join(traceback.format_exception(exc)),
                       attempt=attempt)
        if reraise_fatal and is_fatal(exc):
            raise
        log(f"{key.label()}: failed (attempt {attempt}): {error}")
        return CellOutcome(key, "failed", error=error, attempt=attempt)
    clear_failure(store, key)
    seconds = float(result.meta["seconds"])
    log(f"{key.label()}: {result.summary()} ({seconds:.0f} s)")
    return CellOutcome(key, "done", seconds=seconds, summary=result.summary(), attempt=attempt)


@contextlib.contextmanager
def _training_log(config: BenchConfig, cell_dir: Path, progress: Progress | None
                  ) -> Iterator[Progress]:
    """The progress callback, also feeding a fresh TensorBoard log with `run.tensorboard`."""
    from anbench.tensorboard_log import CellLog, clear

    clear(cell_dir)  # an old TensorBoard log would mix two runs
    events = CellLog(cell_dir) if config.run.tensorboard else None

    def logged(step: int, total: int, terms: dict[str, float]) -> None:
        if progress is not None:
            progress(step, total, terms)
        if events is not None:
            events.record(step, terms)

    try:
        yield logged
    finally:
        if events is not None:
            events.close()


# ---------------------------------------------------------------------- in a worker or job
_ENV: dict[str, CellEnvironment] = {}


def worker_environment(ctx: RunContext) -> CellEnvironment:
    """The process's environment for this run (the backbone is loaded once per process)."""
    if ctx.root not in _ENV:
        ctx.prepare_process()
        _ENV.clear()
        _ENV[ctx.root] = CellEnvironment.load(ctx.config, progress=False)
    return _ENV[ctx.root]


def _slurm_threads() -> int | None:
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"):
        value = os.environ.get(name, "")
        digits = value.split("(")[0].split(",")[0]
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return None


def run_job(ctx: RunContext, key: CellKey, attempt: int = 1) -> CellOutcome:
    """The body of one Slurm job: one cell, logged to the job's own output files."""
    import torch

    threads = _slurm_threads()
    if threads:
        torch.set_num_threads(threads)
    job: dict[str, Any] = {}
    try:
        import submitit

        job_env = submitit.JobEnvironment()
        job = {"job": job_env.job_id, "log": str(job_env.paths.stderr)}
    except (ImportError, RuntimeError, KeyError):
        pass
    env = worker_environment(ctx)
    return execute_cell(ctx, key, env, ctx.store(), log=lambda line: print(line, flush=True),
                        attempt=attempt, job=job)


# ---------------------------------------------------------------------- run files
_RUN_FILES_WRITTEN: set[str] = set()


def write_run_files(store: SuiteStore, config: BenchConfig, env: CellEnvironment) -> None:
    """config.yaml and manifest.json describe the latest run that trained a cell (written
    once per process, by whichever process trains first)."""
    import torch

    if str(store.root) in _RUN_FILES_WRITTEN:
        return
    backbone = env.backbone
    device = env.device
    with store.suite_lock():
        atomic_write_text(store.root / "config.yaml", dump_config(config))
        atomic_write_json(store.root / "manifest.json", {
            "versions": _versions(), "git_commit": _git_commit(),
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device),
            "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "launcher": config.run.launcher,
            "backbone": {"name": backbone.name, "label": backbone.label,
                         "weights_hash": backbone.weights_hash, **backbone.info},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    _RUN_FILES_WRITTEN.add(str(store.root))


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("anbench", "torch", "open_clip_torch", "transformers", "nlpaug", "nltk",
                    "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
