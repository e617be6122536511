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
import shutil
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Output", "error_line", "fit_columns", "human_size", "plain_table", "terminal_width"]


def human_size(n: int | None) -> str:
    """``4198400`` -> ``4.0 MiB``; below 1 KiB in bytes (``512 B``); None -> ``""``."""
    if n is None:
        return ""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def terminal_width(stream: TextIO) -> int | None:
    """The width to fit: ``COLUMNS`` when set, else the terminal's; None (no limit) for a pipe or file."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        if stream.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


def fit_columns(columns: Sequence[str], rows: Sequence[Sequence[str]], limit: int | None, *,
                drop: Sequence[str] = (), sep: int = 2, edge: int = 0) -> list[int]:
    """Indices of the columns to show so a line fits ``limit``: columns in ``drop`` go first, in order.

    Cells are never cut (a URL is shown whole); a line is ``sum(widths) + sep * (n - 1) + edge``.
    """
    keep = list(range(len(columns)))
    if limit is None:
        return keep
    widths = column_widths(columns, rows, limit)

    def total() -> int:
        return sum(widths[i] for i in keep) + sep * (len(keep) - 1) + edge

    for name in drop:
        if total() <= limit:
            break
        if name in columns:
            keep.remove(columns.index(name))
    return keep


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
              right: Sequence[str] = (), drop: Sequence[str] = ()) -> None:
        """A table that fits the terminal (or ``COLUMNS``): the columns in ``drop`` go first, in that order,
        and no cell is ever broken (URLs stay whole)."""
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        limit = terminal_width(self.out)
        n = len(columns)
        keep = fit_columns(columns, cells, limit, drop=drop, sep=3 if self.rich else 2, edge=4 if self.rich else 0)
        if len(keep) < n:
            columns = [columns[i] for i in keep]
            cells = [[row[i] for i in keep] for row in cells]
        if self.rich:
            from rich.table import Table

            t = Table(title=title, header_style="bold", title_justify="left")
            for c in columns:
                t.add_column(c, justify="right" if c in right else "left", no_wrap=True, overflow="ignore")
            for row in cells:
                t.add_row(*row)
            self.console.print(t, width=max(limit or 0, self.console.width), crop=False)
            return
        if title:
            self.out.write(title + "\n")
        self.out.write(plain_table(columns, cells, right=right, limit=limit))
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


def column_widths(columns: Sequence[str], rows: Sequence[Sequence[str]], limit: int | None) -> list[int]:
    """Each column's width: its widest cell, except cells that leave no room for any other column.

    Such an outlier (another user's 80-character object name on a shared host) overflows its own
    row instead of widening every row and pushing every other column off the table.
    """
    cap = None if limit is None else max(limit - 16, 1)
    return [max([width(c), *(w for r in rows if (w := width(r[i])) <= (cap or w))])
            for i, c in enumerate(columns)]


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = (),
                limit: int | None = None) -> str:
    widths = column_widths(columns, rows, limit)

    def fmt(row: Sequence[str]) -> str:
        parts = [" " * (w - width(v)) + v if c in right else v + " " * (w - width(v))
                 for v, w, c in zip(row, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(columns), *(fmt(r) for r in rows)]) + "\n"
