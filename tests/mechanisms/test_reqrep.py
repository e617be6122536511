"""kipc.Server / kipc.Client (request/reply) on ring://, unix:// and tcp:// with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import kipc
from kipc import testing

SCHEMES = ["ring", "unix", "tcp"]


def _url(scheme: str) -> str:
    if scheme == "tcp":
        return "tcp://127.0.0.1:0"
    return f"{scheme}://{testing.unique_name('rr')}"


@pytest.fixture(params=SCHEMES)
def server(request: pytest.FixtureRequest) -> Iterator[kipc.Server]:
    with kipc.Server(_url(request.param), create=True, codec="json") as s:
        yield s


def _serve(server: kipc.Server, n: int) -> threading.Thread:
    def run() -> None:
        for _ in range(n):
            req = server.recv(timeout=20)
            req.reply({"echo": req.data, "by": os.getpid()})

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_request_reply_round_trip(server: kipc.Server) -> None:
    t = _serve(server, 3)
    with kipc.Client(server.url, codec="json") as c:
        for i in range(3):
            assert c.request({"i": i}, timeout=10) == {"echo": {"i": i}, "by": os.getpid()}
    t.join(10)


def test_request_timeout_then_late_reply_is_dropped(server: kipc.Server) -> None:
    with kipc.Client(server.url, codec="json") as c:
        with pytest.raises(kipc.Timeout):
            c.request("first", timeout=0.2)
        req = server.recv(timeout=5)  # the first request, answered too late
        assert req.data == "first"
        req.reply("late")
        t = _serve(server, 1)
        assert c.request("second", timeout=10) == {"echo": "second", "by": os.getpid()}
        t.join(10)


def test_eight_clients_two_server_threads_no_cross_talk(server: kipc.Server) -> None:
    """8 client threads x 50 requests, 2 server threads: every request answered once, with its own reply."""
    per, clients = 50, 8
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                req = server.recv(timeout=0.2)
            except kipc.DeadlineExceeded:
                continue
            req.reply(req.data)

    servers = [threading.Thread(target=serve, daemon=True) for _ in range(2)]
    for t in servers:
        t.start()

    def client(k: int) -> None:
        try:
            with kipc.Client(server.url, codec="json") as c:
                for i in range(per):
                    assert c.request([k, i], timeout=20) == [k, i]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    for t in servers:
        t.join(5)
    assert not errors, errors[:3]


_SERVER_PROC = """
import sys, kipc
with kipc.Server(sys.argv[1], create=True) as s:
    print("URL", s.url, flush=True)
    for req in s:
        if req.data == b"die":
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)
        req.reply(req.data.upper())
"""


@pytest.mark.parametrize("scheme", SCHEMES)
def test_server_dies_mid_request_client_gets_peergone(scheme: str) -> None:
    with testing.spawn(_SERVER_PROC, _url(scheme), ready=False) as child:
        line = child.readline(timeout=10)
        url = line.split()[1]
        with kipc.Client(url) as c:
            assert c.request(b"hi", timeout=10) == b"HI"
            t0 = time.monotonic()
            with pytest.raises((kipc.PeerGone, kipc.Timeout)) as ei:
                c.request(b"die", timeout=5)
            took = time.monotonic() - t0
        child.wait(10)
    assert isinstance(ei.value, kipc.PeerGone), f"{ei.value!r} after {took:.2f} s"
    assert took < 2.0
    # the SIGKILLed server could not remove its ring or socket file: kipc gc's job, as documented
    if scheme != "tcp":
        kipc.remove(url)


_CLIENT_PROC = """
import sys, kipc
c = kipc.Client(sys.argv[1], codec="json")
print("READY", flush=True)
c.request("x", timeout=30)
"""


def test_reply_to_a_dead_client_is_dropped(server: kipc.Server) -> None:
    with testing.spawn(_CLIENT_PROC, server.url) as child:
        req = server.recv(timeout=10)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        pid = child.pid
    t0 = time.monotonic()
    req.reply({"late": True})  # the client is gone: dropped (False) or buffered for a dead socket
    assert time.monotonic() - t0 < 2.0
    # the server is unharmed
    t = _serve(server, 1)
    with kipc.Client(server.url, codec="json") as c:
        assert c.request(1, timeout=10) == {"echo": 1, "by": os.getpid()}
    t.join(10)
    if server.url.startswith("ring://"):  # the SIGKILLed client's reply ring: gc's job, as documented
        kipc.remove(f"{server.url}.r{pid}x1")


def test_async_server_and_clients(server: kipc.Server) -> None:
    async def main() -> list[object]:
        async def serve() -> None:
            for _ in range(6):
                req = await server.arecv(timeout=10)
                await req.areply(req.data)

        task = asyncio.create_task(serve())
        out = []
        with kipc.Client(server.url, codec="json") as a, kipc.Client(server.url, codec="json") as b:
            for i in range(3):
                out.append(await a.arequest(("a", i), timeout=10))
                out.append(await b.arequest(("b", i), timeout=10))
        await asyncio.wait_for(task, 10)
        return out

    assert asyncio.run(main()) == [[k, i] for i in range(3) for k in ("a", "b")]


def test_bad_scheme_and_malformed_requests() -> None:
    with pytest.raises(kipc.InvalidArgument):
        kipc.Server(f"sysvmq://{testing.unique_key()}", create=True)
    url = f"ring://{testing.unique_name('rr')}"
    with kipc.Server(url, create=True) as s:
        with kipc.open(url) as raw:
            raw.send(b"garbage")
            raw.send(b"KRQ1" + b"\0" * 8 + b"\xff\xff")  # a return address longer than the message
            raw.send(b"KRQ1" + b"\0" * 8 + b"\x02\x00" + b"\xc3\xa9" + b"data")  # a return address not ASCII
        t = threading.Thread(target=lambda: s.recv(timeout=5).reply(b"ok"), daemon=True)
        t.start()
        with kipc.Client(url) as c:
            assert c.request(b"real", timeout=10) == b"ok"
        t.join(10)
        assert s.malformed == 3


def test_a_reply_to_an_unusable_return_address_is_dropped() -> None:
    url = f"ring://{testing.unique_name('rr')}"
    with kipc.Server(url, create=True) as s:
        with kipc.open(url) as raw:
            raw.send(b"KRQ1" + b"\0" * 8 + b"\x04\x00" + b"a/b!" + b"data")  # ASCII, but no ring name
        req = s.recv(timeout=5)
        assert req.data == b"data"
        assert req.reply(b"x") is False  # dropped, the server unharmed
        t = threading.Thread(target=lambda: s.recv(timeout=5).reply(b"ok"), daemon=True)
        t.start()
        with kipc.Client(url) as c:
            assert c.request(b"real", timeout=10) == b"ok"
        t.join(10)


def test_ring_servers_share_the_load() -> None:
    url = f"ring://{testing.unique_name('rr')}"
    with kipc.Server(url, create=True) as s1, kipc.Server(url) as s2:
        served = {1: 0, 2: 0}
        stop = threading.Event()

        def serve(s: kipc.Server, k: int) -> None:
            while not stop.is_set():
                try:
                    req = s.recv(timeout=0.1)
                except kipc.DeadlineExceeded:
                    continue
                served[k] += 1
                time.sleep(0.001)  # a little work, so both get some
                req.reply(req.data)

        ts = [threading.Thread(target=serve, args=(s, k), daemon=True) for k, s in ((1, s1), (2, s2))]
        for t in ts:
            t.start()

        def client() -> None:
            with kipc.Client(url) as c:
                for i in range(100):
                    assert c.request(b"%d" % i, timeout=10) == b"%d" % i

        cs = [threading.Thread(target=client) for _ in range(4)]
        for t in cs:
            t.start()
        for t in cs:
            t.join(60)
        stop.set()
        for t in ts:
            t.join(5)
        assert served[1] + served[2] == 400
        assert served[1] > 0 and served[2] > 0


def test_close_from_another_thread_wakes_server_recv(server: kipc.Server) -> None:
    out: list[BaseException] = []

    def blocked() -> None:
        try:
            server.recv()
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    server.close()
    t.join(5)
    assert not t.is_alive() and isinstance(out[0], kipc.ChannelClosed), out
    assert time.monotonic() - t0 < 1.5
