"""ring:// under channel core v2: close from any thread, waiting without locks, deadlines.

* ``close()`` from one thread wakes the threads of this process blocked on that
  handle (send on a full ring, recv on an empty one) with ``ChannelClosed``
  ("closed by this process") within 100 ms, and never unmaps under them.
* Many threads on one handle: every message whole and exactly once.
* A SIGSTOPped peer stops nobody: a producer stopped mid-fragmented message (it
  holds the producer lock) lets a timed send and a timed recv time out on time;
  a consumer stopped while it waits for data holds no lock.
* The readiness hooks (``_wait``, ``_ready``, ``_try_send``, ``_try_recv``) consume nothing.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import kipc
from kipc import testing
from kipc._base import Deadline
from kipc.transports.ring import RingChannel

from ..helpers import REPO, check, payload

KiB = 1 << 10


@pytest.fixture
def ring() -> Iterator[Callable[..., RingChannel]]:
    """Factory of creator ends; everything it made is closed (and removed) at the end."""
    made: list[RingChannel] = []

    def make(**kw: object) -> RingChannel:
        ch = RingChannel(testing.unique_name("v2"), create=True, **kw)  # type: ignore[arg-type]
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.001)


# -- close from another thread ---------------------------------------------------------


def _blocked(op: Callable[[], object], out: dict[str, object], started: threading.Event) -> None:
    started.set()
    try:
        op()
        out["result"] = "returned"
    except BaseException as e:
        out["result"] = e
    out["at"] = time.monotonic()


@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("end", ["creator", "opener"])
def test_close_from_another_thread_wakes_blocked_send_and_recv(
        end: str, timeout: float | None, ring: Callable[..., RingChannel]) -> None:
    worst = 0.0
    for _ in range(50):
        full, empty = ring(capacity=4 * KiB), ring(capacity=4 * KiB)
        if end == "opener":
            full, empty = RingChannel(full.name), RingChannel(empty.name)
        while True:  # fill the ring
            try:
                full.send(b"x" * 100, timeout=0)
            except kipc.WouldBlock:
                break
        outs: list[dict[str, object]] = [{}, {}]
        started = [threading.Event(), threading.Event()]
        send = functools.partial(full.send, b"y" * 100, timeout=timeout)
        recv = functools.partial(empty.recv, timeout=timeout)
        threads = [threading.Thread(target=_blocked, args=(op, out, s))
                   for op, out, s in zip((send, recv), outs, started, strict=True)]
        for t in threads:
            t.start()
        for s in started:
            s.wait(5)
        time.sleep(0.005)  # let both reach their wait
        t0 = time.monotonic()
        full.close()
        empty.close()
        closed_in = time.monotonic() - t0
        for t in threads:
            t.join(5)
            assert not t.is_alive(), "a blocked call was not woken by close()"
        for out in outs:
            err = out["result"]
            assert isinstance(err, kipc.ChannelClosed), err
            assert "closed by this process" in str(err)
            worst = max(worst, float(out["at"]) - t0)  # type: ignore[arg-type]
        assert closed_in < 0.1, f"close() itself took {closed_in:.3f} s"
    assert worst < 0.1, f"a blocked call took {worst * 1e3:.1f} ms to raise after close()"


def test_close_with_a_live_view_keeps_the_mapping_until_release(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    tx.send(b"held")
    mv = rx.recv(view=True)
    rx.close()
    assert bytes(mv) == b"held"  # still mapped: the view keeps it
    mv.release()  # consumes the message, then unmaps
    with pytest.raises(kipc.WouldBlock):
        tx.recv(timeout=0)


def test_calls_after_close_raise_closed_by_this_process(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    raw_send, raw_recv = rx._send_blocking, rx._recv_blocking
    rx.close()
    for call in (lambda: raw_send(b"x", Deadline(None), {}), lambda: raw_recv(Deadline(None), {})):
        with pytest.raises(kipc.ChannelClosed, match="closed by this process"):
            call()


# -- many threads on one handle ----------------------------------------------------------


def test_four_senders_four_receivers_on_one_handle(ring: Callable[..., RingChannel]) -> None:
    ch = ring(capacity=64 * KiB)
    senders, per_sender = 4, 25_000
    total = senders * per_sender
    got: list[list[bytes]] = [[] for _ in range(4)]
    count = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def send(p: int) -> None:
        try:
            for i in range(per_sender):
                ch.send(payload(p, i, 20 + (i * 13 + p) % 180))
        except BaseException as e:
            errors.append(e)

    def recv(c: int) -> None:
        try:
            while True:
                with lock:
                    if count[0] >= total:
                        return
                try:
                    m = ch.recv(timeout=0.2)
                except kipc.DeadlineExceeded:
                    continue
                got[c].append(m)
                with lock:
                    count[0] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=send, args=(p,)) for p in range(senders)]
    threads += [threading.Thread(target=recv, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert not errors, errors
    seen: set[tuple[int, int]] = set()
    for msgs in got:
        last: dict[int, int] = {}
        for m in msgs:
            p, s = check(m)
            assert s > last.get(p, -1), "one receiver saw a producer's messages out of order"
            last[p] = s
            assert (p, s) not in seen, f"message {p}/{s} received twice"
            seen.add((p, s))
    assert len(seen) == total


# -- stopped peers stop nobody -------------------------------------------------------------


_PRODUCER = """
import sys
from kipc.transports.ring import RingChannel
from tests.helpers import payload
ch = RingChannel(sys.argv[1])
print('READY', flush=True)
ch.send(payload(1, 0, 200 * 1024))
ch.send(payload(1, 1, 100))
print('SENT', flush=True)
"""


def test_producer_stopped_mid_fragmented_message_stops_nobody(ring: Callable[..., RingChannel]) -> None:
    rx = ring(capacity=16 * KiB)  # frag_max ~8 KiB: the 200 KiB message travels in fragments
    other = RingChannel(rx.name)
    with testing.spawn(_PRODUCER, rx.name, cwd=REPO) as child:
        # nobody reads: the producer fills the ring and waits for space, holding its lock mid-message
        _until(lambda: rx.info()["frag_active"] == 1 and rx._ring.used() > 8 * KiB)
        os.kill(child.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout, match="timed out after 1 s"):
                other.send(b"not now", timeout=1)
            assert time.monotonic() - t0 < 1.2
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout, match="timed out after 1 s"):
                rx.recv(timeout=1)  # takes what is there, then waits for the rest: on time
            assert time.monotonic() - t0 < 1.2
            assert rx.info()["claim_pid"] == os.getpid()  # the rest of the message is rx's to take
            third = RingChannel(rx.name)
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                third.recv(timeout=0.3)  # honours rx's claim, and its own deadline
            assert time.monotonic() - t0 < 0.8
            third.close()
        finally:
            os.kill(child.pid, signal.SIGCONT)
        # the next recv on this handle resumes the message it claimed: whole, nothing torn
        check(rx.recv(timeout=20), 1, 0)
        check(rx.recv(timeout=20), 1, 1)
        child.expect("SENT", timeout=20)
        child.check()
    other.send(b"after")
    assert rx.recv(timeout=5) == b"after"
    other.close()


_CONSUMER = """
import sys
from kipc.transports.ring import RingChannel
ch = RingChannel(sys.argv[1])
print('READY', flush=True)
print('GOT', ch.recv(timeout=60), flush=True)
"""


def test_consumer_stopped_while_waiting_holds_no_lock(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    with testing.spawn(_CONSUMER, tx.name) as child:
        _until(lambda: tx.info()["cons_waiters"] >= 1)  # the child sleeps in its recv
        os.kill(child.pid, signal.SIGSTOP)
        try:
            for i in range(3):
                tx.send(b"m%d" % i)
                t0 = time.monotonic()
                assert rx.recv(timeout=2) == b"m%d" % i
                assert time.monotonic() - t0 < 1.0
        finally:
            os.kill(child.pid, signal.SIGCONT)
        tx.send(b"bye")
        assert child.expect("GOT") == "GOT b'bye'"
        child.check()
    rx.close()


# -- the readiness hooks ----------------------------------------------------------------------


def test_wait_consumes_nothing_and_try_recv_gets_the_message(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    assert rx._try_recv({}) is None
    assert not rx._ready("recv")
    assert rx._ready("send")
    threading.Timer(0.05, lambda: tx.send(b"hello")).start()
    t0 = time.monotonic()
    rx._wait("recv", Deadline(5))
    assert time.monotonic() - t0 < 2
    assert rx._ready("recv")
    rx._wait("recv", Deadline(5))  # returns at once: still there
    assert tx.qsize() == 1  # nothing consumed by waiting
    assert rx._try_recv({}) == b"hello"
    assert rx._try_recv({}) is None
    rx.close()


def test_wait_honours_its_deadline_on_an_empty_ring(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    for timeout in (0, 0.2):
        t0 = time.monotonic()
        ch._wait("recv", Deadline(timeout))  # returns normally: the caller re-checks
        assert timeout <= time.monotonic() - t0 + 0.01 < timeout + 0.5


def test_wait_send_on_a_full_ring_until_space(ring: Callable[..., RingChannel]) -> None:
    ch = ring(capacity=4 * KiB)
    while ch._try_send(b"z" * 200, {}):
        pass
    assert not ch._ready("send")
    t0 = time.monotonic()
    ch._wait("send", Deadline(0.2))
    assert 0.19 <= time.monotonic() - t0 < 0.7
    threading.Timer(0.05, ch.recv).start()
    ch._wait("send", Deadline(5))
    assert time.monotonic() - t0 < 3
    assert ch._try_send(b"z" * 200, {})


def test_wait_is_woken_by_a_local_close(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rx = RingChannel(tx.name)
    threading.Timer(0.05, rx.close).start()
    t0 = time.monotonic()
    rx._wait("recv", Deadline(None))
    assert time.monotonic() - t0 < 1


def test_timeout_zero_would_block_and_expired_timeout_names_it(ring: Callable[..., RingChannel]) -> None:
    ch = ring()
    with pytest.raises(kipc.WouldBlock, match="would block"):
        ch.recv(timeout=0)
    with pytest.raises(kipc.Timeout, match=r"timed out after 0\.05 s"):
        ch.recv(timeout=0.05)
    with pytest.raises(kipc.WouldBlock):
        ch._recv_blocking(Deadline(0), {})
    d = Deadline(None)
    assert d.end == math.inf


def test_try_recv_resumes_a_fragmented_message_across_calls(ring: Callable[..., RingChannel]) -> None:
    """A fragmented message received by non-blocking attempts (the asyncio shape): whole, once."""
    rx = ring(capacity=16 * KiB)
    tx = RingChannel(rx.name)
    big = payload(3, 0, 100 * KiB)
    t = threading.Thread(target=tx.send, args=(big,))
    t.start()
    got = None
    end = time.monotonic() + 20
    while got is None:
        assert time.monotonic() < end
        got = rx._try_recv({})
        if got is None:
            rx._wait("recv", Deadline(1))
    t.join(10)
    assert got == big
    tx.close()




# -- claims: a consumer that times out mid-message keeps it ---------------------------------------


def test_closing_a_claimant_drops_its_message_and_frees_the_ring(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=8 * KiB)
    claimant, other = RingChannel(tx.name), RingChannel(tx.name)
    t = threading.Thread(target=tx.send, args=(payload(6, 0, 64 * KiB),), daemon=True)
    t.start()
    _until(lambda: tx._ring.used() > 4 * KiB)
    assert claimant._try_recv({}) is None  # claims the message, takes what is there
    assert tx.info()["claim_pid"] == os.getpid()
    claimant.close()  # drops the claim: the rest of that message is skipped
    with pytest.raises(kipc.Timeout):
        other.recv(timeout=0.5)  # skips the rest as it arrives, never returns a partial
    t.join(20)
    tx.send(b"after")
    assert other.recv(timeout=5) == b"after"
    other.close()


def test_arecv_of_a_fragmented_message_survives_cancellation(ring: Callable[..., RingChannel]) -> None:
    import asyncio

    rx = ring(capacity=16 * KiB)
    tx = RingChannel(rx.name)
    big = payload(7, 0, 200 * KiB)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        sender = loop.run_in_executor(None, tx.send, big)
        got: bytes | None = None
        end = loop.time() + 20
        while got is None:  # cancel arecv again and again while the message streams in
            assert loop.time() < end
            try:
                got = await asyncio.wait_for(rx.arecv(), 0.0005)
            except TimeoutError:
                pass
        await sender
        return got

    assert asyncio.run(main()) == big  # whole, despite the cancellations mid-message
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)  # and only once
    tx.close()


def test_loan_open_at_close_publishes_nothing(ring: Callable[..., RingChannel]) -> None:
    rx = ring()
    tx = RingChannel(rx.name)
    with pytest.raises(kipc.ChannelClosed, match="closed by this process"):
        with tx.loan(16) as buf:
            buf[:] = b"x" * 16
            tx.close()
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)


def test_forked_child_does_not_inherit_a_claim(ring: Callable[..., RingChannel]) -> None:
    from ..helpers import fork_child, wait_pid

    tx = ring(capacity=8 * KiB)
    rx = RingChannel(tx.name)
    big = payload(8, 0, 64 * KiB)
    t = threading.Thread(target=tx.send, args=(big,), daemon=True)
    t.start()
    _until(lambda: tx._ring.used() > 4 * KiB)
    if rx._try_recv({}) is None:  # claimed mid-message (else the message was simply whole)
        assert tx.info()["claim_pid"] == os.getpid()

        def child() -> None:  # the parent's claim is not the child's: it waits, gets nothing
            with pytest.raises(kipc.Timeout):
                rx.recv(timeout=0.3)

        assert wait_pid(fork_child(child)) == 0
        assert rx.recv(timeout=20) == big  # the parent's handle resumes it, whole
    t.join(20)
    rx.close()


# -- producer claims: asend of a fragmented message does not block the loop -------------------------


def test_asend_and_arecv_of_big_messages_on_one_loop(ring: Callable[..., RingChannel]) -> None:
    """Producer and consumer tasks on the same event loop: a message 12x the ring goes through."""
    import asyncio

    tx = ring(capacity=16 * KiB)
    rx = RingChannel(tx.name)
    msgs = [payload(9, i, n) for i, n in enumerate([200 * KiB, 100, 50 * KiB, 8 * KiB, 190 * KiB])]

    async def main() -> list[bytes]:
        async def produce() -> None:
            for m in msgs:
                await asyncio.wait_for(tx.asend(m), 20)

        task = asyncio.create_task(produce())
        got = [await asyncio.wait_for(rx.arecv(), 20) for _ in msgs]
        await task
        return got

    assert asyncio.run(main()) == msgs
    rx.close()


def test_cancelled_asend_mid_message_delivers_nothing_and_blocks_nobody(ring: Callable[..., RingChannel]) -> None:
    import asyncio

    rx = ring(capacity=16 * KiB)
    tx, other = RingChannel(rx.name), RingChannel(rx.name)

    async def main() -> None:
        with pytest.raises(TimeoutError):  # nobody reads: it stops mid-message, then is cancelled
            await asyncio.wait_for(tx.asend(payload(1, 0, 100 * KiB)), 0.2)

    asyncio.run(main())
    assert rx.info()["frag_active"] == 1  # half written, claimed by tx
    t = threading.Thread(target=other.send, args=(b"small",), kwargs={"timeout": 5})
    t.start()  # waits for tx's claim; takes it over once stale (1 s), the half message is dropped
    t0 = time.monotonic()
    assert rx.recv(timeout=5) == b"small"  # the half-written message is never delivered
    assert time.monotonic() - t0 < 3
    t.join(5)
    with pytest.raises(kipc.WouldBlock):
        rx.recv(timeout=0)
    tx.send(b"tx again")  # the cancelled sender's handle still works
    assert rx.recv(timeout=5) == b"tx again"
    tx.close()
    other.close()


_ASYNC_PRODUCER = """
import asyncio, sys
from kipc.transports.ring import RingChannel
ch = RingChannel(sys.argv[1])
print('READY', flush=True)
asyncio.run(ch.asend(b'y' * 100_000))  # nobody reads: stops mid-message, claimed
"""


def test_killed_async_producer_claim_is_taken_over_at_once(ring: Callable[..., RingChannel]) -> None:
    rx = ring(capacity=16 * KiB)
    other = RingChannel(rx.name)
    with testing.spawn(_ASYNC_PRODUCER, rx.name) as child:
        _until(lambda: rx.info()["pclaim_pid"] == child.pid)
        child.kill()  # SIGKILL and reap
    t = threading.Thread(target=other.send, args=(b"after",), kwargs={"timeout": 5})
    t0 = time.monotonic()
    t.start()
    assert rx.recv(timeout=5) == b"after"  # the dead one's half message is dropped, never delivered
    assert time.monotonic() - t0 < 0.9  # a dead claimant is found at once (no 1 s staleness wait)
    t.join(5)
    assert rx.info()["pclaim_pid"] == 0
    other.close()


def test_close_wakes_a_recv_waiting_for_the_consumer_lock(ring: Callable[..., RingChannel]) -> None:
    """A thread blocked on cons_lock (another thread holds a view) is woken by close() too."""
    tx = ring()
    rx = RingChannel(tx.name)
    tx.send(b"viewed")
    tx.send(b"second")
    mv = rx.recv(view=True)  # holds the consumer lock until released
    out: dict[str, object] = {}
    started = threading.Event()
    t = threading.Thread(target=_blocked, args=(rx.recv, out, started))
    t.start()
    started.wait(5)
    time.sleep(0.05)
    t0 = time.monotonic()
    rx.close()
    t.join(5)
    assert isinstance(out["result"], kipc.ChannelClosed)
    assert float(out["at"]) - t0 < 0.1  # type: ignore[arg-type]
    assert bytes(mv) == b"viewed"  # the view keeps the mapping
    mv.release()
    assert tx.recv(timeout=5) == b"second"
