"""The channel contract, one suite for every scheme (design.md §4).

Each scheme provides a connected (sender, receiver) through
``kipc.testing.channel_pair``; the same promises are checked on all of them.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kipc
from kipc import registry, testing
from kipc._base import Channel

from ..helpers import check, payload

SCHEMES = ["pipe", *registry.schemes()]

# Channels without a bound: the kernel or broker keeps accepting (until disk/memory runs out).
UNBOUNDED = {"file", "nats"}

MiB = 1 << 20


def _pair(request: pytest.FixtureRequest) -> Iterator[tuple[Channel, Channel]]:
    scheme = request.param
    options: dict[str, Any] = {}
    if scheme == "nats":
        options["servers"] = request.getfixturevalue("nats_url")
    with testing.channel_pair(scheme, **options) as p:
        yield p


pair = pytest.fixture(params=SCHEMES)(_pair)
bounded_pair = pytest.fixture(params=[s for s in SCHEMES if s not in UNBOUNDED])(_pair)
unbounded_pair = pytest.fixture(params=[s for s in SCHEMES if s in UNBOUNDED])(_pair)


def drain(rx: Channel, n: int, timeout: float = 10.0) -> list[bytes]:
    return [rx.recv(timeout=timeout) for _ in range(n)]


def test_boundaries_kept(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    limit = tx.max_message_size
    sizes = [0, 1, 2, 100, 4095, 4096, 4097, 65536 + 3]
    if limit is not None and limit < sizes[-1]:
        sizes = [s for s in sizes if s < limit] + [limit]  # up to the mechanism's own maximum, inclusive
    msgs = [payload(0, i, s) for i, s in enumerate(sizes)]

    def feed() -> None:
        for m in msgs:
            tx.send(m, timeout=10)

    t = threading.Thread(target=feed)
    t.start()
    got = drain(rx, len(msgs))
    t.join(10)
    assert [len(g) for g in got] == sizes
    assert got == msgs


def test_fifo_order(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    n = 1000
    t = threading.Thread(target=lambda: [tx.send(payload(1, i, 32), timeout=10) for i in range(n)])
    t.start()
    for i in range(n):
        check(rx.recv(timeout=10), producer=1, seq=i)
    t.join(10)


def test_recv_timeout_zero_would_block(pair: tuple[Channel, Channel]) -> None:
    _, rx = pair
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)
    with pytest.raises(BlockingIOError):  # as the stdlib: non-blocking is BlockingIOError, not TimeoutError
        rx.recv(timeout=0)
    with pytest.raises(kipc.DeadlineExceeded):  # the common base of WouldBlock and Timeout
        rx.recv(timeout=0)


def test_recv_timeout_honoured(pair: tuple[Channel, Channel]) -> None:
    _, rx = pair
    t0 = time.monotonic()
    with pytest.raises(kipc.Timeout) as ei:
        rx.recv(timeout=0.2)
    elapsed = time.monotonic() - t0
    assert not isinstance(ei.value, kipc.WouldBlock)
    assert isinstance(ei.value, TimeoutError)
    assert 0.19 <= elapsed < 2.0, elapsed


def test_timed_out_recv_leaves_channel_usable(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    with pytest.raises(kipc.Timeout):
        rx.recv(timeout=0.05)
    tx.send(b"after", timeout=5)
    assert rx.recv(timeout=5) == b"after"


def test_unbounded_channel_accepts_without_waiting(unbounded_pair: tuple[Channel, Channel]) -> None:
    tx, rx = unbounded_pair
    for i in range(200):
        tx.send(payload(2, i, 64), timeout=0)
    for i in range(200):
        check(rx.recv(timeout=10), 2, i)


def test_full_channel_blocks_then_succeeds(bounded_pair: tuple[Channel, Channel]) -> None:
    tx, rx = bounded_pair
    sent = 0
    msg_size = 1024
    with pytest.raises(kipc.WouldBlock):
        for sent in itertools.count():
            if sent > 200_000:
                pytest.fail("channel accepted 200k messages without ever being full")
            tx.send(payload(3, sent, msg_size), timeout=0)
    full_at = sent
    # state unchanged by the refused send: a blocking send succeeds once the reader makes room
    got: list[bytes] = []

    def reader() -> None:
        time.sleep(0.2)
        for _ in range(full_at + 1):
            got.append(rx.recv(timeout=20))

    t = threading.Thread(target=reader)
    t.start()
    tx.send(payload(3, full_at, msg_size), timeout=20)
    t.join(30)
    assert len(got) == full_at + 1
    for i, m in enumerate(got):
        check(m, 3, i)
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)


def test_send_timeout_on_full_channel(bounded_pair: tuple[Channel, Channel]) -> None:
    tx, rx = bounded_pair
    sent = 0
    while True:  # fill until the channel refuses without waiting
        try:
            tx.send(payload(4, sent, 512), timeout=0)
            sent += 1
        except kipc.WouldBlock:
            break
    # A stream may still drain into the peer's kernel buffer (TCP moves data from
    # the send to the receive queue), so a timed send can succeed a few times
    # before the channel is really full; then it must wait and time out.
    for _ in range(10_000):
        t0 = time.monotonic()
        try:
            tx.send(payload(4, sent, 512), timeout=0.1)
            sent += 1
        except kipc.Timeout as e:
            assert not isinstance(e, kipc.WouldBlock)
            assert time.monotonic() - t0 >= 0.09
            break
    else:
        pytest.fail("a bounded channel never became full")
    for j in range(sent):  # nothing dropped, nothing half-sent
        check(rx.recv(timeout=10), 4, j)
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)


def test_large_message(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    big = payload(5, 0, 16 * MiB)
    limit = tx.max_message_size
    if limit is not None and limit < len(big):
        with pytest.raises(kipc.MessageTooLarge) as ei:
            tx.send(big, timeout=5)
        assert ei.value.size == len(big) and ei.value.limit == limit
        assert str(len(big)) in str(ei.value) and str(limit) in str(ei.value)
        # unchanged: nothing was queued, and the channel still works
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)
        tx.send(b"small", timeout=5)
        assert rx.recv(timeout=5) == b"small"
        return
    errors: list[BaseException] = []

    def send() -> None:
        try:
            tx.send(big, timeout=60)
            tx.send(b"tail", timeout=60)
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=send)
    t.start()
    got = rx.recv(timeout=60)
    tail = rx.recv(timeout=60)
    t.join(60)
    assert not errors, errors
    assert len(got) == len(big)
    check(got, 5, 0)
    assert tail == b"tail"


def test_close_semantics(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    rx.close()
    rx.close()  # idempotent
    assert rx.closed
    with pytest.raises(kipc.ChannelClosed):
        rx.recv(timeout=0)
    with pytest.raises((kipc.ChannelClosed, kipc.Unsupported)):  # Unsupported: mechanism has no fd at all
        rx.fileno()
    tx.close()
    with pytest.raises(kipc.ChannelClosed):
        tx.send(b"x", timeout=0)


def test_context_manager_closes(pair: tuple[Channel, Channel]) -> None:
    _tx, rx = pair
    with rx as r:
        assert r is rx
    assert rx.closed


def test_iteration(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    for i in range(3):
        tx.send(payload(6, i, 40), timeout=5)
    it = iter(rx)
    for i in range(3):
        check(next(it), 6, i)


def test_fileno_or_unsupported(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    for ch in (tx, rx):
        try:
            fd = ch.fileno()
        except kipc.Unsupported:
            continue
        assert isinstance(fd, int) and fd >= 0


def test_asyncio_roundtrip(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair

    async def main() -> list[bytes]:
        recv_task = asyncio.ensure_future(rx.arecv(timeout=10))  # waits before anything is sent
        await asyncio.sleep(0.01)
        await tx.asend(b"async-1", timeout=10)
        first = await recv_task
        await tx.asend(b"async-2", timeout=10)
        second = await rx.arecv(timeout=10)
        with pytest.raises(kipc.Timeout):
            await rx.arecv(timeout=0.05)
        with pytest.raises(kipc.WouldBlock):
            await rx.arecv(timeout=0)
        return [first, second]

    assert asyncio.run(main()) == [b"async-1", b"async-2"]


def test_a_timed_out_call_names_the_channel_and_its_timeout(pair: tuple[Channel, Channel]) -> None:
    """The timed hot path (plain bytes, default codec: no Deadline object where the transport takes a
    float deadline) still says what timed out and after how long, for float and int timeouts."""
    _tx, rx = pair
    for timeout, shown in ((0.05, "0.05"), (1, "1")):
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout) as e:
            rx.recv(timeout=timeout)
        assert time.monotonic() - t0 >= timeout * 0.9
        assert str(e.value).endswith(f"timed out after {shown} s") and rx.url in str(e.value), str(e.value)
    # the general path (a codec: a Deadline reaches the transport, C included) words it the same,
    # without rounding the timeout the user wrote
    codec, rx.codec = rx.codec, kipc.get_codec("json")
    try:
        with pytest.raises(kipc.Timeout) as e:
            rx.recv(timeout=0.05123456)
        assert str(e.value) == f"recv on {rx.url} timed out after 0.05123456 s", str(e.value)
    finally:
        rx.codec = codec


def test_bad_arguments(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    with pytest.raises(TypeError):
        tx.send("text is not bytes", timeout=1)
    with pytest.raises(TypeError):
        tx.send(12345, timeout=1)
    for bad in (-1, float("nan"), 1e300, 10**400, -10**400):
        with pytest.raises(kipc.InvalidArgument):
            rx.recv(timeout=bad)
    with pytest.raises(TypeError):
        rx.recv(timeout="1")
    with pytest.raises(TypeError):
        rx.recv(timeout=True)
    with pytest.raises(TypeError):
        tx.send(b"x", bogus=1)
    # nothing was sent by the refused calls
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)


def test_unsupported_knob(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    for knob in ("type", "priority"):
        if knob not in type(tx).send_knobs:
            with pytest.raises(kipc.Unsupported):
                tx.send(b"x", timeout=1, **{knob: 1})
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)


def test_codec_assigned_after_open_applies_to_every_call(pair: tuple[Channel, Channel]) -> None:
    """the untimed and timed hot paths (default codec) follow a codec assigned later"""
    tx, rx = pair
    tx.codec = rx.codec = kipc.get_codec("json")
    tx.send({"n": 1})
    tx.send({"n": 2}, timeout=5)
    assert rx.recv() == {"n": 1}
    assert rx.recv(timeout=5) == {"n": 2}
    tx.codec = rx.codec = kipc.get_codec(None)
    tx.send(b"raw", timeout=5)
    assert rx.recv() == b"raw"


def test_codecs(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    tx.codec = rx.codec = kipc.get_codec("msgpack")
    tx.send({"a": [1, 2, 3]}, timeout=5)
    assert rx.recv(timeout=5) == {"a": [1, 2, 3]}
    tx.codec = rx.codec = kipc.get_codec("json")
    tx.send([1, "two", None], timeout=5)
    assert rx.recv(timeout=5) == [1, "two", None]


def test_buffer_protocol_inputs(pair: tuple[Channel, Channel]) -> None:
    tx, rx = pair
    tx.send(bytearray(b"ba"), timeout=5)
    tx.send(memoryview(b"xxmvxx")[2:4], timeout=5)
    import array

    tx.send(array.array("I", [1, 2]), timeout=5)
    assert rx.recv(timeout=5) == b"ba"
    assert rx.recv(timeout=5) == b"mv"
    assert rx.recv(timeout=5) == array.array("I", [1, 2]).tobytes()
