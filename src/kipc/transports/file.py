"""Spool-directory queue: ``file:///abs/dir`` or ``file://NAME`` (``runtime_dir("spool")/NAME``).

Contract card:

* One file per message. ``send`` writes ``.tmp-<pid>-<start>-<seq>`` in the
  directory, ``fsync``s it, and renames it atomically to
  ``<time_ns>-<pid>-<seq>.msg`` (then ``fsync``s the directory), so a reader
  never sees a partial message and a message survives a crash or reboot once
  ``send`` returns. ``fsync=False`` trades that durability for speed.
* Each message goes to exactly one reader: a reader claims a message by
  renaming it into ``claimed/<pid>-<start>-<name>``, reads it, and unlinks it.
  Many writers and readers may share a directory, in any processes.
* Order: names sort by time, so order is FIFO per producer (one handle) and
  roughly by time across producers.
* Unbounded: ``send`` never blocks on fullness; a full disk or quota is
  :class:`LimitExceeded`. Max message ``max_message_size`` (default 1 GiB).
* ``recv`` waits with inotify (``IN_MOVED_TO``) when available, otherwise with
  a polling backoff of at most 50 ms; ``timeout=`` is honoured either way.
  ``fileno()`` is the inotify fd (readable = something may have arrived).
* Crash recovery: a message claimed by a reader that died (its pid + start
  time no longer run) is renamed back into the queue, under its original
  name, by any reader at open and about once a second while it waits
  (``reclaim=False`` turns this off); a writer's temp file whose writer
  died is removed. A message is therefore delivered at least once if a
  reader crashes between claiming and finishing.
* Planted entries: a claimed entry is opened ``O_NOFOLLOW|O_NONBLOCK`` and
  delivered only if it is a regular file with one link, owned by us (or an
  ``allow_uids=`` uid), with no mode bits beyond the handle's ``mode``.
  Anything else named ``*.msg`` (a FIFO, directory, symlink, socket, another
  uid's or open-mode file, a hard link) is moved to ``quarantine/`` in the
  spool with a :class:`SpoolWarning` (and a log line, logger ``"kipc"``), and
  ``recv`` goes on with the real messages.
* Fork: names carry the sending process's pid + start time (read per call,
  not cached on the handle) and the inotify fd is per process, so parent and
  child may both use an inherited handle.
* Permissions: directory and ``claimed/`` 0700, message files 0600, whatever
  the umask. Attaching refuses a symlink, a non-directory, another uid's
  directory (unless ``allow_uids=``) or group/other bits (unless
  ``allow_open_mode=True``).
* Cleanup: ``create=True`` makes the directory (exclusive) and records the
  owner; the creator removes the directory *with any unread messages* on
  close, like unlinking a message queue, unless ``persist=True`` (then it
  stays, durable across restarts, and ``kipc gc`` leaves it alone). Other
  handles then see :class:`ChannelClosed` once their own claimed message is done.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import itertools
import logging
import os
import re
import select
import shutil
import stat
import struct
import time
import warnings
from typing import Any, ClassVar

from .. import _owners
from .._base import Channel, Deadline
from .._framing import DEFAULT_MAX_FRAME, check_max
from .._kinds import ObjectInfo, PathKind, check_node
from .._naming import (
    ParsedURL,
    parse_bool,
    parse_url,
    runtime_dir,
    validate_mode,
    validate_name,
    validate_path,
    validate_size,
)
from .._objects import check_attach, create_or_attach, file_identity, parse_create, parse_uids
from ..codecs import Codec
from ..errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    from_oserror,
)

__all__ = ["KIND", "QUARANTINE", "SpoolChannel", "SpoolWarning", "spool_path"]

CLAIMED = "claimed"
QUARANTINE = "quarantine"
log = logging.getLogger("kipc")


class SpoolWarning(UserWarning):
    """An entry named like a message was not one (a FIFO, directory, symlink, foreign file): quarantined."""

_SUFFIX = ".msg"
_TMP = ".tmp-"
_seq = itertools.count()  # process-wide: two handles in one process never pick the same name
_RECLAIM_EVERY = 1.0
_MAX_BACKOFF = 0.05

# inotify through libc (no dependency); None when unavailable.
_IN_MOVED_TO, _IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED, _IN_ONLYDIR = 0x80, 0x400, 0x800, 0x8000, 0x01000000
_EVENT = struct.Struct("iIII")
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _libc.inotify_init1.argtypes = [ctypes.c_int]
    _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
except (OSError, AttributeError):
    _libc = None


def _inotify(path: str) -> int | None:
    """An inotify fd watching ``path`` for arrivals and for its own removal, or None."""
    if _libc is None:
        return None
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None  # e.g. fs.inotify.max_user_instances reached: fall back to polling
    mask = _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
    if _libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        os.close(fd)
        return None
    return fd


def spool_path(parsed: ParsedURL) -> str:
    if parsed.netloc:
        if parsed.path:
            raise InvalidArgument(f"{parsed.url}: use file://NAME or file:///absolute/dir")
        name = validate_name(parsed.netloc, what="spool name")  # before runtime_dir() touches the disk
        return os.path.join(runtime_dir("spool"), name)
    path = validate_path(parsed.path, what="spool directory")
    return path.rstrip("/") or "/"


def _owner_tag() -> str:
    pid, start = _owners.self_owner()
    return f"{pid}-{start or 0}"


def _tag_alive(tag: str) -> bool:
    try:
        pid, start = (int(x) for x in tag.split("-", 2)[:2])
    except ValueError:
        return True  # not ours to judge
    return _owners.owner_alive(pid, start or None)


class SpoolChannel(Channel):
    """A handle on a spool directory; it can both send and receive."""

    scheme: ClassVar[str] = "file"
    _dfd: int = -1
    _ifd: int | None = None
    _path: str = ""
    _ident: tuple[int, int] | None = None
    _allow: frozenset[int] = frozenset()

    def __init__(self, url: str, *, create: bool | str = False, mode: int = 0o600, persist: bool | str = False,
                 fsync: bool | str = True, reclaim: bool | str = True, allow_open_mode: bool | str = False,
                 allow_uids: Any = None, codec: str | Codec | None = None,
                 max_message_size: int | str = DEFAULT_MAX_FRAME) -> None:
        parsed = parse_url(url)
        if parsed.scheme != "file":
            raise InvalidArgument(f"{url}: not a file:// URL")
        path = spool_path(parsed)
        create = parse_create(create)
        self.mode = validate_mode(mode)
        self.persist = parse_bool(persist, what="persist")
        self.fsync = parse_bool(fsync, what="fsync")
        self.reclaim = parse_bool(reclaim, what="reclaim")
        allow_open = parse_bool(allow_open_mode, what="allow_open_mode")
        allow = self._allow = parse_uids(allow_uids)
        self.max_message_size = check_max(validate_size(max_message_size, what="max_message_size"))
        self.url, self._path = url, path
        try:
            create_or_attach(create, lambda: self._mkdir(path), lambda: None)
            self._attach(path, allow_open, allow)
            self._cdfd = os.open(CLAIMED, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=self._dfd)
        except BaseException:
            self._close()
            if self.owner:
                self.owner = False
                self._unlink()
            raise
        self._cache: collections.deque[str] = collections.deque()
        self._last_stamp = 0
        self._next_reclaim = 0.0
        self._init_channel(url, codec=codec)
        if self.reclaim:
            self._reclaim()

    # -- setup -------------------------------------------------------------------
    def _mkdir(self, path: str) -> None:
        """Make the spool directory exclusively, with ``claimed/``; the record names what kipc made."""
        try:
            os.mkdir(path, 0o700)
        except FileExistsError as e:
            raise AlreadyExists(f"create {self.url}: {path} already exists", errno=e.errno) from e
        except OSError as e:
            raise from_oserror(e, self.url, "create") from e
        st = os.lstat(path)
        self._ident = (st.st_dev, st.st_ino)
        self.owner = True
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
        os.mkdir(os.path.join(path, CLAIMED), 0o700)
        os.chmod(os.path.join(path, CLAIMED), 0o700)
        # kipc gc removes only what kipc made: these subdirectories and its own message/temp files
        _owners.record(self.url, "file", path=path, identity=file_identity(st, path=path), made=[CLAIMED])

    def _attach(self, path: str, allow_open: bool, allow: frozenset[int]) -> None:
        try:
            self._dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NotFound(f"open {self.url}: {path} does not exist (create=True makes it)", errno=e.errno) from e
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise BadObject(f"open {self.url}: {path} is a symlink or not a directory", errno=e.errno) from e
            raise from_oserror(e, self.url, "open") from e
        st = os.fstat(self._dfd)
        check_attach(f"{self.url}: {path}", uid=st.st_uid, mode=st.st_mode,
                     allowed_mode=0o777 if allow_open else 0o700, allow_uids=allow,
                     foreign_hint="pass allow_uids=[{uid}] to use it",
                     mode_hint="group/other bits refused (pass allow_open_mode=True)")
        if self._ident is None:
            self._ident = (st.st_dev, st.st_ino)
        try:
            os.mkdir(CLAIMED, 0o700, dir_fd=self._dfd)  # a hand-made spool dir: add claimed/
            os.chmod(CLAIMED, 0o700, dir_fd=self._dfd)
        except FileExistsError:
            pass

    # -- sending -------------------------------------------------------------------
    @property
    def _tag(self) -> str:
        # Derived from the running process each time (cached per pid by _owners): a forked
        # child must not reuse its parent's temp names or claim tags.
        return _owner_tag()

    def _try_send(self, data: bytes | memoryview, knobs: dict[str, Any]) -> bool:
        """A spool is unbounded: a send never waits (a full disk is LimitExceeded)."""
        data = memoryview(data)
        dfd = self._dfd
        seq = next(_seq)
        tag = self._tag
        tmp = f"{_TMP}{tag}-{seq}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         self.mode, dir_fd=dfd)
        except OSError as e:
            raise self._error(e, "send") from e
        try:
            try:
                os.fchmod(fd, self.mode)  # the umask may have narrowed it
                view = data.cast("B") if data.ndim != 1 or data.format != "B" else data
                while view.nbytes:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            # names sort by time; never go backwards within this handle (FIFO per producer)
            stamp = self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            os.rename(tmp, f"{stamp:020d}-{tag.split('-')[0]}-{seq:012d}{_SUFFIX}",
                      src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as e:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise self._error(e, "send") from e
            raise
        if self.fsync:
            os.fsync(dfd)  # make the rename itself durable
        return True

    def _error(self, e: OSError, op: str) -> Exception:
        if e.errno == errno.ENOENT:
            return ChannelClosed(f"{op} on {self.url}: the spool directory was removed")
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return LimitExceeded(f"{op} on {self.url}: no space left ({e.strerror}); "
                                 "the spool is unbounded, the disk/quota is the limit", errno=e.errno)
        return from_oserror(e, self.url, op)

    # -- receiving -----------------------------------------------------------------
    _seen_max = ""  # the largest name of this handle's previous listing (see _list)

    def _list(self) -> None:
        # readdir is no snapshot: a name renamed in *during* a listing may be missed while a
        # later one of the same producer is seen, which would deliver them out of order. So
        # take from a listing only names up to the largest name of an *earlier* listing: each
        # such name was stamped before that listing ended, so everything its producer sent
        # before it was in place when this listing began, and cannot have been missed.
        # Without inotify (no fd) every listing is treated as possibly incomplete.
        self._drain_events()
        try:
            while True:
                names = [n for n in os.listdir(self._dfd) if n.endswith(_SUFFIX)]
                if not names:
                    return
                cutoff, self._seen_max = self._seen_max, max(names)
                if not self._drain_events():
                    # nothing was renamed in while we listed (the renamer queues its event before
                    # releasing the directory lock readdir needs): the listing is complete
                    cutoff = self._seen_max
                ready = sorted(n for n in names if n <= cutoff)
                if ready:
                    self._cache.extend(ready)
                    return
        except OSError as e:
            raise self._error(e, "recv") from e

    def _try_claim(self) -> bytes | None:
        fresh = False
        while True:
            if not self._cache:
                if fresh:
                    return None
                self._list()
                fresh = True
                continue
            name = self._cache.popleft()
            claimed = f"{self._tag}-{name}"
            try:
                os.rename(name, claimed, src_dir_fd=self._dfd, dst_dir_fd=self._cdfd)
            except FileNotFoundError:
                continue  # another reader claimed it first
            except OSError as e:
                raise self._error(e, "recv") from e
            msg = self._consume(name, claimed)
            if msg is not None:
                return msg

    def _consume(self, name: str, claimed: str) -> bytes | None:
        """Read and remove a claimed message; None when it was no message (quarantined)."""
        cdfd = self._cdfd
        # O_NONBLOCK: a FIFO planted as *.msg must not block the open; O_NOFOLLOW: no symlinks
        try:
            fd = os.open(claimed, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=cdfd)
        except FileNotFoundError:
            return None  # removed under us (kipc rm, a user): nothing to deliver
        except OSError as e:  # ELOOP (a symlink), ENXIO (a socket), EACCES, ...
            self._quarantine(name, claimed, f"cannot be opened as a message ({e.strerror})")
            return None
        try:
            st = os.fstat(fd)
            why = self._not_a_message(st)
            if why:
                os.close(fd)
                fd = -1
                self._quarantine(name, claimed, why)
                return None
            size = st.st_size
            limit = self.max_message_size or 0
            if size > limit:
                os.rename(claimed, name, src_dir_fd=cdfd, dst_dir_fd=self._dfd)  # leave it for a bigger reader
                raise MessageTooLarge(f"recv on {self.url}: message {name} of {size} bytes exceeds this "
                                      f"handle's limit of {limit} bytes; left in the queue", size=size, limit=limit)
            parts = []
            left = size
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        finally:
            if fd >= 0:
                os.close(fd)
        os.unlink(claimed, dir_fd=cdfd)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _not_a_message(self, st: os.stat_result) -> str:
        """Why an entry named like a message is not one of ours ('' when it is)."""
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
            return f"is {kind}"
        if st.st_uid != os.geteuid() and st.st_uid not in self._allow:
            return f"belongs to uid {st.st_uid} (pass allow_uids=[{st.st_uid}] to accept its messages)"
        perm = stat.S_IMODE(st.st_mode)
        if perm & 0o7000 or perm & ~self.mode & 0o077:
            return f"has mode {perm:04o}, more than this spool's {self.mode:04o}"
        if st.st_nlink != 1:
            return f"has {st.st_nlink} hard links (a message file has one)"
        return ""

    def _quarantine(self, name: str, claimed: str, why: str) -> None:
        """Move a planted entry out of the way (``quarantine/``), say so, and go on with the real messages."""
        where = f"{QUARANTINE}/{claimed}"
        try:
            try:
                os.mkdir(QUARANTINE, 0o700, dir_fd=self._dfd)
                os.chmod(QUARANTINE, 0o700, dir_fd=self._dfd)
            except FileExistsError:
                pass
            qfd = os.open(QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dfd)
            try:
                os.rename(claimed, claimed, src_dir_fd=self._cdfd, dst_dir_fd=qfd)
            finally:
                os.close(qfd)
        except FileNotFoundError:
            return
        except OSError as e:
            where = f"{CLAIMED}/{claimed} (could not move it to {QUARANTINE}/: {e.strerror})"
        text = f"recv on {self.url}: {name} {why}; moved to {where} in the spool, not delivered"
        log.warning("kipc: %s", text)
        warnings.warn(text, SpoolWarning, stacklevel=2)

    def _drain_events(self) -> bool:
        """Read pending inotify events; True if there were any (a message may have been renamed in)."""
        ifd = self._ifd
        if ifd is None:
            return True
        seen = False
        while True:
            try:
                buf = os.read(ifd, 65536)
            except BlockingIOError:
                return seen
            seen = True
            off = 0
            while off + _EVENT.size <= len(buf):
                _wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED):
                    self._gone = True
                off += _EVENT.size + length

    _gone: bool = False

    def _check_gone(self) -> None:
        if not self._gone:
            try:
                st = os.stat(self._path)
                self._gone = (st.st_dev, st.st_ino) != self._ident
            except FileNotFoundError:
                self._gone = True
        if self._gone:
            raise ChannelClosed(f"recv on {self.url}: the spool directory was removed")

    _ifd_pid = 0  # the process that made _ifd

    def _inotify_fd(self) -> int | None:
        """This process's inotify fd. A forked child must not share its parent's: the events one
        process reads the other never sees (a missed wake-up, and a listing wrongly trusted
        as complete), so a child makes its own."""
        pid = os.getpid()
        if self._ifd_pid != pid:
            if self._ifd is not None:
                os.close(self._ifd)  # the inherited copy (the parent keeps its own)
                self._ifd, self._polls = None, None
            if _libc is not None and not self._closed:
                self._ifd = _inotify(self._path)
            self._ifd_pid = pid
        return self._ifd

    def _try_recv(self, knobs: dict[str, Any]) -> bytes | None:
        self._inotify_fd()  # before the first listing: no arrival is missed
        msg = self._try_claim()
        if msg is not None:
            return msg
        self._check_gone()
        now = time.monotonic()
        if self.reclaim and now >= self._next_reclaim:
            self._next_reclaim = now + _RECLAIM_EVERY
            if self._reclaim():
                return self._try_claim()
        return None

    def _wait(self, op: str, deadline: Deadline) -> None:
        # inotify (with the wake fd) when there is one, else a short sleep; at most
        # _RECLAIM_EVERY either way so dead readers' claims are returned while we wait.
        tick = deadline.slice(_RECLAIM_EVERY)
        if self._ifd is not None:
            cached = self._polls
            if cached is None:
                self._polls = cached = select.poll()
                cached.register(self._ifd, select.POLLIN)
                cached.register(self._wake_fd(), select.POLLIN)
            if not self._closed:
                cached.poll(max(1, tick.remaining_ms() or 0))
        else:
            time.sleep(min(self._backoff, tick.remaining() or 0.0, 0.05))
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    _polls: Any = None
    _backoff = 0.001

    def _wait_fd(self, op: str) -> int | None:
        if op != "recv" or self._closed:
            return None
        return self._inotify_fd()

    def _ready(self, op: str) -> bool:
        if op == "send":
            return True
        try:
            return bool(self._cache) or any(n.endswith(_SUFFIX) for n in os.listdir(self._dfd))
        except OSError:
            return True  # the attempt reports what is wrong

    def _reclaim(self) -> bool:
        """Return messages claimed by dead readers to the queue; drop dead writers' temp files."""
        returned = False
        try:
            for entry in os.listdir(self._cdfd):
                pid, _, rest = entry.partition("-")
                start, _, name = rest.partition("-")
                if name.endswith(_SUFFIX) and not _tag_alive(f"{pid}-{start}"):
                    try:
                        os.rename(entry, name, src_dir_fd=self._cdfd, dst_dir_fd=self._dfd)
                        returned = True
                    except FileNotFoundError:
                        pass  # another reader returned it
            for entry in os.listdir(self._dfd):
                if entry.startswith(_TMP) and not _tag_alive(entry[len(_TMP):]):
                    try:
                        os.unlink(entry, dir_fd=self._dfd)
                    except FileNotFoundError:
                        pass
        except OSError:
            return returned  # the directory is going away; recv reports it
        if returned:
            self._cache.clear()  # returned names sort before what we cached
        return returned

    # -- fds, cleanup ---------------------------------------------------------------
    def fileno(self) -> int:
        self._check_open("fileno")
        ifd = self._inotify_fd()
        if ifd is None:
            return super().fileno()  # Unsupported: no inotify here
        return ifd

    _cdfd: int = -1

    def _close(self) -> None:
        for fd in (self._ifd, self._cdfd, self._dfd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._ifd, self._cdfd, self._dfd = None, -1, -1
        self._release_wake()

    def _unlink(self) -> None:
        try:
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == self._ident and stat.S_ISDIR(st.st_mode):
                shutil.rmtree(self._path)  # symlink-safe (fd-based) on Linux
        except FileNotFoundError:
            pass
        _owners.forget(self.url)


# -- object kind: how kipc ls / rm / gc see spools -------------------------------------------------------
# Only what kipc writes is kipc's to remove: message files, its temp files, claimed messages, and the
# claimed/ directory it makes. A spool URL may point at any directory, so anything else is left in place.
_TOP_RE = re.compile(r"(?:[0-9]{20}-[0-9]+-[0-9]{12}\.msg|\.tmp-[0-9]+-[0-9]+-[0-9]+)\Z", re.ASCII)  # messages, temps
_CLAIMED_RE = re.compile(r"[0-9]+-[0-9]+-[0-9]{20}-[0-9]+-[0-9]{12}\.msg\Z", re.ASCII)


def _remove_kipc_files(dfd: int, pattern: re.Pattern[str], me: int) -> list[str]:
    """Unlink the regular files of this uid whose names kipc writes; returns the names it left."""
    left = []
    for entry in os.listdir(dfd):
        try:
            st = os.lstat(entry, dir_fd=dfd)
        except FileNotFoundError:
            continue
        if pattern.match(entry) and stat.S_ISREG(st.st_mode) and st.st_uid == me:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dfd)
        else:
            left.append(entry)
    return left


class _SpoolKind(PathKind):
    def stat(self, target: Any) -> ObjectInfo | None:
        info = super().stat(target)
        if info is not None and info.detail is None:
            n = size = 0
            try:
                with os.scandir(target) as it:
                    for e in it:
                        if e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                            n += 1
                            size += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass
            info.depth, info.size = n, size
        return info

    def remove(self, url: str, info: ObjectInfo) -> None:
        """Remove kipc's files and ``claimed/``, then the directory if that left it empty.

        Only a kipc spool: one in ``runtime_dir("spool")`` or named by an owner record
        (a ``file://`` URL may point at any directory).
        """
        check_node(url, info, self.is_type, self.noun)
        path, me = info.path or "", os.geteuid()
        if os.path.dirname(path) != runtime_dir("spool") and \
                not any(r.kind == "file" and r.extra.get("path") == path for r in _owners.records()):
            raise PermissionDenied(f"rm {url}: {path} is not a spool kipc created (no owner record); "
                                   "remove it yourself")
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            try:
                cfd = os.open(CLAIMED, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except (FileNotFoundError, NotADirectoryError):
                cfd = -1
            except OSError as e:
                raise from_oserror(e, url, "rm") from e
            if cfd >= 0:
                try:
                    claimed_left = _remove_kipc_files(cfd, _CLAIMED_RE, me)
                finally:
                    os.close(cfd)
                if not claimed_left:
                    with contextlib.suppress(OSError):
                        os.rmdir(CLAIMED, dir_fd=dfd)
            left = _remove_kipc_files(dfd, _TOP_RE, me)
        finally:
            os.close(dfd)
        if left:
            shown = ", ".join(sorted(left)[:5]) + (" ..." if len(left) > 5 else "")
            raise PermissionDenied(f"rm {url}: removed kipc's messages, kept {path}: it holds {len(left)} "
                                   f"entries kipc did not put there ({shown}); remove them yourself")
        try:
            os.rmdir(path)
        except OSError as e:
            raise from_oserror(e, url, "rm") from e


KIND = _SpoolKind("file", sub="spool", is_type=stat.S_ISDIR, noun="spool directory",
                  description="file (owner records; the spool directory)")
