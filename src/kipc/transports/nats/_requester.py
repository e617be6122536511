"""A channel handle's own request connection, driven by the requesting threads: no thread crossing.

Through the process's loop thread a sync ``request()`` crosses threads twice (the caller
wakes the loop thread to publish, the loop thread wakes the caller with the reply), which
raw nats-py, on one event loop, never does. A :class:`Requester` is one nats-py
connection per channel handle (made at its first sync request) on a private event loop
run by the requesting threads themselves, one at a time (``_driven``: the runner rules,
the watchdog, ``close()`` from any thread, the fork refusal):

* The replies come to one inbox subscription (``<inbox>.<token>``); each request
  registers its token first, so a reply finds its waiter (a reply for a token nobody
  waits for any more -- timed out, closed -- is dropped).
* A request while nobody runs the loop: the calling thread becomes the runner,
  publishes, and runs the loop until its reply (the reply callback stops the loop)
  or its timeout (a timer stops it): published, flushed and read on that thread.
* A request while another thread runs the loop (a concurrent request, or the
  watchdog): its publish is posted to the runner (``Driven.post``: run before the
  runner gives the loop up), and the thread waits on its own condition for its
  reply -- the runner's reply callback notifies it -- or for the loop to be free:
  a runner that leaves hands the loop to a waiting thread, which runs it until
  its own reply. So every reply reaches its own caller and no request waits for a
  runner that is gone. The watchdog's run is taken back (asked to stop).
* While nobody requests, the watchdog runs the loop (after ``GRACE``): server PINGs
  are answered and a dropped connection reconnects (nats-py, reconnecting forever)
  while the handle sits idle.
* A reply with ``Status: 503`` (nobody listens) raises the channel's no-responder
  error; a publish that fails raises the channel's translation of it. Not retried:
  the responder may have acted on it.
* ``close()`` (any thread) ends a waiting request with ``ChannelClosed`` at once.
  A thread that runs an event loop of its own cannot run this one: the channel
  sends its requests the shared way.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors

from ..._base import Deadline
from ...errors import KipcError
from ._driven import Driven

__all__ = ["Requester"]


class _Wait:
    """One request waiting for its reply (``done`` is set by the loop's runner, under the lock)."""

    __slots__ = ("cv", "data", "done", "error", "ident")

    def __init__(self, cv: threading.Condition) -> None:
        self.cv = cv  # this thread's condition on the Requester's lock
        self.ident = threading.get_ident()
        self.data = b""
        self.error: KipcError | None = None
        self.done = False


class Requester(Driven):
    """One handle's request connection, private loop and watchdog (see the module docstring)."""

    dog_name = "kipc-nats-requester"

    def __init__(self, what: str, subject: str, connect: Callable[[], Coroutine[Any, Any, Any]],
                 no_responder: Callable[[], KipcError], failed: Callable[[BaseException], KipcError]) -> None:
        super().__init__(what)
        self.subject = subject
        self._no_responder = no_responder
        self._translate = failed
        self._waits: dict[str, _Wait] = {}
        self._tokens = itertools.count(1)
        self._mine = threading.local()  # .cv: this thread's condition (one per thread, reused)
        try:
            self.nc = self.complete(connect())
            self._dot = self.nc.new_inbox() + "."
            # no flush: this SUB reaches the server before any request published after it
            self.sub = self.complete(self.nc.subscribe(self._dot + "*", cb=self._on_reply))
        except BaseException:
            self._failed()
            raise
        self._started()

    def request(self, data: bytes, wait: Deadline) -> bytes | None:
        """Publish ``data`` and return the reply's bytes; None: no reply within ``wait``."""
        self.check()
        cv = getattr(self._mine, "cv", None)
        if cv is None:
            cv = self._mine.cv = threading.Condition(self._lock)
        w = _Wait(cv)
        token = str(next(self._tokens))
        waits = self._waits
        waits[token] = w
        try:
            if self.try_own():
                try:
                    self.loop.call_soon(self._send, token, data)  # first thing in the run below
                    self._run_until(w, wait)
                finally:
                    self.release()
            else:
                self.post(self._send, token, data)
            while not w.done:
                self.check()
                if wait.expired():
                    return None
                if not self.acquire(wait, lambda: w.done, cv):
                    continue  # answered, closed or timed out meanwhile: look again
                try:
                    self._run_until(w, wait)
                finally:
                    self.release()
        finally:
            waits.pop(token, None)
        if w.error is not None:
            raise w.error
        return w.data

    def _run_until(self, w: _Wait, wait: Deadline) -> None:
        """Run the loop on this thread until ``w`` is answered, ``wait`` expires or close()."""
        loop = self.loop
        while not w.done and not self.closed:
            rem = wait.remaining()
            if rem is not None and rem <= 0:
                return
            timer = loop.call_later(rem, loop.stop) if rem is not None else None
            try:
                loop.run_forever()  # until the reply, the timer, close() or a stale stop (then: again)
            finally:
                if timer is not None:
                    timer.cancel()

    def _send(self, token: str, data: bytes) -> None:
        """Start the publish (on the loop, by its runner); nats-py's flusher writes it."""
        nc = self.nc
        if nc is None:
            return  # closing: the waiter raises ChannelClosed
        try:
            self.spawn(self._publish(nc, token, data))
        except Exception as e:
            self._finish(token, b"", self._translate(e))

    async def _publish(self, nc: Any, token: str, data: bytes) -> None:
        try:
            await nc.publish(self.subject, data, reply=self._dot + token)
        except (nats.errors.Error, OSError) as e:
            self._finish(token, b"", self._translate(e))

    async def _on_reply(self, msg: Any) -> None:
        token = msg.subject[len(self._dot):]
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            self._finish(token, b"", self._no_responder())
        else:
            data = msg.data
            self._finish(token, data if type(data) is bytes else bytes(data))

    def _finish(self, token: str, data: bytes, error: KipcError | None = None) -> None:
        """Hand a reply (or an error) to its waiter, on the loop: stop the loop if the runner
        waits for it, else wake its thread."""
        w = self._waits.pop(token, None)
        if w is None:
            return  # timed out, or closed: nobody waits for it
        w.data, w.error = data, error
        if w.ident == threading.get_ident():  # the loop's runner is the thread waiting for it
            w.done = True
            self.loop.stop()
            return
        with self._lock:
            w.done = True
            w.cv.notify_all()  # that thread waits in acquire(); its condition is its own

