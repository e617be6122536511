"""SharedMemory — sysv:// and posix:// segments: raw bytes, zero-copy numpy, attach checks, cleanup."""

from __future__ import annotations

import gc
import os

import pytest

import kipc
from kipc import testing


def _urls() -> list[str]:
    return [f"sysv://{testing.unique_key()}", f"posix://{testing.unique_name('shm')}"]


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_two_processes_share_bytes(kind: str) -> None:
    url = f"sysv://{testing.unique_key()}" if kind == "sysv" else f"posix://{testing.unique_name('shm')}"
    with kipc.SharedMemory(url, size=4096, create=True) as seg:
        seg.buf[:5] = b"hello"
        code = ("import kipc, sys\ns = kipc.SharedMemory(sys.argv[1], size=4096)\n"
                "print(bytes(s.buf[:5]).decode(), flush=True)\ns.buf[5:10] = b'world'\nprint('READY', flush=True)\n"
                "sys.stdin.readline()\ns.close()\n")
        with testing.spawn(code, url, ready=False, stdin=True) as child:
            assert child.readline() == "hello"
            child.expect("READY")
            assert bytes(seg.buf[:10]) == b"helloworld"
            if kind == "sysv":
                assert seg.attach_count == 2
            child.write("\n")
            child.check()
        if kind == "sysv":
            assert seg.attach_count == 1


def test_numpy_zero_copy_and_views_outlive_close() -> None:
    np = pytest.importorskip("numpy")
    for url in _urls():
        seg = kipc.SharedMemory(url, size=800, create=True)
        a = seg.ndarray((10, 10), "float64")
        a[:] = 1.5
        assert seg.buf.cast("d")[99] == 1.5  # same memory, no copy
        with pytest.raises(kipc.InvalidArgument):
            seg.ndarray((11, 10), "float64")
        seg.close()
        assert float(a.sum()) == 150.0  # still mapped: unmapped only when `a` dies
        del a
        gc.collect()
        assert isinstance(np.zeros(1), np.ndarray)


def test_attach_checks_size_mode_owner_and_exclusive() -> None:
    import sysv_ipc

    for url in _urls():
        with kipc.SharedMemory(url, size=100, create=True) as seg:
            with pytest.raises(kipc.AlreadyExists):
                kipc.SharedMemory(url, size=100, create=True)
            with pytest.raises(kipc.BadObject, match="smaller"):
                kipc.SharedMemory(url, size=4096)  # refused, never a SIGBUS later
            with kipc.SharedMemory(url, create="if_missing", size=100) as other:
                assert not other.owner
                with pytest.raises(kipc.PermissionDenied):
                    other.unlink()
            if seg.kind == "sysv":
                raw = sysv_ipc.SharedMemory(seg.key)
                raw.uid = 65534
                raw.detach()
            else:
                os.chown(f"/dev/shm/{url.split('//')[1]}", 65534, -1)
            with pytest.raises(kipc.PermissionDenied, match="65534"):
                kipc.SharedMemory(url)
    for url in _urls():
        with pytest.raises(kipc.NotFound):
            kipc.SharedMemory(url)


def test_umask_000_gives_0600() -> None:
    old = os.umask(0)
    try:
        url = f"posix://{testing.unique_name('shm')}"
        with kipc.SharedMemory(url, size=10, create=True):
            assert os.stat(f"/dev/shm/{url[8:]}").st_mode & 0o777 == 0o600
        key = testing.unique_key()
        with kipc.SharedMemory(f"sysv://{key}", size=10, create=True) as seg:
            from kipc.shm import sysv_shm_info

            info = sysv_shm_info(seg.shmid)
            assert info is not None and info["perms"] & 0o777 == 0o600
    finally:
        os.umask(old)


def test_bad_input() -> None:
    with pytest.raises(kipc.InvalidArgument):
        kipc.SharedMemory("posix://x", create=True)  # no size
    with pytest.raises(kipc.InvalidArgument):
        kipc.SharedMemory("ring://x", size=1, create=True)
    with pytest.raises(kipc.InvalidArgument):
        kipc.SharedMemory("posix://a/b", size=1, create=True)
