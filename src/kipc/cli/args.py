"""Argument definitions of every ``kipc`` verb (the verbs themselves live one per module).

Usage errors (unknown verb, bad flag, bad number) exit 2 with one
``kipc: error:`` line, like every other error of the CLI.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ._output import error_line

__all__ = ["VERBS", "UsageError", "build_parser", "parse_args"]

VERBS = ("ls", "stat", "rm", "gc", "send", "recv", "bench", "tour", "top")


class UsageError(Exception):
    """Bad command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            (sys.stderr if status else sys.stdout).write(message)
        raise SystemExit(status)


def _positive_int(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _size(text: str) -> int:
    from .._naming import parse_size
    from ..errors import InvalidArgument

    try:
        v = parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1 byte")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kipc", description="Inter-process communication for Linux: see, clean, use and measure "
                     "every IPC object on this machine.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("ls", help="list IPC objects (SysV, POSIX, FIFOs, sockets, spools, rings)")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="only URLs matching this shell pattern ('ring://job*'), or containing it")
    p.add_argument("--all", "-a", action="store_true", help="every readable object, not only yours")
    p.add_argument("--kind", "-k", action="append", metavar="KIND",
                   help="only these kinds (repeatable or comma-separated): sysvmq, sysvshm, sysvsem, posixshm, "
                        "posixsem, posixmq, ring, fifo, unix, file, tcp, nats, and those of registered schemes")
    _common(p)

    p = sub.add_parser("stat", help="one object in detail")
    p.add_argument("url", metavar="URL")
    _common(p)

    p = sub.add_parser("rm", help="remove objects by URL (only your own)")
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--kind", choices=("shm", "sem"), help="for sysv:// and posix:// URLs naming both a segment and a "
                   "semaphore: remove only this one")
    _common(p)

    p = sub.add_parser("gc", help="remove kipc objects whose owner process is dead")
    p.add_argument("urls", nargs="*", metavar="URL", help="only these objects")
    p.add_argument("--dry-run", "-n", action="store_true", help="only show what would be removed")
    p.add_argument("--kind", "-k", action="append", metavar="KIND", help="only these kinds (as kipc ls --kind)")
    p.add_argument("--owner", type=_int, metavar="PID", help="only objects whose dead creator had this pid")
    _common(p)

    p = sub.add_parser("send", help="send a message (argument, or stdin) to a channel URL")
    p.add_argument("url", metavar="URL")
    p.add_argument("data", nargs="?", default="-", metavar="DATA",
                   help="the message; '-' or absent reads stdin (one trailing newline is stripped)")
    p.add_argument("--type", type=_int, help="SysV message type (> 0)")
    p.add_argument("--priority", type=_int, help="POSIX message queue priority")
    p.add_argument("--timeout", type=_seconds, help="seconds to wait while the channel is full or has no peer")
    p.add_argument("--lines", action="store_true", help="send each input line as one message")
    p.add_argument("--hex", action="store_true", help="DATA / stdin is hex text (whitespace ignored)")
    p.add_argument("--create", action="store_true",
                   help="create the object if missing; it stays after kipc exits (remove it with `kipc rm`)")
    p.add_argument("--request", action="store_true",
                   help="send DATA as a request to a kipc.Server (ring://, unix://, tcp://) or a nats:// responder "
                        "and print the reply (--timeout, default 10 s)")
    _common(p)

    p = sub.add_parser("recv", help="receive messages from a channel URL and print them")
    p.add_argument("url", metavar="URL")
    p.add_argument("-n", "--count", type=_positive_int, default=1, metavar="N", help="messages to receive (default 1)")
    p.add_argument("--follow", "-f", action="store_true", help="keep receiving until the channel closes or Ctrl-C")
    p.add_argument("--type", type=_int, help="SysV message type (0 any, >0 that type, <0 lowest type <= |N|)")
    p.add_argument("--timeout", type=_seconds, help="seconds to wait for each message")
    p.add_argument("--hex", action="store_true", help="print each message as hex")
    p.add_argument("--raw", action="store_true", help="write the bytes exactly, without a newline after each")
    p.add_argument("--create", action="store_true",
                   help="create the object if missing (fifo://, unix:// and tcp:// : be the listening side); "
                        "removed when kipc exits")
    p.add_argument("--subscribe", "-s", action="store_true",
                   help="subscribe to a topic (kipc.Topic: ring://, unix://, nats://) and print what it publishes")
    _common(p)

    p = sub.add_parser("bench", help="measure every mechanism between two real processes")
    p.add_argument("--mechanisms", "-m", nargs="+", metavar="M",
                   help="only these, space- or comma-separated (default: every registered one)")
    p.add_argument("--sizes", nargs="+", type=_size, metavar="SIZE", help="stream message sizes (e.g. 64 4KiB 1MiB)")
    p.add_argument("--peers", action="store_true", help="also measure multiprocessing (and faster-fifo/pyzmq)")
    p.add_argument("--quick", action="store_true", help="fewer iterations (a few seconds)")
    p.add_argument("--plot", metavar="FILE.png", help="write a plot (latency per mechanism, throughput vs size)")
    p.add_argument("--nats-url", metavar="URL", help="NATS server to use (default: start one if nats-server exists)")
    _common(p)

    p = sub.add_parser("tour", help="run the seed's IPC scenarios between real processes (make demo)")
    p.add_argument("--lang", choices=("en", "ko"), default="en", help="narration language")
    p.add_argument("--quick", action="store_true", help="fewer round trips")
    _common(p)

    p = sub.add_parser("top", help="live table of kipc channels and kernel queues (q or Ctrl-C quits)")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="only URLs matching this shell pattern, or containing this text (as kipc ls)")
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--iterations", type=_positive_int, metavar="N", help="stop after N refreshes")
    p.add_argument("--all", "-a", action="store_true", help="every readable object, not only yours")
    p.add_argument("--sort", choices=("url", "kind", "depth", "rate", "bytes", "queued", "size"), default="url",
                   help="row order (rate: msgs/s, bytes: bytes/s; numbers largest first)")
    _common(p)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a command line; a verb's options may come anywhere (``kipc send URL --create DATA``).

    ``parse_intermixed_args`` does not support subparsers, so the verb's own parser parses what follows it.
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and argv[0] in sub.choices:
        args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
        args.verb = argv[0]
        return args
    return parser.parse_args(argv)  # --help, --version, a missing or unknown verb: argparse says it


def _version() -> str:
    from .. import __version__

    return f"kipc {__version__}"


def usage_error(message: str) -> int:
    error_line(message)
    return 2
