"""Counting semaphores: ``sysv://KEY`` (semget/semop) and ``posix://NAME`` (sem_open, ``/dev/shm/sem.NAME``).

Contract card:

* ``acquire(blocking=True, timeout=None) -> bool`` decrements (blocks while
  the value is 0), exactly like ``threading.Semaphore.acquire``: True when
  acquired, False when ``blocking=False`` or ``timeout`` ran out (so code
  written for ``threading``/``multiprocessing`` works unchanged; kipc's
  channels raise :class:`Timeout` instead, semaphores follow the stdlib).
  Kernel timeouts (``semtimedop`` / ``sem_timedwait``) in slices of 50 ms;
  EINTR retried with the time left; Ctrl-C gets through. ``release()``
  increments. ``value`` reads the count. Context manager = acquire/release.
* Threads: any number may acquire at once; ``close()`` from another thread
  wakes blocked acquirers within 50 ms with :class:`ChannelClosed`.
* ``await aacquire(timeout=None) -> bool`` tries on the loop thread, then waits
  in kipc's wait threads in 50 ms slices (no fd exists). Cancelled, it has
  taken nothing: a permit a worker got after the cancellation is given back.
* Crash safety: the SysV flavour uses ``SEM_UNDO`` by default — a holder
  killed by SIGKILL has its acquisitions undone by the kernel. This assumes
  each process releases what it acquired (a process that only releases, as in
  producer/consumer signalling, should pass ``undo=False``). POSIX named
  semaphores have no undo: a holder that crashes keeps the count down for
  ever. With ``posix://`` use ``acquire(timeout=...)`` to notice, or prefer
  ``sysv://`` when holders may crash.
* Value limits: SysV ``SEMVMX`` (32767), POSIX ``SEM_VALUE_MAX``.
* Creation exclusive by default (``value=`` is the initial count, default 1),
  ``create="if_missing"``; ``wait=seconds`` waits for another process to create
  it (as ``kipc.open``; then ``Timeout``); mode 0600 whatever the umask.
  Opening refuses a semaphore of another uid (``allow_foreign=True``) or with
  more mode bits than ``mode``.
* Cleanup: the creator removes it on ``close()`` unless ``persist=True``;
  openers never remove.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno as _errno
import os
import threading
from typing import Any

import posix_ipc
import sysv_ipc

from .. import _owners
from .._base import ASYNC_SLICE, CreateMode, Deadline, Resource, wait_pool
from .._kinds import DevShmKind, ObjectInfo, SysvKind
from .._naming import DEFAULT_MODE, parse_bool, parse_url, validate_mode, validate_name
from .._objects import (
    check_attach,
    check_sysv_creator,
    create_or_attach,
    file_identity,
    open_waiting,
    parse_create,
    sysv_identity,
    sysv_key,
    sysv_row,
    validate_wait,
)
from ..errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    from_oserror,
    translate_ipc_error,
)

__all__ = ["POSIX_KIND", "SYSV_KIND", "Semaphore"]

_CLOSE_GRACE = 2.0

# sysv_ipc is built without semtimedop here (SEMAPHORE_TIMEOUT_SUPPORTED is False: it would
# ignore timeouts), so the SysV wait itself goes through libc. ctypes releases the GIL.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.semtimedop.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_SEM_UNDO, _IPC_NOWAIT = 0x1000, 0o4000
_SEM_T_SIZE = 32 if ctypes.sizeof(ctypes.c_void_p) == 8 else 16  # glibc's __SIZEOF_SEM_T


class _Sembuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _semop(semid: int, op: int, undo: bool, timeout: float | None) -> int:
    """One semtimedop; returns 0 or the errno (EAGAIN = would block / timed out)."""
    flags = (_SEM_UNDO if undo else 0) | (_IPC_NOWAIT if timeout == 0 else 0)
    buf = _Sembuf(0, op, flags)
    ts = None
    if timeout:
        ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
    rc = _libc.semtimedop(semid, ctypes.byref(buf), 1, ctypes.byref(ts) if ts is not None else None)
    return 0 if rc == 0 else ctypes.get_errno()


class Semaphore(Resource):
    """A named counting semaphore shared between processes (and C programs).

    ``with sem:`` acquires and releases (like ``threading.Semaphore``); it does not close.
    """

    _sem: Any = None

    def __init__(self, url: str, *, value: int | None = None, create: CreateMode = False,
                 mode: int | str = DEFAULT_MODE, persist: bool = False, undo: bool = True,
                 allow_foreign: bool = False, wait: float | None = None) -> None:
        parsed = parse_url(url)
        create = parse_create(create)
        validate_wait(url, wait, create)
        mode = validate_mode(mode)
        self.persist = parse_bool(persist, what="persist")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidArgument(f"{url}: value must be an int >= 0, not {value!r}")
        if value is not None and not create:
            raise InvalidArgument(f"open {url}: value= is the initial count; it needs create=True or 'if_missing'")
        initial = 1 if value is None else value
        self.url = url
        if parsed.scheme == "sysv":
            self.kind = "sysv"
            key = sysv_key(parsed)
            if key == 0:
                raise InvalidArgument(f"{url}: private SysV semaphores are not supported; use a key")
            if initial > sysv_ipc.SEMAPHORE_VALUE_MAX:
                raise InvalidArgument(f"{url}: value {initial} is over SEMVMX ({sysv_ipc.SEMAPHORE_VALUE_MAX})")
            self._record_url = f"sysv-sem://{key}"
            open_waiting(url, wait, lambda: self._open_sysv(key, create, mode, initial, allow_foreign))
            self._undo = bool(undo)
            self._semid = self._sem.id
        elif parsed.scheme == "posix":
            self.kind = "posix"
            if parsed.path not in ("", "/"):
                raise InvalidArgument(f"{url}: expected posix://NAME")
            name = validate_name(parsed.netloc, what="semaphore name", max_len=200)
            if initial > posix_ipc.SEMAPHORE_VALUE_MAX:
                raise InvalidArgument(f"{url}: value {initial} is over SEM_VALUE_MAX ({posix_ipc.SEMAPHORE_VALUE_MAX})")
            self._name = "/" + name
            self._record_url = f"posix-sem://{name}"
            open_waiting(url, wait, lambda: self._open_posix(name, create, mode, initial, allow_foreign))
        else:
            raise InvalidArgument(f"{url}: Semaphore addresses are sysv://KEY or posix://NAME")
        self._calls = threading.Condition()
        self._inflight = 0
        self._closed = False

    def _open_sysv(self, key: int, create: bool | str, mode: int, initial: int, allow_foreign: bool) -> None:
        def make() -> Any:
            try:
                return sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode, initial)
            except sysv_ipc.ExistentialError as e:
                raise AlreadyExists(f"create {self.url}: already exists", errno=_errno.EEXIST) from e
            except OSError as e:
                if e.errno == _errno.ENOSPC:  # semget: no identifier (SEMMNI) or semaphore (SEMMNS) left
                    raise LimitExceeded(f"create {self.url}: {e.strerror} (limit: sysctl kernel.sem, "
                                        "its fields SEMMNI (4th) and SEMMNS (2nd))", errno=e.errno) from None
                raise translate_ipc_error(e, self.url, "create") from None
            except Exception as e:
                raise translate_ipc_error(e, self.url, "create") from None

        def attach() -> Any:
            try:
                sem = sysv_ipc.Semaphore(key)
            except sysv_ipc.ExistentialError as e:
                raise NotFound(f"open {self.url}: no such semaphore", errno=_errno.ENOENT) from e
            except Exception as e:
                raise translate_ipc_error(e, self.url, "open") from None
            check_sysv_creator(self.url, key, uid=sem.uid, cuid=sem.cuid, cgid=sem.cgid, allow_foreign=allow_foreign)
            check_attach(self.url, uid=sem.uid, mode=sem.mode, allowed_mode=mode, allow_foreign=allow_foreign)
            return sem

        self._sem, self.owner = create_or_attach(create, make, attach)
        if self.owner:
            row = sysv_row("sem", self._sem.id)
            _owners.record(self._record_url, "sysv-sem", identity=sysv_identity("sem", row) if row else None)

    def _open_posix(self, name: str, create: bool | str, mode: int, initial: int, allow_foreign: bool) -> None:
        path = f"/dev/shm/sem.{name}"

        def make() -> Any:
            try:
                return posix_ipc.Semaphore(self._name, posix_ipc.O_CREX, mode, initial)
            except posix_ipc.ExistentialError as e:
                raise AlreadyExists(f"create {self.url}: already exists", errno=_errno.EEXIST) from e
            except Exception as e:
                raise translate_ipc_error(e, self.url, "create") from None

        def attach() -> Any:
            try:
                return posix_ipc.Semaphore(self._name)
            except posix_ipc.ExistentialError as e:
                raise NotFound(f"open {self.url}: no such semaphore", errno=_errno.ENOENT) from e
            except Exception as e:
                raise translate_ipc_error(e, self.url, "open") from None

        sem, self.owner = create_or_attach(create, make, attach)
        self._sem = sem
        try:
            if self.owner:
                os.chmod(path, mode)  # sem_open's mode went through the umask (it can only have narrowed it)
                _owners.record(self._record_url, "posix-sem", identity=file_identity(os.stat(path), path=path))
            else:
                st = os.stat(path)
                check_attach(self.url, uid=st.st_uid, mode=st.st_mode, allowed_mode=mode, allow_foreign=allow_foreign)
                if st.st_size < _SEM_T_SIZE:  # glibc maps sizeof(sem_t) unchecked: a short file is SIGBUS on use
                    raise BadObject(f"open {self.url}: {path} is {st.st_size} bytes, not a semaphore "
                                    f"({_SEM_T_SIZE} bytes); refused")
        except FileNotFoundError:
            if self.owner:  # /dev/shm is not where this libc keeps semaphores: nothing to check
                _owners.record(self._record_url, "posix-sem")
        except BaseException:
            sem.close()
            if self.owner:
                self._unlink()
            raise

    # -- operations --------------------------------------------------------------------------------
    # -- in-flight calls: close() from another thread waits for them, never frees under them --
    _calls: Any = None
    _inflight = 0

    def _enter(self, op: str) -> None:
        with self._calls:
            self._check_open(op)
            self._inflight += 1

    def _leave(self) -> None:
        with self._calls:
            self._inflight -= 1
            self._calls.notify_all()

    def _quiesce(self) -> list[Any]:
        if self._calls is not None:
            with self._calls:
                self._calls.wait_for(lambda: self._inflight == 0, _CLOSE_GRACE)
        return []

    def _attempt(self, deadline: Deadline) -> bool:
        """One kernel wait of at most ``deadline``: True when acquired, False when it ran out."""
        if self.kind == "sysv":
            err = _semop(self._semid, -1, self._undo, deadline.remaining())
            if err == 0:
                return True
            if err in (_errno.EAGAIN, _errno.EINTR):  # EINTR: the Python handler runs next (Ctrl-C raises)
                return False
            if err in (_errno.EIDRM, _errno.EINVAL):
                raise ChannelClosed(f"acquire on {self.url}: the semaphore was removed", errno=err)
            raise from_oserror(OSError(err, os.strerror(err)), self.url, "acquire")
        try:
            self._sem.acquire(deadline.remaining())
            return True
        except posix_ipc.BusyError:
            return False
        except (sysv_ipc.Error, posix_ipc.Error) as e:
            if isinstance(e, posix_ipc.SignalError) or "ignaled" in str(e):
                return False  # EINTR: retried with the time left
            raise self._error(e, "acquire") from None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Decrement; True when acquired, False if ``blocking=False`` or ``timeout`` ran out (as threading)."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking acquire")
            deadline = Deadline(0)
        else:
            deadline = Deadline.of(timeout)
        self._enter("acquire")
        try:
            # Slices: a close() from another thread is noticed within ASYNC_SLICE.
            while not self._attempt(deadline.slice()):
                self._check_open("acquire")
                if deadline.nonblocking or deadline.expired():
                    return False
            return True
        finally:
            self._leave()

    def release(self) -> None:
        """Increment (wakes one waiter)."""
        self._enter("release")
        try:
            if self.kind == "sysv":
                err = _semop(self._semid, 1, self._undo, None)
                if err in (_errno.EIDRM, _errno.EINVAL):
                    raise ChannelClosed(f"release on {self.url}: the semaphore was removed", errno=err)
                if err:
                    raise from_oserror(OSError(err, os.strerror(err)), self.url, "release")
                return
            try:
                self._sem.release()
            except Exception as e:
                raise self._error(e, "release") from None
        finally:
            self._leave()

    async def aacquire(self, timeout: float | None = None) -> bool:
        """``acquire`` for asyncio; True when acquired, False when ``timeout`` ran out. Cancel-safe."""
        deadline = Deadline.of(timeout)
        while True:
            if self.acquire(False):
                return True
            if deadline.nonblocking or deadline.expired():
                return False
            cf = wait_pool().submit(self.acquire, True, deadline.slice(ASYNC_SLICE).remaining())
            try:
                if await asyncio.wrap_future(cf):
                    return True
            except asyncio.CancelledError:
                cf.add_done_callback(self._give_back)
                raise

    def _give_back(self, f: concurrent.futures.Future[bool]) -> None:
        """A worker acquired for a task that was cancelled meanwhile: return the permit."""
        if not f.cancelled() and f.exception() is None and f.result():
            try:
                self.release()
            except KipcError:
                pass  # closed or removed meanwhile: nothing to give back to

    @property
    def value(self) -> int:
        self._check_open("value")
        try:
            return int(self._sem.value)
        except Exception as e:
            raise self._error(e, "value") from None

    @property
    def undo(self) -> bool:
        return self.kind == "sysv" and self._undo

    def _error(self, e: BaseException, op: str) -> KipcError:
        if isinstance(e, (sysv_ipc.ExistentialError, posix_ipc.ExistentialError)):
            return ChannelClosed(f"{op} on {self.url}: the semaphore was removed")
        if isinstance(e, (sysv_ipc.PermissionsError, posix_ipc.PermissionsError)):
            return PermissionDenied(f"{op} on {self.url}: {e}")
        return translate_ipc_error(e, self.url, op)

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- lifetime ------------------------------------------------------------------------------------
    def _close(self) -> None:
        if self.kind == "posix" and self._sem is not None:
            self._sem.close()

    def _unlink(self) -> None:
        try:
            if self.kind == "sysv":
                self._sem.remove()
            else:
                posix_ipc.unlink_semaphore(self._name)
        except (sysv_ipc.ExistentialError, posix_ipc.ExistentialError):
            pass
        finally:
            _owners.forget(self._record_url)

    def __repr__(self) -> str:
        return f"<Semaphore {self.url} {'closed' if self._closed else 'open'}>"


# -- object kinds: how kipc ls / rm / gc see semaphores (records use sysv-sem:// / posix-sem://, as a
# segment may have the same key or name) ---------------------------------------------------------------
class _SemKind(SysvKind):
    def describe(self, row: dict[str, int]) -> ObjectInfo:
        info = super().describe(row)
        info.size = row["nsems"]
        return info


SYSV_KIND = _SemKind("sysvsem", "sysv", "sem", part="sem", records=("sysv-sem",), record_scheme="sysv-sem",
                     description="sysvsem (from /proc/sysvipc/sem)")
POSIX_KIND = DevShmKind("posixsem", "posix", "sem.", part="sem", records=("posix-sem",), record_scheme="posix-sem",
                        description="posixsem (/dev/shm/sem.NAME)")
