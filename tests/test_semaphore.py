"""Semaphore — sysv:// (SEM_UNDO: a SIGKILLed holder releases) and posix:// (no undo)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

import kipc
from kipc import testing

HOLD = ("import kipc, sys, time\ns = kipc.Semaphore(sys.argv[1])\nassert s.acquire(timeout=10)\n"
        "print('READY', flush=True)\ntime.sleep(60)\n")


def test_sigkilled_sysv_holder_is_undone() -> None:
    url = f"sysv://{testing.unique_key()}"
    with contextlib.closing(kipc.Semaphore(url, create=True, value=1)) as sem:
        assert sem.undo
        with testing.spawn(HOLD, url) as child:
            assert sem.value == 0
            assert sem.acquire(timeout=0) is False
            child.kill()  # SIGKILL while holding
        assert sem.acquire(timeout=1) is True  # the kernel undid the child's -1
        sem.release()


def test_posix_crash_is_not_undone_timeout_tells() -> None:
    url = f"posix://{testing.unique_name('sem')}"
    with contextlib.closing(kipc.Semaphore(url, create=True, value=1)) as sem:
        with testing.spawn(HOLD, url) as child:
            child.kill()
        t0 = time.monotonic()
        assert sem.acquire(timeout=0.1) is False  # documented: POSIX named semaphores have no undo
        assert time.monotonic() - t0 >= 0.1
        sem.release()  # repair by hand
        assert sem.value == 1


@pytest.mark.parametrize("kind", ["sysv", "posix"])
def test_acquire_release_value_context_and_async(kind: str) -> None:
    url = f"sysv://{testing.unique_key()}" if kind == "sysv" else f"posix://{testing.unique_name('sem')}"
    sem = kipc.Semaphore(url, create=True, value=2)
    try:
        other = kipc.Semaphore(url)
        with other:
            assert sem.value == 1
            assert sem.acquire(timeout=0) is True
            assert sem.acquire(timeout=0) is False
            assert sem.acquire(False) is False
            with pytest.raises(ValueError):
                sem.acquire(False, timeout=1)
            t0 = time.monotonic()
            assert sem.acquire(timeout=0.1) is False
            assert 0.1 <= time.monotonic() - t0 < 0.5
            sem.release()
        assert sem.value == 2

        async def main() -> None:
            assert await sem.aacquire() is True
            assert await sem.aacquire() is True
            asyncio.get_running_loop().call_later(0.05, other.release)
            assert await sem.aacquire(timeout=2) is True
            assert await sem.aacquire(timeout=0.05) is False

        asyncio.run(main())
        assert sem.value == 0
        other.close()
        with pytest.raises(kipc.ChannelClosed):
            other.release()
    finally:
        sem.close()
    with pytest.raises(kipc.NotFound):
        kipc.Semaphore(url)


def test_exclusive_create_mode_and_bad_input() -> None:
    old = os.umask(0o077)
    try:
        name = testing.unique_name("sem")
        with contextlib.closing(kipc.Semaphore(f"posix://{name}", create=True)):
            assert os.stat(f"/dev/shm/sem.{name}").st_mode & 0o777 == 0o600
            with pytest.raises(kipc.AlreadyExists):
                kipc.Semaphore(f"posix://{name}", create=True)
    finally:
        os.umask(old)
    with pytest.raises(kipc.InvalidArgument):
        kipc.Semaphore("sysv://1234", value=3)  # value= without create
    with pytest.raises(kipc.InvalidArgument):
        kipc.Semaphore("posix://a/b", create=True)
    with pytest.raises(kipc.InvalidArgument):
        kipc.Semaphore(f"sysv://{testing.unique_key()}", create=True, value=-1)
