"""Launchers (local, processes, slurm), network-safe locks, failure records, `anbench status`.

The runs go through the CLI on the tiny backbone and dataset (tests/plugins/tiny_suite.py).
The Slurm test needs the single-node cluster of scripts/slurm-local.sh (CI starts it); it is
skipped, with the reason, when no cluster answers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anbench.locks import LockFile, holder_identity
from anbench.store import CellKey, SuiteStore
from tests.test_runner import REPO, anbench
from tests.test_runner import tiny_run as runner_tiny_run

GRID = {"methods": "zeroshot,coop,dapt", "noise": "drop"}
CELLS = Path("default/cells/tiny-clip/tiny-shapes")


def tiny_run(out: Path, *extra: str, methods: str, noise: str) -> list[str]:
    """The tiny suite with one seed, whatever bench.yaml's default seeds are."""
    return runner_tiny_run(out, "--seeds", "1", *extra, methods=methods, noise=noise)


def same_results(a: Path, b: Path) -> None:
    """Two results.csv hold the same rows in the same order (floats within 1e-6)."""
    left, right = pd.read_csv(a), pd.read_csv(b)
    assert list(left.columns) == list(right.columns)
    assert len(left) == len(right) > 0
    keys = [c for c in left.columns if c != "value"]
    pd.testing.assert_frame_equal(left[keys], right[keys])
    np.testing.assert_allclose(left.value.to_numpy(float), right.value.to_numpy(float),
                               rtol=1e-6, atol=1e-9, equal_nan=True)


def markers(suite: Path) -> dict[Path, int]:
    return {m: m.stat().st_mtime_ns for m in sorted(suite.glob("cells/**/COMPLETE"))}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local")
    anbench(*tiny_run(out, **GRID), cwd=REPO)
    return out / "default" / "results.csv"


# ---------------------------------------------------------------------- locks
def test_lock_is_exclusive_and_released(tmp_path: Path):
    first, second = LockFile(tmp_path / "a.lock"), LockFile(tmp_path / "a.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    content = json.loads((tmp_path / "a.lock").read_text())
    assert content["host"] == socket.gethostname() and content["pid"] == os.getpid()
    first.release()
    assert not (tmp_path / "a.lock").exists()
    assert second.try_acquire()
    second.release()


def _foreign_lock(path: Path, age_s: float, **fields: object) -> None:
    content = {"host": "other-node", "pid": 4242, "pid_start": "1", "boot": "x",
               "token": "theirs", **fields}
    path.write_text(json.dumps(content))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_stale_heartbeat_is_taken_over_and_logged(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture):
    path = tmp_path / "cell.lock"
    _foreign_lock(path, age_s=5, job="77_1")
    lock = LockFile(path, timeout_s=60, heartbeat_s=10)
    assert not lock.try_acquire()  # a live holder on another node: its heartbeat is fresh
    _foreign_lock(path, age_s=120, job="77_1")
    with caplog.at_level(logging.WARNING, logger="anbench.locks"):
        assert lock.try_acquire()
    assert "taking it over from other-node pid 4242 (job 77_1)" in caplog.text
    assert "heartbeat 120 s old" in caplog.text
    assert json.loads(path.read_text())["token"] != "theirs"
    lock.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)
    me = holder_identity()
    path = tmp_path / "cell.lock"
    path.write_text(json.dumps({**me, "pid": dead, "pid_start": "0", "token": "old"}))
    lock = LockFile(path, timeout_s=3600)
    assert lock.try_acquire()
    lock.release()
    # ... but never the lock of a live process here, however old its file
    path.write_text(json.dumps({**me, "token": "mine"}))
    assert not LockFile(path, timeout_s=3600).try_acquire()


def test_empty_lock_file_is_held_briefly_then_stale(tmp_path: Path):
    path = tmp_path / "cell.lock"
    path.write_text("")  # a creator that has not written yet, or an old flock file
    assert not LockFile(path).try_acquire()
    stamp = time.time() - 60
    os.utime(path, (stamp, stamp))
    lock = LockFile(path)
    assert lock.try_acquire()
    lock.release()


def _race(path: str, barrier: object, wins: object) -> None:
    lock = LockFile(path, timeout_s=60)
    barrier.wait()  # type: ignore[attr-defined]
    if lock.try_acquire():
        with wins.get_lock():  # type: ignore[attr-defined]
            wins.value += 1  # type: ignore[attr-defined]
        barrier.wait()  # hold it until every racer has tried  # type: ignore[attr-defined]
        lock.release()
    else:
        barrier.wait()  # type: ignore[attr-defined]


def test_one_winner_when_many_take_over_a_stale_lock(tmp_path: Path):
    path = tmp_path / "cell.lock"
    _foreign_lock(path, age_s=600)
    ctx = multiprocessing.get_context("fork")
    barrier, wins = ctx.Barrier(6), ctx.Value("i", 0)
    racers = [ctx.Process(target=_race, args=(str(path), barrier, wins)) for _ in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    assert [r.exitcode for r in racers] == [0] * 6
    assert wins.value == 1


def test_claim_notices_a_take_over(tmp_path: Path):
    store = SuiteStore(tmp_path)
    key = CellKey("b", "d", "m", "none", 1, 1)
    with store.claim(key) as claim:
        assert claim and not claim.lost
        with store.claim(key) as other:
            assert not other
        lock_path = claim.lock.path
        lock_path.write_text(json.dumps({"token": "someone-else"}))  # as a take-over would
        assert claim.lost
    assert lock_path.exists()  # the new holder's lock is left alone


def test_heartbeat_refreshes_the_lock(tmp_path: Path):
    lock = LockFile(tmp_path / "cell.lock", timeout_s=1, heartbeat_s=0.05)
    assert lock.try_acquire()
    stamp = time.time() - 30
    os.utime(lock.path, (stamp, stamp))
    deadline = time.monotonic() + 20
    while lock.path.stat().st_mtime < time.time() - 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.path.stat().st_mtime > time.time() - 10, "the heartbeat never touched the lock"
    assert not LockFile(lock.path, timeout_s=1).try_acquire()
    lock.release()


# ---------------------------------------------------------------------- processes launcher
def test_processes_launcher_matches_local(tmp_path: Path, local_results: Path):
    proc = anbench(*tiny_run(tmp_path, "--launcher", "processes", "--workers", "2", **GRID),
                   cwd=REPO)
    assert "3 cells run, 0 already complete" in proc.stdout + proc.stderr
    same_results(local_results, tmp_path / "default" / "results.csv")
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert manifest["launcher"] == "processes"
    status = anbench("status", "--out", str(tmp_path), cwd=REPO)
    assert "3 cells, launcher processes): 3 complete, 0 running" in status.stdout
    assert not list((tmp_path / "default" / "locks").glob("*.lock"))


# ---------------------------------------------------------------------- failing cells
FAILING_PLUGIN = '''
import os
from pathlib import Path

from anbench.methods.zeroshot import ZeroShot
from anbench.registry import METHODS

SEEN = Path({seen!r})


@METHODS.register("broken")
class Broken(ZeroShot):
    """Always fails (tests only)."""

    def setup(self, task, images, labels):
        raise RuntimeError("this cell always fails")


@METHODS.register("flaky")
class Flaky(ZeroShot):
    """Fails on its first attempt only (tests only)."""

    def setup(self, task, images, labels):
        if not SEEN.exists():
            SEEN.write_text("tried")
            raise RuntimeError("first attempt fails")


@METHODS.register("crashy")
class Crashy(ZeroShot):
    """Kills its own process on the first attempt, as the out-of-memory killer would."""

    def setup(self, task, images, labels):
        if not SEEN.exists():
            SEEN.write_text("tried")
            os._exit(9)
'''


def failing_plugin(tmp_path: Path) -> str:
    path = tmp_path / "failing.py"
    path.write_text(FAILING_PLUGIN.format(seen=str(tmp_path / "seen")))
    return str(path)


def test_failing_cell_is_recorded_retried_and_spares_the_others(tmp_path: Path):
    out = tmp_path / "runs"
    args = tiny_run(out, "--plugin", failing_plugin(tmp_path), "--set", "launcher.retries=1",
                    methods="zeroshot,broken,flaky", noise="drop")
    proc = anbench(*args, cwd=REPO, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 cells failed" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    broken = out / CELLS / "broken/none/shots16-seed1"
    failure = json.loads((broken / "FAILED").read_text())
    assert failure["attempt"] == 2  # one retry, then it stays failed
    assert failure["error"] == "RuntimeError: this cell always fails"
    assert "this cell always fails" in (broken / "error.log").read_text()
    assert str(broken / "error.log") in failure["logs"]
    assert not (broken / "COMPLETE").exists()
    flaky = out / CELLS / "flaky/none/shots16-seed1"
    assert (flaky / "COMPLETE").is_file() and not (flaky / "FAILED").exists()
    table = pd.read_csv(out / "default" / "results.csv")
    assert set(table.method) == {"zeroshot", "flaky"}
    status = anbench("status", "--out", str(out), cwd=REPO)
    assert "2 complete, 0 running, 0 queued, 0 pending, 1 failed" in status.stdout
    assert "failed    broken on tiny-shapes (seed 1): RuntimeError: this cell always fails " \
           "(attempt 2)" in status.stdout
    assert f"log: {broken / 'error.log'}" in status.stdout


@pytest.mark.slow  # three worker processes start: about 30 s, minutes on a busy machine
def test_worker_that_dies_fails_only_its_cell_and_is_replaced(tmp_path: Path):
    out = tmp_path / "runs"
    args = tiny_run(out, "--plugin", failing_plugin(tmp_path), "--launcher", "processes",
                    "--workers", "2", methods="zeroshot,crashy", noise="drop")
    proc = anbench(*args, cwd=REPO)
    text = proc.stdout + proc.stderr
    assert "crashy on tiny-shapes (seed 1): failed (attempt 1): worker process" in text
    assert "died (exit code 9)" in text
    assert "2 cells run, 0 already complete" in text
    crashy = out / CELLS / "crashy/none/shots16-seed1"
    assert (crashy / "COMPLETE").is_file() and not (crashy / "FAILED").exists()


# ---------------------------------------------------------------------- refused input
@pytest.mark.parametrize(("flags", "message"), [
    ({"workers": 0}, "--workers 0: give 1 or more"),
    ({"gpus": "a,b"}, "--gpus 'a,b': give GPU indices"),
    ({"gpus": ""}, "--gpus '': give GPU indices"),
    ({"launcher": "local", "workers": 2}, "--workers and --gpus are for --launcher processes"),
    ({"launcher": "slurm", "gpus": "0"}, "launcher.slurm.gpus_per_job"),
    ({"launcher": "nosuch"}, "--launcher 'nosuch': known: local, processes, slurm"),
])
def test_bad_launcher_flags(flags: dict, message: str):
    from anbench.cli import _launcher_sets
    from anbench.registry import AnbenchError

    args = {"launcher": None, "workers": None, "gpus": None, "no_wait": False, **flags}
    with pytest.raises(AnbenchError) as caught:
        _launcher_sets(**args)
    assert message in str(caught.value)


def test_gpus_alone_mean_the_processes_launcher():
    from anbench.cli import _launcher_sets

    assert _launcher_sets(None, None, "0,1", True) == [
        "launcher.gpus=[0,1]", "run.launcher=processes", "launcher.wait=false"]


@pytest.mark.parametrize(("sets", "message"), [
    (["launcher.retries=-1"], "config error at 'launcher.retries'"),
    (["launcher.heartbeat_s=200"], "heartbeat_s (200) must be at most half of lock_timeout_s"),
    (["launcher.slurm.time_min=0"], "config error at 'launcher.slurm.time_min'"),
    (["launcher.gpus=[0,0]"], "GPU indices must be distinct"),
    (["launcher.slurm.sbatch=[1]"], "config error at 'launcher.slurm.sbatch'"),
    (["run.launcher=cloud"], "config error at 'run.launcher'"),
    (["launcher.wait=false"], "--no-wait needs --launcher slurm"),
    (["launcher.gpus=[0,1]", "launcher.workers=3", "run.launcher=processes"],
     "--workers 3 with --gpus 0,1: one worker per GPU"),
])
def test_bad_launcher_config(sets: list[str], message: str):
    from anbench.config import load_config
    from anbench.launchers import check_launcher
    from anbench.registry import AnbenchError

    with pytest.raises(AnbenchError) as caught:
        check_launcher(load_config(None, sets, bench_yaml=REPO / "bench.yaml"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_no_wait_without_slurm_is_one_line_before_any_work(tmp_path: Path):
    proc = anbench(*tiny_run(tmp_path, "--no-wait", **GRID), cwd=REPO, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--no-wait needs --launcher slurm" in errors[0], proc.stderr
    assert not (tmp_path / "default").exists()


def test_gpus_this_machine_lacks(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = anbench(*tiny_run(tmp_path, "--gpus", "0", **GRID), cwd=REPO, check=False)
    assert proc.returncode == 2
    assert "error: --gpus 0: this machine shows 0 CUDA device(s)" in proc.stderr


def test_slurm_launcher_without_slurm_commands(tmp_path: Path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "-m", "anbench.cli",
                           *tiny_run(tmp_path, "--launcher", "slurm", **GRID)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: --launcher slurm: sbatch and squeue not found on PATH" in proc.stderr


@pytest.mark.parametrize(("content", "message"), [
    (None, "no run recorded in"),
    (b"\x00\xff garbage", "launch.json is unreadable or damaged"),
    (b'{"cells": [{"key": {"nope": 1}}]}', "launch.json is unreadable or damaged"),
])
def test_status_of_a_suite_without_a_readable_record(tmp_path: Path, content: bytes | None,
                                                     message: str):
    suite = tmp_path / "default"
    suite.mkdir()
    if content is not None:
        (suite / "launch.json").write_bytes(content)
    proc = anbench("status", "--out", str(tmp_path), cwd=REPO, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


def test_status_of_a_missing_suite(tmp_path: Path):
    proc = anbench("status", "--out", str(tmp_path), "--suite", "nothing", cwd=REPO,
                   check=False)
    assert proc.returncode == 2 and "error: no suite at" in proc.stderr


# ---------------------------------------------------------------------- slurm
def _slurm_env() -> dict[str, str] | None:
    """The environment for a Slurm cluster that answers, or None."""
    env = dict(os.environ)
    state = os.environ.get("ANBENCH_SLURM_DIR",
                           str(Path(tempfile.gettempdir()) / "anbench-slurm"))
    default_conf = Path(state) / "etc" / "slurm.conf"
    if "SLURM_CONF" not in env and default_conf.is_file():
        env["SLURM_CONF"] = str(default_conf)
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    try:
        ok = subprocess.run(["sinfo", "-h"], env=env, capture_output=True,
                            timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return env if ok else None


SLURM_ENV = _slurm_env()
SLURM_REASON = ("no Slurm cluster answers (start the local one: scripts/slurm-local.sh start; "
                ".ci/run does)")
if SLURM_ENV is None and os.environ.get("ANBENCH_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"ANBENCH_REQUIRE_SLURM=1 but {SLURM_REASON}")


def _active_jobs(env: dict[str, str], ids: set[str]) -> set[str]:
    from anbench.launchers.slurm import ACTIVE

    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all",
                          "--format=%i %T"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return {job for job in ids if states.get(job) in ACTIVE}


@pytest.mark.skipif(SLURM_ENV is None, reason=SLURM_REASON)
def test_slurm_array_with_a_cancelled_job_matches_local(tmp_path: Path, local_results: Path):
    assert SLURM_ENV is not None
    args = tiny_run(tmp_path, "--launcher", "slurm", "--set", "launcher.slurm.poll_s=1",
                    **GRID)

    def run(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "anbench.cli", *args, *extra], cwd=REPO,
                              env=SLURM_ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    submitted = run("--no-wait")
    assert "3 submitted to Slurm" in submitted.stdout + submitted.stderr
    jobs = json.loads((tmp_path / "default" / "launch.json").read_text())["jobs"]
    assert len(jobs) == 3 and len({job["job"].split("_")[0] for job in jobs.values()}) == 1
    cancelled = next(job["job"] for rel, job in jobs.items() if "/coop/" in rel)
    subprocess.run(["scancel", cancelled], env=SLURM_ENV, check=True, timeout=60)
    ids = {job["job"] for job in jobs.values()}
    deadline = time.monotonic() + 400
    while _active_jobs(SLURM_ENV, ids) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _active_jobs(SLURM_ENV, ids), "the array never finished"

    status = subprocess.run([sys.executable, "-m", "anbench.cli", "status", "--out",
                             str(tmp_path)], cwd=REPO, env=SLURM_ENV, capture_output=True,
                            text=True, timeout=120).stdout
    assert "2 complete, 0 running, 0 queued, 0 pending, 1 failed" in status, status
    assert f"failed    coop on tiny-shapes (seed 1): Slurm job {cancelled}" in status
    coop = tmp_path / CELLS / "coop/none/shots16-seed1"
    assert not (coop / "COMPLETE").exists()

    before = markers(tmp_path / "default")
    rerun = run()
    text = rerun.stdout + rerun.stderr
    assert "submitted 1 cells to Slurm" in text
    assert "1 cells run, 2 already complete" in text
    after = markers(tmp_path / "default")
    assert {m: t for m, t in after.items() if m in before} == before  # nothing else redone
    assert (coop / "COMPLETE").is_file()
    same_results(local_results, tmp_path / "default" / "results.csv")
    assert not list((tmp_path / "default" / "locks").glob("*.lock"))
