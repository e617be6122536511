"""Every IPC object on the machine: list (``inventory``), remove (``remove``), collect (``gc``).

Contract card:

* Sources: ``/proc/sysvipc/{msg,shm,sem}`` (every SysV object the kernel has,
  whoever made it), ``/dev/shm`` (POSIX shared memory, POSIX semaphores
  ``sem.NAME``, kipc rings ``kipc.ring.NAME``), the mqueue filesystem when it
  is mounted (else only the POSIX queues kipc's owner records name; see
  :data:`MQUEUE_HINT`), and kipc's owner records for FIFOs, sockets and spools.
* Every object gets the URL kipc uses for it (``sysvmq://0x4d2``, ``ring://x``,
  ``posix://x``...). SysV objects with key 0 (``IPC_PRIVATE``) get
  ``sysvmq://id:N`` (``sysv://id:N``), which :func:`remove` also accepts.
* ``kipc`` is true when an owner record names the object; ``alive`` is the
  recorded creator's liveness (pid + start time, so a reused pid does not
  count), ``None`` when unknown.
* :func:`remove` refuses objects owned by another user with a
  :class:`~kipc.PermissionDenied` naming both users, even as root (the kernel
  would let root remove them; an operator must do that with ``ipcrm``/``rm``).
* :func:`gc` removes only objects whose owner record names a dead owner and
  whose kernel owner is this user: never live, foreign or unrecorded objects.
  It forgets records whose object is already gone.
* Reading never creates, attaches to or changes an object, except that the
  depth of a POSIX queue (without the mqueue fs) and of a ring is read by
  opening it read-only for an instant.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _owners
from ._naming import parse_url, runtime_dir, validate_key, validate_name, validate_path
from ._platform import mqueue_mount
from .errors import InvalidArgument, NotFound, PermissionDenied, Unsupported, from_oserror

__all__ = ["KINDS", "MQUEUE_HINT", "SCHEME_KINDS", "ObjectInfo", "gc", "inventory", "locate", "remove"]

#: Every kind ``inventory`` reports.
KINDS = ("sysvmq", "sysvshm", "sysvsem", "posixshm", "posixsem", "posixmq", "ring", "fifo", "unix", "file", "tcp",
         "nats")

#: How each channel scheme shows in ``kipc ls`` (the CLI tests check every registered scheme is here).
SCHEME_KINDS: dict[str, str] = {
    "sysvmq": "sysvmq (from /proc/sysvipc/msg)",
    "posixmq": "posixmq (mqueue fs when mounted, else owner records)",
    "ring": "ring (/dev/shm/kipc.ring.NAME)",
    "fifo": "fifo (owner records; the FIFO node itself)",
    "unix": "unix (owner records; the socket node)",
    "file": "file (owner records; the spool directory)",
    "tcp": "tcp (nothing named on this machine: a port, gone with its listener; shown if an owner record exists)",
    "nats": "nats (nothing local: the stream lives in the server; shown if an owner record exists)",
}

MQUEUE_HINT = ("POSIX queues of other programs are not listed: mount the mqueue fs with "
               "`mount -t mqueue none /dev/mqueue`")

_SHM_DIR = "/dev/shm"
_RING_PREFIX = "kipc.ring."
_SEM_PREFIX = "sem."


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
    total: int | None = None  # messages ever passed, when known (rates in ``kipc top``)

    @property
    def owner(self) -> str:
        return _user(self.uid)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owner"] = self.owner
        d["mode"] = None if self.mode is None else f"{self.mode:04o}"
        return d


def _user(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --------------------------------------------------------------------------- identity of a URL
def locate(url: str) -> tuple[str, Any]:
    """``(scheme, identity)`` of an object URL: key, ``("id", N)``, name or absolute path.

    Bad URLs raise :class:`~kipc.InvalidArgument` before anything is touched.
    """
    p = parse_url(url)
    s = p.scheme
    if s in ("sysvmq", "sysv"):
        if p.path not in ("", "/"):
            # sysvmq:///etc/x?proj=65 (ftok) is resolved to its key
            proj = p.query.get("proj", "65")
            path = validate_path(p.path)
            try:
                return s, validate_key(_ftok(path, int(proj, 0)))
            except OSError as e:
                raise from_oserror(e, url, "ftok") from e
        if p.netloc.startswith("id:"):
            try:
                return s, ("id", int(p.netloc[3:]))
            except ValueError:
                raise InvalidArgument(f"{url}: id:N needs a number") from None
        return s, validate_key(p.netloc)
    if s in ("ring", "posix", "posixmq"):
        if p.path not in ("", "/") or not p.netloc:
            raise InvalidArgument(f"{url}: expected {s}://NAME")
        return s, validate_name(p.netloc)
    if s in ("fifo", "unix", "file"):
        if p.netloc and p.path:
            raise InvalidArgument(f"{url}: use {s}://NAME or {s}:///absolute/path")
        if p.netloc.startswith("@"):
            return s, p.netloc  # abstract unix socket: nothing on disk
        if p.netloc:
            sub = {"fifo": "fifo", "unix": "sock", "file": "spool"}[s]
            return s, os.path.join(runtime_dir(sub), validate_name(p.netloc))
        return s, validate_path(p.path)
    if s in ("tcp", "nats"):
        return s, p.netloc + p.path
    from . import registry

    known = ", ".join(sorted([*registry.schemes(), "sysv", "posix"]))
    raise InvalidArgument(f"unknown scheme {s!r} in {url!r}; known: {known}")


def _ftok(path: str, proj: int) -> int:
    st = os.stat(path)
    return ((proj & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)


def _records() -> dict[tuple[str, Any], _owners.OwnerRecord]:
    """Owner records by identity (records with unparsable URLs are skipped)."""
    out: dict[tuple[str, Any], _owners.OwnerRecord] = {}
    for rec in _owners.records():
        # Semaphores record "sysv-sem://K" / "posix-sem://N" (a segment may share the key or name):
        # read them as sysv:// / posix:// (their kind picks the semaphore), or gc never collects them.
        url = rec.url.replace("-sem://", "://", 1) if rec.url.startswith(("sysv-sem://", "posix-sem://")) else rec.url
        try:
            ident = locate(url)
        except (InvalidArgument, TypeError, ValueError, OSError):
            continue
        out[_norm(ident, rec.kind)] = rec
    return out


def _norm(ident: tuple[str, Any], kind: str = "") -> tuple[str, Any]:
    """Identity used to match records with scanned objects (sysv:// splits into shm/sem)."""
    scheme, what = ident
    if scheme == "sysv":
        return ("sysvsem" if "sem" in kind else "sysvshm", what)
    if scheme == "posix":
        return ("posixsem" if "sem" in kind else "posixshm", what)
    return scheme, what


# --------------------------------------------------------------------------- scanning
def _sysv_rows(kind: str) -> Iterator[dict[str, int]]:
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            header = f.readline().split()
            for line in f:
                parts = line.split()
                if len(parts) >= len(header):
                    yield {h: int(v) for h, v in zip(header, parts, strict=False)}
    except OSError:
        return


def _key_url(scheme: str, key: int, ident: int) -> str:
    if key == 0:
        return f"{scheme}://id:{ident}"
    return f"{scheme}://{key & 0xFFFFFFFF:#x}"


def _perms(row: dict[str, int]) -> int:
    return int(str(row["perms"]), 8) & 0o777  # /proc prints perms in octal; _sysv_rows read it as decimal


def _scan_sysv() -> Iterator[ObjectInfo]:
    for r in _sysv_rows("msg"):
        yield ObjectInfo("sysvmq", _key_url("sysvmq", r["key"], r["msqid"]), uid=r["uid"], mode=_perms(r),
                         size=r["cbytes"], depth=r["qnum"], pids=[p for p in (r["lspid"], r["lrpid"]) if p],
                         ident=r["msqid"])
    for r in _sysv_rows("shm"):
        yield ObjectInfo("sysvshm", _key_url("sysv", r["key"], r["shmid"]), uid=r["uid"], mode=_perms(r),
                         size=r["size"], attached=r["nattch"], pids=[p for p in (r["cpid"], r["lpid"]) if p],
                         creator_pid=r["cpid"], alive=_pid_alive(r["cpid"]), ident=r["shmid"])
    for r in _sysv_rows("sem"):
        yield ObjectInfo("sysvsem", _key_url("sysv", r["key"], r["semid"]), uid=r["uid"], mode=_perms(r),
                         size=r["nsems"], ident=r["semid"])


def _ident(info: ObjectInfo) -> tuple[str, Any]:
    """Identity of a scanned object, comparable with :func:`_norm` of a record."""
    target = info.url.split("://", 1)[1]
    if info.kind in ("sysvmq", "sysvshm", "sysvsem"):
        return info.kind, ("id", info.ident) if target.startswith("id:") else validate_key(target)
    return info.kind, target


def _pid_alive(pid: int) -> bool | None:
    if not pid:
        return None
    return _owners.process_start_time(pid) is not None


def _stat_info(kind: str, url: str, path: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(kind, url, uid=st.st_uid, mode=stat.S_IMODE(st.st_mode), size=st.st_size, path=path)


def _scan_dev_shm() -> Iterator[ObjectInfo]:
    try:
        names = sorted(os.listdir(_SHM_DIR))
    except OSError:
        return
    for name in names:
        path = os.path.join(_SHM_DIR, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if name.startswith(_RING_PREFIX):
            info = _stat_info("ring", f"ring://{name[len(_RING_PREFIX):]}", path, st)
        elif name.startswith(_SEM_PREFIX):
            info = _stat_info("posixsem", f"posix://{name[len(_SEM_PREFIX):]}", path, st)
        else:
            info = _stat_info("posixshm", f"posix://{name}", path, st)
        yield info


def _scan_mqueue(mount: str) -> Iterator[ObjectInfo]:
    try:
        names = sorted(os.listdir(mount))
    except OSError:
        return
    for name in names:
        path = os.path.join(mount, name)
        try:
            st = os.lstat(path)
            with open(path) as f:  # "QSIZE:5 NOTIFY:0 SIGNO:0 NOTIFY_PID:0"
                fields = dict(kv.split(":", 1) for kv in f.read().split())
        except (OSError, ValueError):
            continue
        info = _stat_info("posixmq", f"posixmq://{name}", path, st)
        info.size = int(fields.get("QSIZE", "0"))
        yield info


def _posixmq_depth(name: str) -> int | None:
    try:
        import posix_ipc

        mq = posix_ipc.MessageQueue("/" + name)
    except Exception:
        return None
    try:
        return int(mq.current_messages)
    finally:
        mq.close()


def _record_only(rec: _owners.OwnerRecord, ident: tuple[str, Any]) -> ObjectInfo | None:
    """An object known only from its owner record (FIFOs, sockets, spools, POSIX queues, listeners)."""
    scheme, what = ident
    info = ObjectInfo(scheme if scheme in KINDS else rec.kind, rec.url)
    if scheme in ("fifo", "unix", "file") and isinstance(what, str) and what.startswith("/"):
        try:
            st = os.lstat(what)
        except FileNotFoundError:
            return None  # the object is gone; gc forgets the record
        except OSError:
            return info
        info = _stat_info(scheme, rec.url, what, st)
        if scheme == "file" and stat.S_ISDIR(st.st_mode):
            info.depth, info.size = _spool_depth(what)
    elif scheme == "posixmq":
        if _posixmq_depth_exists(what) is False:
            return None
        info.depth = _posixmq_depth(what)
        info.uid = os.geteuid()
    elif scheme in ("sysvmq", "sysvshm", "sysvsem", "posixshm", "posixsem", "ring"):
        return None  # kernel-scanned kinds: absent from the scan means gone
    return info


def _posixmq_depth_exists(name: str) -> bool | None:
    try:
        import posix_ipc

        posix_ipc.MessageQueue("/" + name).close()
        return True
    except posix_ipc.ExistentialError:
        return False
    except Exception:
        return None


def _spool_depth(path: str) -> tuple[int, int]:
    """Messages waiting in a spool directory (regular files not starting with '.') and their bytes."""
    n = size = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                    n += 1
                    size += e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return n, size


def _ring_stats(name: str) -> dict[str, int] | None:
    """Depth and messages ever sent of a ring, read by attaching for an instant (None if it cannot)."""
    try:
        from .transports.ring import RingChannel

        with RingChannel(name) as ring:
            info = ring.info()
    except Exception:
        return None
    return {"depth": int(info["msgs_in"]) - int(info["msgs_out"]), "total": int(info["msgs_in"])}


def inventory(all_users: bool = False, kinds: Iterable[str] | None = None) -> list[ObjectInfo]:
    """Every IPC object visible to this user (``all_users=True``: every readable one)."""
    wanted = set(kinds) if kinds else set(KINDS)
    unknown = wanted - set(KINDS)
    if unknown:
        raise InvalidArgument(f"unknown kind(s) {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    recs = _records()
    seen: set[tuple[str, Any]] = set()
    out: list[ObjectInfo] = []
    mount = mqueue_mount()
    scanned: list[ObjectInfo] = [*_scan_sysv(), *_scan_dev_shm(), *(_scan_mqueue(mount) if mount else [])]
    for info in scanned:
        ident = _ident(info)
        seen.add(ident)
        rec = recs.get(ident)
        if rec is not None:
            info.kipc, info.creator_pid, info.alive = True, rec.pid, rec.alive
        if info.kind == "ring":
            s = _ring_stats(info.url[len("ring://"):])
            if s:
                info.depth, info.total = s.get("depth"), s.get("total")
        if info.kind == "posixmq" and info.depth is None:
            info.depth = _posixmq_depth(info.url[len("posixmq://"):])
        out.append(info)
    for ident, rec in recs.items():
        if ident in seen or (ident[0] == "posixmq" and mount):
            continue
        found = _record_only(rec, ident)
        if found is None:
            continue
        found.kipc, found.creator_pid, found.alive = True, rec.pid, rec.alive
        out.append(found)
    me = os.geteuid()
    return [i for i in out if i.kind in wanted and (all_users or i.uid is None or i.uid == me)]


# --------------------------------------------------------------------------- removal
def _refuse_foreign(url: str, uid: int | None, cuid: int | None = None) -> None:
    me = os.geteuid()
    if uid is not None and uid != me and cuid != me:
        raise PermissionDenied(f"rm {url}: owned by {_user(uid)} (uid {uid}), not by you ({_user(me)}); "
                               "kipc does not remove other users' objects")


def _find_sysv(kind: str, what: Any) -> dict[str, int] | None:
    idcol = {"msg": "msqid", "shm": "shmid", "sem": "semid"}[kind]
    for r in _sysv_rows(kind):
        if (isinstance(what, tuple) and r[idcol] == what[1]) or (not isinstance(what, tuple) and r["key"] == what):
            return r
    return None


def _rm_sysv(url: str, kind: str, row: dict[str, int]) -> None:
    import sysv_ipc

    _refuse_foreign(url, row["uid"], row["cuid"])
    try:
        if kind == "msg":
            sysv_ipc.remove_message_queue(row["msqid"])
        elif kind == "shm":
            sysv_ipc.remove_shared_memory(row["shmid"])
        else:
            sysv_ipc.remove_semaphore(row["semid"])
    except sysv_ipc.ExistentialError:
        raise NotFound(f"rm {url}: no such object (removed meanwhile)") from None
    except sysv_ipc.PermissionsError as e:
        raise PermissionDenied(f"rm {url}: {e}") from None


def _rm_path(url: str, path: str, check: Any, what: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"rm {url}: no such {what} ({path})") from None
    except OSError as e:
        raise from_oserror(e, url, "rm") from e
    if not check(st.st_mode):
        raise InvalidArgument(f"rm {url}: {path} is not a {what}")
    _refuse_foreign(url, st.st_uid)
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as e:
        raise from_oserror(e, url, "rm") from e


def remove(url: str, *, kind: str | None = None) -> list[str]:
    """Remove the object(s) ``url`` names; returns what was removed (``kind: url``).

    ``sysv://K`` and ``posix://NAME`` may name both a segment and a semaphore:
    both are removed unless ``kind`` (``"shm"``/``"sem"``) picks one. Refuses
    other users' objects (:class:`~kipc.PermissionDenied`); a missing object is
    :class:`~kipc.NotFound`; schemes with nothing named locally are :class:`~kipc.Unsupported`.
    """
    scheme, what = locate(url)
    if kind not in (None, "shm", "sem"):
        raise InvalidArgument(f"rm {url}: kind must be 'shm' or 'sem', not {kind!r}")
    removed: list[str] = []
    if scheme in ("sysvmq", "sysv"):
        kinds = ["msg"] if scheme == "sysvmq" else [k for k in ("shm", "sem") if kind in (None, k)]
        rows = [(k, r) for k in kinds if (r := _find_sysv(k, what)) is not None]
        if not rows:
            by = "id" if isinstance(what, tuple) else "key"
            raise NotFound(f"rm {url}: no SysV {'/'.join(kinds)} object with that {by}")
        for _, r in rows:  # check every part before removing any
            _refuse_foreign(url, r["uid"], r["cuid"])
        for k, r in rows:
            _rm_sysv(url, k, r)
            removed.append(f"sysv{k if k != 'msg' else 'mq'}: {url}")
    elif scheme in ("ring", "posix"):
        paths = ([("ring", os.path.join(_SHM_DIR, _RING_PREFIX + what))] if scheme == "ring" else
                 [(k, os.path.join(_SHM_DIR, (_SEM_PREFIX if k == "sem" else "") + what))
                  for k in ("shm", "sem") if kind in (None, k)])
        present = [(k, p) for k, p in paths if os.path.lexists(p)]
        if not present:
            raise NotFound(f"rm {url}: no such object ({' or '.join(p for _, p in paths)})")
        for _, p in present:
            _refuse_foreign(url, os.lstat(p).st_uid)
        for k, p in present:
            _rm_path(url, p, stat.S_ISREG, "shared-memory object")
            removed.append(f"{'ring' if k == 'ring' else 'posix' + k}: {url}")
    elif scheme == "posixmq":
        import posix_ipc

        mount = mqueue_mount()
        if mount and os.path.lexists(os.path.join(mount, what)):
            _refuse_foreign(url, os.lstat(os.path.join(mount, what)).st_uid)
        try:
            posix_ipc.unlink_message_queue("/" + what)
        except posix_ipc.ExistentialError:
            raise NotFound(f"rm {url}: no such POSIX message queue") from None
        except posix_ipc.PermissionsError as e:
            raise PermissionDenied(f"rm {url}: {e}") from None
        removed.append(f"posixmq: {url}")
    elif scheme == "fifo":
        _rm_path(url, what, stat.S_ISFIFO, "FIFO")
        removed.append(f"fifo: {url}")
    elif scheme == "unix":
        if what.startswith("@"):
            raise Unsupported(f"rm {url}: an abstract socket has no file; it goes away with its listener")
        _rm_path(url, what, stat.S_ISSOCK, "socket")
        removed.append(f"unix: {url}")
    elif scheme == "file":
        _check_spool(url, what)
        _rm_path(url, what, stat.S_ISDIR, "spool directory")
        removed.append(f"file: {url}")
    else:
        raise Unsupported(f"rm {url}: {scheme}:// names nothing on this machine to remove")
    _forget(url, {r.split(":", 1)[0] for r in removed}, what)
    return removed


def _check_spool(url: str, path: str) -> None:
    """Only kipc spools are removed (a file:// URL may point at any directory)."""
    if os.path.dirname(path) == runtime_dir("spool"):
        return
    if ("file", path) in _records():
        return
    raise PermissionDenied(f"rm {url}: {path} is not a spool kipc created (no owner record); remove it yourself")


def _forget(url: str, kinds: set[str], what: Any) -> None:
    """Drop the owner records of what was removed (records may spell the URL differently, e.g. 0x keys)."""
    _owners.forget(url)
    for ident, rec in _records().items():
        if ident[1] == what and ident[0] in kinds:
            _owners.forget(rec.url)


def gc(dry_run: bool = False) -> list[ObjectInfo]:
    """Remove kipc-created objects whose owner is dead; returns them (``dry_run``: only list)."""
    me = os.geteuid()
    dead = [i for i in inventory() if i.kipc and i.alive is False and (i.uid is None or i.uid == me)]
    if dry_run:
        return dead
    done: list[ObjectInfo] = []
    for info in dead:
        kind = {"sysvshm": "shm", "sysvsem": "sem", "posixshm": "shm", "posixsem": "sem"}.get(info.kind)
        with contextlib.suppress(NotFound):
            remove(info.url, kind=kind)
            done.append(info)
    # records of dead owners whose object is gone (or was never local: tcp listeners, nats)
    present = {_ident(i) for i in inventory(all_users=True)}
    for ident, rec in _records().items():
        if not rec.alive and ident not in present:
            _owners.forget(rec.url)
    return done
