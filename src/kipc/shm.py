"""Shared memory segments: ``sysv://KEY`` (shmget/shmat) and ``posix://NAME`` (shm_open + mmap).

Contract card:

* Bytes only, no kipc header: ``.buf`` is the raw segment, exactly what a C
  program sees after ``shmat`` / ``mmap``. No ordering or boundaries: pair it
  with a :class:`kipc.Semaphore` (or your own protocol) to coordinate.
* Size: ``size=`` bytes at creation (SysV rounds up to pages internally but
  reports the asked size; limits ``kernel.shmmax`` / ``kernel.shmall``; POSIX:
  the size of /dev/shm). On attach, ``size=`` (optional) is a minimum: a
  smaller segment is refused with :class:`BadObject` (never a SIGBUS later).
* Create is exclusive by default (``create=True``); ``create="if_missing"``
  attaches when it exists; ``create=False`` attaches only. Mode 0600 whatever
  the umask. On attach, a segment owned by another uid is refused
  (``allow_foreign=True`` to accept), and so is one whose mode opens more than
  ``mode`` (a seed-style C ``0666`` segment needs ``mode=0o666``).
* Cleanup: the creator removes the segment on ``close()`` (``persist=True``
  keeps it); openers never remove. ``unlink()`` is creator-only. A SysV
  segment removed while attached lives until the last detach (``ipcs`` shows
  key 0 / ``dest``). After ``close()``, arrays and slices already taken from
  ``.buf`` stay valid: the mapping is released when the last of them dies, so
  no view ever points at unmapped memory.
* ``attach_count`` (SysV ``nattch``) shows how many processes are attached.

This module also holds the small SysV/option helpers shared by ``sysvmq`` and
``Semaphore`` (key URLs, ``create=`` parsing, attach permission checks).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import stat as _stat
from typing import Any

import posix_ipc

from . import _owners
from ._base import Resource
from ._naming import (
    DEFAULT_MODE,
    ParsedURL,
    parse_bool,
    parse_url,
    validate_key,
    validate_mode,
    validate_name,
    validate_path,
    validate_size,
)
from .errors import (
    AlreadyExists,
    BadObject,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    from_oserror,
)

__all__ = ["SharedMemory", "check_attach", "parse_create", "parse_mode", "sysv_key", "translate_ipc_error"]


# -- helpers shared by the SysV / POSIX objects -------------------------------------------------

def sysv_key(parsed: ParsedURL) -> int:
    """The SysV key a URL names: ``//1234``, ``//0x4d2``, ``///path?proj=N`` (ftok), ``//private`` (0)."""
    if parsed.netloc == "private" and parsed.path in ("", "/"):
        return 0
    if parsed.netloc:
        if parsed.path not in ("", "/"):
            raise InvalidArgument(f"{parsed.url}: expected {parsed.scheme}://KEY or {parsed.scheme}:///path?proj=N")
        return validate_key(parsed.netloc)
    path = validate_path(parsed.path)
    proj_text = parsed.query.get("proj")
    if proj_text is None:
        raise InvalidArgument(f"{parsed.url}: a path needs ?proj=N (1..255) for ftok")
    try:
        proj = int(proj_text, 0)
    except ValueError:
        raise InvalidArgument(f"{parsed.url}: proj {proj_text!r} is not an integer") from None
    if not 1 <= proj <= 255:
        raise InvalidArgument(f"{parsed.url}: proj {proj} must be 1..255 (ftok uses its low 8 bits)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise from_oserror(e, parsed.url, "ftok") from e
    # glibc's ftok: low 8 bits of proj, low 8 bits of st_dev, low 16 bits of st_ino.
    key = ((proj & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)
    return key - 2**32 if key >= 2**31 else key


def parse_create(value: object) -> bool | str:
    """``create=`` as given in code (bool / "if_missing") or in a URL query (strings)."""
    if value == "if_missing":
        return "if_missing"
    return parse_bool(value, what="create")


def parse_mode(value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise InvalidArgument(f"mode {value!r} is not an octal number such as 600") from None
    return validate_mode(value)


def check_attach(what: str, uid: int, mode: int, allowed_mode: int, allow_foreign: bool) -> None:
    """Refuse an existing object planted by another user or opened wider than ``allowed_mode``."""
    if uid != os.geteuid() and not allow_foreign:
        raise PermissionDenied(f"open {what}: owned by uid {uid}, not us ({os.geteuid()}); "
                               "pass allow_foreign=True to trust it")
    extra = mode & 0o777 & ~allowed_mode
    if extra:
        raise PermissionDenied(f"open {what}: mode {mode & 0o777:#o} grants more than {allowed_mode:#o}; "
                               f"pass mode={mode & 0o777:#o} to accept it")


# sysv_ipc / posix_ipc messages for ENOSPC, and the kernel limit each one means.
_LIMIT_TEXTS = (
    ("system limit for message queues", "sysctl kernel.msgmni"),
    ("Not enough shared memory identifiers", "sysctl kernel.shmmni"),
    ("Insufficient space for a new queue", "/proc/sys/fs/mqueue/queues_max (fs.mqueue.queues_max) "
                                           "or RLIMIT_MSGQUEUE `ulimit -q`"),
)


def translate_ipc_error(exc: BaseException, what: str, op: str) -> KipcError:
    """A sysv_ipc / posix_ipc exception as the kipc error that means the same."""
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
    """The /proc/sysvipc/shm row of ``shmid`` (key, perms, size, nattch, uid, cpid...)."""
    try:
        with open("/proc/sysvipc/shm") as f:
            cols = next(f).split()
            for line in f:
                vals = line.split()
                if int(vals[1]) == shmid:
                    return {c: int(v, 8) if c == "perms" else int(v)
                            for c, v in zip(cols, vals, strict=False) if v.lstrip("-").isdigit()}
    except OSError:
        pass
    return None


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

    def __init__(self, url: str, *, size: int | str | None = None, create: bool | str = False,
                 mode: int | str = DEFAULT_MODE, persist: bool = False, allow_foreign: bool = False) -> None:
        parsed = parse_url(url)
        options = dict(parsed.query)
        options.pop("proj", None)
        if options:
            raise InvalidArgument(f"{url}: unknown option(s) {sorted(options)}; pass size=, create=, mode= as keywords")
        create = parse_create(create)
        mode = parse_mode(mode)
        if size is not None:
            size = validate_size(size, what="size", minimum=1)
        if create and size is None:
            raise InvalidArgument(f"create {url}: size= is required to create a segment")
        self.persist = parse_bool(persist, what="persist")
        self.mode = mode
        if parsed.scheme == "sysv":
            self._open_sysv(parsed, size, create, mode, allow_foreign)
        elif parsed.scheme == "posix":
            self._open_posix(parsed, size, create, mode, allow_foreign)
        else:
            raise InvalidArgument(f"{url}: SharedMemory addresses are sysv://KEY or posix://NAME")
        self._closed = False

    # -- SysV ---------------------------------------------------------------------------------------
    def _open_sysv(self, parsed: ParsedURL, size: int | None, create: bool | str, mode: int,
                   allow_foreign: bool) -> None:
        key = sysv_key(parsed)
        self.key = key
        self.url = parsed.url
        self._record_url = f"sysv://{key}" if key else ""
        shmid = -1
        if create:
            assert size is not None
            flags = _IPC_CREAT | _IPC_EXCL | mode
            shmid = _libc.shmget(key, size, flags)
            if shmid >= 0:
                self.owner = True
            elif not (ctypes.get_errno() == _errno.EEXIST and create == "if_missing"):
                raise self._sysv_error("create", size)
        if shmid < 0:
            if key == 0:
                raise InvalidArgument(f"open {self.url}: a private segment can only be created")
            shmid = _libc.shmget(key, 0, 0)
            if shmid < 0:
                raise self._sysv_error("open", size)
        self.shmid = shmid
        info = sysv_shm_info(shmid)
        try:
            if info is None:
                raise NotFound(f"open {self.url}: segment vanished while opening")
            if not self.owner:
                check_attach(self.url, info["uid"], info["perms"], mode, allow_foreign)
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
            _owners.record(self._record_url, "sysv-shm", size=real)

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
        shm = None
        if create:
            try:
                shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode, size)
                self.owner = True
            except posix_ipc.ExistentialError as e:
                if create != "if_missing":
                    raise AlreadyExists(f"create {self.url}: already exists", errno=_errno.EEXIST) from e
            except Exception as e:  # posix_ipc errors are not OSErrors
                raise translate_ipc_error(e, self.url, "create") from None
        if shm is None:
            try:
                shm = posix_ipc.SharedMemory(name)
            except Exception as e:
                raise translate_ipc_error(e, self.url, "open") from None
        fd = shm.fd
        try:
            st = os.fstat(fd)
            if self.owner:
                os.fchmod(fd, mode)  # shm_open's mode went through the umask
            else:
                check_attach(self.url, st.st_uid, _stat.S_IMODE(st.st_mode), mode, allow_foreign)
                if size is not None and st.st_size < size:
                    raise BadObject(f"open {self.url}: segment is {st.st_size} bytes, smaller than the {size} asked")
                if st.st_size == 0:
                    raise BadObject(f"open {self.url}: segment is empty (its creator has not sized it yet)")
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
            _owners.record(self._record_url, "posix-shm", size=real)

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
