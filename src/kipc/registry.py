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
import inspect
from typing import TYPE_CHECKING, Any, Literal, overload

from ._base import Channel, CreateMode, Listener
from ._kinds import Kind
from ._naming import ParsedURL, parse_url
from ._objects import open_waiting
from .codecs import Codec
from .errors import InvalidArgument

if TYPE_CHECKING:
    from .transports.fifo import FifoChannel
    from .transports.file import SpoolChannel
    from .transports.nats import NatsChannel
    from .transports.posixmq import PosixMessageQueue
    from .transports.ring import RingChannel
    from .transports.sysvmq import SysVMessageQueue
    from .transports.tcp import TcpChannel, TcpListener
    from .transports.unix import UnixChannel, UnixListener

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


#: URL query keys that are part of an address rather than a constructor option
_ADDRESS_KEYS: dict[str, frozenset[str]] = {"sysvmq": frozenset({"proj"})}


def options_of(cls: type) -> list[str]:
    """The keyword options ``cls`` accepts (its constructor's keyword parameters), sorted."""
    return sorted(p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY)


def check_options(cls: type, parsed: ParsedURL, options: dict[str, Any], *, extra: tuple[str, ...] = ()) -> None:
    """Refuse an option ``cls`` does not take, naming the valid ones (once for every scheme).

    A URL query key is :class:`InvalidArgument` (a ValueError), a keyword argument ``TypeError``.
    """
    params = inspect.signature(cls).parameters
    if not extra and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # the class takes any keyword: it checks its own
    valid = {*options_of(cls), *_ADDRESS_KEYS.get(parsed.scheme, ()), *extra}
    listing = ", ".join(sorted(valid))
    for k in parsed.query:
        if k not in valid:
            raise InvalidArgument(f"{parsed.url}: unknown option {k!r} for {parsed.scheme}://; "
                                  f"valid options: {listing}")
    for k in options:
        if k not in valid:
            raise TypeError(f"open({parsed.url!r}): unknown option {k!r} for {parsed.scheme}://; "
                            f"valid options: {listing}")


# Typed ways in (docs/typing.md): ``scheme=`` (the URL's scheme, checked) gives the mechanism's class, so
# mechanism methods (``recv_with_type``, ``loan``, ``stat`` ...) type-check without a cast; ``codec=`` makes
# the message type ``object``.
@overload
def open(url: str, *, scheme: Literal["ring"], codec: None = None, create: CreateMode = ..., wait: float | None = ...,
         **options: object) -> RingChannel: ...
@overload
def open(url: str, *, scheme: Literal["sysvmq"], codec: None = None, create: CreateMode = ...,
         wait: float | None = ..., **options: object) -> SysVMessageQueue: ...
@overload
def open(url: str, *, scheme: Literal["posixmq"], codec: None = None, create: CreateMode = ...,
         wait: float | None = ..., **options: object) -> PosixMessageQueue: ...
@overload
def open(url: str, *, scheme: Literal["fifo"], codec: None = None, create: CreateMode = ..., wait: float | None = ...,
         **options: object) -> FifoChannel: ...
@overload
def open(url: str, *, scheme: Literal["file"], codec: None = None, create: CreateMode = ..., wait: float | None = ...,
         **options: object) -> SpoolChannel: ...
@overload
def open(url: str, *, scheme: Literal["unix"], codec: None = None, wait: float | None = ...,
         **options: object) -> UnixChannel: ...
@overload
def open(url: str, *, scheme: Literal["tcp"], codec: None = None, wait: float | None = ...,
         **options: object) -> TcpChannel: ...
@overload
def open(url: str, *, scheme: Literal["nats"], codec: None = None, create: CreateMode = ..., wait: float | None = ...,
         **options: object) -> NatsChannel: ...
@overload
def open(url: str, *, scheme: str | None = None, codec: None = None, create: CreateMode = ...,
         wait: float | None = ..., **options: object) -> Channel[bytes]: ...
@overload
def open(url: str, *, scheme: str | None = None, codec: str | Codec, create: CreateMode = ...,
         wait: float | None = ..., **options: object) -> Channel[object]: ...
def open(url: str, *, scheme: str | None = None, wait: float | None = None, **options: Any) -> Channel[Any]:
    """Open (or with ``create=True`` create) the channel named by ``url``.

    ``wait=seconds`` waits until the object exists (the consumer started first): ``NotFound`` is
    retried with a back-off until then, and :class:`~kipc.Timeout` names the URL (one rule,
    :func:`kipc._objects.open_waiting`, shared with the constructors of segments, semaphores, locks
    and events; not with a creating ``create=``). ``scheme=`` is for type checkers (the result is
    typed as that mechanism's class); it must match the URL.
    An unknown option raises an error naming the valid options of the scheme.
    """
    parsed = parse_url(url)
    if scheme is not None and scheme != parsed.scheme:
        raise InvalidArgument(f"open({url!r}, scheme={scheme!r}): the URL's scheme is {parsed.scheme!r}")
    cls = load(parsed.scheme)
    check_options(cls, parsed, options)
    create = options.get("create", parsed.query.get("create", False))
    return open_waiting(url, wait, lambda: cls.from_url(parsed, **options), create=create)


@overload
def listen(url: str, *, scheme: Literal["unix"], **options: object) -> UnixListener: ...
@overload
def listen(url: str, *, scheme: Literal["tcp"], **options: object) -> TcpListener: ...
@overload
def listen(url: str, *, scheme: str | None = None, **options: object) -> Listener: ...
def listen(url: str, *, scheme: str | None = None, **options: Any) -> Listener:
    """Listen on a ``unix://`` or ``tcp://`` address; ``accept()`` yields channels."""
    parsed = parse_url(url)
    if scheme is not None and scheme != parsed.scheme:
        raise InvalidArgument(f"listen({url!r}, scheme={scheme!r}): the URL's scheme is {parsed.scheme!r}")
    cls = load(parsed.scheme, listener=True)
    # a listener passes the options it does not take itself to the channels it accepts
    check_options(cls, parsed, options, extra=tuple(options_of(load(parsed.scheme))))
    return cls.from_url(parsed, **options)
