"""Ctrl-C that is never lost.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be.
Raised inside a finaliser, a weakref callback or a C extension's callback it is printed as
"Exception ignored in ..." and dropped, and the run carries on to exit 0. Our handler also
records the signal, so the runner checks the record between cells and training steps and the
CLI exits 130 even when the exception itself was swallowed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_received = threading.Event()


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.set()
    raise KeyboardInterrupt


def install() -> None:
    """Install the recording handler (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is threading.main_thread():
        _received.clear()
        signal.signal(signal.SIGINT, _handler)


def clear() -> None:
    """Forget a recorded Ctrl-C (an in-process caller that handled it, and tests)."""
    _received.clear()


def received() -> bool:
    return _received.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C arrived, even if its first exception was swallowed."""
    if _received.is_set():
        raise KeyboardInterrupt
