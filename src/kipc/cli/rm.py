"""``kipc rm URL...``: remove objects (only this user's; a clear error for others').

Every URL is attempted; the exit status is 1 if any failed (each failure is
one ``kipc: error:`` line), 2 if any URL was malformed.
"""

from __future__ import annotations

import argparse

from .. import admin
from ..errors import InvalidArgument, KipcError
from ._output import Output, error_line

__all__ = ["run"]


def run(args: argparse.Namespace, out: Output) -> int:
    status = 0
    removed: list[str] = []
    errors: list[dict[str, str]] = []
    for url in args.urls:
        try:
            removed += admin.remove(url, kind=args.kind)
        except KipcError as e:
            status = max(status, 2 if isinstance(e, InvalidArgument) else 1)
            errors.append({"url": url, "error": str(e)})
            if args.debug:
                import traceback

                traceback.print_exception(e)
            if not out.json_mode:
                error_line(str(e))
    if out.json_mode:
        out.json({"removed": removed, "errors": errors})
    else:
        for r in removed:
            out.line(f"removed {r}")
    return status
