"""nats:// responders on their own connection (``requests()``, ``_responder``), real parts only.

The thread in ``next()`` runs the responder's private loop; ``reply()`` writes in the calling
thread; a watchdog runs the loop while a handler works. Every guarantee of the shared path is
checked here against a real nats-server: timeouts, close from another thread, Ctrl-C, fork,
a handler slower than the server's ping interval, a server restart, replies from other
threads and from asyncio, and nothing left behind (server connections, threads, warnings).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import queue
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing
from kipc.testing._nats import free_port
from kipc.transports.nats import NatsChannel, _responder

from ..helpers import assert_quiet_exit

_THREAD = "kipc-nats-responder"


def _url(nats_url: str) -> str:
    return f"{nats_url}/{testing.unique_name('rs')}"


def _dogs() -> int:
    return sum(1 for t in threading.enumerate() if t.name == _THREAD)


@contextlib.contextmanager
def _serving(reqs: Any, handle: Any = None) -> Iterator[threading.Thread]:
    """Serve ``reqs`` on a thread (``handle(req)``, default: echo) until it is closed."""

    def serve() -> None:
        for req in reqs:
            if handle is None:
                req.reply({"echo": req.value})
            else:
                handle(req)

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield t
    finally:
        reqs.close()
        t.join(10)
        assert not t.is_alive()


def _connz(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?limit=1024", timeout=5) as r:
        return list(json.load(r).get("connections") or [])


def test_echo_default_is_own_connection_and_timeouts(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, NatsChannel(ch.url, codec="json") as rch:
        reqs = rch.requests()
        assert reqs._own is not None  # the default: a connection of its own
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout, match=r"requests on .* timed out after 0\.2"):
            reqs.next(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 1.0
        with pytest.raises(kipc.WouldBlock):
            reqs.next(timeout=0)
        with pytest.raises(kipc.InvalidArgument, match="conn must be"):
            rch.requests(conn="both")
        with _serving(reqs):
            assert [ch.request(i, timeout=5) for i in range(50)] == [{"echo": i} for i in range(50)]
            time.sleep(_responder.GRACE * 4)  # the watchdog has the loop now: next() takes it back
            assert ch.request("idle", timeout=5) == {"echo": "idle"}
        with pytest.raises(kipc.ChannelClosed):
            reqs.next(timeout=1)


def test_next_timeout_0_returns_a_request_already_sent(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
        got: queue.Queue[Any] = queue.Queue()
        t = threading.Thread(target=lambda: got.put(ch.request("x", timeout=5)))
        t.start()
        end = time.monotonic() + 5
        req = None
        while req is None and time.monotonic() < end:
            with contextlib.suppress(kipc.WouldBlock):
                req = reqs.next(timeout=0)
        assert req is not None and req.value == "x"
        req.reply("y")
        t.join(5)
        assert got.get(timeout=1) == "y"
        with pytest.raises(kipc.InvalidArgument, match="already answered"):
            req.reply("again")


@pytest.mark.parametrize("which", ["requests", "channel"])
def test_close_from_another_thread_ends_a_blocked_next(nats_url: str, which: str) -> None:
    with NatsChannel(_url(nats_url), create=True) as owner:
        rch = NatsChannel(owner.url)
        reqs = rch.requests()
        out: list[BaseException] = []

        def wait() -> None:
            try:
                reqs.next(timeout=30)
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.3)  # blocked, running the responder's loop
        t0 = time.monotonic()
        (reqs if which == "requests" else rch).close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        assert len(out) == 1 and isinstance(out[0], kipc.ChannelClosed), out
        rch.close()
        reqs.close()  # idempotent
        assert _dogs() == 0


def test_replies_from_other_threads_while_next_runs_the_loop(nats_url: str) -> None:
    """A dispatcher thread sits in next() (it runs the loop); workers reply from their threads:
    posted to the running loop, sent at once (not after the watchdog's grace)."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
        work: queue.Queue[Any] = queue.Queue()

        def worker() -> None:
            while (req := work.get()) is not None:
                req.reply({"by": threading.current_thread().name, "v": req.value})

        workers = [threading.Thread(target=worker, name=f"w{i}") for i in range(3)]
        for w in workers:
            w.start()
        try:
            with _serving(reqs, work.put):
                results: list[Any] = []
                lat: list[float] = []
                for i in range(60):
                    t0 = time.monotonic()
                    results.append(ch.request(i, timeout=5))
                    lat.append(time.monotonic() - t0)
                assert [r["v"] for r in results] == list(range(60))
                assert {r["by"] for r in results} <= {"w0", "w1", "w2"}

                async def many() -> list[Any]:
                    return list(await asyncio.gather(*(ch.arequest(i, timeout=5) for i in range(30))))

                assert [r["v"] for r in asyncio.run(many())] == list(range(30))
        finally:
            for _ in workers:
                work.put(None)
            for w in workers:
                w.join(5)


def test_two_threads_in_next_on_one_responder_share_it_one_runner_at_a_time(nats_url: str) -> None:
    """Two serving threads on one responder, four requesting threads: every request answered
    once, by one of the two, with its own reply (one loop runner at a time, hand-overs included)."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
        served: dict[str, int] = {}
        lock = threading.Lock()

        def handle(req: Any) -> None:
            with lock:
                name = threading.current_thread().name
                served[name] = served.get(name, 0) + 1
            if req.value[1] % 7 == 0:
                time.sleep(_responder.GRACE * 2)  # now and then the watchdog takes the loop meanwhile
            req.reply(req.value)

        def serve() -> None:
            for req in reqs:
                handle(req)

        servers = [threading.Thread(target=serve, name=f"s{i}") for i in range(2)]
        for t in servers:
            t.start()
        bad: list[Any] = []

        def client(c: int) -> None:
            for i in range(50):
                got = ch.request([c, i], timeout=10)
                if got != [c, i]:
                    bad.append((c, i, got))

        try:
            clients = [threading.Thread(target=client, args=(c,)) for c in range(4)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            assert not any(t.is_alive() for t in clients)
        finally:
            reqs.close()
            for t in servers:
                t.join(10)
        assert bad == []
        assert sum(served.values()) == 200 and set(served) <= {"s0", "s1"}


def test_anext_and_async_replies(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:

        async def serve(n: int) -> None:
            for _ in range(n):
                req = await reqs.anext(timeout=5)
                req.reply(req.value + 1)  # from a thread that runs an event loop: posted, the watchdog sends

        done: list[Any] = []
        t = threading.Thread(target=lambda: done.append(asyncio.run(serve(20))))
        t.start()
        assert [ch.request(i, timeout=5) for i in range(20)] == list(range(1, 21))
        t.join(5)
        assert done == [None]

        async def timed_out() -> None:
            with pytest.raises(kipc.Timeout):
                await reqs.anext(timeout=0.2)

        asyncio.run(timed_out())


def test_sync_next_on_a_thread_running_an_event_loop_lets_the_watchdog_read(nats_url: str) -> None:
    """A thread inside an event loop cannot run the responder's loop: its sync next() waits while
    the watchdog reads, and its reply is posted (still answered, and in order)."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.extend(ch.request(i, timeout=5) for i in range(5)))
        t.start()

        async def serve() -> None:
            for _ in range(5):
                req = reqs.next(timeout=5)
                req.reply(-req.value)

        asyncio.run(serve())
        t.join(5)
        assert got == [0, -1, -2, -3, -4]


def test_slow_handler_keeps_the_connection_alive(tmp_path: Path) -> None:
    """The server pings every 100 ms and drops a client after 2 unanswered: a handler working for
    1.2 s would lose the connection if nobody ran the loop. The watchdog answers the pings."""
    conf = tmp_path / "ping.conf"
    conf.write_text('ping_interval: "100ms"\nping_max: 2\n')
    with testing.nats_server(args=["-c", str(conf)]) as server:
        # the control: a nats-py connection whose loop nobody runs is dropped within that time
        import nats

        loop = asyncio.new_event_loop()
        try:
            nc = loop.run_until_complete(nats.connect(server.url, reconnect_time_wait=0.1))
            time.sleep(1.2)
            loop.run_until_complete(asyncio.sleep(0.5))
            assert nc.stats["reconnects"] >= 1, "the server did not drop an unattended connection"
            loop.run_until_complete(nc.close())
        finally:
            loop.close()
        with NatsChannel(_url(server.url), create=True, codec="json") as ch, ch.requests() as reqs:
            own = reqs._own
            assert own is not None

            def slow(req: Any) -> None:
                time.sleep(1.2) if req.value == "slow" else None
                req.reply(req.value)

            with _serving(reqs, slow):
                assert ch.request("fast", timeout=5) == "fast"
                assert ch.request("slow", timeout=10) == "slow"
                assert ch.request("fast again", timeout=5) == "fast again"
                assert own.nc.stats["reconnects"] == 0 and own.nc.is_connected


def test_server_restart_mid_stream_reconnects_and_requests_continue() -> None:
    with testing.nats_server() as server:
        with NatsChannel(_url(server.url), create=True, codec="json") as ch, ch.requests() as reqs:
            own = reqs._own
            assert own is not None
            with _serving(reqs):
                assert [ch.request(i, timeout=5) for i in range(10)] == [{"echo": i} for i in range(10)]
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
                assert [ch.request(i, timeout=5) for i in range(20)] == [{"echo": i} for i in range(20)]
                assert own.nc.stats["reconnects"] >= 1


def _conns(port: int, expect: int) -> int:
    """The server's client connections, once they are ``expect`` (or after 5 s: what it sees)."""
    end = time.monotonic() + 5
    while (n := len(_connz(port))) != expect and time.monotonic() < end:
        time.sleep(0.05)  # the server notices a closed connection (or the probe's) a little later
    return n


def test_no_connection_or_thread_left_after_close(tmp_path: Path) -> None:
    port = free_port()
    with testing.nats_server(args=["-m", str(port)]) as server:
        assert _conns(port, 0) == 0  # a private server: nobody else connects
        dogs = _dogs()
        with NatsChannel(_url(server.url), create=True, codec="json") as ch:
            assert _conns(port, 1) == 1
            reqs = [ch.requests() for _ in range(3)]
            assert _conns(port, 4) == 4 and _dogs() == dogs + 3
            with _serving(reqs[0]), _serving(reqs[1]), _serving(reqs[2]):
                assert [ch.request(i, timeout=5) for i in range(9)] == [{"echo": i} for i in range(9)]
            # + the handle's own request connection (request_conn="own", made by the first request)
            assert _conns(port, 2) == 2 and _dogs() == dogs
            left = [ch.requests() for _ in range(2)]  # never closed: the channel's close closes them
            assert _conns(port, 4) == 4 and _dogs() == dogs + 2
        assert all(r._own is not None and r._own.loop.is_closed() for r in left)
        assert _conns(port, 0) == 0
        assert _dogs() == dogs


CTRL_C = """
import sys, threading, time, kipc
from kipc.transports.nats import NatsChannel
with NatsChannel(sys.argv[1], create=True) as ch, ch.requests() as reqs:
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        reqs.next(timeout=30)
    except KeyboardInterrupt:
        print("INTERRUPTED", round(time.monotonic() - t0, 1), flush=True)
    got = []
    t = threading.Thread(target=lambda: got.append(ch.request(b"after", timeout=5)))
    t.start()
    req = reqs.next(timeout=5)  # the responder still works after the interrupt
    req.reply(req.data + b"!")
    t.join(5)
    print("SERVED", got[0].decode(), flush=True)
"""


def test_ctrl_c_interrupts_next_and_the_responder_still_works(nats_url: str) -> None:
    with testing.spawn(CTRL_C, _url(nats_url)) as child:
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGINT)
        line = child.readline(timeout=10)
        assert line.startswith("INTERRUPTED") and float(line.split()[1]) < 5, line
        assert child.readline(timeout=10) == "SERVED after!"
        child.check(20)


def test_fork_child_never_touches_the_parents_responder(nats_url: str) -> None:
    """The child refuses the parent's responder (next and reply raise ChannelClosed, close touches
    nothing) and even closing its copy of the loop leaves the parent's alone; the parent serves on."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, NatsChannel(ch.url, codec="json") as rch:
        reqs = rch.requests()
        with _serving(reqs):
            assert ch.request(1, timeout=5) == {"echo": 1}
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                code = 1
                try:
                    try:
                        reqs.next(timeout=0.1)
                    except kipc.ChannelClosed:
                        try:
                            reqs._own.reply("x", b"y")  # type: ignore[union-attr]
                        except kipc.ChannelClosed:
                            code = 0
                    reqs.close()
                finally:
                    os.write(w, b"%d" % code)
                    with contextlib.suppress(BaseException):
                        rch.close()
                        # the worst a child can do with its copy: close that loop (refused while the
                        # copy looks running, as at most forks; harmless otherwise: see _responder)
                        reqs._own.loop.close()  # type: ignore[union-attr]
                        del reqs
                        gc.collect()
                    os._exit(code)
            os.close(w)
            _, status = os.waitpid(pid, 0)
            assert os.read(r, 10) == b"0" and os.waitstatus_to_exitcode(status) == 0
            os.close(r)
            assert [ch.request(i, timeout=5) for i in range(20)] == [{"echo": i} for i in range(20)]
            time.sleep(_responder.GRACE * 4)  # and with the watchdog running the loop
            assert ch.request("w", timeout=5) == {"echo": "w"}


EXIT_CLEAN = """
import sys, threading, kipc
from kipc.transports.nats import NatsChannel
ch = NatsChannel(sys.argv[1], create=True, codec="json")
reqs = ch.requests()
closed = ch.requests()
t = threading.Thread(target=lambda: [r.reply(r.value) for r in reqs], daemon=True)
t.start()
closed.close()  # before the request: a queue group would give it to either
assert ch.request(1, timeout=5) == 1
if sys.argv[2] == "close":
    reqs.close()
    t.join(5)
    ch.close()
print("READY", flush=True)
# "exit": leave the responder serving and the channel open: the exit closes them, quietly
"""


@pytest.mark.parametrize("how", ["close", "exit"])
def test_exit_is_clean_no_warnings(nats_url: str, how: str) -> None:
    with testing.spawn("import warnings; warnings.simplefilter('always')\n" + EXIT_CLEAN, _url(nats_url), how,
                       env={"PYTHONDEVMODE": "1"}) as child:
        rc = child.wait(20)
        err = child.stderr_now()
        assert rc == 0, err
        assert_quiet_exit(err, unclosed_creators=0 if how == "close" else 1)  # the channel's creator end
