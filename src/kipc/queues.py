"""``kipc.Queue`` / ``JoinableQueue`` / ``SimpleQueue``: multiprocessing's queues on the ring.

Contract card:

* Drop-in: same constructors (``Queue(maxsize=0, *, ctx=None)``) and methods as
  ``multiprocessing``'s (``put/get`` with ``block``/``timeout``,
  ``put_nowait/get_nowait``, ``qsize/empty/full``, ``close``, ``join_thread``,
  ``cancel_join_thread``, ``task_done/join``), raising ``queue.Full`` /
  ``queue.Empty``. Objects are pickled (these queues are private to a process
  tree, so pickle is their contract). ``maxsize`` counts items.
* Sharing: works with ``multiprocessing.Process`` under fork, spawn and
  forkserver, and through ``os.fork``. A queue pickles to its name: the
  receiving process attaches to the same shared-memory ring.
* Better than the stdlib, on purpose: a pickling error raises at ``put()``
  (not later in a feeder thread); a producer or consumer killed mid-operation
  neither wedges the queue nor delivers a torn object; ``qsize()`` works
  everywhere. As in the stdlib, ``put()`` on an unbounded queue never blocks:
  when the ring (``capacity`` bytes, default 4 MiB) is full, objects wait in
  this process's buffer and a feeder thread moves them in order; the buffer is
  flushed at exit unless ``cancel_join_thread()`` was called.
* Extra keywords: ``capacity=`` (ring bytes), ``name=`` (shm name, default a
  random one), ``spin=`` (µs a waiter spins before sleeping).

Cleanup (who removes ``/dev/shm/kipc.ring.NAME``): only the creating process.
When the creator's queue object is garbage collected and every pickled copy
has attached (a counter in the ring header), the name is removed at once;
otherwise at the creator's exit. Attached processes keep their mapping, so
they keep working after the name is gone. A creator killed by SIGKILL leaves
an owner record that ``kipc gc`` uses to remove the ring. The stdlib resource
tracker is not involved (it unlinks segments that others still use).
"""

from __future__ import annotations

import atexit
import collections
import os
import pickle
import queue
import secrets
import threading
import weakref
from typing import Any, Generic, TypeVar

from ._base import FOREVER, Deadline
from .errors import ChannelClosed, DeadlineExceeded, InvalidArgument
from .transports.ring import DEFAULT_SPIN_US, RingChannel

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

DEFAULT_QUEUE_CAPACITY = 4 << 20  # a 1 MiB object still travels as one record
_HIGHEST = pickle.HIGHEST_PROTOCOL
_dumps, _loads = pickle.dumps, pickle.loads
_FEED_SLICE = 0.1

# Rings whose creator object is gone but a pickled copy may still attach: removed at exit.
_deferred: set[RingChannel] = set()


def _unlink_at_exit() -> None:
    for ch in list(_deferred):
        _release(ch)
    _deferred.clear()


atexit.register(_unlink_at_exit)


def _release(ch: RingChannel) -> None:
    if ch.owner and ch._pid == os.getpid():
        ch.unlink()


def _finalize(ch: RingChannel) -> None:
    """The creator's queue object went away: remove the name now if nobody can still need it."""
    if ch.owner and ch._pid == os.getpid() and ch._ring.add_pending(0) == 0:
        ch.unlink()
        _deferred.discard(ch)
    # else: a pickled copy has not attached yet; _unlink_at_exit removes it


def _deadline(block: bool, timeout: float | None) -> Deadline:
    """multiprocessing's (block, timeout) as the ring's deadline (FOREVER, or timeout 0 = one try)."""
    if not block:
        return Deadline(0)
    if timeout is None:
        return FOREVER
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    return Deadline(max(0.0, float(timeout)))


#: the item type (like typeshed's multiprocessing.Queue[T]): ``q: kipc.Queue[int] = kipc.Queue()``
_T = TypeVar("_T")


class Queue(Generic[_T]):
    """A process-shared FIFO queue, API-compatible with ``multiprocessing.Queue``."""

    _joinable = False

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, capacity: int | str = DEFAULT_QUEUE_CAPACITY,
                 name: str | None = None, spin: float = DEFAULT_SPIN_US) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be int, not {type(maxsize).__name__}")
        name = name or f"mpq-{os.getpid()}-{secrets.token_hex(6)}"
        ch = RingChannel(name, create=True, capacity=capacity, spin=spin)
        self._setup(ch, maxsize if maxsize > 0 else 0)
        weakref.finalize(self, _finalize, ch).atexit = False  # exit is _unlink_at_exit's job
        _deferred.add(ch)  # until collected, the creator's exit removes it

    def _setup(self, ch: RingChannel, maxsize: int) -> None:
        self._ch = ch
        self._ring = ch._ring
        self._try_send, self._recv = ch._ring.try_send, ch._ring.recv
        self._fast_put = maxsize == 0 and not self._joinable
        self._maxsize = maxsize
        self._closed = False
        self._lock = threading.Lock()  # guards the overflow buffer and the feeder
        self._buffer: collections.deque[bytes] = collections.deque()
        self._feeder: threading.Thread | None = None
        self._joincancelled = False
        _all.add(self)

    def _after_fork(self) -> None:
        # The child must not re-feed the parent's buffered objects (they are the parent's to send).
        self._lock = threading.Lock()
        self._buffer = collections.deque()
        self._feeder = None

    # -- pickling: attach by name ------------------------------------------------------
    def __getstate__(self) -> tuple[str, int, float]:
        self._check_closed()
        self._ring.add_pending(1)
        return (self._ch.name, self._maxsize, self._ch.spin)

    def __setstate__(self, state: tuple[str, int, float]) -> None:
        name, maxsize, spin = state
        ch = RingChannel(name, spin=spin)
        ch._ring.add_pending(-1)
        self._setup(ch, maxsize)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ch.url} maxsize={self._maxsize}>"

    # -- the API -------------------------------------------------------------------------
    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        if self._closed:
            self._check_closed()
        data = _dumps(obj, _HIGHEST)  # a pickling error raises here, in the caller
        if self._fast_put and not self._buffer and self._try_send(data):  # unbounded, not joinable
            return
        deadline = _deadline(block, timeout)
        if self._joinable:
            self._ring.task_add(1)
        try:
            if self._maxsize == 0:
                self._put_unbounded(data)
            else:
                self._ring.send(data, deadline, None, self._maxsize)
        except DeadlineExceeded:
            if self._joinable:
                self._ring.task_add(-1)
            raise queue.Full from None
        except BaseException:
            if self._joinable:
                self._ring.task_add(-1)
            raise

    def _put_unbounded(self, data: bytes) -> None:
        if not self._buffer and self._try_send(data):
            return
        with self._lock:  # the ring is full: keep order through the buffer, never block
            self._buffer.append(data)
            if self._feeder is None:
                self._feeder = threading.Thread(target=self._feed, name="kipc.Queue feeder", daemon=True)
                self._feeder.start()
                _feeders.add(self)

    def _feed(self) -> None:
        while True:
            with self._lock:
                if not self._buffer:
                    self._feeder = None
                    _feeders.discard(self)
                    return
                data = self._buffer[0]
            try:
                self._ring.send(data, Deadline(_FEED_SLICE))
            except DeadlineExceeded:
                if self._joincancelled and _exiting:
                    return
                continue
            except ChannelClosed:
                return
            with self._lock:
                self._buffer.popleft()

    def put_nowait(self, obj: _T) -> None:
        self.put(obj, False)

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        if self._closed:
            self._check_closed()
        try:
            # view=2: big messages come back as a view into the ring (one copy fewer)
            data = self._recv(FOREVER if block and timeout is None else _deadline(block, timeout), None, 2)
        except DeadlineExceeded:
            raise queue.Empty from None
        if data.__class__ is bytes:
            return _loads(data)
        with data:  # a memoryview into the ring: released (consumed) after unpickling
            obj = _loads(data)
        self._ring.qsize()  # raises BadObject if the ring was truncated under the view (it read zeros)
        return obj

    def get_nowait(self) -> _T:
        return self.get(False)

    def qsize(self) -> int:
        """Items in the queue (including this process's not yet fed ones)."""
        return int(self._ring.qsize()) + len(self._buffer)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    def close(self) -> None:
        """This process will put and get no more (the queue lives on for the others)."""
        self._closed = True

    def join_thread(self) -> None:
        """Wait until this process's buffered objects are in the ring (after ``close()``)."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        feeder = self._feeder
        if feeder is not None and not self._joincancelled:
            feeder.join()

    def cancel_join_thread(self) -> None:
        """Do not wait for buffered objects at exit (they may be lost)."""
        self._joincancelled = True


class JoinableQueue(Queue[_T]):
    """``Queue`` plus ``task_done()`` / ``join()``; the unfinished count lives in the ring header."""

    _joinable = True

    def task_done(self) -> None:
        self._ring.task_done()

    def join(self, timeout: float | None = None) -> bool:
        """Block until every item put has been ``task_done()``'d (``timeout``: a kipc extension)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise InvalidArgument(f"timeout {timeout!r} must be None or >= 0")
        return bool(self._ring.join(FOREVER if timeout is None else Deadline(float(timeout))))


class SimpleQueue(Generic[_T]):
    """``multiprocessing.SimpleQueue`` on the ring: ``put``, ``get``, ``empty``, ``close``."""

    def __init__(self, *, ctx: Any = None, capacity: int | str = DEFAULT_QUEUE_CAPACITY,
                 name: str | None = None, spin: float = DEFAULT_SPIN_US) -> None:
        self._q: Queue[_T] = Queue(ctx=ctx, capacity=capacity, name=name, spin=spin)
        self._closed = False

    def __getstate__(self) -> Queue:
        return self._q

    def __setstate__(self, q: Queue) -> None:
        self._q = q
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: _T) -> None:
        self._check()
        self._q.put(obj)

    def get(self) -> _T:
        self._check()
        return self._q.get()

    def empty(self) -> bool:
        self._check()
        return self._q.empty()

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"<SimpleQueue {self._q._ch.url}>"


# -- flushing at exit (like the stdlib's feeder join) -----------------------------------
_feeders: weakref.WeakSet[Queue] = weakref.WeakSet()
_exiting = False


def _flush_feeders() -> None:
    global _exiting
    _exiting = True
    for q in list(_feeders):
        feeder = q._feeder
        if feeder is not None and not q._joincancelled:
            feeder.join()


_all: weakref.WeakSet[Queue] = weakref.WeakSet()


class _Hook:
    pass


_hook = _Hook()


def _register_flush(_: object = None) -> None:
    # multiprocessing children leave through util._exit_function + os._exit (no atexit);
    # its finalizers run in the parent (via atexit) and in children, where the registry
    # is cleared after fork, hence the re-registration after each fork.
    from multiprocessing import util

    util.Finalize(None, _flush_feeders, exitpriority=-5)


def _reset_after_fork() -> None:
    global _exiting
    _exiting = False
    _feeders.clear()
    for q in list(_all):
        q._after_fork()


def _install_hooks() -> None:
    from multiprocessing import util

    _register_flush()
    util.register_after_fork(_hook, _register_flush)
    os.register_at_fork(after_in_child=_reset_after_fork)


_install_hooks()
