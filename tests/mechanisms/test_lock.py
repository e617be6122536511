"""kipc.Lock / kipc.RLock / kipc.Event: threading semantics, owner death, stopped holders, contention,
cancel-safe asyncio, and a C program on the same lock (tests/interop/c/lock_hold.c)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pathlib
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

import kipc
from kipc import testing

C_DIR = pathlib.Path(__file__).parent.parent / "interop" / "c"

HOLD = """
import kipc, sys
lock = getattr(kipc, sys.argv[2])(sys.argv[1])
ok = lock.acquire(timeout=10)
print('READY', ok, lock.recovered, flush=True)
sys.stdin.readline()
lock.release()
print('RELEASED', flush=True)
sys.stdin.readline()
"""


def _url() -> str:
    return f"posix://{testing.unique_name('lk')}"


@contextlib.contextmanager
def _lock(cls: type = kipc.Lock, **kw: object) -> Iterator[kipc.Lock]:
    lk = cls(_url(), create=True, **kw)
    try:
        yield lk
    finally:
        lk.close()


@pytest.fixture(scope="module")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("cbin")
    built = {}
    for stem in ("lock_hold",):
        exe = out / stem
        subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(C_DIR / f"{stem}.c"), "-lrt"],
                       check=True, timeout=60)
        built[stem] = str(exe)
    return built


# -- threading semantics ---------------------------------------------------------------------------

def test_threading_lock_semantics() -> None:
    with _lock() as lk:
        assert not lk.locked()
        assert lk.acquire() is True
        assert lk.locked() and lk.owned()
        assert lk.acquire(False) is False
        assert lk.acquire(timeout=0) is False
        with pytest.raises(RuntimeError, match="already holds"):
            lk.acquire()  # documented: raises instead of deadlocking
        lk.release()
        assert not lk.locked() and not lk.owned()
        with pytest.raises(RuntimeError, match="release unlocked lock"):
            lk.release()
        with pytest.raises(ValueError):
            lk.acquire(False, 1)
        with pytest.raises(ValueError):
            lk.acquire(timeout=-2)
        with lk:
            assert lk.locked()
        assert not lk.locked()
        assert lk.recovered is False and lk.dead_pid == 0
        info = lk.info()
        assert info["holder_pid"] == 0 and info["recoveries"] == 0 and info["releases"] >= 2


def test_other_thread_waits_and_cannot_release() -> None:
    with _lock() as lk:
        lk.acquire()
        out: list[object] = []

        def other() -> None:
            t0 = time.monotonic()
            out.append(lk.acquire(timeout=0.2))
            out.append(time.monotonic() - t0)
            try:
                lk.release()
            except RuntimeError as e:
                out.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert out[0] is False and 0.2 <= float(out[1]) < 1.0  # type: ignore[arg-type]
        assert "held by another thread" in str(out[2])
        assert lk.owned()
        lk.release()


def test_thread_death_while_holding_is_recovered() -> None:
    with _lock() as lk:
        t = threading.Thread(target=lk.acquire)
        t.start()
        t.join(10)
        # the thread's exit marks the mutex (glibc walks its robust list as the OS thread ends,
        # a moment after join() returns): the next acquire gets it and is told
        assert lk.acquire(timeout=5) and lk.recovered
        lk.release()
        assert lk.acquire(timeout=1) and not lk.recovered
        lk.release()


def test_create_open_modes_and_attach_checks(tmp_path: pathlib.Path) -> None:
    url = _url()
    old = os.umask(0o077)
    try:
        lk = kipc.Lock(url, create=True)
    finally:
        os.umask(old)
    try:
        name = url.removeprefix("posix://")
        path = f"/dev/shm/kipc.lock.{name}"
        assert lk.path == path and os.stat(path).st_mode & 0o777 == 0o600
        assert not os.path.exists(f"/dev/shm/{name}")  # SharedMemory("posix://NAME") is /NAME: no collision
        with pytest.raises(kipc.AlreadyExists):
            kipc.Lock(url, create=True)
        with kipc.Lock(url, create="if_missing") as again:
            assert not again.owner
        shutil.copyfile(path, f"/dev/shm/kipc.event.{name}")  # a Lock's header under an Event's name
        os.chmod(f"/dev/shm/kipc.event.{name}", 0o600)
        try:
            with pytest.raises(kipc.BadObject, match="it is a Lock"):
                kipc.Event(url)
        finally:
            os.unlink(f"/dev/shm/kipc.event.{name}")
        os.chmod(path, 0o644)
        with pytest.raises(kipc.PermissionDenied):
            kipc.Lock(url)
        kipc.Lock(url, mode=0o644).close()
        os.chmod(path, 0o600)
        with pytest.raises(kipc.NotFound):
            kipc.Lock(_url())
        with pytest.raises(kipc.InvalidArgument):
            kipc.Lock("posix://a/b", create=True)
        with pytest.raises(kipc.InvalidArgument):
            kipc.Lock("sysv://1234", create=True)
    finally:
        lk.close()
    assert not os.path.exists(path)
    # planted objects: wrong size, bad magic, a symlink
    for content in (b"x" * 100, bytes(4096)):
        bad = testing.unique_name("bad")
        p = f"/dev/shm/kipc.lock.{bad}"
        with open(p, "wb") as f:
            f.write(content)
        os.chmod(p, 0o600)
        try:
            with pytest.raises(kipc.BadObject):
                kipc.Lock(f"posix://{bad}")
        finally:
            os.unlink(p)
    link = testing.unique_name("ln")
    target = tmp_path / "target"
    target.write_bytes(bytes(4096))
    os.symlink(target, f"/dev/shm/kipc.lock.{link}")
    try:
        with pytest.raises(OSError):
            kipc.Lock(f"posix://{link}")
    finally:
        os.unlink(f"/dev/shm/kipc.lock.{link}")


def test_close_wakes_a_blocked_thread_and_forked_child_removes_nothing() -> None:
    url = _url()
    lk = kipc.Lock(url, create=True)
    try:
        other = kipc.Lock(url)
        with testing.spawn(HOLD, url, "Lock", stdin=True):
            got: list[BaseException] = []

            def blocked() -> None:
                try:
                    other.acquire(timeout=10)
                except BaseException as e:
                    got.append(e)

            t = threading.Thread(target=blocked)
            t.start()
            time.sleep(0.05)  # let it block (not synchronisation: the assert holds either way)
            t0 = time.monotonic()
            other.close()
            t.join(5)
            assert got and isinstance(got[0], kipc.ChannelClosed) and time.monotonic() - t0 < 0.5
        pid = os.fork()
        if pid == 0:
            lk.close()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert os.path.exists(lk.path)
    finally:
        lk.close()


# -- other processes ---------------------------------------------------------------------------------

def test_cross_process_exclusion_and_sigkill_recovery() -> None:
    with _lock() as lk:
        with testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:
            assert child.lines_seen[-1] == "READY True False"
            assert lk.locked() and not lk.owned()
            assert lk.acquire(timeout=0.1) is False
            child.write("\n")
            child.expect("RELEASED")
            assert lk.acquire(timeout=5)
            lk.release()
        with testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:
            pid = child.pid
            assert lk.info()["holder_pid"] == pid
            child.kill()
        assert lk.acquire(timeout=5) is True
        assert lk.recovered and lk.dead_pid == pid
        assert lk.info()["recoveries"] == 1
        lk.release()


def test_blocked_waiter_is_woken_by_holder_death() -> None:
    with _lock() as lk:
        with testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:
            result: list[object] = []
            t = threading.Thread(target=lambda: result.append((lk.acquire(timeout=10), time.monotonic())))
            t.start()
            time.sleep(0.05)
            t0 = time.monotonic()
            child.kill()
            t.join(10)
        ok, when = result[0]  # type: ignore[misc]
        assert ok is True and when - t0 < 1.0
        assert lk.recovered
        # the thread that got it has exited holding it: the next acquire recovers again
        assert lk.acquire(timeout=5) and lk.recovered
        lk.release()


def test_sigstopped_holder_waiters_honour_timeouts() -> None:
    with _lock() as lk:
        with testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:
            os.kill(child.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                assert lk.acquire(timeout=0.5) is False
                elapsed = time.monotonic() - t0
                assert 0.5 <= elapsed < 0.9, elapsed
            finally:
                os.kill(child.pid, signal.SIGCONT)
            child.write("\n")
            child.expect("RELEASED")


def test_ctrl_c_interrupts_a_blocked_acquire() -> None:
    code = ("import kipc, sys\nlk = kipc.Lock(sys.argv[1])\nprint('READY', flush=True)\n"
            "try:\n    lk.acquire()\nexcept KeyboardInterrupt:\n    print('INTERRUPTED', flush=True)\n")
    with _lock() as lk:
        lk.acquire()
        with testing.spawn(code, lk.url) as child:
            time.sleep(0.1)
            child.kill(signal.SIGINT)
            child.expect("INTERRUPTED", timeout=5)
            child.check()
        lk.release()


def test_contention_exact_counter(scale: object, figures: object) -> None:
    """Lock: 4 processes x N increments of a shared counter = exact total"""
    n = scale.n(100_000, 100_000)  # type: ignore[attr-defined]
    code = """
import ctypes, kipc, sys
lk = kipc.Lock(sys.argv[1]); shm = kipc.SharedMemory(sys.argv[2]); go = kipc.Event(sys.argv[3])
n = int(sys.argv[4])
c = ctypes.c_uint64.from_buffer(shm.buf)
print('READY', flush=True)
assert go.wait(30)
acq, rel = lk.acquire, lk.release
for _ in range(n):
    acq()
    c.value += 1
    rel()
del c
print('DONE', flush=True)
"""
    with contextlib.ExitStack() as stack:
        lk = stack.enter_context(contextlib.closing(kipc.Lock(_url(), create=True)))
        shm = stack.enter_context(contextlib.closing(
            kipc.SharedMemory(f"posix://{testing.unique_name('cnt')}", size=64, create=True)))
        go = stack.enter_context(contextlib.closing(kipc.Event(_url(), create=True)))
        kids = [stack.enter_context(testing.spawn(code, lk.url, shm.url, go.url, str(n))) for _ in range(4)]
        t0 = time.monotonic()
        go.set()
        for k in kids:
            k.expect("DONE", timeout=300)
            k.check()
        elapsed = time.monotonic() - t0
        total = int.from_bytes(shm.buf[:8], "little")
        assert total == 4 * n
        figures.record("Lock", f"4 processes x {n} increments", f"{total} exact, {elapsed:.1f} s",  # type: ignore[attr-defined]
                       target="exact")


# -- asyncio ------------------------------------------------------------------------------------------

def test_aacquire_cancelled_100_times_while_contended() -> None:
    """aacquire cancelled 100 times while another process keeps taking the lock: nothing is leaked."""
    churn = """
import kipc, sys
lk = kipc.Lock(sys.argv[1]); stop = kipc.Event(sys.argv[2])
print('READY', flush=True)
n = 0
while not stop.is_set():
    assert lk.acquire(timeout=10), 'wedged'
    n += 1
    lk.release()
print('DONE', n, flush=True)
"""
    with _lock() as lk, contextlib.closing(kipc.Event(_url(), create=True)) as stop:
        with testing.spawn(churn, lk.url, stop.url) as child:
            got = cancelled = 0

            async def main() -> None:
                nonlocal got, cancelled
                rng = random.Random(17)
                for _ in range(100):
                    task = asyncio.ensure_future(lk.aacquire())
                    await asyncio.sleep(rng.random() * 0.003)
                    task.cancel()
                    try:
                        if await task:
                            got += 1
                            assert lk.owned()
                            lk.release()
                    except asyncio.CancelledError:
                        cancelled += 1
                    assert not lk.owned()

            asyncio.run(main())
            assert got + cancelled == 100 and cancelled > 0
            assert not lk.owned()
            stop.set()
            line = child.expect("DONE", timeout=20)
            assert int(line.split()[1]) > 0
            child.check()
        assert not lk.locked()
        assert lk.acquire(False)
        lk.release()


def test_aacquire_waits_for_release_and_times_out() -> None:
    with _lock() as lk, testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:

        async def main() -> None:
            t0 = time.monotonic()
            assert await lk.aacquire(timeout=0.2) is False
            assert 0.2 <= time.monotonic() - t0 < 1.0
            assert await lk.aacquire(False) is False
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, child.write, "\n")
            assert await lk.aacquire(timeout=5)
            assert lk.owned()
            lk.release()
            async with lk:
                assert lk.owned()
            assert not lk.locked()

        asyncio.run(main())


def test_aacquire_recovers_from_a_dead_holder() -> None:
    with _lock() as lk, testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:

        async def main() -> None:
            asyncio.get_running_loop().call_later(0.05, child.kill)
            assert await lk.aacquire(timeout=5)
            assert lk.recovered and lk.dead_pid == child.pid
            lk.release()

        asyncio.run(main())


# -- RLock ----------------------------------------------------------------------------------------------

def test_rlock_recursion_owner_and_death() -> None:
    with _lock(kipc.RLock) as rl:
        assert rl.path.startswith("/dev/shm/kipc.rlock.")
        assert rl.acquire() and rl.acquire() and rl.acquire(False)
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(rl.acquire(timeout=0.05)))
        t.start()
        t.join(5)
        assert out == [False]
        for _ in range(3):
            assert rl.locked()
            rl.release()
        assert not rl.locked()
        with pytest.raises(RuntimeError):
            rl.release()
        with rl, rl:
            assert rl.owned()
        with pytest.raises(kipc.Unsupported):
            asyncio.run(rl.aacquire())
        with testing.spawn(HOLD, rl.url, "RLock", stdin=True) as child:
            child.kill()
        assert rl.acquire(timeout=5) and rl.recovered
        rl.release()


# -- C interop -------------------------------------------------------------------------------------------

def test_c_program_shares_the_lock_both_ways(cbin: dict[str, str]) -> None:
    with _lock() as lk:
        name = lk.url.removeprefix("posix://")
        # C holds: Python waits, times out, then gets it when C releases
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        c = subprocess.Popen([cbin["lock_hold"], name, "hold"], **pipes)  # type: ignore[call-overload]
        try:
            assert c.stdout is not None and c.stdin is not None
            assert c.stdout.readline().strip() == "READY"
            assert lk.info()["holder_pid"] == c.pid
            assert lk.acquire(timeout=0.1) is False
            c.stdin.write("\n")
            c.stdin.flush()
            assert lk.acquire(timeout=5)
            assert c.stdout.readline().strip() == "RELEASED"
            assert c.wait(5) == 0
        finally:
            c.kill()
            c.wait()
        # Python holds: the C program blocks until Python releases
        c = subprocess.Popen([cbin["lock_hold"], name, "die"], **pipes)  # type: ignore[call-overload]
        try:
            assert c.stdout is not None and c.stdin is not None
            time.sleep(0.1)
            assert c.poll() is None and lk.owned()
            lk.release()
            assert c.stdout.readline().strip() == "READY"
            c.stdin.write("\n")  # the C program exits holding it
            c.stdin.flush()
            assert c.wait(5) == 0
        finally:
            c.kill()
            c.wait()
        assert lk.acquire(timeout=5) and lk.recovered and lk.dead_pid == c.pid
        lk.release()


# -- Event --------------------------------------------------------------------------------------------

def test_event_semantics_and_threads() -> None:
    with contextlib.closing(kipc.Event(_url(), create=True)) as ev:
        assert ev.path.startswith("/dev/shm/kipc.event.")
        assert not ev.is_set()
        t0 = time.monotonic()
        assert ev.wait(0.1) is False and time.monotonic() - t0 >= 0.1
        assert ev.wait(0) is False
        woke: list[bool] = []
        threads = [threading.Thread(target=lambda: woke.append(ev.wait(10))) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        ev.set()
        ev.clear()  # a set immediately cleared still wakes every waiter (the generation changed)
        for t in threads:
            t.join(5)
        assert woke == [True] * 8
        assert not ev.is_set()
        ev.set()
        ev.set()
        assert ev.is_set() and ev.wait() and ev.wait(0)
        info = ev.info()
        assert info["set"] is True and info["generation"] == 2


def test_event_await_set_and_cancel() -> None:
    with contextlib.closing(kipc.Event(_url(), create=True)) as ev:

        async def main() -> None:
            assert await ev.await_set(0.1) is False
            for _ in range(20):
                task = asyncio.ensure_future(ev.await_set())
                await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            asyncio.get_running_loop().call_later(0.05, ev.set)
            assert await ev.await_set(5)
            assert await ev.await_set(0)

        asyncio.run(main())
        assert ev.is_set()


def test_event_eight_processes_no_missed_wakeup(scale: object, figures: object) -> None:
    """Event: 8 waiter processes x 1,000 set/clear rounds, 0 missed wake-ups"""
    rounds = 1000
    code = """
import ctypes, kipc, sys
i, rounds = int(sys.argv[5]), int(sys.argv[6])
go = [kipc.Event(sys.argv[1]), kipc.Event(sys.argv[2])]
acked = kipc.Event(sys.argv[3]); shm = kipc.SharedMemory(sys.argv[4])
acks = (ctypes.c_uint32 * 8).from_buffer(shm.buf)
print('READY', flush=True)
for r in range(1, rounds + 1):
    if not go[r % 2].wait(10):
        print('MISSED', r, flush=True)
        sys.exit(1)
    acks[i] = r
    acked.set()
del acks
print('DONE', flush=True)
"""
    with contextlib.ExitStack() as stack:
        go = [stack.enter_context(contextlib.closing(kipc.Event(_url(), create=True))) for _ in range(2)]
        acked = stack.enter_context(contextlib.closing(kipc.Event(_url(), create=True)))
        shm = stack.enter_context(contextlib.closing(
            kipc.SharedMemory(f"posix://{testing.unique_name('acks')}", size=64, create=True)))
        kids = [stack.enter_context(testing.spawn(code, go[0].url, go[1].url, acked.url, shm.url, str(i),
                                                  str(rounds))) for i in range(8)]
        acks = (ctypes.c_uint32 * 8).from_buffer(shm.buf)
        t0 = time.monotonic()
        try:
            for r in range(1, rounds + 1):
                go[(r - 1) % 2].clear()  # every waiter acked round r-1: nobody waits on it now
                go[r % 2].set()
                while min(acks) < r:
                    assert acked.wait(10), f"round {r}: acks {list(acks)}"
                    acked.clear()
        finally:
            del acks
        elapsed = time.monotonic() - t0
        for k in kids:
            k.expect("DONE", timeout=20)
            k.check()
        figures.record("Event", f"8 waiters x {rounds} rounds", f"0 missed, {elapsed:.1f} s",  # type: ignore[attr-defined]
                       target="0 missed")


def test_event_as_notifier_beside_shared_memory() -> None:
    """The 'write, then tell' pattern: a child writes a segment, then sets the event."""
    code = ("import kipc, sys\nshm = kipc.SharedMemory(sys.argv[1]); ev = kipc.Event(sys.argv[2])\n"
            "print('READY', flush=True)\nshm.buf[:5] = b'hello'\nev.set()\n")
    with contextlib.closing(kipc.SharedMemory(f"posix://{testing.unique_name('n')}", size=64, create=True)) as shm, \
            contextlib.closing(kipc.Event(_url(), create=True)) as ev:
        with testing.spawn(code, shm.url, ev.url) as child:
            assert ev.wait(10)
            assert bytes(shm.buf[:5]) == b"hello"
            child.check()


# -- kipc ls / gc ------------------------------------------------------------------------------------------

def test_ls_shows_locks_with_holder_and_gc_finds_dead_creators() -> None:
    from kipc import admin

    with _lock() as lk, contextlib.closing(kipc.Event(lk.url, create=True)) as ev:
        with testing.spawn(HOLD, lk.url, "Lock", stdin=True) as child:
            rows = {(i.kind, i.url): i for i in admin.inventory(kinds=["lock", "event", "posixshm"])}
            row = rows[("lock", lk.url)]
            assert row.kipc and row.alive and row.creator_pid == os.getpid() and row.pids == [child.pid]
            assert ("event", ev.url) in rows
            assert ("posixshm", lk.url) not in rows  # /dev/shm/kipc.lock.NAME is not listed as a segment
        row = {(i.kind, i.url): i for i in admin.inventory(kinds=["lock"])}[("lock", lk.url)]
        assert row.pids == []  # its holder died: nobody alive holds it
    url = _url()
    pid = os.fork()
    if pid == 0:
        kipc.Lock(url, create=True)  # the creator dies without closing it
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    try:
        report = admin.gc(dry_run=True)
        assert url in [i.url for i in report.removed]
    finally:
        kipc.remove(url)
    assert not os.path.exists(f"/dev/shm/kipc.lock.{url.removeprefix('posix://')}")


def test_event_wait_takes_timeout_keyword() -> None:
    # threading.Event's signature: wait(timeout=None); the bound C method was positional-only
    from kipc.testing import unique_name

    ev = kipc.Event(f"posix://{unique_name()}", create=True)
    try:
        assert ev.wait(timeout=0.01) is False
        ev.set()
        assert ev.wait(timeout=0.01) is True and ev.wait(0) is True
    finally:
        ev.close()
