"""``kipc gc [URL...] [--kind K] [--owner PID] [--dry-run]``: remove kipc-created objects whose owner process is dead.

An owner is dead when its pid is gone or runs a different process (the start
time recorded at creation differs). An object goes only if it is the very one
the dead owner created (the identity in its owner record matches: dev+inode,
SysV id + ctime); a record whose name now holds another object is dropped and
reported. Live owners' objects, other users' objects and objects kipc did not
create (no owner record) are never touched. Whatever gc cannot handle is
reported (``skipped``, with the reason) and the rest is still collected; the
exit status is 0 unless the command itself fails. ``URL...``, ``--kind`` and ``--owner``
(the dead creator's pid) limit what gc touches, for a uid shared by several services.
"""

from __future__ import annotations

import argparse

from .. import admin
from ._output import Output

__all__ = ["run"]


def run(args: argparse.Namespace, out: Output) -> int:
    from .ls import kinds_arg

    report = admin.gc(dry_run=args.dry_run, urls=args.urls, kinds=kinds_arg(args.kind), owner=args.owner)
    verb = "would remove" if args.dry_run else "removed"
    if out.json_mode:
        out.json({"dry_run": args.dry_run, **report.to_dict()})
        return 0
    for i in report.removed:
        out.line(f"{verb} {i.kind} {i.url} (owner pid {i.creator_pid} is dead)")
    for d in report.dropped:
        out.line(f"{'would drop' if args.dry_run else 'dropped'} the record of {d.kind} {d.url}: {d.reason}")
    for s in report.skipped:
        out.line(f"skipped {s.kind} {s.url}: {s.reason}")
    if not report.removed:
        out.note("nothing to collect: every kipc object has a live owner")
    return 0
