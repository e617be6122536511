"""tcp://: free ports, loopback by default, TCP_NODELAY, HMAC auth both ways, handshake timeouts."""

from __future__ import annotations

import os
import socket
import time

import pytest

import kipc
from kipc import testing
from kipc.transports.tcp import MAGIC

from ..helpers import REPO, check, payload

ROOT = REPO

CLIENT = """
import sys
sys.path.insert(0, sys.argv[2])
import kipc
from tests.helpers import payload
auth = sys.argv[3].encode() if len(sys.argv) > 3 else None
try:
    ch = kipc.open(sys.argv[1], timeout=10, auth=auth)
except kipc.KipcError as e:
    print("REFUSED", type(e).__name__, e, flush=True)
    raise SystemExit(0)
print("READY", flush=True)
for i in range(100):
    ch.send(payload(31, i, 20 + i * 37), timeout=10)
ch.close()
"""


def test_port_zero_nodelay_and_a_child_peer() -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        port = int(lst.url.rsplit(":", 1)[1])
        assert lst.url == f"tcp://127.0.0.1:{port}" and port > 0
        with testing.spawn(CLIENT, lst.url, ROOT, ready=False) as child, lst.accept(timeout=10) as ch:
            child.expect("READY", 10)
            s = socket.socket(fileno=os.dup(ch.fileno()))
            try:
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            finally:
                s.close()
            for i in range(100):
                check(ch.recv(timeout=10), 31, i)
            with pytest.raises(kipc.ChannelClosed):
                ch.recv(timeout=10)
            child.check(10)


def test_loopback_only_unless_allow_remote() -> None:
    for url in ("tcp://0.0.0.0:0", "tcp://[::]:0"):
        with pytest.raises(kipc.PermissionDenied, match="allow_remote"):
            kipc.listen(url)
    with kipc.listen("tcp://0.0.0.0:0", allow_remote=True) as lst:
        assert lst.url.startswith("tcp://0.0.0.0:")
    with kipc.listen("tcp://localhost:0") as lst:  # a name that resolves to loopback is fine
        assert "127.0.0.1" in lst.url or "[::1]" in lst.url


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 support in Python", pytrace=False)
    try:
        lst = kipc.listen("tcp://[::1]:0")
    except kipc.KipcError as e:
        pytest.fail(f"cannot bind [::1] here: {e}", pytrace=False)
    with lst, kipc.open(lst.url, timeout=5) as c, lst.accept(timeout=5) as s:
        assert lst.url.startswith("tcp://[::1]:")
        c.send(b"v6", timeout=5)
        assert s.recv(timeout=5) == b"v6"


def test_auth_right_key_between_processes() -> None:
    with kipc.listen("tcp://127.0.0.1:0", auth=b"s3cret") as lst:
        with testing.spawn(CLIENT, lst.url, ROOT, "s3cret", ready=False) as child, lst.accept(timeout=10) as ch:
            child.expect("READY", 10)
            for i in range(100):
                check(ch.recv(timeout=10), 31, i)
            child.check(10)


def test_auth_wrong_key_refused_on_both_sides_without_decoding_payload(caplog: pytest.LogCaptureFixture) -> None:
    with kipc.listen("tcp://127.0.0.1:0", auth=b"s3cret") as lst:
        with testing.spawn(CLIENT, lst.url, ROOT, "guess", ready=False) as child:
            with caplog.at_level("WARNING", logger="kipc"):
                deadline = time.monotonic() + 10
                while "failed authentication" not in caplog.text and time.monotonic() < deadline:
                    with pytest.raises(kipc.Timeout):
                        lst.accept(timeout=0.2)  # refused, logged and skipped: no channel, no payload decoded
            assert "failed authentication" in caplog.text
            line = child.expect("REFUSED", 10)
            assert "PermissionDenied" in line and "wrong auth key" in line
            child.check(10)
        # the listener still serves the right key afterwards
        with testing.spawn(CLIENT, lst.url, ROOT, "s3cret", ready=False) as child, lst.accept(timeout=10) as ch:
            check(ch.recv(timeout=10), 31, 0)


def test_auth_mismatch_in_presence(caplog: pytest.LogCaptureFixture) -> None:
    # client without a key, server with one: the client reads MAGIC as an absurd length
    with kipc.listen("tcp://127.0.0.1:0", auth=b"k", handshake_timeout=0.5) as lst, \
            kipc.open(lst.url, timeout=5) as c:
        with caplog.at_level("WARNING", logger="kipc"), pytest.raises(kipc.Timeout):
            lst.accept(timeout=1)
        assert "no complete handshake within 0.5 s" in caplog.text
        with pytest.raises(kipc.ProtocolError):
            c.recv(timeout=5)
    # client with a key, server without: no challenge comes
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        t0 = time.monotonic()
        with pytest.raises(kipc.ProtocolError, match="no auth challenge"):
            kipc.open(lst.url, timeout=0.3, auth=b"k")
        assert time.monotonic() - t0 < 5
        lst.accept(timeout=5).close()


def test_a_silent_peer_cannot_stall_accept_forever() -> None:
    with kipc.listen("tcp://127.0.0.1:0", auth=b"k", handshake_timeout=0.3) as lst:
        host, port = lst.url[6:].rsplit(":", 1)
        raw = socket.create_connection((host, int(port)))
        try:
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                lst.accept(timeout=1)
            assert time.monotonic() - t0 < 5
            assert raw.recv(100).startswith(MAGIC)  # the challenge: MAGIC + nonce
            assert raw.recv(100) == b""  # then the silent peer is dropped after handshake_timeout
        finally:
            raw.close()


def test_nonces_differ_per_connection() -> None:
    with kipc.listen("tcp://127.0.0.1:0", auth=b"k", handshake_timeout=0.2) as lst:
        host, port = lst.url[6:].rsplit(":", 1)
        seen = set()
        for _ in range(2):
            raw = socket.create_connection((host, int(port)))
            try:
                with pytest.raises(kipc.Timeout):
                    lst.accept(timeout=0.5)
                seen.add(raw.recv(100))
            finally:
                raw.close()
        assert len(seen) == 2


def test_connect_refused_is_not_found() -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        url = lst.url
    with pytest.raises(kipc.NotFound):
        kipc.open(url, timeout=2)


def test_connect_timeout_when_backlog_is_full() -> None:
    # a listener that never accepts: SYNs beyond the backlog are dropped, so connect must time out
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    extra: list[kipc.Channel] = []
    try:
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            for _ in range(20):
                extra.append(kipc.open(f"tcp://127.0.0.1:{port}", timeout=0.3))
        assert time.monotonic() - t0 < 20
    finally:
        for ch in extra:
            ch.close()
        srv.close()


def test_asyncio_accept() -> None:
    import asyncio

    async def main() -> bytes:
        with kipc.listen("tcp://127.0.0.1:0") as lst:
            c = kipc.open(lst.url, timeout=5)
            s = await lst.aaccept(timeout=5)
            with c, s:
                await c.asend(payload(32, 0, 100), timeout=5)
                return bytes(await s.arecv(timeout=5))

    check(asyncio.run(main()), 32, 0)
