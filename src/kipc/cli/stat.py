"""``kipc stat URL``: one object in detail (every field ``kipc ls`` knows, and the owner record).

``--json`` prints one object (``sysv://K`` and ``posix://NAME`` may name a segment and a
semaphore: then a list). Exit 1 when nothing is there.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import admin
from ..errors import NotFound
from ._output import Output, human_size

__all__ = ["run"]


def _lines(d: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if v is None or v == [] or (k == "identity" and not v):
            continue
        if k == "size":
            v = f"{human_size(v)} ({v} bytes)" if v >= 1024 else human_size(v)
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        elif isinstance(v, dict):
            v = " ".join(f"{a}={b}" for a, b in v.items())
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        out.append((k, str(v)))
    return out


def run(args: argparse.Namespace, out: Output) -> int:
    found = admin.describe(args.url)
    if not found:
        raise NotFound(f"stat {args.url}: no such object")
    if out.json_mode:
        out.json(found[0].to_dict() if len(found) == 1 else [i.to_dict() for i in found])
        return 0
    for n, info in enumerate(found):
        if n:
            out.line("")
        pairs = _lines(info.to_dict())
        pad = max(len(k) for k, _ in pairs)
        for k, v in pairs:
            out.line(f"{k:<{pad}}  {v}")
    return 0
