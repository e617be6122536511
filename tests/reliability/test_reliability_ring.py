"""Reliability campaign, ring:// and kipc.Queue: counter wrap, sizes, futex wake-ups, N x M stress,
Queue crash kills, a peer truncating the ring, and kernel limits.

Short counts in ``make test``; ``make reliability`` (KIPC_RELIABILITY=full) runs the long ones and
writes the figures into docs/reliability.md. Ring producer/consumer kills live in test_ring_crash.py.
Children are forked (cheap) or spawned, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import select
import signal
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kipc
from kipc import testing
from kipc.transports.ring import RingChannel, shm_path

from ..helpers import REPO, check, fork_child, p99, payload, read_reported, take_rest_after_consumer_kill
from ..helpers import wait_pid as _wait

KiB = 1 << 10
ROOT = REPO


@contextlib.contextmanager
def _ring(**kw: Any) -> Iterator[RingChannel]:
    ch = RingChannel(testing.unique_name("rr"), create=True, **kw)
    try:
        yield ch
    finally:
        ch.close()


# ----------------------------------------------------------------------------- N x M transfer
STOP = b"STOP"


def _mpmc(name: str, n_prod: int, n_cons: int, per_prod: int, size: Callable[[random.Random], int],
          tmp: Path, timeout: float = 600) -> dict[str, Any]:
    """Forked producers and consumers on ring ``name``; count lost / dup / reorder / corrupt."""

    def produce(p: int) -> None:
        rnd = random.Random(p)
        with RingChannel(name) as ch:
            for s in range(per_prod):
                ch.send(payload(p, s, size(rnd)), timeout=60)

    def consume(c: int) -> None:
        got = array("Q")
        corrupt = 0
        with RingChannel(name) as ch:
            while (m := ch.recv(timeout=60)) != STOP:
                try:
                    p, s = check(m)
                except AssertionError:
                    corrupt += 1
                    continue
                got.append(p)
                got.append(s)
        with open(tmp / f"c{c}.bin", "wb") as f:
            got.tofile(f)
        (tmp / f"c{c}.corrupt").write_text(str(corrupt))

    t0 = time.monotonic()
    cons = [fork_child(lambda c=c: consume(c)) for c in range(n_cons)]  # type: ignore[misc]
    prods = [fork_child(lambda p=p: produce(p)) for p in range(n_prod)]  # type: ignore[misc]
    assert [_wait(p, timeout) for p in prods] == [0] * n_prod, "a producer failed"
    with RingChannel(name) as ch:
        for _ in range(n_cons):  # committed after every data message: consumers see them last
            ch.send(STOP, timeout=60)
    assert [_wait(c, timeout) for c in cons] == [0] * n_cons, "a consumer failed"
    elapsed = time.monotonic() - t0
    counts = [[0] * per_prod for _ in range(n_prod)]
    reorder = corrupt = 0
    for c in range(n_cons):
        pairs = array("Q")
        with open(tmp / f"c{c}.bin", "rb") as f:
            pairs.frombytes(f.read())
        corrupt += int((tmp / f"c{c}.corrupt").read_text())
        last = [-1] * n_prod
        for i in range(0, len(pairs), 2):
            p, s = pairs[i], pairs[i + 1]
            reorder += s <= last[p]
            last[p] = s
            counts[p][s] += 1
    lost = sum(row.count(0) for row in counts)
    dup = sum(n - 1 for row in counts for n in row if n > 1)
    return {"lost": lost, "dup": dup, "reorder": reorder, "corrupt": corrupt, "elapsed": elapsed,
            "rate": n_prod * per_prod / elapsed}


# ------------------------------------------------------------------------------ counter wrap
WRAPS = {"2^32": 1 << 32, "2^64": 1 << 64}


@pytest.mark.parametrize("shape", [(1, 1), (2, 2)], ids=["1x1", "2x2"])
@pytest.mark.parametrize("where", list(WRAPS))
def test_counters_wrap(where: str, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                       scale: Any, figures: Any) -> None:
    """sequence counters started near 2^32 and 2^64 wrap cleanly"""
    cap = 4 * KiB  # frag_max 2032: sizes up to 5000 cross the wrap as whole records and as fragments
    start = WRAPS[where] - 3 * cap - 48  # a few laps before the wrap, at an offset that is not a record edge
    monkeypatch.setenv("KIPC_RING_TEST_START", str(start))
    with _ring(capacity=cap) as ch:
        monkeypatch.delenv("KIPC_RING_TEST_START")
        info = ch.info()
        assert info["head"] == info["tail"] == info["msgs_in"] == start % (1 << 64)
        n_prod, n_cons = shape
        per_prod = scale.n(2_000, 50_000) // n_prod
        res = _mpmc(ch.name, n_prod, n_cons, per_prod, lambda r: r.choice((20, 21, 100, 700, 2032, 2033, 5000)),
                    tmp_path)
        info = ch.info()
        moved = (info["tail"] - start) % (1 << 64)
    assert moved > 3 * cap, "the traffic did not reach the wrap"
    figures.record("ring", f"start {where} - {3 * cap + 48}, {n_prod}x{n_cons}, {n_prod * per_prod} msgs "
                   "(20-5000 B, fragments too): lost / dup / reorder / torn",
                   f"{res['lost']} / {res['dup']} / {res['reorder']} / {res['corrupt']}", target="0 / 0 / 0 / 0")
    assert (res["lost"], res["dup"], res["reorder"], res["corrupt"]) == (0, 0, 0, 0)


def test_queue_message_counters_wrap_2_64(monkeypatch: pytest.MonkeyPatch, figures: Any) -> None:
    """sequence counters started near 2^32 and 2^64 wrap cleanly"""
    # msgs_in / msgs_out drive qsize() and maxsize: start them 5 items before 2^64.
    monkeypatch.setenv("KIPC_RING_TEST_START", str((1 << 64) - 5))
    q = kipc.Queue(maxsize=3, capacity=64 * KiB, name=testing.unique_name("q"))
    monkeypatch.delenv("KIPC_RING_TEST_START")
    try:
        for i in range(0, 30, 3):
            for j in range(3):
                q.put(i + j, timeout=5)
            assert q.qsize() == 3 and q.full()
            with pytest.raises(queue.Full):
                q.put("one too many", timeout=0.01)
            assert [q.get(timeout=5) for _ in range(3)] == [i, i + 1, i + 2]
            assert q.qsize() == 0
        assert q._ring.info()["msgs_in"] < 100  # wrapped
    finally:
        q._ch.unlink()
    figures.record("kipc.Queue", "maxsize=3 across the 2^64 item-counter wrap: qsize / full / order errors",
                   "0 / 0 / 0", target="0 / 0 / 0")


# ------------------------------------------------------------------------------------- sizes
def _content(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def test_sizes_between_processes(scale: Any, figures: Any) -> None:
    """sizes 0, 1, capacity-1, capacity, capacity+1, random (fragmented too): byte-exact"""
    cap = 16 * KiB
    with _ring(capacity=cap) as a2b, _ring(capacity=cap) as b2a:
        frag = int(a2b._ring.frag_max)
        rnd = random.Random(7)
        sizes = [0, 1, 2, 15, 16, 17, frag - 1, frag, frag + 1, cap - 1, cap, cap + 1, 3 * cap + 5]
        sizes += [rnd.choice((rnd.randrange(64), rnd.randrange(frag), rnd.randrange(4 * cap)))
                  for _ in range(scale.n(300, 5_000))]

        def echo() -> None:  # the child checks what it got, then sends it back
            with RingChannel(a2b.name) as rx, RingChannel(b2a.name) as tx:
                for i, n in enumerate(sizes):
                    m = rx.recv(timeout=30)
                    assert m == _content(i, n), f"child: message {i} of {n} bytes differs (got {len(m)})"
                    tx.send(m, timeout=30)

        pid = fork_child(echo)
        bad = 0
        try:
            for i, n in enumerate(sizes):
                a2b.send(_content(i, n), timeout=30)
                bad += b2a.recv(timeout=30) != _content(i, n)
        finally:
            assert _wait(pid, 60) == 0, "the echoing child saw a difference"
    figures.record("ring", f"{len(sizes)} sizes 0..{4 * cap} (16 KiB ring), both ways: differing bytes",
                   bad, target="0")
    assert bad == 0


# ------------------------------------------------------------------------- futex wake-ups
def test_futex_ping_pong(scale: Any, figures: Any) -> None:
    """futex ping-pong (spin=0) and an 8-waiter broadcast: 0 lost wakeups"""
    n = scale.n(20_000, 1_000_000)
    with _ring(capacity=4 * KiB, spin=0) as ping, _ring(capacity=4 * KiB, spin=0) as pong:

        def ponger() -> None:
            with RingChannel(ping.name, spin=0) as rx, RingChannel(pong.name, spin=0) as tx:
                for _ in range(n):
                    tx.send(rx.recv(timeout=10), timeout=10)

        pid = fork_child(ponger)
        timeouts = stalls = 0
        worst = 0.0
        t0 = time.monotonic()
        try:
            msg = b"p" * 8
            for _ in range(n):
                t = time.perf_counter()
                ping.send(msg, timeout=10)
                try:
                    pong.recv(timeout=10)
                except kipc.DeadlineExceeded:
                    timeouts += 1
                    break
                dt = time.perf_counter() - t
                worst = max(worst, dt)
                stalls += dt >= 0.1  # a lost FUTEX_WAKE shows as one sleep slice (100 ms)
        finally:
            assert _wait(pid, 60) == 0
        elapsed = time.monotonic() - t0
    figures.record("ring", f"spin=0 ping-pong, {n} blocking round trips: timeouts / stalls >= 100 ms",
                   f"{timeouts} / {stalls}", target="0 / 0")
    figures.record("ring", "spin=0 ping-pong: mean / worst round trip µs",
                   f"{elapsed / n * 1e6:.1f} / {worst * 1e6:.0f}")
    assert timeouts == 0


def test_eight_waiter_broadcast(scale: Any, figures: Any) -> None:
    """futex ping-pong (spin=0) and an 8-waiter broadcast: 0 lost wakeups"""
    rounds = scale.n(20, 1_000)
    waiters = 8
    with _ring(capacity=4 * KiB, spin=0) as work, _ring(capacity=64 * KiB, spin=0) as acks:
        gos = [os.pipe() for _ in range(waiters)]

        def waiter(c: int) -> None:
            go = gos[c][0]
            with RingChannel(work.name, spin=0) as rx, RingChannel(acks.name, spin=0) as tx:
                for _ in range(rounds):
                    assert select.select([go], [], [], 30)[0], "no go from the parent"
                    os.read(go, 1)
                    tx.send(b"W%d" % c, timeout=10)  # about to block on the empty ring
                    m = rx.recv(timeout=10)
                    tx.send(b"G%d %s" % (c, m), timeout=10)

        pids = [fork_child(lambda c=c: waiter(c)) for c in range(waiters)]  # type: ignore[misc]
        missed = 0
        latencies: list[float] = []
        try:
            for r in range(rounds):
                for _, w in gos:
                    os.write(w, b"g")
                assert sorted(acks.recv(timeout=10) for _ in range(waiters)) == sorted(
                    b"W%d" % c for c in range(waiters))
                time.sleep(0.002)  # let them reach FUTEX_WAIT (one on the ring word, 7 on the consumer lock)
                assert work.qsize() == 0
                t0 = time.monotonic()
                for i in range(waiters):
                    work.send(b"%d.%d" % (r, i), timeout=10)
                got = []
                for _ in range(waiters):
                    try:
                        got.append(acks.recv(timeout=5))
                    except kipc.DeadlineExceeded:
                        missed += 1
                latencies.append(time.monotonic() - t0)
                assert missed == 0, f"round {r}: {missed} waiters never woke"
                who = sorted(int(g.split()[0][1:]) for g in got)
                what = sorted(g.split()[1] for g in got)
                assert who == list(range(waiters)) and what == sorted(b"%d.%d" % (r, i) for i in range(waiters))
        finally:
            for _, w in gos:
                os.close(w)
            codes = [_wait(p, 60) for p in pids]
            for rfd, _ in gos:
                os.close(rfd)
        assert codes == [0] * waiters
    latencies.sort()
    figures.record("ring", f"8 waiters blocked on an empty ring, 8 messages at once, {rounds} rounds: "
                   "waiters not woken", missed, target="0")
    figures.record("ring", "8-waiter broadcast: all 8 received, median / max ms",
                   f"{statistics.median(latencies) * 1e3:.2f} / {latencies[-1] * 1e3:.2f}")


# ----------------------------------------------------------------------------- N x M stress
@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (8, 8)], ids=["1x1", "4x4", "8x8"])
def test_ring_stress(shape: tuple[int, int], tmp_path: Path, scale: Any, figures: Any) -> None:
    """N x M producers x consumers (real processes): lost 0, duplicated 0, per-producer reorder 0, corrupt 0"""
    n_prod, n_cons = shape
    per_prod = scale.n(20_000, 1_000_000) // n_prod
    with _ring(capacity=256 * KiB) as ch:
        res = _mpmc(ch.name, n_prod, n_cons, per_prod, lambda r: r.randint(20, 256), tmp_path,
                    timeout=scale.n(120, 1200))
        assert ch.qsize() == 0
    total = per_prod * n_prod
    figures.record("ring", f"{n_prod}x{n_cons}, {total} msgs (20-256 B): lost / dup / reorder / corrupt",
                   f"{res['lost']} / {res['dup']} / {res['reorder']} / {res['corrupt']}", target="0 / 0 / 0 / 0")
    figures.record("ring", f"{n_prod}x{n_cons}: msgs/s (all producers, incl. fork + checks)", f"{res['rate']:,.0f}")
    assert (res["lost"], res["dup"], res["reorder"], res["corrupt"]) == (0, 0, 0, 0)


# -------------------------------------------------------------------------- Queue crash kills
def test_queue_producer_and_consumer_kills(scale: Any, figures: Any) -> None:
    """ring and kipc.Queue: producer and consumer SIGKILLs: torn 0, committed-lost 0, hangs 0"""
    kills = scale.n(40, 1_000)
    rng = random.Random(os.getpid())
    sizes = (24, 300, 4 * KiB, 20 * KiB, 70 * KiB)  # 64 KiB ring: the 70 KiB ones travel in fragments
    # maxsize: a full queue makes put() wait in the ring (an unbounded one would buffer in a feeder thread)
    q = kipc.Queue(maxsize=10_000, capacity=64 * KiB, name=testing.unique_name("q"))
    recover: list[float] = []
    seen: dict[int, int] = {}
    try:
        # producers: whatever a killed producer committed arrives whole and in order
        for k in range(kills):
            def produce(p: int = k) -> None:
                for i in range(1_000_000):
                    q.put(payload(p, i, sizes[(i * 7 + p) % len(sizes)]), timeout=30)

            pid = fork_child(produce)
            kill_at = time.monotonic() + rng.uniform(0, 0.02)
            while time.monotonic() < kill_at:
                with contextlib.suppress(queue.Empty):
                    _take(q.get(timeout=0.001), seen)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # a timed get honours its deadline mid-message now: the dead producer may have filled
            # the ring with the rest of the message we claimed; take it (dropped once found dead)
            with contextlib.suppress(queue.Empty):
                while True:
                    _take(q.get(timeout=0.02), seen)
            t0 = time.monotonic()
            q.put(payload(10**6, seen.get(10**6, -1) + 1, 24), timeout=5)  # takes the lock a dead producer held
            recover.append(time.monotonic() - t0)
            while True:
                try:
                    _take(q.get(timeout=0.02), seen)
                except queue.Empty:
                    break
        prod_repairs = q._ring.info()["repairs"]
        # consumers: one forked getter reports what it got; at most the item it had claimed goes with it
        claimed = 0
        seq = 0
        for _ in range(kills):
            rfd, wfd = os.pipe()

            def consume(w: int = wfd) -> None:
                while True:
                    _p, s = check(q.get(timeout=30))
                    os.write(w, s.to_bytes(8, "little"))

            pid = fork_child(consume)
            os.close(wfd)
            first = seq
            kill_at = time.monotonic() + rng.uniform(0, 0.02)
            while time.monotonic() < kill_at:
                with contextlib.suppress(queue.Full):
                    q.put(payload(0, seq, sizes[seq % len(sizes)]), timeout=0.002)
                    seq += 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # the first get takes the lock a dead consumer held
            _rest, missing = take_rest_after_consumer_kill(lambda t: q.get(timeout=t), queue.Empty, first,
                                                           read_reported(rfd), seq, recover)
            claimed += missing
        repairs = q._ring.info()["repairs"]
    finally:
        q._ch.unlink()
    assert prod_repairs > 0 and repairs > prod_repairs, "no kill landed while a lock was held"
    figures.record("kipc.Queue", f"{kills} producer + {kills} consumer SIGKILLs: torn / committed-lost / hangs",
                   "0 / 0 / 0", target="0 / 0 / 0")
    figures.record("kipc.Queue", "kills: locks repaired / items claimed by a dead consumer / recovery p99 ms",
                   f"{repairs} / {claimed} / {p99(recover) * 1e3:.2f}")


def _take(obj: Any, seen: dict[int, int]) -> None:
    p, s = check(obj)
    assert s == seen.get(p, -1) + 1, f"producer {p}: seq {s} after {seen.get(p, -1)} (lost or duplicated)"
    seen[p] = s


# --------------------------------------------------------------------- a peer truncates the ring
_TRUNC_READER = r"""
import sys, time, kipc
sys.path.insert(0, sys.argv[2])
from tests.helpers import check
from kipc.transports.ring import RingChannel
ch = RingChannel(sys.argv[1])
print("READY", flush=True)
n = 0
try:
    while True:
        check(ch.recv(timeout=20))
        n += 1
except kipc.BadObject as e:
    print("BADOBJECT", n, time.monotonic(), e, flush=True)
except BaseException as e:
    print("OTHER", n, type(e).__name__, e, flush=True)
"""

_TRUNC_WRITER = r"""
import sys, time, kipc
sys.path.insert(0, sys.argv[2])
from tests.helpers import payload
from kipc.transports.ring import RingChannel
ch = RingChannel(sys.argv[1])
print("READY", flush=True)
sys.stdin.readline()
n = 0
try:
    while True:
        ch.send(payload(1, n, 1000), timeout=20)
        n += 1
except kipc.BadObject as e:
    print("BADOBJECT", n, time.monotonic(), e, flush=True)
except BaseException as e:
    print("OTHER", n, type(e).__name__, e, flush=True)
"""


@pytest.mark.parametrize("cut", ["zero", "half"])
def test_peer_truncates_ring(cut: str, figures: Any) -> None:
    """a peer truncating a shared segment: no SIGBUS in the reader or writer, a clear kipc error"""
    with _ring(capacity=64 * KiB) as ch:
        path = shm_path(ch.name)
        with testing.spawn(_TRUNC_READER, ch.name, ROOT) as reader, \
                testing.spawn(_TRUNC_WRITER, ch.name, ROOT, stdin=True) as writer:
            if cut == "zero":  # the reader blocks on the empty ring; then the object shrinks to nothing
                time.sleep(0.1)
                cut_at = time.monotonic()
                os.truncate(path, 0)
                writer.write("go\n")
            else:  # the header and the first half of the data stay; traffic runs into the missing half
                os.truncate(path, os.stat(path).st_size // 2)
                cut_at = time.monotonic()
                writer.write("go\n")
            lines = [reader.readline(timeout=10), writer.readline(timeout=10)]
            codes = [reader.wait(timeout=10), writer.wait(timeout=10)]
        with pytest.raises(kipc.BadObject):
            ch.send(b"x" * 40_000, timeout=1)
    assert codes == [0, 0], f"a peer died (SIGBUS is -7): {codes} {lines}"
    assert all(line.startswith("BADOBJECT") and "truncated" in line for line in lines), lines
    woke = float(lines[0].split()[2]) - cut_at
    figures.record("ring", f"object truncated to {'0' if cut == 'zero' else 'half'} under a reader + a writer: "
                   "SIGBUS deaths / BadObject raised; reader woke after ms",
                   f"0 / 2 of 2; {woke * 1e3:.0f}", target="0 / 2 of 2")


_OTHER_SIGBUS = r"""
import mmap, os, sys, tempfile, kipc
from kipc import testing
from kipc.transports.ring import RingChannel
if sys.argv[1] == "ring":
    ch = RingChannel(testing.unique_name("bus"), create=True)   # installs kipc's SIGBUS handler
f = tempfile.TemporaryFile()
f.truncate(8192)
m = mmap.mmap(f.fileno(), 8192)
f.truncate(0)
if sys.argv[1] == "ring":
    ch.close()
print("READY", flush=True)
m[4096]   # not a ring: the default action must still apply
print("SURVIVED", flush=True)
"""


def test_sigbus_outside_a_ring_still_kills(figures: Any) -> None:
    """a peer truncating a shared segment: no SIGBUS in the reader or writer, a clear kipc error"""
    codes = {}
    for mode in ("plain", "ring"):  # the same fault without and with kipc's handler installed
        with testing.spawn(_OTHER_SIGBUS, mode) as child:
            codes[mode] = child.wait(timeout=10)
    # -SIGBUS normally; under `make sanitize` ASan's handler (the previous one) reports and exits 1
    assert codes["ring"] == codes["plain"] != 0, codes
    figures.record("ring", "SIGBUS on a non-ring mapping after kipc installed its handler: exit status",
                   f"{codes['ring']} (same as without kipc)", target="unchanged")


# ----------------------------------------------------------------------------------- limits
_LIMITS = r"""
import ctypes, os, sys, kipc, posix_ipc, sysv_ipc
from kipc import testing
libc = ctypes.CDLL(None, use_errno=True)
# A private IPC namespace: its own objects and sysctls, so the other tests on this machine never
# see the lowered limits (and nothing needs restoring: the namespace dies with this process).
if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC
    print("NOUNSHARE", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)

def set_limit(path, v):
    if path.endswith("/sem"):  # SEMMSL SEMMNS SEMOPM SEMMNI
        f = open(path).read().split(); f[3] = str(v); v = " ".join(f)
    with open(path, "w") as out:
        out.write(str(v))

def drop_cap_sys_resource():  # root ignores fs.mqueue.queues_max while it has CAP_SYS_RESOURCE
    class H(ctypes.Structure): _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class D(ctypes.Structure):
        _fields_ = [("eff", ctypes.c_uint32), ("perm", ctypes.c_uint32), ("inh", ctypes.c_uint32)]
    h, d = H(0x20080522, 0), (D * 2)()
    assert libc.capget(ctypes.byref(h), d) == 0
    d[0].eff &= ~(1 << 24); d[0].perm &= ~(1 << 24)
    assert libc.capset(ctypes.byref(h), d) == 0

def count(kind):
    with open(f"/proc/sysvipc/{kind}") as f:
        return len(f.readlines()) - 1

def exists(kind, key, name):
    try:
        if kind == "mq":
            posix_ipc.MessageQueue("/" + name).close()
        else:
            {"shm": sysv_ipc.SharedMemory, "msg": sysv_ipc.MessageQueue, "sem": sysv_ipc.Semaphore}[kind](key)
        return True
    except (sysv_ipc.ExistentialError, posix_ipc.ExistentialError):
        return False

LIMIT = 3
cases = [
    ("shm", "/proc/sys/kernel/shmmni", "kernel.shmmni",
     lambda k, n: kipc.SharedMemory(f"sysv://{k}", size=4096, create=True)),
    ("msg", "/proc/sys/kernel/msgmni", "kernel.msgmni", lambda k, n: kipc.open(f"sysvmq://{k}", create=True)),
    ("sem", "/proc/sys/kernel/sem", "kernel.sem", lambda k, n: kipc.Semaphore(f"sysv://{k}", create=True)),
    ("mq", "/proc/sys/fs/mqueue/queues_max", "queues_max", lambda k, n: kipc.open(f"posixmq://{n}", create=True)),
]
drop_cap_sys_resource()
print("READY", flush=True)
for kind, path, sysctl, make in cases:
    set_limit(path, LIMIT)
    made = []
    try:
        for i in range(LIMIT + 5):
            key, name = testing.unique_key(), testing.unique_name("lim")
            made.append(make(key, name))
        print("RESULT", kind, "NOLIMIT", flush=True)
    except kipc.LimitExceeded as e:
        url = {"shm": f"sysv://{key}", "msg": f"sysvmq://{key}", "sem": f"sysv://{key}", "mq": f"posixmq://{name}"}[kind]
        half = exists(kind, key, name) or kipc._owners.lookup(url) is not None  # no object, no owner record
        print("RESULT", kind, "LIMIT", len(made), int(sysctl in str(e)), int(half),
              count(kind) if kind != "mq" else -1, str(e).replace("\n", " "), flush=True)
    except BaseException as e:
        print("RESULT", kind, "OTHER", type(e).__name__, e, flush=True)
    finally:
        for o in made:
            o.close()
"""


def test_kernel_limits_name_the_sysctl(figures: Any) -> None:
    """kernel limits exhausted: an error naming the sysctl, no half-created object"""
    if os.geteuid() != 0:
        pytest.fail("this test lowers IPC sysctls inside a private IPC namespace and needs root "
                    f"(euid {os.geteuid()}): run it as root", pytrace=False)
    with testing.spawn(_LIMITS) as child:
        lines = [child.expect("RESULT", timeout=30) for _ in range(4)]
        child.check(timeout=10)
    bad = []
    for line in lines:
        _, kind, what, *rest = line.split(" ", 7)
        if what != "LIMIT":
            bad.append(line)
            continue
        made, named, half, in_kernel, message = int(rest[0]), rest[1] == "1", rest[2] == "1", int(rest[3]), rest[4]
        ok = made == 3 and named and not half and in_kernel in (3, -1)
        bad += [] if ok else [line]
        figures.record({"shm": "sysv shm", "msg": "sysvmq", "sem": "sysv semaphore", "mq": "posixmq"}[kind],
                       "limit lowered to 3 objects: created / LimitExceeded names the sysctl / half-created",
                       f"3 / {'yes' if named else 'NO'} / {int(half)}: {message[:90]}", target="3 / yes / 0")
    assert not bad, bad


def test_ring_bigger_than_dev_shm(figures: Any) -> None:
    """kernel limits exhausted: an error naming the sysctl, no half-created object"""
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    cap = 1 << 40  # the largest capacity kipc accepts; far beyond this machine's /dev/shm
    assert cap > free
    name = testing.unique_name("huge")
    with pytest.raises(kipc.LimitExceeded, match="/dev/shm") as err:
        RingChannel(name, create=True, capacity=cap)
    assert not os.path.exists(shm_path(name)) and kipc._owners.lookup(f"ring://{name}") is None
    with pytest.raises(kipc.LimitExceeded):
        kipc.Queue(capacity=cap, name=name)
    figures.record("ring", f"capacity 2^40 with {free >> 20} MiB free in /dev/shm: LimitExceeded / half-created",
                   f"yes / 0: {str(err.value)[:80]}", target="yes / 0")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
