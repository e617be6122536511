"""nats:// sync request() on the handle's own request connection (the default, ``_requester``).

The requesting threads run the connection's private loop themselves, one at a time; the
others' requests are posted to the runner and they wait for their own replies; a watchdog
runs the loop while nobody requests. Real nats-server, real responders (kipc ``requests()``
on other handles and threads): timeouts, close from another thread, Ctrl-C, fork, many
threads at once, a requester idle past the server's ping interval, a server restart, and
nothing left behind (server connections, threads, warnings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing
from kipc.testing._nats import free_port
from kipc.transports.nats import NatsChannel, _driven

from ..helpers import assert_quiet_exit
from .test_nats_responder import _conns

_THREAD = "kipc-nats-requester"


def _url(nats_url: str) -> str:
    return f"{nats_url}/{testing.unique_name('rq')}"


def _dogs() -> int:
    return sum(1 for t in threading.enumerate() if t.name == _THREAD)


@contextlib.contextmanager
def _echo(url: str, slow_every: int = 0) -> Iterator[None]:
    """An echo responder on its own handle and thread; every ``slow_every``-th request waits
    4 x GRACE first (the requester's watchdog takes the loop meanwhile)."""
    with NatsChannel(url, codec="json") as rch:
        reqs = rch.requests()
        n = 0

        def serve() -> None:
            nonlocal n
            for req in reqs:
                n += 1
                if slow_every and n % slow_every == 0:
                    time.sleep(_driven.GRACE * 4)
                req.reply({"echo": req.value})

        t = threading.Thread(target=serve)
        t.start()
        try:
            yield
        finally:
            reqs.close()
            t.join(10)
            assert not t.is_alive()


def test_default_is_one_own_connection_per_handle_made_at_the_first_request(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, _echo(ch.url):
        assert ch._requester is None  # nothing made before the first request
        assert ch.request(0, timeout=5) == {"echo": 0}
        req = ch._requester
        assert req is not None and req.nc.is_connected
        assert [ch.request(i, timeout=5) for i in range(1, 30)] == [{"echo": i} for i in range(1, 30)]
        assert ch._requester is req and ch._conns == []
        time.sleep(_driven.GRACE * 4)  # the watchdog runs the loop now: the request takes it back
        assert ch.request("idle", timeout=5) == {"echo": "idle"}
    assert req.loop.is_closed() and req.nc is None


def test_many_threads_at_once_every_reply_reaches_its_own_caller(nats_url: str) -> None:
    """Eight threads on one handle, one connection: one runs the loop, the others post and
    wait; slow replies now and then let the watchdog take the loop between runners."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, _echo(ch.url, slow_every=13):
        got: dict[int, list[Any]] = {}
        gate = threading.Barrier(8)

        def caller(k: int) -> None:
            gate.wait(10)
            got[k] = [ch.request([k, i], timeout=20) for i in range(40)]

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert got == {k: [{"echo": [k, i]} for i in range(40)] for k in range(8)}
        assert ch._requester is not None and ch._conns == []


def test_timeout_with_a_silent_responder_and_the_late_reply_is_dropped(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as silent:
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout, match=r"request on .* timed out"):
            ch.request(1, timeout=0.3)  # the first request: it makes the connection, then waits
        assert 0.25 < time.monotonic() - t0 < 2
        assert ch._requester is not None
        req = silent.next(timeout=2)
        req.reply("late")  # nobody waits for it any more: dropped, not handed to the next caller
        got: list[Any] = []

        def answer() -> None:
            r = silent.next(timeout=5)
            r.reply(["fresh", r.value])

        t = threading.Thread(target=answer)
        t.start()
        got.append(ch.request(2, timeout=5))
        t.join(5)
        assert got == [["fresh", 2]]
        assert ch._requester._waits == {}
        t0 = time.monotonic()
        with pytest.raises(kipc.WouldBlock, match="one round trip"):
            ch.request(3, timeout=0)  # as on the shared path: one round trip's worth (2 s) for a reply
        assert 1.5 < time.monotonic() - t0 < 4
        assert silent.next(timeout=2).value == 3


@pytest.mark.parametrize("who", ["runner", "waiter"])
def test_close_from_another_thread_ends_waiting_requests(nats_url: str, who: str) -> None:
    """A request running the loop, and (``waiter``) one posted to it and waiting for its reply,
    both raise ChannelClosed promptly when another thread closes the handle."""
    with NatsChannel(_url(nats_url), create=True) as owner, owner.requests() as silent:
        ch = NatsChannel(owner.url)
        with contextlib.suppress(kipc.Timeout):
            ch.request(b"warm", timeout=0.2)  # makes the request connection
        req = ch._requester
        assert req is not None
        out: list[BaseException] = []

        def wait() -> None:
            try:
                ch.request(b"wait", timeout=30)
            except BaseException as e:
                out.append(e)

        threads = [threading.Thread(target=wait) for _ in range(1 if who == "runner" else 2)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        assert silent.next(timeout=2).data == b"warm"  # both sent: the waiter's was posted to the runner
        assert {silent.next(timeout=2).data for _ in threads} == {b"wait"}
        t0 = time.monotonic()
        ch.close()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads) and time.monotonic() - t0 < 1.5
        assert len(out) == len(threads) and all(isinstance(e, kipc.ChannelClosed) for e in out), out
        assert req.loop.is_closed()
        with pytest.raises(kipc.ChannelClosed):
            ch.request(b"after", timeout=1)


def test_a_thread_running_an_event_loop_takes_the_shared_path(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, _echo(ch.url):
        async def inside() -> object:
            return ch.request("from a coroutine", timeout=5)

        assert asyncio.run(inside()) == {"echo": "from a coroutine"}
        assert ch._requester is None


def test_idle_longer_than_the_ping_interval_keeps_the_connection(tmp_path: Path) -> None:
    """The server pings every 100 ms and drops a client after 2 unanswered; the requester sits
    idle 1.2 s: its watchdog answers the pings, the next request goes out on the same connection."""
    conf = tmp_path / "ping.conf"
    conf.write_text('ping_interval: "100ms"\nping_max: 2\n')
    with testing.nats_server(args=["-c", str(conf)]) as server:
        with NatsChannel(_url(server.url), create=True, codec="json") as ch, _echo(ch.url):
            assert ch.request("before", timeout=5) == {"echo": "before"}
            req = ch._requester
            assert req is not None
            time.sleep(1.2)
            assert ch.request("after", timeout=5) == {"echo": "after"}
            assert ch._requester is req and req.nc.stats["reconnects"] == 0 and req.nc.is_connected


def test_server_restart_requests_resume_on_the_same_requester() -> None:
    with testing.nats_server() as server:
        with NatsChannel(_url(server.url), create=True, codec="json") as ch, _echo(ch.url):
            assert [ch.request(i, timeout=5) for i in range(5)] == [{"echo": i} for i in range(5)]
            req = ch._requester
            assert req is not None
            server.stop(kill=True)
            server.start()
            end = time.monotonic() + 30
            while True:  # the first requests may find either side still reconnecting
                try:
                    assert ch.request("back", timeout=1) == {"echo": "back"}
                    break
                except (kipc.Timeout, kipc.NotFound, kipc.ChannelClosed):
                    assert time.monotonic() < end, "requests did not resume after the restart"
                    time.sleep(0.1)
            assert [ch.request(i, timeout=5) for i in range(10)] == [{"echo": i} for i in range(10)]
            assert ch._requester is req and req.nc.stats["reconnects"] >= 1


def test_one_connection_per_handle_and_nothing_left_after_close(tmp_path: Path) -> None:
    port = free_port()
    with testing.nats_server(args=["-m", str(port)]) as server:
        assert _conns(port, 0) == 0
        dogs = _dogs()
        url = _url(server.url)
        with NatsChannel(url, create=True, codec="json") as owner, owner.requests() as reqs:
            def serve() -> None:
                for r in reqs:
                    r.reply(r.value)

            t = threading.Thread(target=serve)
            t.start()
            assert _conns(port, 2) == 2  # the owner's handle and its responder
            ch = NatsChannel(url, codec="json")
            threads = [threading.Thread(target=lambda k=k: [ch.request([k, i], timeout=10) for i in range(20)])
                       for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert _conns(port, 4) == 4 and _dogs() == dogs + 1  # + ch's handle and its one request connection
            ch.close()
            assert _conns(port, 2) == 2 and _dogs() == dogs
            reqs.close()
            t.join(5)
        assert _conns(port, 0) == 0 and _dogs() == dogs


CTRL_C = """
import sys, time, kipc
from kipc.transports.nats import NatsChannel
with NatsChannel(sys.argv[1], create=True) as ch, ch.requests() as silent:
    try:
        ch.request(b"warm", timeout=0.2)
    except kipc.Timeout:
        pass
    assert ch._requester is not None, "no request connection"
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        ch.request(b"wait", timeout=30)
    except KeyboardInterrupt:
        print("INTERRUPTED", round(time.monotonic() - t0, 1), flush=True)
    for _ in range(2):
        silent.next(timeout=5)  # warm and wait
    import threading
    t = threading.Thread(target=lambda: [r.reply(r.data + b"!") for r in [silent.next(timeout=5)]])
    t.start()
    print("GOT", ch.request(b"again", timeout=5).decode(), flush=True)  # the requester still works
    t.join(5)
"""


def test_ctrl_c_interrupts_a_request_and_the_requester_still_works(nats_url: str) -> None:
    with testing.spawn(CTRL_C, _url(nats_url)) as child:  # returns once the child printed READY
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGINT)
        line = child.readline(timeout=10)
        assert line.startswith("INTERRUPTED") and float(line.split()[1]) < 5, line
        assert child.readline(timeout=10) == "GOT again!"
        child.check(20)


def test_fork_child_never_touches_the_parents_requester(nats_url: str) -> None:
    """The child's request on the parent's handle raises ChannelClosed (as on the shared path);
    its close and its copy of the loop touch nothing of the parent's; the parent requests on."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, _echo(ch.url):
        assert ch.request(1, timeout=5) == {"echo": 1}
        req = ch._requester
        assert req is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                try:
                    ch.request(2, timeout=1)
                except kipc.ChannelClosed as e:
                    code = 0 if "after fork" in str(e) else 3
                with contextlib.suppress(BaseException):
                    req.close()  # refused: a forked child never touches the parent's
                    req.loop.close()
            finally:
                os.write(w, b"%d" % code)
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert os.read(r, 10) == b"0" and os.waitstatus_to_exitcode(status) == 0
        os.close(r)
        assert [ch.request(i, timeout=5) for i in range(20)] == [{"echo": i} for i in range(20)]
        time.sleep(_driven.GRACE * 4)  # and with the watchdog running the loop
        assert ch.request("w", timeout=5) == {"echo": "w"}
        assert ch._requester is req


EXIT_CLEAN = """
import sys, threading, kipc
from kipc.transports.nats import NatsChannel
owner = NatsChannel(sys.argv[1], create=True, codec="json")
reqs = owner.requests()
threading.Thread(target=lambda: [r.reply(r.value) for r in reqs], daemon=True).start()
ch = NatsChannel(sys.argv[1], codec="json")
assert [ch.request(i, timeout=5) for i in range(3)] == [0, 1, 2]
assert ch._requester is not None
if sys.argv[2] == "close":
    ch.close()
    reqs.close()
    owner.close()
print("READY", flush=True)
# "exit": the request connection is left open: the exit closes it, quietly
"""


@pytest.mark.parametrize("how", ["close", "exit"])
def test_exit_is_clean_no_warnings(nats_url: str, how: str) -> None:
    with testing.spawn("import warnings; warnings.simplefilter('always')\n" + EXIT_CLEAN, _url(nats_url), how,
                       env={"PYTHONDEVMODE": "1"}) as child:
        rc = child.wait(20)
        err = child.stderr_now()
        assert rc == 0, err
        assert_quiet_exit(err, unclosed_creators=0 if how == "close" else 1)  # the channel's creator end


def test_making_the_request_connection_keeps_to_the_request_timeout(nats_url: str) -> None:
    """The connect gets at most half the request's time; while it cannot be made, requests go
    the shared way (a server that accepts but never answers must not stretch a request)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never speaks NATS
    try:
        with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
            ch._conn_args = ([f"nats://127.0.0.1:{silent.getsockname()[1]}"], *ch._conn_args[1:])
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                ch.request(0, timeout=1.0)  # the connect gives up after 0.5 s; the shared path waits
            assert time.monotonic() - t0 < 1.6 and ch._requester is None
            assert reqs.next(timeout=2).value == 0  # sent the shared way
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                ch.request(1, timeout=1.0)  # no new connect attempt for a while: straight to shared
            assert time.monotonic() - t0 < 1.3 and ch._requester is None
    finally:
        silent.close()


def test_threads_timing_out_among_answered_ones_hand_the_loop_on(nats_url: str) -> None:
    """Six threads; the responder ignores every 5th request. Each call is answered with its own
    reply or times out on time -- runners that give up hand the loop to the threads still waiting."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, NatsChannel(ch.url, codec="json") as rch:
        reqs = rch.requests()
        ignored: list[Any] = []

        def serve() -> None:
            for n, req in enumerate(reqs, 1):
                if n % 5 == 0:
                    ignored.append(req.value)
                else:
                    req.reply(req.value)

        server = threading.Thread(target=serve)
        server.start()
        bad: list[Any] = []
        timed_out: list[Any] = []

        def caller(k: int) -> None:
            for i in range(25):
                t0 = time.monotonic()
                try:
                    got = ch.request([k, i], timeout=0.3)
                    if got != [k, i]:
                        bad.append(("wrong", k, i, got))
                except kipc.Timeout:
                    timed_out.append([k, i])
                if time.monotonic() - t0 > 1.3:
                    bad.append(("slow", k, i, time.monotonic() - t0))

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads)
        finally:
            reqs.close()
            server.join(10)
        assert bad == []
        assert sorted(timed_out) == sorted(ignored) and len(ignored) == 150 // 5
