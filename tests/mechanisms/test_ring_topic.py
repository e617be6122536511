"""ring:// topics (RingTopic): broadcast delivery, history, overflow modes, limits, zero-copy,
threads, asyncio, fork, and attach checks — between real processes where it matters."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import kipc
from kipc import testing
from kipc.transports.ring import RingChannel, shm_path
from kipc.transports.ring_topic import RingTopic

from ..helpers import check, fork_child, payload, wait_pid


@pytest.fixture
def name() -> str:
    return testing.unique_name("topic")


@pytest.fixture
def pub(name: str) -> Iterator[RingTopic]:
    t = RingTopic(f"ring://{name}?capacity=16KiB", create=True, subscribe=False)
    try:
        yield t
    finally:
        t.close()


def test_every_subscriber_gets_everything_after_it_joined_in_order(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s1:
        for i in range(10):
            pub.send(b"a%d" % i)
        with RingTopic(f"ring://{name}") as s2:
            for i in range(10):
                pub.send(b"b%d" % i)
            assert [s1.recv(timeout=1) for _ in range(20)] == [b"a%d" % i for i in range(10)] + [
                b"b%d" % i for i in range(10)]
            assert [s2.recv(timeout=1) for _ in range(10)] == [b"b%d" % i for i in range(10)]
            with pytest.raises(kipc.WouldBlock):
                s2.recv(timeout=0)
            assert s1.dropped == 0 and s2.dropped == 0


def test_history_starts_at_the_last_n_messages(pub: RingTopic, name: str) -> None:
    for i in range(20):
        pub.send(b"h%d" % i)
    with RingTopic(f"ring://{name}", history=5) as s, RingTopic(f"ring://{name}", history=100) as all_, \
            RingTopic(f"ring://{name}") as none:
        assert [s.recv(timeout=1) for _ in range(5)] == [b"h%d" % i for i in range(15, 20)]
        assert [all_.recv(timeout=1) for _ in range(20)] == [b"h%d" % i for i in range(20)]
        with pytest.raises(kipc.WouldBlock):
            none.recv(timeout=0)


def test_block_mode_publisher_times_out_and_loses_nothing(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s:
        sent = 0
        with pytest.raises(kipc.Timeout, match=re.escape(f"send on {pub.url} timed out after 0.05 s")):
            while True:
                pub.send(payload(0, sent, 1000), timeout=0.05)
                sent += 1
        assert 10 <= sent <= 16  # a 16 KiB buffer holds about 15 records of 1 KiB
        with pytest.raises(kipc.WouldBlock):
            pub.send(b"x" * 1000, timeout=0)
        for i in range(sent):
            check(s.recv(timeout=1), 0, i)
        with pytest.raises(kipc.Timeout, match=r"timed out after 0\.05 s"):
            s.recv(timeout=0.05)
        pub.send(b"after", timeout=1)
        assert s.recv(timeout=1) == b"after"
        # the general path (a codec: a Deadline reaches the C call) words it the same, unrounded
        s.codec = kipc.get_codec("json")
        with pytest.raises(kipc.Timeout) as e:
            s.recv(timeout=0.05123456)
        assert str(e.value) == f"recv on {s.url} timed out after 0.05123456 s"


def test_no_subscriber_never_blocks(pub: RingTopic) -> None:
    for _ in range(2000):
        pub.send(b"z" * 100, timeout=0)
    assert pub.info()["published"] == 2000


def test_drop_oldest_counts_exactly_what_was_missed(name: str) -> None:
    with RingTopic(f"ring://{name}?capacity=8KiB&overflow=drop_oldest", create=True, subscribe=False) as p, \
            RingTopic(f"ring://{name}") as s:
        assert s.overflow == "drop_oldest"
        n = 1000
        for i in range(n):
            p.send(payload(0, i, 100), timeout=0)
        got = []
        while True:
            try:
                got.append(check(s.recv(timeout=0))[1])
            except kipc.WouldBlock:
                break
        assert got == list(range(n - len(got), n))  # the newest ones, contiguous, in order
        assert s.dropped == n - len(got) > 0
        with pytest.raises(kipc.Unsupported):
            s.recv(view=True)


def test_many_publishers_interleaved_totals_exact(name: str) -> None:
    publishers, each = 3, 1500
    with RingTopic(f"ring://{name}?capacity=16KiB", create=True, subscribe=False) as topic, \
            RingTopic(f"ring://{name}") as s1, RingTopic(f"ring://{name}") as s2:
        def publish(p: int) -> None:
            with RingTopic(f"ring://{name}", subscribe=False) as tx:
                for i in range(each):
                    tx.send(payload(p, i, 24 + (i * 37) % 900), timeout=30)

        pids = [fork_child(lambda p=p: publish(p)) for p in range(publishers)]
        results: dict[int, dict[int, int]] = {}

        def consume(s: RingTopic, key: int) -> None:
            seen: dict[int, int] = {}
            for _ in range(publishers * each):
                p, i = check(s.recv(timeout=30))
                assert i == seen.get(p, -1) + 1, f"publisher {p}: {i} after {seen.get(p, -1)}"
                seen[p] = i
            results[key] = seen

        threads = [threading.Thread(target=consume, args=(s, k)) for k, s in enumerate((s1, s2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [wait_pid(pid, 60) for pid in pids] == [0] * publishers
        assert results == {k: {p: each - 1 for p in range(publishers)} for k in (0, 1)}
        assert topic.info()["published"] == publishers * each


def test_threads_share_one_subscriber_handle_each_message_once(pub: RingTopic, name: str) -> None:
    n, threads = 3000, 4
    with RingTopic(f"ring://{name}") as s:
        got: list[list[bytes]] = [[] for _ in range(threads)]

        def take(k: int) -> None:
            while True:
                try:
                    got[k].append(s.recv(timeout=0.5))
                except kipc.Timeout:
                    return

        ts = [threading.Thread(target=take, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for i in range(n):
            pub.send(b"%d" % i, timeout=5)
        for t in ts:
            t.join(30)
        everything = sorted(int(m) for part in got for m in part)
        assert everything == list(range(n))  # whole, exactly once across the threads
        for part in got:
            assert [int(m) for m in part] == sorted(int(m) for m in part)  # each thread sees publish order
        info = pub.info()
        assert info["subscribers"] == 1 and info["slots"][0]["lag"] == 0 and info["slots"][0]["alive"]


def test_subscriber_limit_and_dead_slot_reclaimed(name: str) -> None:
    with RingTopic(f"ring://{name}", create=True, subscribe=False, max_subscribers=2) as p:
        a = RingTopic(f"ring://{name}")
        pid = fork_child(lambda: (RingTopic(f"ring://{name}"), os._exit(0)))  # joins, dies without closing
        assert wait_pid(pid) == 0
        # the dead child's slot is free again; the two live ones are not
        b = RingTopic(f"ring://{name}")
        with pytest.raises(kipc.LimitExceeded, match="2 subscriber slots"):
            RingTopic(f"ring://{name}")
        a.close()
        with RingTopic(f"ring://{name}") as c:
            p.send(b"hi")
            assert c.recv(timeout=1) == b"hi" and b.recv(timeout=1) == b"hi"
        b.close()


def test_message_too_large_names_both_numbers(pub: RingTopic) -> None:
    with pytest.raises(kipc.MessageTooLarge, match=r"8193 bytes exceeds the limit of 8176 bytes"):
        pub.send(b"x" * 8193)
    with pytest.raises(kipc.MessageTooLarge):
        pub.send(memoryview(b"x" * 9000), timeout=1)


def test_bad_options_are_clear_errors(name: str) -> None:
    with pytest.raises(kipc.InvalidArgument, match="overflow"):
        RingTopic(f"ring://{name}", create=True, overflow="sometimes")
    with pytest.raises(kipc.InvalidArgument, match="unknown option"):
        RingTopic(f"ring://{name}?colour=red", create=True)
    with pytest.raises(kipc.InvalidArgument, match="max_subscribers"):
        RingTopic(f"ring://{name}", create=True, max_subscribers=0)
    with pytest.raises(kipc.InvalidArgument, match="both in the URL and as a keyword"):
        RingTopic(f"ring://{name}?capacity=8KiB", create=True, capacity=4096)
    with pytest.raises(kipc.NotFound):
        RingTopic(f"ring://{name}")
    assert not os.path.exists(shm_path(name))


def test_creation_is_exclusive_0600_and_owner_removes(name: str) -> None:
    old = os.umask(0)
    try:
        t = RingTopic(f"ring://{name}", create=True)
    finally:
        os.umask(old)
    with pytest.raises(kipc.AlreadyExists):
        RingTopic(f"ring://{name}", create=True)
    assert stat.S_IMODE(os.stat(shm_path(name)).st_mode) == 0o600
    opener = RingTopic(f"ring://{name}", subscribe=False)
    opener.close()
    assert os.path.exists(shm_path(name))
    t.close()
    assert not os.path.exists(shm_path(name))


def test_overflow_mismatch_on_open(name: str) -> None:
    with RingTopic(f"ring://{name}", create=True, subscribe=False):
        with pytest.raises(kipc.InvalidArgument, match="overflow='block'"):
            RingTopic(f"ring://{name}", overflow="drop_oldest")


def test_ring_and_topic_refuse_each_other(name: str) -> None:
    with RingTopic(f"ring://{name}", create=True, subscribe=False):
        with pytest.raises(kipc.BadObject, match="this is a ring topic, not a channel"):
            RingChannel(name)
    other = testing.unique_name("chan")
    with RingChannel(other, create=True):
        with pytest.raises(kipc.BadObject, match="ring:// channel, not a topic"):
            RingTopic(f"ring://{other}")


def test_creator_close_ends_subscribers_after_they_drained(name: str) -> None:
    p = RingTopic(f"ring://{name}", create=True, subscribe=False)
    s = RingTopic(f"ring://{name}")
    p.send(b"last")
    p.close()
    assert list(s) == [b"last"]
    with pytest.raises(kipc.ChannelClosed, match="closed by its creator"):
        s.recv(timeout=1)
    s.close()


def test_close_from_another_thread_wakes_recv_and_send(pub: RingTopic, name: str) -> None:
    s = RingTopic(f"ring://{name}")
    errors: list[BaseException] = []

    def blocked_recv() -> None:
        try:
            s.recv(timeout=30)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=blocked_recv)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    s.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1.0
    assert len(errors) == 1 and isinstance(errors[0], kipc.ChannelClosed)

    # a publisher blocked by a full buffer, closed from another thread
    s2 = RingTopic(f"ring://{name}")
    with RingTopic(f"ring://{name}", subscribe=False) as tx:
        while True:
            try:
                tx.send(b"y" * 1000, timeout=0)
            except kipc.WouldBlock:
                break
        errs: list[BaseException] = []

        def blocked_send() -> None:
            try:
                tx.send(b"y" * 1000, timeout=30)
            except BaseException as e:
                errs.append(e)

        t = threading.Thread(target=blocked_send)
        t.start()
        time.sleep(0.1)
        tx.close()
        t.join(5)
        assert not t.is_alive() and len(errs) == 1 and isinstance(errs[0], kipc.ChannelClosed)
    s2.close()


def test_asyncio_cancelled_arecv_loses_nothing(pub: RingTopic, name: str) -> None:
    n = 300

    async def main() -> list[bytes]:
        with RingTopic(f"ring://{name}") as s:
            got: list[bytes] = []

            async def producer() -> None:
                for i in range(n):
                    await pub.asend(b"m%d" % i, timeout=5)
                    if i % 7 == 0:
                        await asyncio.sleep(0.001)

            prod = asyncio.create_task(producer())
            while len(got) < n:
                task = asyncio.create_task(s.arecv(timeout=5))
                done, _ = await asyncio.wait({task}, timeout=0.0005)
                if not done:
                    task.cancel()
                    try:
                        got.append(await task)  # it may have completed while being cancelled
                    except asyncio.CancelledError:
                        pass
                else:
                    got.append(task.result())
            await prod
            return got

    assert asyncio.run(main()) == [b"m%d" % i for i in range(n)]


def test_kipc_wait_sees_a_topic(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s, RingTopic(f"ring://{name}") as idle:
        assert kipc.wait([s, idle], timeout=0.05) == []
        pub.send(b"x")
        assert kipc.wait([s], timeout=1) == [s]
        assert s.recv(timeout=0) == b"x"


def test_fork_after_open_child_gets_its_own_cursor(pub: RingTopic, name: str) -> None:
    s = RingTopic(f"ring://{name}")
    pub.send(b"before")
    rfd, wfd = os.pipe()

    def child() -> None:
        first = s.recv(timeout=5)  # continues from the inherited handle's position
        os.write(wfd, b"J")
        rest = [s.recv(timeout=5) for _ in range(3)]
        assert [first, *rest] == [b"before", b"c0", b"c1", b"c2"], [first, *rest]
        s.close()

    pid = fork_child(child)
    assert os.read(rfd, 1) == b"J"  # the child has joined: what is published now it receives
    for i in range(3):
        pub.send(b"c%d" % i)
    assert wait_pid(pid) == 0
    assert [s.recv(timeout=1) for _ in range(4)] == [b"before", b"c0", b"c1", b"c2"]
    os.close(rfd)
    os.close(wfd)
    s.close()


def test_views_and_arrays(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s:
        pub.send(b"zero-copy")
        mv = s.recv(view=True, timeout=1)
        assert mv.readonly and bytes(mv) == b"zero-copy"
        with pytest.raises(RuntimeError, match="release it first"):
            s.recv(timeout=0)
        mv.release()
        frame = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
        pub.send_array(frame)
        got = s.recv_array(timeout=1)
        assert got.shape == (12, 10, 3) and np.array_equal(got, frame)
        pub.send_array(frame[::2])
        view = s.recv_array(timeout=1, copy=False)
        assert np.array_equal(view, frame[::2]) and not view.flags.writeable
        del view
        pub.send(b"not an array")
        with pytest.raises(kipc.ProtocolError, match="array header"):
            s.recv_array(timeout=1)
        with pytest.raises(kipc.WouldBlock):
            s.recv_array(timeout=0)
    with RingTopic(f"ring://{name}", codec="json") as js:
        pub.send(b'{"a": 1}')
        assert js.recv(timeout=1) == {"a": 1}


def test_asyncio_asend_waits_for_space_and_cancelled_sends_nothing(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s:
        sent = 0
        while True:
            try:
                pub.send(b"%06d" % sent + b"." * 994, timeout=0)
                sent += 1
            except kipc.WouldBlock:
                break

        async def main() -> None:
            task = asyncio.create_task(pub.asend(b"cancelled" + b"." * 991, timeout=5))
            await asyncio.sleep(0.1)
            assert not task.done()  # blocked by the subscriber that does not read
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            later = asyncio.create_task(pub.asend(b"later" + b"." * 995, timeout=5))
            await asyncio.sleep(0.05)
            assert [int(s.recv(timeout=1)[:6]) for _ in range(sent)] == list(range(sent))  # frees the space
            await later

        asyncio.run(main())
        assert s.recv(timeout=1).startswith(b"later")  # the cancelled message was never published
        with pytest.raises(kipc.WouldBlock):
            s.recv(timeout=0)


def test_kipc_gc_removes_a_dead_creators_topic_only(name: str) -> None:
    from kipc import admin

    pid = fork_child(lambda: (RingTopic(f"ring://{name}", create=True), os._exit(0)))  # dies, never closes
    assert wait_pid(pid) == 0
    with RingTopic(f"ring://{name}-live", create=True, subscribe=False):
        listed = {i.url: i for i in admin.inventory()}
        assert f"ring://{name}" in listed and f"ring://{name}-live" in listed  # kipc ls sees topics as rings
        admin.gc(urls=[f"ring://{name}", f"ring://{name}-live"])
        assert not os.path.exists(shm_path(name))
        assert os.path.exists(shm_path(f"{name}-live"))  # its creator is alive: kept


def test_loan_publishes_in_place_and_an_exception_publishes_nothing(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s:
        with pub.loan(5) as buf:
            buf[:] = b"hello"
        assert s.recv(timeout=1) == b"hello"
        with pytest.raises(RuntimeError, match="user code failed"), pub.loan(3) as buf:
            buf[:] = b"bad"
            raise RuntimeError("user code failed")
        with pytest.raises(kipc.WouldBlock):
            s.recv(timeout=0)  # the aborted loan published nothing
        pub.send(b"after", timeout=1)  # and released the publisher lock
        assert s.recv(timeout=1) == b"after"
        with pub.loan_array((4, 6), "f4") as a:
            a[:] = 1.5
        got = s.recv_array(timeout=1)
        assert got.dtype == np.float32 and got.shape == (4, 6) and (got == 1.5).all()
        with pytest.raises(kipc.MessageTooLarge, match="8177 bytes exceeds the limit of 8176"), pub.loan(8177):
            pass


def test_a_publisher_killed_mid_loan_publishes_nothing(pub: RingTopic, name: str) -> None:
    with RingTopic(f"ring://{name}") as s:
        rfd, wfd = os.pipe()

        def child() -> None:
            with RingTopic(f"ring://{name}", subscribe=False) as tx, tx.loan(100) as buf:
                buf[:50] = b"x" * 50
                os.write(wfd, b"L")
                time.sleep(60)  # killed here, holding the publisher lock

        pid = fork_child(child)
        assert os.read(rfd, 1) == b"L"
        os.kill(pid, 9)
        wait_pid(pid)
        pub.send(b"next", timeout=5)  # the dead holder's lock is taken over
        assert s.recv(timeout=1) == b"next"
        with pytest.raises(kipc.WouldBlock):
            s.recv(timeout=0)
        assert pub.info()["repairs"] >= 1
        os.close(rfd)
        os.close(wfd)


def test_ctrl_c_reaches_a_blocked_recv_and_send(pub: RingTopic, name: str) -> None:
    rfd, wfd = os.pipe()

    def child() -> None:
        with RingTopic(f"ring://{name}") as s, RingTopic(f"ring://{name}", subscribe=False) as tx:
            try:
                os.write(wfd, b"R")
                s.recv()  # no timeout: only the signal ends it
            except KeyboardInterrupt:
                os.write(wfd, b"K")
            while True:  # fill the buffer: our own subscriber does not read
                try:
                    tx.send(b"f" * 1000, timeout=0)
                except kipc.WouldBlock:
                    break
            try:
                os.write(wfd, b"S")
                tx.send(b"f" * 1000)
            except KeyboardInterrupt:
                os.write(wfd, b"K")

    pid = fork_child(child)
    for phase in (b"R", b"S"):
        assert os.read(rfd, 1) == phase
        time.sleep(0.1)  # let it block
        os.kill(pid, signal.SIGINT)
        assert os.read(rfd, 1) == b"K"
    assert wait_pid(pid) == 0
    os.close(rfd)
    os.close(wfd)


def test_a_stopped_subscriber_makes_publishers_time_out_not_hang(pub: RingTopic, name: str) -> None:
    rfd, wfd = os.pipe()

    def child() -> None:
        with RingTopic(f"ring://{name}"):
            os.write(wfd, b"R")
            time.sleep(60)

    pid = fork_child(child)
    assert os.read(rfd, 1) == b"R"
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(kipc.Timeout):
            for _ in range(100):
                pub.send(b"s" * 1000, timeout=0.2)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
        wait_pid(pid)
    pub.send(b"s" * 1000, timeout=5)  # its slot is reclaimed once it is dead
    os.close(rfd)
    os.close(wfd)


def test_capacity_limits(name: str) -> None:
    with pytest.raises(kipc.InvalidArgument, match="capacity"):
        RingTopic(f"ring://{name}", create=True, capacity=(1 << 32) + 1)
    with pytest.raises(kipc.InvalidArgument, match="capacity"):
        RingTopic(f"ring://{name}", create=True, capacity=100)
    with RingTopic(f"ring://{name}?capacity=5000", create=True, subscribe=False) as t:
        assert t.capacity == 8192  # rounded up to a power of two
    assert not os.path.exists(shm_path(name))


def test_open_fills_the_page_tables_so_the_first_lap_does_not_fault(name: str) -> None:
    # both ends' first writes and reads of a fresh buffer would each take a minor fault per
    # 4 KiB page (camera frames: ~3x the cost of the copy); open populates the mapping instead
    import resource

    size = (1 << 21) - 16  # the largest message of a 4 MiB topic: half the buffer, 512 pages
    src = os.urandom(size)
    with RingTopic(f"ring://{name}?capacity=4MiB", create=True, subscribe=False) as p, \
            RingTopic(f"ring://{name}") as s:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with p.loan(size) as buf:
            buf[:] = src
        view = s.recv(view=True, timeout=1)
        same = view == src  # reads every page of the message through the subscriber's own mapping
        view.release()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert same
    assert faults < 64, f"{faults} minor faults writing and reading 512 fresh pages"


def _mapped_kib(path: str) -> list[int]:
    """Rss of each of this process's mappings of ``path`` (pages in its page tables), from /proc/self/smaps."""
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    rss = []
    for i, line in enumerate(lines):
        if line.endswith(" " + path):
            rss.append(next(int(f.split()[1]) for f in lines[i + 1:] if f.startswith("Rss:")))
    return rss


def test_a_handle_that_only_reads_the_header_does_not_populate(name: str) -> None:
    # kipc ls opens topics with subscribe=False to read their header: it must not map 64 MiB for
    # that; the same handle populates at its first publish
    url = f"ring://{name}?capacity=8MiB"
    with RingTopic(url, create=True, subscribe=False) as creator:
        with RingTopic(f"ring://{name}", subscribe=False) as peek:
            assert peek.info()["capacity"] == 8 << 20
            big, small = sorted(_mapped_kib(creator.path), reverse=True)
            assert big >= 8 << 10 and small < 1024  # the creator's mapping is full, the peek's header only
            peek.send(b"x")
            assert min(_mapped_kib(creator.path)) >= 8 << 10  # the whole buffer, at the first publish


def test_large_messages_arrive_intact_in_every_alignment(name: str) -> None:
    # messages from 1 MiB up are copied with non-temporal stores (x86-64): odd sizes, odd source
    # offsets and an array's header part before its data leave every head and tail path of that copy
    rng = np.random.default_rng(7)
    blob = rng.integers(0, 256, (1 << 20) + 200, dtype=np.uint8).tobytes()
    with RingTopic(f"ring://{name}?capacity=16MiB", create=True, subscribe=False) as p, \
            RingTopic(f"ring://{name}") as s:
        for start, size in ((0, 1 << 20), (1, (1 << 20) + 63), (7, (1 << 20) + 17), (100, (1 << 20) + 100)):
            msg = memoryview(blob)[start:start + size]
            p.send(msg)
            assert s.recv(timeout=5) == msg
        frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        for sl in (frame, frame[:, 1:]):  # contiguous, and a strided copy of it
            p.send_array(sl)
            got = s.recv_array(timeout=5, copy=False)
            assert np.array_equal(got, sl)
            del got


def test_info_lag_never_wraps_while_subscribers_keep_up(name: str) -> None:
    """kipc ls reads a subscriber's cursor while it moves: a lag is published - received with both
    read in that order, never a wrapped 1.8e19 (the cursor may pass a published count read earlier,
    when a publisher process and the subscriber run while info() reads)."""
    sub = ("import sys\nfrom kipc.transports.ring_topic import RingTopic\n"
           "with RingTopic(sys.argv[1]) as s:\n    print('READY', flush=True)\n"
           "    while s.recv(timeout=10) != b'end':\n        pass\n")
    pub_code = ("import sys, time\nfrom kipc.transports.ring_topic import RingTopic\n"
                "with RingTopic(sys.argv[1], subscribe=False) as p:\n    print('READY', flush=True)\n"
                "    end = time.monotonic() + 2\n    while time.monotonic() < end:\n"
                "        p.send(b'm' * 64, timeout=10)\n    p.send(b'end', timeout=10)\n")
    url = f"ring://{name}?capacity=1MiB"
    with RingTopic(url, create=True, subscribe=False) as peek, testing.spawn(sub, f"ring://{name}") as child, \
            testing.spawn(pub_code, f"ring://{name}") as publisher:
        worst = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            worst = max([worst, *(s["lag"] for s in peek.info()["slots"])])
        publisher.check(timeout=20)
        child.check(timeout=20)
    assert worst < 1 << 20, worst
