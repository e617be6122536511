"""The background asyncio loop thread that drives every NATS connection of a process.

One loop per process, started lazily on first use; a forked child gets a fresh one
(the parent's thread does not exist there); at exit every client is closed and the
loop stopped, so an interpreter exit never hangs on an open connection.

Dead links: every TCP connection the loop opens gets ``TCP_USER_TIMEOUT`` (the
connection's :data:`user_timeout`, set by ``_Client`` before it connects; the
context variable reaches every task nats-py starts for that connection,
reconnects included). Without it a silently dead link (a cut cable, a
partition: no RST) wedges nats-py: its ping check notices the stale connection,
but ``_attempt_reconnect`` then awaits ``wait_closed()``, which asyncio finishes
only once the unsent publishes in the transport's buffer are written — never,
until the kernel gives up after ~15 min of retransmissions (nats-io/nats.py#671,
open). With the option the kernel aborts the socket once sent data has gone
unacknowledged that long, the close completes and nats-py moves on to the next
server.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import socket
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from ...errors import (
    ChannelClosed,
)

T = TypeVar("T")

#: TCP_USER_TIMEOUT in ms for the connections opened from this context (0: the kernel's default)
user_timeout: contextvars.ContextVar[int] = contextvars.ContextVar("kipc_nats_user_timeout", default=0)


class _Loop(asyncio.SelectorEventLoop):
    """The runner's loop: TCP connections get ``user_timeout`` (see the module docstring)."""

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super().create_connection(*args, **kwargs)
        ms = user_timeout.get()
        sock = transport.get_extra_info("socket")
        if ms and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)
            except OSError:
                pass  # not supported here: dead links are noticed later, as before
        return transport, protocol

# -- the background loop -----------------------------------------------------------------
class _Runner:
    """One asyncio loop on a daemon thread, owned by the process that started it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = _Loop()
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
            # what handles left unclosed still run (a Topic's delivery pump, a channel's pumps):
            # ended here, or the dying loop destroys them pending ("Task was destroyed ...")
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)

        with contextlib.suppress(Exception):
            self.submit(close_all()).result(5.0)
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


_runner: _Runner | None = None
_runner_lock = threading.Lock()
#: this process's id, kept current by the fork hook: a global read, not a getpid() system call
#: on every send and recv
pid = os.getpid()


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
    global _runner, _runner_lock, pid
    pid = os.getpid()
    _runner = None
    _runner_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


@atexit.register
def _shutdown() -> None:
    r = _runner
    if r is not None and r.pid == os.getpid():
        r.shutdown()

