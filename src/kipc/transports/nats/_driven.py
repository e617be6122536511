"""A private event loop run by whichever thread needs it, with a watchdog: no thread crossing.

Both the responder (``_responder``) and the default requester (``_requester``) own a
nats-py connection on a private asyncio loop that has no thread of its own. A
:class:`Driven` is that loop and the rules for running it, one runner at a time:

* A caller that needs the loop (a ``next()`` waiting for a request, a ``request()``
  waiting for its reply) becomes its runner with :meth:`acquire` and runs it on its
  own thread until what it waits for has happened, then :meth:`release` s it.
  asyncio loops may be run by different threads one after another, never at once:
  every ownership change happens under ``_lock``.
* A caller that finds another runner waits on a condition of ``_lock`` (its own, or
  the shared ``_free``) until what it waits for is ready (the runner's callbacks set
  it and notify that condition) or the loop is free: a release hands the loop to one
  waiting caller, so nobody ever waits for a runner that is gone.
* Work for the loop from a thread that is not its runner is :meth:`post` ed
  (``call_soon_threadsafe``) and counted; a runner about to give the loop up first
  runs what was posted (the count falls once nats-py's flusher has written it), so
  nothing posted is left unsent.
* A **watchdog** thread takes the loop over once nobody has run it for ``GRACE``
  (5 ms; it looks at least every 50 ms, more often after a hand-over), so server
  PINGs are answered, reconnects happen and buffered publishes are flushed while
  nobody else runs it. :meth:`acquire` takes it back: it asks the watchdog's run to
  stop (``call_soon_threadsafe(loop.stop)``) and waits for the hand-over. The
  watchdog never takes the loop while a caller waits for it. :meth:`wake_dog` makes
  it take over at once (an async caller, or a thread inside an event loop of its
  own, cannot run this loop and waits on something else instead).
* :meth:`close` (any thread) stops whoever runs the loop and wakes every waiter; the
  watchdog, once it owns the loop, runs :meth:`_aclose` (unsubscribes ``sub``, closes ``nc``),
  closes the loop and exits; ``close()`` waits for
  that (bounded). At exit every Driven of this process is closed.
* A forked child refuses the parent's (:meth:`check` raises ``ChannelClosed``), never
  runs its loop and never closes it, nor takes its locks. Belt and braces, the loop
  polls with ``poll(2)``, not epoll: an epoll interest list is kernel state shared
  with a child, so a child closing its copy of a loop would unregister the parent's
  sockets; with poll nothing is shared but the file descriptors.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import selectors
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ..._base import Deadline
from ...errors import ChannelClosed
from . import _runtime
from ._mailbox import start_now
from ._runtime import _Loop

__all__ = ["GRACE", "Driven"]

GRACE = 0.005  # a loop nobody has run for this long is taken over by the watchdog
_NAP_MAX = 0.05  # the watchdog looks at least this often (a handler's loop waits GRACE..GRACE+this)
_CLOSE_WAIT = 5.0  # close() waits this long for the watchdog to close the connection
_DOG = object()  # _owner: the watchdog runs the loop
_open: weakref.WeakSet[Driven] = weakref.WeakSet()


class Driven:
    """A private loop, its runner rules and its watchdog (see the module docstring).

    The constructing thread owns the loop until :meth:`_started` (use :meth:`complete`
    to connect and subscribe meanwhile; on failure call :meth:`_failed` and raise).
    """

    dog_name = "kipc-nats-driven"

    def __init__(self, what: str) -> None:
        self.what = what  # "requests on <url>": the start of every error message
        self.pid = os.getpid()
        self.loop = _Loop(selectors.PollSelector())
        self.closed = False
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # callers waiting for the loop (the default)
        self._dog_cv = threading.Condition(self._lock)  # the watchdog waiting for its turn
        self._owner: object = threading.get_ident()  # who runs the loop (None: nobody)
        self._queue: list[threading.Condition] = []  # the conditions of callers waiting for the loop
        self._stop_asked = False  # a caller asked the watchdog's run to stop
        self._dog_now = False  # take over at once (an async caller waits, work was posted)
        self._idle_since = time.monotonic()
        self._posted = 0  # work posted to the loop, not yet run and flushed
        self._rest: set[asyncio.Task[Any]] = set()  # started coroutines that had to wait
        self.nc: Any = None  # the connection (the subclass connects it while it owns the loop)
        self.sub: Any = None  # its one subscription (requests, or replies)

    def _started(self) -> None:
        """Setup is done: give the loop up and start the watchdog."""
        self._owner = None
        self._dog = threading.Thread(target=self._watch, name=self.dog_name, daemon=True)
        self._dog.start()
        _open.add(self)

    def _failed(self) -> None:
        """Setup failed: close what was made (the constructing thread still owns the loop)."""
        self._owner = None
        self._shutdown()

    def check(self) -> None:
        if self.pid != _runtime.pid:
            raise ChannelClosed(f"{self.what}: opened in process {self.pid}; open it again after fork")
        if self.closed:
            raise ChannelClosed(f"{self.what}: closed by this process")

    # -- who runs the loop -----------------------------------------------------------------
    def acquire(self, deadline: Deadline, ready: Callable[[], bool],
                cv: threading.Condition | None = None) -> bool:
        """Become the loop's runner (taking it back from the watchdog).

        False: look again -- closed, timed out, or ``ready()`` (checked under the lock;
        whoever makes it true notifies ``cv``, default ``_free``) came true meanwhile.
        """
        cv = self._free if cv is None else cv
        with self._lock:
            if self._owner is None:
                self._owner = threading.get_ident()
                return True
            self._queue.append(cv)
            try:
                while self._owner is not None:
                    if self.closed or ready():
                        return False
                    if self._owner is _DOG and not self._stop_asked:
                        self._stop_asked = True
                        self.loop.call_soon_threadsafe(self.loop.stop)
                    rem = deadline.slice().remaining()
                    if not rem or not cv.wait(rem):
                        if deadline.expired():
                            return False
                self._owner = threading.get_ident()
                return True
            finally:
                self._queue.remove(cv)
                if self._owner is None and self._queue:
                    self._queue[0].notify()  # leaving a free loop (timed out, answered): hand it on

    def try_own(self) -> bool:
        """Become the runner if nobody runs the loop and this thread may (it runs no loop of its own)."""
        if asyncio._get_running_loop() is not None:
            return False
        with self._lock:
            if self._owner is None and not self.closed:
                self._owner = threading.get_ident()
                return True
            return False

    def release(self) -> None:
        """Give the loop up, after running whatever was posted to it meanwhile."""
        while True:
            with self._lock:
                if not self._posted or self.loop.is_closed():
                    self._owner = None
                    self._idle_since = time.monotonic()
                    if self._queue:
                        self._queue[0].notify()
                    if self.closed:
                        self._dog_cv.notify()
                    return
            self.spin()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop, by its runner (or the watchdog if nobody runs it)."""
        with self._lock:
            self._posted += 1
            idle = self._owner is None
        try:
            self.loop.call_soon_threadsafe(self._run_posted, fn, args)
        except RuntimeError:  # the loop was closed under us
            with self._lock:
                self._posted -= 1
            raise ChannelClosed(f"{self.what}: closed by this process") from None
        if idle:
            self.wake_dog()  # nobody runs the loop and this thread cannot: the watchdog runs it

    def _run_posted(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        finally:
            self.loop.call_soon(self._unpost)  # after the flusher has written what fn queued

    def _unpost(self) -> None:
        with self._lock:
            self._posted -= 1

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` now (on the loop, by its runner) up to its first wait; keep it if it waits."""
        task = start_now(coro)
        if task is not None:
            self._rest.add(task)
            task.add_done_callback(self._rest.discard)

    def complete(self, aw: Any) -> Any:
        """``run_until_complete`` that a stale ``loop.stop()`` (a close() or a hand-back request
        that reached the loop after its run had ended) cannot cut short."""
        loop = self.loop
        task = asyncio.ensure_future(aw, loop=loop)
        task.add_done_callback(lambda _: loop.stop())
        while not task.done():
            try:
                loop.run_forever()
            except BaseException:  # Ctrl-C: never leave it running
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        self.complete(task)
                raise
        return task.result()

    def spin(self) -> None:
        """Run one loop iteration on this thread (the caller owns the loop)."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def wake_dog(self) -> None:
        with self._lock:
            self._dog_now = True
            self._dog_cv.notify()

    def _watch(self) -> None:
        """The watchdog: run the loop whenever nobody else has for GRACE; close it at the end."""
        lock = self._lock
        while True:
            with lock:
                nap = GRACE
                while True:
                    if self._owner is None and self.closed:
                        self._owner = _DOG
                        break
                    if self._owner is None and not self._queue:
                        nap = GRACE
                        idle = time.monotonic() - self._idle_since
                        if self._dog_now or idle >= GRACE:
                            self._owner = _DOG
                            self._dog_now = self._stop_asked = False
                            break
                        self._dog_cv.wait(GRACE - idle)
                    else:
                        # a caller runs the loop (waiting for a request or a reply): look less and
                        # less often, so an idle one costs ~20 wake-ups a second, not 200
                        self._dog_cv.wait(nap)
                        nap = min(nap * 2, _NAP_MAX)
            if self.closed:
                self._shutdown()
                return
            try:
                self.loop.run_forever()
            except Exception:  # the loop's own handler reports callback errors; keep watching
                pass
            finally:
                self.release()

    # -- closing ---------------------------------------------------------------------------
    def close(self, wait: float = _CLOSE_WAIT) -> None:
        """Stop: waiters raise ChannelClosed; the connection is closed (any thread)."""
        if self.pid != os.getpid():
            # a forked child: never touch the parent's loop or connection, nor its locks (a parent
            # thread may have held one at the fork: the child's copy would never be released)
            self.closed = True
            return
        with self._lock:
            if self.closed:
                first = False
            else:
                first = True
                self.closed = True
                running = self._owner is not None
                for cv in set(self._queue):
                    cv.notify_all()
                self._dog_cv.notify_all()
        if first:
            _open.discard(self)
            self._closing()
            if running:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.loop.stop)
        dog = self.__dict__.get("_dog")
        if dog is not None and dog is not threading.current_thread():
            dog.join(wait)

    def _closing(self) -> None:
        """Hook: wake whoever waits on something other than the loop (close() from any thread)."""

    async def _aclose(self) -> None:
        """Unsubscribe and close the connection (on the loop, at the end)."""
        nc, self.nc = self.nc, None
        sub, self.sub = self.sub, None
        if nc is None:
            return
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
        await asyncio.wait_for(nc.close(), 2.0)

    def _shutdown(self) -> None:
        """Close the connection and the loop (the caller owns the loop)."""
        loop = self.loop
        if loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.complete(self._aclose())
        # nc.close() cancels its tasks without waiting for them: let every task left finish here,
        # or closing the loop destroys them pending ("Task was destroyed but it is pending!")
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            self.complete(asyncio.gather(*tasks, return_exceptions=True))
        with contextlib.suppress(Exception):
            self.complete(loop.shutdown_asyncgens())
        with contextlib.suppress(Exception):
            loop.close()


@atexit.register
def _close_all() -> None:
    for d in list(_open):
        if d.pid == os.getpid():
            d.close(wait=2.0)
