"""Shared memory segments: ``sysv://KEY`` (shmget/shmat) and ``posix://NAME`` (shm_open + mmap).

Contract card:

* Bytes only, no kipc header: ``.buf`` is the raw segment, exactly what a C
  program sees after ``shmat`` / ``mmap``. No ordering or boundaries: pair it
  with a :class:`kipc.Semaphore` (or your own protocol) to coordinate.
* Size: ``size=`` bytes at creation (SysV rounds up to pages internally but
  reports the asked size; limits ``kernel.shmmax`` / ``kernel.shmall``; POSIX:
  the size of /dev/shm). On attach, ``size=`` (optional) is a minimum: a
  smaller segment is refused with :class:`BadObject` (never a SIGBUS later).
  A POSIX segment still empty (its creator is between ``shm_open`` and
  ``ftruncate``) is waited for, at most 1 s (``_objects.sized``), then refused.
* Create is exclusive by default (``create=True``); ``create="if_missing"``
  attaches when it exists; ``create=False`` attaches only; ``wait=seconds``
  waits for another process to create it (as ``kipc.open``; then ``Timeout``).
  Mode 0600 whatever the umask. On attach, a segment owned by another uid is refused
  (``allow_foreign=True`` to accept), and so is one whose mode opens more than
  ``mode`` (a seed-style C ``0666`` segment needs ``mode=0o666``).
* Cleanup: the creator removes the segment on ``close()`` (``persist=True``
  keeps it); openers never remove. ``unlink()`` is creator-only. A SysV
  segment removed while attached lives until the last detach (``ipcs`` shows
  key 0 / ``dest``). After ``close()``, arrays and slices already taken from
  ``.buf`` stay valid: the mapping is released when the last of them dies, so
  no view ever points at unmapped memory.
* ``attach_count`` (SysV ``nattch``) shows how many processes are attached.
* A SysV segment created by another user is refused even when its owner uid
  was set to ours (``IPC_SET``): the creator keeps access (see
  :func:`kipc._objects.check_sysv_creator`; ``allow_foreign=True`` trusts it).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
from typing import Any

import posix_ipc

from . import _owners
from ._base import CreateMode, Resource
from ._kinds import DevShmKind, ObjectInfo, SysvKind
from ._naming import (
    DEFAULT_MODE,
    ParsedURL,
    format_seconds,
    parse_bool,
    parse_url,
    validate_mode,
    validate_name,
    validate_size,
)
from ._objects import (
    ATTACH_WAIT,
    check_attach,
    check_sysv_creator,
    create_or_attach,
    file_identity,
    open_waiting,
    parse_create,
    sized,
    sysv_identity,
    sysv_key,
    sysv_row,
    validate_wait,
)
from .errors import (
    AlreadyExists,
    BadObject,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    NotFound,
    from_oserror,
    translate_ipc_error,
)

__all__ = ["POSIX_KIND", "SYSV_KIND", "SharedMemory"]


# -- SysV shm through libc (sysv_ipc never detaches while views live; we detach when the last view dies)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmat.restype = ctypes.c_void_p
_libc.shmdt.argtypes = [ctypes.c_void_p]
_libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_IPC_CREAT, _IPC_EXCL, _IPC_RMID = 0o1000, 0o2000, 0


def _oserr() -> OSError:
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e))


def sysv_shm_info(shmid: int) -> dict[str, int] | None:
    """The /proc/sysvipc/shm row of ``shmid`` (key, perms, size, nattch, uid, cuid, cpid...)."""
    return sysv_row("shm", shmid)


def _attached_array(addr: int, size: int) -> ctypes.Array[ctypes.c_ubyte]:
    """A ctypes array over an attached segment that detaches it when collected.

    Every memoryview (and slice, and numpy array) of it keeps it alive, so the
    segment is detached only after the last view is gone: no dangling view.
    """

    class _Segment(ctypes.c_ubyte * size):  # type: ignore[misc]
        def __del__(self) -> None:
            _libc.shmdt(ctypes.c_void_p(ctypes.addressof(self)))

    return _Segment.from_address(addr)


class SharedMemory(Resource):
    """A SysV or POSIX shared memory segment; see the module docstring for the contract."""

    _mv: memoryview | None = None

    def __new__(cls, url: object = None, *args: Any, **kwargs: Any) -> SharedMemory:
        if cls is SharedMemory and isinstance(url, str) and url[:7].lower() == "file://":
            from ._mapped import MappedFile  # file:///path: a mapped regular file (kipc/_mapped.py)

            return super().__new__(MappedFile)
        return super().__new__(cls)

    def _check_options(self, url: str, unknown: dict[str, str], create: object, wait: object, mode: object,
                       size: int | str | None, persist: object, what: str) -> tuple[CreateMode, int | None]:
        """What every shared-memory open checks before any system call (segments and mapped files):
        sets ``mode`` and ``persist``, returns ``(create, size)``."""
        if unknown:
            raise InvalidArgument(f"{url}: unknown option(s) {sorted(unknown)}; pass size=, create=, mode= as keywords")
        created = parse_create(create)
        validate_wait(url, wait, created)
        self.mode = validate_mode(mode)
        nbytes = None if size is None else validate_size(size, what="size", minimum=1)
        if created and nbytes is None:
            raise InvalidArgument(f"create {url}: size= is required to create {what}")
        self.persist = parse_bool(persist, what="persist")
        return created, nbytes

    def __init__(self, url: str, *, size: int | str | None = None, create: CreateMode = False,
                 mode: int | str = DEFAULT_MODE, persist: bool = False, allow_foreign: bool = False,
                 wait: float | None = None) -> None:
        parsed = parse_url(url)
        options = dict(parsed.query)
        options.pop("proj", None)
        create, size = self._check_options(url, options, create, wait, mode, size, persist, "a segment")
        mode = self.mode
        if parsed.scheme == "sysv":
            opener = self._open_sysv
        elif parsed.scheme == "posix":
            opener = self._open_posix
        else:
            raise InvalidArgument(f"{url}: SharedMemory addresses are sysv://KEY or posix://NAME")
        open_waiting(url, wait, lambda: opener(parsed, size, create, mode, allow_foreign))
        self._closed = False

    # -- SysV ---------------------------------------------------------------------------------------
    def _open_sysv(self, parsed: ParsedURL, size: int | None, create: bool | str, mode: int,
                   allow_foreign: bool) -> None:
        key = sysv_key(parsed)
        self.key = key
        self.url = parsed.url
        self._record_url = f"sysv://{key}" if key else ""

        def make() -> int:
            assert size is not None
            shmid = _libc.shmget(key, size, _IPC_CREAT | _IPC_EXCL | mode)
            if shmid < 0:
                if ctypes.get_errno() == _errno.EEXIST:
                    raise AlreadyExists(f"create {self.url}: a segment with key {key} already exists",
                                        errno=_errno.EEXIST)
                raise self._sysv_error("create", size)
            return int(shmid)

        def attach() -> int:
            if key == 0:
                raise InvalidArgument(f"open {self.url}: a private segment can only be created")
            shmid = _libc.shmget(key, 0, 0)
            if shmid < 0:
                raise self._sysv_error("open", size)
            return int(shmid)

        shmid, self.owner = create_or_attach(create, make, attach)
        self.shmid = shmid
        info = sysv_shm_info(shmid)
        try:
            if info is None:
                raise NotFound(f"open {self.url}: segment vanished while opening")
            if not self.owner:
                check_sysv_creator(self.url, key, uid=info["uid"], cuid=info["cuid"], cgid=info["cgid"],
                                   allow_foreign=allow_foreign)
                check_attach(self.url, uid=info["uid"], mode=info["perms"], allowed_mode=mode,
                             allow_foreign=allow_foreign)
                if size is not None and info["size"] < size:
                    raise BadObject(f"open {self.url}: segment is {info['size']} bytes, smaller than the {size} asked")
            real = info["size"]
            addr = _libc.shmat(shmid, None, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise self._sysv_error("attach", size)
        except BaseException:
            if self.owner:
                _libc.shmctl(shmid, _IPC_RMID, None)
            raise
        self._mv = memoryview(_attached_array(addr, real)).cast("B")
        self.size = real
        self.kind = "sysv"
        if self.owner and self._record_url:
            _owners.record(self._record_url, "sysv-shm", size=real, identity=sysv_identity("shm", info))

    def _sysv_error(self, op: str, size: int | None) -> KipcError:
        err = _oserr()
        if err.errno == _errno.EINVAL and op == "create":
            return LimitExceeded(f"create {self.url}: size {size} is outside kernel.shmmin..kernel.shmmax "
                                 "(or the key exists with a smaller size)", errno=err.errno)
        if err.errno == _errno.ENOSPC:
            return LimitExceeded(f"{op} {self.url}: no room (limit: sysctl kernel.shmmni segments, "
                                 "or kernel.shmall pages)", errno=err.errno)
        return from_oserror(err, self.url, op)

    @property
    def attach_count(self) -> int:
        """Processes attached now (SysV ``nattch``); POSIX segments have no such count (-1)."""
        if self.kind != "sysv":
            return -1
        info = sysv_shm_info(self.shmid)
        return -1 if info is None else info["nattch"]

    # -- POSIX --------------------------------------------------------------------------------------
    def _open_posix(self, parsed: ParsedURL, size: int | None, create: bool | str, mode: int,
                    allow_foreign: bool) -> None:
        if parsed.path not in ("", "/"):
            raise InvalidArgument(f"{parsed.url}: expected posix://NAME (no path)")
        name = "/" + validate_name(parsed.netloc)
        self.url = parsed.url
        self._record_url = f"posix://{parsed.netloc}"
        self._name = name

        def make() -> Any:
            try:
                return posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode, size)
            except Exception as e:  # posix_ipc errors are not OSErrors
                raise translate_ipc_error(e, self.url, "create") from None

        def attach() -> Any:
            try:
                return posix_ipc.SharedMemory(name)
            except Exception as e:
                raise translate_ipc_error(e, self.url, "open") from None

        shm, self.owner = create_or_attach(create, make, attach)
        fd = shm.fd
        try:
            st = os.fstat(fd)
            identity = file_identity(st, fd=fd)
            if self.owner:
                os.fchmod(fd, mode)  # shm_open's mode went through the umask
            else:
                check_attach(self.url, uid=st.st_uid, mode=st.st_mode, allowed_mode=mode, allow_foreign=allow_foreign)
                st = sized(fd, st)  # its creator may be between shm_open and ftruncate
                if size is not None and st.st_size < size:
                    raise BadObject(f"open {self.url}: segment is {st.st_size} bytes, smaller than the {size} asked")
                if st.st_size == 0:
                    raise BadObject(f"open {self.url}: segment is empty (its creator did not size it within "
                                    f"{format_seconds(ATTACH_WAIT)} s)")
            real = st.st_size
            # Map exactly what exists (never past the end: that would be SIGBUS on touch).
            self._mmap = mmap.mmap(fd, real)
        except BaseException:
            if self.owner:
                posix_ipc.unlink_shared_memory(name)
            raise
        finally:
            shm.close_fd()
        self._mv = memoryview(self._mmap)
        self.size = real
        self.kind = "posix"
        if self.owner:
            _owners.record(self._record_url, "posix-shm", size=real, identity=identity)

    # -- public API ---------------------------------------------------------------------------------
    @property
    def buf(self) -> memoryview:
        """The whole segment as a writable byte memoryview (zero-copy)."""
        if self._closed or self._mv is None:
            raise KipcError(f"buf of {self.url}: closed")
        return self._mv

    def ndarray(self, shape: int | tuple[int, ...], dtype: Any = "uint8", offset: int = 0) -> Any:
        """A numpy array over the segment (zero-copy; numpy is an optional dependency)."""
        import numpy as np

        dt = np.dtype(dtype)
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        count = 1
        for n in shp:
            count *= n
        need = offset + count * dt.itemsize
        if offset < 0 or need > self.size:
            raise InvalidArgument(f"ndarray on {self.url}: {shp} of {dt} at offset {offset} needs {need} bytes; "
                                  f"the segment has {self.size}")
        return np.frombuffer(self.buf, dtype=dt, count=count, offset=offset).reshape(shp)

    def _close(self) -> None:
        """Detach (close() also removes the segment for its creator, unless ``persist``)."""
        # Drop our view instead of releasing it: numpy arrays and slices built on
        # .buf keep the mapping alive, and it is unmapped when the last one dies.
        self._mv = None
        if self.kind == "posix":
            try:
                self._mmap.close()
            except BufferError:
                pass  # views still exist; the mmap unmaps itself when they are gone

    def _unlink(self) -> None:
        """Remove the segment (creator only); attached processes keep their mapping."""
        if self.kind == "sysv":
            gone = (_errno.EINVAL, _errno.EIDRM)
            if _libc.shmctl(self.shmid, _IPC_RMID, None) != 0 and ctypes.get_errno() not in gone:
                raise from_oserror(_oserr(), self.url, "unlink")
        else:
            try:
                posix_ipc.unlink_shared_memory(self._name)
            except posix_ipc.ExistentialError:
                pass
        if self._record_url:
            _owners.forget(self._record_url)

    def __repr__(self) -> str:
        return f"<SharedMemory {self.url} {getattr(self, 'size', '?')} B {'closed' if self._closed else 'open'}>"


# -- object kinds: how kipc ls / rm / gc see segments ---------------------------------------------------
class _SegmentKind(SysvKind):
    def describe(self, row: dict[str, int]) -> ObjectInfo:
        info = super().describe(row)
        info.size, info.attached, info.creator_pid = row["size"], row["nattch"], row["cpid"]
        info.pids = [p for p in (row["cpid"], row["lpid"]) if p]
        info.alive = _owners.process_start_time(row["cpid"]) is not None if row["cpid"] else None
        return info


SYSV_KIND = _SegmentKind("sysvshm", "sysv", "shm", part="shm", records=("sysv-shm",),
                         description="sysvshm (from /proc/sysvipc/shm)")
POSIX_KIND = DevShmKind("posixshm", "posix", "", part="shm", records=("posix-shm",),
                        description="posixshm (/dev/shm/NAME)")
