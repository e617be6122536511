"""The Channel template: arguments, state and timeouts are checked once, here.

Every transport subclasses :class:`Channel` and implements only

* ``_send(data: memoryview, deadline: Deadline, **knobs) -> None``
* ``_recv(deadline: Deadline, **knobs) -> bytes | memoryview``
* ``_close() -> None`` (release this process's handles), and optionally
  ``_unlink()`` (remove the kernel object; called only for the creator),
  ``fileno()``, ``_readable_fd()`` / ``_writable_fd()`` for asyncio.

The public methods guarantee, for every transport:

* ``send(data, *, timeout=None, **knobs)`` / ``recv(*, timeout=None, **knobs)``:
  ``None`` blocks, ``0`` never blocks (:class:`WouldBlock`), ``t`` waits at most
  ``t`` seconds (:class:`Timeout`). A timed-out call leaves the channel unchanged.
* A message larger than ``max_message_size`` raises :class:`MessageTooLarge`
  naming both numbers, before anything is written.
* A knob the mechanism cannot honour (``type=``, ``priority=``...) raises
  :class:`Unsupported`; an unknown keyword raises ``TypeError``.
* ``close()`` is idempotent and safe after a half-failed ``__init__`` (class
  level defaults). The creator of a named object removes it on close unless
  it was created with ``persist=True``; openers never remove.
* Blocking waits retry on EINTR with the remaining time (PEP 475 does that
  for ``select``/``poll``), and Ctrl-C (``KeyboardInterrupt``) gets through.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from . import _owners
from ._naming import ParsedURL, merge_query, validate_timeout
from .codecs import Codec, get_codec
from .errors import ChannelClosed, MessageTooLarge, PermissionDenied, Timeout, Unsupported, WouldBlock

__all__ = ["KNOWN_KNOBS", "Channel", "Deadline", "Listener"]

#: Mechanism knobs some transport understands. Asking a transport for one it
#: does not support is ``Unsupported``; anything else is a ``TypeError``.
KNOWN_KNOBS = frozenset({"type", "priority", "view", "ack"})

_monotonic = time.monotonic
_BYTES = get_codec(None)


class Deadline:
    """A validated timeout turned into an absolute monotonic deadline."""

    __slots__ = ("end", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = math.inf if timeout is None else _monotonic() + timeout

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

    def expired(self) -> bool:
        return self.timeout is not None and _monotonic() >= self.end

    def error(self, what: str) -> Timeout:
        """The error to raise when this deadline passes: WouldBlock for timeout=0."""
        if self.timeout == 0:
            return WouldBlock(f"{what} would block (timeout=0)")
        return Timeout(f"{what} timed out after {self.timeout:g} s")


class Resource:
    """Lifetime plumbing shared by every kipc object (channels, listeners, segments, semaphores).

    * ``close()`` is idempotent and safe after a half-failed ``__init__`` (class defaults).
    * Ownership: ``owner`` is True in the process that created a named object.
      Closing the owner removes the object (``_unlink``) unless ``persist`` is set,
      in which case the owner record is dropped so ``kipc gc`` leaves it alone.
      Openers never remove; ``unlink()`` by a non-owner is ``PermissionDenied``.
    * A finalizer releases handles but never removes anything.
    """

    url: str = "<unopened>"
    _closed: bool = True  # class default: close() is safe after a failed __init__
    owner: bool = False  # True when this process created the object (and will remove it)
    persist: bool = False  # creator keeps the object after close()
    _record_url: str = ""  # the URL of the owner record, when it differs from url

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

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release this process's handles; the creator also removes the object (unless persist)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close()
        finally:
            if self.owner:
                self.owner = False
                if self.persist:
                    _owners.forget(self._record_url or self.url)
                else:
                    self._unlink()

    def unlink(self) -> None:
        """Remove the named object now (creator only). Open handles keep working until closed."""
        if not self.owner:
            raise PermissionDenied(
                f"unlink {self.url}: only the creator removes an object (kipc.remove(url) forces it)")
        self.owner = False
        self._unlink()

    def _unlink(self) -> None:
        """Remove the kernel object (called once, for the creator only)."""

    def __del__(self) -> None:
        # Release fds/mappings; never unlink from a finalizer (only an explicit close does).
        if not self._closed:
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


class Channel(Resource):
    """A message channel. See the module docstring for the contract."""

    scheme: ClassVar[str] = ""
    #: knobs accepted by _send / _recv (subset of KNOWN_KNOBS)
    send_knobs: ClassVar[frozenset[str]] = frozenset()
    recv_knobs: ClassVar[frozenset[str]] = frozenset()
    #: True when one end can both send and receive
    duplex: ClassVar[bool] = True

    max_message_size: int | None = None
    codec: Codec = get_codec(None)
    readable: bool = True
    writable: bool = True

    def _init_channel(self, url: str, *, codec: str | Codec | None = None) -> None:
        """Subclasses call this once their handles are open."""
        self.url = url
        self.codec = get_codec(codec)
        self._closed = False

    # -- knobs ---------------------------------------------------------------
    def _check_knobs(self, op: str, knobs: dict[str, Any], allowed: frozenset[str]) -> None:
        for k in knobs:
            if k not in allowed:
                if k in KNOWN_KNOBS:
                    kind = self.scheme or type(self).__name__
                    raise Unsupported(f"{op} on {self.url}: {kind} channels do not support {k}=")
                raise TypeError(f"{op}() got an unexpected keyword argument {k!r}")

    # -- public API ------------------------------------------------------------
    # Both methods first try the transport's fast path for the common case (a
    # blocking call moving plain bytes with the default codec, knobs the
    # mechanism supports): the generic checks below would otherwise cost more
    # than the syscall for small messages. The fast path may decline (return
    # False/None) whenever anything is unusual; the general path then checks
    # everything and reports errors properly.
    def send(self, obj: Any, *, timeout: float | None = None, **knobs: Any) -> None:
        """Send one message (blocks while the channel is full, up to ``timeout``)."""
        if timeout is None and obj.__class__ is bytes and self.codec is _BYTES and not self._closed:
            limit = self.max_message_size
            if ((limit is None or len(obj) <= limit) and (not knobs or knobs.keys() <= self.send_knobs)
                    and self._send_fast(obj, knobs)):
                return
        deadline = Deadline.of(timeout)
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
        self._send(data, deadline, **knobs)

    def recv(self, *, timeout: float | None = None, **knobs: Any) -> Any:
        """Receive one message (blocks while the channel is empty, up to ``timeout``)."""
        if timeout is None and self.codec is _BYTES and not self._closed and (
                not knobs or knobs.keys() <= self.recv_knobs):
            data = self._recv_fast(knobs)
            if data is not None:
                return data
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        if knobs:
            self._check_knobs("recv", knobs, self.recv_knobs)
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: this end is write-only")
        return self.codec.decode(self._recv(deadline, **knobs))

    def fileno(self) -> int:
        raise Unsupported(f"fileno on {self.url}: {self.scheme or type(self).__name__} has no file descriptor")

    def __iter__(self) -> Iterator[Any]:
        """Receive until the channel is closed (by the peer or this process)."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # -- asyncio ---------------------------------------------------------------
    async def asend(self, obj: Any, *, timeout: float | None = None, **knobs: Any) -> None:
        deadline = Deadline.of(timeout)
        await self._async_retry(lambda: self.send(obj, timeout=0, **knobs), self._writable_fd,
                                deadline, "send", lambda t: self.send(obj, timeout=t, **knobs))

    async def arecv(self, *, timeout: float | None = None, **knobs: Any) -> Any:
        deadline = Deadline.of(timeout)
        return await self._async_retry(lambda: self.recv(timeout=0, **knobs), self._readable_fd,
                                       deadline, "recv", lambda t: self.recv(timeout=t, **knobs))

    def _readable_fd(self) -> int | None:
        """An fd that polls readable when recv(timeout=0) may succeed, else None."""
        return None

    def _writable_fd(self) -> int | None:
        """An fd that polls writable when send(timeout=0) may succeed, else None."""
        return None

    #: slice length for thread-based async waits: bounds how late a cancellation lands
    _ASYNC_SLICE = 0.05

    async def _async_retry(self, attempt: Any, fd_getter: Any, deadline: Deadline, op: str, blocking: Any) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return attempt()
            except WouldBlock:
                if deadline.nonblocking:
                    raise
            fd = fd_getter()
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                raise deadline.error(f"{op} on {self.url}")
            if fd is None:
                # No fd to watch: block in a worker thread in short slices so
                # cancellation (and the deadline) take effect promptly.
                t = self._ASYNC_SLICE if remaining is None else min(self._ASYNC_SLICE, remaining)
                try:
                    return await asyncio.to_thread(blocking, t)
                except Timeout:
                    continue
            fut: asyncio.Future[None] = loop.create_future()
            add, remove = ((loop.add_reader, loop.remove_reader) if fd_getter == self._readable_fd
                           else (loop.add_writer, loop.remove_writer))
            add(fd, _wake, fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                raise deadline.error(f"{op} on {self.url}") from None
            finally:
                remove(fd)

    # -- to implement ----------------------------------------------------------
    def _send_fast(self, data: bytes, knobs: dict[str, Any]) -> bool:
        """Optional: send ``data`` blocking, quickly; False hands the call to the general path.

        Called only for plain bytes within ``max_message_size``, the default
        codec, an open channel and knobs in ``send_knobs`` (values unchecked).
        """
        return False

    def _recv_fast(self, knobs: dict[str, Any]) -> bytes | None:
        """Optional: receive blocking, quickly; None hands the call to the general path."""
        return None

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        """The error for an oversize message; transports add where the limit comes from."""
        return MessageTooLarge(f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes",
                               size=size, limit=limit)

    def _send(self, data: memoryview, deadline: Deadline, **knobs: Any) -> None:
        raise NotImplementedError

    def _recv(self, deadline: Deadline, **knobs: Any) -> bytes | memoryview:
        raise NotImplementedError



def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Listener(Resource):
    """A server endpoint that yields one :class:`Channel` per connecting peer."""

    scheme: ClassVar[str] = ""

    def accept(self, *, timeout: float | None = None) -> Channel:
        deadline = Deadline.of(timeout)
        self._check_open("accept")
        return self._accept(deadline)

    async def aaccept(self, *, timeout: float | None = None) -> Channel:
        deadline = Deadline.of(timeout)
        self._check_open("accept")
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self._accept(Deadline(0))
            except WouldBlock:
                if deadline.nonblocking:
                    raise
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fileno(), _wake, fut)
            try:
                await asyncio.wait_for(fut, deadline.remaining())
            except TimeoutError:
                raise deadline.error(f"accept on {self.url}") from None
            finally:
                loop.remove_reader(self.fileno())

    def __iter__(self) -> Iterator[Channel]:
        while not self._closed:
            yield self.accept()

    def fileno(self) -> int:
        raise NotImplementedError

    def _accept(self, deadline: Deadline) -> Channel:
        raise NotImplementedError
