"""The `processes` launcher: N worker processes on this machine.

Each worker is a fresh (spawned) process that loads the backbone once and then runs the cells
the coordinator hands it, one at a time, through `execute_cell`. With `--gpus 0,1` there is one
worker per GPU and each sees only its own (CUDA_VISIBLE_DEVICES); otherwise the workers share
the CPU cores. A worker that dies (out of memory, killed) fails only its current cell, which is
recorded and retried like any other failure, and is replaced.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from anbench import interrupts
from anbench.config import BenchConfig
from anbench.launchers import Launch
from anbench.launchers.execute import CellOutcome, RunContext, execute_cell, worker_environment
from anbench.launchers.records import record_failure
from anbench.registry import AnbenchError
from anbench.store import CellKey

DEFAULT_CPU_WORKERS = 2


def worker_slots(config: BenchConfig) -> list[int | None]:
    """One entry per worker: the GPU it sees, or None for a CPU worker."""
    launcher = config.launcher
    if launcher.gpus:
        if launcher.workers is not None and launcher.workers != len(launcher.gpus):
            raise AnbenchError(f"--workers {launcher.workers} with --gpus "
                               f"{','.join(map(str, launcher.gpus))}: one worker per GPU; drop "
                               "--workers or list as many GPUs")
        return list(launcher.gpus)
    return [None] * (launcher.workers or DEFAULT_CPU_WORKERS)


def check_gpus(config: BenchConfig) -> None:
    """Fail before any work when `--gpus` names devices this machine does not show."""
    gpus = config.launcher.gpus
    if not gpus:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [gpu for gpu in gpus if gpu >= count]
    if missing:
        raise AnbenchError(f"--gpus {','.join(map(str, gpus))}: this machine shows {count} CUDA "
                           f"device(s), so GPU {missing[0]} does not exist")


def _worker(ctx: RunContext, index: int, threads: int, inbox: Any, outbox: Any) -> None:
    """A worker's main loop (in a spawned process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    try:
        import torch

        torch.set_num_threads(threads)
        env = worker_environment(ctx)
        store = ctx.store()
    except BaseException as exc:  # reported to the coordinator, then exit
        outbox.put(("error", index, f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    outbox.put(("ready", index, None))
    parent = os.getppid()
    while True:
        try:
            item = inbox.get(timeout=5)
        except queue.Empty:
            if os.getppid() != parent:  # the coordinator died: do not linger
                return
            continue
        if item is None:
            return
        key, attempt = item
        try:
            outcome = execute_cell(ctx, key, env, store, attempt=attempt,
                                   log=lambda line: outbox.put(("log", index, line)))
        except Exception as exc:  # e.g. the lock folder cannot be written
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            record_failure(store, key, error, attempt=attempt)
            outcome = CellOutcome(key, "failed", error=error, attempt=attempt)
        outbox.put(("done", index, outcome))


@dataclass
class _Worker:
    process: Any
    inbox: Any
    gpu: int | None
    ready: bool = False
    task: tuple[CellKey, int] | None = None
    gone: bool = False


@contextlib.contextmanager
def _visible_device(gpu: int | None) -> Iterator[None]:
    """A spawned child copies this process's environment when it starts."""
    if gpu is None:
        yield
        return
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def launch_processes(job: Launch) -> None:
    if not job.todo:
        return
    slots = worker_slots(job.ctx.config)[:len(job.todo)]  # no idle workers
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    mp = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    outbox = mp.Queue()
    workers: dict[int, _Worker] = {}

    def start(gpu: int | None) -> None:
        index = len(workers)
        inbox = mp.Queue()
        with _visible_device(gpu):
            # Not a daemon: a worker may start its own image-decoding processes.
            process = mp.Process(target=_worker, args=(job.ctx, index, threads, inbox, outbox),
                                 name=f"anbench-worker-{index}")
            process.start()
        workers[index] = _Worker(process, inbox, gpu)

    pending: deque[tuple[CellKey, int]] = deque((key, 1) for key in job.todo)
    remaining = len(job.todo)
    restarts_left = len(job.todo) * (job.retries + 1)
    errors: list[str] = []

    def settle(outcome: CellOutcome) -> None:
        nonlocal remaining
        if outcome.status == "failed" and outcome.attempt <= job.retries:
            pending.append((outcome.key, outcome.attempt + 1))
            return
        remaining -= 1
        job.finish(outcome)

    def handle(message: tuple[str, int, Any]) -> None:
        kind, index, payload = message
        worker = workers[index]
        if kind == "log":
            job.log(payload)
        elif kind == "ready":
            worker.ready = True
        elif kind == "error":
            errors.append(payload)
            worker.gone = True
        elif kind == "done":
            worker.task = None
            settle(payload)

    for gpu in slots:
        start(gpu)
    finished = False
    try:
        while remaining:
            interrupts.check()
            for worker in workers.values():
                if worker.ready and not worker.gone and worker.task is None and pending:
                    worker.task = pending.popleft()
                    worker.inbox.put(worker.task)
            try:
                handle(outbox.get(timeout=0.5))
                continue
            except queue.Empty:
                pass
            for worker in list(workers.values()):
                if worker.gone or worker.process.exitcode is None:
                    continue
                with contextlib.suppress(queue.Empty):  # what it said before dying comes first
                    while True:
                        handle(outbox.get_nowait())
                if worker.gone:
                    continue
                worker.gone = True
                if worker.task is not None:
                    key, attempt = worker.task
                    worker.task = None
                    error = (f"worker process {worker.process.pid} died (exit code "
                             f"{worker.process.exitcode}) while running the cell")
                    record_failure(job.store, key, error, attempt=attempt)
                    job.log(f"{key.label()}: failed (attempt {attempt}): {error}")
                    settle(CellOutcome(key, "failed", error=error, attempt=attempt))
                if remaining and restarts_left > 0:
                    restarts_left -= 1
                    start(worker.gpu)
            if remaining and all(w.gone for w in workers.values()):
                reason = errors[-1] if errors else "they exited"
                raise AnbenchError(f"every worker process failed to start: {reason}")
        finished = True
    finally:
        _stop(workers, politely=finished)


def _stop(workers: dict[int, _Worker], politely: bool) -> None:
    """Ask idle workers to exit; on Ctrl-C or an error, terminate them (their cells are
    redone on the next run: the locks of dead processes on this host are taken over)."""
    for worker in workers.values():
        if worker.process.exitcode is None:
            if politely:
                worker.inbox.put(None)
            else:
                worker.process.terminate()
    for worker in workers.values():
        worker.process.join(timeout=30 if politely else 10)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
