"""The background asyncio loop thread that drives every NATS connection of a process.

One loop per process, started lazily on first use; a forked child gets a fresh one
(the parent's thread does not exist there); at exit every client is closed and the
loop stopped, so an interpreter exit never hangs on an open connection.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ...errors import (
    ChannelClosed,
)

T = TypeVar("T")

# -- the background loop -----------------------------------------------------------------
class _Runner:
    """One asyncio loop on a daemon thread, owned by the process that started it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.stopped = False
        self.thread = threading.Thread(target=self.loop.run_forever, name="kipc-nats", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("kipc nats: sync call from the loop thread itself (use the async API)")
        if self.stopped:  # after exit cleanup (e.g. a finalizer at shutdown): never wait on a dead loop
            coro.close()
            raise ChannelClosed("kipc nats: the client loop has shut down (interpreter exiting)")
        fut = self.submit(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # Ctrl-C: stop the operation on the loop too
            raise

    def shutdown(self) -> None:
        async def close_all() -> None:
            for nc in list(self.clients):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2.0)

        with contextlib.suppress(Exception):
            self.submit(close_all()).result(5.0)
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


_runner: _Runner | None = None
_runner_lock = threading.Lock()


def _get_runner() -> _Runner:
    global _runner
    r = _runner
    if r is not None and r.pid == os.getpid():
        return r
    with _runner_lock:
        if _runner is None or _runner.pid != os.getpid():
            _runner = _Runner()  # a forked child never touches the parent's loop thread
        return _runner


def _after_fork() -> None:
    global _runner, _runner_lock
    _runner = None
    _runner_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _shutdown() -> None:
    r = _runner
    if r is not None and r.pid == os.getpid():
        r.shutdown()

