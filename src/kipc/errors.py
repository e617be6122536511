"""The kipc error tree and the one errno -> class table.

Every error kipc raises is a :class:`KipcError`. Where a builtin exception
already means the same thing, the kipc class also inherits it, so existing
``except FileExistsError`` / ``except TimeoutError`` clauses keep working::

    KipcError
    ├── AlreadyExists      (FileExistsError)
    ├── NotFound           (FileNotFoundError)
    ├── PermissionDenied   (PermissionError)
    ├── DeadlineExceeded                       the call could not finish in the time it was given
    │   ├── Timeout        (TimeoutError)      timeout=t (t > 0) passed; the channel is unchanged
    │   └── WouldBlock     (BlockingIOError)   timeout=0 and the call would have had to wait
    ├── MessageTooLarge    (ValueError)        names the size and the limit
    ├── InvalidArgument    (ValueError)        bad name, key, size, mode, timeout
    ├── ChannelClosed      (EOFError)          no more messages: closed here, or the peer finished
    │   └── PeerGone       (BrokenPipeError)   the peer vanished / broke the stream
    ├── ProtocolError                          bytes on the wire are not kipc's (truncated, forged, bad auth)
    ├── BadObject          (OSError)           an object exists but is not what we expect (magic, size, type)
    ├── LimitExceeded      (OSError)           a kernel limit (sysctl / rlimit) stopped us; names it
    └── Unsupported        (NotImplementedError) a knob this mechanism cannot honour

Messages name the object and the operation (``"send on fifo:///tmp/x: ..."``).
``.errno`` is kept when an OS error was the cause. :func:`from_oserror`
translates an ``OSError``, :func:`translate_ipc_error` an exception of
``sysv_ipc`` / ``posix_ipc`` (which are not ``OSError`` and drop the errno):
no raw exception of those libraries escapes kipc.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AlreadyExists",
    "BadObject",
    "ChannelClosed",
    "DeadlineExceeded",
    "InvalidArgument",
    "KipcError",
    "LimitExceeded",
    "MessageTooLarge",
    "NotFound",
    "PeerGone",
    "PermissionDenied",
    "ProtocolError",
    "Timeout",
    "Unsupported",
    "WouldBlock",
    "from_oserror",
    "translate_ipc_error",
]


class KipcError(Exception):
    """Base of every kipc error."""

    errno: int | None

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        # OSError subclasses expose a writable ``errno``; for the others it is a plain attribute.
        self.errno = errno

    def __str__(self) -> str:  # OSError.__str__ would print "[Errno None] ..."
        return str(self.args[0]) if self.args else ""


class AlreadyExists(KipcError, FileExistsError):
    """The object exists and exclusive creation was asked (the default)."""


class NotFound(KipcError, FileNotFoundError):
    """The object does not exist (and creation was not asked)."""


class PermissionDenied(KipcError, PermissionError):
    """The kernel refused, or kipc refused a foreign/too-open object."""


class DeadlineExceeded(KipcError):
    """The call did not happen within the time it was given (``timeout=0``: at once; ``t``: t seconds).

    As in the stdlib, the two cases are siblings: :class:`Timeout` (a ``TimeoutError``) and
    :class:`WouldBlock` (a ``BlockingIOError``); catch this class for either. The channel is unchanged.
    """


class Timeout(DeadlineExceeded, TimeoutError):
    """A blocking call ran out of time; the channel is unchanged."""


class WouldBlock(DeadlineExceeded, BlockingIOError):
    """``timeout=0`` and the call would have had to wait; the channel is unchanged."""


class MessageTooLarge(KipcError, ValueError):
    """A message is bigger than the channel (or kernel) allows.

    ``size`` and ``limit`` are the two numbers; the message names both and,
    where one exists, the sysctl that sets the limit.
    """

    def __init__(self, message: str, *, size: int, limit: int, errno: int | None = None) -> None:
        super().__init__(message, errno=errno)
        self.size = size
        self.limit = limit


class InvalidArgument(KipcError, ValueError):
    """A name, key, size, mode, URL or timeout is not acceptable."""


class ChannelClosed(KipcError, EOFError):
    """No more messages: this end was closed, the peer finished, or the object was removed."""


class PeerGone(ChannelClosed, BrokenPipeError):
    """The peer disappeared mid-conversation (reset, broken pipe, died)."""


class ProtocolError(KipcError):
    """Bytes from the peer are not a valid kipc stream (truncated frame, forged length, failed auth)."""


class BadObject(KipcError, OSError):
    """An object exists but is not what kipc expects (wrong magic/version/size/type)."""


class LimitExceeded(KipcError, OSError):
    """A kernel limit was hit; the message names the sysctl or rlimit."""


class Unsupported(KipcError, NotImplementedError):
    """The mechanism cannot honour this knob or operation."""


# The one errno -> class table.
_ERRNO_TABLE: dict[int, type[KipcError]] = {
    _errno.EEXIST: AlreadyExists,
    _errno.ENOENT: NotFound,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
    _errno.EAGAIN: WouldBlock,
    _errno.ETIMEDOUT: Timeout,
    _errno.EPIPE: PeerGone,
    _errno.ECONNRESET: PeerGone,
    _errno.ECONNREFUSED: NotFound,
    _errno.ENXIO: NotFound,
    _errno.EIDRM: ChannelClosed,
    _errno.EMSGSIZE: MessageTooLarge,
    _errno.EINVAL: InvalidArgument,
    _errno.ENAMETOOLONG: InvalidArgument,
    _errno.ENOSPC: LimitExceeded,
    _errno.EMFILE: LimitExceeded,
    _errno.ENFILE: LimitExceeded,
    _errno.ENOMEM: LimitExceeded,
    _errno.ENOSYS: Unsupported,
    _errno.EOPNOTSUPP: Unsupported,
    _errno.ELOOP: PermissionDenied,  # O_NOFOLLOW met a symlink planted at an object's name
}

# What to tell the user when a limit errno comes back.
_LIMIT_HINT: dict[int, str] = {
    _errno.EMFILE: "RLIMIT_NOFILE (ulimit -n)",
    _errno.ENFILE: "fs.file-max",
}


def error_class(err: int) -> type[KipcError]:
    """The kipc class for an errno (``KipcError`` itself when unmapped)."""
    return _ERRNO_TABLE.get(err, KipcError)


def from_oserror(exc: OSError, obj: str, op: str, *, hint: str | None = None) -> KipcError:
    """Translate an ``OSError`` into the kipc class, naming object and operation.

    Use as ``raise from_oserror(e, url, "open") from e``.
    """
    err = exc.errno or 0
    cls = error_class(err)
    reason = exc.strerror or os.strerror(err) if err else str(exc)
    if err == _errno.ELOOP:
        reason = "the name is a symlink (kipc never follows one to an IPC object); refused"
    hint = hint or _LIMIT_HINT.get(err)
    msg = f"{op} {obj}: {reason}"
    if hint:
        msg += f" (limit: {hint})"
    if cls is MessageTooLarge:
        return InvalidArgument(msg, errno=err)  # no numbers to name: caller should check first
    return cls(msg, errno=err)


# sysv_ipc / posix_ipc messages for ENOSPC, and the kernel limit each one means.
_LIMIT_TEXTS = (
    ("system limit for message queues", "sysctl kernel.msgmni"),
    ("Not enough shared memory identifiers", "sysctl kernel.shmmni"),
    ("Insufficient space for a new queue", "/proc/sys/fs/mqueue/queues_max (fs.mqueue.queues_max) "
                                           "or RLIMIT_MSGQUEUE `ulimit -q`"),
)


def translate_ipc_error(exc: BaseException, what: str, op: str) -> KipcError:
    """A sysv_ipc / posix_ipc exception as the kipc error that means the same."""
    import posix_ipc  # imported here: errors is the bottom layer and must import without them
    import sysv_ipc

    text = f"{op} {what}: {exc}"
    for needle, limit in _LIMIT_TEXTS:  # the libraries report these without an errno
        if needle in str(exc):
            return LimitExceeded(f"{text} (limit: {limit})", errno=_errno.ENOSPC)
    if isinstance(exc, (sysv_ipc.ExistentialError, posix_ipc.ExistentialError)):
        if "already" in str(exc).lower():
            return AlreadyExists(text, errno=_errno.EEXIST)
        return NotFound(text, errno=_errno.ENOENT)
    if isinstance(exc, (sysv_ipc.PermissionsError, posix_ipc.PermissionsError)):
        return PermissionDenied(text, errno=_errno.EACCES)
    if isinstance(exc, OSError):
        return from_oserror(exc, what, op)
    if isinstance(exc, ValueError):
        return InvalidArgument(text)
    return KipcError(text)
