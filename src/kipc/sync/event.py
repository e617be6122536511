"""Named events: ``kipc.Event("posix://NAME")``, a futex on shared memory.

Contract card:

* Object: one 4 KiB POSIX shm object ``/kipc.event.NAME`` (``/dev/shm/kipc.event.NAME``); layout
  in ``kipc/_native/kipc_sync.h``: the 32-bit word ``ev_word = (generation << 1) | is_set``.
* ``set()`` wakes every waiter (of every process) at once; ``clear()``; ``is_set()``;
  ``wait(timeout=None) -> bool`` like ``threading.Event.wait``: True if the event was set when the
  call returned or was set at any moment during the wait (a ``set()`` followed at once by
  ``clear()`` still wakes every waiter with True: the generation changed); False on timeout.
* Waiting is a shared ``FUTEX_WAIT`` on the word, checked by the kernel, so a ``set()`` between a
  waiter's check and its sleep is never missed. No state is polled: sleeps are sliced (100 ms)
  only so Python signal handlers (Ctrl-C) run; the GIL is released while waiting.
* ``await ev.await_set(timeout=None) -> bool`` waits in kipc's wait threads in 50 ms slices; it
  consumes nothing, so cancelling it changes nothing.
* The "write, then tell" pattern: write a ``kipc.SharedMemory`` segment, then ``set()``; the
  reader's ``wait()`` returning True happens after the write (the set is a seq_cst atomic).
* Creation, attach checks, ``wait=`` and cleanup as for :class:`kipc.Lock` (exclusive create by default,
  mode 0600, the creator removes it on ``close()`` unless ``persist=True``).
"""

from __future__ import annotations

import asyncio
import math
import time

from .._base import CreateMode, wait_pool
from .._naming import DEFAULT_MODE
from ..errors import ChannelClosed
from .lock import _ASYNC_SLICE, SyncKind, _sync, _SyncObject

__all__ = ["KIND", "Event"]


class Event(_SyncObject):
    """A named event shared between processes; see the module docstring for the contract."""

    _prefix = "kipc.event."
    _kind_code = _sync.KIND_EVENT
    _kind_name = "event"

    def __init__(self, url: str, *, create: CreateMode = False, mode: int | str = DEFAULT_MODE,
                 persist: bool = False, allow_foreign: bool = False, wait: float | None = None) -> None:
        self._open(url, create, mode, persist, allow_foreign, wait)
        h = self._h
        self.set = h.set  # type: ignore[method-assign]
        self.clear = h.clear  # type: ignore[method-assign]
        self.is_set = h.is_set  # type: ignore[method-assign]
        # not wait: the C method is positional-only, and wait(timeout=5) is threading.Event's API

    def _handle(self, op: str) -> object:
        if self._h is None:
            raise ChannelClosed(f"{op} on {self.url}: closed by this process")
        return self._h

    def set(self) -> None:
        """Set the event and wake every waiter."""
        self._handle("set")
        self._h.set()

    def clear(self) -> None:
        """Clear the event (waiters already woken stay woken)."""
        self._handle("clear")
        self._h.clear()

    def is_set(self) -> bool:
        self._handle("is_set")
        return bool(self._h.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set (True) or ``timeout`` seconds pass (False)."""
        self._handle("wait")
        return bool(self._h.wait(timeout))

    async def await_set(self, timeout: float | None = None) -> bool:
        """``wait`` for asyncio (kipc's wait threads, 50 ms slices; consumes nothing, so cancel-safe)."""
        self._handle("wait")
        h = self._h
        word = h.word()
        if word & 1:
            return True
        if timeout is not None and (isinstance(timeout, bool) or math.isnan(timeout)):
            raise TypeError(f"timeout must be None or a number of seconds, not {timeout!r}")
        end = math.inf if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if await asyncio.wrap_future(wait_pool().submit(h.wait_change, word, min(_ASYNC_SLICE, left))):
                return True


KIND = SyncKind("event", "posix", "kipc.event.", part="event", records=("event",), record_scheme="posix-event",
                description="event (/dev/shm/kipc.event.NAME)")
