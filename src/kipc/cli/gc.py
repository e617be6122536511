"""``kipc gc [--dry-run]``: remove kipc-created objects whose owner process is dead.

An owner is dead when its pid is gone or runs a different process (the start
time recorded at creation differs). Live owners' objects, other users'
objects and objects kipc did not create (no owner record) are never touched.
"""

from __future__ import annotations

import argparse

from .. import admin
from ._output import Output

__all__ = ["run"]


def run(args: argparse.Namespace, out: Output) -> int:
    infos = admin.gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    if out.json_mode:
        out.json({"dry_run": args.dry_run, "removed": [i.to_dict() for i in infos]})
        return 0
    for i in infos:
        out.line(f"{verb} {i.kind} {i.url} (owner pid {i.creator_pid} is dead)")
    if not infos:
        out.note("nothing to collect: every kipc object has a live owner")
    return 0
