"""Hostile local users: objects planted under our names, numbers spelled to slip past a parser.

A planted SysV object is made by a real other uid (65534, via setresuid in a
``python -c`` child; the CI runs as root), which then hands the object to us
with ``IPC_SET`` as the kernel lets a creator do, keeping its own access.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import pytest
import sysv_ipc

import kipc
from kipc import _naming, _objects, testing
from kipc._framing import DEFAULT_MAX_FRAME, HEADER
from kipc.testing import spawn, unique_key, unique_name

from ..conftest import Figures

HOSTILE = "Hostile peers and odd objects"

NOBODY = 65534

# Creates a SysV object as uid 65534, then IPC_SETs its owner to root (mode 0600, so that
# nothing but the creator check can tell it from one of ours).
PLANT = """
import os, sys, sysv_ipc
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
kind, key = sys.argv[1], int(sys.argv[2])
if kind == "msg":
    obj = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=0o600)
elif kind == "shm":
    obj = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
else:
    obj = sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode=0o600, initial_value=1)
obj.uid, obj.gid = 0, 0
print("READY", obj.cuid, obj.uid, flush=True)
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid (the CI runs as root)")


def _plant(kind: str, key: int) -> None:
    with spawn(PLANT, kind, str(key)) as child:
        assert child.lines_seen[-1] == f"READY {NOBODY} 0"
        child.check()


def _remove(kind: str, key: int) -> None:
    cls = {"msg": sysv_ipc.MessageQueue, "shm": sysv_ipc.SharedMemory, "sem": sysv_ipc.Semaphore}[kind]
    cls(key).remove()


def _open(kind: str, key: int, **kw: object) -> kipc.Channel | kipc.SharedMemory | kipc.Semaphore:
    if kind == "msg":
        return kipc.open(f"sysvmq://{key}", **kw)
    if kind == "shm":
        return kipc.SharedMemory(f"sysv://{key}", **kw)  # type: ignore[arg-type]
    return kipc.Semaphore(f"sysv://{key}", **kw)  # type: ignore[arg-type]


@needs_root
@pytest.mark.parametrize("kind", ["msg", "shm", "sem"])
def test_planted_sysv_object_handed_to_us_is_refused(kind: str, figures: Figures) -> None:
    """SysV object created by uid 65534 under our key, owner IPC_SET to us: attach refused unless allow_foreign"""
    key = unique_key()
    _plant(kind, key)
    try:
        refused = 0
        for kw in ({}, {"create": "if_missing"}):
            if kind == "shm" and kw:
                kw = {**kw, "size": 4096}
            with pytest.raises(kipc.PermissionDenied) as ei:
                _open(kind, key, **kw)
            msg = str(ei.value)
            assert f"{key:#x}" in msg and f"uid {NOBODY}" in msg and "uid 0" in msg, msg
            refused += 1
        t0 = time.monotonic()
        with _open(kind, key, allow_foreign=True):
            pass
        figures.record(f"sysv {kind}", "attach (plain, if_missing) refused / allow_foreign attaches",
                       f"{refused} of 2 refused / attached in {1000 * (time.monotonic() - t0):.1f} ms",
                       target="2 of 2 / attaches", section=HOSTILE)
    finally:
        _remove(kind, key)


@needs_root
def test_object_of_ours_still_attaches() -> None:
    """The creator check does not refuse what this uid created (creator = owner = us)."""
    key = unique_key()
    with kipc.open(f"sysvmq://{key}", create=True) as q, kipc.open(f"sysvmq://{key}") as peer:
        q.send(b"x")
        assert peer.recv(timeout=5) == b"x"


BAD_KEYS = [" 12 ", "12 ", "+5", "\uff11\uff12", "1_2", "0x", "0x 1", "\u0661", "12\n", "٣"]


def test_numbers_are_ascii_decimal_or_hex_only(figures: Figures) -> None:
    """Keys, ports, sizes, modes, uids, timeouts and proj spelled with spaces, '+', '_' or non-ASCII digits"""
    refused = 0
    for bad in BAD_KEYS:
        with pytest.raises(kipc.InvalidArgument):
            _naming.validate_key(bad)
        refused += 1
    assert _naming.validate_key("12") == 12 and _naming.validate_key("0x4D2") == 1234
    assert _naming.validate_key("-5") == -5 and _naming.validate_key("0xffffffff") == -1
    with pytest.raises(kipc.InvalidArgument):
        _naming.validate_key(str(2**32))
    # every other number a URL may carry, through kipc.open (refused before any object is made)
    name = unique_name("num")
    urls = [
        "sysvmq:// 12", "sysvmq://+5", "sysvmq://\uff11\uff12",
        f"sysvmq:///etc/hostname?proj=%20{1}", "sysvmq:///etc/hostname?proj=+1", "sysvmq:///etc/hostname?proj=\uff11",
        "tcp://127.0.0.1:\uff19\uff10\uff10\uff10", "tcp://127.0.0.1:+9000", "tcp://127.0.0.1:9_000",
        f"ring://{name}?capacity=\uff16\uff14KiB", f"ring://{name}?capacity=%2064KiB", f"ring://{name}?mode=\uff16\uff10\uff10",
        f"ring://{name}?spin=%201", f"ring://{name}?spin=nan",
        f"fifo://{name}?timeout=\uff11", f"fifo://{name}?allow_uids=\uff10", f"fifo://{name}?allow_uids=+0",
        f"posixmq://{name}?mode=+600", f"posixmq://{name}?max_messages=\uff11\uff10",
        f"file://{name}?max_message_size=1_000",
    ]
    for url in urls:
        with pytest.raises(kipc.InvalidArgument):
            kipc.open(url, **({} if url.startswith("tcp:") else {"create": True})).close()
        refused += 1
    for url in ("sysvmq:// 12", "sysvmq://\uff11\uff12", "sysv://+5"):
        with pytest.raises(kipc.InvalidArgument):
            kipc.remove(url)
        refused += 1
    assert _naming.parse_size("64KiB") == 64 << 10 and _naming.parse_int("0x10", what="n") == 16
    assert _objects.parse_uids("0,1000") == {0, 1000}
    figures.record("every scheme", "loosely spelled numbers refused (InvalidArgument, before any syscall)",
                   f"{refused} of {refused}", target="all", section=HOSTILE)


# -- issue 11 item 2: silent clients must not stall a server -------------------------------------------------
AUTH = "s3cret"

SILENT = """
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socks = [socket.create_connection((host[6:], int(port))) for _ in range(int(sys.argv[2]))]
print("READY", flush=True)
sys.stdin.readline()  # say nothing until killed
"""

HONEST = """
import sys, time
import kipc, kipc.transports.tcp  # imported first: the figure is the server's, not an import's
print("READY", flush=True)
sys.stdin.readline()
t = time.monotonic()
try:
    ch = kipc.open(sys.argv[1], timeout=10, auth=sys.argv[2])
except kipc.KipcError as e:
    print("REFUSED", type(e).__name__, e, flush=True)
    raise SystemExit(0)
print("T", t, flush=True)
ch.send(b"hello", timeout=5)
try:
    ch.recv(timeout=10)
except kipc.ChannelClosed:
    pass
"""


def _silent_and_honest(url: str) -> tuple[Any, Any]:
    silent = spawn(SILENT, url, "5", stdin=True)
    return silent, spawn(HONEST, url, AUTH, stdin=True)


def test_silent_tcp_clients_do_not_delay_an_honest_one(figures: Figures) -> None:
    """5 silent TCP clients (auth=, handshake_timeout 10 s) ahead of an honest one: blocking accept()"""
    with kipc.listen("tcp://127.0.0.1:0", auth=AUTH) as lst:
        silent, honest = _silent_and_honest(lst.url)
        with silent, honest:
            with pytest.raises(kipc.Timeout):
                lst.accept(timeout=0.2)  # the 5 silent ones are now mid-handshake
            honest.write("go\n")
            with lst.accept(timeout=10) as ch:
                delay = time.monotonic() - float(honest.expect("T", 10).split()[1])
                assert ch.recv(timeout=5) == b"hello"
            honest.check(10)
    assert delay < 0.5, delay
    figures.record("tcp auth=", "honest client's connect to accept() with 5 silent clients mid-handshake",
                   f"{1000 * delay:.1f} ms", target="< 500 ms (was 10 s: serial handshakes)", section=HOSTILE)


def test_silent_tcp_clients_do_not_block_the_event_loop(figures: Figures) -> None:
    """5 silent TCP clients (auth=) ahead of an honest one: aaccept() on asyncio, a 10 ms timer keeps firing"""
    with kipc.listen("tcp://127.0.0.1:0", auth=AUTH) as lst:
        silent, honest = _silent_and_honest(lst.url)
        with silent, honest:
            async def main() -> tuple[float, float]:
                gaps: list[float] = []
                stop = asyncio.Event()

                async def ticker() -> None:
                    last = time.monotonic()
                    while not stop.is_set():
                        await asyncio.sleep(0.01)
                        now = time.monotonic()
                        gaps.append(now - last)
                        last = now

                tick = asyncio.create_task(ticker())
                with pytest.raises(kipc.Timeout):
                    await lst.aaccept(timeout=0.3)  # the silent ones are accepted and stay silent
                honest.write("go\n")
                ch = await lst.aaccept(timeout=10)
                accepted = time.monotonic()
                assert await ch.arecv(timeout=5) == b"hello"
                ch.close()
                await asyncio.sleep(0.05)
                stop.set()
                await tick
                return accepted, max(gaps)

            accepted, gap = asyncio.run(main())
            delay = accepted - float(honest.expect("T", 10).split()[1])
            honest.check(10)
    assert delay < 0.5, delay
    assert gap < 0.25, gap  # the old synchronous handshake froze the loop for handshake_timeout
    figures.record("tcp auth=", "aaccept(): honest client delayed / longest gap of a 10 ms loop timer",
                   f"{1000 * delay:.1f} ms / {1000 * gap:.0f} ms", target="< 500 ms / < 250 ms", section=HOSTILE)


def test_listener_iteration_survives_a_client_failing_auth(caplog: pytest.LogCaptureFixture, figures: Figures) -> None:
    """`for conn in listener` with a client failing auth, then an honest one: the loop goes on"""
    with kipc.listen("tcp://127.0.0.1:0", auth=AUTH) as lst, \
            spawn(HONEST, lst.url, "wrong", stdin=True) as bad, spawn(HONEST, lst.url, AUTH, stdin=True) as good:
        def drive() -> None:
            bad.write("go\n")
            bad.expect("REFUSED", 10)
            good.write("go\n")

        guard = threading.Timer(20, lst.close)  # a broken loop fails the test instead of hanging it
        driver = threading.Thread(target=drive)
        guard.start()
        driver.start()
        got = []
        try:
            with caplog.at_level("WARNING", logger="kipc"):
                for conn in lst:
                    with conn:
                        got.append(conn.recv(timeout=5))
                    break
        finally:
            guard.cancel()
            driver.join(10)
        assert got == [b"hello"]
        assert "failed authentication" in caplog.text
        refused = caplog.text.count("refused connection")
        good.check(10)
        bad.check(10)
    figures.record("tcp auth=", "clients failing auth, then an honest one: refused+logged / loop ends / honest served",
                   f"{refused} / no / yes", target="1 / no / yes", section=HOSTILE)


# -- issue 11 item 3: a length prefix is the peer's word, not a reservation ----------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
def test_forged_length_prefix_costs_a_small_constant(scheme: str, figures: Figures) -> None:
    """A ~1 GiB length prefix and then silence: the receiver's memory grows by a small constant"""
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{unique_name('big')}"
    with kipc.listen(url) as lst:
        with kipc.open(lst.url, timeout=5) as attacker, lst.accept(timeout=5) as victim:
            raw = socket.socket(fileno=os.dup(attacker.fileno()))
            try:
                raw.sendall(HEADER.pack(DEFAULT_MAX_FRAME - 1))  # a frame of ~1 GiB announced, none sent
                before = _rss()
                with pytest.raises(kipc.Timeout):
                    victim.recv(timeout=0.5)
                grown = _rss() - before
            finally:
                raw.close()
    assert grown < 5 << 20, grown
    figures.record(scheme, "RSS growth after a forged ~1 GiB length prefix and silence (recv timeout 0.5 s)",
                   f"+{grown / (1 << 20):.1f} MiB", target="< 5 MiB (was +1 GiB: zero-filled)", section=HOSTILE)


BIG_RECEIVER = """
import resource, sys
import kipc
size = int(sys.argv[1])
with kipc.listen("tcp://127.0.0.1:0") as lst:
    print("READY", lst.url, flush=True)
    with lst.accept(timeout=20) as ch:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        msg = ch.recv(timeout=60)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert type(msg) is bytes and len(msg) == size and msg[:4] == b"big!" and msg[-4:] == b"end!"
        print("PEAK", peak - before, flush=True)
"""


def test_big_message_received_without_a_second_copy(figures: Figures) -> None:
    """A 256 MiB message over tcp: the receiver's peak memory is about one copy of it, and recv returns bytes"""
    size = 256 << 20
    with spawn(BIG_RECEIVER, str(size), ready=False) as child:
        url = child.expect("READY", 20).split()[1]
        msg = bytearray(size)
        msg[:4], msg[-4:] = b"big!", b"end!"
        with kipc.open(url, timeout=10) as ch:
            ch.send(msg, timeout=60)
            del msg
            peak = int(child.expect("PEAK", 60).split()[1])
        child.check(20)
    assert peak < 1.25 * size, peak
    figures.record("tcp", "receiver's peak RSS growth for one 256 MiB message",
                   f"{peak / (1 << 20):.0f} MiB", target="~1 copy (was ~2: bytes(bytearray))", section=HOSTILE)


# -- issue 11 item 11: close() after a timed send that did not finish -----------------------------------------
@pytest.mark.parametrize("linger", [None, 0.3], ids=["default", "linger=0.3"])
@pytest.mark.parametrize("scheme", ["unix", "tcp", "pipe", "fifo"])
def test_close_after_an_unfinished_big_send_lingers_then_cuts(scheme: str, linger: float | None,
                                                              figures: Figures) -> None:
    """A timed send of 64 MiB the peer does not read, then close(): returns after the linger; peer: ProtocolError"""
    from kipc.transports._stream import LINGER

    options = {} if linger is None else {"linger": linger}
    bound = LINGER if linger is None else linger
    with testing.channel_pair(scheme, **options) as (tx, rx):
        assert tx.linger == bound  # type: ignore[attr-defined]
        tx.send(bytes(64 << 20), timeout=0.3)  # accepted (first bytes written); the tail waits in tx
        assert tx._pending_out()
        t0 = time.monotonic()
        tx.close()
        took = time.monotonic() - t0
        with pytest.raises(kipc.ProtocolError):
            while True:  # the cut frame: whatever arrived, then EOF inside it
                rx.recv(timeout=5)
    assert bound - 0.1 <= took < bound + 0.3, took
    how = "default " if linger is None else "linger="
    figures.record(scheme, f"close() after an unfinished 64 MiB timed send ({how}{bound:g} s) / the peer's recv",
                   f"{took:.2f} s / ProtocolError",
                   target=f"<= {bound:g} s + 0.3 / ProtocolError (was: close blocked forever)", section=HOSTILE)


@pytest.mark.parametrize("bad", [-1, None, "x", "nan", float("inf")])
def test_linger_is_validated(bad: object) -> None:
    with pytest.raises((kipc.InvalidArgument, TypeError)):
        kipc.pipe(linger=bad)  # type: ignore[arg-type]


# -- issue 11 items 8 and 9: spools -----------------------------------------------------------------------------
def test_spool_planted_entries_are_quarantined_and_real_messages_delivered(tmp_path: Any, figures: Figures) -> None:
    """Planted *.msg entries (FIFO, directory, symlink, foreign-owned, open-mode, hard-linked file) in a spool"""
    from kipc.transports.file import QUARANTINE, SpoolWarning

    url = f"file://{unique_name('spool')}"
    with kipc.open(url, create=True, fsync=False) as sp:
        d = sp._path  # type: ignore[attr-defined]
        sp.send(b"real 1")
        target = tmp_path / "secret"
        target.write_bytes(b"not a message")
        target.chmod(0o600)  # so the hard link is refused for its link count, not its mode
        os.mkfifo(f"{d}/00-fifo.msg", 0o600)
        os.mkdir(f"{d}/01-dir.msg", 0o700)
        os.symlink(target, f"{d}/02-symlink.msg")
        with open(f"{d}/03-open-mode.msg", "wb") as f:
            f.write(b"x")
        os.chmod(f"{d}/03-open-mode.msg", 0o666)
        os.link(target, f"{d}/04-hardlink.msg")
        planted = 5
        if os.geteuid() == 0:
            with open(f"{d}/05-foreign.msg", "wb") as f:
                f.write(b"y")
            os.chown(f"{d}/05-foreign.msg", NOBODY, NOBODY)
            planted += 1
        sp.send(b"real 2")
        got = []
        t0 = time.monotonic()
        with pytest.warns(SpoolWarning) as warned:
            got.append(sp.recv(timeout=1))
            got.append(sp.recv(timeout=1))
            took = time.monotonic() - t0
            with pytest.raises(kipc.Timeout):
                sp.recv(timeout=0.1)
        assert got == [b"real 1", b"real 2"]
        quarantined = sorted(n.split("-", 2)[-1] for n in os.listdir(f"{d}/{QUARANTINE}"))
        assert len(quarantined) == planted, quarantined
        assert os.listdir(f"{d}/claimed") == []
        assert len(warned) == planted
        assert target.read_bytes() == b"not a message"  # a symlink's or hard link's target is left alone
    assert took < 1.0
    figures.record("file", "planted *.msg entries quarantined / real messages delivered / time for both recv",
                   f"{planted} of {planted} / 2 of 2 / {1000 * took:.1f} ms",
                   target="all / all / no hang (was: FIFO hung, dir/symlink raw OSError)", section=HOSTILE)


def test_spool_handle_shared_across_fork(figures: Figures) -> None:
    """A spool handle used by parent and child after fork(): 3,000 sends each"""
    n = 3000
    url = f"file://{unique_name('spool')}"
    with kipc.open(url, create=True, fsync=False) as sp:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            failures = 0
            try:
                for i in range(n):
                    try:
                        sp.send(b"c%d" % i)
                    except Exception:
                        failures += 1
            finally:
                os.write(w, str(failures).encode())
                os._exit(0)
        os.close(w)
        failures = 0
        for i in range(n):
            try:
                sp.send(b"p%d" % i)
            except Exception:
                failures += 1
        child_failures = int(os.read(r, 100) or b"-1")
        os.close(r)
        os.waitpid(pid, 0)
        got = []
        while True:
            try:
                got.append(sp.recv(timeout=0.5))
            except kipc.DeadlineExceeded:
                break
    expected = {b"p%d" % i for i in range(n)} | {b"c%d" % i for i in range(n)}
    assert failures == 0 and child_failures == 0
    assert len(got) == 2 * n and set(got) == expected
    for who in (b"p", b"c"):  # FIFO per producer
        seq = [int(m[1:]) for m in got if m[:1] == who]
        assert seq == sorted(seq)
    figures.record("file", "parent + forked child, 3,000 sends each on one handle: failed sends / received once",
                   f"{failures + child_failures} / {len(set(got))} of {2 * n}", target="0 / all", section=HOSTILE)


def test_spool_receiver_shared_across_fork_is_woken() -> None:
    """After fork, parent and child each wait on the inherited handle: each gets its own inotify fd."""
    url = f"file://{unique_name('spool')}"
    with kipc.open(url, create=True, fsync=False) as sp:
        with pytest.raises(kipc.Timeout):
            sp.recv(timeout=0.01)  # makes the parent's inotify fd, then inherited
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                t0 = time.monotonic()
                msg = sp.recv(timeout=10)
                code = 0 if msg == b"for the child" and time.monotonic() - t0 < 0.5 else 2
            finally:
                os._exit(code)
        try:
            time.sleep(0.1)
            with kipc.open(url, fsync=False) as tx:
                tx.send(b"for the child")
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


# -- issue 11 item 4: what a queued signal's sender can forge ------------------------------------------------
SIG_RECEIVER = """
import os, signal, sys
import kipc
from kipc import signals
plain = signals.Receiver(signal.SIGRTMIN + 2)
safe = signals.Receiver(signal.SIGRTMIN + 3, token=True)
print("READY", os.getpid(), safe.token, flush=True)
sys.stdin.readline()
def drain(r):
    out = []
    while True:
        try:
            i = r.recv(timeout=0.3)
        except kipc.DeadlineExceeded:
            return out
        out.append([i.pid, i.uid, i.value])
print("PLAIN", drain(plain), plain.dropped, flush=True)
print("SAFE", drain(safe), safe.dropped, flush=True)
"""

SIG_FORGER = """
import ctypes, os, platform, signal, struct, sys
from kipc import signals
pid, token = int(sys.argv[1]), int(sys.argv[2])
NR = {"x86_64": 129, "aarch64": 240}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
def forge(sig, fake_pid, fake_uid, word):
    # siginfo_t: signo, errno, code (SI_QUEUE = -1), pad; then si_pid, si_uid, si_value (8 bytes)
    raw = struct.pack("iiiiiIQ", sig, 0, -1, 0, fake_pid, fake_uid, word & (2**64 - 1)).ljust(128, b"\\0")
    buf = ctypes.create_string_buffer(raw)
    if libc.syscall(NR, pid, sig, buf) != 0:
        raise OSError(ctypes.get_errno(), "rt_sigqueueinfo")
me = os.getuid()
forge(signal.SIGRTMIN + 2, 1, me, 11)            # plain receiver: poses as pid 1 with our uid
forge(signal.SIGRTMIN + 2, 1, 65534, 12)         # plain receiver: claims another uid
forge(signal.SIGRTMIN + 3, 1, me, 21)            # token receiver: no token
forge(signal.SIGRTMIN + 3, 1, me, ((token ^ 1) << 32) | 22)  # token receiver: a wrong token
signals.send(pid, 23, signal.SIGRTMIN + 3, token=token)     # the honest sender
print("READY", os.getpid(), flush=True)
"""


def test_forged_signal_senders_and_the_token_filter(figures: Figures) -> None:
    """A child forging si_pid/si_uid with rt_sigqueueinfo: the uid filter is no defence, the token filter is"""
    import json

    with spawn(SIG_RECEIVER, stdin=True) as rx:
        _, pid, token = rx.lines_seen[-1].split()
        with spawn(SIG_FORGER, pid, token) as forger:
            forger_pid = int(forger.lines_seen[-1].split()[1])
            forger.check(10)
        rx.write("go\n")
        plain_line = rx.expect("PLAIN", 10)
        safe_line = rx.expect("SAFE", 10)
        rx.check(10)
    me = os.getuid()
    plain, plain_dropped = json.loads(plain_line.split(" ", 1)[1].rsplit(" ", 1)[0]), int(plain_line.rsplit(" ", 1)[1])
    safe, safe_dropped = json.loads(safe_line.split(" ", 1)[1].rsplit(" ", 1)[0]), int(safe_line.rsplit(" ", 1)[1])
    # documented limit: the default filter takes a same-uid process's word for its pid
    assert plain == [[1, me, 11]] and plain_dropped == 1
    # the token filter: only the honest sender (who knows the token) gets through
    assert safe == [[forger_pid, me, 23]] and safe_dropped == 2
    figures.record("signals", "forged SI_QUEUE (pid 1 / uid 65534 / no token / wrong token): accepted by "
                              "uid filter / by token filter; honest token sender accepted",
                   "1 of 2 (pid 1 passes: documented) / 0 of 2 / yes", target="documented / 0 / yes",
                   section=HOSTILE)

# -- issue 11 item 10: SysV queue capacity ----------------------------------------------------------------------
SYSV_SINGLE_THREAD = """
import sys, kipc
with kipc.open("sysvmq://" + sys.argv[1]) as ch:
    try:
        ch.send(bytes(2000))
        print("RESULT sent", flush=True)
    except kipc.MessageTooLarge as e:
        print("RESULT", type(e).__name__, e.limit, flush=True)
"""


def test_message_bigger_than_the_queue_capacity_is_too_large_at_once(figures: Figures) -> None:
    """A message above the queue's max_bytes (msg_qbytes; also lowered at run time) can never fit"""
    key = unique_key()
    with kipc.open(f"sysvmq://{key}", create=True, max_bytes=1024) as q, kipc.open(f"sysvmq://{key}") as peer:
        for ch in (q, peer):
            t0 = time.monotonic()
            with pytest.raises(kipc.MessageTooLarge) as ei:
                ch.send(bytes(2000))  # untimed: used to block forever
            first = time.monotonic() - t0
            assert first < 0.5
            msg = str(ei.value)
            assert "2000" in msg and "1024" in msg and "max_bytes=" in msg and "kernel.msgmnb" in msg, msg
            assert ei.value.size == 2000 and ei.value.limit == 1024
        assert q.stat().messages == 0
        # raised at run time by the owner: the peer's cached limit is only a hint
        q.max_bytes = 4096
        peer.send(bytes(2000), timeout=5)
        assert q.recv(timeout=5) == bytes(2000)
        # lowered at run time: a peer that read 4096 finds out when the send would block
        q.max_bytes = 1024
        t0 = time.monotonic()
        with pytest.raises(kipc.MessageTooLarge, match="1024"):
            peer.send(bytes(2000), timeout=5)
        lowered = time.monotonic() - t0
        assert lowered < 0.5
        peer.send(b"small", timeout=5)
        assert q.recv(timeout=5) == b"small"
        # a process with no other thread: an untimed send blocks in the kernel's msgsnd, so the
        # check runs before it (and again when the queue is full, before the kernel wait)
        with spawn(SYSV_SINGLE_THREAD, str(key), ready=False) as child:
            assert child.expect("RESULT", 10) == "RESULT MessageTooLarge 1024"
            child.check(10)
    figures.record("sysvmq", "2000 B untimed send to a max_bytes=1024 queue / after max_bytes lowered at run time",
                   f"MessageTooLarge in {1000 * first:.2f} ms / {1000 * lowered:.2f} ms (queue unchanged)",
                   target="MessageTooLarge at once (was: blocked forever)", section=HOSTILE)
