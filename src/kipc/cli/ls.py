"""``kipc ls``: every IPC object visible to this user (``--all``: every readable one).

Columns: kind, URL, owner, mode, size, depth (messages waiting), attached
processes and the pids the kernel names, creator pid and whether it is alive,
and whether kipc created it. ``--json`` prints a list of objects.
"""

from __future__ import annotations

import argparse

from .. import admin
from ._output import Output

__all__ = ["rows", "run"]

COLUMNS = ("kind", "url", "owner", "mode", "size", "depth", "attached", "pids", "creator", "alive", "kipc")


def kinds_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


def rows(infos: list[admin.ObjectInfo]) -> list[list[object]]:
    out: list[list[object]] = []
    for i in infos:
        alive = "" if i.alive is None else ("yes" if i.alive else "DEAD")
        out.append([i.kind, i.url, i.owner, "" if i.mode is None else f"{i.mode:04o}", i.size, i.depth, i.attached,
                    ",".join(map(str, i.pids)), i.creator_pid, alive, "yes" if i.kipc else ""])
    return out


def run(args: argparse.Namespace, out: Output) -> int:
    infos = admin.inventory(all_users=args.all, kinds=kinds_arg(args.kind))
    if out.json_mode:
        out.json([i.to_dict() for i in infos])
        return 0
    if infos:
        out.table(COLUMNS, rows(infos), right=("size", "depth", "attached", "creator"))
    else:
        out.note("no IPC objects" + ("" if args.all else " of yours (--all shows everyone's)"))
    for note in admin.blind_spots(kinds_arg(args.kind)):
        out.note(note)
    return 0
