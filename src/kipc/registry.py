"""URL scheme -> transport class, imported lazily; ``kipc.open(url)`` and ``kipc.listen(url)``.

Importing kipc imports no transport: the class behind a scheme is loaded the
first time the scheme is used, so a missing optional dependency (nats-py)
only matters to users of that scheme.

A transport class implements ``from_url(parsed: ParsedURL, **options)``;
query options (``?capacity=64MiB``) are merged with keyword options, and
giving the same option both ways is an error.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._base import Channel, Listener
from ._naming import parse_url
from .errors import InvalidArgument

__all__ = ["listen", "listen_schemes", "load", "open", "register", "schemes"]

_CHANNELS: dict[str, str] = {
    "fifo": "kipc.transports.fifo:FifoChannel",
    "unix": "kipc.transports.unix:UnixChannel",
    "tcp": "kipc.transports.tcp:TcpChannel",
    "file": "kipc.transports.file:SpoolChannel",
    "sysvmq": "kipc.transports.sysvmq:SysVMessageQueue",
    "posixmq": "kipc.transports.posixmq:PosixMessageQueue",
    "ring": "kipc.transports.ring:RingChannel",
    "nats": "kipc.transports.nats:NatsChannel",
}

_LISTENERS: dict[str, str] = {
    "unix": "kipc.transports.unix:UnixListener",
    "tcp": "kipc.transports.tcp:TcpListener",
}


def register(scheme: str, target: str, *, listener: str | None = None) -> None:
    """Add (or replace) a scheme: ``target`` is ``"module:Class"``."""
    _CHANNELS[scheme] = target
    if listener:
        _LISTENERS[scheme] = listener


def schemes() -> list[str]:
    """Every registered channel scheme."""
    return sorted(_CHANNELS)


def listen_schemes() -> list[str]:
    return sorted(_LISTENERS)


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load(scheme: str, *, listener: bool = False) -> Any:
    """The class registered for ``scheme`` (imports its module on first use)."""
    table = _LISTENERS if listener else _CHANNELS
    try:
        target = table[scheme]
    except KeyError:
        kinds = "listen" if listener else "channel"
        raise InvalidArgument(f"unknown {kinds} scheme {scheme!r}; known: {', '.join(sorted(table))}") from None
    return _import(target)


def open(url: str, **options: Any) -> Channel:
    """Open (or with ``create=True`` create) the channel named by ``url``."""
    parsed = parse_url(url)
    cls = load(parsed.scheme)
    return cls.from_url(parsed, **options)


def listen(url: str, **options: Any) -> Listener:
    """Listen on a ``unix://`` or ``tcp://`` address; ``accept()`` yields channels."""
    parsed = parse_url(url)
    cls = load(parsed.scheme, listener=True)
    return cls.from_url(parsed, **options)
