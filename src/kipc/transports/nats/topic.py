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
import contextlib
import os
from collections import deque
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
    KipcError,
    Unsupported,
    WouldBlock,
)
from ._client import _Client, _common_options, _escape, _int_opt, _split_url
from ._mailbox import Mailbox, Pump

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
    _box: Mailbox | None = None
    _pump: Pump | None = None
    _send_error: KipcError | None = None
    _lost = 0

    def __init__(self, url: str, *, subscribe: bool | str = True, codec: str | Codec | None = None,
                 servers: str | list[str] | None = None, pending_limit: int | str = 65536, **conn: Any) -> None:
        parsed = parse_url(url)
        server, name, creds = _split_url(parsed, ("nats",))
        subscribe = parse_bool(subscribe, what="subscribe")
        limit = _int_opt(pending_limit, "pending_limit")
        self.url = f"{parsed.scheme}://{server.partition('://')[2]}/{name}"
        self.subject = f"kipc.t.{_escape(name)}"
        self._outq: deque[bytes] = deque()  # queued by send(), published by the pump on the loop
        self._connect(servers, server, creds, **_common_options(conn))
        if conn:
            self._disconnect()
            raise TypeError(f"Topic() got unexpected options {sorted(conn)}")
        try:
            self._run(self._setup_pump())
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
        self._start_pump()
        box = self._box = Mailbox(limit, asyncio.get_running_loop())  # one wake per batch

        async def on_msg(msg: Any) -> None:
            box.put(msg.data)  # at most once: past pending_limit a subscriber this slow loses messages

        # nats-py's own buffer must not drop before ours does
        self._sub = await self._nc.subscribe(self.subject, cb=on_msg, pending_msgs_limit=limit + 1024,
                                             pending_bytes_limit=-1)
        await self._nc.flush(5.0)  # the subscription is registered before open() returns

    async def _setup_pump(self) -> None:
        self._start_pump()

    def _start_pump(self) -> None:
        if self._pump is None:
            self._pump = Pump(asyncio.get_running_loop(), self._drain)
            self._pump.start()

    @property
    def dropped(self) -> int:
        """Messages this subscriber lost because it was more than ``pending_limit`` behind."""
        return self._box.dropped if self._box is not None else 0

    @classmethod
    def from_url(cls, parsed: ParsedURL, **options: Any) -> Topic:
        return cls(parsed.url.split("?", 1)[0], **merge_query(parsed, options))

    # -- the loop side: publish everything callers queued -------------------------------------
    async def _drain(self) -> None:
        nc, q, subject = self._nc, self._outq, self.subject
        if nc is None:
            return
        while q:
            data = q.popleft()
            try:
                await nc.publish(subject, data)
            except nats.errors.ConnectionClosedError:
                self._send_error = ChannelClosed(f"send on {self.url}: connection closed")
                q.clear()
            except nats.errors.OutboundBufferLimitError:
                self._lost += 1 + len(q)
                q.clear()
                self._send_error = WouldBlock(
                    f"send on {self.url}: disconnected and the reconnect buffer is full; "
                    f"{self._lost} message(s) not published")

    def _queue(self, data: bytes) -> None:
        err = self._send_error
        if err is not None:
            self._send_error = None
            self._lost = 0
            raise err
        self._outq.append(data)
        pump = self._pump
        if pump is not None:
            pump.kick()

    def _send_blocking(self, data: bytes | memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._queue(data if type(data) is bytes else bytes(data))

    def _take_box(self) -> Any:
        if not self.readable or self._box is None:
            raise Unsupported(f"recv on {self.url}: opened with subscribe=False")
        return self._box.take()

    def _recv_blocking(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        while True:
            got = self._take_box()
            if got is not None:
                return got
            self._check_open("recv")
            if deadline.nonblocking or deadline.expired():
                if deadline.nonblocking:
                    raise WouldBlock(f"recv on {self.url}: no message")
                raise deadline.error(f"recv on {self.url}")
            assert self._box is not None
            self._box.wait(deadline.slice().remaining())

    def recv_many(self, max_n: int, *, timeout: float | None = None) -> list[Any]:
        """Between 1 and ``max_n`` messages: waits (up to ``timeout``) for the first, then takes what is here."""
        deadline = Deadline.of(timeout)
        n = _int_opt(max_n, "max_n")
        self._prepare_recv({})
        first = self._recv_blocking(deadline, {})
        assert self._box is not None
        decode = self.codec.decode
        return [decode(first), *(decode(d) for d in self._box.take_many(n - 1))]

    _async_native = True

    async def _asend_native(self, data: memoryview, deadline: Deadline, knobs: dict[str, Any]) -> None:
        self._check_pid("send on")
        self._queue(bytes(data))  # no await: a cancellation cannot split it

    async def _arecv_native(self, deadline: Deadline, knobs: dict[str, Any]) -> Any:
        self._check_pid("recv on")
        while True:
            got = self._take_box()
            if got is not None:
                return got
            self._check_open("recv")
            if deadline.nonblocking:
                raise WouldBlock(f"recv on {self.url}: no message")
            if deadline.expired():
                raise deadline.error(f"recv on {self.url}")
            assert self._box is not None
            await self._box.await_(deadline.slice().remaining())  # consumes nothing: cancellation loses nothing

    def fileno(self) -> int:
        self._check_open("fileno")
        return super().fileno()  # Unsupported: the socket belongs to the loop thread

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has everything published so far."""
        self._check_pid("flush on")

        async def flush() -> None:
            end = asyncio.get_running_loop().time() + timeout
            while self._outq and asyncio.get_running_loop().time() < end:
                await asyncio.sleep(0.001)  # the pump is publishing what send() queued
            await self._nc.flush(timeout)

        self._run(flush())

    def _interrupt(self) -> None:
        super()._interrupt()
        if self._box is not None:
            self._box.wake()

    def _close(self) -> None:
        if self._nc is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._run(self._stop())
        self._disconnect()

    async def _stop(self) -> None:
        if self._outq:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain(), 2.0)
        if self._pump is not None:
            await self._pump.stop()

