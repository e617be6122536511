"""A responder's own connection, driven by the thread that serves it: no thread crossing.

Through the process's loop thread a sync responder crosses threads twice per request
(the loop thread hands the request to the thread in ``next()``; ``reply()`` wakes the
loop thread to publish), ~170 µs of a ~550 µs round trip on a loaded 2-core box. A
:class:`Responder` has its own nats-py connection on a private event loop, and that
loop is run by whoever needs it, one runner at a time:

* ``next()`` runs the loop on the calling thread until a request arrives (the
  subscription callback stops it), then returns it: read, parsed and handed out
  in that thread.
* ``reply()`` while nobody runs the loop (the usual ``for req in reqs:
  req.reply(...)``) publishes on the calling thread and runs the loop two
  iterations, so nats-py's flusher writes the bytes before ``reply()`` returns.
  ``reply()`` while another thread runs the loop (a ``next()`` elsewhere, or the
  watchdog), or from a thread that runs an event loop of its own, is posted with
  ``call_soon_threadsafe``; a runner that is about to give the loop up first runs
  what was posted (``_posted``), so nothing is left unsent.
* A **watchdog** thread takes the loop over once nobody has run it for ``GRACE``
  (5 ms: a handler at work; it looks at least every 50 ms, more often after a
  hand-over), so server PINGs are answered, reconnects happen and
  buffered publishes are flushed while a slow handler runs. ``next()`` takes it
  back: it asks the watchdog's run to stop (``call_soon_threadsafe(loop.stop)``) and
  waits for the hand-over. The watchdog never takes the loop while a caller waits
  for it. All ownership changes happen under ``_lock``: one runner at a time
  (asyncio loops may be run by different threads one after another, never at once).
* ``anext()`` (and a sync ``next()`` on a thread that already runs an event loop)
  cannot run the private loop there: it wakes the watchdog at once and waits on the
  mailbox, as the shared path does.
* ``close()`` (any thread) stops whoever runs the loop; the watchdog, once it owns the
  loop, unsubscribes, closes the connection and the loop, and exits; ``close()`` waits
  for that (bounded). A blocked ``next()`` raises ``ChannelClosed``.
* A forked child refuses the parent's responder (``ChannelClosed``), never runs its
  loop and never closes it. Belt and braces, the private loop polls with ``poll(2)``,
  not epoll: an epoll interest list is kernel state shared with a child, so a child
  closing its copy of a loop would unregister the parent's sockets; with poll nothing
  is shared but the file descriptors.

The price: one more server connection per responder object (the conventional shape
of a NATS service: each instance connects once and joins the queue group), and one
watchdog thread per responder that wakes every 5-50 ms while it is not running the loop.
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

import nats.errors

from ..._base import Deadline
from ...errors import ChannelClosed
from . import _runtime
from ._mailbox import Mailbox, start_now
from ._runtime import _Loop

__all__ = ["GRACE", "Responder"]

GRACE = 0.005  # a loop nobody has run for this long is taken over by the watchdog
_NAP_MAX = 0.05  # the watchdog looks at least this often (a handler's loop waits GRACE..GRACE+this)
_CLOSE_WAIT = 5.0  # close() waits this long for the watchdog to close the connection
_DOG = object()  # _owner: the watchdog runs the loop
_open: weakref.WeakSet[Responder] = weakref.WeakSet()


class Responder:
    """One responder's connection, private loop and watchdog (see the module docstring)."""

    def __init__(self, what: str, subject: str, queue: str, limit: int,
                 connect: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self.what = what  # "requests on <url>": the start of every error message
        self.pid = os.getpid()
        self.loop = _Loop(selectors.PollSelector())
        self.box = Mailbox(limit)
        self.nc: Any = None
        self.sub: Any = None
        self.closed = False
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # callers waiting for the loop
        self._dog_cv = threading.Condition(self._lock)  # the watchdog waiting for its turn
        self._owner: object = threading.get_ident()  # who runs the loop (None: nobody)
        self._waiting = 0  # callers waiting for the loop: the watchdog keeps off
        self._stop_asked = False  # a caller asked the watchdog's run to stop
        self._dog_now = False  # take over at once (an anext() waits, a reply was posted)
        self._idle_since = time.monotonic()
        self._posted = 0  # replies posted to the loop, not yet published and flushed
        self._stop_on_put = False  # a next() runs the loop: a request ends its run
        self._rest: set[asyncio.Task[Any]] = set()  # publishes that had to wait (buffer full)
        try:
            self.nc = self._complete(connect())
            self.sub = self._complete(self._subscribe(subject, queue, limit))
        except BaseException:
            self._owner = None
            self._shutdown()
            raise
        self._owner = None
        self._dog = threading.Thread(target=self._watch, name="kipc-nats-responder", daemon=True)
        self._dog.start()
        _open.add(self)

    async def _subscribe(self, subject: str, queue: str, limit: int) -> Any:
        sub = await self.nc.subscribe(subject, queue=queue, cb=self._on_request,
                                      pending_msgs_limit=limit + 1024, pending_bytes_limit=-1)
        await self.nc.flush(5.0)  # listening before requests() returns
        return sub

    async def _on_request(self, msg: Any) -> None:
        self.box.put(msg)  # wakes anext() waiters; over the limit it is dropped (its sender times out)
        if self._stop_on_put:
            self.loop.stop()  # the next() running the loop returns it

    # -- taking requests -------------------------------------------------------------------
    def next(self, deadline: Deadline) -> Any:
        """The next request's nats-py message, read on this thread (Timeout / ChannelClosed)."""
        box = self.box
        while True:
            msg = box.take()
            if msg is not None:
                return msg
            self._check()
            if deadline.expired():  # timeout=0: what has arrived (the watchdog reads while nobody waits)
                raise deadline.error(self.what)
            if asyncio._get_running_loop() is not None:  # this thread runs a loop: it cannot run ours
                self._wake_dog()
                box.wait(deadline.slice().remaining())
                continue
            if not self._acquire(deadline):
                continue  # closed, timed out, or another runner brought requests: look again
            try:
                self._run_until_request(deadline.remaining())
            finally:
                self._release()

    async def anext(self, deadline: Deadline) -> Any:
        box = self.box
        while True:
            msg = box.take()
            if msg is not None:
                return msg
            self._check()
            if deadline.expired() or deadline.nonblocking:
                raise deadline.error(self.what)
            self._wake_dog()
            await box.await_(deadline.slice().remaining())

    def _check(self) -> None:
        if self.pid != _runtime.pid:
            raise ChannelClosed(f"{self.what}: opened in process {self.pid}; open it again after fork")
        if self.closed:
            raise ChannelClosed(f"{self.what}: closed by this process")

    def _run_until_request(self, timeout: float | None) -> None:
        if self.box or self.closed:
            return
        loop = self.loop
        timer = loop.call_later(timeout, loop.stop) if timeout is not None else None
        self._stop_on_put = True
        try:
            loop.run_forever()  # until a request, the timer, close() or a stale stop (then: again)
        finally:
            self._stop_on_put = False
            if timer is not None:
                timer.cancel()

    # -- replying --------------------------------------------------------------------------
    def reply(self, subject: str, data: bytes) -> None:
        """Publish a reply: here and now if nobody runs the loop, else posted to its runner."""
        self._check()
        here = asyncio._get_running_loop() is None
        with self._lock:
            direct = here and self._owner is None
            if direct:
                self._owner = threading.get_ident()
            else:
                self._posted += 1
                idle = self._owner is None
        if direct:
            try:
                self._publish_here(subject, data)
            finally:
                self._release()
            return
        try:
            self.loop.call_soon_threadsafe(self._publish_posted, subject, data)
        except RuntimeError:  # the loop was closed under us
            with self._lock:
                self._posted -= 1
            raise ChannelClosed(f"{self.what}: closed by this process") from None
        if idle:
            self._wake_dog()  # nobody runs the loop and this thread cannot: the watchdog sends it

    def _publish_here(self, subject: str, data: bytes) -> None:
        loop = self.loop
        done = False

        def finished() -> None:
            nonlocal done
            done = True
            loop.stop()

        def go() -> None:
            self._start_publish(subject, data)
            loop.call_soon(finished)  # queued after the flusher's wake-up: the bytes are written first

        loop.call_soon(go)
        while not done:  # a stale stop may end a run early: run again
            loop.run_forever()

    def _publish_posted(self, subject: str, data: bytes) -> None:
        self._start_publish(subject, data)
        self.loop.call_soon(self._unpost)  # after the flusher has written it

    def _unpost(self) -> None:
        with self._lock:
            self._posted -= 1

    def _start_publish(self, subject: str, data: bytes) -> None:
        nc = self.nc
        if nc is None:
            return
        try:
            task = start_now(self._publish(nc, subject, data))
        except Exception:  # at most once, like any core NATS reply
            return
        if task is not None:
            self._rest.add(task)
            task.add_done_callback(self._rest.discard)

    @staticmethod
    async def _publish(nc: Any, subject: str, data: bytes) -> None:
        with contextlib.suppress(nats.errors.Error):  # at most once, like any core NATS reply
            await nc.publish(subject, data)

    # -- who runs the loop -----------------------------------------------------------------
    def _acquire(self, deadline: Deadline) -> bool:
        """Become the loop's runner (taking it back from the watchdog); False: look again."""
        with self._lock:
            if self._owner is None:
                self._owner = threading.get_ident()
                return True
            self._waiting += 1
            try:
                while self._owner is not None:
                    if self.closed or self.box:
                        return False
                    if self._owner is _DOG and not self._stop_asked:
                        self._stop_asked = True
                        self.loop.call_soon_threadsafe(self.loop.stop)
                    rem = deadline.slice().remaining()
                    if not rem or not self._free.wait(rem):
                        if deadline.expired():
                            return False
                self._owner = threading.get_ident()
                return True
            finally:
                self._waiting -= 1

    def _release(self) -> None:
        """Give the loop up, after running whatever replies were posted to it meanwhile."""
        while True:
            with self._lock:
                if not self._posted or self.loop.is_closed():
                    self._owner = None
                    self._idle_since = time.monotonic()
                    if self._waiting:
                        self._free.notify()
                    if self.closed:
                        self._dog_cv.notify()
                    return
            self._spin()

    def _complete(self, aw: Any) -> Any:
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
                        self._complete(task)
                raise
        return task.result()

    def _spin(self) -> None:
        """Run one loop iteration on this thread (the caller owns the loop)."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def _wake_dog(self) -> None:
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
                    if self._owner is None and not self._waiting:
                        nap = GRACE
                        idle = time.monotonic() - self._idle_since
                        if self._dog_now or idle >= GRACE:
                            self._owner = _DOG
                            self._dog_now = self._stop_asked = False
                            break
                        self._dog_cv.wait(GRACE - idle)
                    else:
                        # a caller runs the loop (a next() waiting for requests): look less and less
                        # often, so an idle responder costs ~20 wake-ups a second, not 200
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
                self._release()

    # -- closing ---------------------------------------------------------------------------
    def close(self, wait: float = _CLOSE_WAIT) -> None:
        """Stop serving: a blocked next() raises ChannelClosed; the connection is closed (any thread)."""
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
                self._free.notify_all()
                self._dog_cv.notify_all()
        if first:
            _open.discard(self)
            self.box.wake()
            if running:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self.loop.stop)
        dog = self.__dict__.get("_dog")
        if dog is not None and dog is not threading.current_thread():
            dog.join(wait)

    def _shutdown(self) -> None:
        """Unsubscribe, close the connection and the loop (the caller owns the loop)."""
        loop = self.loop
        if loop.is_closed():
            return
        nc, self.nc = self.nc, None
        with contextlib.suppress(Exception):
            self._complete(self._close_nc(nc, self.sub))
        self.sub = None
        # nc.close() cancels its tasks without waiting for them: let every task left finish here,
        # or closing the loop destroys them pending ("Task was destroyed but it is pending!")
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            self._complete(asyncio.gather(*tasks, return_exceptions=True))
        with contextlib.suppress(Exception):
            self._complete(loop.shutdown_asyncgens())
        with contextlib.suppress(Exception):
            loop.close()

    @staticmethod
    async def _close_nc(nc: Any, sub: Any) -> None:
        if nc is None:
            return
        if sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
        await asyncio.wait_for(nc.close(), 2.0)


@atexit.register
def _close_all() -> None:
    for r in list(_open):
        if r.pid == os.getpid():
            r.close(wait=2.0)
