"""``kipc ls [PATTERN] [--kind K]``: every IPC object visible to this user (``--all``: every readable one).

Columns: kind, URL, owner, mode, size, depth (messages waiting), attached
processes and the pids the kernel names (for TCP listeners: the processes
holding the socket, and their command), creator pid and whether it is alive,
and whether kipc created it. Sizes are human (``4.0 MiB``; ``--json`` gives bytes).
The table fits the terminal (or ``COLUMNS``): columns are dropped by priority
(command, kipc, pids, attached, mode, creator, owner, depth, alive go first), URLs are never cut.
``PATTERN`` is a shell pattern on the URL (``'ring://job*'``) or, without
wildcards, a substring. Objects kipc created are listed under the URL their
creator gave (``sysvmq://5301``, not only ``0x14b5``). A note about what cannot
be listed here (the mqueue filesystem) is printed once per boot, not on every call.
``--json`` prints a list of objects.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os

from .. import admin
from .._naming import runtime_dir
from ._output import Output, human_size

__all__ = ["matches", "notes_once", "rows", "run", "spellings"]

COLUMNS = ("kind", "url", "owner", "mode", "size", "depth", "attached", "pids", "command", "creator", "alive", "kipc")
#: the order in which columns go when the table is too wide (kind and url always stay)
DROP = ("command", "kipc", "pids", "attached", "mode", "creator", "owner", "depth", "alive", "size")


def kinds_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


def spellings(url: str) -> list[str]:
    """``url`` and, for a SysV key in hex, the decimal spelling (``sysvmq://0x14b5`` is ``sysvmq://5301``)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("sysv") and rest.startswith("0x"):
        try:
            return [url, f"{scheme}://{int(rest, 16)}"]
        except ValueError:
            pass
    return [url]


def matches(url: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatchcase(u, pattern) for u in spellings(url))
    return any(pattern in u for u in spellings(url))


def rows(infos: list[admin.ObjectInfo]) -> list[list[object]]:
    out: list[list[object]] = []
    for i in infos:
        alive = "" if i.alive is None else ("yes" if i.alive else "DEAD")
        out.append([i.kind, i.url, i.owner, "" if i.mode is None else f"{i.mode:04o}", human_size(i.size), i.depth,
                    i.attached, ",".join(map(str, i.pids)), i.command, i.creator_pid, alive, "yes" if i.kipc else ""])
    return out


def notes_once(notes: list[str]) -> list[str]:
    """The notes not yet shown to this user since boot (a stamp per note in kipc's runtime dir)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    fresh = []
    for note in notes:
        digest = hashlib.sha256(f"{boot}\0{note}".encode()).hexdigest()[:16]
        try:
            stamp = os.path.join(runtime_dir(), f"note-{digest}")
            fd = os.open(stamp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except FileExistsError:
            continue
        except OSError:
            pass  # cannot remember: show it
        fresh.append(note)
    return fresh


def run(args: argparse.Namespace, out: Output) -> int:
    kinds = kinds_arg(args.kind)
    infos = [i for i in admin.inventory(all_users=args.all, kinds=kinds) if matches(i.url, args.pattern)]
    if out.json_mode:
        out.json([i.to_dict() for i in infos])
        return 0
    if infos:
        out.table(COLUMNS, rows(infos), right=("size", "depth", "attached", "creator"), drop=DROP)
    else:
        what = f" matching {args.pattern!r}" if args.pattern else ""
        out.note(f"no IPC objects{what}" + ("" if args.all else " of yours (--all shows everyone's)"))
    notes = admin.blind_spots(kinds)
    # asked for explicitly (--kind): always say what is missing; else once per boot
    for note in notes if kinds else notes_once(notes):
        out.note(note)
    return 0
