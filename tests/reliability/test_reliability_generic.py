"""Reliability campaign, generic part: promises checked on every scheme through ``channel_pair``.

Short versions run in ``make test``; ``make reliability`` (KIPC_RELIABILITY=full)
runs the long ones and writes the figures into docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import kipc
from kipc import registry, testing

from ..helpers import check, payload

SCHEMES = ["pipe", *registry.schemes()]
LOCAL = [s for s in SCHEMES if s != "nats"]
STREAMS = ["pipe", "fifo", "unix", "tcp"]


def _options(scheme: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"servers": request.getfixturevalue("nats_url")} if scheme == "nats" else {}


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sigalrm_storm(scheme: str, request: pytest.FixtureRequest, scale: Any, figures: Any) -> None:
    """SIGALRM every 1 ms during send/recv: no corruption, no deadlock, no InterruptedError"""
    n = scale.n(2_000, 100_000) if scheme != "nats" else scale.n(300, 5_000)
    alarms = 0

    def on_alarm(signo: int, frame: Any) -> None:
        nonlocal alarms
        alarms += 1

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        with testing.channel_pair(scheme, **_options(scheme, request)) as (tx, rx):
            end = time.monotonic() + 10  # the long run stops early on slow mechanisms (file, nats)
            for i in range(n):
                tx.send(payload(9, i, 48), timeout=10)
                check(rx.recv(timeout=10), 9, i)
                if i >= 1000 and time.monotonic() > end:
                    n = i + 1
                    break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    figures.record(scheme, "operations / alarms delivered / corrupt / InterruptedError", f"{2 * n} / {alarms} / 0 / 0")
    assert alarms > 0


_CTRL_C_CHILD = r"""
import sys, time, kipc
from kipc import testing
scheme = sys.argv[1]
opts = {"servers": sys.argv[2]} if scheme == "nats" else {}
with testing.channel_pair(scheme, **opts) as (tx, rx):
    print("READY", flush=True)
    try:
        rx.recv()
    except KeyboardInterrupt:
        print("INTERRUPTED", time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ctrl_c_interrupts_blocking_recv(scheme: str, request: pytest.FixtureRequest, figures: Any) -> None:
    """Ctrl-C during a blocking recv raises KeyboardInterrupt promptly"""
    args = [scheme, request.getfixturevalue("nats_url")] if scheme == "nats" else [scheme]
    with testing.spawn(_CTRL_C_CHILD, *args) as child:
        time.sleep(0.05)  # let it enter the blocking wait
        sent = time.monotonic()
        child.proc.send_signal(signal.SIGINT)
        line = child.expect("INTERRUPTED", timeout=5)
        latency = float(line.split()[1]) - sent
        child.check(timeout=10)
    figures.record(scheme, "KeyboardInterrupt latency (ms)", f"{latency * 1000:.1f}", target="< 100")
    assert latency < 0.5


@pytest.mark.parametrize("scheme", LOCAL)
def test_no_fd_leaks_to_exec(scheme: str, figures: Any) -> None:
    """exec'd children inherit no kipc fd (O_CLOEXEC)"""
    before = _fds()
    with testing.channel_pair(scheme) as (_tx, _rx):
        new = _fds() - before
        inheritable = [fd for fd in new if os.path.exists(f"/proc/self/fd/{fd}") and os.get_inheritable(fd)]
        out = subprocess.run([sys.executable, "-c", "import os; print(' '.join(os.listdir('/proc/self/fd')))"],
                             close_fds=False, capture_output=True, text=True, timeout=30).stdout.split()
        leaked = sorted(int(x) for x in out if int(x) in new)
    figures.record(scheme, "kipc fds inherited across exec", len(leaked), target="0")
    assert not inheritable and not leaked, (inheritable, leaked)


@pytest.mark.parametrize("scheme", LOCAL)
def test_create_destroy_cycles(scheme: str, scale: Any, figures: Any) -> None:
    """create/destroy cycles leave fd, RSS and this test's kernel-object counts unchanged"""
    wanted = scale.n(300, 102_400)
    budget = scale.n(60, 8)  # seconds: the long run records how many cycles fit (kernel objects: all)

    def counts() -> tuple[int, int]:
        # Objects of this test's namespace only (/dev/shm, mqueue, SysV keys issued to it, sockets,
        # owner records): machine-wide counts moved with other users' tests on a shared host.
        return len(_fds()), len(testing.LeakChecker().leftovers())

    for _ in range(20):  # warm caches, lazy imports, allocator arenas
        with testing.channel_pair(scheme) as (tx, rx):
            tx.send(b"w", timeout=5)
            rx.recv(timeout=5)
    before, rss0 = counts(), _rss_kib()
    end = time.monotonic() + budget
    cycles = 0
    while cycles < wanted and (cycles < 300 or time.monotonic() < end):
        with testing.channel_pair(scheme) as (tx, rx):
            tx.send(b"c", timeout=5)
            assert rx.recv(timeout=5) == b"c"
        cycles += 1
    after, rss1 = counts(), _rss_kib()
    figures.record(scheme, f"{cycles} cycles: fd / kernel-object delta, RSS delta KiB",
                   f"{after[0] - before[0]} / {after[1] - before[1]}, {rss1 - rss0}",
                   target="0 / 0")
    assert after == before
    assert rss1 - rss0 < 20_000


@pytest.mark.parametrize("scheme", STREAMS)
@pytest.mark.parametrize("forged", [b"\xff\xff\xff\xff", b"\xff" * 8, b"\xfe\xff\xff\xff", b"\x00\x00\x00\x80"])
def test_forged_length_prefix(scheme: str, forged: bytes, figures: Any) -> None:
    """forged length prefixes (2^32-1, 2^64-1, negative) rejected before allocation"""
    with testing.channel_pair(scheme) as (tx, rx):
        rss0 = _rss_kib()
        os.write(tx.fileno(), forged)
        with pytest.raises(kipc.ProtocolError):
            rx.recv(timeout=5)
        grown = _rss_kib() - rss0
    figures.record(scheme, f"forged prefix {forged.hex()}: RSS growth KiB", grown, target="~0")
    assert grown < 10_000


_DYING_READER = r"""
import sys, kipc
from kipc.transports.pipe import open_fd
rx = open_fd(int(sys.argv[1]), "r")
print("READY", flush=True)
import time; time.sleep(60)
"""


def test_pipe_reader_dies_writer_gets_peer_gone(figures: Any) -> None:
    """reader of a pipe dies: writer gets PeerGone, not SIGPIPE"""
    r, w = kipc.pipe()
    with r, w:
        child = testing.spawn(_DYING_READER, str(r.fileno()), pass_fds=[r.fileno()])
        r.close()
        child.kill()
        child.close()
        with pytest.raises(kipc.PeerGone):
            for _ in range(100_000):
                w.send(b"x" * 1024, timeout=5)
    figures.record("pipe", "writer outcome after reader SIGKILL", "PeerGone (no SIGPIPE)")


def test_hypothesis_bad_names_rejected_before_syscall(monkeypatch: pytest.MonkeyPatch, scale: Any,
                                                      figures: Any) -> None:
    """bad names/keys per scheme rejected before any system call"""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    calls: list[str] = []

    def trap(name: str, orig: Any) -> Any:
        # Only calls made by kipc count; the test machinery (hypothesis, pytest) passes through.
        def f(*a: Any, **k: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith("kipc"):
                return orig(*a, **k)
            calls.append(f"{name}{a!r} from {caller}")
            raise AssertionError(f"{name} called with bad input {a!r}")

        return f

    for scheme in registry.schemes():  # import every transport first: imports are not the syscalls we watch
        registry.load(scheme)

    import socket

    import posix_ipc
    import sysv_ipc

    from kipc import _platform

    for mod, names in ((os, ["open", "mkfifo", "mkdir", "unlink", "rename"]),
                       (posix_ipc, ["SharedMemory", "MessageQueue", "Semaphore"]),
                       (sysv_ipc, ["MessageQueue", "SharedMemory", "Semaphore", "ftok"]),
                       (socket, ["socket"]), (_platform, ["native"])):
        for n in names:
            monkeypatch.setattr(mod, n, trap(f"{mod.__name__}.{n}", getattr(mod, n)))

    bad_char = st.sampled_from(["/", "\x00", "\n", "\x1b", "..", " ", "\x7f"])
    # (not starting with "/": "fifo:///tmp" is a valid absolute path, not a bad name)
    bad_names = st.one_of(
        st.builds(lambda a, b, c: a + b + c, st.text(max_size=20), bad_char, st.text(max_size=20))
        .filter(lambda s: not s.startswith("/") and not s.endswith("/")),  # "name/" is an accepted spelling
        st.text(min_size=201, max_size=400, alphabet="abc"),
        st.just(""),
    )
    bad_keys = st.one_of(st.integers(max_value=-(2**31) - 1), st.integers(min_value=2**32),
                         st.text(alphabet="xyz!", min_size=1, max_size=5), st.just("0"))
    n = scale.n(300, 10_000)
    counted: dict[str, int] = {}

    name_schemes = [s for s in registry.schemes() if s not in ("sysvmq", "tcp", "nats")]

    @settings(max_examples=n, deadline=None, database=None)
    @given(bad_names)
    def names(bad: str) -> None:
        for scheme in name_schemes:
            url = f"{scheme}://{bad}"
            with pytest.raises((kipc.InvalidArgument, TypeError, kipc.Unsupported)):
                kipc.open(url, create=True)
            counted[scheme] = counted.get(scheme, 0) + 1

    @settings(max_examples=n, deadline=None, database=None)
    @given(bad_keys)
    def keys(bad: Any) -> None:
        with pytest.raises((kipc.InvalidArgument, TypeError)):
            kipc.open(f"sysvmq://{bad}", create=True)
        counted["sysvmq"] = counted.get("sysvmq", 0) + 1

    names()
    keys()
    for scheme, count in sorted(counted.items()):
        figures.record(scheme, "bad names/keys rejected before a syscall", count, target=f">= {n}")
    assert not calls, calls[:5]
