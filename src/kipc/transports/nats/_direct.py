"""A caller thread's own connection for sync request/reply: no thread crossing at all.

A sync ``request()`` through the process's loop thread crosses threads twice (the
caller wakes the loop, the loop wakes the caller: two kernel wake-ups, ~25 µs each on
a loaded 2-core box), which raw nats-py, on one event loop, never does. A
:class:`ThreadConn` is one thread's private nats-py connection on a private event
loop that runs only *inside* that thread's calls: the request is published, and its
reply read, by the calling thread itself, exactly as raw nats-py does.

The contract that makes this safe:

* One per (channel, thread), made on that thread's first request (a connect, with
  the channel's servers, credentials and TLS); only that thread runs its loop, under
  ``lock``. A thread that already runs an event loop uses the shared path instead.
* Between calls nobody reads the socket: the server's PINGs wait. A call after
  ``IDLE`` seconds (50 ms: back-to-back calls skip it) first lets the client read
  what arrived (it answers the PINGs, or sees that the server closed the
  connection, ~10 µs); a connection that is not connected then is closed and the
  call takes the shared path, so a request is not sent on a connection the server
  dropped more than ``IDLE`` ago (the server drops a client after ~2 missed PINGs:
  minutes with its default 2 min interval; a restart drops it at once).
* ``interrupt()`` (a ``close()`` from another thread) cancels the running call;
  ``close()`` waits (bounded) for it, then closes the connection and the loop from
  the closing thread. At exit, connections still open in this process are closed if
  no call is running; a forked child never touches its parent's.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._runtime import _Loop

T = TypeVar("T")

__all__ = ["IDLE", "ThreadConn"]

IDLE = 0.05  # a connection unused this long first reads what the server sent meanwhile
_CLOSE_WAIT = 2.0  # close() waits this long for a running call to end
_open: weakref.WeakSet[ThreadConn] = weakref.WeakSet()


class ThreadConn:
    """One thread's private connection and event loop (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._thread = weakref.ref(threading.current_thread())
        self.loop = _Loop()
        self.nc: Any = None
        self.lock = threading.Lock()  # held by whoever runs the loop
        self.last = 0.0  # monotonic time of the last call
        self.doomed = False  # close() was asked while a call ran
        self._task: asyncio.Task[Any] | None = None
        _open.add(self)

    def thread_alive(self) -> bool:
        """False once the thread that made it has ended (nobody will use it again)."""
        t = self._thread()
        return t is not None and t.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop, on the calling thread; CancelledError if interrupted."""
        task = self.loop.create_task(coro)
        self._task = task
        try:
            return self.loop.run_until_complete(task)
        except BaseException:
            if not task.done():  # KeyboardInterrupt and the like: never leave the call running
                task.cancel()
                with contextlib.suppress(BaseException):
                    self.loop.run_until_complete(task)
            raise
        finally:
            self._task = None
            self.last = time.monotonic()

    async def settle(self) -> bool:
        """After ``IDLE``: let the client read what arrived while idle; True if still connected."""
        if time.monotonic() - self.last > IDLE:
            for _ in range(3):  # socket read, then the client's read task, then its PONG
                await asyncio.sleep(0)
        return bool(self.nc is not None and self.nc.is_connected)

    def interrupt(self) -> None:
        """From another thread: cancel the running call (it raises), close once it is out."""
        self.doomed = True
        task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(task.cancel)

    def close(self, wait: float = _CLOSE_WAIT) -> None:
        """Close the connection and the loop (any thread but one running another loop)."""
        if self.pid != os.getpid() or not self.lock.acquire(timeout=wait):
            return  # a forked child, or a call that would not end: the OS closes the socket
        try:
            _open.discard(self)
            if self.loop.is_closed():
                return
            nc, self.nc = self.nc, None
            if asyncio._get_running_loop() is None:  # else (a finalizer on some loop): the OS closes it
                if nc is not None:
                    with contextlib.suppress(Exception):
                        self.loop.run_until_complete(self._close_nc(nc))
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            with contextlib.suppress(Exception):
                self.loop.close()
        finally:
            self.lock.release()

    @staticmethod
    async def _close_nc(nc: Any) -> None:
        await asyncio.wait_for(nc.close(), 2.0)


def connect(make: Callable[[], Coroutine[Any, Any, Any]]) -> ThreadConn:
    """A new ThreadConn connected by ``make()`` (run on its loop); closed again if that raises."""
    conn = ThreadConn()
    try:
        with conn.lock:
            conn.nc = conn.run(make())
    except BaseException:
        conn.close()
        raise
    return conn


@atexit.register
def _close_all() -> None:
    for conn in list(_open):
        conn.close(wait=0.0)
