"""Entry point of the ``kipc`` command (first version: ``tour``; the CLI issue grows it)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tour"]:
        from .tour import run

        return run(argv[1:])
    print("usage: kipc tour", file=sys.stderr)
    return 2
