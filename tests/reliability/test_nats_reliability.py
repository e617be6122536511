"""NATS reliability with real processes and real servers: crashes, restarts, a node lost.

Every message is a ``helpers.payload`` (producer, seq, length, crc32), so a
torn or mixed-up message fails its check; counting sequence numbers shows
loss (a missing seq) and duplication (a seq seen twice).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import threading
import time

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing

from ..helpers import TESTS, check, payload

HERE = TESTS  # children import helpers from here
PRELUDE = f"import sys\nsys.path.insert(0, {HERE!r})\nfrom helpers import check, payload\nimport kipc\n"

PRODUCER = PRELUDE + """
url, servers, first, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
with kipc.open(url, servers=servers) as ch:
    print("READY", flush=True)
    for seq in range(first, first + n):
        ch.send(payload(1, seq, 64 + seq % 200), timeout=60)
    print("SENT", n, flush=True)
"""

# The same through the send window (untimed sends, 256 unconfirmed), confirmed by flush().
PIPELINED_PRODUCER = PRELUDE + """
url, servers, first, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
with kipc.open(url, servers=servers) as ch:
    print("READY", flush=True)
    for seq in range(first, first + n):
        ch.send(payload(1, seq, 64 + seq % 200))
    ch.flush(timeout=90)
    print("SENT", n, flush=True)
"""

# Prefetched plain recv() (acks confirmed in the background) instead of receive().
PREFETCH_CONSUMER = PRELUDE + """
url, servers = sys.argv[1], sys.argv[2].split(",")
got = []
with kipc.open(url, servers=servers) as ch:
    print("READY", flush=True)
    while True:
        m = ch.recv(timeout=60)
        if m == b"END":
            break
        got.append(check(m)[1])
print("GOT", ",".join(map(str, got)), flush=True)
"""

# Consumes until it receives the END marker; prints every sequence it got.
CONSUMER = PRELUDE + """
url, servers = sys.argv[1], sys.argv[2].split(",")
got = []
with kipc.open(url, servers=servers) as ch:
    print("READY", flush=True)
    while True:
        with ch.receive(timeout=60) as m:
            if m.data == b"END":
                break
            got.append(check(m.data)[1])
print("GOT", ",".join(map(str, got)), flush=True)
"""


def _seqs(line: str) -> list[int]:
    body = line.split(" ", 1)[1] if " " in line else ""
    return [int(x) for x in body.split(",") if x]


def test_one_producer_two_consumer_processes_10000_exactly_once(nats_url: str) -> None:
    n = 10_000
    with kipc.open(f"{nats_url}/{testing.unique_name('jobs')}", create=True, ack_wait=5) as ch:
        consumers = [testing.spawn(CONSUMER, ch.url, nats_url) for _ in range(2)]
        try:
            with testing.spawn(PIPELINED_PRODUCER, ch.url, nats_url, "0", str(n)) as producer:
                producer.expect("SENT", 90)
                producer.check()
            ch.send(b"END")
            ch.send(b"END")
            results = [_seqs(c.expect("GOT", 90)) for c in consumers]
            for c in consumers:
                c.check()
        finally:
            for c in consumers:
                c.close()
        counts = collections.Counter(s for r in results for s in r)
        assert sorted(counts) == list(range(n)), "lost messages"
        assert max(counts.values()) == 1, "a message was delivered (and acked) twice"
        assert all(len(r) > 0 for r in results), "both consumers should share the work"
        for r in results:  # FIFO per producer: each consumer sees increasing sequence numbers
            assert r == sorted(r)
        with pytest.raises(kipc.WouldBlock):
            ch.recv(timeout=0)


def test_consumer_killed_before_ack_message_redelivered(nats_url: str) -> None:
    hold = PRELUDE + """
with kipc.open(sys.argv[1], servers=[sys.argv[2]]) as ch:
    print("READY", flush=True)
    with ch.receive(timeout=30) as m:
        print("HOLDING", check(m.data)[1], flush=True)
        sys.stdin.read()  # handler 'working' until SIGKILL: never acks
"""
    with kipc.open(f"{nats_url}/{testing.unique_name('jobs')}", create=True, ack_wait=1.0) as ch:
        for seq in range(5):
            ch.send(payload(1, seq, 100))
        with testing.spawn(hold, ch.url, nats_url, stdin=True) as victim:
            held = int(victim.expect("HOLDING", 20).split()[1])
            victim.kill(signal.SIGKILL)
        assert held == 0
        with testing.spawn(CONSUMER, ch.url, nats_url) as rescuer:
            ch.send(b"END")  # queued after the 4 others; the held one comes back after ack_wait
            first = _seqs(rescuer.expect("GOT", 30))
            rescuer.check()
        # END may overtake the redelivered message (it comes back only after ack_wait): drain the rest here
        rest = []
        while len(first) + len(rest) < 5:
            with ch.receive(timeout=10) as m:
                rest.append(check(m.data)[1])
                assert m.redelivered >= 1
        assert sorted(first + rest) == [0, 1, 2, 3, 4]


def test_server_restart_mid_stream_no_loss_and_clean_timeouts() -> None:
    n = 1500
    with testing.nats_server() as server:
        url = f"{server.url}/{testing.unique_name('jobs')}"
        with kipc.open(url, create=True, ack_wait=2.0) as tx, kipc.open(url) as rx:
            received: list[int] = []
            errors: list[BaseException] = []

            def consume() -> None:
                try:
                    while not set(range(n)) <= set(received):
                        received.append(check(rx.recv(timeout=60))[1])
                except BaseException as e:  # reported by the assert below
                    errors.append(e)

            t = threading.Thread(target=consume)
            t.start()
            for seq in range(n):
                if seq == n // 3:
                    server.stop(kill=True)  # crash mid-stream: the sender blocks...
                    with pytest.raises(kipc.Timeout):
                        tx.send(payload(1, n + 1, 64), timeout=0.5)  # ...or times out cleanly
                    server.start()  # same port, same file storage
                tx.send(payload(1, seq, 64 + seq % 100), timeout=60)
            t.join(90)
            assert not t.is_alive() and not errors, errors
            counts = collections.Counter(s for s in received if s < n)
            assert set(range(n)) <= set(counts), f"lost: {sorted(set(range(n)) - set(counts))[:10]}"
            assert n + 1 not in received  # the timed-out send was not stored behind our back
            # at-least-once: a duplicate is allowed only for an ack lost in the crash
            assert sum(c - 1 for c in counts.values()) <= 5
            # blocked receivers resume: after another restart the same channel objects still work
            server.stop()
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                rx.recv(timeout=0.5)
            assert time.monotonic() - t0 < 5
            server.start()
            tx.send(b"after restart", timeout=30)
            got = rx.recv(timeout=30)
            while got != b"after restart":  # a stray redelivery of the timed-out probe, if any
                got = rx.recv(timeout=30)


@pytest.mark.parametrize("mode", ["confirmed", "pipelined"])
def test_cluster_node_killed_mid_stream_zero_lost_zero_duplicated(mode: str) -> None:
    """The stream leader killed mid-stream: 0 lost. ``pipelined``: the producer sends through the
    window and the consumers prefetch (recv with background acks) -- the defaults."""
    n = 2000
    producer_code, consumer_code = (PRODUCER, CONSUMER) if mode == "confirmed" else (PIPELINED_PRODUCER,
                                                                                     PREFETCH_CONSUMER)
    with testing.nats_cluster() as cluster:
        servers = ",".join(cluster.urls)
        name = testing.unique_name("jobs")
        with kipc.open(f"{cluster.urls[0]}/{name}", create=True, replicas=3, ack_wait=20.0,
                       servers=cluster.urls) as ch:
            leader = _stream_leader(cluster.urls, ch.stream)
            victim = int(leader[1:]) if leader and leader.startswith("n") else 2
            consumers = [testing.spawn(consumer_code, ch.url, servers) for _ in range(2)]
            try:
                with testing.spawn(producer_code, ch.url, servers, "0", str(n)) as producer:
                    # kill the stream leader while messages are flowing both ways
                    deadline = time.monotonic() + 30
                    while _stream_state(cluster.urls, ch.stream) < n // 4 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    cluster.kill(victim)
                    producer.expect("SENT", 90)
                    producer.check()
                ch.send(b"END", timeout=30)
                ch.send(b"END", timeout=30)
                results = [_seqs(c.expect("GOT", 90)) for c in consumers]
                for c in consumers:
                    c.check()
                # END can overtake a message that was on its way to a consumer through the killed
                # node: the server redelivers it only after ack_wait (20 s). Drain those here.
                late: list[int] = []
                seen = {s for r in results for s in r}
                end = time.monotonic() + 20.0 + 15
                while len(seen) < n and time.monotonic() < end:
                    with contextlib.suppress(kipc.Timeout):
                        m = ch.recv(timeout=1)
                        if m != b"END":
                            late.append(check(m)[1])
                            seen.add(late[-1])
                results.append(late)
            finally:
                for c in consumers:
                    c.close()
        counts = collections.Counter(s for r in results for s in r)
        assert sorted(counts) == list(range(n)), f"lost: {sorted(set(range(n)) - set(counts))[:10]}"
        # At-least-once: when the stream leader dies, an ack it had confirmed but not yet
        # replicated can be lost with it, and the new leader redelivers that message
        # (seen: 1 in ~10 runs, always one message in flight at the kill). Handlers must be
        # idempotent (docs/nats.md). Loss is never acceptable; a redelivery is bounded.
        dups = {s: c for s, c in counts.items() if c > 1}
        # With prefetch a failover can redeliver what sat unacked in a consumer's buffer or what
        # was handed out with its ack still unconfirmed: bounded by the prefetch (256) per consumer.
        bound = 3 if mode == "confirmed" else 2 * 256
        redelivered = sum(c - 1 for c in dups.values())
        print(f"{mode}: {redelivered} redelivered of {n}; {len(results[-1])} only after END (ack_wait)")
        assert redelivered <= bound and all(c <= 2 for c in dups.values()), \
            f"more than a failover's worth of redeliveries: {dups}"


def _js_call(urls: list[str], fn: str, stream: str) -> object:
    import nats

    async def go() -> object:
        nc = await nats.connect(urls, connect_timeout=2, allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info(stream)
            return info.cluster.leader if fn == "leader" else info.state.last_seq
        finally:
            await nc.close()

    try:
        return asyncio.run(asyncio.wait_for(go(), 5))
    except Exception:
        return None


def _stream_leader(urls: list[str], stream: str) -> str | None:
    leader = _js_call(urls, "leader", stream)
    return leader if isinstance(leader, str) else None


def _stream_state(urls: list[str], stream: str) -> int:
    """How far the stream got (last sequence + 1): the kill waits for traffic, not for a clock."""
    v = _js_call(urls, "state", stream)
    return v if isinstance(v, int) else 0


def test_server_restart_mid_window_no_loss_in_order() -> None:
    """Untimed sends through the window while the server is killed and restarted: flush() confirms
    every message, none lost, stored once each and in send order (in-flight ones resent first)."""
    n = 1500
    with testing.nats_server() as server:
        url = f"{server.url}/{testing.unique_name('jobs')}"
        with kipc.open(url, create=True, ack_wait=5.0) as tx:
            for seq in range(n):
                if seq == n // 3:
                    server.stop(kill=True)
                    server.start()  # same port, same file storage
                tx.send(payload(1, seq, 64 + seq % 100))
            tx.flush(timeout=90)
            with kipc.open(url) as rx:
                got = [check(rx.recv(timeout=30))[1] for _ in range(n)]
                with pytest.raises(kipc.WouldBlock):
                    rx.recv(timeout=0)
        assert got == list(range(n)), f"first difference at {next(i for i, s in enumerate(got) if s != i)}"
