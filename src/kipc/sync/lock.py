"""Named robust locks: ``kipc.Lock("posix://NAME")`` and ``kipc.RLock("posix://NAME")``.

Contract card:

* Object: one 4 KiB POSIX shm object, ``/kipc.lock.NAME`` (``/dev/shm/kipc.lock.NAME``) for a
  Lock, ``/kipc.rlock.NAME`` for an RLock (a ``kipc.SharedMemory("posix://NAME")`` is ``/NAME``:
  the two never collide). Layout: ``kipc/_native/kipc_sync.h`` (magic, version, kind, owner uid,
  holder pid, recovery count, a robust process-shared pthread mutex); a C program can include it
  and lock the same mutex.
* ``acquire(blocking=True, timeout=-1) -> bool`` and ``release()`` follow ``threading.Lock``:
  ``blocking=False`` never waits, ``timeout`` seconds (``-1`` = forever) then ``False``;
  releasing an unheld lock raises ``RuntimeError``. ``with lock:`` acquires and releases.
  ``locked()`` is True while a live thread somewhere holds it. The GIL is released while
  waiting, waits are sliced (100 ms) so Ctrl-C gets through.
* Ownership is per thread, as for a pthread mutex: ``release()`` must come from the thread that
  acquired (another thread gets ``RuntimeError``; ``threading.Lock`` would allow it). A blocking
  ``acquire()`` by the thread that already holds a Lock raises ``RuntimeError`` instead of
  deadlocking (``acquire(False)`` returns False). RLock counts recursion per owning thread.
* Owner death: when the holding thread or process dies (SIGKILL included), the kernel marks the
  mutex and the next ``acquire()`` gets it, returning True with ``lock.recovered`` set to True
  (False after an ordinary acquire) and ``lock.dead_pid`` naming the dead holder: repair the
  state the lock protects before releasing. ``recovered`` belongs to the acquire that set it:
  read it while you hold the lock. No warning or exception is raised (an exception from an
  acquire that succeeded would leave the lock held by a caller that thinks it failed).
* A stopped (SIGSTOP) holder is alive: it keeps the lock and waiters return False at their
  timeout.
* ``await lock.aacquire(blocking=True, timeout=-1)`` is cancel-safe: the event-loop thread only
  try-locks; a worker thread waits for a release without taking anything, so a cancelled
  ``aacquire`` never holds the lock. The loop thread becomes the owner: release from the loop
  thread. A dead holder is noticed by async waiters within 50 ms. ``RLock`` has no
  ``aacquire`` (every coroutine of a loop runs on one thread, so it would re-enter for any of
  them): use a Lock between coroutines.
* Creation exclusive by default (``create=True``), ``create="if_missing"`` attaches when it exists;
  ``wait=seconds`` waits for another process to create it (as ``kipc.open``; then ``Timeout``);
  mode 0600 whatever the umask. Opening checks type, owner uid (``allow_foreign=True``), mode
  bits (no more than ``mode``), size, magic, version and kind before trusting the mapping.
* Cleanup: the creator removes the object on ``close()`` (``persist=True`` keeps it); openers
  never remove. Processes that still have it open keep a working lock; a new opener after the
  removal gets ``NotFound``. ``close()`` by a thread that holds the lock releases it first.
"""

from __future__ import annotations

import asyncio
import os
import stat as _stat
import struct
import time
from typing import Any, ClassVar

from .. import _owners
from .._base import CreateMode, Resource, wait_pool
from .._kinds import DevShmKind, ObjectInfo
from .._naming import DEFAULT_MODE, lock_deadline, parse_bool, parse_url, validate_mode, validate_name
from .._objects import (
    check_attach,
    file_identity,
    open_path,
    open_waiting,
    parse_create,
    remove_path,
    sized,
    validate_wait,
)
from .._platform import native
from ..errors import BadObject, ChannelClosed, InvalidArgument, Unsupported, from_oserror

__all__ = ["LOCK_KIND", "RLOCK_KIND", "Lock", "RLock"]

_sync = native("_sync")
_sync._set_errors(ChannelClosed, BadObject)

#: seconds per worker-thread wait of aacquire / await_set: bounds how late a cancellation lands
_ASYNC_SLICE = 0.05


class _SyncObject(Resource):
    """Open/close/unlink plumbing of the shm-backed sync objects (Lock, RLock, Event)."""

    _prefix: ClassVar[str] = ""
    _kind_code: ClassVar[int] = 0
    _kind_name: ClassVar[str] = ""
    _h: Any = None
    path: str = ""

    def _open(self, url: str, create: bool | str, mode: int | str, persist: bool, allow_foreign: bool,
              wait: float | None = None) -> None:
        parsed = parse_url(url)
        what = type(self).__name__
        if parsed.scheme != "posix" or parsed.path not in ("", "/"):
            raise InvalidArgument(f"{url}: {what} addresses are posix://NAME")
        if parsed.query:
            raise InvalidArgument(f"{url}: unknown option(s) {sorted(parsed.query)}; pass create=, mode= as keywords")
        name = validate_name(parsed.netloc, what=f"{what} name")
        create = parse_create(create)
        validate_wait(url, wait, create)
        mode = validate_mode(mode)
        self.persist = parse_bool(persist, what="persist")
        self.url = url
        self.name = name
        self.path = path = f"/dev/shm/{self._prefix}{name}"
        self._record_url = f"posix-{self._kind_name}://{name}"  # read back by the object kind (kipc ls/gc)
        fd, created = open_waiting(url, wait, lambda: open_path(path, url, create, mode))
        try:
            if created:
                os.fchmod(fd, mode)  # the umask filtered open()'s mode
                try:
                    self._h = _sync.Sync(fd, self._kind_code, True, url)
                except BaseException:
                    os.unlink(path)
                    raise
                self.owner = True
                if not self.persist:
                    try:
                        _owners.record(self._record_url, self._kind_name, path=path,
                                       identity=file_identity(os.fstat(fd), fd=fd))
                    except BaseException:  # a half-made object must not outlive this constructor
                        self.owner = False
                        self._h.close()
                        os.unlink(path)
                        raise
            else:
                _check_attach(fd, url, mode, allow_foreign)
                self._h = _sync.Sync(fd, self._kind_code, False, url)
        except OSError as e:
            if type(e).__module__.startswith("kipc"):
                raise
            raise from_oserror(e, url, "create" if created else "open") from e
        finally:
            os.close(fd)  # the mapping keeps the object; no fd is held
        self._closed = False

    def info(self) -> dict[str, int]:
        """The header fields (kind, creator pid, holder pid/tid, recoveries, releases; or set/generation)."""
        self._check_open("info")
        return dict(self._h.info())

    def _close(self) -> None:
        if self._h is not None:
            self._h.close()

    def _unlink(self) -> None:
        remove_path(self.path, self._record_url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {'closed' if self._closed else 'open'}>"


def _check_attach(fd: int, url: str, mode: int, allow_foreign: bool) -> None:
    st = os.fstat(fd)
    if not _stat.S_ISREG(st.st_mode):
        raise BadObject(f"open {url}: not a regular shared-memory object")
    check_attach(url, uid=st.st_uid, mode=st.st_mode, allowed_mode=mode, allow_foreign=allow_foreign)
    st = sized(fd, st)  # its creator may be between O_EXCL and ftruncate
    if st.st_size != _sync.SIZE:
        raise BadObject(f"open {url}: {st.st_size} bytes, not a kipc sync object ({_sync.SIZE} bytes); refused")




class Lock(_SyncObject):
    """A named, robust, process-shared lock; see the module docstring for the contract."""

    _prefix = "kipc.lock."
    _kind_code = _sync.KIND_LOCK
    _kind_name = "lock"

    def __init__(self, url: str, *, create: CreateMode = False, mode: int | str = DEFAULT_MODE,
                 persist: bool = False, allow_foreign: bool = False, wait: float | None = None) -> None:
        self._open(url, create, mode, persist, allow_foreign, wait)
        h = self._h
        # The hot path goes straight to C (a Python wrapper would double the cost of a lock round).
        self.acquire = h.acquire  # type: ignore[method-assign]
        self.release = h.release  # type: ignore[method-assign]
        self.locked = h.locked  # type: ignore[method-assign]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; True when taken (``lock.recovered`` tells if its holder had died)."""
        if self._h is None:
            raise ChannelClosed(f"acquire on {self.url}: closed by this process")
        return bool(self._h.acquire(blocking, timeout))

    def release(self) -> None:
        """Release (by the thread that acquired); ``RuntimeError`` if this thread does not hold it."""
        if self._h is None:
            raise ChannelClosed(f"release on {self.url}: closed by this process")
        self._h.release()

    def locked(self) -> bool:
        """True while a live thread (of any process) holds the lock."""
        if self._h is None:
            raise ChannelClosed(f"locked on {self.url}: closed by this process")
        return bool(self._h.locked())

    def owned(self) -> bool:
        """True if the calling thread holds the lock."""
        self._check_open("owned")
        return bool(self._h.owned())

    @property
    def recovered(self) -> bool:
        """True when the last successful acquire by this handle took the lock from a dead holder."""
        return self._h is not None and bool(self._h.recovered)

    @property
    def dead_pid(self) -> int:
        """The pid of the dead holder that acquire recovered from (0 if unknown or none)."""
        return 0 if self._h is None else int(self._h.dead_pid)

    async def aacquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``acquire`` for asyncio, cancel-safe (see the module docstring)."""
        deadline = lock_deadline(blocking, timeout)
        h = self._h
        if h is None:
            raise ChannelClosed(f"acquire on {self.url}: closed by this process")
        gen = h.release_gen()  # read before trying: a release after the try changes it
        if h.acquire(False):
            return True
        if not blocking:
            return False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Consumes nothing: cancelling here leaves the lock exactly as it was.
            await asyncio.wrap_future(wait_pool().submit(h.wait_release, gen, min(_ASYNC_SLICE, left)))
            gen = h.release_gen()
            if h.acquire(False):
                return True

    def __enter__(self) -> Lock:
        if self._h is None:
            raise ChannelClosed(f"acquire on {self.url}: closed by this process")
        self._h.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._h.release()

    async def __aenter__(self) -> Lock:
        await self.aacquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._h.release()


class RLock(Lock):
    """A named, robust, process-shared re-entrant lock (recursion counted per owning thread)."""

    _prefix = "kipc.rlock."
    _kind_code = _sync.KIND_RLOCK
    _kind_name = "rlock"

    async def aacquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        raise Unsupported(f"aacquire on {self.url}: an RLock is owned per thread and every coroutine of a loop "
                          "shares one thread; use kipc.Lock between coroutines")

    def __enter__(self) -> RLock:
        if self._h is None:
            raise ChannelClosed(f"acquire on {self.url}: closed by this process")
        self._h.acquire()
        return self


# -- object kinds: how kipc ls / rm / gc see locks and events ----------------------------------------
_HDR = struct.Struct("<Q12I")  # magic, version, kind, size, owner_uid, creator_pid, reserved, holder_pid, ...
_MUTEX_OFFSET = 64  # pthread_mutex_t: its first int is the robust futex word (holder tid | flags)


class SyncKind(DevShmKind):
    """``/dev/shm/kipc.{lock,rlock,event}.NAME``: ``kipc ls`` shows a lock's holder pid in ``pids``."""

    def describe(self, name: str, path: str, st: os.stat_result) -> ObjectInfo:
        info = super().describe(name, path, st)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                raw = os.pread(fd, _MUTEX_OFFSET + 4, 0)
            finally:
                os.close(fd)
        except OSError:
            return info
        if len(raw) < _MUTEX_OFFSET + 4 or _HDR.unpack_from(raw)[0] != _sync.MAGIC:
            return info
        fields = _HDR.unpack_from(raw)
        info.creator_pid = fields[5]
        holder, tid = fields[7], struct.unpack_from("<I", raw, _MUTEX_OFFSET)[0] & 0x3FFFFFFF
        if fields[2] != _sync.KIND_EVENT and holder and tid:
            info.pids = [holder]
        return info


LOCK_KIND = SyncKind("lock", "posix", "kipc.lock.", part="lock", records=("lock",), record_scheme="posix-lock",
                     description="lock (/dev/shm/kipc.lock.NAME; pids: the holder)")
RLOCK_KIND = SyncKind("rlock", "posix", "kipc.rlock.", part="rlock", records=("rlock",),
                      record_scheme="posix-rlock", description="rlock (/dev/shm/kipc.rlock.NAME; pids: the holder)")
