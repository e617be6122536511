"""The Channel template: the one home of the channel contract.

``send``/``recv``/``asend``/``arecv`` (and a listener's ``accept``/``aaccept``)
are written once, here. A transport implements small hooks:

* ``_try_send(data, knobs) -> bool`` -- a non-blocking attempt: True once the
  whole message is accepted, False when the channel is full right now.
* ``_try_recv(knobs) -> bytes | memoryview | None`` -- a non-blocking attempt:
  None when nothing is there right now.
* ``_wait_fd(op) -> int | None`` -- an fd that polls ready when an attempt in
  direction ``op`` ("send"/"recv") may succeed; or
* ``_wait(op, deadline)`` -- for transports without such an fd: block until an
  attempt may succeed, the deadline passes, or ``close()`` interrupts. It
  consumes nothing and holds no lock another process needs.
* ``_ready(op) -> bool`` -- a non-blocking probe (for :func:`kipc.wait`).
* optionally exactly one blocking path per direction,
  ``_send_blocking(data, deadline, knobs)`` / ``_recv_blocking(deadline, knobs)``
  (the default loops over the hooks above under a per-direction lock);
* optionally ``_fast_calls() -> (send, recv)``: C callables that do the whole
  untimed-or-plainly-timed call for plain bytes and hand any other call to
  ``Channel.send``/``Channel.recv`` unchanged; the template installs them on the
  instance while the hot path holds (default codec, open, methods not
  overridden) and removes them when it stops (the ring: no Python frame per call).
* ``_close()`` (release this process's handles), ``_unlink()`` (remove the
  object; called for the creator only), ``_interrupt()`` (wake this process's
  threads blocked on this handle; the default wakes fd waits).

What every transport then guarantees:

* ``timeout=None`` blocks, ``0`` never blocks (:class:`WouldBlock`), ``t`` waits
  at most ``t`` seconds (:class:`Timeout`). A timed-out call leaves the
  channel unchanged. :class:`Deadline` is the only form of time below this
  line; C code receives the absolute deadline (``Deadline.end``).
* A message larger than ``max_message_size`` raises :class:`MessageTooLarge`
  naming both numbers, before anything is written. A knob the mechanism cannot
  honour raises :class:`Unsupported`; an unknown keyword raises ``TypeError``.
* **Threads.** Any number of threads may send and receive on one channel at
  once: every message arrives whole and exactly once (the template serialises
  each direction with a lock where the mechanism needs it). ``close()`` from
  any thread wakes the threads blocked on that handle within 100 ms with
  :class:`ChannelClosed` ("closed by this process"); nothing they use is freed
  under them.
* **asyncio.** ``asend``/``arecv`` wait for readiness first (``add_reader`` /
  ``add_writer`` on the kernel fd, else ``_wait`` in a kipc worker thread, in
  slices) and then make the non-blocking attempt on the loop thread, so
  cancellation at any await loses no message, and a cancelled ``asend`` has
  not sent. ``async with`` and ``async for`` work on channels and listeners.
* **Ownership.** ``close()`` is idempotent and safe after a half-failed
  ``__init__`` (class level defaults). The creating *process* (pid + start
  time) removes a named object on close unless ``persist=True``; a forked
  child's ``close()`` only releases its handles. Openers never remove.
* Blocking waits retry on EINTR with the remaining time, and Ctrl-C
  (``KeyboardInterrupt``) gets through.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import math
import os
import select
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self

if TYPE_CHECKING:
    # For type checkers only (typeshed ships these stubs; typing_extensions is no runtime dependency):
    # a TypeVar default (PEP 696, typing 3.13) and Buffer (collections.abc 3.12).
    from typing_extensions import Buffer, TypeVar
else:
    from typing import TypeVar

    Buffer = memoryview

from . import _owners
from ._naming import ParsedURL, format_seconds, merge_query, validate_timeout
from ._objects import CreateMode
from .codecs import Codec, get_codec
from .errors import ChannelClosed, MessageTooLarge, PermissionDenied, Timeout, Unsupported, WouldBlock

__all__ = ["FOREVER", "KNOWN_KNOBS", "Channel", "CreateMode", "Deadline", "Listener", "Resource", "wait_pool"]


#: The message type of a channel: ``bytes`` with the default codec, ``object`` with json/msgpack/pickle.
if TYPE_CHECKING:
    T = TypeVar("T", default=bytes)
else:
    T = TypeVar("T")

#: Mechanism knobs some transport understands. Asking a transport for one it
#: does not support is ``Unsupported``; anything else is a ``TypeError``.
KNOWN_KNOBS = frozenset({"type", "priority", "view"})

R = TypeVar("R")  # what a _take/_atake attempt returns
_monotonic = time.monotonic
_BYTES = get_codec(None)
_INF = math.inf
#: the longest a thread-based async wait (or a close-interruptible wait) runs
#: before it re-checks cancellation, closing and the deadline
ASYNC_SLICE = 0.05
#: how long close() waits for in-flight calls on other threads to leave
_CLOSE_GRACE = 2.0


class Deadline:
    """A validated timeout turned into an absolute monotonic deadline (``end``, ``inf`` = never)."""

    __slots__ = ("end", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = _INF if timeout is None else _monotonic() + timeout

    @classmethod
    def of(cls, timeout: object) -> Deadline:
        return cls(validate_timeout(timeout))

    @property
    def blocking(self) -> bool:
        return self.timeout is None

    @property
    def nonblocking(self) -> bool:
        return self.timeout == 0

    def remaining(self) -> float | None:
        """Seconds left (>= 0), or None for no deadline."""
        if self.timeout is None:
            return None
        return max(0.0, self.end - _monotonic())

    def remaining_ms(self) -> int | None:
        """Milliseconds left rounded up, for poll(); None = infinite (-1 in poll terms)."""
        r = self.remaining()
        return None if r is None else math.ceil(r * 1000)

    def slice(self, most: float = ASYNC_SLICE) -> Deadline:
        """A deadline no later than this one and at most ``most`` seconds away."""
        r = self.remaining()
        return Deadline(most if r is None else min(most, r))

    def expired(self) -> bool:
        return self.timeout is not None and _monotonic() >= self.end

    def error(self, what: str) -> Timeout | WouldBlock:
        """The error to raise when this deadline passes: WouldBlock for timeout=0."""
        if self.timeout == 0:
            return WouldBlock(f"{what} would block (timeout=0)")
        return Timeout(f"{what} timed out after {format_seconds(self.timeout)} s")


#: the deadline of an untimed call (immutable by convention: never assign to it)
FOREVER = Deadline(None)

#: send/recv accept a float or int timeout in (0, _TIMEOUT_MAX] without validate_timeout (the timed
#: hot path); 0, bools, NaN, negatives and absurd values take the validating path and its errors.
_TIMEOUT_MAX = threading.TIMEOUT_MAX


def lock_within(lock: Any, deadline: Deadline) -> bool:
    """Acquire a threading lock no later than ``deadline``."""
    if deadline.end == _INF:
        return bool(lock.acquire())
    if deadline.timeout == 0:
        return bool(lock.acquire(False))
    return bool(lock.acquire(True, max(0.0, deadline.end - _monotonic())))


#: Threads this process started besides the main one (``_thread._count``: every thread
#: Python starts, threading's or not). 0 means no other thread can be inside a call.
other_threads = _thread._count


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def wait_pool() -> concurrent.futures.ThreadPoolExecutor:
    """kipc's own threads for async waits that have no fd (rings, SysV objects).

    Separate from the loop's default executor so that many pending ``arecv``
    calls cannot starve the user's ``to_thread`` work (or the other way round).
    """
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="kipc-wait")
    return _POOL


def _forget_pool() -> None:
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()  # the parent's threads do not exist in a child


os.register_at_fork(after_in_child=_forget_pool)
_CLOSE_LOCK = threading.Lock()


class Resource:
    """Lifetime plumbing shared by every kipc object (channels, listeners, segments, semaphores).

    * ``close()`` is idempotent, thread-safe and safe after a half-failed
      ``__init__`` (class defaults). It marks the object closed, calls
      ``_interrupt()`` (wake this process's threads blocked on it), waits for
      in-flight calls to leave (``_quiesce``), then ``_close()``.
    * Ownership belongs to the creating process: ``owner = True`` (set by the
      subclass right after it created the object) records this process's pid
      and start time. Only a close in that process removes the object
      (``_unlink``), unless ``persist`` is set, in which case the owner record
      is dropped so ``kipc gc`` leaves it alone. A forked child inherits the
      handle but not the ownership: its close releases and removes nothing.
      Openers never remove; ``unlink()`` by a non-owner is ``PermissionDenied``
      (after the creator's own close or unlink it is a no-op).
    * A finalizer releases handles but never removes anything.
    """

    url: str = "<unopened>"
    _closed: bool = True  # class default: close() is safe after a failed __init__
    _owner: tuple[int, int | None] | None = None  # (pid, start time) of the creating process
    _removed: bool = False  # the creator already removed the object (close or unlink)
    persist: bool = False  # creator keeps the object after close()
    _record_url: str = ""  # the URL of the owner record, when it differs from url

    @property
    def owner(self) -> bool:
        """True in the process that created the named object (and will remove it)."""
        own = self._owner
        return own is not None and own[0] == os.getpid() and own == _owners.self_owner()

    @owner.setter
    def owner(self, value: bool) -> None:
        self._owner = _owners.self_owner() if value else None

    @property
    def closed(self) -> bool:
        return self._closed

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> Any:
        """Called by ``kipc.open``/``kipc.listen``: by default ``cls(url, **options)``, query merged in."""
        return cls(parsed.url, **merge_query(parsed, options))  # type: ignore[call-arg]

    def _check_open(self, op: str) -> None:
        if self._closed:
            raise ChannelClosed(f"{op} on {self.url}: closed by this process")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release this process's handles; the creating process also removes the object (unless persist)."""
        if self._closed:
            return
        with _CLOSE_LOCK:
            if self._closed:
                return
            self._closed = True
        try:
            self._interrupt()
            held = self._quiesce()
            try:
                self._close()
            finally:
                for lock in held:
                    lock.release()
        finally:
            self._release_ownership()

    def _release_ownership(self) -> None:
        owner = self.owner
        self._owner = None
        if not owner:
            return  # an opener, or a forked child of the creator: it removes nothing
        self._removed = True
        if self.persist:
            _owners.forget(self._record_url or self.url)
        else:
            self._unlink()

    def unlink(self) -> None:
        """Remove the named object now (creator only). Open handles keep working until closed."""
        if not self.owner:
            if self._removed:
                return  # the creator already removed it
            raise PermissionDenied(
                f"unlink {self.url}: only the creating process removes an object (kipc.remove(url) forces it)")
        self._owner = None
        self._removed = True
        self._unlink()

    def _unlink(self) -> None:
        """Remove the kernel object (called once, for the creator only)."""

    def _interrupt(self) -> None:
        """Wake this process's threads blocked on this object (close() from another thread)."""

    def _quiesce(self) -> list[Any]:
        """Wait (bounded) until no other thread is inside a call; return the locks taken (close releases them)."""
        return []

    def __del__(self) -> None:
        # Release fds/mappings; never unlink from a finalizer (only an explicit close does).
        if not self._closed:
            if self._owner is not None:
                # like an unclosed file: the creator's object outlives this handle (-X dev shows it)
                try:
                    if self.owner:
                        warnings.warn(f"unclosed {self!r}: the object stays until kipc gc or kipc rm "
                                      "(close() it, or use with)", ResourceWarning, source=self, stacklevel=2)
                except Exception:
                    pass
            try:
                self._closed = True
                self._close()
            except Exception:
                pass

    def _close(self) -> None:
        pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.url} {state}>"


class _Waitable(Resource):
    """What channels and listeners share: per-direction locks, the wake fd, fd waits."""

    _wake: int = -1  # eventfd written by close(): wakes fd waits on other threads
    _wake_lock: Any = None
    _locks: dict[str, Any] = {}

    def _init_waitable(self, *ops: str) -> None:
        # RLock: a signal handler that closes the channel while this thread is inside
        # a call must not deadlock on the lock the interrupted call holds.
        self._locks = {op: threading.RLock() for op in ops}
        self._wake_lock = threading.Lock()

    def _wake_fd(self) -> int:
        """The eventfd close() writes to; created on the first wait (most handles never block)."""
        if self._wake < 0:
            with self._wake_lock:
                if self._wake < 0:
                    self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self._wake

    def _interrupt(self) -> None:
        if self._wake_lock is None:
            return
        with self._wake_lock:
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def _quiesce(self) -> list[Any]:
        held = []
        end = _monotonic() + _CLOSE_GRACE
        for lock in self._locks.values():
            if lock.acquire(True, max(0.0, end - _monotonic())):
                held.append(lock)
        return held

    def _release_wake(self) -> None:
        if self._wake >= 0:
            fd, self._wake = self._wake, -1
            os.close(fd)

    def _wait_fd(self, op: str) -> int | None:
        """An fd that polls ready when an attempt in direction ``op`` may succeed (None: use _wait)."""
        return None

    def _wait(self, op: str, deadline: Deadline) -> None:
        """Block until an attempt in direction ``op`` may succeed, the deadline passes or close() wakes us.

        The default polls ``_wait_fd(op)`` together with the wake fd. Transports
        without an fd override it.
        """
        fd = self._wait_fd(op)
        if fd is None:
            raise NotImplementedError(f"{type(self).__name__} has neither _wait_fd nor _wait")
        wake = self._wake_fd()
        if self._closed:
            return
        p = select.poll()
        p.register(fd, select.POLLOUT if op == "send" else select.POLLIN)
        p.register(wake, select.POLLIN)
        end = deadline.end
        if end == _INF:
            p.poll()
        else:
            p.poll(max(0, math.ceil((end - _monotonic()) * 1000)))

    def _ready(self, op: str) -> bool:
        """Could an attempt in direction ``op`` succeed now (a probe: may be wrong, never consumes)."""
        fd = self._wait_fd(op)
        if fd is None:
            return False
        p = select.poll()
        p.register(fd, select.POLLOUT if op == "send" else select.POLLIN)
        return bool(p.poll(0))

    async def _await_ready(self, op: str, deadline: Deadline) -> None:
        """Wait on the event loop until an attempt may succeed or the deadline passes (consumes nothing)."""
        fd = self._wait_fd(op)
        if fd is None:
            # No fd: _wait in one of kipc's threads, a slice at a time, so a cancelled
            # task's thread is free again within ASYNC_SLICE. _wait consumes nothing,
            # so abandoning it on cancel loses nothing.
            await asyncio.wrap_future(wait_pool().submit(self._wait, op, deadline.slice()))
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        add, remove = (loop.add_writer, loop.remove_writer) if op == "send" else (loop.add_reader, loop.remove_reader)
        add(fd, _wake, fut)
        try:
            # sliced too, so a close() from another thread is seen within ASYNC_SLICE
            await asyncio.wait_for(fut, deadline.slice().remaining())
        except TimeoutError:
            pass
        finally:
            remove(fd)

    def _acquire(self, lock: Any, op: str, deadline: Deadline) -> None:
        """Take a direction lock by the deadline (the blocking paths call this only when
        other threads exist: a process with none skips the lock, see Channel._send_blocking)."""
        if not (lock.acquire() if deadline is FOREVER else lock_within(lock, deadline)):
            self._check_open(op)
            raise deadline.error(f"{op} on {self.url}")

    def _lock(self, op: str, deadline: Deadline) -> Any:
        """The direction lock of ``op``, acquired by the deadline (Timeout/WouldBlock otherwise)."""
        lock = self._locks[op]
        if not lock_within(lock, deadline):
            self._check_open(op)
            raise deadline.error(f"{op} on {self.url}")
        if self._closed:
            lock.release()
            self._check_open(op)
        return lock


    def _take_ready(self, op: str, attempt: Callable[[], R | None], deadline: Deadline, what: str) -> R:
        """Blocking: ``attempt()`` until it returns something, waiting for readiness between
        attempts, under the direction lock (for listeners, receivers: not a hot path)."""
        lock = self._lock(op, deadline)
        try:
            while True:
                got = attempt()
                if got is not None:
                    return got
                if deadline.nonblocking or deadline.expired():
                    raise deadline.error(what)
                self._wait(op, deadline)
                self._check_open(what.partition(" on ")[0])
        finally:
            lock.release()

    async def _atake_ready(self, op: str, attempt: Callable[[], R | None], deadline: Deadline, what: str) -> R:
        """asyncio: readiness first (consumes nothing), then the non-blocking attempt on the
        loop thread; a cancellation at the await takes nothing."""
        lock = self._locks[op]
        while True:
            if lock.acquire(False):  # a thread blocked in the sync call holds it: just wait
                try:
                    self._check_open(what.partition(" on ")[0])
                    got = attempt()
                finally:
                    lock.release()
                if got is not None:
                    return got
            if deadline.nonblocking or deadline.expired():
                raise deadline.error(what)
            await self._await_ready(op, deadline)


class Channel(_Waitable, Generic[T]):
    """A message channel. See the module docstring for the contract and the hooks.

    Generic over its message type: ``Channel[bytes]`` (the default codec; ``recv`` returns
    ``bytes``) or ``Channel[object]`` (json / msgpack / pickle).
    """

    scheme: ClassVar[str] = ""
    #: knobs accepted by the hooks (subset of KNOWN_KNOBS)
    send_knobs: ClassVar[frozenset[str]] = frozenset()
    recv_knobs: ClassVar[frozenset[str]] = frozenset()
    #: True when one end can both send and receive
    duplex: ClassVar[bool] = True

    max_message_size: int | None = None
    _codec: Codec = _BYTES
    readable: bool = True
    writable: bool = True
    # The hot path (untimed, plain bytes, default codec) skips the general checks;
    # these say whether it may, and close() turns them off.
    _plain_send: bool = False
    _plain_recv: bool = False
    #: _send_blocking/_recv_blocking with an absolute time.monotonic() float for a deadline, when
    #: the transport has them (the ring's C calls): the timed hot path then builds no Deadline
    #: object (~220 ns each) and names the timeout only if it passes
    _send_until: Callable[[Any, float, dict[str, Any]], None] | None = None
    _recv_until: Callable[[float, dict[str, Any]], Any] | None = None
    _send_lock: Any = None
    _recv_lock: Any = None

    def _init_channel(self, url: str, *, codec: str | Codec | None = None) -> None:
        """Subclasses call this once their handles are open."""
        self.url = url
        self._init_waitable("send", "recv")
        self._send_lock, self._recv_lock = self._locks["send"], self._locks["recv"]
        self._closed = False
        self.codec = get_codec(codec)

    @property
    def codec(self) -> Codec:
        """How messages are encoded; assignable (the hot path follows: it is for the default codec)."""
        return self._codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self._codec = codec
        plain = codec is _BYTES and not self._closed
        self._plain_send = plain and self.writable
        self._plain_recv = plain and self.readable
        self._refresh_fast()

    def _interrupt(self) -> None:
        self._plain_send = self._plain_recv = False
        self._refresh_fast()
        super()._interrupt()

    def _fast_calls(self) -> tuple[Callable[..., None] | None, Callable[..., Any] | None]:
        """The transport's C ``send``/``recv`` for the hot path (see the module docstring), or None."""
        return None, None

    def _refresh_fast(self) -> None:
        """Install the fast calls as instance attributes while the hot path holds, else remove them.

        Call it again whenever something the fast calls captured changes (the ring's
        ``max_message_size``)."""
        cls, d = type(self), self.__dict__
        send = recv = None
        if self._plain_send or self._plain_recv:
            send, recv = self._fast_calls()
        if send is not None and self._plain_send and cls.send is Channel.send:
            d["send"] = send
        else:
            d.pop("send", None)
        if recv is not None and self._plain_recv and cls.recv is Channel.recv:
            d["recv"] = recv
        else:
            d.pop("recv", None)

    # -- checks (once, here) -----------------------------------------------------
    def _check_knobs(self, op: str, knobs: dict[str, Any], allowed: frozenset[str]) -> None:
        for k in knobs:
            if k not in allowed:
                if k in KNOWN_KNOBS:
                    kind = self.scheme or type(self).__name__
                    raise Unsupported(f"{op} on {self.url}: {kind} channels do not support {k}=")
                raise TypeError(f"{op}() got an unexpected keyword argument {k!r}")

    def _prepare_send(self, obj: Any, knobs: dict[str, Any]) -> memoryview:
        self._check_open("send")
        if knobs:
            self._check_knobs("send", knobs, self.send_knobs)
        if not self.writable:
            raise Unsupported(f"send on {self.url}: this end is read-only")
        data = self.codec.encode(obj)
        if type(data) is not memoryview:
            data = memoryview(data)
        limit = self.max_message_size
        if limit is not None and data.nbytes > limit:
            raise self._too_large(data.nbytes, limit)
        return data

    def _prepare_recv(self, knobs: dict[str, Any]) -> None:
        self._check_open("recv")
        if knobs:
            self._check_knobs("recv", knobs, self.recv_knobs)
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: this end is write-only")

    # -- public API ----------------------------------------------------------------
    def send(self, obj: T | Buffer, *, timeout: float | None = None, **knobs: Any) -> None:
        """Send one message (blocks while the channel is full, up to ``timeout``)."""
        if obj.__class__ is bytes and self._plain_send and (not knobs or knobs.keys() <= self.send_knobs):
            limit = self.max_message_size
            if limit is None or len(obj) <= limit:
                if timeout is None:
                    return self._send_blocking(obj, FOREVER, knobs)
                cls = timeout.__class__  # a plain positive timeout is validated here, not by Deadline.of
                if (cls is float or cls is int) and 0 < timeout <= _TIMEOUT_MAX:
                    until = self._send_until
                    if until is not None:
                        try:
                            return until(obj, _monotonic() + timeout, knobs)
                        except Timeout:  # the C call cannot name the timeout it was not given
                            raise Deadline(float(timeout)).error(f"send on {self.url}") from None
                    return self._send_blocking(obj, Deadline(float(timeout)), knobs)
        deadline = Deadline.of(timeout)
        self._send_blocking(self._prepare_send(obj, knobs), deadline, knobs)

    def recv(self, *, timeout: float | None = None, **knobs: Any) -> T:
        """Receive one message (blocks while the channel is empty, up to ``timeout``)."""
        if self._plain_recv and (not knobs or knobs.keys() <= self.recv_knobs):
            if timeout is None:
                return self._recv_blocking(FOREVER, knobs)
            cls = timeout.__class__
            if (cls is float or cls is int) and 0 < timeout <= _TIMEOUT_MAX:
                until = self._recv_until
                if until is not None:
                    try:
                        return until(_monotonic() + timeout, knobs)
                    except Timeout:
                        raise Deadline(float(timeout)).error(f"recv on {self.url}") from None
                return self._recv_blocking(Deadline(float(timeout)), knobs)
        deadline = Deadline.of(timeout)
        self._prepare_recv(knobs)
        return self.codec.decode(self._recv_blocking(deadline, knobs))

    def fileno(self) -> int:
        self._check_open("fileno")
        raise Unsupported(f"fileno on {self.url}: {self.scheme or type(self).__name__} has no file descriptor")

    def __iter__(self) -> Iterator[T]:
        """Receive until the channel is closed (by the peer or this process)."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # -- asyncio ---------------------------------------------------------------------
    async def asend(self, obj: T | Buffer, *, timeout: float | None = None, **knobs: Any) -> None:
        """Send without blocking the event loop; cancelled, it has sent nothing."""
        deadline = Deadline.of(timeout)
        data = self._prepare_send(obj, knobs)  # encoded once, whatever the waits
        if self._async_native:
            return await self._asend_native(data, deadline, knobs)
        what = f"send on {self.url}"
        while True:
            lock = self._locks["send"]
            if lock.acquire(False):
                try:
                    self._check_open("send")
                    if self._try_send(data, knobs):
                        break
                finally:
                    lock.release()
            if deadline.nonblocking or deadline.expired():
                raise deadline.error(what)
            await self._await_ready("send", deadline)
        if self._pending_out():
            # Accepted, but a byte stream still holds the message's unwritten tail. A message
            # handed to the kernel cannot be taken back, so a cancellation arriving now waits
            # for the tail and asend returns normally: the caller is told the truth (sent).
            task = asyncio.get_running_loop().create_task(self._aflush(deadline))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                await asyncio.wait({task})
                task.result()

    async def _aflush(self, deadline: Deadline) -> None:
        while self._pending_out() and not deadline.expired():
            await self._await_ready("send", deadline)
            self._check_open("send")
            with self._locks["send"]:
                self._flush_pending()

    async def arecv(self, *, timeout: float | None = None, **knobs: Any) -> T:
        """Receive without blocking the event loop; cancelled, it has consumed nothing."""
        deadline = Deadline.of(timeout)
        self._prepare_recv(knobs)
        if knobs.get("view"):
            raise Unsupported(f"arecv on {self.url}: a view must be released by the thread that received it; "
                              "use recv(view=True)")
        if self._async_native:
            return self.codec.decode(await self._arecv_native(deadline, knobs))
        return self.codec.decode(await self._arecv_raw(deadline, knobs))

    async def _arecv_raw(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        return await self._atake_ready("recv", lambda: self._try_recv(knobs), deadline, f"recv on {self.url}")

    def __aiter__(self) -> AsyncIterator[T]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.arecv()
            except ChannelClosed:
                return

    # -- hooks: blocking paths (default: the hooks below, in a loop, under the direction lock) ---
    # (Flat on purpose: these are the hot path of every transport without its own; a
    # process with no other thread skips the lock, ~0.2 µs of a ~2 µs kernel-queue call.)
    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        lock = self._send_lock if other_threads() else None
        if lock is not None:
            self._acquire(lock, "send", deadline)
        try:
            if self._closed:
                self._check_open("send")
            while not self._try_send(data, knobs):
                if deadline.nonblocking or deadline.expired():
                    raise deadline.error(f"send on {self.url}")
                self._wait("send", deadline)
                self._check_open("send")
            while self._pending_out() and not deadline.expired():
                self._wait("send", deadline)
                self._check_open("send")
                self._flush_pending()
        finally:
            if lock is not None:
                lock.release()

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        lock = self._recv_lock if other_threads() else None
        if lock is not None:
            self._acquire(lock, "recv", deadline)
        try:
            while True:
                if self._closed:
                    self._check_open("recv")
                got = self._try_recv(knobs)
                if got is not None:
                    return got
                if deadline.nonblocking or deadline.expired():
                    raise deadline.error(f"recv on {self.url}")
                self._wait("recv", deadline)
        finally:
            if lock is not None:
                lock.release()

    # -- hooks: transports whose I/O already lives on an event loop (NATS) ----------------------
    #: True: asend/arecv await _asend_native/_arecv_native instead of the attempt/readiness loop
    _async_native: ClassVar[bool] = False

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        raise NotImplementedError

    # -- hooks: attempts ---------------------------------------------------------------------
    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        """Non-blocking: True once the whole message is accepted, False when full now."""
        raise NotImplementedError

    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        """Non-blocking: the raw message (bytes/memoryview, or what recv_with_* needs), or None."""
        raise NotImplementedError

    def _pending_out(self) -> bool:
        """True while an accepted message still has unwritten bytes (byte streams only)."""
        return False

    def _flush_pending(self) -> None:
        """Write what can be written of an accepted message's tail without blocking."""

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        """The error for an oversize message; transports add where the limit comes from."""
        return MessageTooLarge(f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes",
                               size=size, limit=limit)

    def _close(self) -> None:
        self._release_wake()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Listener(_Waitable):
    """A server endpoint that yields one :class:`Channel` per connecting peer.

    Hooks: ``_try_accept() -> Channel | None`` (non-blocking) and ``_wait_fd("recv")``
    (the listening fd), or ``_accept_blocking(deadline)``.
    """

    scheme: ClassVar[str] = ""

    def _init_listener(self, url: str) -> None:
        self.url = url
        self._init_waitable("recv")
        self._closed = False

    def accept(self, *, timeout: float | None = None) -> Channel[bytes]:
        deadline = Deadline.of(timeout)
        self._check_open("accept")
        return self._accept_blocking(deadline)

    async def aaccept(self, *, timeout: float | None = None) -> Channel:
        deadline = Deadline.of(timeout)
        self._check_open("accept")
        return await self._atake_ready("recv", self._try_accept, deadline, f"accept on {self.url}")

    def _accept_blocking(self, deadline: Deadline) -> Channel:
        return self._take_ready("recv", self._try_accept, deadline, f"accept on {self.url}")

    def __iter__(self) -> Iterator[Channel]:
        while not self._closed:
            try:
                yield self.accept()
            except ChannelClosed:
                return

    def __aiter__(self) -> AsyncIterator[Channel]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Channel]:
        while not self._closed:
            try:
                yield await self.aaccept()
            except ChannelClosed:
                return

    def fileno(self) -> int:
        raise NotImplementedError

    def _try_accept(self) -> Channel | None:
        raise NotImplementedError

    def _close(self) -> None:
        self._release_wake()
