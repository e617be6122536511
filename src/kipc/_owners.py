"""Owner records: who created which kipc object, so dead owners' leftovers can be found.

Every named object kipc creates is recorded as a small JSON file in
``runtime_dir("objects")``: the URL, the kind, the creator's pid and the pid's
start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot). A
reused pid has a different start time, so :func:`owner_alive` is not fooled.

The creator writes the record right after creating the object and deletes it
right after removing the object. ``extra["identity"]`` holds the object's
identity (:mod:`kipc._objects`: dev+inode+birth time, or SysV id+ctime), so a
record names one object, not a name: ``kipc gc`` removes an object only when
a dead owner's record and the object's identity match, and drops records whose
name now holds something else. Objects without a record (not kipc's, or
created with ``persist=True``) are never collected.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ._naming import runtime_dir

__all__ = ["OwnerRecord", "forget", "lookup", "owner_alive", "process_start_time", "record", "records"]


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and ')' : split after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] == b"Z":  # a zombie has exited; it owns nothing any more
        return None
    return int(rest[19])


_SELF_START: tuple[int, int | None] | None = None


def self_owner() -> tuple[int, int | None]:
    global _SELF_START
    pid = os.getpid()
    if _SELF_START is None or _SELF_START[0] != pid:  # re-read after fork
        _SELF_START = (pid, process_start_time(pid))
    return _SELF_START


def owner_alive(pid: int, start_time: int | None) -> bool:
    """True if the process ``pid`` that started at ``start_time`` still runs."""
    now = process_start_time(pid)
    if now is None:
        return False
    return start_time is None or now == start_time


@dataclass
class OwnerRecord:
    url: str
    kind: str
    pid: int
    start_time: int | None
    created: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return owner_alive(self.pid, self.start_time)


def _path(url: str) -> str:
    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    return os.path.join(runtime_dir("objects"), digest + ".json")


def record(url: str, kind: str, **extra: Any) -> OwnerRecord:
    """Record this process as the creator of ``url`` (atomic write, 0600)."""
    pid, start = self_owner()
    rec = OwnerRecord(url=url, kind=kind, pid=pid, start_time=start, created=time.time(), extra=extra)
    path = _path(url)
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(asdict(rec)).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return rec


def forget(url: str) -> None:
    """Drop the record of ``url`` (the object was removed, or ownership was released)."""
    try:
        os.unlink(_path(url))
    except FileNotFoundError:
        pass


def lookup(url: str) -> OwnerRecord | None:
    try:
        with open(_path(url), "rb") as f:
            return OwnerRecord(**json.loads(f.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def records() -> Iterator[OwnerRecord]:
    """Every owner record of this user (unreadable or half-written ones are skipped)."""
    d = runtime_dir("objects")
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, name), "rb") as f:
                yield OwnerRecord(**json.loads(f.read()))
        except (OSError, ValueError, TypeError):
            continue
