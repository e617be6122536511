"""Topic: fan-out on a core NATS subject (``kipc.t.<name>``), the cross-host counterpart of a signal.

Contract card: every open Topic receives every message published after it
subscribed; at most once (a subscriber more than ``pending_limit`` messages
behind loses messages, counted in ``.dropped``); no storage, nothing to create
or remove on the server. ``send`` publishes (core NATS, no confirmation);
``recv`` returns the next message this Topic received. Messages move between
the loop thread and the caller in batches (see ``_Inbox``).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from ..._base import Channel, Deadline
from ..._naming import (
    ParsedURL,
    merge_query,
    parse_bool,
    parse_url,
)
from ...codecs import Codec
from ...errors import (
    ChannelClosed,
    Unsupported,
    WouldBlock,
)
from ._cancel import _NOTHING, _aadopt_orphan, _adopt_orphan, _keep_on_cancel, _uncancellable_publish
from ._client import _await_deadline, _Client, _common_options, _escape, _int_opt, _split_url

T = TypeVar("T")

__all__ = ["Topic"]


class Topic(_Client, Channel):
    """Fan-out on a core NATS subject: every subscriber gets every message (at most once).

    ``Topic("nats://host:4222/alerts")`` subscribes when opened (pass
    ``subscribe=False`` for a publisher only). ``send`` publishes; ``recv``
    returns the next message this Topic received. There is nothing to create or
    remove on the server. (Opened by class, not by
    ``kipc.open``: a ``nats://`` URL given to ``kipc.open`` is a work-queue channel.)
    """

    scheme = "nats"
    _sub: Any = None
    _queue: asyncio.Queue[bytes] | None = None
    dropped = 0

    def __init__(self, url: str, *, subscribe: bool | str = True, codec: str | Codec | None = None,
                 servers: str | list[str] | None = None, pending_limit: int | str = 65536, **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats",))
        subscribe = parse_bool(subscribe, what="subscribe")
        limit = _int_opt(pending_limit, "pending_limit")
        self.url = f"{parsed.scheme}://{server.partition('://')[2]}/{name}"
        self.subject = f"kipc.t.{_escape(name)}"
        self._connect(servers, server, creds, **_common_options(conn))
        if conn:
            self._disconnect()
            raise TypeError(f"Topic() got unexpected options {sorted(conn)}")
        try:
            if subscribe:
                self._run(self._subscribe(limit))
            else:
                self.readable = False
        except BaseException:
            self._disconnect()
            raise
        self.max_message_size = self.max_payload
        self._init_channel(self.url, codec=codec)

    async def _subscribe(self, limit: int) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=limit)
        self._queue = queue

        async def on_msg(msg: Any) -> None:
            try:
                queue.put_nowait(msg.data)
            except asyncio.QueueFull:
                self.dropped += 1  # at most once: a subscriber this slow loses messages

        self._sub = await self._nc.subscribe(self.subject, cb=on_msg)
        await self._nc.flush(5.0)  # the subscription is registered before open() returns

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> Topic:
        return cls(parsed.url.split("?", 1)[0], **merge_query(parsed, options))


    async def _apublish(self, data: bytes) -> None:
        try:
            await self._nc.publish(self.subject, data)
        except nats.errors.ConnectionClosedError:
            raise ChannelClosed(f"send on {self.url}: connection closed") from None
        except nats.errors.OutboundBufferLimitError:
            raise WouldBlock(f"send on {self.url}: disconnected and the reconnect buffer is full") from None

    async def _aget(self, deadline: Deadline) -> bytes:
        assert self._queue is not None
        if deadline.nonblocking:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                raise WouldBlock(f"recv on {self.url}: no message") from None
        return await _await_deadline(self._queue.get(), deadline, f"recv on {self.url}")

    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._run(self._apublish(bytes(data)))

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: opened with subscribe=False")
        if self._orphan is not None:
            got = _adopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        return self._run(self._aget(deadline))

    _async_native = True

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        await _uncancellable_publish(self, self._apublish(bytes(data)))

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        if not self.readable:
            raise Unsupported(f"recv on {self.url}: opened with subscribe=False")
        if self._orphan is not None:
            got = await _aadopt_orphan(self, deadline)
            if got is not _NOTHING:
                return got
        # _aget only takes from the local queue once it returns: a cancellation before that
        # loses nothing, one after it is caught by _keep_on_cancel.
        return await _keep_on_cancel(self, self._aget(deadline))

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: the socket belongs to the loop thread

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has everything published so far."""
        self._run(self._nc.flush(timeout))

    def _close(self) -> None:
        self._disconnect()

