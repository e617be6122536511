"""nats:// at speed (issue 15): the send window, prefetched receives, batched Topic, request/reply.

Every promise of docs/nats.md's contract card for these paths, against a real nats-server.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing
from kipc.transports.nats import NatsChannel, Topic

from ..helpers import TESTS, check, payload

PRELUDE = f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom helpers import check, payload\nimport kipc\n"


def _url(nats_url: str) -> str:
    return f"{nats_url}/{testing.unique_name('pipe')}"


def _raw_delete_stream(server: str, stream: str) -> None:
    import nats

    async def go() -> None:
        nc = await nats.connect(server)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(go())


# -- the send window -------------------------------------------------------------------------
def test_window_bounds_unconfirmed_and_flush_confirms_all(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, window=8) as tx, NatsChannel(tx.url) as rx:
        for i in range(500):
            tx.send(payload(1, i, 64))
            assert tx.unconfirmed <= 8
        tx.flush(timeout=30)
        assert tx.unconfirmed == 0
        for i in range(500):
            check(rx.recv(timeout=10), 1, i)  # FIFO per producer through the window
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)


def test_window_1_is_one_confirmed_send_at_a_time(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, window=1) as tx:
        tx.send(b"one")
        assert tx.unconfirmed == 0  # returned only once stored


def test_timed_send_is_confirmed_after_the_window(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True) as tx, NatsChannel(tx.url) as rx:
        for i in range(50):
            tx.send(payload(2, i, 64))
        tx.send(payload(2, 50, 64), timeout=10)  # a deadline asks for confirmation: everything before it too
        assert tx.unconfirmed == 0
        for i in range(51):
            check(rx.recv(timeout=10), 2, i)


def test_close_flushes_the_window(nats_url: str) -> None:
    url = _url(nats_url)
    with NatsChannel(url, create=True) as keeper:
        with NatsChannel(url) as tx:
            for i in range(300):
                tx.send(payload(3, i, 64))
        # tx.close() returned: every message is stored
        with NatsChannel(url) as rx:
            for i in range(300):
                check(rx.recv(timeout=10), 3, i)
        assert keeper.owner


def test_refused_publishes_raise_at_next_flush_naming_the_count(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, persist=True) as tx:
        _raw_delete_stream(nats_url, tx.stream)  # an operator removes the stream under a live sender
        for i in range(3):
            tx.send(payload(4, i, 64))
        with pytest.raises(kipc.KipcError) as ei:
            tx.flush(timeout=30)
        assert "3 message(s)" in str(ei.value) and tx.url in str(ei.value)
        assert [check(m)[1] for m in ei.value.unsent] == [0, 1, 2]  # type: ignore[attr-defined]
        assert tx.unconfirmed == 0
        tx.flush(timeout=1)  # reported once; the window is empty


def test_bounded_stream_sends_confirmed_in_order(nats_url: str) -> None:
    """max_msgs set: no window (a message refused as full must not be overtaken); FIFO kept."""
    with NatsChannel(_url(nats_url), create=True, max_msgs=5, window=16) as tx, NatsChannel(tx.url) as rx:
        with NatsChannel(tx.url) as opener:
            assert tx._bounded and opener._bounded  # the creator knows; an opener reads the config
        got: list[bytes] = []

        def consume() -> None:
            time.sleep(0.5)  # let the stream fill and refuse first
            while len(got) < 40:
                got.append(rx.recv(timeout=30))

        t = threading.Thread(target=consume)
        t.start()
        for i in range(40):
            tx.send(payload(5, i, 64))
            assert tx.unconfirmed == 0
        tx.flush(timeout=60)
        t.join(60)
        assert [check(m)[1] for m in got] == list(range(40))  # refused ones resent, nothing lost or reordered


def test_close_from_another_thread_wakes_a_sender_waiting_for_room() -> None:
    with testing.nats_server() as server:
        tx = NatsChannel(f"{server.url}/{testing.unique_name('pipe')}", create=True, persist=True, window=2)
        try:
            server.stop(kill=True)  # nothing is confirmed any more: the window fills and stays full
            outcome: list[BaseException] = []

            def sender() -> None:
                try:
                    for _ in range(10):
                        tx.send(b"waits for room in the window")
                except BaseException as e:
                    outcome.append(e)

            t = threading.Thread(target=sender)
            t.start()
            time.sleep(0.5)
            assert t.is_alive() and tx.unconfirmed == 2
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout) as ei:  # close reports the window it could not flush
                tx.close()
            assert "2 message(s)" in str(ei.value)
            t.join(15)
            assert not t.is_alive() and len(outcome) == 1 and isinstance(outcome[0], kipc.ChannelClosed), outcome
            assert time.monotonic() - t0 < 20
        finally:
            tx.close()


def test_cancelled_asend_on_a_full_stream_sends_nothing(nats_url: str) -> None:
    """100 asends cancelled at random points while the stream is full and a slow consumer drains
    it (a bounded stream: each asend is confirmed): each either returned (its message arrives) or
    was cancelled (nothing of it arrives). Exact counts."""
    with NatsChannel(_url(nats_url), create=True, max_msgs=3) as tx, NatsChannel(tx.url) as rx:
        got: list[int] = []
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                try:
                    got.append(check(rx.recv(timeout=0.2))[1])
                except kipc.Timeout:
                    continue
                time.sleep(0.01)  # slow: the stream stays full most of the time

        t = threading.Thread(target=consume)
        t.start()

        async def main() -> tuple[int, int]:
            sent = cancelled = 0
            for k in range(100):
                try:
                    await asyncio.wait_for(tx.asend(payload(6, sent, 64)), 0.002 + (k % 7) * 0.004)
                    sent += 1
                except TimeoutError:
                    cancelled += 1
            return sent, cancelled

        try:
            sent, cancelled = asyncio.run(main())
            end = time.monotonic() + 30
            while len(got) < sent and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.5)  # anything extra would show up now
        finally:
            stop.set()
            t.join(10)
        assert sent + cancelled == 100 and cancelled > 0 and sent > 0
        assert got == list(range(sent)), (sent, cancelled, got[-5:])  # none lost, none extra, in order


# -- prefetched receives ----------------------------------------------------------------------
def test_recv_many_and_prefetch_bound(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True) as tx, NatsChannel(tx.url, prefetch=10) as rx:
        for i in range(25):
            tx.send(payload(7, i, 64))
        tx.flush(timeout=10)
        first = rx.recv_many(100, timeout=10)
        assert 1 <= len(first) <= 10  # never more than one prefetch batch at hand
        got = first
        while len(got) < 25:
            got += rx.recv_many(100, timeout=10)
        assert [check(m)[1] for m in got] == list(range(25))
        with pytest.raises(kipc.WouldBlock):
            rx.recv_many(5, timeout=0)


def test_close_naks_prefetched_messages_for_other_consumers(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, ack_wait=30) as tx:
        for i in range(100):
            tx.send(payload(8, i, 64))
        tx.flush(timeout=10)
        with NatsChannel(tx.url, prefetch=50) as greedy:
            assert check(greedy.recv(timeout=10))[1] == 0
            time.sleep(0.2)  # its batch has arrived: up to 49 more held here
        # closed: what it held was handed back at once, not after ack_wait (30 s)
        t0 = time.monotonic()
        with NatsChannel(tx.url) as other:
            rest = sorted(check(other.recv(timeout=5))[1] for _ in range(99))
        assert rest == list(range(1, 100)) and time.monotonic() - t0 < 10


def test_receive_acks_only_after_the_handler_with_prefetch(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True) as tx, NatsChannel(tx.url, prefetch=20) as rx:
        for i in range(5):
            tx.send(payload(9, i, 64))
        tx.flush(timeout=10)
        with pytest.raises(RuntimeError), rx.receive(timeout=10) as m:
            assert check(m.data)[1] == 0
            raise RuntimeError("handler failed")
        seen = collections.Counter()
        for _ in range(5):
            with rx.receive(timeout=10) as m:
                seen[check(m.data)[1]] += 1
        assert sorted(seen) == [0, 1, 2, 3, 4] and max(seen.values()) == 1


def test_consumer_sigkilled_with_prefetched_messages_redelivered_to_another(nats_url: str) -> None:
    holder = PRELUDE + """
with kipc.open(sys.argv[1], prefetch=100) as ch:
    print("READY", flush=True)
    print("GOT", check(ch.recv(timeout=30))[1], flush=True)
    ch.flush()
    import time; time.sleep(0.5)  # its ack confirmed; 99 more sit in its prefetch buffer
    print("HOLDING", flush=True)
    sys.stdin.read()
"""
    n = 60
    with NatsChannel(_url(nats_url), create=True, ack_wait=2.0) as tx:
        for i in range(n):
            tx.send(payload(10, i, 64))
        tx.flush(timeout=10)
        with testing.spawn(holder, tx.url, stdin=True) as victim:
            first = int(victim.expect("GOT", 20).split()[1])
            victim.expect("HOLDING", 20)
            victim.kill(signal.SIGKILL)
        with NatsChannel(tx.url) as rescuer:
            rest = []
            while len(rest) < n - 1:
                with rescuer.receive(timeout=15) as m:
                    rest.append(check(m.data)[1])
                    assert m.redelivered >= 1  # each had been delivered to the victim's prefetch
            with pytest.raises(kipc.Timeout):
                rescuer.recv(timeout=0.5)
        assert sorted([*rest, first]) == list(range(n))  # 0 lost, none twice


def test_close_from_another_thread_wakes_blocked_recv(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True) as tx:
        rx = NatsChannel(tx.url)
        outcome: list[BaseException] = []

        def receiver() -> None:
            try:
                rx.recv()
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=receiver)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        rx.close()
        t.join(5)
        assert not t.is_alive() and isinstance(outcome[0], kipc.ChannelClosed)
        assert time.monotonic() - t0 < 2.0


# -- Topic in batches --------------------------------------------------------------------------
def test_topic_batches_and_counts_drops(nats_url: str) -> None:
    url = _url(nats_url)
    with Topic(url) as sub, Topic(url, pending_limit=10) as slow, Topic(url, subscribe=False) as pub:
        for i in range(1000):
            pub.send(payload(11, i, 32))
        pub.flush()
        got = []
        while len(got) < 1000:
            got += sub.recv_many(500, timeout=10)
        assert [check(m)[1] for m in got] == list(range(1000))
        end = time.monotonic() + 10
        while slow.dropped < 990 and time.monotonic() < end:
            time.sleep(0.01)
        assert slow.dropped == 990
        assert [check(slow.recv(timeout=1))[1] for _ in range(10)] == list(range(10))  # the first 10 kept


# -- request/reply ------------------------------------------------------------------------------
def test_request_reply_and_errors(nats_url: str) -> None:
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch:
        with pytest.raises(kipc.NotFound):
            ch.request({"x": 1}, timeout=2)
        with ch.requests() as reqs, NatsChannel(ch.url, codec="json") as other, other.requests() as reqs2:
            stop = threading.Event()
            served = collections.Counter()

            def serve(rs: object, name: str) -> None:
                while not stop.is_set():
                    try:
                        req = rs.next(timeout=0.1)  # type: ignore[attr-defined]
                    except kipc.Timeout:
                        continue
                    served[name] += 1
                    req.reply({"twice": req.value["x"] * 2})

            threads = [threading.Thread(target=serve, args=(r, n)) for r, n in ((reqs, "a"), (reqs2, "b"))]
            for t in threads:
                t.start()
            try:
                assert [ch.request({"x": i}, timeout=5)["twice"] for i in range(40)] == [2 * i for i in range(40)]

                async def amain() -> list[int]:
                    return [r["twice"] for r in await asyncio.gather(*(ch.arequest({"x": i}, timeout=5)
                                                                          for i in range(10)))]

                assert asyncio.run(amain()) == [2 * i for i in range(10)]
            finally:
                stop.set()
                for t in threads:
                    t.join(5)
            assert sum(served.values()) == 50 and len(served) == 2  # a queue group: each request once
        with ch.requests() as silent:
            with pytest.raises(kipc.Timeout):
                ch.request({"x": 0}, timeout=0.3)  # taken, never answered
            assert silent.next(timeout=1).value == {"x": 0}


def test_sync_requests_from_many_threads_get_their_own_replies_and_close_wakes_a_waiting_one(
        nats_url: str) -> None:
    """request() waits on its own reply token: concurrent callers never get each other's replies;
    a close() from another thread ends a request still waiting (ChannelClosed, not a hang)."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch, ch.requests() as reqs:
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    req = reqs.next(timeout=0.1)
                except kipc.Timeout:
                    continue
                req.reply({"echo": req.value})

        server = threading.Thread(target=serve)
        server.start()
        results: dict[int, list[object]] = {}

        def caller(k: int) -> None:
            results[k] = [ch.request({"k": k, "i": i}, timeout=10)["echo"] for i in range(50)]

        try:
            callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
            for t in callers:
                t.start()
            for t in callers:
                t.join(30)
        finally:
            stop.set()
            server.join(5)
        assert results == {k: [{"k": k, "i": i} for i in range(50)] for k in range(4)}
        # nobody serves now, but the subscription is still there: the request waits
        with pytest.raises(kipc.WouldBlock):
            ch.request({"k": -1}, timeout=0)  # one round trip (2 s), no reply
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                ch.request({"k": -2}, timeout=30)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        ch.close()
        t.join(10)
        assert not t.is_alive() and time.monotonic() - t0 < 10
        assert len(errors) == 1 and isinstance(errors[0], kipc.ChannelClosed), errors


def test_arequest_timeout_cancel_and_close_leave_nothing_pending(nats_url: str) -> None:
    """arequest waits on a future of the caller's own loop: every way out (reply, timeout,
    cancellation at the await, close from another thread) removes its reply token, and a reply
    that comes after its caller gave up reaches nobody else."""
    with NatsChannel(_url(nats_url), create=True, codec="json") as ch:
        async def no_responder() -> None:
            with pytest.raises(kipc.NotFound):
                await ch.arequest({"x": 1}, timeout=2)

        asyncio.run(no_responder())
        with ch.requests() as reqs:
            async def unanswered() -> None:
                t0 = time.monotonic()
                with pytest.raises(kipc.Timeout):
                    await ch.arequest({"x": 0}, timeout=0.2)
                assert 0.15 < time.monotonic() - t0 < 2
                task = asyncio.ensure_future(ch.arequest({"x": -1}, timeout=30))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(unanswered())
            assert ch._reply_waits == {}
            # both were delivered; answering them now must not confuse the next callers
            late = [reqs.next(timeout=2) for _ in range(2)]
            assert sorted(r.value["x"] for r in late) == [-1, 0]
            for r in late:
                r.reply({"late": r.value["x"]})
            stop = threading.Event()

            def serve() -> None:
                while not stop.is_set():
                    try:
                        req = reqs.next(timeout=0.1)
                    except kipc.Timeout:
                        continue
                    req.reply({"echo": req.value})

            server = threading.Thread(target=serve)
            server.start()
            try:
                async def fresh() -> list[object]:
                    return list(await asyncio.gather(*(ch.arequest({"i": i}, timeout=5) for i in range(20))))

                # a loop on another thread too: the reply crosses to whichever loop asked
                box: list[object] = []
                other = threading.Thread(target=lambda: box.extend(asyncio.run(fresh())))
                other.start()
                assert asyncio.run(fresh()) == [{"echo": {"i": i}} for i in range(20)]
                other.join(10)
                assert box == [{"echo": {"i": i}} for i in range(20)]
            finally:
                stop.set()
                server.join(5)
            assert ch._reply_waits == {}
        with ch.requests():  # listening, never answering: the arequest waits until close()
            errors: list[BaseException] = []

            async def blocked() -> None:
                try:
                    await ch.arequest({"x": 2}, timeout=30)
                except BaseException as e:
                    errors.append(e)

            t = threading.Thread(target=lambda: asyncio.run(blocked()))
            t.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            ch.close()
            t.join(10)
            assert not t.is_alive() and time.monotonic() - t0 < 10
            assert len(errors) == 1 and isinstance(errors[0], kipc.ChannelClosed), errors
            assert ch._reply_waits == {}
