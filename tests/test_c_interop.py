"""Interop with unchanged seed-style C programs (tests/c/*.c), compiled with gcc at test time.

Each C program uses the raw kernel API (msgsnd/msgrcv, shmget/shmat, mq_send,
semop, sigqueue/sigwaitinfo) and knows nothing about kipc.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import subprocess
import time
from collections.abc import Iterator

import pytest

import kipc
from kipc import signals, testing

C_DIR = pathlib.Path(__file__).parent / "c"


@pytest.fixture(scope="module")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("cbin")
    built = {}
    for src in sorted(C_DIR.glob("*.c")):
        exe = out / src.stem
        subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(src), "-lrt"], check=True, timeout=60)
        built[src.stem] = str(exe)
    return built


class CProc:
    """A C program as the other process: stdout lines with a deadline on every read."""

    def __init__(self, *argv: str, stdin: bool = False) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self._buf = b""

    def readline(self, timeout: float = 10.0) -> str:
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            assert left > 0, "C program printed nothing in time"
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 4096)
                assert chunk, f"C program exited: {self.p.wait(5)} {self.p.stderr.read() if self.p.stderr else ''}"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def finish(self, timeout: float = 10.0) -> None:
        rc = self.p.wait(timeout)
        assert rc == 0, self.p.stderr.read().decode() if self.p.stderr else rc

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f:
                f.close()


@pytest.fixture
def procs() -> Iterator[list[CProc]]:
    started: list[CProc] = []
    yield started
    for p in started:
        p.close()


def test_c_msgsnd_types_to_kipc_recv_by_type(cbin: dict[str, str]) -> None:
    key = testing.unique_key()
    with kipc.open(f"sysvmq://{key}", create=True) as q:
        subprocess.run([cbin["msg_send"], str(key)], check=True, timeout=10)
        assert q.stat().messages == 3
        assert q.recv(type=2, timeout=1) == b"hello type 2"
        assert q.recv_with_type(type=-3, timeout=1) == (b"hello type 1", 1)
        assert q.recv(type=0, timeout=1) == b"hello type 3"


def test_kipc_send_type5_to_c_msgrcv(cbin: dict[str, str], procs: list[CProc]) -> None:
    key = testing.unique_key()
    with kipc.open(f"{'sysvmq'}://{key:#x}", create=True) as q:
        c = CProc(cbin["msg_recv"], str(key))
        procs.append(c)
        assert c.readline() == "READY"
        q.send(b"not for C", type=4)
        q.send(b"for type five", type=5)
        assert c.readline() == "5 13 for type five"
        c.finish()
        assert q.recv(timeout=1) == b"not for C"  # C took only type 5


def test_c_writes_sysv_segment_kipc_reads(cbin: dict[str, str], procs: list[CProc]) -> None:
    key = testing.unique_key()
    c = CProc(cbin["shm_write"], str(key), stdin=True)
    procs.append(c)
    assert c.readline() == "READY"
    with pytest.raises(kipc.PermissionDenied, match="0o666"):
        kipc.SharedMemory(f"sysv://{key}")  # the seed's 0666 is refused unless accepted explicitly
    with kipc.SharedMemory(f"sysv://{key}", size=1024, mode=0o666) as seg:
        assert seg.size == 1024 and seg.attach_count == 2
        assert bytes(seg.buf[:18]) == b"Linux Programming\0"
        with pytest.raises(kipc.BadObject, match="smaller"):
            kipc.SharedMemory(f"sysv://{key}", size=4096, mode=0o666)
    assert c.p.stdin is not None
    c.p.stdin.write(b"done\n")
    c.p.stdin.flush()
    c.finish()


def test_kipc_writes_sysv_segment_c_prints(cbin: dict[str, str]) -> None:
    key = testing.unique_key()
    with kipc.SharedMemory(f"sysv://{key}", size=1024, create=True) as seg:
        msg = b"Linux Programming from kipc\0"
        seg.buf[: len(msg)] = msg
        out = subprocess.run([cbin["shm_read"], str(key)], capture_output=True, check=True, timeout=10)
        assert out.stdout == b"Linux Programming from kipc\n"


def test_c_mq_send_priorities_to_kipc(cbin: dict[str, str]) -> None:
    name = testing.unique_name("mq")
    with kipc.open(f"posixmq://{name}", create=True, max_messages=8, max_message_size=64) as q:
        subprocess.run([cbin["mq_send"], "/" + name], check=True, timeout=10)
        got = [q.recv_with_priority(timeout=1) for _ in range(3)]
        assert got == [(b"high", 7), (b"mid", 3), (b"low", 1)]


def test_c_semop_and_kipc_acquire_contend(cbin: dict[str, str], procs: list[CProc]) -> None:
    semkey, shmkey, n = testing.unique_key(), testing.unique_key(), 3000
    sem = kipc.Semaphore(f"sysv://{semkey}", create=True, value=1)  # (its `with` is acquire/release)
    with contextlib.closing(sem), kipc.SharedMemory(f"sysv://{shmkey}", size=8, create=True) as seg:
        counter = seg.buf.cast("q")
        c = CProc(cbin["sem_counter"], str(semkey), str(shmkey), str(n))
        procs.append(c)
        assert c.readline() == "READY"
        for _ in range(n):
            assert sem.acquire(timeout=10)
            v = counter[0]
            os.sched_yield()
            counter[0] = v + 1
            sem.release()
        assert c.readline(30) == "DONE"
        c.finish()
        assert counter[0] == 2 * n  # no lost update: the lock excluded both sides
        assert sem.value == 1
        counter.release()


def test_kipc_sigqueue_to_c_sigwaitinfo(cbin: dict[str, str], procs: list[CProc]) -> None:
    c = CProc(cbin["sig_wait"], "3")
    procs.append(c)
    pid = int(c.readline().split()[1])
    values = [11, -3, 2**31 - 1]
    for v in values:
        signals.send(pid, v)
    lines = [c.readline().split() for _ in values]
    c.finish()
    import signal as _signal

    assert [int(x[1]) for x in lines] == values  # RT signals queue and keep order
    assert all(int(x[0]) == _signal.SIGRTMIN and int(x[2]) == signals.SI_QUEUE and int(x[3]) == os.getpid()
               for x in lines)


def test_c_sigqueue_to_kipc_receiver(cbin: dict[str, str]) -> None:
    code = (
        "from kipc import signals\n"
        "r = signals.Receiver()\n"
        "print('READY', flush=True)\n"
        "for _ in range(3):\n"
        "    i = r.recv(timeout=10)\n"
        "    print(i.signo, i.value, i.code, i.pid, flush=True)\n"
    )
    with testing.spawn(code) as child:
        c = subprocess.run([cbin["sig_send"], str(child.pid), "7", "-8", "9"], timeout=10)
        assert c.returncode == 0
        got = [child.readline().split() for _ in range(3)]
        child.check()
    import signal as _signal

    assert [int(g[1]) for g in got] == [7, -8, 9]
    assert all(int(g[0]) == _signal.SIGRTMIN and int(g[2]) == -1 for g in got)
