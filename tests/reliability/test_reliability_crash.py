"""Reliability campaign: crashes and removals with real processes, per mechanism.

Short counts in ``make test``; ``make reliability`` (KIPC_RELIABILITY=full) runs the long ones.
"""

from __future__ import annotations

import contextlib
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

import kipc
from kipc import registry, testing

_HOLDER = r"""
import sys, kipc
sem = kipc.Semaphore(sys.argv[1])
while True:
    line = sys.stdin.readline()
    if not line:
        break
    assert sem.acquire(timeout=10)
    print("HELD", flush=True)
"""


def test_sysv_semaphore_holders_killed(scale: Any, figures: Any) -> None:
    """holders of SysV semaphores SIGKILLed: next acquire succeeds within its timeout"""
    kills = scale.n(25, 1_000)
    url = f"sysv://{testing.unique_key()}"
    waits: list[float] = []
    with contextlib.closing(kipc.Semaphore(url, create=True, value=1)) as sem:
        for _ in range(kills):
            with testing.spawn(_HOLDER + "", url, ready=False, stdin=True) as child:
                child.write("go\n")
                child.expect("HELD", timeout=10)
                child.kill()
            t0 = time.monotonic()
            assert sem.acquire(timeout=1)  # SEM_UNDO gave the dead holder's unit back
            waits.append(time.monotonic() - t0)
            sem.release()
        assert sem.value == 1
    figures.record("sysv semaphore", f"{kills} holders SIGKILLed: acquire failures / max wait ms",
                   f"0 / {max(waits) * 1000:.2f}", target="0 / < 1000")


_BLOCKED_RECV = r"""
import sys, time, kipc
ch = kipc.open(sys.argv[1])
print("READY", flush=True)
try:
    ch.recv(timeout=30)
    print("GOT", flush=True)
except kipc.ChannelClosed:
    print("CLOSED", time.monotonic(), flush=True)
except kipc.DeadlineExceeded:
    print("TIMEOUT", flush=True)
"""


def _creator(scheme: str) -> tuple[str, kipc.Channel]:
    if scheme == "sysvmq":
        url = f"sysvmq://{testing.unique_key()}"
    else:
        url = f"{scheme}://{testing.unique_name(scheme)}"
    return url, kipc.open(url, create=True)


@pytest.mark.parametrize("scheme", ["sysvmq", "posixmq", "ring"])
def test_removed_while_peer_blocks(scheme: str, figures: Any) -> None:
    """object removed while a peer blocks on it: the blocked call wakes with ChannelClosed"""
    url, owner = _creator(scheme)
    try:
        with testing.spawn(_BLOCKED_RECV, url) as child:
            time.sleep(0.1)  # let the child block
            removed = time.monotonic()
            owner.close()  # the creator removes the object
            line = child.readline(timeout=5)
            assert line.startswith("CLOSED"), line
            latency = float(line.split()[1]) - removed
            child.check()
    finally:
        owner.close()
    figures.record(scheme, "blocked recv woken by removal (ms)", f"{latency * 1000:.1f}", target="< 100")
    assert latency < 1.0


_READER = r"""
import sys, kipc
ch = kipc.open(sys.argv[1], **({"direction": "recv"} if sys.argv[1].startswith("fifo") else {}))
print("READY", flush=True)
import time; time.sleep(60)
"""


@pytest.mark.parametrize("scheme", ["fifo", "unix", "tcp"])
def test_reader_dies_writer_gets_peer_gone(scheme: str, figures: Any) -> None:
    """reader of a FIFO/socket dies: the writer gets ChannelClosed/PeerGone, never SIGPIPE"""
    if scheme == "fifo":
        url = f"fifo://{testing.unique_name('f')}"
        server: Any = None
        creator = kipc.open(url, create=True, direction="recv")
        child = testing.spawn(_READER, url)
        tx = kipc.open(url, direction="send", timeout=5)
        creator.close()  # removes the name; the child is now the only reader
    else:
        server = kipc.listen(f"unix://{testing.unique_name('s')}" if scheme == "unix" else "tcp://127.0.0.1:0")
        child = testing.spawn(_READER, server.url)
        tx = server.accept(timeout=5)
    try:
        child.kill()
        with pytest.raises(kipc.ChannelClosed):  # PeerGone is a ChannelClosed
            for _ in range(100_000):
                tx.send(b"x" * 1024, timeout=5)
    finally:
        child.close()
        tx.close()
        if server is not None:
            server.close()
    figures.record(scheme, "writer after reader SIGKILL", "PeerGone/ChannelClosed, process alive (no SIGPIPE)")


class _Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


NAMED = [s for s in registry.schemes()]


@pytest.mark.parametrize("scheme", NAMED)
def test_pickle_payload_never_unpickled(scheme: str, tmp_path: Path, request: pytest.FixtureRequest,
                                        figures: Any) -> None:
    """a pickle whose __reduce__ touches a canary, sent to every named channel with default settings"""
    canary = tmp_path / "canary"
    evil = pickle.dumps(_Canary(str(canary)))
    opts = {"servers": request.getfixturevalue("nats_url")} if scheme == "nats" else {}
    with testing.channel_pair(scheme, **opts) as (tx, rx):
        tx.send(evil, timeout=5)
        got = rx.recv(timeout=5)
    assert got == evil and not canary.exists()
    figures.record(scheme, "pickle canary touched by default recv", 0, target="0")


_NOFILE = r"""
import resource, sys, kipc
from kipc import testing
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    for i in range(200):
        held.append(kipc.pipe())
except kipc.LimitExceeded as e:
    print("LIMIT", e, flush=True)
except BaseException as e:
    print("OTHER", type(e).__name__, e, flush=True)
"""


def test_rlimit_nofile_names_the_rlimit(figures: Any) -> None:
    """RLIMIT_NOFILE exhausted: an error naming the rlimit, no half-created object"""
    with testing.spawn(_NOFILE, ready=False) as child:
        line = child.readline(timeout=20)
        child.check()
    assert line.startswith("LIMIT") and "RLIMIT_NOFILE" in line, line
    figures.record("pipe", "RLIMIT_NOFILE exhausted", line.split(" ", 1)[1][:90])


def test_nonblocking_full_is_fast_and_unchanged(figures: Any) -> None:
    """non-blocking send on a full channel: WouldBlock in < 1 ms, state unchanged"""
    results = []
    for scheme in ["pipe", "fifo", "unix", "tcp", "sysvmq", "posixmq", "ring"]:
        with testing.channel_pair(scheme) as (tx, rx):
            n = 0
            while True:
                try:
                    tx.send(n.to_bytes(8, "little") * 8, timeout=0)
                    n += 1
                except kipc.WouldBlock:
                    break
            lat = []
            for _ in range(50):
                t0 = time.perf_counter()
                with pytest.raises(kipc.WouldBlock):
                    tx.send(b"y" * 64, timeout=0)
                lat.append(time.perf_counter() - t0)
            got = [int.from_bytes(rx.recv(timeout=5)[:8], "little") for _ in range(n)]
            assert got == list(range(n))
            with pytest.raises(kipc.WouldBlock):
                rx.recv(timeout=0)
        p99 = sorted(lat)[int(len(lat) * 0.99) - 1] * 1e6
        results.append((scheme, n, statistics.median(lat) * 1e6, p99))
        figures.record(scheme, "WouldBlock on full: median / p99 µs; messages kept",
                       f"{statistics.median(lat) * 1e6:.1f} / {p99:.1f}; {n} of {n}", target="< 1000")
    assert all(p < 1000 for *_, p in results), results


def test_signal_holder_free_rlimit_sigpending(figures: Any) -> None:
    """RLIMIT_SIGPENDING exhausted: sigqueue fails with an error naming the rlimit"""
    code = r"""
import os, resource, signal, kipc
from kipc import signals
resource.setrlimit(resource.RLIMIT_SIGPENDING, (4, 4))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
try:
    for i in range(100):
        signals.send(os.getpid(), i)
    print("NOLIMIT", flush=True)
except kipc.LimitExceeded as e:
    print("LIMIT", e, flush=True)
except BaseException as e:
    print("OTHER", type(e).__name__, e, flush=True)
"""
    with testing.spawn(code, ready=False) as child:
        line = child.readline(timeout=20)
        child.check()
    assert line.startswith("LIMIT") and "RLIMIT_SIGPENDING" in line, line
    figures.record("signals", "RLIMIT_SIGPENDING exhausted", line.split(" ", 1)[1][:90])

