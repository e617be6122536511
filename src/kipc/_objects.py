"""Named objects: how kipc creates them, names SysV keys, trusts what it attaches to, and tells one from another.

Contract card (one rule each, used by every mechanism; nothing else re-derives them):

* ``create=`` (:func:`parse_create`): ``False`` attaches only, ``True`` creates
  exclusively (``O_EXCL`` / ``IPC_EXCL``), ``"if_missing"`` creates or else
  attaches. URL queries give the same as text (``?create=1``, ``if_missing``).
  :func:`create_or_attach` is the one implementation of "create exclusively,
  else attach": the mechanism passes two callables and the exclusive create
  must raise :class:`~kipc.AlreadyExists` when the name is taken.
* ``wait=seconds`` (:func:`open_waiting`, for ``kipc.open`` and every named
  object's constructor): the consumer started first, so an attach that finds
  nothing (``NotFound``, or a name removed between two steps of an open) is
  retried with a back-off (5 ms doubling to 200 ms) until the object exists;
  then :class:`~kipc.Timeout` names the URL. ``wait=None`` (default) tries once.
  ``wait`` is a number >= 0 and waits for *another* process to create the
  object, so it cannot be combined with ``create=True``/``"if_missing"``
  (:class:`~kipc.InvalidArgument`, before any system call).
* SysV keys (:func:`sysv_key`): ``//1234``, ``//0x4d2``, ``///path?proj=N``
  (:func:`ftok`, glibc's rule; ``proj`` is required, 1..255: there is no
  default, so ``kipc.open`` and ``kipc ls/rm`` resolve a path to the same key),
  ``//private`` (0, ``IPC_PRIVATE``).
* Attach checks (:func:`check_attach`): an existing object is refused unless it
  is owned by this uid (or one the caller allowed) and its mode grants nothing
  beyond ``allowed_mode``. SysV objects have two owners: the settable owner
  ``uid`` and the creator ``cuid``/``cgid``, which ``IPC_SET`` cannot change
  and which keeps full access. :func:`check_sysv_creator` refuses an object
  whose creator is not this user (another user may create an object under our
  key and hand its ``uid`` to us with ``IPC_SET``), unless ``allow_foreign``.
* Identities (:func:`file_identity`, :func:`sysv_identity`): what makes one
  object different from a later one under the same name: ``dev``+``ino`` plus
  the birth time (``statx``, where the filesystem keeps one) for files, FIFOs,
  sockets, spool directories, POSIX shm/semaphores/queues; the
  SysV id plus its ``ctime`` (the kernel reuses a slot with a new sequence
  number, and stamps ``ctime`` at creation) for SysV objects. Owner records
  store it so ``kipc gc`` removes only the very object a dead owner created.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as _stat
import struct
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any, Literal, TypeVar

from . import _owners
from ._naming import ParsedURL, format_seconds, parse_bool, parse_int, validate_key, validate_path, validate_timeout
from .errors import AlreadyExists, InvalidArgument, PermissionDenied, Timeout, from_oserror

__all__ = [
    "check_attach",
    "check_sysv_creator",
    "create_or_attach",
    "file_identity",
    "ftok",
    "open_path",
    "open_waiting",
    "parse_create",
    "parse_uids",
    "sized",
    "sysv_identity",
    "sysv_key",
    "sysv_row",
    "sysv_rows",
]

T = TypeVar("T")


# -- create= -----------------------------------------------------------------------------------------
#: ``create=``: False attaches, True creates exclusively, "if_missing" does either (re-exported as kipc.CreateMode).
CreateMode = Literal[True, False, "if_missing"]


def parse_create(value: object) -> CreateMode:
    """``create=`` as given in code (bool / ``"if_missing"``) or in a URL query (strings)."""
    if value == "if_missing":
        return "if_missing"
    return parse_bool(value, what="create")


def create_or_attach(create: bool | str, make: Callable[[], T], attach: Callable[[], T]) -> tuple[T, bool]:
    """``(handle, created)``: ``make()`` for ``create=True``, ``attach()`` for ``False``, the first that works for
    ``"if_missing"``.

    ``make`` must create exclusively and raise :class:`~kipc.AlreadyExists` when
    the name is taken (that error reaches the caller of ``create=True``); a
    creator racing us between the two calls is handled by the kernel: the
    attach then finds its object.
    """
    if create:
        try:
            return make(), True
        except AlreadyExists:
            if create != "if_missing":
                raise
    return attach(), False


_WAIT_FIRST, _WAIT_MOST = 0.005, 0.2


def validate_wait(url: str, wait: object, create: object = False) -> float | None:
    """``wait=`` checked (see the module docstring): None, or seconds >= 0; not with a creating ``create``."""
    if wait is None:
        return None
    try:
        limit = validate_timeout(wait)
    except (TypeError, InvalidArgument):
        raise InvalidArgument(f"open {url}: wait= must be None or a number of seconds >= 0, not {wait!r}") from None
    if parse_create(create) is not False:
        raise InvalidArgument(f"open {url}: wait= waits for another process to create it; "
                              f"it cannot be combined with create={create!r}")
    return limit


def open_waiting(url: str, wait: object, attempt: Callable[[], T], *, create: object = False) -> T:
    """``attempt()``; with ``wait=seconds``, again until it stops raising NotFound or the time is up
    (:class:`~kipc.Timeout` naming ``url``). ``wait`` and ``create`` are checked before the first attempt."""
    limit = validate_wait(url, wait, create)
    if limit is None:
        return attempt()
    end = time.monotonic() + limit
    pause = _WAIT_FIRST
    while True:
        try:
            return attempt()
        except FileNotFoundError as e:  # NotFound, or a name removed between two steps of an open
            left = end - time.monotonic()
            if left <= 0:
                raise Timeout(f"open {url}: it did not appear within {format_seconds(limit)} s ({e})") from e
            time.sleep(min(pause, left))
            pause = min(pause * 2, _WAIT_MOST)


#: how long an opener waits for a creator between its exclusive create and its ftruncate
ATTACH_WAIT = 1.0


def sized(fd: int, st: os.stat_result, limit: float = ATTACH_WAIT) -> os.stat_result:
    """``fstat(fd)`` again until the object has a size, at most ``limit`` seconds: a creator of a
    file-backed object (shm_open/open with ``O_EXCL``, then ``ftruncate``) is between the two
    steps, which a waiting opener (``wait=``) is likely to meet. Returns the last stat."""
    end = time.monotonic() + limit
    while st.st_size == 0 and time.monotonic() < end:
        time.sleep(0.002)
        st = os.fstat(fd)
    return st


def open_path(path: str, url: str, create: bool | str, mode: int, *,
              flags: int = os.O_RDWR, error: Callable[[OSError, str], Exception] | None = None) -> tuple[int, bool]:
    """``(fd, created)`` for an object named by a path (shm file, lock file, mapped file): created
    exclusively (``O_CREAT|O_EXCL``, then ``mode`` is the caller's to fchmod: the umask filtered it)
    or opened, always ``O_NOFOLLOW|O_CLOEXEC``; OS errors become kipc errors (``error(e, op)``)."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC

    def fail(e: OSError, op: str) -> Exception:
        return error(e, op) if error is not None else from_oserror(e, url, op)

    def make() -> int:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise AlreadyExists(f"create {url}: {path} exists (create='if_missing' attaches)",
                                errno=errno.EEXIST) from None
        except OSError as e:
            raise fail(e, "create") from e

    def attach() -> int:
        try:
            return os.open(path, flags)
        except OSError as e:
            raise fail(e, "open") from e

    return create_or_attach(create, make, attach)


def remove_path(path: str, record_url: str) -> None:
    """Unlink a path-named object and forget its owner record (the ``_unlink`` of every such object;
    only ever called in the creating process, Resource's ownership rule). Gone already is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        _owners.forget(record_url)


# -- SysV keys ---------------------------------------------------------------------------------------
def ftok(path: str, proj: int) -> int:
    """glibc's ``ftok``: low 8 bits of ``proj``, of ``st_dev``, low 16 bits of ``st_ino``, as a signed ``key_t``."""
    st = os.stat(path)
    key = ((proj & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)
    return key - 2**32 if key >= 2**31 else key


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
    proj = parse_int(proj_text, what=f"{parsed.url}: proj", minimum=1, maximum=255)
    try:
        return ftok(path, proj)
    except OSError as e:
        raise from_oserror(e, parsed.url, "ftok") from e


# -- /proc/sysvipc -----------------------------------------------------------------------------------
_ID_COLUMN = {"msg": "msqid", "shm": "shmid", "sem": "semid"}


def sysv_rows(kind: str) -> Iterator[dict[str, int]]:
    """Rows of ``/proc/sysvipc/{msg,shm,sem}`` as ints (``perms`` decoded from octal)."""
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            header = f.readline().split()
            for line in f:
                parts = line.split()
                if len(parts) >= len(header):
                    row = {h: int(v) for h, v in zip(header, parts, strict=False)}
                    row["perms"] = int(parts[header.index("perms")], 8)
                    yield row
    except OSError:
        return


def sysv_row(kind: str, ident: int) -> dict[str, int] | None:
    """The ``/proc/sysvipc`` row of one SysV object by id (None: gone)."""
    col = _ID_COLUMN[kind]
    return next((r for r in sysv_rows(kind) if r[col] == ident), None)


def sysv_identity(kind: str, row: dict[str, int]) -> dict[str, int]:
    """Identity of a SysV object: its id and creation stamp (see the module docstring)."""
    return {"id": row[_ID_COLUMN[kind]], "ctime": row["ctime"]}


_AT_FDCWD, _AT_SYMLINK_NOFOLLOW, _AT_EMPTY_PATH, _STATX_BTIME = -100, 0x100, 0x1000, 0x800
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _statx: Any = _libc.statx
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
except (OSError, AttributeError):  # a libc without statx (glibc < 2.28): dev+inode only
    _statx = None


def _birth_ns(fd: int | None, path: str | None) -> int | None:
    """Birth time of a file in ns (``statx`` ``STATX_BTIME``), None where the filesystem does not keep one."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statx
    if fd is not None:
        rc = _statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf)
    else:
        rc = _statx(_AT_FDCWD, os.fsencode(path or ""), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) or (fd is None and err == errno.ENOENT):
            return None  # no statx (old kernel, seccomp filter), or the path went away since its lstat
        raise OSError(err, os.strerror(err), path)  # a closed fd or a vanished path: the caller's bug or race
    if not struct.unpack_from("<I", buf, 0)[0] & _STATX_BTIME:
        return None
    sec, nsec = struct.unpack_from("<qI", buf, 80)  # stx_btime
    return sec * 1_000_000_000 + nsec or None


def file_identity(st: os.stat_result, *, fd: int | None = None, path: str | None = None) -> dict[str, int]:
    """Identity of a filesystem object (also POSIX shm, semaphores and queues, which are files of a tmpfs).

    ``dev``+``ino``, plus the birth time where the filesystem keeps one (give the
    object's ``fd`` or ``path``): ext4 hands a freed inode number to the next
    file at once, so ``rm -r dir; mkdir dir`` has the same ``dev``+``ino``.
    """
    if fd is None and path is None:
        raise TypeError("file_identity needs the object's fd or path (for its birth time)")
    ident = {"dev": st.st_dev, "ino": st.st_ino}
    birth = _birth_ns(fd, path)
    if birth is not None:
        ident["btime"] = birth
    return ident


# -- attach checks -----------------------------------------------------------------------------------
def parse_uids(value: Any) -> frozenset[int]:
    """``allow_uids=``: an iterable of ints, one int, or ``"1000,1001"`` from a URL query."""
    if value is None or value == "":
        return frozenset()
    if isinstance(value, str):
        return frozenset(parse_int(v, what="allow_uids entry", hex=False, minimum=0) for v in value.split(","))
    if isinstance(value, int) and not isinstance(value, bool):
        return frozenset({value})
    try:
        uids = frozenset(value)
    except TypeError:
        raise TypeError(f"allow_uids must be ints, not {type(value).__name__}") from None
    if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in uids):
        raise InvalidArgument(f"allow_uids {value!r} must hold non-negative ints")
    return uids


def check_attach(what: str, *, uid: int, mode: int, allowed_mode: int, allow_foreign: bool = False,
                 allow_uids: Collection[int] = (), foreign_hint: str = "pass allow_foreign=True to trust it",
                 mode_hint: str = "pass mode={mode} to accept it") -> None:
    """Refuse an existing object owned by another uid or whose mode grants more than ``allowed_mode``.

    ``foreign_hint``/``mode_hint`` say how to accept it (``{uid}`` and ``{mode}``
    are filled in); each mechanism names its own option.
    """
    me = os.geteuid()
    if uid != me and uid not in allow_uids and not allow_foreign:
        raise PermissionDenied(f"open {what}: owned by uid {uid}, not us ({me}); {foreign_hint.format(uid=uid)}")
    bits = _stat.S_IMODE(mode) & 0o777
    if bits & ~allowed_mode:
        raise PermissionDenied(f"open {what}: mode {bits:#o} grants more than {allowed_mode:#o} to group/other; "
                               f"{mode_hint.format(mode=f'{bits:#o}')}")


def check_sysv_creator(what: str, key: int, *, uid: int, cuid: int, cgid: int, allow_foreign: bool) -> None:
    """Refuse a SysV object whose creator is not this user, whatever its (settable) owner uid says.

    The creator keeps full access after handing the object to us with ``IPC_SET``,
    so such an object is as foreign as one it still owns.
    """
    if allow_foreign:
        return
    me = os.geteuid()
    groups = {os.getegid(), *os.getgroups()}
    if cuid != me or cgid not in groups:
        raise PermissionDenied(
            f"open {what}: key {key & 0xFFFFFFFF:#x} was created by uid {cuid} (gid {cgid}) and is owned by "
            f"uid {uid}, not by us (uid {me}); its creator keeps full access, so it is refused "
            "(pass allow_foreign=True to trust it)")
