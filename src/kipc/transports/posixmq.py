"""POSIX message queues: ``posixmq://NAME`` (the kernel queue ``/NAME``, what C's ``mq_open("/NAME")`` sees).

Contract card:

* Wire format: the raw bytes plus the kernel's priority; no kipc header, so a
  C program's ``mq_send``/``mq_receive`` interoperates byte for byte.
* Boundaries: kept by the kernel. Ordering: highest priority first, FIFO
  within one priority. ``send(data, priority=0)`` (0..32767);
  ``recv_with_priority()`` returns ``(message, priority)``.
* Size: ``max_messages`` / ``max_message_size`` are fixed at creation
  (defaults 10 and 8192). Ceilings: ``/proc/sys/fs/mqueue/msg_max`` and
  ``/proc/sys/fs/mqueue/msgsize_max`` (checked before the syscall, also for
  root), ``/proc/sys/fs/mqueue/queues_max`` queues, and ``RLIMIT_MSGQUEUE``
  bytes per user (``ulimit -q``). A message over the queue's
  ``max_message_size`` raises :class:`MessageTooLarge` naming both numbers.
* Blocking: ``mq_timedsend``/``mq_timedreceive`` in the kernel (GIL released)
  in slices of 50 ms, EINTR retried with the time left; between slices a
  removed queue ends the wait and a ``close()`` from another thread is seen. ``fileno()`` is the queue descriptor:
  it polls readable when a message is waiting and writable when there is
  room, so asyncio uses it directly. A full queue blocks; nothing is dropped.
* Close: there is no end-of-stream. The creator's ``close()`` unlinks the
  name; handles already open keep working (and keep queued messages) until
  they are closed. The mqueue filesystem is not needed.
* Creation exclusive by default, ``create="if_missing"``, mode 0600 whatever
  the umask (fchmod after ``mq_open``). Opening refuses a queue of another
  uid (``allow_foreign=True``) or with more mode bits than ``mode``.
* Cleanup: the creator unlinks on ``close()`` unless ``persist=True``; openers never.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

import posix_ipc

from .. import _owners
from .._base import FOREVER, Channel, CreateMode, Deadline, T, other_threads
from .._kinds import Kind, ObjectInfo, refuse_foreign, stat_info
from .._naming import DEFAULT_MODE, ParsedURL, parse_bool, parse_url, validate_mode, validate_name, validate_size
from .._objects import check_attach, create_or_attach, file_identity, parse_create
from .._platform import mqueue_mount, sysctl
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    translate_ipc_error,
)

__all__ = ["KIND", "PosixMessageQueue"]

PRIORITY_MAX = int(posix_ipc.QUEUE_PRIORITY_MAX)
_SYSCTL_DIR = "/proc/sys/fs/mqueue"


_SLICE = 0.05  # s; bounds how late a blocked call notices that the queue was removed


class PosixMessageQueue(Channel[T]):
    """A POSIX message queue; see the module docstring for the contract."""

    scheme = "posixmq"
    send_knobs = frozenset({"priority"})
    _q: Any = None
    _name = ""

    def __init__(self, url: str | ParsedURL, *, create: CreateMode = False, mode: int | str = DEFAULT_MODE,
                 persist: bool | str = False, max_messages: int | str | None = None,
                 max_message_size: int | str | None = None, codec: str | Codec | None = None,
                 allow_foreign: bool | str = False) -> None:
        parsed = url if isinstance(url, ParsedURL) else parse_url(url)
        if parsed.scheme != "posixmq" or parsed.path not in ("", "/"):
            raise InvalidArgument(f"{parsed.url}: expected posixmq://NAME")
        name = validate_name(parsed.netloc, what="queue name")
        create = parse_create(create)
        mode = validate_mode(mode)
        self.persist = parse_bool(persist, what="persist")
        allow_foreign = parse_bool(allow_foreign, what="allow_foreign")
        self.url = parsed.url
        self._name = "/" + name
        self._record_url = f"posixmq://{name}"
        if not create and (max_messages is not None or max_message_size is not None):
            raise InvalidArgument(f"open {self.url}: max_messages/max_message_size are set at creation only")
        nmax = self._limit(max_messages, "max_messages", "msg_max", 10)
        smax = self._limit(max_message_size, "max_message_size", "msgsize_max", 8192)

        def make() -> Any:
            try:
                return posix_ipc.MessageQueue(self._name, posix_ipc.O_CREX, mode, nmax, smax)
            except posix_ipc.ExistentialError as e:
                raise AlreadyExists(f"create {self.url}: already exists", errno=_errno.EEXIST) from e
            except Exception as e:
                raise self._create_error(e) from None

        def attach() -> Any:
            try:
                return posix_ipc.MessageQueue(self._name)
            except posix_ipc.ExistentialError as e:
                raise NotFound(f"open {self.url}: no such queue (create=True makes one)", errno=_errno.ENOENT) from e
            except Exception as e:
                raise translate_ipc_error(e, self.url, "open") from None

        q, self.owner = create_or_attach(create, make, attach)
        self._q = q
        try:
            if self.owner:
                os.fchmod(q.mqd, mode)  # mq_open's mode went through the umask
                _owners.record(self._record_url, "posixmq", identity=file_identity(os.fstat(q.mqd), fd=q.mqd))
            else:
                st = os.fstat(q.mqd)
                check_attach(self.url, uid=st.st_uid, mode=st.st_mode, allowed_mode=mode, allow_foreign=allow_foreign)
        except BaseException:
            self._close()
            if self.owner:
                self._unlink()
            raise
        self.max_messages = int(q.max_messages)
        self.max_message_size = int(q.max_message_size)
        self._init_channel(self.url, codec=codec)

    def _limit(self, value: int | str | None, what: str, sysctl_name: str, default: int) -> int:
        ceiling = sysctl(f"fs.mqueue.{sysctl_name}", default) or default
        if value is None:
            return min(default, ceiling)
        value = validate_size(value, what=what, minimum=1)
        if value > ceiling:
            raise LimitExceeded(f"create {self.url}: {what}={value} is over the limit {ceiling} "
                                f"set by {_SYSCTL_DIR}/{sysctl_name}")
        return value

    def _create_error(self, e: BaseException) -> KipcError:
        if (isinstance(e, OSError) and e.errno == _errno.EMFILE) or "Too many" in str(e):
            return LimitExceeded(f"create {self.url}: {e} (limits: RLIMIT_MSGQUEUE `ulimit -q`, "
                                 f"{_SYSCTL_DIR}/queues_max)")
        if isinstance(e, ValueError):
            return LimitExceeded(f"create {self.url}: {e} (limits: {_SYSCTL_DIR}/msg_max, "
                                 f"{_SYSCTL_DIR}/msgsize_max, RLIMIT_MSGQUEUE `ulimit -q`)")
        return translate_ipc_error(e, self.url, "create")

    # -- construction hooks ----------------------------------------------------------------------------
    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> PosixMessageQueue[Any]:
        from .._naming import merge_query

        return cls(parsed, **merge_query(parsed, options))

    # -- I/O ---------------------------------------------------------------------------------------------
    @staticmethod
    def _priority(knobs: dict[str, Any], url: str) -> int:
        prio = knobs.get("priority", 0)
        if prio.__class__ is not int or not 0 <= prio <= PRIORITY_MAX:
            raise InvalidArgument(f"send on {url}: priority {prio!r} must be an int in 0..{PRIORITY_MAX}")
        return prio

    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        prio = self._priority(knobs, self.url) if knobs else 0
        try:
            self._q.send(data, 0, prio)
            return True
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return False
        except Exception as e:
            raise translate_ipc_error(e, self.url, "send") from None

    def _try_recv(self, knobs: dict[str, Any]) -> Any:
        """The message, ``(message, priority)`` with the internal knob ``with_priority``, or None."""
        try:
            got = self._q.receive(0)
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return None
        except Exception as e:
            raise translate_ipc_error(e, self.url, "recv") from None
        return got if knobs.get("with_priority") else got[0]

    # The one blocking path per direction: wait in the kernel (fast wake-up) in slices.
    # mq_unlink does not wake a blocked mq_receive/mq_send, and close() from another
    # thread must not free the mqd under it: between slices a removed queue (st_nlink 0
    # on the mqd) or a closed handle ends the wait.
    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        prio = self._priority(knobs, self.url) if knobs else 0
        lock = self._send_lock if other_threads() else None  # see Channel._send_blocking
        if lock is not None:
            self._acquire(lock, "send", deadline)
        try:
            if self._closed:
                self._check_open("send")
            if deadline.timeout == 0:
                if not self._try_send(data, knobs):
                    raise deadline.error(f"send on {self.url}")
                return
            q = self._q
            while True:
                try:
                    q.send(data, _SLICE if deadline is FOREVER else self._slice(deadline), prio)
                    return
                except posix_ipc.BusyError:
                    self._check_slice(deadline, "send")
                except posix_ipc.SignalError:
                    continue  # EINTR: the handler ran (Ctrl-C raised); retry with the time left
                except Exception as e:
                    raise translate_ipc_error(e, self.url, "send") from None
        finally:
            if lock is not None:
                lock.release()

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        lock = self._recv_lock if other_threads() else None
        if lock is not None:
            self._acquire(lock, "recv", deadline)
        try:
            if self._closed:
                self._check_open("recv")
            if deadline.timeout == 0:
                got = self._try_recv(knobs)
                if got is None:
                    raise deadline.error(f"recv on {self.url}")
                return got
            q = self._q
            while True:
                try:
                    got = q.receive(_SLICE if deadline is FOREVER else self._slice(deadline))
                    return got if knobs and knobs.get("with_priority") else got[0]
                except posix_ipc.BusyError:
                    self._check_slice(deadline, "recv")
                except posix_ipc.SignalError:
                    continue
                except Exception as e:
                    raise translate_ipc_error(e, self.url, "recv") from None
        finally:
            if lock is not None:
                lock.release()

    @staticmethod
    def _slice(deadline: Deadline) -> float:
        remaining = deadline.remaining()
        return _SLICE if remaining is None else min(_SLICE, remaining)

    def _check_slice(self, deadline: Deadline, op: str) -> None:
        self._check_open(op)
        if deadline.expired() or deadline.nonblocking:
            raise deadline.error(f"{op} on {self.url}")
        if os.fstat(self._q.mqd).st_nlink == 0:
            raise ChannelClosed(f"{op} on {self.url}: the queue was removed")

    def _too_large(self, size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"send on {self.url}: message of {size} bytes exceeds the limit of {limit} bytes (this queue's "
            f"max_message_size, fixed at creation; ceiling {_SYSCTL_DIR}/msgsize_max)", size=size, limit=limit)

    def recv_with_priority(self, *, timeout: float | None = None) -> tuple[T, int]:
        """Like ``recv()`` but returns ``(message, priority)``."""
        deadline = Deadline.of(timeout)
        self._prepare_recv({})
        data, prio = self._recv_blocking(deadline, {"with_priority": True})
        return self.codec.decode(data), prio

    @property
    def current_messages(self) -> int:
        self._check_open("stat")
        return int(self._q.current_messages)

    def fileno(self) -> int:
        self._check_open("fileno")
        return int(self._q.mqd)

    def _wait_fd(self, op: str) -> int | None:
        q = self._q
        return None if q is None else int(q.mqd)  # None once closed (by another thread, maybe)

    # -- lifetime ------------------------------------------------------------------------------------------
    def _close(self) -> None:
        q, self._q = self._q, None
        if q is not None:
            try:
                q.close()
            except Exception:
                pass
        self._release_wake()

    def _unlink(self) -> None:
        try:
            posix_ipc.unlink_message_queue(self._name)
        except posix_ipc.ExistentialError:
            pass
        except Exception as e:
            raise translate_ipc_error(e, self.url, "unlink") from None
        finally:
            _owners.forget(self._record_url)


# -- object kind: how kipc ls / rm / gc see POSIX queues ------------------------------------------------------
class _QueueKind(Kind):
    """The mqueue fs lists every queue when it is mounted; without it kipc finds its own through owner records.

    ``stat`` opens the queue for an instant (read-only view: depth, and the inode
    of its mqueue file from ``fstat`` on the descriptor, which is its identity).
    """

    name = scheme = "posixmq"
    records = ("posixmq",)
    description = "posixmq (mqueue fs when mounted, else owner records)"

    @property
    def lists_all(self) -> bool:  # type: ignore[override]
        return mqueue_mount() is not None

    def locate(self, parsed: ParsedURL) -> Any:
        if parsed.path not in ("", "/") or not parsed.netloc:
            raise InvalidArgument(f"{parsed.url}: expected posixmq://NAME")
        return validate_name(parsed.netloc)

    def scan(self) -> list[ObjectInfo]:
        mount = mqueue_mount()
        if mount is None:
            return []
        try:
            names = sorted(os.listdir(mount))
        except OSError:
            return []
        found = [self.stat(n) for n in names]
        return [i for i in found if i is not None]

    def stat(self, target: Any) -> ObjectInfo | None:
        try:
            q = posix_ipc.MessageQueue("/" + target, read=True, write=False)
        except posix_ipc.ExistentialError:
            return None
        except Exception as e:  # no access: still there, say so
            return ObjectInfo(self.name, f"posixmq://{target}", target=target, detail=str(e))
        try:
            info = stat_info(self.name, f"posixmq://{target}", "", os.fstat(q.mqd), target=target, fd=q.mqd)
            info.path, info.size, info.depth = None, None, int(q.current_messages)
        finally:
            q.close()
        mount = mqueue_mount()
        if mount:
            info.path = os.path.join(mount, target)
            try:
                with open(info.path) as f:  # "QSIZE:5 NOTIFY:0 SIGNO:0 NOTIFY_PID:0"
                    info.size = info.queued = int(dict(kv.split(":", 1) for kv in f.read().split()).get("QSIZE", "0"))
            except (OSError, ValueError):
                pass
        return info

    def missing(self, target: Any) -> str:
        return "no such POSIX message queue"

    def blind_spot(self) -> str | None:
        if mqueue_mount() is not None:
            return None
        return ("POSIX queues of other programs are not listed: mount the mqueue fs with "
                "`mount -t mqueue none /dev/mqueue`")

    def remove(self, url: str, info: ObjectInfo) -> None:
        now = self.stat(info.target)
        if now is None:
            raise NotFound(f"rm {url}: no such POSIX message queue (removed meanwhile)")
        if info.identity is not None and now.identity != info.identity:
            raise NotFound(f"rm {url}: the queue was replaced meanwhile; not removed")
        refuse_foreign(url, now.uid)
        try:
            posix_ipc.unlink_message_queue("/" + info.target)
        except posix_ipc.ExistentialError:
            raise NotFound(f"rm {url}: no such POSIX message queue") from None
        except Exception as e:
            raise translate_ipc_error(e, url, "rm") from None


KIND = _QueueKind()
