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
  (5 ms: a handler at work), so server PINGs are answered, reconnects happen and
  buffered publishes are flushed while a slow handler runs; ``next()`` takes it back.
  The runner rules, the watchdog, ``close()`` from any thread and the fork refusal
  are ``_driven`` (shared with the default requester, ``_requester``).
* ``anext()`` (and a sync ``next()`` on a thread that already runs an event loop)
  cannot run the private loop there: it wakes the watchdog at once and waits on the
  mailbox, as the shared path does.
* ``close()`` (any thread): a blocked ``next()`` raises ``ChannelClosed``; the
  watchdog unsubscribes and closes the connection. A forked child refuses the
  parent's responder (``ChannelClosed``).

The price: one more server connection per responder object (the conventional shape
of a NATS service: each instance connects once and joins the queue group), and one
watchdog thread per responder that wakes every 5-50 ms while it is not running the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors

from ..._base import Deadline
from ._driven import GRACE, Driven
from ._mailbox import Mailbox

__all__ = ["GRACE", "Responder"]


class Responder(Driven):
    """One responder's connection, private loop and watchdog (see the module docstring)."""

    dog_name = "kipc-nats-responder"

    def __init__(self, what: str, subject: str, queue: str, limit: int,
                 connect: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        super().__init__(what)
        self.box = Mailbox(limit)
        self._stop_on_put = False  # a next() runs the loop: a request ends its run
        try:
            self.nc = self.complete(connect())
            self.sub = self.complete(self._subscribe(subject, queue, limit))
        except BaseException:
            self._failed()
            raise
        self._started()

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
            self.check()
            if deadline.expired():  # timeout=0: what has arrived (the watchdog reads while nobody waits)
                raise deadline.error(self.what)
            if asyncio._get_running_loop() is not None:  # this thread runs a loop: it cannot run ours
                self.wake_dog()
                box.wait(deadline.slice().remaining())
                continue
            if not self.acquire(deadline, lambda: bool(box)):
                continue  # closed, timed out, or another runner brought requests: look again
            try:
                self._run_until_request(deadline.remaining())
            finally:
                self.release()

    async def anext(self, deadline: Deadline) -> Any:
        box = self.box
        while True:
            msg = box.take()
            if msg is not None:
                return msg
            self.check()
            if deadline.expired() or deadline.nonblocking:
                raise deadline.error(self.what)
            self.wake_dog()
            await box.await_(deadline.slice().remaining())

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
        self.check()
        if not self.try_own():
            self.post(self._start_publish, subject, data)
            return
        try:
            self._publish_here(subject, data)
        finally:
            self.release()

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

    def _start_publish(self, subject: str, data: bytes) -> None:
        nc = self.nc
        if nc is None:
            return
        with contextlib.suppress(Exception):  # at most once, like any core NATS reply
            self.spawn(self._publish(nc, subject, data))

    @staticmethod
    async def _publish(nc: Any, subject: str, data: bytes) -> None:
        with contextlib.suppress(nats.errors.Error):  # at most once, like any core NATS reply
            await nc.publish(subject, data)

    # -- closing ---------------------------------------------------------------------------
    def _closing(self) -> None:
        self.box.wake()

