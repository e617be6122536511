"""unix:// topics (kipc.Topic on a Unix socket): fan-out to real subscriber processes, order, block and
drop_oldest (exact .dropped), dead subscribers and publishers, timeouts, close from another thread, asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import threading
import time

import pytest

import kipc
from kipc import testing
from kipc.transports.unix_topic import UnixTopic

from ..helpers import REPO, check, fork_child, payload, wait_pid

SUBSCRIBER = """
import sys
sys.path.insert(0, sys.argv[2])
import kipc
from tests.helpers import check
n = 0
with kipc.Topic(sys.argv[1], timeout=10) as sub:
    print("READY", flush=True)
    for msg in sub:             # ends when the publisher closes
        check(msg, 1, n)
        n += 1
    print("DONE", n, sub.dropped, flush=True)
"""

PUBLISHER = """
import sys, os, signal
import kipc
pub = kipc.Topic(sys.argv[1], create=True, subscribe=False)
print("READY", flush=True)
sys.stdin.readline()
for i in range(10):
    pub.send(b"m%d" % i, timeout=10)
pub.flush(timeout=10)
print("SENT", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _url() -> str:
    return f"unix://{testing.unique_name('topic')}"


def _wait_subscribers(pub: UnixTopic, n: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while pub.subscribers < n:
        assert time.monotonic() < end, f"{pub.subscribers} of {n} subscribers joined"
        pub.flush(timeout=1)  # accepts waiting subscribers
        time.sleep(0.01)


def test_fan_out_to_three_subscriber_processes_in_order() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub:
        assert isinstance(pub, UnixTopic)
        children = [testing.spawn(SUBSCRIBER, url, str(REPO)) for _ in range(3)]
        try:
            for i in range(300):
                pub.send(payload(1, i, 20 + (i * 37) % 3000), timeout=10)
            assert pub.subscribers == 3
            pub.flush(timeout=10)
        finally:
            pub.close()  # subscribers see the end of the topic
            for c in children:
                try:
                    assert c.expect("DONE", 20).split()[1:] == ["300", "0"]
                    c.check(10)
                finally:
                    c.close()


def test_subscriber_gets_only_what_was_published_after_it_joined() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub:
        pub.send(b"before anyone")
        with kipc.Topic(url) as early:
            pub.send(b"one")
            with kipc.Topic(url) as late:
                pub.send(b"two")
                assert late.recv(timeout=5) == b"two"
                assert late.dropped == 0
            assert [early.recv(timeout=5), early.recv(timeout=5)] == [b"one", b"two"]
            with pytest.raises(kipc.WouldBlock):
                early.recv(timeout=0)


def test_block_overflow_times_out_unchanged_and_loses_nothing() -> None:
    url = _url()
    big = 64 * 1024
    with kipc.Topic(url, create=True, subscribe=False, queue=4) as pub, kipc.Topic(url) as slow:
        sent = 0
        with pytest.raises(kipc.Timeout):
            for sent in range(10_000):
                pub.send(payload(1, sent, big), timeout=0.2)
        assert 0 < sent < 10_000  # the socket buffer plus a queue of 4, then the send waited and timed out
        with pytest.raises(kipc.WouldBlock):
            pub.send(b"x", timeout=0)

        got: list[bytes] = []

        def read() -> None:
            for _ in range(sent + 1):
                got.append(slow.recv(timeout=10))

        t = threading.Thread(target=read)
        t.start()
        pub.send(payload(1, sent, big), timeout=10)  # the timed-out message again: room now
        t.join(20)
        assert len(got) == sent + 1
        for i, msg in enumerate(got):
            check(msg, 1, i)  # every message, in order; the timed-out attempts left no trace
        assert slow.dropped == 0


def test_drop_oldest_never_blocks_and_counts_drops_exactly() -> None:
    url = _url()
    n, size = 300, 50_000
    with kipc.Topic(url, create=True, subscribe=False, overflow="drop_oldest", queue=8) as pub, \
            kipc.Topic(url) as slow, kipc.Topic(url) as fast:
        got: dict[str, list[int]] = {"slow": [], "fast": []}

        def read(name: str, sub: UnixTopic) -> None:
            seqs = got[name]
            while not seqs or seqs[-1] != n - 1:  # the newest message always survives
                seqs.append(check(sub.recv(timeout=10), 1)[1])

        fast_reader = threading.Thread(target=read, args=("fast", fast))
        fast_reader.start()
        t0 = time.monotonic()
        for i in range(n):
            pub.send(payload(1, i, size), timeout=0)  # never blocks, never WouldBlock
        assert time.monotonic() - t0 < 10
        slow_reader = threading.Thread(target=read, args=("slow", slow))  # starts reading only now
        slow_reader.start()
        pub.flush(timeout=20)
        for t in (fast_reader, slow_reader):
            t.join(20)
            assert not t.is_alive()
        for name, sub in (("slow", slow), ("fast", fast)):
            seqs = got[name]
            assert seqs == sorted(set(seqs))  # order kept, nothing twice
            assert sub.dropped == n - len(seqs)  # exact: every gap counted
        assert slow.dropped > 0


def test_dead_subscriber_is_dropped_without_harm() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as live:
        with testing.spawn(SUBSCRIBER, url, str(REPO)) as child:
            _wait_subscribers(pub, 2)
            pub.send(payload(1, 0, 100), timeout=10)
            child.kill(signal.SIGKILL)
        check(live.recv(timeout=10), 1, 0)
        for i in range(1, 2000):  # enough to fill a dead socket's buffer if it were kept
            pub.send(payload(1, i, 1000), timeout=10)
            check(live.recv(timeout=10), 1, i)
        assert pub.subscribers == 1


def test_dead_publisher_ends_the_subscription() -> None:
    url = _url()
    with testing.spawn(PUBLISHER, url, stdin=True) as child:
        sub = kipc.Topic(url)
        try:
            child.write("go\n")
            child.expect("SENT", 10)
            assert [sub.recv(timeout=10) for _ in range(10)] == [b"m%d" % i for i in range(10)]
            with pytest.raises(kipc.ChannelClosed):
                sub.recv(timeout=10)
            assert sub.peer_pid == child.pid
        finally:
            sub.close()
        assert child.wait(10) == -signal.SIGKILL
    # the killed publisher left its socket file: a new publisher replaces it (stale), then removes it
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub2:
        pub.send(b"again")
        assert sub2.recv(timeout=5) == b"again"


def test_timeouts_and_no_subscribers() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub:
        pub.send(b"to nobody", timeout=0)  # no subscriber: nothing to wait for
        with kipc.Topic(url) as sub:
            t0 = time.monotonic()
            with pytest.raises(kipc.Timeout):
                sub.recv(timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(kipc.WouldBlock):
                sub.recv(timeout=0)
            assert kipc.wait([sub], timeout=0.1) == []
            pub.send(b"now")
            assert kipc.wait([sub], timeout=5) == [sub]
            assert sub.recv(timeout=5) == b"now"


def test_close_from_another_thread_wakes_blocked_recv_and_send() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, queue=1) as pub:
        sub = kipc.Topic(url)
        errors: list[BaseException] = []

        def blocked_recv() -> None:
            try:
                sub.recv()
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=blocked_recv)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        sub.close()
        t.join(2)
        assert not t.is_alive() and time.monotonic() - t0 < 1
        assert isinstance(errors[0], kipc.ChannelClosed)

        with kipc.Topic(url) as slow:  # never reads: the publisher's untimed send blocks
            def blocked_send() -> None:
                try:
                    while True:
                        pub.send(b"x" * 65536)
                except BaseException as e:
                    errors.append(e)

            t = threading.Thread(target=blocked_send)
            t.start()
            time.sleep(0.3)
            assert t.is_alive()
            t0 = time.monotonic()
            pub.close()
            t.join(3)
            assert not t.is_alive() and time.monotonic() - t0 < 3
            assert isinstance(errors[1], kipc.ChannelClosed)
            assert slow.recv(timeout=5) == b"x" * 65536


def test_asyncio_cancellation_loses_nothing_and_iteration() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub:
        n = 200

        def publish() -> None:
            for i in range(n):
                pub.send(payload(1, i, 64), timeout=10)
                if i % 20 == 0:
                    time.sleep(0.01)

        async def main() -> list[bytes]:
            got: list[bytes] = []
            while len(got) < n:
                try:  # most of these are cancelled while waiting: none may take a message with it
                    got.append(await asyncio.wait_for(sub.arecv(timeout=10), 0.002))
                except TimeoutError:
                    pass
            return got

        t = threading.Thread(target=publish)
        t.start()
        got = asyncio.run(main())
        t.join(10)
        assert [check(m, 1)[1] for m in got] == list(range(n))

        async def anext_two() -> list[bytes]:
            out = []
            async for m in sub:
                out.append(m)
                if len(out) == 2:
                    break
            return out

        pub.send(b"a")
        pub.send(b"b")
        assert asyncio.run(anext_two()) == [b"a", b"b"]

        async def publish_async() -> None:
            for _ in range(50):
                await pub.asend(b"x" * 65536, timeout=10)  # more than the socket holds: asend waits

        got2: list[bytes] = []
        reader = threading.Thread(target=lambda: got2.extend(sub.recv(timeout=10) for _ in range(50)))
        reader.start()
        asyncio.run(publish_async())
        reader.join(20)
        assert got2 == [b"x" * 65536] * 50


def test_codec_roles_and_bad_input() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, codec="json", max_message_size=100) as pub, \
            kipc.Topic(url, codec="json") as sub:
        pub.send({"frame": 1})
        assert sub.recv(timeout=5) == {"frame": 1}
        with pytest.raises(kipc.MessageTooLarge, match="100"):
            pub.send("x" * 200)
        with pytest.raises(kipc.Unsupported):
            sub.send({"no": 1})
        with pytest.raises(kipc.Unsupported):
            pub.recv(timeout=0)
        with pytest.raises(kipc.AlreadyExists):
            kipc.Topic(url, create=True, subscribe=False)
    for bad in ({"overflow": "drop_newest"}, {"queue": 0}, {"create": True}):  # create=True needs subscribe=False
        with pytest.raises(kipc.InvalidArgument):
            kipc.Topic(url, **bad)
    with pytest.raises(kipc.Unsupported):
        kipc.Topic(url, subscribe=False)  # one publisher: the creator
    with pytest.raises(kipc.NotFound):
        kipc.Topic(url, timeout=1)  # closed: the socket file is gone
    assert not os.path.exists(os.path.join(kipc._naming.runtime_dir("sock"), url[7:]))


def test_forked_child_cannot_use_the_parents_ends() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub:
        def child() -> None:
            for call in (lambda: pub.send(b"torn?", timeout=1), lambda: sub.recv(timeout=1)):
                try:
                    call()
                except kipc.Unsupported:
                    continue
                raise AssertionError("a forked child used its parent's topic end")

        assert wait_pid(fork_child(child)) == 0
        pub.send(b"parent still fine")
        assert sub.recv(timeout=5) == b"parent still fine"
    assert not os.path.exists(os.path.join(kipc._naming.runtime_dir("sock"), url[7:]))


SLOW_SUBSCRIBER = """
import sys, time
import kipc
with kipc.Topic(sys.argv[1], timeout=10) as sub:
    print("READY", flush=True)
    time.sleep(60)          # never reads: the publisher fills its buffers
"""


def test_a_subscriber_dying_unblocks_a_blocked_publisher() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, queue=2) as pub, \
            testing.spawn(SLOW_SUBSCRIBER, url) as child:
        with pytest.raises(kipc.Timeout):
            while True:  # fill the slow subscriber's socket buffer and queue
                pub.send(b"y" * 65536, timeout=0.2)
        done = threading.Event()

        def send_one() -> None:
            pub.send(b"after", timeout=10)  # blocked by the slow subscriber...
            done.set()

        t = threading.Thread(target=send_one)
        t.start()
        time.sleep(0.2)
        assert not done.is_set()
        child.kill(signal.SIGKILL)  # ...until it dies: then it is dropped and the send completes
        t.join(5)
        assert done.is_set() and pub.subscribers == 0


def test_publishing_threads_each_keep_their_order() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub:
        def publish(producer: int) -> None:
            for i in range(300):
                pub.send(payload(producer, i, 40 + i), timeout=10)

        threads = [threading.Thread(target=publish, args=(p,)) for p in (1, 2)]
        for t in threads:
            t.start()
        seen = {1: -1, 2: -1}
        for _ in range(600):
            p, s = check(sub.recv(timeout=10))
            assert s == seen[p] + 1  # whole, once, in each producer's order
            seen[p] = s
        for t in threads:
            t.join(10)
        assert seen == {1: 299, 2: 299}


@pytest.mark.parametrize("frames, needle", [
    ([b"abc"], "no sequence number"),                            # shorter than a sequence number
    ([b"\0" * 8 + b"data"], "did not start with its hello"),     # data before the hello
    ([b"\5" + b"\0" * 7, b"\4" + b"\0" * 7 + b"x"], "went back"),  # sequence going backwards
])
def test_a_hostile_publisher_is_a_protocol_error(frames: list[bytes], needle: str) -> None:
    name = testing.unique_name("topic")
    path = os.path.join(kipc._naming.runtime_dir("sock"), name)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not kipc: a peer that lies
    try:
        raw.bind(path)
        raw.listen(1)
        with kipc.Topic(f"unix://{name}") as sub:
            conn, _ = raw.accept()
            with conn:
                for f in frames:
                    conn.sendall(struct.pack("<I", len(f)) + f)
                with pytest.raises(kipc.ProtocolError, match=needle):
                    sub.recv(timeout=5)
    finally:
        raw.close()
        os.unlink(path)


# -- batch=True: a subscriber's queue goes out in one sendmsg once it holds queue= messages ------------------
def test_batch_fan_out_to_three_subscriber_processes_in_order() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, batch=True, queue=16) as pub:
        children = [testing.spawn(SUBSCRIBER, url, str(REPO)) for _ in range(3)]
        try:
            _wait_subscribers(pub, 3)
            for i in range(1000):  # mixed sizes: some batches end in a partly written frame
                pub.send(payload(1, i, 20 + (i * 997) % 100_000), timeout=10)
        finally:
            pub.close()  # pushes out the last partial batch, then subscribers see the end
            for c in children:
                try:
                    assert c.expect("DONE", 30).split()[1:] == ["1000", "0"]
                    c.check(10)
                finally:
                    c.close()


def test_batch_holds_messages_until_the_queue_fills_or_flush() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, batch=True, queue=4) as pub, kipc.Topic(url) as sub:
        for i in range(3):
            pub.send(b"m%d" % i, timeout=0)  # queued, not written: send returns at once
        with pytest.raises(kipc.Timeout):
            sub.recv(timeout=0.2)
        pub.send(b"m3", timeout=0)  # the fourth fills the queue: all four go out in one write
        assert [sub.recv(timeout=5) for _ in range(4)] == [b"m0", b"m1", b"m2", b"m3"]
        pub.send(b"m4")
        with pytest.raises(kipc.WouldBlock):
            sub.recv(timeout=0)
        pub.flush(timeout=5)
        assert sub.recv(timeout=5) == b"m4"
        assert sub.dropped == 0
    with pytest.raises(kipc.InvalidArgument, match="publisher option"):
        kipc.Topic(url, batch=True)
    with pytest.raises(kipc.InvalidArgument, match="True or False"):
        kipc.Topic(url, create=True, subscribe=False, batch="yes")


def test_batch_block_slow_subscriber_times_out_unchanged_and_loses_nothing() -> None:
    url = _url()
    big = 64 * 1024
    with kipc.Topic(url, create=True, subscribe=False, batch=True, queue=4) as pub, kipc.Topic(url) as slow:
        sent = 0
        with pytest.raises(kipc.Timeout):
            for sent in range(10_000):
                pub.send(payload(1, sent, big), timeout=0.2)
        assert 0 < sent < 10_000  # the socket buffer plus a queue of 4, then the send waited and timed out
        got: list[bytes] = []

        def read() -> None:
            for _ in range(sent + 1):
                got.append(slow.recv(timeout=10))

        t = threading.Thread(target=read)
        t.start()
        pub.send(payload(1, sent, big), timeout=10)  # the timed-out message again
        pub.flush(timeout=10)
        t.join(20)
        assert len(got) == sent + 1
        for i, msg in enumerate(got):
            check(msg, 1, i)
        assert slow.dropped == 0


def test_batch_drop_oldest_slow_subscriber_does_not_hold_back_a_fast_one() -> None:
    url = _url()
    n, size = 400, 50_000
    with kipc.Topic(url, create=True, subscribe=False, overflow="drop_oldest", batch=True, queue=8) as pub, \
            kipc.Topic(url) as slow, kipc.Topic(url) as fast:
        got: dict[str, list[int]] = {"slow": [], "fast": []}

        def read(name: str, sub: UnixTopic) -> None:
            seqs = got[name]
            while not seqs or seqs[-1] != n - 1:
                seqs.append(check(sub.recv(timeout=10), 1)[1])

        fast_reader = threading.Thread(target=read, args=("fast", fast))
        fast_reader.start()
        for i in range(n):
            pub.send(payload(1, i, size), timeout=0)  # never blocks
            if i % 8 == 7:
                time.sleep(0.002)  # a publisher slower than the fast reader: it must get (nearly) all
        slow_reader = threading.Thread(target=read, args=("slow", slow))  # starts reading only now
        slow_reader.start()
        pub.flush(timeout=20)
        for t in (fast_reader, slow_reader):
            t.join(20)
            assert not t.is_alive()
        for name, sub in (("slow", slow), ("fast", fast)):
            seqs = got[name]
            assert seqs == sorted(set(seqs))  # order kept, nothing twice
            assert sub.dropped == n - len(seqs)  # exact
        assert slow.dropped > 0
        assert fast.dropped < slow.dropped


def test_batch_dead_subscriber_is_dropped_without_harm() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, batch=True, queue=8) as pub, kipc.Topic(url) as live:
        with testing.spawn(SUBSCRIBER, url, str(REPO)) as child:
            _wait_subscribers(pub, 2)
            child.kill(signal.SIGKILL)
        for i in range(2000):  # enough to fill a dead socket's buffer if it were kept
            pub.send(payload(1, i, 1000), timeout=10)
            if i % 8 == 7:
                for j in range(i - 7, i + 1):
                    check(live.recv(timeout=10), 1, j)
        assert pub.subscribers == 1


def test_batch_asend_and_kipc_wait() -> None:
    url = _url()
    with kipc.Topic(url, create=True, subscribe=False, batch=True, queue=3) as pub, kipc.Topic(url) as sub:
        async def main() -> list[bytes]:
            for i in range(5):
                await pub.asend(b"a%d" % i, timeout=5)  # returns once queued
            got = [await sub.arecv(timeout=5) for _ in range(3)]  # the first queue-full went out
            assert kipc.wait([sub], timeout=0.1) == []  # two still held by the publisher
            pub.flush(timeout=5)
            assert kipc.wait([sub], timeout=5) == [sub]
            return got + [await sub.arecv(timeout=5) for _ in range(2)]

        assert asyncio.run(main()) == [b"a%d" % i for i in range(5)]
