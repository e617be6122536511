"""Output helpers shared by the verbs: tables, JSON, notes, errors, progress.

* A terminal gets rich tables, colours and progress bars (rich is imported
  only here and only when needed, so ``kipc send`` stays fast); a pipe or file
  gets plain aligned text; ``--json`` gets JSON on stdout and nothing else.
* Notes and warnings go to stderr, so stdout stays parseable.
* Errors are one line: ``kipc: error: <message>``.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Output", "error_line"]


def error_line(message: str, stream: TextIO | None = None) -> None:
    print(f"kipc: error: {' '.join(str(message).split())}", file=stream or sys.stderr, flush=True)


def _use_rich(stream: TextIO) -> bool:
    if os.environ.get("KIPC_PLAIN"):
        return False
    try:
        if not stream.isatty():
            return False
        import rich  # noqa: F401
    except (ImportError, ValueError, AttributeError):
        return False
    return True


class Output:
    """Where a verb writes: ``table``, ``json``, ``line``, ``note``, ``warn``, ``progress``."""

    def __init__(self, *, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.rich = _use_rich(self.out)
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False)
        return self._console

    def json(self, obj: Any) -> None:
        self.out.write(json.dumps(obj, indent=None if isinstance(obj, dict) else 1, default=str) + "\n")
        self.out.flush()

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.rich and style:
            self.console.print(text, style=style, markup=False)
        elif self.rich:
            self.console.print(text, markup=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def heading(self, text: str) -> None:
        self.line(text, style="bold cyan")

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        print(f"kipc: warning: {text}", file=self.err, flush=True)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
              right: Sequence[str] = ()) -> None:
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        if self.rich:
            from rich.table import Table

            t = Table(title=title, header_style="bold", title_justify="left")
            for c in columns:
                t.add_column(c, justify="right" if c in right else "left", overflow="fold")
            for row in cells:
                t.add_row(*row)
            self.console.print(t)
            return
        if title:
            self.out.write(title + "\n")
        self.out.write(plain_table(columns, cells, right=right))
        self.out.flush()

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Any]:
        """A progress bar on a terminal (stderr), a silent counter otherwise; yields ``advance(label)``."""
        if self.json_mode or not _use_rich(self.err):
            yield lambda label="": None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=Console(file=self.err), transient=True) as prog:
            task = prog.add_task(description, total=total)

            def advance(label: str = "") -> None:
                prog.update(task, advance=1, description=f"{description} {label}".strip())

            yield advance


def width(text: str) -> int:
    """Terminal columns of ``text`` (East Asian wide characters, e.g. Korean, take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()) -> str:
    widths = [max([width(c), *(width(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def fmt(row: Sequence[str]) -> str:
        parts = [" " * (w - width(v)) + v if c in right else v + " " * (w - width(v))
                 for v, w, c in zip(row, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(columns), *(fmt(r) for r in rows)]) + "\n"
