"""Clean exits on SIGTERM and SIGHUP (``kill %1``, a closed terminal), like Ctrl-C.

A verb that created an object (``recv --create``, ``send --create``) removes it on the way
out; that needs the exit to unwind through Python, so these signals raise ``SystemExit(128 + N)``
in the main thread instead of killing the process at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["exit_cleanly_on_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise(signo: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signo)


@contextmanager
def exit_cleanly_on_signals() -> Iterator[None]:
    """While inside, SIGTERM/SIGHUP unwind (``finally`` blocks run); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
