"""nats:// sync request() on the calling thread's own connection (``request_conn="thread"``).

The requesting thread publishes and reads its reply itself (``_direct``); whatever that
connection cannot do safely goes the shared way (the loop thread's connection): a thread that
runs an event loop, a connection the server dropped while it sat idle, more threads than the
cap. A real nats-server; the responders are kipc ``requests()`` on other handles.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing
from kipc.transports.nats import NatsChannel, _direct
from kipc.transports.nats import channel as nats_channel


def _url(nats_url: str) -> str:
    return f"{nats_url}/{testing.unique_name('rc')}"


class _Echo:
    """A responder on its own handle and thread: answers {"echo": value}."""

    def __init__(self, url: str) -> None:
        self.ch = NatsChannel(url, codec="json")
        self.reqs = self.ch.requests()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                req = self.reqs.next(timeout=0.1)
            except kipc.Timeout:
                continue
            req.reply({"echo": req.value})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.reqs.close()
        self.ch.close()


@pytest.fixture
def echo_url(nats_url: str) -> Iterator[str]:
    with NatsChannel(_url(nats_url), create=True) as owner:
        echo = _Echo(owner.url)
        try:
            yield owner.url
        finally:
            echo.close()


def test_each_requesting_thread_gets_its_own_connection_and_close_closes_them(echo_url: str) -> None:
    ch = NatsChannel(echo_url, codec="json", request_conn="thread")
    try:
        assert ch.request(0, timeout=5) == {"echo": 0}
        assert ch._conns == []  # a thread's first request takes the shared path (one-off requests)
        assert ch.request(1, timeout=5) == {"echo": 1}
        mine = ch._my_conn.conn
        assert mine.nc.is_connected and ch._conns == [mine]
        got: dict[int, object] = {}
        ready = threading.Barrier(3)

        def caller(k: int) -> None:
            got[k] = [ch.request({"k": k, "i": i}, timeout=5) for i in range(20)]
            ready.wait(10)  # every thread still alive: three connections at once
            ready.wait(10)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        ready.wait(10)
        conns = list(ch._conns)
        assert len(conns) == 3 and len({id(c.nc) for c in conns}) == 3
        ready.wait(10)
        for t in threads:
            t.join(10)
        assert got == {k: [{"echo": {"k": k, "i": i}} for i in range(20)] for k in range(2)}
    finally:
        ch.close()
    assert ch._conns == [] and all(c.nc is None and c.loop.is_closed() for c in conns)


def test_threads_that_ended_give_their_connections_back_and_the_cap_holds(
        echo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nats_channel, "_MAX_THREAD_CONNS", 3)
    with NatsChannel(echo_url, codec="json", request_conn="thread") as ch:
        done: list[object] = []
        first: list[_direct.ThreadConn] = []
        for i in range(6):  # one after another: each new one closes the connections of ended threads
            t = threading.Thread(target=lambda i=i: done.extend(ch.request(i, timeout=5) for _ in range(2)))
            t.start()
            t.join(10)
            if i == 0:
                first = list(ch._conns)
        assert done == [{"echo": i} for i in range(6) for _ in range(2)]
        assert len(ch._conns) == 1 and first[0].loop.is_closed()
        # more threads at once than the cap: the rest share the loop thread's connection, correctly
        gate = threading.Barrier(6)
        results: dict[int, object] = {}

        def hold(k: int) -> None:
            gate.wait(10)
            results[k] = [ch.request(k, timeout=5) for _ in range(2)]
            gate.wait(10)

        threads = [threading.Thread(target=hold, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert results == {k: [{"echo": k}] * 2 for k in range(6)}
        assert len(ch._conns) <= 3


def test_a_thread_running_an_event_loop_takes_the_shared_path(echo_url: str) -> None:
    with NatsChannel(echo_url, codec="json", request_conn="thread") as ch:
        async def inside() -> object:
            return ch.request("from a coroutine", timeout=5)  # blocking call inside a loop: still works

        assert asyncio.run(inside()) == {"echo": "from a coroutine"}
        assert ch._conns == []


def test_a_connection_the_server_dropped_while_idle_is_never_used(nats_url: str) -> None:
    """After a server restart the thread's idle connection is found closed before anything is
    published on it: the request goes the shared way (reconnected by then), the next one opens a
    fresh thread connection."""
    with testing.nats_server() as server:
        url = f"{server.url}/{testing.unique_name('rc')}"
        with NatsChannel(url, create=True, codec="json", request_conn="thread") as ch:
            echo = _Echo(url)
            try:
                assert ch.request(0, timeout=5) == {"echo": 0}
                assert ch.request(1, timeout=5) == {"echo": 1}
                old = ch._my_conn.conn
                server.stop(kill=True)
                server.start()
                time.sleep(_direct.IDLE + 0.5)  # the shared connection reconnects meanwhile
                assert ch.request(2, timeout=20) == {"echo": 2}
                assert old.loop.is_closed() and old not in ch._conns
                assert ch.request(3, timeout=20) == {"echo": 3}
                assert ch._my_conn.conn is not old and ch._my_conn.conn.nc.is_connected
            finally:
                echo.close()


@pytest.mark.parametrize("mode", ["own", "thread", "shared"])
def test_timeouts_and_no_responder_on_every_path(nats_url: str, mode: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json", request_conn=mode) as ch:
        with pytest.raises(kipc.NotFound, match="no responder"):
            ch.request(0, timeout=5)
        with pytest.raises(kipc.NotFound, match="no responder"):
            ch.request(0, timeout=5)  # the second: on the thread's own connection (thread mode)
        with ch.requests() as silent:
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                ch.request(1, timeout=0.3)
            assert 0.25 < time.monotonic() - t0 < 3
            assert silent.next(timeout=2).value == 1
        assert (ch._conns != []) == (mode == "thread")
        assert (ch._requester is not None) == (mode == "own")


def test_request_conn_is_checked(nats_url: str) -> None:
    with pytest.raises(kipc.InvalidArgument, match="request_conn"):
        NatsChannel(_url(nats_url), create=True, request_conn="both")


CTRL_C = """
import sys, time, kipc
from kipc.transports.nats import NatsChannel
with NatsChannel(sys.argv[1], create=True, request_conn="thread") as ch, ch.requests() as silent:
    for _ in range(2):  # the second one on the thread's own connection
        try:
            ch.request(b"warm", timeout=0.2)
        except kipc.Timeout:
            pass
    assert ch._conns, "no thread connection"
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        ch.request(b"wait", timeout=30)
    except KeyboardInterrupt:
        print("INTERRUPTED", round(time.monotonic() - t0, 1), flush=True)
    try:
        ch.request(b"again", timeout=0.3)  # the connection still works after the interrupt
    except kipc.Timeout:
        print("TIMEOUT", flush=True)
"""


def test_ctrl_c_interrupts_a_request_on_the_thread_connection(nats_url: str) -> None:
    with testing.spawn(CTRL_C, _url(nats_url)) as child:  # returns once the child printed READY
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGINT)
        line = child.readline(timeout=10)
        assert line.startswith("INTERRUPTED") and float(line.split()[1]) < 5, line
        assert child.readline(timeout=10) == "TIMEOUT"
        assert child.wait(20) == 0, child.stderr_now()


def test_making_the_thread_connection_keeps_to_the_request_timeout(nats_url: str) -> None:
    """The connect for a thread's own connection gets at most half the request's time (a
    server that accepts but never answers must not stretch a request past its timeout)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never speaks NATS
    try:
        with NatsChannel(_url(nats_url), create=True, codec="json", request_conn="thread") as ch, ch.requests():
            with pytest.raises(kipc.Timeout):
                ch.request(0, timeout=0.2)  # the first: shared path
            ch._conn_args = ([f"nats://127.0.0.1:{silent.getsockname()[1]}"], *ch._conn_args[1:])
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                ch.request(1, timeout=1.0)  # the connect gives up after 0.5 s; the shared path waits
            assert time.monotonic() - t0 < 1.6
            assert ch._conns == []
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                ch.request(2, timeout=1.0)  # no new connect attempt for a while: straight to shared
            assert time.monotonic() - t0 < 1.3
    finally:
        silent.close()


def test_shared_opens_no_connection_beyond_the_handles(echo_url: str) -> None:
    """request_conn="shared": a thread's repeated requests use the handle's one connection
    (operators' limits, auth callouts and monitoring see only it)."""
    with NatsChannel(echo_url, codec="json", request_conn="shared") as ch:
        for i in range(3):
            assert ch.request(i, timeout=5) == {"echo": i}
        assert ch._conns == [] and ch._requester is None
