"""File locks: ``kipc.FileLock("file:///path/to/lockfile", shared=False, kind="flock")``.

Contract card:

* ``kind="flock"`` (default): ``flock(2)``, the lock ``flock(1)``, Python's ``filelock`` package
  and most tools take. ``kind="fcntl"``: open-file-description record locks (``F_OFD_SETLK`` /
  ``F_OFD_SETLKW`` on the whole file), the ones C programs using ``fcntl`` locks exclude each
  other with (classic POSIX ``F_SETLK`` locks and OFD locks conflict with each other). On Linux
  the two families do not see each other: a ``flock`` holder does not exclude an ``fcntl``
  holder. Pick the kind the other programs use.
* ``shared=True`` takes a shared (read) lock: many shared holders, no exclusive one.
* ``acquire(blocking=True, timeout=-1) -> bool`` / ``release()`` / ``with`` / ``locked()`` as for
  ``threading.Lock`` (``RuntimeError`` when releasing what this object does not hold). Not
  re-entrant: a second acquire through the same object (or another FileLock on the same file in
  the same process) waits like any other holder. ``await aacquire(...)`` is cancel-safe: every
  attempt is non-blocking on the event-loop thread; between attempts the loop waits on an
  inotify fd, consuming nothing.
* Released by the kernel when the holder dies (the lock belongs to the open file description).
* Waiting: without a timeout, one blocking ``flock``/``F_OFD_SETLKW`` call in the kernel (GIL
  released, Ctrl-C gets through). With a timeout, non-blocking attempts woken by inotify
  (``IN_CLOSE_*`` on the lock file: a holder that exits, or releases by closing its fd as kipc,
  ``flock(1)`` and ``filelock`` do) and, as a safety net for holders that unlock without closing,
  a back-off re-try every 1 ms doubling to 50 ms (without inotify: that back-off alone).
* The lock file is created if missing (``create="if_missing"``, the default; ``True`` =
  exclusively; ``False`` = must exist), ``O_NOFOLLOW`` (a symlink is refused), mode 0600 whatever
  the umask. Attach checks on every acquire: a regular file, owned by us (``allow_foreign=True``),
  no mode bits beyond ``mode`` (anyone who can open the file can hold the lock for ever).
* Cleanup: the lock file is never deleted by kipc (and has no owner record). Deleting a lock file
  races: a waiter that opened the old file gets its lock on the deleted inode while a newcomer
  creates and locks a new file, and both believe they hold the lock. ``close()`` releases a held
  lock and closes its fds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as _errno
import fcntl
import math
import os
import select
import stat as _stat
import struct
import threading
import time
from typing import Any

from .._base import CreateMode, Resource
from .._naming import DEFAULT_MODE, lock_deadline, parse_url, validate_mode, validate_path
from .._objects import check_attach, parse_create
from ..errors import AlreadyExists, BadObject, InvalidArgument, PermissionDenied, from_oserror

__all__ = ["FileLock"]

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_FLOCK = struct.Struct("hh4xqqi4x")  # struct flock on 64-bit Linux: type, whence, start, len, pid (0 for OFD)
assert _FLOCK.size == 32
_BUSY = (_errno.EAGAIN, _errno.EACCES, _errno.EWOULDBLOCK)
_BACKOFF_MIN, _BACKOFF_MAX = 0.001, 0.05

_IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
_IN_EXTRA = 0x400 | 0x800 | 0x04  # IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _libc.inotify_init1.argtypes = [ctypes.c_int]
    _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _libc = None


def _inotify(path: str) -> int:
    """An inotify fd watching ``path`` for closes, or -1 (then the back-off alone wakes waiters)."""
    if _libc is None:
        return -1
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return -1
    if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_CLOSE | _IN_EXTRA) < 0:
        os.close(fd)
        return -1
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class FileLock(Resource):
    """An advisory lock on a file, released by the kernel when its holder dies; see the module docstring."""

    def __init__(self, url: str, *, shared: bool = False, kind: str = "flock", create: CreateMode = "if_missing",
                 mode: int | str = DEFAULT_MODE, allow_foreign: bool = False) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "file" or parsed.netloc:
            raise InvalidArgument(f"{url}: FileLock addresses are file:///absolute/path")
        if parsed.query:
            raise InvalidArgument(f"{url}: unknown option(s) {sorted(parsed.query)}; pass them as keywords")
        if kind not in ("flock", "fcntl"):
            raise InvalidArgument(f"{url}: kind must be 'flock' or 'fcntl', not {kind!r}")
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be bool, not {type(shared).__name__}")
        self.path = validate_path(parsed.path)
        self.url = url
        self.kind = kind
        self.shared = shared
        self.mode = validate_mode(mode)
        self._allow_foreign = allow_foreign
        self._create = parse_create(create)
        self._held: list[int] = []  # fds holding the lock (several only for shared locks)
        self._guard = threading.Lock()
        # Create (or check) the file now, so errors show at construction.
        fd = self._open_checked(first=True)
        os.close(fd)
        self._closed = False

    # -- the file ---------------------------------------------------------------------------------
    def _open_checked(self, first: bool = False) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        path, url = self.path, self.url
        fd = -1
        if not first:  # the file usually exists: open it first (a failed O_EXCL costs an exception)
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if not self._create:
                    raise self._oserror(FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path),
                                        "open") from None
            except OSError as e:
                raise self._oserror(e, "open") from e
        if fd < 0 and self._create:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, self.mode)
                os.fchmod(fd, self.mode)  # the umask filtered open()'s mode
                return fd
            except FileExistsError:
                if self._create is True and first:
                    raise AlreadyExists(f"create {url}: {path} exists (create='if_missing' uses it)",
                                        errno=_errno.EEXIST) from None
            except OSError as e:
                raise self._oserror(e, "create") from e
        if fd < 0:
            try:
                fd = os.open(path, flags)
            except OSError as e:
                raise self._oserror(e, "open") from e
        try:
            st = os.fstat(fd)
            if not _stat.S_ISREG(st.st_mode):
                raise BadObject(f"open {url}: {path} is not a regular file")
            check_attach(url, uid=st.st_uid, mode=st.st_mode, allowed_mode=self.mode,
                         allow_foreign=self._allow_foreign)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _oserror(self, e: OSError, op: str) -> Exception:
        if e.errno == _errno.ELOOP:
            return PermissionDenied(f"{op} {self.url}: {self.path} is a symlink; refused", errno=e.errno)
        if e.errno == _errno.EISDIR:
            return BadObject(f"{op} {self.url}: {self.path} is a directory, not a regular file", errno=e.errno)
        return from_oserror(e, self.url, op)

    # -- one attempt ------------------------------------------------------------------------------
    def _lock(self, fd: int, wait: bool) -> bool:
        """One lock call on ``fd``; False when another holder has it (only when not ``wait``)."""
        try:
            if self.kind == "flock":
                op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
                fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
            else:
                ltype = fcntl.F_RDLCK if self.shared else fcntl.F_WRLCK
                fcntl.fcntl(fd, _F_OFD_SETLKW if wait else _F_OFD_SETLK, _FLOCK.pack(ltype, os.SEEK_SET, 0, 0, 0))
            return True
        except OSError as e:
            if not wait and e.errno in _BUSY:
                return False
            raise from_oserror(e, self.url, "acquire") from e

    def _unlock(self, fd: int) -> None:
        try:
            if self.kind == "flock":
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
        finally:
            os.close(fd)  # closing also wakes inotify waiters

    def _got(self, fd: int) -> bool:
        with self._guard:
            self._held.append(fd)
        return True

    # -- public API -------------------------------------------------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; True when taken, False when ``blocking=False`` or ``timeout`` ran out."""
        deadline = lock_deadline(blocking, timeout)
        self._check_open("acquire")
        fd = self._open_checked()
        try:
            if self._lock(fd, wait=False):
                return self._got(fd)
            if not blocking:
                os.close(fd)
                return False
            if deadline <= time.monotonic():
                os.close(fd)
                return False
            if deadline == math.inf:
                self._lock(fd, wait=True)  # one blocking call in the kernel (EINTR retried by Python)
                return self._got(fd)
            ino = _inotify(self.path)
            try:
                pause = _BACKOFF_MIN
                while True:
                    if ino >= 0:
                        _drain(ino)
                    if self._lock(fd, wait=False):
                        return self._got(fd)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        os.close(fd)
                        return False
                    wait = min(pause, left)
                    if ino >= 0:
                        select.select([ino], [], [], wait)
                    else:
                        time.sleep(wait)
                    pause = min(pause * 2, _BACKOFF_MAX)
            finally:
                if ino >= 0:
                    os.close(ino)
        except BaseException:
            with self._guard:
                mine = fd in self._held
            if not mine:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise

    async def aacquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``acquire`` for asyncio: non-blocking attempts on the loop thread, inotify wake-ups between."""
        deadline = lock_deadline(blocking, timeout)
        self._check_open("acquire")
        loop = asyncio.get_running_loop()
        # One fd for every attempt: opening and closing the file per attempt would itself wake
        # the inotify watch (IN_CLOSE) and spin.
        fd = self._open_checked()
        ino = -1
        try:
            if self._lock(fd, wait=False):
                return self._got(fd)
            if not blocking:
                os.close(fd)
                return False
            ino = _inotify(self.path)
            pause = _BACKOFF_MIN
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.close(fd)
                    return False
                wait = min(pause, left)
                if ino >= 0:
                    fut: asyncio.Future[None] = loop.create_future()
                    loop.add_reader(ino, _wake, fut)
                    try:
                        await asyncio.wait_for(fut, wait)
                    except TimeoutError:
                        pass
                    finally:
                        loop.remove_reader(ino)
                    _drain(ino)
                else:
                    await asyncio.sleep(wait)
                pause = min(pause * 2, _BACKOFF_MAX)
                # synchronous: a cancellation cannot land between taking the lock and returning
                if self._lock(fd, wait=False):
                    return self._got(fd)
        except BaseException:
            with self._guard:
                mine = fd in self._held
            if not mine:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        finally:
            if ino >= 0:
                os.close(ino)

    def release(self) -> None:
        """Release the lock this object holds (``RuntimeError`` if it holds none)."""
        with self._guard:
            if not self._held:
                raise RuntimeError(f"release unlocked lock {self.url}")
            fd = self._held.pop()
        self._unlock(fd)

    def locked(self) -> bool:
        """True if this object or anybody else holds the lock (probed with a non-blocking attempt)."""
        self._check_open("locked")
        if self._held:
            return True
        fd = self._open_checked()
        try:
            if self._lock(fd, wait=False):
                self._unlock(fd)
                fd = -1
                return False
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return bool(self._held)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> FileLock:
        await self.aacquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def _close(self) -> None:
        held = getattr(self, "_held", [])
        while held:
            self._unlock(held.pop())

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("held" if self._held else "open")
        return f"<FileLock {self.url} {self.kind}{' shared' if self.shared else ''} {state}>"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


