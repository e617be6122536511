"""Every IPC object on the machine: list (``inventory``), remove (``remove``), collect (``gc``).

Contract card:

* This module only aggregates. What a kind of object is — how a URL names it,
  where the machine lists it, how to describe and remove one — is defined
  beside its mechanism as a :class:`kipc._kinds.Kind` and registered with its
  scheme (:mod:`kipc.registry`). A scheme registered with ``kind=`` shows up
  in ``kipc ls / rm / gc`` like the built-in ones.
* Sources: each kind's scan (``/proc/sysvipc``, ``/dev/shm``, the mqueue fs
  when mounted; else only the POSIX queues kipc's owner records name, see
  :func:`blind_spots`; listening TCP sockets from sock_diag / ``/proc/net/tcp{,6}``), plus
  kipc's owner records for kinds with no machine-wide list (FIFOs, sockets,
  spools).
* Every object gets the URL kipc uses for it (``sysvmq://0x4d2``, ``ring://x``,
  ``posix://x``...). SysV objects with key 0 (``IPC_PRIVATE``) get
  ``sysvmq://id:N`` (``sysv://id:N``), which :func:`remove` also accepts.
* ``kipc`` is true when an owner record names the object *and* the record's
  identity (dev+inode, or SysV id + ctime) is the object's: a name reused by
  someone else is not kipc's. ``alive`` is the recorded creator's liveness
  (pid + start time, so a reused pid does not count), ``None`` when unknown.
* :func:`remove` refuses objects owned by another user with a
  :class:`~kipc.PermissionDenied` naming both users, even as root (the kernel
  would let root remove them; an operator must do that with ``ipcrm``/``rm``).
  A spool loses only what kipc put there (messages, temp files, ``claimed/``);
  its directory goes only if that leaves it empty.
* :func:`gc` removes an object only when a record of a dead owner names it
  and the identities match exactly; a record whose name now holds another
  object (or nothing) is dropped; other users' objects and unrecorded ones are
  never touched. An entry it cannot handle is skipped and reported
  (:class:`GcReport`), never an abort.
* Reading never creates, attaches to or changes an object, except that the
  depth of a POSIX queue and of a ring is read by opening it for an instant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import _owners, registry
from ._kinds import Kind, ObjectInfo, RemoteKind, refuse_foreign
from ._naming import parse_url
from .errors import InvalidArgument, KipcError, NotFound, Unsupported

__all__ = ["GcReport", "GcSkip", "ObjectInfo", "blind_spots", "describe", "gc", "inventory", "kinds", "locate",
           "remove"]


def kinds() -> list[Kind]:
    """Every registered object kind (what ``kipc ls --kind`` accepts)."""
    return registry.kinds()


def blind_spots(kinds: Iterable[str] | None = None) -> list[str]:
    """What ``inventory`` cannot see here, per kind (e.g. POSIX queues without the mqueue fs), and the fix."""
    wanted = set(kinds) if kinds else None
    return [note for k in registry.kinds() if wanted is None or k.name in wanted if (note := k.blind_spot())]


def _kinds_of(scheme: str, url: str) -> list[Kind]:
    found = registry.kinds_of(scheme)
    if found:
        return found
    if scheme in registry.schemes():
        raise Unsupported(f"rm {url}: {scheme}:// names nothing kipc can list or remove (its scheme has no kind)")
    known = ", ".join(sorted({*registry.schemes(), *(k.scheme for k in kinds())}))
    raise InvalidArgument(f"unknown scheme {scheme!r} in {url!r}; known: {known}")


def locate(url: str) -> tuple[str, Any]:
    """``(scheme, target)`` of an object URL: key, ``("id", N)``, name or absolute path.

    Bad URLs raise :class:`~kipc.InvalidArgument` before anything is touched.
    """
    p = parse_url(url)
    return p.scheme, _kinds_of(p.scheme, url)[0].locate(p)


# --------------------------------------------------------------------------- owner records
@dataclass
class _Record:
    rec: _owners.OwnerRecord
    kind: Kind | None
    target: Any = None
    error: str | None = None  # why the record cannot be read (unknown kind, bad URL)


def _records() -> list[_Record]:
    by_record_kind = {rk: k for k in kinds() for rk in k.records}
    out = []
    for rec in _owners.records():
        kind = by_record_kind.get(rec.kind)
        if kind is None:
            out.append(_Record(rec, None, error=f"no registered kind writes records of kind {rec.kind!r}"))
            continue
        try:
            out.append(_Record(rec, kind, kind.target_of_record(rec)))
        except (KipcError, TypeError, ValueError, OSError) as e:
            out.append(_Record(rec, kind, error=f"unreadable record URL ({e})"))
    return out


def _recorded_identity(rec: _owners.OwnerRecord) -> dict[str, int] | None:
    ident = rec.extra.get("identity")
    return ident if isinstance(ident, dict) else None


def _matches(rec: _owners.OwnerRecord, info: ObjectInfo) -> bool:
    """Is ``info`` the very object ``rec`` recorded? (Records of older kipc versions carry no identity.)"""
    ident = _recorded_identity(rec)
    return ident is None or ident == info.identity


def _mark(info: ObjectInfo, rec: _owners.OwnerRecord, kind: Kind | None = None) -> ObjectInfo:
    info.kipc, info.creator_pid, info.alive = True, rec.pid, rec.alive
    if rec.url and "?" not in rec.url:
        # as its creator spelled it (sysvmq://5301, fifo://NAME), not the kernel's name
        info.url = kind.user_url(rec.url) if kind is not None else rec.url
    return info


# --------------------------------------------------------------------------- listing
def inventory(all_users: bool = False, kinds: Iterable[str] | None = None) -> list[ObjectInfo]:
    """Every IPC object visible to this user (``all_users=True``: every readable one)."""
    every = registry.kinds()
    names = [k.name for k in every]
    wanted = set(kinds) if kinds else set(names)
    unknown = wanted - set(names)
    if unknown:
        raise InvalidArgument(f"unknown kind(s) {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    recs = _records()
    out: list[ObjectInfo] = []
    for kind in every:
        if kind.name not in wanted:
            continue
        mine = [r for r in recs if r.kind is kind and r.error is None]
        by_target = {r.target: r.rec for r in mine}
        seen = set()
        for info in kind.scan():
            seen.add(info.target)
            rec = by_target.get(info.target)
            out.append(_mark(info, rec, kind) if rec is not None and _matches(rec, info) else info)
        if kind.lists_all:
            continue  # absent from the scan means gone
        for r in mine:
            if r.target in seen:
                continue
            try:
                found = kind.stat(r.target)
            except KipcError:
                continue
            if found is not None and found.detail is None and _matches(r.rec, found):
                out.append(_mark(found, r.rec, kind))  # named as its creator spelled it (fifo://NAME)
    me = os.geteuid()
    return [i for i in out if all_users or i.uid is None or i.uid == me]


def describe(url: str) -> list[ObjectInfo]:
    """The object(s) ``url`` names, in detail (marked with their owner record); [] when none is there."""
    p = parse_url(url)
    candidates = _kinds_of(p.scheme, url)
    target = candidates[0].locate(p)
    recs = [r for r in _records() if r.error is None and r.kind in candidates and r.target == target]
    out = []
    for k in candidates:
        if isinstance(k, RemoteKind):
            continue
        info = k.stat(target)
        if info is None:
            continue
        for r in recs:
            if r.kind is k and _matches(r.rec, info):
                _mark(info, r.rec, k)
        out.append(info)
    return out


# --------------------------------------------------------------------------- removal
def remove(url: str, *, kind: str | None = None) -> list[str]:
    """Remove the object(s) ``url`` names; returns what was removed (``kind: url``).

    ``sysv://K`` and ``posix://NAME`` may name both a segment and a semaphore:
    both are removed unless ``kind`` (``"shm"``/``"sem"``) picks one. Refuses
    other users' objects (:class:`~kipc.PermissionDenied`); a missing object is
    :class:`~kipc.NotFound`; schemes with nothing named locally are :class:`~kipc.Unsupported`.
    """
    p = parse_url(url)
    if kind not in (None, "shm", "sem"):
        raise InvalidArgument(f"rm {url}: kind must be 'shm' or 'sem', not {kind!r}")
    candidates = [k for k in _kinds_of(p.scheme, url) if kind is None or k.part in ("", kind)]
    target = candidates[0].locate(p)
    if all(isinstance(k, RemoteKind) for k in candidates):
        raise Unsupported(f"rm {url}: {p.scheme}:// names nothing on this machine to remove")
    found = [(k, info) for k in candidates if (info := k.stat(target)) is not None]
    if not found:
        raise NotFound(f"rm {url}: " + "; ".join(k.missing(target) for k in candidates))
    for _, info in found:  # check every part before removing any
        refuse_foreign(url, info.uid, info.cuid)
    removed = []
    for k, info in found:
        k.remove(url, info)
        removed.append(f"{k.name}: {url}")
    _forget(url, [k for k, _ in found], target)
    return removed


def _forget(url: str, removed: list[Kind], target: Any) -> None:
    """Drop the owner records of what was removed (records may spell the URL differently, e.g. 0x keys)."""
    _owners.forget(url)
    for r in _records():
        if r.kind in removed and r.error is None and r.target == target:
            _owners.forget(r.rec.url)


# --------------------------------------------------------------------------- collection
@dataclass
class GcSkip:
    """An entry ``gc`` left alone, and why."""

    url: str
    kind: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"url": self.url, "kind": self.kind, "reason": self.reason}


@dataclass
class GcReport:
    """What ``gc`` did: ``removed`` objects, ``dropped`` stale records, ``skipped`` entries (with reasons)."""

    removed: list[ObjectInfo] = field(default_factory=list)
    dropped: list[GcSkip] = field(default_factory=list)  # records whose object is gone or was replaced
    skipped: list[GcSkip] = field(default_factory=list)  # what gc could not (or must not) remove

    def to_dict(self) -> dict[str, Any]:
        return {"removed": [i.to_dict() for i in self.removed], "dropped": [d.to_dict() for d in self.dropped],
                "skipped": [s.to_dict() for s in self.skipped]}


def gc(dry_run: bool = False, *, urls: Iterable[str] = (), kinds: Iterable[str] | None = None,
       owner: int | None = None) -> GcReport:
    """Remove kipc-created objects whose owner is dead (``dry_run``: only report what would go).

    ``urls`` / ``kinds`` / ``owner`` (the dead creator's pid) limit what is touched (a shared uid).
    """
    report = GcReport()
    me = os.geteuid()
    wanted_kinds = set(kinds) if kinds else None
    if wanted_kinds:
        known = {k.name for k in registry.kinds()}
        if wanted_kinds - known:
            raise InvalidArgument(f"unknown kind(s) {', '.join(sorted(wanted_kinds - known))}; "
                                  f"known: {', '.join(sorted(known))}")
    targets = [locate(u) for u in urls]
    for r in _records():
        rec = r.rec
        if rec.alive:
            continue
        if owner is not None and rec.pid != owner:
            continue
        if wanted_kinds is not None and (r.kind is None or r.kind.name not in wanted_kinds):
            continue
        if targets and (r.kind is None or (r.kind.scheme, r.target) not in targets):
            continue
        name = r.kind.name if r.kind is not None else rec.kind
        if r.kind is None or r.error is not None:
            report.skipped.append(GcSkip(rec.url, name, r.error or "unknown kind"))
            continue
        try:
            info = r.kind.stat(r.target)
        except (KipcError, OSError) as e:
            report.skipped.append(GcSkip(rec.url, name, f"cannot inspect it: {e}"))
            continue
        if info is None:
            report.dropped.append(GcSkip(rec.url, name, "the object is gone; record dropped"))
            if not dry_run:
                _owners.forget(rec.url)
            continue
        recorded = _recorded_identity(rec)
        if recorded is None:
            report.skipped.append(GcSkip(rec.url, name, "the record carries no identity (written by an older "
                                         "kipc): not removed; `kipc rm URL` removes it"))
            continue
        if info.identity != recorded:
            what = info.detail or "another object"
            report.dropped.append(GcSkip(rec.url, name, f"the name now holds {what} (identity {info.identity}, "
                                         f"recorded {recorded}); left alone, record dropped"))
            if not dry_run:
                _owners.forget(rec.url)
            continue
        _mark(info, rec, r.kind)
        if not r.kind.lists_all:
            info.url = r.kind.user_url(rec.url)  # found through its record: name it as its creator did
        if info.uid is not None and info.uid != me:
            report.skipped.append(GcSkip(rec.url, name, f"owned by uid {info.uid}, not by you ({me})"))
            continue
        if dry_run:
            report.removed.append(info)
            continue
        try:
            r.kind.remove(info.url, info)
        except NotFound:
            _owners.forget(rec.url)
            report.dropped.append(GcSkip(rec.url, name, "the object went away meanwhile; record dropped"))
            continue
        except (KipcError, OSError) as e:
            report.skipped.append(GcSkip(rec.url, name, str(e)))
            continue
        _owners.forget(rec.url)
        report.removed.append(info)
    return report
