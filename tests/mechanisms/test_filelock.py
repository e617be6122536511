"""kipc.FileLock against flock(1) and a C program using OFD fcntl locks (tests/interop/c/ofd_lock.c), both ways;
mapped files (SharedMemory("file:///path")) against a C program mmapping the same file (tests/interop/c/mmap_rw.c)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess
import threading
import time

import pytest

import kipc
from kipc import testing

C_DIR = pathlib.Path(__file__).parent.parent / "interop" / "c"

HOLD = """
import kipc, sys
fl = kipc.FileLock(sys.argv[1], kind=sys.argv[2])
assert fl.acquire(timeout=10)
print('READY', flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("cbin")
    built = {}
    for stem in ("ofd_lock", "mmap_rw"):
        exe = out / stem
        subprocess.run(["gcc", "-O1", "-Wall", "-o", str(exe), str(C_DIR / f"{stem}.c")], check=True, timeout=60)
        built[stem] = str(exe)
    return built


def _flock_n(path: pathlib.Path, *extra: str) -> int:
    """flock(1) -n: 0 if it could take the lock at once, 1 if it is held."""
    return subprocess.run(["flock", "-n", *extra, str(path), "true"], timeout=10).returncode


@contextlib.contextmanager
def _flock_holder(path: pathlib.Path, *extra: str) -> object:
    """flock(1) holding the lock until we write a line to it."""
    p = subprocess.Popen(["flock", *extra, str(path), "sh", "-c", "echo READY; read x"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
        yield p
    finally:
        if p.poll() is None:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
        p.wait(10)


# -- FileLock -------------------------------------------------------------------------------------------

def test_filelock_api_file_policy_and_checks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.lock"
    old = os.umask(0o022)
    try:
        fl = kipc.FileLock(f"file://{path}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not fl.locked() and not fl.held
    assert fl.acquire() is True and fl.held and fl.locked()
    assert "held" in repr(fl)
    fl.release()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        fl.release()
    with fl:
        assert fl.held
    assert not fl.held
    with pytest.raises(ValueError):
        fl.acquire(False, 1)
    fl.acquire()
    fl.close()  # releases what it holds
    assert path.exists()  # never deleted (see the module docstring)
    assert _flock_n(path) == 0
    with pytest.raises(kipc.AlreadyExists):
        kipc.FileLock(f"file://{path}", create=True)
    with pytest.raises(kipc.NotFound):
        kipc.FileLock(f"file://{tmp_path}/missing", create=False)
    with pytest.raises(kipc.InvalidArgument):
        kipc.FileLock(f"file://{path}", kind="lockf")
    with pytest.raises(kipc.InvalidArgument):
        kipc.FileLock("file://relative")
    os.symlink(path, tmp_path / "link")
    with pytest.raises(kipc.PermissionDenied, match="symlink"):
        kipc.FileLock(f"file://{tmp_path}/link")
    os.chmod(path, 0o644)
    with pytest.raises(kipc.PermissionDenied):
        kipc.FileLock(f"file://{path}")
    kipc.FileLock(f"file://{path}", mode=0o644).close()
    os.mkdir(tmp_path / "dir")
    with pytest.raises(kipc.BadObject):
        kipc.FileLock(f"file://{tmp_path}/dir")


def test_flock_kind_against_flock_command_both_ways(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "b.lock"
    with contextlib.closing(kipc.FileLock(f"file://{path}")) as fl:
        # kipc holds: flock(1) cannot take it
        assert fl.acquire()
        assert _flock_n(path) == 1
        fl.release()
        assert _flock_n(path) == 0
        # flock(1) holds: kipc waits, times out, and is woken when flock(1) exits
        with _flock_holder(path) as holder:
            assert fl.acquire(False) is False and fl.locked()
            t0 = time.monotonic()
            assert fl.acquire(timeout=0.2) is False
            assert 0.2 <= time.monotonic() - t0 < 1.0
            threading.Timer(0.1, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()  # type: ignore[attr-defined]
            t0 = time.monotonic()
            assert fl.acquire(timeout=5)
            assert time.monotonic() - t0 < 1.0  # inotify: woken by the holder's close
        fl.release()
        # shared locks: flock -s holds, kipc shared gets it, kipc exclusive does not
        with _flock_holder(path, "-s"):
            with contextlib.closing(kipc.FileLock(f"file://{path}", shared=True)) as sh:
                assert sh.acquire(False)
                assert fl.acquire(False) is False
                sh.release()
        # blocking (no timeout) acquire wakes when the holder goes
        with _flock_holder(path) as holder:
            threading.Timer(0.1, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()  # type: ignore[attr-defined]
            assert fl.acquire()
        fl.release()


def test_fcntl_kind_against_c_program_both_ways(tmp_path: pathlib.Path, cbin: dict[str, str]) -> None:
    path = tmp_path / "c.lock"
    with contextlib.closing(kipc.FileLock(f"file://{path}", kind="fcntl")) as fl:
        assert fl.acquire()
        r = subprocess.run([cbin["ofd_lock"], str(path), "try"], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "BUSY"
        fl.release()
        r = subprocess.run([cbin["ofd_lock"], str(path), "try"], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "GOT"
        c = subprocess.Popen([cbin["ofd_lock"], str(path), "hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        try:
            assert c.stdout is not None and c.stdin is not None
            assert c.stdout.readline().strip() == "READY"
            assert fl.acquire(False) is False
            assert fl.acquire(timeout=0.1) is False
            # the two families do not see each other on Linux: a flock lock is free
            with contextlib.closing(kipc.FileLock(f"file://{path}")) as other_family:
                assert other_family.acquire(False)
                other_family.release()
            c.stdin.write("\n")
            c.stdin.flush()
            assert fl.acquire(timeout=5)
            assert c.stdout.readline().strip() == "RELEASED"
            assert c.wait(5) == 0
        finally:
            c.kill()
            c.wait()
        fl.release()


@pytest.mark.parametrize("kind", ["flock", "fcntl"])
def test_sigkilled_holder_releases(tmp_path: pathlib.Path, kind: str) -> None:
    path = tmp_path / "d.lock"
    with contextlib.closing(kipc.FileLock(f"file://{path}", kind=kind)) as fl:
        with testing.spawn(HOLD, f"file://{path}", kind, stdin=True) as child:
            assert fl.acquire(timeout=0.1) is False
            threading.Timer(0.1, child.kill).start()
            t0 = time.monotonic()
            assert fl.acquire(timeout=5)
            assert time.monotonic() - t0 < 1.0
        fl.release()


def test_aacquire_cancel_safe(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "e.lock"
    with contextlib.closing(kipc.FileLock(f"file://{path}")) as fl:
        with _flock_holder(path) as holder:

            async def main() -> None:
                for _ in range(20):
                    task = asyncio.ensure_future(fl.aacquire())
                    await asyncio.sleep(0.002)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    assert not fl.held
                assert await fl.aacquire(timeout=0.1) is False
                loop = asyncio.get_running_loop()
                loop.call_later(0.1, lambda: (holder.stdin.write("\n"), holder.stdin.flush()))
                assert await fl.aacquire(timeout=5)
                fl.release()

            asyncio.run(main())
        assert _flock_n(path) == 0


# -- mapped files -------------------------------------------------------------------------------------------

def test_mapped_file_with_c_mmap_both_ways(tmp_path: pathlib.Path, cbin: dict[str, str]) -> None:
    path = tmp_path / "m.bin"
    m = kipc.SharedMemory(f"file://{path}", size=4096, create=True)
    try:
        assert isinstance(m, kipc.SharedMemory) and m.size == 4096 and m.owner
        assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == 4096
        m.buf[100:105] = b"hello"
        r = subprocess.run([cbin["mmap_rw"], str(path), "read", "100", "5"], capture_output=True, timeout=10)
        assert r.stdout == b"hello\n"
        subprocess.run([cbin["mmap_rw"], str(path), "write", "200", "from C"], check=True, timeout=10)
        assert bytes(m.buf[200:206]) == b"from C"
        m.flush()
        with open(path, "rb") as f:
            f.seek(100)
            assert f.read(5) == b"hello"
        arr = m.ndarray(16, "uint8", offset=100)
        assert bytes(arr[:5]) == b"hello"
        del arr
        from kipc import admin

        listed = {i.url: i for i in admin.inventory(kinds=["mapped-file"])}
        assert listed[f"mapped-file://{path}"].alive and listed[f"mapped-file://{path}"].size == 4096
        with kipc.SharedMemory(f"file://{path}", size=1000) as other:  # an opener; size= is a minimum
            assert not other.owner and bytes(other.buf[200:206]) == b"from C"
        assert path.exists()
    finally:
        m.close()
    assert not path.exists()  # the creator removes it (persist=True keeps it)
    kept = kipc.SharedMemory(f"file://{path}", size=10, create=True, persist=True)
    kept.close()
    assert path.exists() and path.stat().st_size == 10
    path.unlink()


def test_mapped_file_attach_checks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "n.bin"
    path.write_bytes(bytes(64))
    os.chmod(path, 0o600)
    with pytest.raises(kipc.BadObject, match="smaller"):
        kipc.SharedMemory(f"file://{path}", size=128)
    os.symlink(path, tmp_path / "link")
    with pytest.raises(kipc.PermissionDenied, match="symlink"):
        kipc.SharedMemory(f"file://{tmp_path}/link")
    os.chmod(path, 0o644)
    with pytest.raises(kipc.PermissionDenied):
        kipc.SharedMemory(f"file://{path}")
    kipc.SharedMemory(f"file://{path}", mode=0o644).close()
    os.chmod(path, 0o600)
    if os.geteuid() == 0:
        os.chown(path, 12345, -1)
        with pytest.raises(kipc.PermissionDenied, match="uid 12345"):
            kipc.SharedMemory(f"file://{path}")
        kipc.SharedMemory(f"file://{path}", allow_foreign=True).close()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    os.chmod(empty, 0o600)
    with pytest.raises(kipc.BadObject, match="empty"):
        kipc.SharedMemory(f"file://{empty}")
    with pytest.raises(kipc.AlreadyExists):
        kipc.SharedMemory(f"file://{path}", size=10, create=True)
    with pytest.raises(kipc.NotFound):
        kipc.SharedMemory(f"file://{tmp_path}/missing")
    with pytest.raises(kipc.InvalidArgument):
        kipc.SharedMemory(f"file://{tmp_path}/x", create=True)  # size= required
    assert path.exists() and empty.exists()  # openers never remove
