"""Lock files that hold on a shared network file system, where flock() is unreliable.

A lock is a file created with O_CREAT|O_EXCL (atomic on local disks and on NFSv3+): whoever
creates it holds it. It records the holder's host, pid (with the process's start time, so a
reused pid is not mistaken for the holder) and Slurm job, and the holder touches it every
`heartbeat_s` seconds from a background thread. A lock is taken over, with a warning logged,
when its holder is known to be gone (same host and boot, process no longer there) or its
heartbeat is older than `timeout_s` (a holder on another node that died, or lost its node).
Take-overs are serialised by a second exclusive file, so two runs never both take one lock.
A holder that finds its lock taken over (after a long stall) sees `lost` and must not store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("anbench.locks")
EMPTY_GRACE_S = 10.0  # a lock file's content is written right after it is created


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def holder_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_time(pid),
            "boot": _boot_id(), "job": _job_id()}


def _alive_here(info: dict[str, Any]) -> bool:
    """Whether a holder recorded on this host and boot is still running."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = info.get("pid_start")
    if started is not None and _start_time(pid) is not None:
        return _start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class LockFile:
    def __init__(self, path: Path | str, timeout_s: float = 300.0, heartbeat_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # ------------------------------------------------------------------ reading
    def read(self) -> tuple[dict[str, Any] | None, float] | None:
        """(content or None when unreadable, mtime) of the lock file; None when there is none."""
        try:
            mtime = self.path.stat().st_mtime
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return {}, time.time()
        try:
            content = json.loads(text)
        except ValueError:
            content = None
        return (content if isinstance(content, dict) else None), mtime

    def stale_reason(self, content: dict[str, Any] | None, mtime: float) -> str | None:
        """Why the recorded holder no longer holds the lock; None while it may still."""
        age = time.time() - mtime
        if age > self.timeout_s:
            return f"heartbeat {age:.0f} s old (timeout {self.timeout_s:g} s)"
        if not content:
            # Being written right now, or left empty by a writer that died right after creating
            # it (or by an older anbench, whose flock files stayed behind empty).
            return f"empty lock file {age:.0f} s old" if age > EMPTY_GRACE_S else None
        if content.get("host") == socket.gethostname() and content.get("boot") == _boot_id() \
                and not _alive_here(content):
            return f"its process {content.get('pid')} on this host is gone"
        return None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (None when free or its holder is gone)."""
        seen = self.read()
        if seen is None:
            return None
        content, mtime = seen
        if self.stale_reason(content, mtime) is not None:
            return None
        return content or {}

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock (its token is in the file)."""
        if self._token is None:
            return False
        seen = self.read()
        return bool(seen and seen[0] and seen[0].get("token") == self._token)

    # ------------------------------------------------------------------ acquiring
    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            token = secrets.token_hex(8)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over():
                    return False
                continue
            try:
                payload = {**holder_identity(), "token": token,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                os.write(fd, json.dumps(payload).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._token = token
            self.lost = False
            self._start_heartbeat()
            return True
        return False

    def acquire(self, poll_s: float = 0.05) -> None:
        """Block until the lock is ours (for short critical sections)."""
        while not self.try_acquire():
            time.sleep(poll_s)

    def _take_over(self) -> bool:
        """Remove a stale lock, once, under a take-over guard; True when the caller should
        try to create the lock again."""
        seen = self.read()
        if seen is None:
            return True
        content, mtime = seen
        if self.stale_reason(content, mtime) is None:
            return False
        guard = LockFile(self.path.with_name(self.path.name + ".takeover"), self.timeout_s)
        try:
            fd = os.open(guard.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            # A taker that died mid-take-over leaves its guard: old guards are cleared.
            guard_seen = guard.read()
            if guard_seen is not None and time.time() - guard_seen[1] > self.timeout_s:
                with contextlib.suppress(OSError):
                    guard.path.unlink()
            return False
        os.close(fd)
        try:
            seen = self.read()  # re-judge under the guard: it may have been replaced
            if seen is None:
                return True
            content, mtime = seen
            reason = self.stale_reason(content, mtime)
            if reason is None:
                return False
            who = content or {}
            LOG.warning("lock %s: taking it over from %s pid %s%s: %s", self.path.name,
                        who.get("host", "?"), who.get("pid", "?"),
                        f" (job {who['job']})" if who.get("job") else "", reason)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return True
        finally:
            with contextlib.suppress(OSError):
                guard.path.unlink()

    def break_if_holder(self, match: dict[str, Any], reason: str) -> bool:
        """Remove the lock when its recorded holder matches `match` (e.g. a Slurm job known
        to have ended); the caller knows the holder is gone before any timeout says so."""
        seen = self.read()
        if seen is None or not seen[0]:
            return False
        content = seen[0]
        if any(content.get(k) != v for k, v in match.items()):
            return False
        LOG.warning("lock %s: removing it from %s pid %s: %s", self.path.name,
                    content.get("host", "?"), content.get("pid", "?"), reason)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True

    # ------------------------------------------------------------------ holding
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            seen = self.read()  # an unreadable file (a network hiccup) is not a loss
            if seen is None or (seen[0] and seen[0].get("token") != self._token):
                self.lost = True
                LOG.warning("lock %s was taken over by another run while held here",
                            self.path.name)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._token = None

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
