"""Object kinds: the protocol by which each mechanism shows its named objects to ``kipc ls / rm / gc``.

Contract card:

* A :class:`Kind` describes one kind of named object (``"ring"``, ``"sysvshm"``,
  ``"fifo"``...). Each mechanism defines its kind beside its class (``KIND`` at
  the end of the module) and registers it with its scheme
  (:func:`kipc.registry.register` ``kind=``); :mod:`kipc.admin` only aggregates
  the registered kinds, so a scheme added at run time shows in ``kipc ls``.
* ``locate(parsed) -> target``: what a URL names (a SysV key or ``("id", N)``,
  a name, an absolute path), validated; nothing is created or opened.
* ``scan() -> ObjectInfo...``: every object of the kind the machine lists,
  whoever made it (``/proc/sysvipc``, ``/dev/shm``, the mqueue fs). Kinds with
  no machine-wide listing (FIFOs, sockets, spools, remote schemes) list
  nothing; kipc finds theirs through owner records.
* ``stat(target) -> ObjectInfo | None``: the object now at ``target``, with its
  ``identity`` (see :mod:`kipc._objects`), or None when there is none.
* ``remove(url, info)``: remove exactly the object ``info`` describes (it
  re-checks the identity where the kernel allows) and refuses other users'
  objects with :class:`~kipc.PermissionDenied`; it never deletes a directory
  tree kipc did not make.
* ``records``: the owner-record kinds (``_owners.record(url, kind)``) its
  creators write, so ``gc`` can match a record with the object's kind.

Reading never creates, attaches to or changes an object, except where a kind
says so (ring depth: attached read-only for an instant).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _owners
from ._naming import ParsedURL, parse_int, parse_url, runtime_dir, validate_key, validate_name, validate_path
from ._objects import file_identity, sysv_identity, sysv_key, sysv_row, sysv_rows
from .errors import InvalidArgument, NotFound, PermissionDenied, from_oserror

__all__ = [
    "DevShmKind", "Kind", "ObjectInfo", "PathKind", "RemoteKind", "SysvKind", "check_node", "refuse_foreign",
    "remove_node", "stat_info", "user_name",
]


@dataclass
class ObjectInfo:
    """One IPC object (one row of ``kipc ls``)."""

    kind: str
    url: str
    uid: int | None = None
    mode: int | None = None
    size: int | None = None  # bytes (segment size, queue bytes, spool bytes)
    depth: int | None = None  # messages waiting (queues, rings, spools)
    attached: int | None = None  # processes attached, where the kernel counts them
    pids: list[int] = field(default_factory=list)  # pids the kernel names (creator/last op)
    creator_pid: int | None = None
    alive: bool | None = None
    kipc: bool = False
    path: str | None = None  # filesystem node, when there is one
    ident: int | None = None  # SysV id
    cuid: int | None = None  # SysV creator uid (IPC_SET cannot change it)
    total: int | None = None  # messages ever passed, when known (rates in ``kipc top``)
    bytes_total: int | None = None  # bytes ever passed, when known (ring: framed bytes written; ``kipc top``)
    queued: int | None = None  # bytes waiting now, for queues (SysV cbytes, POSIX QSIZE, a ring's used bytes)
    identity: dict[str, int] | None = None  # what tells this object from a later one of the same name
    detail: str | None = None  # what is odd about it (e.g. "a regular file, not a FIFO")
    command: str | None = None  # the command of the process holding it, where that is how it is known (TCP)
    target: Any = field(default=None, repr=False)  # Kind.locate() of its name (not in to_dict)

    @property
    def owner(self) -> str:
        return user_name(self.uid)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("target")
        d["owner"] = self.owner
        d["mode"] = None if self.mode is None else f"{self.mode:04o}"
        return d


def user_name(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def refuse_foreign(url: str, uid: int | None, cuid: int | None = None) -> None:
    """kipc removes only this user's objects, even as root (``ipcrm``/``rm`` remain for an operator)."""
    me = os.geteuid()
    if uid is not None and uid != me and cuid != me:
        raise PermissionDenied(f"rm {url}: owned by {user_name(uid)} (uid {uid}), not by you ({user_name(me)}); "
                               "kipc does not remove other users' objects")


def stat_info(kind: str, url: str, path: str, st: os.stat_result, target: Any = None,
              fd: int | None = None) -> ObjectInfo:
    """An ls row from ``lstat(path)`` (or ``fstat(fd)``), with the node's identity."""
    identity = file_identity(st, fd=fd) if fd is not None else file_identity(st, path=path)
    return ObjectInfo(kind, url, uid=st.st_uid, mode=stat.S_IMODE(st.st_mode), size=st.st_size, path=path,
                      identity=identity, target=target if target is not None else path)


class Kind:
    """One kind of named object, as ``kipc ls / rm / gc`` see it (see the module docstring)."""

    name: str = ""  # the ls kind ("ring")
    scheme: str = ""  # the URL scheme that names it ("ring"; "sysv" for segments and semaphores)
    part: str = ""  # "shm"/"sem" where one scheme names two kinds (kipc rm --kind)
    records: tuple[str, ...] = ()  # owner-record kinds its creators write
    description: str = ""  # where ``kipc ls`` finds it
    lists_all: bool = False  # scan() lists every object of the kind: absent from it means gone
    record_scheme: str = ""  # the scheme its records use when it differs (semaphores: "sysv-sem", "posix-sem")

    def locate(self, parsed: ParsedURL) -> Any:
        raise NotImplementedError

    def user_url(self, record_url: str) -> str:
        """The URL a user opens the object with, from its record's (``posix-lock://N`` -> ``posix://N``)."""
        if self.record_scheme and record_url.startswith(self.record_scheme + "://"):
            return self.scheme + record_url[len(self.record_scheme):]
        return record_url

    def target_of_record(self, rec: _owners.OwnerRecord) -> Any:
        return self.locate(parse_url(self.user_url(rec.url)))

    def url_of(self, target: Any) -> str:
        return f"{self.scheme}://{target}"

    def scan(self) -> Iterable[ObjectInfo]:
        return ()

    def stat(self, target: Any) -> ObjectInfo | None:
        return next((i for i in self.scan() if i.target == target), None)

    def missing(self, target: Any) -> str:
        """The end of ``rm URL: ...`` when nothing is there."""
        return f"no such {self.name} object"

    def blind_spot(self) -> str | None:
        """What ``kipc ls`` cannot see of this kind here, and how to fix it (None: nothing)."""
        return None

    def remove(self, url: str, info: ObjectInfo) -> None:
        raise InvalidArgument(f"rm {url}: {self.name} objects cannot be removed by kipc")

    def __repr__(self) -> str:
        return f"<kind {self.name} ({self.scheme}://)>"


class RemoteKind(Kind):
    """A scheme that names nothing on this machine (a TCP port, a NATS stream): known only from owner records."""

    def __init__(self, scheme: str, description: str) -> None:
        self.name = self.scheme = scheme
        self.records = (scheme,)
        self.description = description

    def locate(self, parsed: ParsedURL) -> Any:
        return parsed.netloc + parsed.path

    def stat(self, target: Any) -> ObjectInfo | None:
        return None  # nothing local: a record of a dead owner names nothing left to remove


class PathKind(Kind):
    """Objects that are filesystem nodes: ``scheme://NAME`` (in ``runtime_dir(sub)``) or ``scheme:///abs/path``."""

    def __init__(self, name: str, *, sub: str, is_type: Callable[[int], bool], noun: str, description: str,
                 records: tuple[str, ...] | None = None) -> None:
        self.name = self.scheme = name
        self.sub, self.is_type, self.noun = sub, is_type, noun
        self.records = records or (name,)
        self.description = description

    def locate(self, parsed: ParsedURL) -> Any:
        if parsed.netloc and parsed.path:
            raise InvalidArgument(f"{parsed.url}: use {self.scheme}://NAME or {self.scheme}:///absolute/path")
        if parsed.netloc:
            return os.path.join(runtime_dir(self.sub), validate_name(parsed.netloc))
        return validate_path(parsed.path)

    def url_of(self, target: Any) -> str:
        return f"{self.scheme}://{target}"

    def stat(self, target: Any) -> ObjectInfo | None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        info = stat_info(self.name, self.url_of(target), target, st)
        if not self.is_type(st.st_mode):
            info.detail = f"{target} is not a {self.noun}"
        return info

    def missing(self, target: Any) -> str:
        return f"no such {self.noun} ({target})"

    def remove(self, url: str, info: ObjectInfo) -> None:
        remove_node(url, info, self.is_type, self.noun)


def check_node(url: str, info: ObjectInfo, is_type: Callable[[int], bool], noun: str) -> os.stat_result:
    """lstat ``info.path`` again: still the node ``info`` describes, of the right type, this user's."""
    path = info.path or ""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"rm {url}: no such {noun} ({path}; removed meanwhile)") from None
    except OSError as e:
        raise from_oserror(e, url, "rm") from e
    if not is_type(st.st_mode):
        raise InvalidArgument(f"rm {url}: {path} is not a {noun}")
    if info.identity is not None and file_identity(st, path=path) != info.identity:
        raise NotFound(f"rm {url}: {path} was replaced meanwhile; not removed")
    refuse_foreign(url, st.st_uid)
    return st


def remove_node(url: str, info: ObjectInfo, is_type: Callable[[int], bool], noun: str) -> None:
    """Unlink the file node ``info`` describes (see :func:`check_node`)."""
    check_node(url, info, is_type, noun)
    try:
        os.unlink(info.path or "")
    except OSError as e:
        raise from_oserror(e, url, "rm") from e


# -- SysV objects: /proc/sysvipc lists every one, whoever made it ---------------------------------------
class SysvKind(Kind):
    """``sysvmq://KEY`` queues, ``sysv://KEY`` segments or semaphores; ``//id:N`` names a key-0 (private) one."""

    lists_all = True

    def __init__(self, name: str, scheme: str, table: str, *, part: str, records: tuple[str, ...],
                 description: str, record_scheme: str = "") -> None:
        self.name, self.scheme, self.table, self.part = name, scheme, table, part
        self.records, self.description = records, description
        self.record_scheme = record_scheme  # "sysv-sem": semaphore records use their own scheme

    def locate(self, parsed: ParsedURL) -> Any:
        if parsed.netloc.startswith("id:") and parsed.path in ("", "/"):
            return ("id", parse_int(parsed.netloc[3:], what=f"{parsed.url}: id", hex=False, minimum=0))
        if parsed.netloc == "private" and "id" in parsed.query:  # the record of a private queue
            return ("id", parse_int(parsed.query["id"], what=f"{parsed.url}: id", hex=False, minimum=0))
        if parsed.path not in ("", "/"):
            return sysv_key(parsed)  # ftok: ?proj=N is required, as for kipc.open
        return validate_key(parsed.netloc)

    def url_of(self, target: Any) -> str:
        if isinstance(target, tuple):
            return f"{self.scheme}://id:{target[1]}"
        return f"{self.scheme}://{target & 0xFFFFFFFF:#x}"

    def describe(self, row: dict[str, int]) -> ObjectInfo:
        """The ls row of one /proc/sysvipc line (a kind adds its own columns)."""
        ident = row[{"msg": "msqid", "shm": "shmid", "sem": "semid"}[self.table]]
        target: Any = row["key"] if row["key"] else ("id", ident)
        return ObjectInfo(self.name, self.url_of(target), uid=row["uid"], mode=row["perms"] & 0o777, ident=ident,
                          cuid=row["cuid"], identity=sysv_identity(self.table, row), target=target)

    def scan(self) -> Iterable[ObjectInfo]:
        return [self.describe(r) for r in sysv_rows(self.table)]

    def missing(self, target: Any) -> str:
        return f"no SysV {self.table} object with that {'id' if isinstance(target, tuple) else 'key'}"

    def remove(self, url: str, info: ObjectInfo) -> None:
        import sysv_ipc  # imported here: listing needs no sysv_ipc, only removal does


        row = sysv_row(self.table, info.ident or 0)
        if row is None:
            raise NotFound(f"rm {url}: no such object (removed meanwhile)")
        if info.identity is not None and sysv_identity(self.table, row) != info.identity:
            raise NotFound(f"rm {url}: the object was replaced meanwhile; not removed")
        refuse_foreign(url, row["uid"], row["cuid"])
        remove = {"msg": sysv_ipc.remove_message_queue, "shm": sysv_ipc.remove_shared_memory,
                  "sem": sysv_ipc.remove_semaphore}[self.table]
        try:
            remove(info.ident)
        except sysv_ipc.ExistentialError:
            raise NotFound(f"rm {url}: no such object (removed meanwhile)") from None
        except sysv_ipc.PermissionsError as e:
            raise PermissionDenied(f"rm {url}: {e}") from None


# -- POSIX shm objects and semaphores, kipc rings: files of /dev/shm -------------------------------------
SHM_DIR = "/dev/shm"
RING_PREFIX = "kipc.ring."
SEM_PREFIX = "sem."
SYNC_PREFIXES = ("kipc.lock.", "kipc.rlock.", "kipc.event.")  # kipc.Lock / RLock / Event (sync/lock.py)


class DevShmKind(Kind):
    """``/dev/shm/<prefix>NAME`` (``prefix`` "": POSIX segments, i.e. whatever has neither other prefix)."""

    lists_all = True

    def __init__(self, name: str, scheme: str, prefix: str, *, part: str, records: tuple[str, ...],
                 description: str, record_scheme: str = "") -> None:
        self.name, self.scheme, self.prefix, self.part = name, scheme, prefix, part
        self.records, self.description, self.record_scheme = records, description, record_scheme

    def locate(self, parsed: ParsedURL) -> Any:
        if parsed.path not in ("", "/") or not parsed.netloc:
            raise InvalidArgument(f"{parsed.url}: expected {parsed.scheme}://NAME")
        return validate_name(parsed.netloc)

    def path_of(self, name: str) -> str:
        return os.path.join(SHM_DIR, self.prefix + name)

    def _mine(self, entry: str) -> str | None:
        """The object name of a /dev/shm entry of this kind, else None."""
        if self.prefix:
            return entry[len(self.prefix):] if entry.startswith(self.prefix) else None
        return None if entry.startswith((RING_PREFIX, SEM_PREFIX, *SYNC_PREFIXES)) else entry

    def describe(self, name: str, path: str, st: os.stat_result) -> ObjectInfo:
        return stat_info(self.name, self.url_of(name), path, st, target=name)

    def scan(self) -> Iterable[ObjectInfo]:
        try:
            entries = sorted(os.listdir(SHM_DIR))
        except OSError:
            return []
        out = []
        for entry in entries:
            name = self._mine(entry)
            if name is None:
                continue
            path = os.path.join(SHM_DIR, entry)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(self.describe(name, path, st))
        return out

    def stat(self, target: Any) -> ObjectInfo | None:
        path = self.path_of(target)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        info = self.describe(target, path, st)
        if not stat.S_ISREG(st.st_mode):
            info.detail = f"{path} is not a shared-memory object"
        return info

    def missing(self, target: Any) -> str:
        return f"no such object ({self.path_of(target)})"

    def remove(self, url: str, info: ObjectInfo) -> None:
        remove_node(url, info, stat.S_ISREG, "shared-memory object")
