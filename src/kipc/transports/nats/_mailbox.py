"""Batched hand-off between the loop thread and callers: a FIFO and a kick.

Moving each message across threads with ``run_coroutine_threadsafe`` costs a
future, a self-pipe write and a thread switch per message; that was most of
the gap to raw nats-py. Instead:

* :class:`Mailbox` -- the loop thread appends what arrived (pulled messages,
  Topic messages, requests); callers take from it directly on their own thread
  or loop, with no hop while it is non-empty. Waiting (``wait`` / ``await_``)
  consumes nothing, so a caller's timeout or cancellation while waiting loses
  nothing: the message stays for the next caller.
* :class:`Pump` -- callers append work (publishes, acks) to plain deques and
  *kick*; one loop-side task drains everything queued so far. A kick costs a
  ``call_soon_threadsafe`` only when the pump is idle, so a burst of sends
  crosses threads once per batch, not once per message.

* :class:`Express` -- for work a caller then waits on (a request, a reply a
  requester waits for): one ``call_soon_threadsafe`` per burst runs the send
  *in that same loop iteration*, stepping the coroutine by hand up to its first
  suspension (:func:`start_now`) instead of waking a task through an event,
  which costs a loop iteration and three futures more per round trip.
  nats-py's ``publish`` normally finishes without suspending (it appends to
  the client's buffer and wakes its flusher); only when it must wait (outbound
  buffer full) does the rest continue as a task, tracked and cancelled on
  ``stop``. Sends from one kick may overlap those of a suspended earlier one:
  fine for independent messages (requests, replies), not for ordered streams
  (those use the Pump).

A Mailbox filled on the loop thread from a subscription callback can be told
its ``loop``: then a ``put`` there wakes waiters once per loop iteration (a
coalesced ``call_soon``) instead of once per message. nats-py hands a whole
socket read of messages to the callback back to back, so a caller blocked in
``recv`` wakes once per batch rather than ping-ponging the GIL with the loop
thread on every message (most of Topic's gap to raw pub/sub).

Lost wake-ups are avoided the classic way: a waiter registers before it looks,
a putter appends before it looks for waiters (sequentially consistent under
the GIL; registering is a list append, atomic under the GIL). No lock is held
across a wait, so a Ctrl-C landing anywhere in it leaves nothing held.
"""

from __future__ import annotations

import _thread
import asyncio
import collections.abc
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["Express", "Mailbox", "Pump", "start_now"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Mailbox:
    """A FIFO filled by one side and taken by any thread or event loop (see the module docstring)."""

    def __init__(self, limit: int | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.dropped = 0
        self._loop = loop  # puts on this loop's thread wake waiters once per iteration
        self._wake_due = False
        # Waiters register a lock of their own (held: wake() releases it) in plain lists: list
        # appends and removals are atomic under the GIL, so no shared lock is ever held where a
        # Ctrl-C can land. (A threading.Condition here deadlocked: a KeyboardInterrupt inside
        # Condition.wait's Python code could leave its lock held, and close()'s wake() then
        # waited for it forever.)
        self._sync_waiters: list[Any] = []
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def waiting(self) -> int:
        """How many callers wait right now (demand: a reason to pull more)."""
        return len(self._sync_waiters) + len(self._async_waiters)

    def put(self, item: Any) -> bool:
        """Append (any thread); False (and counted in ``dropped``) when ``limit`` is reached."""
        if self.limit is not None and len(self.items) >= self.limit:
            self.dropped += 1
            return False
        self.items.append(item)
        if self._sync_waiters or self._async_waiters:
            self._wake_soon()
        return True

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is None or not _on_loop_thread(loop):
            self.wake()
        elif not self._wake_due:
            self._wake_due = True
            loop.call_soon(self._deferred_wake)

    def _deferred_wake(self) -> None:
        self._wake_due = False
        self.wake()

    def put_many(self, items: list[Any]) -> None:
        if self.limit is not None:
            room = max(0, self.limit - len(self.items))
            if room < len(items):
                self.dropped += len(items) - room
                items = items[:room]
        self.items.extend(items)
        if items and (self._sync_waiters or self._async_waiters):
            self.wake()

    def push_front(self, items: list[Any]) -> None:
        """Give items back at the head, in order (a caller that took more than it used)."""
        self.items.extendleft(reversed(items))
        if items and (self._sync_waiters or self._async_waiters):
            self.wake()

    def take(self) -> Any:
        """The oldest item, or None (never blocks)."""
        try:
            return self.items.popleft()
        except IndexError:
            return None

    def take_many(self, n: int) -> list[Any]:
        items = self.items
        out = []
        with contextlib.suppress(IndexError):
            for _ in range(n):
                out.append(items.popleft())
        return out

    def wake(self) -> None:
        """Wake every waiter (new items, a state change, or close)."""
        for lock in list(self._sync_waiters):
            with contextlib.suppress(RuntimeError):  # released already (by another wake)
                lock.release()
        for entry in list(self._async_waiters):
            with contextlib.suppress(ValueError):
                self._async_waiters.remove(entry)
            loop, fut = entry
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_wake, fut)

    def wait(self, timeout: float | None) -> None:
        """Block until items are there, ``wake()`` is called, or ``timeout`` passes (consumes nothing)."""
        lock = _thread.allocate_lock()
        lock.acquire()
        self._sync_waiters.append(lock)  # registered before looking: a put after the look wakes it
        try:
            if not self.items:
                lock.acquire(True, -1 if timeout is None else timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._sync_waiters.remove(lock)

    async def await_(self, timeout: float | None) -> None:
        """``wait`` for an event loop (any loop, any thread); cancellation consumes nothing."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        self._async_waiters.append(entry)  # registered before looking, as wait() does
        if self.items:
            with contextlib.suppress(ValueError):
                self._async_waiters.remove(entry)
            return
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._async_waiters.remove(entry)


class Pump:
    """One task on the loop that runs ``drain()`` whenever a caller kicks (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, drain: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._loop = loop
        self._drain = drain
        self._kicked = False
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.stopped = False

    def start(self) -> None:
        """Call on the loop thread."""
        self._event = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def kick(self) -> None:
        """Ask for a drain (any thread). Cheap when a drain is already due."""
        if self._kicked or self.stopped:
            return
        self._kicked = True
        ev = self._event
        if ev is None:
            return
        try:
            if _on_loop_thread(self._loop):
                ev.set()
            else:
                self._loop.call_soon_threadsafe(ev.set)
        except RuntimeError:  # the loop has shut down (interpreter exit)
            self.stopped = True

    async def _run(self) -> None:
        assert self._event is not None
        while not self.stopped:
            await self._event.wait()
            self._event.clear()
            self._kicked = False  # before draining: a kick from now on is seen by the next round
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # a drain reports its own errors; the pump must outlive them
                await asyncio.sleep(0.05)
                self.kick()

    async def stop(self) -> None:
        self.stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class _Rest(collections.abc.Coroutine[Any, Any, Any]):
    """The rest of a coroutine that :func:`start_now` ran up to its first suspension, as a
    coroutine a Task can drive: its first step hands the Task what the coroutine waits on;
    every later send, and every throw (cancellation, even before the Task's first step), goes
    straight to the coroutine, exactly as if the Task had run it from the start."""

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield from self._coro.__await__())


def start_now(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` now, on the loop thread, up to its first suspension; None if it finished.

    Only a coroutine that really waits becomes a Task (returned: keep a reference). Call from
    a callback on the running loop; exceptions raised before the first suspension propagate.
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_Rest(coro, first))


class Express:
    """Run ``send()`` on the loop in the iteration after a kick, eagerly (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._loop = loop
        self._send = send
        self._due = False
        self._rest: set[asyncio.Task[Any]] = set()  # sends that had to wait, still running
        self.stopped = False

    def kick(self) -> None:
        """Ask for a send (any thread, the loop's included). One wake-up while one is due."""
        if self._due or self.stopped:
            return
        self._due = True
        try:
            self._loop.call_soon_threadsafe(self._go)
        except RuntimeError:  # the loop has shut down (interpreter exit)
            self.stopped = True

    def _go(self) -> None:
        self._due = False  # before sending: a kick from now on gets its own round
        if self.stopped:
            return
        task = start_now(self._send())
        if task is not None:
            self._rest.add(task)
            task.add_done_callback(self._rest.discard)

    async def stop(self) -> None:
        self.stopped = True
        for task in list(self._rest):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
