"""``kipc recv URL [-n N] [--follow]``: receive messages from any channel scheme and print them.

* Output: each message's bytes followed by a newline, written to the binary
  stdout (so UTF-8 and binary pass unchanged); ``--raw``: the bytes only;
  ``--hex``: one hex line per message; ``--json``: one JSON object per line
  (``{"url", "size", "text" (UTF-8 or null), "hex"}``, plus ``"type"`` from a SysV queue
  and ``"priority"`` from a POSIX queue).
* ``-n N`` messages (default 1); ``--follow`` until the channel closes or
  Ctrl-C. ``--timeout S`` bounds the wait for each message (exit 1 on expiry;
  with ``--follow``, after at least one message, expiry ends quietly: exit 0).
* ``--create``: create the object if missing, and remove it when kipc exits;
  for ``unix://``/``tcp://`` this means listen and accept a sender (with
  ``--follow``, one sender after another). SIGTERM and SIGHUP clean up like Ctrl-C.
* ``--subscribe``: subscribe to a topic (``kipc.Topic(URL)``, any topic scheme:
  ``ring://``, ``unix://``, ``nats://``) and print what it publishes from now on;
  the end of the topic (its publisher closed) ends the output. Not with ``--create``
  or ``--type`` (the publisher creates a topic; topics have no message types).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from .. import registry
from .._base import Deadline
from .._naming import parse_url
from ..errors import ChannelClosed, DeadlineExceeded, InvalidArgument
from ._output import Output
from ._signals import exit_cleanly_on_signals

__all__ = ["messages", "received", "run"]


def _recv(ch: Any, timeout: float | None, knobs: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """One message and what the mechanism tells about it (SysV type, POSIX priority)."""
    if ch.scheme == "sysvmq":
        data, mtype = ch.recv_with_type(timeout=timeout, **knobs)
        return data, {"type": mtype}
    if ch.scheme == "posixmq" and not knobs:
        data, prio = ch.recv_with_priority(timeout=timeout)
        return data, {"priority": prio}
    return ch.recv(timeout=timeout, **knobs), {}


def _channels(url: str, *, create: bool, follow: bool, timeout: float | None, stack: ExitStack,
              subscribe: bool = False) -> Iterator[Any]:
    """The channel(s) to read from: one, or for a listener one per accepted sender."""
    import kipc

    scheme = parse_url(url).scheme
    if subscribe:
        if create:
            raise InvalidArgument("recv --subscribe --create: a topic is created by its publisher")
        yield stack.enter_context(kipc.Topic(url))
        return
    registry.load(scheme)
    if create and scheme in registry.listen_schemes():
        lst = stack.enter_context(kipc.listen(url))
        while True:
            ch = lst.accept(timeout=timeout)
            with ch:
                yield ch
            if not follow:
                return
    opts: dict[str, Any] = {"create": "if_missing"} if create else {}
    if scheme == "fifo":  # an opener of a FIFO writes unless told; --follow outlives writers leaving
        opts.update(direction="recv", follow=follow)
    yield stack.enter_context(kipc.open(url, **opts))


def messages(url: str, *, count: int | None, create: bool = False, follow: bool = False,
             timeout: float | None = None, subscribe: bool = False, **knobs: Any) -> Iterator[bytes]:
    """Yield up to ``count`` messages (None: until the channel closes)."""
    for data, _ in received(url, count=count, create=create, follow=follow, timeout=timeout, subscribe=subscribe,
                            **knobs):
        yield data


def received(url: str, *, count: int | None, create: bool = False, follow: bool = False,
             timeout: float | None = None, subscribe: bool = False,
             **knobs: Any) -> Iterator[tuple[bytes, dict[str, int]]]:
    """Yield up to ``count`` ``(message, meta)`` pairs (meta: ``type`` / ``priority`` where the scheme has one)."""
    Deadline.of(timeout)  # validate before opening anything
    if subscribe and knobs:
        raise InvalidArgument(f"recv --subscribe: topics take no {', '.join('--' + k for k in knobs)}")
    n = 0
    with ExitStack() as stack:
        for ch in _channels(url, create=create, follow=follow, timeout=timeout, stack=stack, subscribe=subscribe):
            while count is None or n < count:
                try:
                    data, meta = _recv(ch, timeout, knobs)
                except ChannelClosed:
                    break
                except DeadlineExceeded:
                    if follow and n:  # --follow --timeout S: stop once idle for S seconds
                        return
                    raise
                n += 1
                yield bytes(data), meta
            if count is not None and n >= count:
                return
    if n == 0:
        raise ChannelClosed(f"recv on {url}: the channel closed before any message arrived")


def run(args: argparse.Namespace, out: Output) -> int:
    knobs: dict[str, Any] = {}
    if args.type is not None:
        knobs["type"] = args.type
    count = None if args.follow else args.count
    with exit_cleanly_on_signals():
        return _print(args, out, count, knobs)


def _print(args: argparse.Namespace, out: Output, count: int | None, knobs: dict[str, Any]) -> int:
    buf = sys.stdout.buffer if out.out is sys.stdout else None
    for data, meta in received(args.url, count=count, create=args.create, follow=args.follow, timeout=args.timeout,
                               subscribe=args.subscribe, **knobs):
        if out.json_mode:
            try:
                text: str | None = data.decode()
            except UnicodeDecodeError:
                text = None
            line = json.dumps({"url": args.url, "size": len(data), "text": text, "hex": data.hex(), **meta}) + "\n"
            chunk = line.encode()
        elif args.hex:
            chunk = data.hex().encode() + b"\n"
        elif args.raw:
            chunk = data
        else:
            chunk = data + b"\n"
        if buf is not None:
            buf.write(chunk)
            buf.flush()
        else:
            out.out.write(chunk.decode(errors="replace"))
            out.out.flush()
    return 0
