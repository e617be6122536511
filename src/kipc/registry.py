"""URL scheme -> transport class, imported lazily; ``kipc.open(url)`` and ``kipc.listen(url)``.

Importing kipc imports no transport: the class behind a scheme is loaded the
first time the scheme is used, so a missing optional dependency (nats-py)
only matters to users of that scheme.

A transport class implements ``from_url(parsed: ParsedURL, **options)``;
query options (``?capacity=64MiB``) are merged with keyword options, and
giving the same option both ways is an error.

Each scheme also names its object kinds (:class:`kipc._kinds.Kind`, defined
beside the mechanism): ``kipc ls / rm / gc`` aggregate exactly the kinds
registered here, so ``register(scheme, target, kind=...)`` makes a new scheme's
objects visible to them. ``sysv://`` and ``posix://`` (segments and
semaphores, not channels) have two kinds each.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._base import Channel, Listener
from ._kinds import Kind
from ._naming import parse_url
from .errors import InvalidArgument

__all__ = ["kinds", "kinds_of", "listen", "listen_schemes", "load", "open", "register", "register_kind", "schemes"]

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


#: scheme -> its object kinds, as "module:attribute" (imported when kipc ls/rm/gc first need them) or Kind objects
_KINDS: dict[str, list[str | Kind]] = {
    "sysvmq": ["kipc.transports.sysvmq:KIND"],
    "posixmq": ["kipc.transports.posixmq:KIND"],
    "ring": ["kipc.transports.ring:KIND"],
    "fifo": ["kipc.transports.fifo:KIND"],
    "unix": ["kipc.transports.unix:KIND"],
    "file": ["kipc.transports.file:KIND"],
    "tcp": ["kipc.transports.tcp:KIND"],
    "nats": ["kipc.transports.nats:KIND"],
    "sysv": ["kipc.shm:SYSV_KIND", "kipc.sync.semaphore:SYSV_KIND"],
    "posix": ["kipc.shm:POSIX_KIND", "kipc.sync.semaphore:POSIX_KIND", "kipc.sync.lock:LOCK_KIND",
              "kipc.sync.lock:RLOCK_KIND", "kipc.sync.event:KIND"],
    "mapped-file": ["kipc._mapped:KIND"],
}


def register(scheme: str, target: str, *, listener: str | None = None, kind: str | Kind | None = None) -> None:
    """Add (or replace) a scheme: ``target`` is ``"module:Class"``; ``kind`` (``"module:attr"`` or a
    :class:`~kipc._kinds.Kind`) makes its objects show in ``kipc ls / rm / gc``."""
    _CHANNELS[scheme] = target
    if listener:
        _LISTENERS[scheme] = listener
    if kind is not None:
        _KINDS[scheme] = [kind]


def register_kind(scheme: str, kind: str | Kind) -> None:
    """Add an object kind to ``scheme`` (objects that are not channels, like ``sysv://`` segments)."""
    _KINDS.setdefault(scheme, []).append(kind)


def kinds_of(scheme: str) -> list[Kind]:
    """The object kinds of ``scheme`` (imports their modules on first use); [] when it has none."""
    loaded = [k if isinstance(k, Kind) else _import(k) for k in _KINDS.get(scheme, [])]
    _KINDS[scheme] = list(loaded)
    return loaded


def kinds() -> list[Kind]:
    """Every registered object kind, in registration order."""
    return [k for scheme in list(_KINDS) for k in kinds_of(scheme)]


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
