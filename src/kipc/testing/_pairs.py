"""Pair factories: a connected ``(sender, receiver)`` per scheme, for the conformance suite and users' tests.

Contract card:

* A factory is ``factory(name, **options)`` returning a context manager that
  yields ``(sender, receiver)`` and, on exit, closes both ends (receiver first)
  and removes what it created. ``name`` is a fresh name of the test's
  namespace (``kipc.testing.unique_name``); ``options`` go to both ends, except
  creation-only ones (capacity, queue sizes), which only the creator gets.
* The sender is the creator where the mechanism has one, except FIFOs and
  spools: there the receiver creates (a FIFO's writer cannot open before a
  reader; closing a spool's sender then loses nothing).
* One factory per registered scheme plus ``pipe``; :func:`register_pair` adds
  (or replaces) one, e.g. for a scheme added with :func:`kipc.registry.register`.
  :func:`topic_pair` gives NATS ``Topic`` ends (publisher, subscriber).

These live here, not on the transport classes, so production code carries no
test hooks (design.md §11).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from typing import Any

from .._base import Channel
from .._naming import unique_key
from ..errors import InvalidArgument, Timeout

__all__ = ["PairFactory", "pair_factory", "register_pair", "schemes", "topic_pair"]

Pair = tuple[Channel, Channel]
PairFactory = Callable[..., ContextManager[Pair]]

_FACTORIES: dict[str, PairFactory] = {}


def register_pair(scheme: str, factory: PairFactory) -> None:
    """Make ``kipc.testing.channel_pair(scheme)`` use ``factory(name, **options)``."""
    _FACTORIES[scheme] = factory


def schemes() -> list[str]:
    return sorted(_FACTORIES)


def pair_factory(scheme: str) -> PairFactory:
    try:
        return _FACTORIES[scheme]
    except KeyError:
        raise InvalidArgument(f"no pair factory for scheme {scheme!r}; known: {', '.join(schemes())} "
                              "(kipc.testing.register_pair adds one)") from None


@contextlib.contextmanager
def _closing(make_first: Callable[[], Channel], make_second: Callable[[], Channel], *,
             first_sends: bool) -> Iterator[Pair]:
    """Open the creator end, then the other; on exit close the receiver, then the sender."""
    first = make_first()
    try:
        second = make_second()
    except BaseException:
        first.close()
        raise
    pair = (first, second) if first_sends else (second, first)
    try:
        yield pair
    finally:
        try:
            pair[1].close()
        finally:
            pair[0].close()


def _without(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in names}


def _factory(scheme: str) -> Callable[[PairFactory], PairFactory]:
    def deco(fn: PairFactory) -> PairFactory:
        register_pair(scheme, fn)
        return fn
    return deco


@_factory("pipe")
@contextlib.contextmanager
def pipe_pair(name: str, **options: Any) -> Iterator[Pair]:
    from ..transports.pipe import pipe

    r, w = pipe(**options)
    with _closing(lambda: w, lambda: r, first_sends=True) as pair:
        yield pair


@_factory("ring")
def ring_pair(name: str, **options: Any) -> ContextManager[Pair]:
    from ..transports.ring import RingChannel

    return _closing(lambda: RingChannel(name, create=True, **options),
                    lambda: RingChannel(name, **_without(options, "create", "capacity", "mode", "persist")),
                    first_sends=True)


@_factory("sysvmq")
def sysvmq_pair(name: str, **options: Any) -> ContextManager[Pair]:
    from ..transports.sysvmq import SysVMessageQueue

    key = unique_key()  # SysV has keys, not names: the namespace's key stands for `name`
    return _closing(lambda: SysVMessageQueue(key, create=True, **options), lambda: SysVMessageQueue(key, **options),
                    first_sends=True)


@_factory("posixmq")
def posixmq_pair(name: str, **options: Any) -> ContextManager[Pair]:
    from ..transports.posixmq import PosixMessageQueue

    url = f"posixmq://{name}"
    return _closing(lambda: PosixMessageQueue(url, create=True, **options),
                    lambda: PosixMessageQueue(url, **_without(options, "max_messages", "max_message_size")),
                    first_sends=True)


@_factory("fifo")
def fifo_pair(name: str, **options: Any) -> ContextManager[Pair]:
    from ..transports.fifo import FifoChannel

    url = f"fifo://{name}"
    return _closing(lambda: FifoChannel(url, create=True, direction="recv", **options),
                    lambda: FifoChannel(url, direction="send", timeout=10, **options), first_sends=False)


@_factory("file")
def file_pair(name: str, **options: Any) -> ContextManager[Pair]:
    from ..transports.file import SpoolChannel

    url = f"file://{name}"
    return _closing(lambda: SpoolChannel(url, create=True, **options), lambda: SpoolChannel(url, **options),
                    first_sends=False)


@_factory("unix")
@contextlib.contextmanager
def unix_pair(name: str, **options: Any) -> Iterator[Pair]:
    """(connecting end, accepted end); the listener is closed (and its file removed) at once."""
    from ..transports.unix import UnixChannel, UnixListener

    url = f"unix://{name}"
    allow = options.pop("allow_uids", None)
    with UnixListener(url, allow_uids=allow, **options) as lst:
        client = UnixChannel(url, allow_uids=allow, **options)
        try:
            server = lst.accept(timeout=10)
        except BaseException:
            client.close()
            raise
    with _closing(lambda: client, lambda: server, first_sends=True) as pair:
        yield pair


@_factory("tcp")
@contextlib.contextmanager
def tcp_pair(name: str, **options: Any) -> Iterator[Pair]:
    """(connecting end, accepted end) on a free loopback port; the listener is closed at once."""
    from ..transports.tcp import TcpChannel, TcpListener

    auth = options.pop("auth", None)
    with TcpListener("tcp://127.0.0.1:0", auth=auth, **options) as lst:
        # accept in a thread: with auth= both handshakes must run at once
        got: list[Any] = []

        def accept() -> None:
            try:
                got.append(lst.accept(timeout=10))
            except BaseException as e:  # handed to this thread
                got.append(e)

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        try:
            client = TcpChannel(lst.url, auth=auth, **options)
        finally:
            t.join(15)
        server = got[0] if got else Timeout("accept timed out")
        if isinstance(server, BaseException):
            client.close()
            raise server
    with _closing(lambda: client, lambda: server, first_sends=True) as pair:
        yield pair


@contextlib.contextmanager
def _servers(options: dict[str, Any]) -> Iterator[Any]:
    """``servers=`` as given, or a private nats-server for the pair's lifetime."""
    if "servers" in options:
        yield options.pop("servers")
        return
    from ._nats import nats_server

    with nats_server() as server:
        yield server.url


@_factory("nats")
@contextlib.contextmanager
def nats_pair(name: str, **options: Any) -> Iterator[Pair]:
    """(creator/sender, receiver) on ``servers`` (a URL, or a list for a cluster)."""
    from ..transports.nats import NatsChannel

    with _servers(options) as servers:
        first = servers if isinstance(servers, str) else servers[0]
        url = f"{first.rstrip('/')}/{name}"
        options.setdefault("ack_wait", 2.0)
        with _closing(lambda: NatsChannel(url, create=True, servers=servers, **options),
                      lambda: NatsChannel(url, servers=servers, **options), first_sends=True) as pair:
            yield pair


@contextlib.contextmanager
def topic_pair(name: str, **options: Any) -> Iterator[Pair]:
    """(publisher, subscriber) of a NATS core subject; the subscriber is listening before this returns."""
    from ..transports.nats import Topic

    with _servers(options) as servers:
        first = servers if isinstance(servers, str) else servers[0]
        url = f"{first.rstrip('/')}/{name}"
        with _closing(lambda: Topic(url, servers=servers, **options),
                      lambda: Topic(url, servers=servers, subscribe=False, **options), first_sends=False) as pair:
            yield pair
