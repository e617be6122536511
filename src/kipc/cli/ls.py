"""``kipc ls``: every IPC object visible to this user (``--all``: every readable one).

Columns: kind, URL, owner, mode, size, depth (messages waiting), attached
processes and the pids the kernel names, creator pid and whether it is alive,
and whether kipc created it. ``--json`` prints a list of objects.
"""

from __future__ import annotations

import argparse

from .. import admin
from .._platform import mqueue_mount
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
    if mqueue_mount() is None and (not args.kind or "posixmq" in (kinds_arg(args.kind) or [])):
        out.note(admin.MQUEUE_HINT)
    return 0
