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
  CAP_SYS_RESOURCE. A message bigger than the queue's ``max_bytes`` can never
  fit (the kernel would wait forever): :class:`MessageTooLarge` naming the
  size, the limit, ``max_bytes=`` and ``kernel.msgmnb``, before any
  ``msgsnd``. ``msg_qbytes`` can change at run time, so it is re-read (one
  ``IPC_STAT``) when a message exceeds the value last read, or when a send
  would block; never on a send that fits and goes through. (Limit: an untimed
  send already waiting in the kernel's ``msgsnd``, see Blocking, keeps waiting
  if ``max_bytes`` is lowered below its size meanwhile, as C's would.)
* Blocking: SysV queues have no kernel timeout, no fd and no way to wake a
  thread blocked in ``msgrcv`` short of a message (or a signal). An untimed
  call in a process with no other thread blocks in the kernel (GIL
  released), as C does. Otherwise — a timeout, or other threads that might
  ``close()`` the handle — a wait is an ``IPC_NOWAIT`` attempt followed by a
  pause: about 100 µs of yielding retries (a reply in a request/response
  exchange is caught at once), then a back-off from 50 µs doubling to 2 ms,
  trimmed to the deadline. Deadlines are honoured within ~2 ms, a waiter costs
  well under 5 % of a core, and ``close()`` from another thread wakes it
  within 2 ms. On a loaded machine the polled path can add up to 2 ms to a
  reply that arrives while the waiter sleeps.
  ``arecv``/``asend`` encode once and wait in kipc's wait threads between
  non-blocking attempts on the loop thread. A full queue blocks or times out;
  nothing is dropped.
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

import errno as _errno
import os
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import sysv_ipc

from .. import _owners
from .._base import Channel, Deadline, T, other_threads
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
    translate_ipc_error,
)

__all__ = ["KIND", "MessageQueueStat", "SysVMessageQueue", "pauses"]

#: back-off bounds for timed waits on objects without a kernel timeout
BACKOFF_FIRST = 50e-6
BACKOFF_MAX = 0.002
_LONG_MAX = 2**63 - 1
_INF = float("inf")


#: yielding retries before a waiter starts sleeping (catches a quick reply without a sleep)
SPIN_SECONDS = 100e-6


def pauses(deadline: Deadline) -> Iterator[float]:
    """Sleeps between non-blocking attempts on objects without a kernel wait: spin, then back off.

    0 means "yield the CPU and retry"; the sleeps double from BACKOFF_FIRST to
    BACKOFF_MAX, the last trimmed to the deadline. Ends when the deadline passes.
    """
    spin_end = time.monotonic() + SPIN_SECONDS
    while time.monotonic() < spin_end:
        yield 0.0
    delay = BACKOFF_FIRST
    while True:
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            return
        yield delay if remaining is None else min(delay, remaining)
        delay = min(delay * 2, BACKOFF_MAX)


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

    def __repr__(self) -> str:  # key in hex and mode in octal, as ipcs and ls show them
        fields = ", ".join(f"{k}={v:#o}" if k == "mode" else f"{k}={v:#x}" if k == "key" else f"{k}={v}"
                           for k, v in zip(self._fields, self, strict=True))
        return f"MessageQueueStat({fields})"


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


def _nbytes(data: bytes | memoryview) -> int:
    return len(data) if data.__class__ is bytes else memoryview(data).nbytes


def _check_type(value: object, *, recv: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"type must be int, not {type(value).__name__}")
    if recv:
        if not -_LONG_MAX <= value <= _LONG_MAX:
            raise InvalidArgument(f"recv type {value} is outside long")
    elif not 1 <= value <= _LONG_MAX:
        raise InvalidArgument(f"send type {value} must be >= 1 (msgsnd refuses 0 and negatives)")
    return value


class SysVMessageQueue(Channel[T]):
    """A System V message queue; see the module docstring for the contract."""

    scheme = "sysvmq"
    send_knobs = frozenset({"type"})
    recv_knobs = frozenset({"type"})
    _q: Any = None
    _record_url = ""
    #: msg_qbytes as last read: a message above it is checked against the queue's current value
    _qlimit: int = 0
    #: True when the base's msgmax check does not already imply "fits _qlimit" (so sends compare sizes)
    _qsmall: bool = True

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
        self._set_qlimit(int(q.max_size))
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
    def from_url(cls, parsed: ParsedURL, **options: Any) -> SysVMessageQueue[Any]:
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

    def _queue_too_large(self, size: int, qbytes: int) -> MessageTooLarge:
        mnb = sysctl("kernel.msgmnb", 16384) or 16384
        return MessageTooLarge(
            f"send on {self.url}: message of {size} bytes can never fit: the queue holds at most {qbytes} bytes "
            f"(its max_bytes, msg_qbytes); raise it with max_bytes= on the queue (the owner; above "
            f"sysctl kernel.msgmnb = {mnb} needs CAP_SYS_RESOURCE), or raise kernel.msgmnb for new queues",
            size=size, limit=qbytes)

    def _check_size(self, data: bytes | memoryview) -> None:
        size = _nbytes(data)
        if size > self._qlimit:
            self._check_room(size)

    def _set_qlimit(self, qbytes: int) -> None:
        self._qlimit = qbytes
        self._qsmall = qbytes < (self.max_message_size or 0)

    def _check_room(self, size: int) -> None:
        """The message is above the cached msg_qbytes, or the queue is full: read the queue's real limit.

        msg_qbytes can change at run time (IPC_SET by its owner), so the cached value is only a
        hint; it is re-read here, never on a send that fits it and does not block.
        """
        try:
            qbytes = int(self._q.max_size)
            self._set_qlimit(qbytes)
        except sysv_ipc.Error as e:
            raise self._error(e, "send") from None
        if size > qbytes:
            raise self._queue_too_large(size, qbytes)

    # -- I/O: the kernel's own wait when nobody could close us meanwhile ----------------------------
    # A thread blocked in msgsnd/msgrcv wakes only for room/a message, the queue's removal or
    # a signal, so close() from another thread could not wake it: with other threads in the
    # process, waits poll (below). A process with no other thread has nobody to do that (a
    # signal handler closing the handle interrupts the syscall itself), so an untimed call
    # blocks in the kernel as C's msgrcv does: wake-up at once, no CPU while waiting.
    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        if deadline.end != _INF or other_threads():
            return super()._send_blocking(data, deadline, knobs)
        mtype = knobs.get("type", 1)
        if mtype.__class__ is not int or mtype != 1:
            _check_type(mtype, recv=False)
        if self._qsmall:
            self._check_size(data)  # it could never fit: msgsnd would wait forever
        block = False  # first without waiting: a full queue re-reads msg_qbytes before the kernel wait
        while True:
            if self._closed:
                self._check_open("send")
            try:
                self._q.send(data, block, mtype)
                return
            except sysv_ipc.BusyError:
                self._check_room(_nbytes(data))
                block = True
            except sysv_ipc.Error as e:
                self._retry_or_raise(e, "send")

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        if deadline.end != _INF or other_threads():
            return super()._recv_blocking(deadline, knobs)
        mtype = knobs.get("type", 0)
        if mtype.__class__ is not int or mtype != 0:
            _check_type(mtype, recv=True)
        while True:
            if self._closed:
                self._check_open("recv")
            try:
                got = self._q.receive(True, mtype)
            except sysv_ipc.Error as e:
                self._retry_or_raise(e, "recv")
                continue
            return got if knobs and knobs.get("with_type") else got[0]

    # -- I/O: non-blocking attempts; the template loops, this class waits -------------------------------
    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        mtype = knobs.get("type", 1)
        if mtype.__class__ is not int or mtype != 1:
            _check_type(mtype, recv=False)
        if self._qsmall:
            self._check_size(data)  # before any msgsnd: it would wait for room that can never exist
        try:
            self._q.send(data, False, mtype)
            return True
        except sysv_ipc.BusyError:
            self._check_room(_nbytes(data))  # full: the limit may have been lowered since we read it
            return False
        except sysv_ipc.Error as e:
            self._retry_or_raise(e, "send")
            return False

    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        """The message, ``(message, type)`` with the internal knob ``with_type``, or None."""
        mtype = knobs.get("type", 0)
        if mtype.__class__ is not int or mtype != 0:
            _check_type(mtype, recv=True)
        try:
            got = self._q.receive(False, mtype)
        except sysv_ipc.BusyError:
            return None
        except sysv_ipc.Error as e:
            self._retry_or_raise(e, "recv")
            return None
        return got if knobs.get("with_type") else got[0]

    def _wait(self, op: str, deadline: Deadline) -> None:
        # Consumes nothing: pause until a message may be there (recv) or room (send),
        # checking between pauses; close() is seen within one pause (<= 2 ms).
        q = self._q
        for pause in pauses(deadline):
            if self._closed:
                return
            try:
                if op == "recv" and q.current_messages:
                    return
            except sysv_ipc.Error as e:
                raise self._error(e, op) from None
            if pause:
                time.sleep(pause)
            else:
                os.sched_yield()
            if op == "send":
                return  # room cannot be probed cheaply (msg_cbytes is only in /proc): retry the send

    def _ready(self, op: str) -> bool:
        try:
            return op == "send" or bool(self._q.current_messages)
        except sysv_ipc.Error:
            return True  # the attempt reports what is wrong

    def _retry_or_raise(self, e: BaseException, op: str) -> None:
        """EINTR ("Signaled while waiting"): Python's handler has run by now; retry. Else raise."""
        if type(e) is sysv_ipc.Error and "ignaled" in str(e):
            return
        if isinstance(e, sysv_ipc.BusyError):
            return
        raise self._error(e, op) from None

    def recv_with_type(self, *, type: int = 0, timeout: float | None = None) -> tuple[T, int]:
        """Like ``recv(type=)`` but returns ``(message, message_type)``."""
        deadline = Deadline.of(timeout)
        self._prepare_recv({"type": type})
        data, mtype = self._recv_blocking(deadline, {"type": type, "with_type": True})
        return self.codec.decode(data), mtype

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
            self._set_qlimit(value)
            if self.owner and self._record_url:
                self._record_owner()  # IPC_SET restamped ctime: keep the record's identity current
        except sysv_ipc.PermissionsError:
            raise LimitExceeded(f"set max_bytes={value} on {self.url}: above sysctl kernel.msgmnb = {limit} "
                                "(needs CAP_SYS_RESOURCE), or not the queue's owner",
                                errno=_errno.EPERM) from None
        except (sysv_ipc.Error, ValueError, OverflowError) as e:
            raise self._error(e, "set max_bytes on") from None

    def fileno(self) -> int:
        self._check_open("fileno")
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
        info.queued = row["cbytes"]
        info.pids = [p for p in (row["lspid"], row["lrpid"]) if p]
        return info


KIND = _QueueKind("sysvmq", "sysvmq", "msg", part="", records=("sysvmq",),
                  description="sysvmq (from /proc/sysvipc/msg)")
