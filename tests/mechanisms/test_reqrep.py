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


# -- the ring:// hot path in C (_native/_reqrep.c): bytes in, bytes out, the default codec --------------
def _ring_url() -> str:
    return f"ring://{testing.unique_name('rc')}"


def _serve_bytes(server: kipc.Server, n: int, *, tag: bytes = b"") -> threading.Thread:
    def run() -> None:
        for _ in range(n):
            req = server.recv(timeout=20)
            assert isinstance(req.data, bytes)
            assert req.reply(tag + req.data) is True

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_c_path_late_reply_dropped_and_malformed_replies_counted() -> None:
    with kipc.Server(_ring_url(), create=True) as s, kipc.Client(s.url) as c:
        with pytest.raises(kipc.Timeout, match=r"timed out after 0\.2 s"):
            c.request(b"first", timeout=0.2)
        late = s.recv(timeout=5)
        assert late.data == b"first" and isinstance(late.id, int) and repr(late).startswith("<Request ")
        assert late.reply(b"late") is True  # lands in the client's ring: its next request drops it
        with kipc.open(f"ring://{c._return.decode()}") as into_reply_ring:  # and garbage before it
            into_reply_ring.send(b"junk")
            into_reply_ring.send(b"KRP1" + b"\0" * 7)  # one byte short of a reply header
            into_reply_ring.send(b"KRQ1" + b"\0" * 8 + b"x")  # a request where a reply belongs
        t = _serve_bytes(s, 1, tag=b"re:")
        assert c.request(b"second", timeout=10) == b"re:second"
        t.join(10)
        assert c.malformed == 3  # the late reply is not malformed: it is dropped silently
        with pytest.raises(kipc.InvalidArgument, match="already answered"):
            late.reply(b"again")


def test_c_path_malformed_requests_counted_server_unharmed() -> None:
    with kipc.Server(_ring_url(), create=True) as s:
        with kipc.open(s.url) as raw:
            for bad in (b"", b"KRQ1", b"KRQ1" + b"\0" * 9,  # shorter than the header
                        b"KRQX" + b"\0" * 10,  # wrong magic
                        b"KRQ1" + b"\0" * 8 + b"\x05\x00" + b"abc",  # the return address runs past the end
                        b"KRQ1" + b"\0" * 8 + b"\x01\x00" + b"\xff" + b"p"):  # not ASCII
                raw.send(bad)
            raw.send(b"KRQ1" + (7).to_bytes(8, "little") + b"\x00\x00" + b"no return address")
        req = s.recv(timeout=5)
        assert (req.id, req.data) == (7, b"no return address")
        assert s.malformed == 6
        assert req.reply(b"x") is False  # an empty return address names no ring: dropped


def test_c_path_reply_variants() -> None:
    """timeout=, a non-bytes payload, and the first reply to a client (not cached yet) take the Python path."""
    with kipc.Server(_ring_url(), create=True) as s, kipc.Client(s.url) as c:
        def serve() -> None:
            r = s.recv(timeout=10)
            assert isinstance(r.data, bytes)
            assert r.reply(bytearray(b"ba:") + r.data) is True  # not bytes: the codec's encode
            r = s.recv(timeout=10)
            assert isinstance(r.data, bytes)
            assert r.reply(b"t:" + r.data, timeout=5) is True  # timeout=
            r = s.recv(timeout=10)
            assert r.reply(memoryview(b"mv")) is True

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        assert c.request(b"1", timeout=10) == b"ba:1"
        assert c.request(bytearray(b"2"), timeout=10) == b"t:2"  # a bytes-like request
        assert c.request(memoryview(b"3"), timeout=10) == b"mv"
        t.join(10)
        with pytest.raises(kipc.WouldBlock):
            c.request(b"nobody answers", timeout=0)
        queued = s.recv(timeout=0)  # the timeout=0 request is queued: a non-blocking recv takes it
        assert queued.data == b"nobody answers" and queued.reply(b"late") is True
        with pytest.raises(kipc.WouldBlock):
            s.recv(timeout=0)
        with pytest.raises(TypeError):
            s.recv(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(kipc.InvalidArgument):
            c.request(b"x", timeout=-1)
        t = _serve_bytes(s, 1)
        assert c.request(b"4", timeout=10) == b"4"  # the late reply went first, dropped
        t.join(10)


def test_c_path_more_clients_than_the_reply_ring_cache() -> None:
    """70 clients (the server keeps 64 reply rings open): the oldest are closed and reopened on demand."""
    from kipc import reqrep

    n = reqrep._CACHE + 6
    with kipc.Server(_ring_url(), create=True) as s:
        clients = [kipc.Client(s.url, capacity=4096) for _ in range(n)]
        try:
            t = _serve_bytes(s, 2 * n)
            for rounds in range(2):
                for k, c in enumerate(clients):
                    assert c.request(b"%d.%d" % (rounds, k), timeout=10) == b"%d.%d" % (rounds, k)
            t.join(10)
            assert len(s._replies) == reqrep._CACHE == len(s._senders)
        finally:
            for c in clients:
                c.close()


def test_c_path_many_client_threads_two_server_threads() -> None:
    per, clients = 200, 8
    errors: list[BaseException] = []
    stop = threading.Event()
    with kipc.Server(_ring_url(), create=True) as s:
        def serve() -> None:
            while not stop.is_set():
                try:
                    req = s.recv(timeout=0.1)
                except kipc.DeadlineExceeded:
                    continue
                req.reply(req.data)

        def client(k: int, shared: kipc.Client) -> None:
            try:
                with kipc.Client(s.url) as own:
                    for i in range(per):
                        msg = b"%d:%d" % (k, i)
                        assert own.request(msg, timeout=20) == msg
                        assert shared.request(b"s" + msg, timeout=20) == b"s" + msg  # threads share one
            except BaseException as e:
                errors.append(e)

        servers = [threading.Thread(target=serve, daemon=True) for _ in range(2)]
        for t in servers:
            t.start()
        with kipc.Client(s.url) as shared:
            threads = [threading.Thread(target=client, args=(k, shared)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        stop.set()
        for t in servers:
            t.join(5)
    assert not errors, errors[:3]


_RING_SERVER = """
import os, sys, kipc
with kipc.Server(sys.argv[1], create=sys.argv[2] == "create") as s:
    print("READY", flush=True)
    for req in s:
        if req.data == b"stop":
            req.reply(b"stopped")
            break
        req.reply(req.data + b"@%d" % os.getpid())
"""


def test_c_path_two_server_processes_share_the_load() -> None:
    url = _ring_url()
    per, clients = 150, 4
    errors: list[BaseException] = []
    served: list[int] = []
    lock = threading.Lock()
    with testing.spawn(_RING_SERVER, url, "create") as first, testing.spawn(_RING_SERVER, url, "join") as second:
        def client(k: int) -> None:
            try:
                with kipc.Client(url) as c:
                    for i in range(per):
                        got = c.request(b"%d:%d" % (k, i), timeout=20)
                        assert isinstance(got, bytes)
                        body, _, pid = got.partition(b"@")
                        assert body == b"%d:%d" % (k, i)
                        with lock:
                            served.append(int(pid))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with kipc.Client(url) as c:  # a stop for each server (whichever takes it)
            for _ in range(2):
                try:
                    assert c.request(b"stop", timeout=10) == b"stopped"
                except kipc.PeerGone:
                    break  # the creator stopped first: its close ended the ring, and the other's loop with it
        first.wait(10)
        second.wait(10)
    assert not errors, errors[:3]
    assert len(served) == per * clients
    assert set(served) == {first.pid, second.pid}, "both server processes answered"


_RING_CLIENT_KILLED = """
import sys, kipc
c = kipc.Client(sys.argv[1], capacity=4096)
print("READY", flush=True)
c.request(b"x" * 100, timeout=30)
"""


def test_c_path_client_sigkilled_while_waiting() -> None:
    with kipc.Server(_ring_url(), create=True, reply_timeout=0.2) as s:
        with testing.spawn(_RING_CLIENT_KILLED, s.url) as child:
            req = s.recv(timeout=10)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            pid = child.pid
        assert req.reply(b"first") is True  # the dead client's ring still has room: buffered, never read
        # the same return address again: its ring fills up; the reply waits reply_timeout, then is dropped
        ret = req._to
        with kipc.open(s.url) as raw:
            for i in range(12):
                raw.send(b"KRQ1" + i.to_bytes(8, "little") + len(ret).to_bytes(2, "little") + ret + b"again")
        t0 = time.monotonic()
        answers = [s.recv(timeout=5).reply(b"y" * 500) for _ in range(12)]  # 4 KiB hold 7 of them
        took = time.monotonic() - t0
        assert answers[0] is True and answers[-1] is False
        assert took < 12 * 0.2 + 2  # each dropped reply waited at most reply_timeout
        t = _serve_bytes(s, 1)  # the server is unharmed
        with kipc.Client(s.url) as c:
            assert c.request(b"live", timeout=10) == b"live"
        t.join(10)
    kipc.remove(f"{s.url}.r{pid}x1")  # the SIGKILLed client's reply ring: gc's job, as documented


def test_c_path_client_closed_from_another_thread_while_waiting() -> None:
    with kipc.Server(_ring_url(), create=True) as s:
        c = kipc.Client(s.url)
        out: list[BaseException] = []

        def waiting() -> None:
            try:
                c.request(b"never answered", timeout=30)
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=waiting)
        t.start()
        s.recv(timeout=10)  # it was sent; now the client waits for the reply
        c.close()
        t.join(5)
        assert not t.is_alive() and isinstance(out[0], kipc.ChannelClosed), out
        with pytest.raises(kipc.ChannelClosed):
            c.request(b"after close", timeout=1)


def test_c_path_reply_after_the_client_closed_is_dropped() -> None:
    with kipc.Server(_ring_url(), create=True) as s:
        with kipc.Client(s.url) as c:
            t = _serve_bytes(s, 1)
            assert c.request(b"a", timeout=10) == b"a"  # its reply ring is now in the server's cache
            t.join(10)
            with kipc.open(s.url) as raw:
                raw.send(b"KRQ1" + b"\0" * 8 + len(c._return).to_bytes(2, "little") + c._return + b"b")
        req = s.recv(timeout=5)
        assert req.reply(b"to nobody") is False  # the client closed (and removed) its ring: dropped
        assert c._return not in s._senders


def test_c_path_request_ring_full_times_out_then_server_close_is_peergone() -> None:
    s = kipc.Server(_ring_url(), create=True, capacity=4096)
    try:
        with kipc.Client(s.url) as c:
            messages = []
            for _ in range(10):  # nobody serves: each request waits 0.05 s, until the ring has no room
                with pytest.raises(kipc.Timeout) as ei:
                    c.request(b"z" * 1000, timeout=0.05)
                messages.append(str(ei.value))
                if "stayed full" in messages[-1]:
                    break
            assert "timed out after 0.05 s" in messages[0] and "stayed full" not in messages[0]
            assert "stayed full" in messages[-1], messages
            for bad, err in (("1", TypeError), (-1, kipc.InvalidArgument),
                             (float("nan"), kipc.InvalidArgument), (1e30, kipc.InvalidArgument)):
                with pytest.raises(err):
                    c.request(b"x", timeout=bad)  # type: ignore[arg-type]
            s.close()  # the creating server closes its ring: the client is told, not left waiting
            t0 = time.monotonic()
            with pytest.raises(kipc.PeerGone, match="closed its ring"):
                c.request(b"anyone?", timeout=5)
            assert time.monotonic() - t0 < 1
    finally:
        s.close()


def test_c_path_a_busy_shared_client_times_out_waiting_for_its_turn() -> None:
    with kipc.Server(_ring_url(), create=True) as s, kipc.Client(s.url) as c:
        out: list[BaseException] = []

        def slow() -> None:
            try:
                c.request(b"slow", timeout=3)
            except BaseException as e:
                out.append(e)

        first = threading.Thread(target=slow)
        first.start()
        assert s.recv(timeout=5).data == b"slow"  # sent: the first request now holds the client
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            c.request(b"second", timeout=0.3)
        assert time.monotonic() - t0 < 2
        first.join(5)
        assert len(out) == 1 and isinstance(out[0], kipc.Timeout), out
        with pytest.raises(kipc.WouldBlock):
            s.recv(timeout=0)  # the second request was never sent


def test_c_path_random_bytes_in_both_rings() -> None:
    """Untrusted input: 300 random messages (many with the right magic) into the request ring and
    into a client's reply ring: each is parsed or counted as malformed, nothing crashes."""
    import random

    rnd = random.Random(14)

    def junk(magic: bytes) -> bytes:
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
        return (magic + body) if rnd.random() < 0.7 else body

    with kipc.Server(_ring_url(), create=True, capacity=1 << 16) as s, kipc.Client(s.url) as c:
        with kipc.open(s.url) as raw:
            for _ in range(300):
                raw.send(junk(b"KRQ1"))
        parsed = 0
        while True:
            try:
                req = s.recv(timeout=0)
            except kipc.WouldBlock:
                break
            parsed += 1
            assert isinstance(req.data, bytes) and 0 <= req.id < 1 << 64
        assert parsed + s.malformed == 300 and s.malformed > 0
        with kipc.open(f"ring://{c._return.decode()}") as into_reply:
            for _ in range(300):
                into_reply.send(junk(b"KRP1"))
        t = _serve_bytes(s, 1)
        assert c.request(b"still fine", timeout=10) == b"still fine"  # after the junk: dropped or counted
        t.join(10)
        assert 0 < c.malformed <= 300
