"""System V message queues: ``sysvmq://1234``, ``sysvmq://0x4d2``, ``sysvmq:///path?proj=N``, ``sysvmq://private``.

Contract card:

* Wire format: exactly the kernel's ``struct msgbuf`` — a ``long`` type plus
  the raw bytes. No kipc header: a C program's ``msgsnd``/``msgrcv`` on the
  same key sees what kipc sent, byte for byte, and the reverse.
* Boundaries: kept by the kernel. Ordering: FIFO per type.
  ``send(data, type=1)`` (type >= 1); ``recv(type=0)`` follows ``msgrcv``:
  ``0`` = first message, ``n > 0`` = first of type n, ``n < 0`` = first of the
  lowest type <= |n|. ``recv_with_type()`` also returns the type.
* Max message size: ``kernel.msgmax`` (``max_message_size``); over it raises
  :class:`MessageTooLarge` naming both numbers and the sysctl, queue
  unchanged. Queue capacity: ``max_bytes`` (``msg_qbytes``, default
  ``kernel.msgmnb``); raising it beyond ``kernel.msgmnb`` needs
  CAP_SYS_RESOURCE.
* Blocking: ``timeout=None`` blocks in the kernel (GIL released). SysV queues
  have no kernel timeout and no fd, so a finite timeout polls with
  ``IPC_NOWAIT`` and a bounded back-off (50 µs doubling to 2 ms, last sleep
  trimmed to the deadline): honoured within ~2 ms and well under 5 % of a core
  while waiting. ``arecv``/``asend`` poll the same way with ``asyncio.sleep``
  (no thread). A full queue blocks or times out; nothing is dropped.
* Close: the queue being removed (``IPC_RMID``, e.g. the creator closing)
  while a peer blocks or polls raises :class:`ChannelClosed` promptly; pending
  messages are destroyed with the queue.
* Creation is exclusive (``create=True``), ``create="if_missing"`` attaches when
  it exists; mode 0600 (SysV ignores the umask; ``ipcs`` shows 600). Opening
  refuses a queue of another uid (``allow_foreign=True``) or with more mode
  bits than ``mode`` (a seed-style C ``0666`` queue needs ``mode=0o666``).
* Cleanup: the creator removes the queue on ``close()`` unless ``persist=True``;
  openers never remove. ``sysvmq://private`` (IPC_PRIVATE) is creator-only
  and shared through ``fork`` or by passing ``.id``.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import sysv_ipc

from .. import _owners
from .._base import Channel, Deadline
from .._kinds import ObjectInfo, SysvKind
from .._naming import DEFAULT_MODE, ParsedURL, parse_bool, parse_url, validate_key, validate_mode, validate_size
from .._objects import (
    check_attach,
    check_sysv_creator,
    create_or_attach,
    parse_create,
    sysv_identity,
    sysv_key,
    sysv_row,
)
from .._platform import sysctl
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    Unsupported,
    WouldBlock,
    translate_ipc_error,
)

__all__ = ["KIND", "MessageQueueStat", "SysVMessageQueue", "apoll_backoff", "poll_backoff"]

T = TypeVar("T")

#: back-off bounds for timed waits on objects without a kernel timeout
BACKOFF_FIRST = 50e-6
BACKOFF_MAX = 0.002
_LONG_MAX = 2**63 - 1


class _Busy(Exception):
    """Internal: the non-blocking attempt would block."""


def _pauses(deadline: Deadline, what: str) -> Iterator[float]:
    """Back-off pauses (doubling up to BACKOFF_MAX, trimmed to the deadline); raises when it passes."""
    delay = BACKOFF_FIRST
    while True:
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise deadline.error(what)
        yield delay if remaining is None else min(delay, remaining)
        delay = min(delay * 2, BACKOFF_MAX)


def poll_backoff(attempt: Callable[[], T], deadline: Deadline, what: str) -> T:
    """Call ``attempt`` (raises :class:`_Busy` when it would block) until it succeeds or the deadline passes."""
    pauses = _pauses(deadline, what)
    while True:
        try:
            return attempt()
        except _Busy:
            pass
        time.sleep(next(pauses))


async def apoll_backoff(attempt: Callable[[], T], deadline: Deadline, what: str) -> T:
    """:func:`poll_backoff` for asyncio: sleeps on the event loop, cancellable at once."""
    pauses = _pauses(deadline, what)
    while True:
        try:
            return attempt()
        except _Busy:
            pass
        await asyncio.sleep(next(pauses))


class MessageQueueStat(NamedTuple):
    key: int
    id: int
    messages: int
    bytes: int
    max_bytes: int
    last_send_pid: int
    last_recv_pid: int
    uid: int
    mode: int


def _qbytes(msqid: int) -> int:
    """Bytes queued now (``msg_cbytes``; sysv_ipc does not expose it)."""
    try:
        with open("/proc/sysvipc/msg") as f:
            next(f)
            for line in f:
                vals = line.split()
                if int(vals[1]) == msqid:
                    return int(vals[3])
    except OSError:
        pass
    return 0


def _msgmax() -> int:
    return sysctl("kernel.msgmax", 8192) or 8192


def _check_type(value: object, *, recv: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"type must be int, not {type(value).__name__}")
    if recv:
        if not -_LONG_MAX <= value <= _LONG_MAX:
            raise InvalidArgument(f"recv type {value} is outside long")
    elif not 1 <= value <= _LONG_MAX:
        raise InvalidArgument(f"send type {value} must be >= 1 (msgsnd refuses 0 and negatives)")
    return value


class SysVMessageQueue(Channel):
    """A System V message queue; see the module docstring for the contract."""

    scheme = "sysvmq"
    send_knobs = frozenset({"type"})
    recv_knobs = frozenset({"type"})
    _q: Any = None
    _record_url = ""

    def __init__(self, url: str | int | ParsedURL, *, create: bool | str = False, mode: int | str = DEFAULT_MODE,
                 persist: bool | str = False, max_bytes: int | str | None = None, codec: str | Codec | None = None,
                 allow_foreign: bool | str = False) -> None:
        if isinstance(url, int) and not isinstance(url, bool):
            url = f"sysvmq://{validate_key(url)}"
        parsed = url if isinstance(url, ParsedURL) else parse_url(url)
        if parsed.scheme != "sysvmq":
            raise InvalidArgument(f"{parsed.url}: not a sysvmq:// URL")
        key = sysv_key(parsed)
        create = parse_create(create)
        mode = validate_mode(mode)
        self.persist = parse_bool(persist, what="persist")
        allow_foreign = parse_bool(allow_foreign, what="allow_foreign")
        if max_bytes is not None:
            max_bytes = validate_size(max_bytes, what="max_bytes", minimum=1)
        if key == 0 and create is not True:
            raise InvalidArgument(f"{parsed.url}: a private queue can only be created (create=True)")
        self.key = key
        self.url = parsed.url
        msgmax = _msgmax()
        self.max_message_size = msgmax

        def make() -> Any:
            try:
                return sysv_ipc.MessageQueue(key or sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode,
                                             max_message_size=msgmax)
            except sysv_ipc.ExistentialError as e:
                raise AlreadyExists(f"create {self.url}: a queue with key {key} already exists",
                                    errno=_errno.EEXIST) from e
            except Exception as e:
                raise self._error(e, "create") from None

        def attach() -> Any:
            try:
                return sysv_ipc.MessageQueue(key, 0, max_message_size=msgmax)
            except sysv_ipc.ExistentialError as e:
                raise NotFound(f"open {self.url}: no queue with key {key} (create=True makes one)",
                               errno=_errno.ENOENT) from e
            except Exception as e:
                raise self._error(e, "open") from None

        q, self.owner = create_or_attach(create, make, attach)
        self._q = q
        self.id = q.id
        try:
            if self.owner:
                self._record_url = f"sysvmq://{key}" if key else f"sysvmq://private?id={q.id}"
            else:
                check_sysv_creator(self.url, key, uid=q.uid, cuid=q.cuid, cgid=q.cgid, allow_foreign=allow_foreign)
                check_attach(self.url, uid=q.uid, mode=q.mode, allowed_mode=mode, allow_foreign=allow_foreign)
            if max_bytes is not None:
                self.max_bytes = max_bytes
            if self.owner:
                # after max_bytes: IPC_SET restamps ctime, which is part of the identity
                self._record_owner()
        except BaseException:
            if self.owner:
                self._unlink()
            raise
        self._init_channel(self.url, codec=codec)

    # -- construction hook for kipc.open -------------------------------------------------------------
    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> SysVMessageQueue:
        from .._naming import merge_query

        merged = merge_query(parsed, options)
        merged.pop("proj", None)  # part of the address (ftok), not an option
        return cls(parsed, **merged)

    def _record_owner(self) -> None:
        """Write (or refresh) the owner record with the queue's identity (id + ctime)."""
        row = sysv_row("msg", self.id)
        _owners.record(self._record_url, "sysvmq", identity=sysv_identity("msg", row) if row else None)

    # -- errors -------------------------------------------------------------------------------------
    def _error(self, exc: BaseException, op: str) -> KipcError:
        if isinstance(exc, sysv_ipc.ExistentialError):
            return ChannelClosed(f"{op} on {self.url}: the queue was removed", errno=_errno.EIDRM)
        return translate_ipc_error(exc, self.url, op)

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes "
            f"(sysctl kernel.msgmax = {limit})", size=size, limit=limit)

    def _send_fast(self, data: bytes, knobs: dict[str, Any]) -> bool:
        mtype = knobs.get("type", 1)
        if mtype.__class__ is int and 1 <= mtype <= _LONG_MAX:
            try:
                self._q.send(data, True, mtype)
                return True
            except sysv_ipc.Error:
                pass  # EINTR, removal...: the general path retries or reports it
        return False

    def _recv_fast(self, knobs: dict[str, Any]) -> bytes | None:
        mtype = knobs.get("type", 0)
        if mtype.__class__ is int and -_LONG_MAX <= mtype <= _LONG_MAX:
            try:
                return self._q.receive(True, mtype)[0]
            except sysv_ipc.Error:
                pass  # the general path retries or reports it
        return None

    # -- I/O ------------------------------------------------------------------------------------------
    def _send(self, data: memoryview, deadline: Deadline, type: int = 1) -> None:  # type: ignore[override]
        if type != 1:
            _check_type(type, recv=False)
        q = self._q
        what = f"send on {self.url}"
        if deadline.blocking:
            while True:
                try:
                    q.send(data, True, type)
                    return
                except sysv_ipc.Error as e:
                    self._retry_or_raise(e, "send")

        def attempt() -> None:
            try:
                q.send(data, False, type)
            except sysv_ipc.BusyError:
                raise _Busy from None
            except sysv_ipc.Error as e:
                self._retry_or_raise(e, "send")
                raise _Busy from None

        poll_backoff(attempt, deadline, what)

    def _receive(self, deadline: Deadline, type: int) -> tuple[bytes, int]:
        q = self._q
        if deadline.blocking:
            while True:
                try:
                    return q.receive(True, type)  # type: ignore[no-any-return, unused-ignore]
                except sysv_ipc.Error as e:
                    self._retry_or_raise(e, "recv")

        def attempt() -> tuple[bytes, int]:
            try:
                return q.receive(False, type)  # type: ignore[no-any-return, unused-ignore]
            except sysv_ipc.BusyError:
                raise _Busy from None
            except sysv_ipc.Error as e:
                self._retry_or_raise(e, "recv")
                raise _Busy from None

        return poll_backoff(attempt, deadline, f"recv on {self.url}")

    def _retry_or_raise(self, e: BaseException, op: str) -> None:
        """EINTR ("Signaled while waiting"): Python's handler has run by now; retry. Else raise."""
        if type(e) is sysv_ipc.Error and "ignaled" in str(e):
            return
        if isinstance(e, sysv_ipc.BusyError):
            return
        raise self._error(e, op) from None

    def _recv(self, deadline: Deadline, type: int = 0) -> bytes:  # type: ignore[override]
        if type != 0:
            _check_type(type, recv=True)
        return self._receive(deadline, type)[0]

    def recv_with_type(self, *, type: int = 0, timeout: float | None = None) -> tuple[Any, int]:
        """Like ``recv(type=)`` but returns ``(message, message_type)``."""
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        _check_type(type, recv=True)
        data, mtype = self._receive(deadline, type)
        return self.codec.decode(data), mtype

    # -- asyncio without a thread: poll on the event loop ------------------------------------------
    async def asend(self, obj: Any, *, timeout: float | None = None, **knobs: Any) -> None:
        deadline = Deadline.of(timeout)

        def attempt() -> None:
            try:
                self.send(obj, timeout=0, **knobs)
            except WouldBlock:
                raise _Busy from None

        if deadline.nonblocking:
            self.send(obj, timeout=0, **knobs)
            return
        await apoll_backoff(attempt, deadline, f"send on {self.url}")

    async def arecv(self, *, timeout: float | None = None, **knobs: Any) -> Any:
        deadline = Deadline.of(timeout)
        if deadline.nonblocking:
            return self.recv(timeout=0, **knobs)

        def attempt() -> Any:
            try:
                return self.recv(timeout=0, **knobs)
            except WouldBlock:
                raise _Busy from None

        return await apoll_backoff(attempt, deadline, f"recv on {self.url}")

    # -- introspection --------------------------------------------------------------------------------
    def stat(self) -> MessageQueueStat:
        """Messages and bytes queued, capacity, last sender/receiver pids, owner and mode."""
        self._check_open("stat")
        q = self._q
        try:
            return MessageQueueStat(key=self.key, id=q.id, messages=q.current_messages, bytes=_qbytes(q.id),
                                    max_bytes=q.max_size, last_send_pid=q.last_send_pid,
                                    last_recv_pid=q.last_receive_pid, uid=q.uid, mode=q.mode & 0o777)
        except sysv_ipc.Error as e:
            raise self._error(e, "stat") from None

    @property
    def max_bytes(self) -> int:
        """Queue capacity in bytes (``msg_qbytes``)."""
        try:
            return int(self._q.max_size)
        except sysv_ipc.Error as e:
            raise self._error(e, "stat") from None

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        value = validate_size(value, what="max_bytes", minimum=1)
        limit = sysctl("kernel.msgmnb", 16384) or 16384
        try:
            self._q.max_size = value
            if self.owner and self._record_url:
                self._record_owner()  # IPC_SET restamped ctime: keep the record's identity current
        except sysv_ipc.PermissionsError:
            raise LimitExceeded(f"set max_bytes={value} on {self.url}: above sysctl kernel.msgmnb = {limit} "
                                "(needs CAP_SYS_RESOURCE), or not the queue's owner",
                                errno=_errno.EPERM) from None
        except (sysv_ipc.Error, ValueError, OverflowError) as e:
            raise self._error(e, "set max_bytes on") from None

    def fileno(self) -> int:
        raise Unsupported(f"fileno on {self.url}: SysV message queues have no file descriptor "
                          "(asyncio works by polling: await ch.arecv())")

    # -- lifetime ------------------------------------------------------------------------------------
    def _unlink(self) -> None:
        try:
            self._q.remove()
        except sysv_ipc.ExistentialError:
            pass  # already removed (by ipcrm or kipc.remove)
        except sysv_ipc.Error as e:
            raise self._error(e, "remove") from None
        finally:
            if self._record_url:
                _owners.forget(self._record_url)



# -- object kind: how kipc ls / rm / gc see SysV queues ---------------------------------------------------
class _QueueKind(SysvKind):
    def describe(self, row: dict[str, int]) -> ObjectInfo:
        info = super().describe(row)
        info.size, info.depth = row["cbytes"], row["qnum"]
        info.pids = [p for p in (row["lspid"], row["lrpid"]) if p]
        return info


KIND = _QueueKind("sysvmq", "sysvmq", "msg", part="", records=("sysvmq",),
                  description="sysvmq (from /proc/sysvipc/msg)")
