"""``kipc.Topic(url, **opts)``: one entry point for publish/subscribe, dispatched on the URL's scheme.

* ``nats://host:port/name`` -> :class:`kipc.transports.nats.Topic` (core NATS subject, across hosts);
* ``unix://name`` -> :class:`kipc.transports.unix_topic.UnixTopic` (a publisher process
  serving subscribers over a socket);
* ``ring://name`` -> ``kipc.transports.ring_topic:RingTopic`` (shared memory), imported on first
  use; where that module is not installed the call raises :class:`Unsupported` naming the scheme.

The same program moves between them by changing the URL: ``Topic(url, create=True,
subscribe=False)`` publishes where the scheme has an object to create (ring, unix), and
``Topic(url)`` subscribes. (On nats:// there is nothing to create: ``create=True`` is accepted
and means nothing.) An option the scheme's class does not take is :class:`InvalidArgument`
naming the valid ones, before anything is opened.

The type: every scheme's class is a :class:`kipc.Channel` (send/recv/asend/arecv, iteration,
``kipc.wait``, close) with a ``dropped`` count; :class:`TopicEnd` is that shape, as a
``Protocol``, so the classes need no common base (the ring and NATS ones are built elsewhere).
See docs/pubsub.md for the contract of each scheme.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from ._base import Buffer
from ._naming import parse_url
from .errors import InvalidArgument, Unsupported

if TYPE_CHECKING:
    from .codecs import Codec

T = TypeVar("T")

__all__ = ["TOPIC_CLASSES", "Topic", "TopicEnd", "topic_class"]

#: scheme -> "module:Class" of its topic (imported on first use)
TOPIC_CLASSES: dict[str, str] = {
    "nats": "kipc.transports.nats.topic:Topic",
    "unix": "kipc.transports.unix_topic:UnixTopic",
    "ring": "kipc.transports.ring_topic:RingTopic",
}


class TopicEnd(Protocol, Generic[T]):
    """What ``kipc.Topic(...)`` returns on every scheme: a channel end with a ``dropped`` count.

    ``TopicEnd[bytes]`` without a codec, ``TopicEnd[object]`` with one (json, msgpack, pickle).
    """

    url: str

    @property
    def dropped(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def send(self, obj: T | Buffer, *, timeout: float | None = None, **knobs: Any) -> None: ...
    def recv(self, *, timeout: float | None = None, **knobs: Any) -> T: ...
    async def asend(self, obj: T | Buffer, *, timeout: float | None = None, **knobs: Any) -> None: ...
    async def arecv(self, *, timeout: float | None = None, **knobs: Any) -> T: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[T]: ...
    def __aiter__(self) -> AsyncIterator[T]: ...
    def __enter__(self) -> TopicEnd[T]: ...
    def __exit__(self, *exc: object) -> None: ...


def topic_class(scheme: str) -> type:
    """The topic class of ``scheme``: InvalidArgument for a scheme without topics, Unsupported when
    its module is not installed (ring:// before the ring topic is merged)."""
    target = TOPIC_CLASSES.get(scheme)
    if target is None:
        known = ", ".join(s + "://" for s in TOPIC_CLASSES)
        raise InvalidArgument(f"no topics on {scheme}://; topics exist on {known}")
    module, _, name = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise  # a dependency of the module is missing: that is its own error
        raise Unsupported(f"{scheme}:// topics are not available in this kipc build ({module} is missing)") from e
    cls: type = getattr(mod, name)
    return cls


def _options(cls: type) -> set[str]:
    return {p.name for p in inspect.signature(cls).parameters.values() if p.kind is p.KEYWORD_ONLY}


@overload
def Topic(url: str, *, codec: None = None, **options: Any) -> TopicEnd[bytes]: ...
@overload
def Topic(url: str, *, codec: str | Codec, **options: Any) -> TopicEnd[object]: ...
def Topic(url: str, **options: Any) -> Any:  # a factory, named as the class it replaces
    """Open a topic end: ``Topic(url, create=True, subscribe=False)`` publishes, ``Topic(url)`` subscribes."""
    parsed = parse_url(url)
    cls = topic_class(parsed.scheme)
    params = inspect.signature(cls).parameters
    if parsed.scheme == "nats":
        # nothing to create on a broker; a NATS Topic with subscribe=True also publishes
        create = options.pop("create", False)
        if create not in (True, False):
            raise InvalidArgument(f"{url}: create= is True or False")
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = _options(cls) | ({"create"} if parsed.scheme == "nats" else set())
        unknown = sorted(set(options) - valid)
        if unknown:
            raise InvalidArgument(f"Topic({url!r}): unknown option(s) {', '.join(map(repr, unknown))} for "
                                  f"{parsed.scheme}:// topics; valid options: {', '.join(sorted(valid))}")
    else:
        _check_nats(cls, url, options)
    return cls(url, **options)


def _check_nats(cls: type, url: str, options: dict[str, Any]) -> None:
    """The NATS Topic takes its connection options through ``**conn``; they are listed in one place."""
    from .transports.nats._client import _common_options

    conn = _common_options(dict.fromkeys(options))
    valid = _options(cls) | set(conn) | {"create"}
    unknown = sorted(set(options) - valid)
    if unknown:
        every = _options(cls) | set(_common_options(dict.fromkeys(_NATS_PROBE))) | {"create"}
        raise InvalidArgument(f"Topic({url!r}): unknown option(s) {', '.join(map(repr, unknown))} for "
                              f"nats:// topics; valid options: {', '.join(sorted(every))}")


#: every name _common_options might know (it pops the ones it does)
_NATS_PROBE = ("connect_timeout", "user", "password", "token", "creds_file", "nkeys_seed", "tls", "tls_ca",
               "tls_cert", "tls_key", "tls_hostname", "client_name", "ping_interval")
