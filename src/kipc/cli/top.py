"""``kipc top``: a live, refreshing table of kipc channels and kernel queues.

* Rows: every object ``kipc ls`` shows (this user's; ``--all`` everyone's)
  with depth, messages/s and bytes/s. A rate comes from a counter where the
  object has one (rings: messages and framed bytes ever written, so bytes/s
  includes the ring's 16-byte record headers and 16-byte padding); for other queues it is
  the change of depth (of queued bytes) per second, marked ``~`` (a lower
  bound). ``queued`` is the bytes waiting now (SysV ``cbytes``, POSIX
  ``QSIZE`` when the mqueue fs is mounted, a ring's used bytes). Rates are
  shown from the second refresh on.
* ``--sort url|kind|depth|rate|bytes|queued|size`` (numbers: largest first);
  ``kipc top PATTERN`` shows only the URLs ``kipc ls PATTERN`` would.
* Fits the terminal (or ``COLUMNS``) like ``kipc ls``: URLs are never cut,
  columns go by priority (kind, url, msgs/s and bytes/s always stay), rates
  and sizes are short (``1.2k``, ``3.4 MiB/s``), so 80 columns are enough.
* Quit with ``q`` or Ctrl-C (exit 0). On a terminal the keyboard is read in
  cbreak mode and restored on exit; rich redraws in place. Not on a terminal
  (or ``--json``), each refresh is printed (plain table / one JSON object per
  line: every ``ls --json`` field plus ``msgs_per_s``/``bytes_per_s`` as
  numbers, ``estimated`` when they are lower bounds, and ``rate``/``bytes_rate``
  as shown); ``--iterations N`` stops after N refreshes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from .. import admin
from ._output import Output, fit_columns, human_size, plain_table, terminal_width
from .ls import matches

__all__ = ["SORT_KEYS", "Sampler", "human_rate", "run"]

COLUMNS = ("kind", "url", "owner", "depth", "msgs/s", "bytes/s", "queued", "size", "attached", "creator", "alive")
#: what goes first when the table is too wide (kind, url, msgs/s and bytes/s always stay)
DROP = ("attached", "creator", "owner", "alive", "size", "queued", "depth")
RIGHT = ("depth", "msgs/s", "bytes/s", "queued", "size", "attached", "creator")
#: --sort: key -> the row field it orders by (numbers largest first)
SORT_KEYS = {"url": "url", "kind": "kind", "depth": "depth", "rate": "msgs_per_s", "bytes": "bytes_per_s",
             "queued": "queued", "size": "size"}


def human_rate(value: float | None, *, unit: str = "", estimated: bool = False) -> str:
    """A rate in few characters: ``950``, ``12.3k``, ``4.5M`` (msgs/s); ``512 B/s``, ``3.4 MiB/s`` (bytes)."""
    if value is None:
        return ""
    mark = "~" if estimated else ""
    if unit == "B":
        return f"{mark}{human_size(round(value))}/s"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{mark}{value / limit:.1f}{suffix}"
    return f"{mark}{value:.0f}"


def _sort(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    field = SORT_KEYS[key]
    if key in ("url", "kind"):
        return sorted(rows, key=lambda r: (str(r[field]), str(r["url"])))
    return sorted(rows, key=lambda r: (-(r[field] or 0), str(r["url"])))


def _fit(cells: list[list[str]], limit: int | None, rich: bool) -> tuple[list[str], list[list[str]]]:
    keep = fit_columns(COLUMNS, cells, limit, drop=DROP, sep=3 if rich else 2, edge=4 if rich else 0)
    return [COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in cells]


_Seen = tuple[float, int | None, int | None, int | None, int | None]  # time, msgs, depth, bytes, queued


class Sampler:
    """Successive inventories turned into rows with rates."""

    def __init__(self, all_users: bool, pattern: str | None = None) -> None:
        self.all_users = all_users
        self.pattern = pattern
        self._prev: dict[tuple[str, str], _Seen] = {}

    @staticmethod
    def _rate(now: int | None, before: int | None, level: int | None, level_before: int | None,
              dt: float) -> tuple[float | None, bool]:
        """(per second, estimated): from a counter when there is one, else the change of a level."""
        if now is not None and before is not None:
            return max(0, now - before) / dt, False
        if level is not None and level_before is not None:
            return abs(level - level_before) / dt, True
        return None, False

    def sample(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        seen: dict[tuple[str, str], _Seen] = {}
        for i in admin.inventory(all_users=self.all_users):
            if not matches(i.url, self.pattern):
                continue
            key = (i.kind, i.url)
            seen[key] = (now, i.total, i.depth, i.bytes_total, i.queued)
            msgs: float | None = None
            nbytes: float | None = None
            est_m = est_b = False
            prev = self._prev.get(key)
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                msgs, est_m = self._rate(i.total, prev[1], i.depth, prev[2], dt)
                nbytes, est_b = self._rate(i.bytes_total, prev[3], i.queued, prev[4], dt)
            d = i.to_dict()
            d["msgs_per_s"], d["bytes_per_s"], d["estimated"] = msgs, nbytes, est_m or est_b
            d["rate"] = human_rate(msgs, estimated=est_m)
            d["bytes_rate"] = human_rate(nbytes, unit="B", estimated=est_b)
            rows.append(d)
        self._prev = seen
        return rows


def _cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    def s(v: Any) -> str:
        return "" if v is None else str(v)

    return [[r["kind"], r["url"], r["owner"], s(r["depth"]), r["rate"], r["bytes_rate"], human_size(r["queued"]),
             human_size(r["size"]), s(r["attached"]), s(r["creator_pid"]),
             "" if r["alive"] is None else ("yes" if r["alive"] else "DEAD")] for r in rows]


@contextlib.contextmanager
def _keyboard() -> Iterator[int | None]:
    """stdin in cbreak mode (keys without Enter) when it is a terminal; restored on exit."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdin (closed, or replaced by a test harness)
        fd = -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _quit_pressed(fd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key; True on q/Q (or EOF on stdin)."""
    if fd is None:
        time.sleep(timeout)
        return False
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([fd], [], [], left)
        if r:
            data = os.read(fd, 64)
            if not data or b"q" in data.lower():
                return True


def _render(rows: list[dict[str, Any]], n: int, interval: float, limit: int | None) -> Any:
    from rich.table import Table

    columns, cells = _fit(_cells(rows), limit, True)
    t = Table(title=f"kipc top: {len(rows)} objects, every {interval:g} s (#{n}), q quits",
              title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c in RIGHT else "left", no_wrap=True, overflow="ignore")
    for row in cells:
        t.add_row(*row)
    return t


def run(args: argparse.Namespace, out: Output) -> int:
    sampler = Sampler(args.all, getattr(args, "pattern", None))
    interval = max(0.05, args.interval)
    limit = terminal_width(out.out)
    sort = getattr(args, "sort", "url")
    n = 0
    with _keyboard() as kb:
        try:
            if out.rich and not out.json_mode:
                from rich.live import Live

                with Live(_render(_sort(sampler.sample(), sort), 1, interval, limit), console=out.console,
                          auto_refresh=False,
                          transient=False) as live:
                    n = 1
                    while not (args.iterations and n >= args.iterations):
                        if _quit_pressed(kb, interval):
                            break
                        n += 1
                        live.update(_render(_sort(sampler.sample(), sort), n, interval, limit), refresh=True)
                return 0
            while True:
                rows = _sort(sampler.sample(), sort)
                n += 1
                if out.json_mode:
                    out.json({"refresh": n, "time": time.time(), "objects": rows})
                else:
                    out.out.write(f"-- kipc top #{n}: {len(rows)} objects --\n")
                    columns, cells = _fit(_cells(rows), limit, False)
                    out.out.write(plain_table(columns, cells, right=RIGHT, limit=limit))
                    out.out.flush()
                if args.iterations and n >= args.iterations:
                    return 0
                if _quit_pressed(kb, interval):
                    return 0
        except KeyboardInterrupt:
            return 0
    return 0
