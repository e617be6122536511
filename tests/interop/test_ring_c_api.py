"""The C API of ring:// (``kipc_ring.h``): C programs compiled with gcc at test time are peers of Python.

The C peer is tests/interop/ring_c/peer.c, built with exactly the documented command
(``gcc peer.c -I"$(python -m kipc --include)" -lpthread``). Its messages carry
{id, seq, len, check} and a byte pattern, so both sides detect torn, reordered or foreign
messages (``_payload`` / ``_parse`` here, ``fill`` / ``msg_ok`` there).
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

import kipc
from kipc import _owners, testing
from kipc.errors import BadObject, ChannelClosed, PermissionDenied
from kipc.transports.ring import RingChannel

PEER = pathlib.Path(__file__).parent / "ring_c" / "peer.c"
_HDR = struct.Struct("<IIII")


def _payload(ident: int, seq: int, size: int) -> bytes:
    head = _HDR.pack(ident, seq, size, ident ^ seq ^ size ^ 0x5A5A5A5A)
    return head + bytes((ident * 7 + seq + i) & 0xFF for i in range(_HDR.size, size))


def _parse(msg: bytes) -> tuple[int, int]:
    """(id, seq) of a well-formed message; AssertionError for a torn or foreign one."""
    ident, seq, size, check = _HDR.unpack_from(msg)
    assert size == len(msg) and check == ident ^ seq ^ size ^ 0x5A5A5A5A, f"bad header {msg[:16]!r}"
    assert msg == _payload(ident, seq, size), f"torn message {ident}:{seq} ({size} bytes)"
    return ident, seq


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> str:
    include = subprocess.run([sys.executable, "-m", "kipc", "--include"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    assert os.path.isfile(os.path.join(include, "kipc_ring.h"))
    exe = tmp_path_factory.mktemp("ringc") / "peer"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(PEER), f"-I{include}",
                    "-lpthread"], check=True, timeout=120)
    return str(exe)


class CPeer:
    """A running C peer: stdout lines with a deadline on every read; killed on exit."""

    def __init__(self, *argv: str, user: int | None = None) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  user=user)
        self._buf = b""

    def line(self, timeout: float = 30.0) -> str:
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            assert left > 0, "C peer printed nothing in time"
            if select.select([self.p.stdout], [], [], left)[0]:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                assert chunk, f"C peer exited {self.p.wait(5)}: {self.p.stderr.read() if self.p.stderr else b''!r}"
                self._buf += chunk
        out, _, self._buf = self._buf.partition(b"\n")
        return out.decode()

    def until(self, prefix: str, timeout: float = 60.0) -> tuple[list[str], str]:
        """Lines before the first that starts with ``prefix``, and that line."""
        before = []
        while not (ln := self.line(timeout)).startswith(prefix):
            before.append(ln)
        return before, ln

    def finish(self, timeout: float = 30.0) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write(b"\n")
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        assert self.p.wait(timeout) == 0, self.p.stderr.read() if self.p.stderr else b""

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f:
                try:
                    f.close()
                except BrokenPipeError:  # stdin of a peer that exited without reading it
                    pass


@pytest.fixture
def procs() -> Iterator[list[CPeer]]:
    started: list[CPeer] = []
    yield started
    for p in started:
        p.close()


def _start(procs: list[CPeer], *argv: str, user: int | None = None) -> CPeer:
    p = CPeer(*argv, user=user)
    procs.append(p)
    return p


def test_include_dir_is_printed_and_the_cli_still_works() -> None:
    out = subprocess.run([sys.executable, "-m", "kipc", "--include"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and os.path.isfile(os.path.join(out.stdout.strip(), "kipc_ring.h"))
    helped = subprocess.run([sys.executable, "-m", "kipc", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "usage: kipc" in helped.stdout


def test_c_producer_to_python_consumer_every_size(peer: str, procs: list[CPeer]) -> None:
    """A small ring, sizes from 16 B to several times the ring (fragments): exact, in order."""
    name = testing.unique_name("cap")
    with kipc.open(f"ring://{name}", create=True, capacity=4096) as rx:
        n = 300
        p = _start(procs, peer, "produce", name, "attach", str(n), "16,64,1000,2040,9000,33", "3")
        assert p.line() == "ready"
        got = [_parse(rx.recv(timeout=30)) for _ in range(n)]
        assert got == [(3, i) for i in range(n)]
        assert p.line() == f"sent {n}"
        p.finish()


@pytest.mark.parametrize("mode", ["copy", "view"])
def test_python_producer_to_c_consumer(peer: str, procs: list[CPeer], mode: str) -> None:
    """The C side creates; Python attaches and sends; C receives by copy or zero-copy view."""
    name = testing.unique_name("cap")
    n = 200
    p = _start(procs, peer, "consume", name, "create", str(n), mode, "8192")
    assert p.line() == "ready"
    with kipc.open(f"ring://{name}") as tx:
        sizes = [16, 100, 4000, 20000, 17]
        for i in range(n):
            tx.send(_payload(9, i, sizes[i % len(sizes)]), timeout=30)
        lines, last = p.until("ok ")
        assert last == f"ok {n} bad 0"
        assert lines == [f"9:{i}" for i in range(n)]
        p.finish()
        with pytest.raises(ChannelClosed):  # the C creator closed the channel for everyone
            tx.send(b"x", timeout=5)
    assert not os.path.exists(f"/dev/shm/kipc.ring.{name}")


def test_mixed_c_and_python_producers_one_ring(peer: str, procs: list[CPeer]) -> None:
    """Two C producers and a Python thread on one ring: totals exact, FIFO per producer."""
    name = testing.unique_name("cap")
    n = 400
    with kipc.open(f"ring://{name}", create=True, capacity=16384) as rx:
        cs = [_start(procs, peer, "produce", name, "attach", str(n), sizes, str(ident))
              for ident, sizes in ((1, "16,300,9000"), (2, "5000,40"))]
        for c in cs:
            assert c.line() == "ready"

        def py_producer() -> None:
            with kipc.open(f"ring://{name}") as tx:
                for i in range(n):
                    tx.send(_payload(5, i, (64, 12000)[i % 2]), timeout=30)

        t = threading.Thread(target=py_producer)
        t.start()
        seen: dict[int, list[int]] = {1: [], 2: [], 5: []}
        for _ in range(3 * n):
            ident, seq = _parse(rx.recv(timeout=30))
            seen[ident].append(seq)
        t.join(30)
        assert seen == {1: list(range(n)), 2: list(range(n)), 5: list(range(n))}
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)
        for c in cs:
            assert c.line() == f"sent {n}"
            c.finish()


def test_c_creator_python_attacher_owner_record_and_mode(peer: str, procs: list[CPeer]) -> None:
    name = testing.unique_name("cap")
    url = f"ring://{name}"
    p = _start(procs, peer, "consume", name, "create", "1", "copy", "4096")
    assert p.line() == "ready"
    path = f"/dev/shm/kipc.ring.{name}"
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    rec = _owners.lookup(url)  # the record Python would write: kipc ls / gc see a C creator
    assert rec is not None and rec.pid == p.p.pid and rec.kind == "ring" and rec.alive
    assert rec.extra["capacity"] == 4096 and rec.extra["path"] == path
    with RingChannel(name) as tx:
        assert tx.info()["owner_pid"] == p.p.pid and tx.capacity == 4096
        tx.send(_payload(1, 0, 50), timeout=10)
        assert p.until("ok ")[1] == "ok 1 bad 0"
        p.finish()
    assert not os.path.exists(path) and _owners.lookup(url) is None


def test_python_creator_c_attacher_and_refusals(peer: str, procs: list[CPeer]) -> None:
    """C attaches a Python ring; refuses group/other mode bits, another owner uid, bad names, missing rings."""
    name = testing.unique_name("cap")
    path = f"/dev/shm/kipc.ring.{name}"
    with kipc.open(f"ring://{name}", create=True, capacity=4096):
        p = _start(procs, peer, "open", name)
        assert p.line() == "rc ok"
        os.chmod(path, 0o640)
        p = _start(procs, peer, "open", name)
        assert p.line() == "rc permission denied"
        with pytest.raises(PermissionDenied):
            kipc.open(f"ring://{name}")
        os.chmod(path, 0o600)
        if os.geteuid() == 0:  # root can hand the object to another uid: the uid check must refuse it
            os.chown(path, 65534, -1)
            p = _start(procs, peer, "open", name)
            assert p.line() == "rc permission denied"
            os.chown(path, 0, -1)
            # and a process of another uid cannot use root's 0600 ring at all (its own copy of
            # the peer: pytest's tmp dirs are 0700)
            exe_dir = tempfile.mkdtemp(prefix="kipc-capi-")
            try:
                os.chmod(exe_dir, 0o755)
                other = shutil.copy(peer, exe_dir)
                p = _start(procs, other, "open", name, user=65534)
                assert p.line() == "rc permission denied"
                p.p.wait(10)
            finally:
                shutil.rmtree(exe_dir)
    p = _start(procs, peer, "open", name)
    assert p.line() == "rc no such ring"
    for bad in ("../etc", ".hidden", "a/b", "x" * 201):
        p = _start(procs, peer, "open", bad)
        assert p.line() == "rc invalid argument"


def test_c_refuses_a_foreign_object_under_the_name(peer: str, procs: list[CPeer]) -> None:
    name = testing.unique_name("cap")
    path = f"/dev/shm/kipc.ring.{name}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"not a ring" * 1000)
        p = _start(procs, peer, "open", name)
        assert p.line(timeout=10) == "rc not a usable kipc ring"
        with pytest.raises(BadObject):
            kipc.open(f"ring://{name}")
    finally:
        os.close(fd)
        os.unlink(path)


def test_c_timeouts_are_honoured(peer: str, procs: list[CPeer]) -> None:
    name = testing.unique_name("cap")
    with RingChannel(name, create=True, capacity=4096) as ring:
        p = _start(procs, peer, "timeouts", name)
        assert p.line() == "ready"
        word, took = p.line().split(" ", 1)[1].rsplit(" ", 1)
        assert word == "timed out" and 0.29 <= float(took) < 2.0
        word, took = p.line().split(" ", 1)[1].rsplit(" ", 1)
        assert word == "would block" and float(took) < 0.1
        assert p.line() == "fill would block"
        word, took = p.line().split(" ", 1)[1].rsplit(" ", 1)
        assert word == "timed out" and 0.29 <= float(took) < 2.0
        assert p.line() == "small message too large 1500"  # it stays
        assert p.line() == "after ok 1500"
        assert p.line() == "nan invalid argument"
        assert p.p.wait(10) == 0
        # a 4 KiB ring holds two 1500-byte messages: the C side received one, the other is here
        assert ring.qsize() == 1 and ring.recv(timeout=5) == b"\x01" * 1500
        with pytest.raises(kipc.WouldBlock):
            ring.recv(timeout=0)


def test_c_loan_commit_to_python(peer: str, procs: list[CPeer]) -> None:
    name = testing.unique_name("cap")
    with kipc.open(f"ring://{name}", create=True, capacity=8192) as rx:
        n = 100
        p = _start(procs, peer, "loan", name, str(n), "1000", "4")
        assert p.line() == "ready"
        got = [_parse(rx.recv(timeout=30)) for _ in range(n)]
        assert got == [(4, i) for i in range(n)]
        assert p.line() == f"sent {n}"
        assert p.p.wait(10) == 0
        with pytest.raises(kipc.WouldBlock):  # the aborted loan published nothing
            rx.recv(timeout=0)


def test_c_producer_sigkilled_mid_message(peer: str, procs: list[CPeer]) -> None:
    """SIGKILL a C producer blocked between fragments: no torn message, the ring stays usable."""
    name = testing.unique_name("cap")
    with RingChannel(name, create=True, capacity=4096) as rx:
        for attempt in range(3):
            p = _start(procs, peer, "produce", name, "attach", "1000", "30000", str(10 + attempt))
            assert p.line() == "ready"
            first = _parse(rx.recv(timeout=30))
            assert first == (10 + attempt, 0)
            time.sleep(0.05)  # the producer is mid-message now: the 4 KiB ring holds < 1 of its messages
            p.p.send_signal(signal.SIGKILL)
            p.p.wait(10)
            # whatever the dead producer left is never delivered torn
            while True:
                try:
                    msg = rx.recv(timeout=0.3)
                except kipc.Timeout:
                    break
                assert _parse(msg)[0] == 10 + attempt
        with kipc.open(f"ring://{name}") as tx:
            tx.send(_payload(1, 1, 2000), timeout=10)  # one record: fits while nobody receives
            assert _parse(rx.recv(timeout=10)) == (1, 1)
        p = _start(procs, peer, "produce", name, "attach", "5", "30000", "20")  # and fragments again
        assert p.line() == "ready"
        assert [_parse(rx.recv(timeout=30)) for _ in range(5)] == [(20, i) for i in range(5)]
        assert p.line() == "sent 5"
        assert p.p.wait(10) == 0
        assert rx.info()["repairs"] >= 1


def test_c_consumer_sigkilled_holding_a_view(peer: str, procs: list[CPeer]) -> None:
    """A C view does not consume until released: its killer loses nothing, the ring stays usable."""
    name = testing.unique_name("cap")
    with RingChannel(name, create=True, capacity=8192) as ring:
        ring.send(_payload(2, 0, 3000), timeout=5)
        p = _start(procs, peer, "hold", name)
        assert p.line() == "ready"
        assert p.line() == "holding ok 3000"
        with pytest.raises(kipc.Timeout):  # other consumers wait while the view is held
            ring.recv(timeout=0.3)
        p.p.send_signal(signal.SIGKILL)
        p.p.wait(10)
        assert _parse(ring.recv(timeout=10)) == (2, 0)  # the robust lock was repaired; nothing lost
        ring.send(_payload(2, 1, 100), timeout=5)
        assert _parse(ring.recv(timeout=5)) == (2, 1)


def test_c_refuses_a_hostile_header(peer: str, procs: list[CPeer]) -> None:
    """A peer writing garbage into the shared header: the C side reports a corrupt ring, never crashes."""
    import mmap

    from kipc._native import _ring

    name = testing.unique_name("cap")
    with RingChannel(name, create=True, capacity=4096) as ring:
        ring.send(b"hello", timeout=5)
        off, size = _ring.LAYOUT["tail"]
        fd = os.open(f"/dev/shm/kipc.ring.{name}", os.O_RDWR)
        try:
            with mmap.mmap(fd, 4096) as m:
                m[off:off + size] = struct.pack("<Q", 1 << 40)  # tail far beyond head + capacity
        finally:
            os.close(fd)
        p = _start(procs, peer, "recv1", name)
        assert p.line() == "ready"
        out = p.line()
        assert out.startswith("rc not a usable kipc ring | corrupt:") and "tail" in out, out
        assert p.p.wait(10) == 0
        with pytest.raises(BadObject):  # marked broken for every peer
            ring.recv(timeout=1)
