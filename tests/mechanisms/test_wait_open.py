"""``wait=`` on the named objects that are not channels (issue 16): SharedMemory (and its
``file://`` mapped files), Semaphore, Lock, RLock and Event wait for another process to create
them, by the same rule as ``kipc.open`` (``kipc._objects.open_waiting``): a real child process
creates the object a moment later."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import kipc
from kipc import testing

# (class name, URL maker, the creator's options as JSON)
_CASES: dict[str, tuple[str, Callable[[], str], str]] = {
    "shm-sysv": ("SharedMemory", lambda: f"sysv://{testing.unique_key()}", '{"size": 4096}'),
    "shm-posix": ("SharedMemory", lambda: f"posix://{testing.unique_name('shm')}", '{"size": 4096}'),
    "mapped-file": ("SharedMemory", lambda: f"file:///tmp/{testing.unique_name('mapped')}", '{"size": 4096}'),
    "sem-sysv": ("Semaphore", lambda: f"sysv://{testing.unique_key()}", '{"value": 3}'),
    "sem-posix": ("Semaphore", lambda: f"posix://{testing.unique_name('sem')}", '{"value": 3}'),
    "lock": ("Lock", lambda: f"posix://{testing.unique_name('lock')}", "{}"),
    "rlock": ("RLock", lambda: f"posix://{testing.unique_name('rlock')}", "{}"),
    "event": ("Event", lambda: f"posix://{testing.unique_name('ev')}", "{}"),
}

# The creator: starts, waits 0.3 s, creates, marks the object, says READY, keeps it until told.
_CREATOR = """
import json, sys, time, kipc
cls, url, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
time.sleep(0.3)
obj = getattr(kipc, cls)(url, create=True, **opts)
if cls == "SharedMemory":
    obj.buf[:5] = b"hello"
elif cls == "Event":
    obj.set()
print("READY", flush=True)
sys.stdin.readline()
obj.close()
"""


def _check(cls: str, obj: Any) -> None:
    if cls == "SharedMemory":
        assert obj.size == 4096 and bytes(obj.buf[:5]) == b"hello"
        assert not obj.owner
    elif cls == "Semaphore":
        assert obj.value == 3
    elif cls == "Event":
        assert obj.is_set()
    else:
        assert obj.acquire(timeout=2)
        obj.release()


@pytest.mark.parametrize("case", list(_CASES))
def test_wait_until_another_process_creates_it(case: str) -> None:
    cls_name, make_url, opts = _CASES[case]
    cls = getattr(kipc, cls_name)
    url = make_url()
    with testing.spawn(_CREATOR, cls_name, url, opts, ready=False, stdin=True) as child:
        with pytest.raises(kipc.NotFound):
            cls(url)  # nobody has created it yet: without wait= it fails at once
        t0 = time.monotonic()
        obj = cls(url, wait=10)
        try:
            waited = time.monotonic() - t0
            assert 0.1 < waited < 9, waited
            child.expect("READY")
            _check(cls_name, obj)
        finally:
            obj.close()
        child.write("\n")
        child.check()


@pytest.mark.parametrize("case", list(_CASES))
def test_wait_runs_out_like_kipc_open(case: str) -> None:
    cls_name, make_url, _ = _CASES[case]
    cls = getattr(kipc, cls_name)
    url = make_url()
    t0 = time.monotonic()
    with pytest.raises(kipc.Timeout) as e:
        cls(url, wait=0.2)
    assert time.monotonic() - t0 >= 0.2
    assert url in str(e.value) and "0.2 s" in str(e.value)
    assert isinstance(e.value.__cause__, kipc.NotFound)


def test_same_timeout_as_kipc_open() -> None:
    url = f"ring://{testing.unique_name()}"
    with pytest.raises(kipc.Timeout) as ring:
        kipc.open(url, wait=0.05)
    sem_url = f"posix://{testing.unique_name('sem')}"
    with pytest.raises(kipc.Timeout) as sem:
        kipc.Semaphore(sem_url, wait=0.05)
    assert str(ring.value).replace(url, "URL").split("(")[0] == str(sem.value).replace(sem_url, "URL").split("(")[0]


@pytest.mark.parametrize("case", list(_CASES))
@pytest.mark.parametrize("wait", [-1, float("nan"), "2", True, [1]])
def test_bad_wait_is_invalid_argument(case: str, wait: object) -> None:
    cls_name, make_url, _ = _CASES[case]
    with pytest.raises(kipc.InvalidArgument, match="wait="):
        getattr(kipc, cls_name)(make_url(), wait=wait)


@pytest.mark.parametrize("case", list(_CASES))
@pytest.mark.parametrize("create", [True, "if_missing"])
def test_wait_with_create_is_refused_before_creating(case: str, create: object) -> None:
    cls_name, make_url, opts = _CASES[case]
    url = make_url()
    extra: dict[str, Any] = {"size": 4096} if "size" in opts else {}  # the segment's own check comes later
    with pytest.raises(kipc.InvalidArgument, match="cannot be combined with create"):
        getattr(kipc, cls_name)(url, create=create, wait=1, **extra)
    with pytest.raises(kipc.NotFound):
        getattr(kipc, cls_name)(url)  # nothing was made (the leak check agrees)


def test_kipc_open_refuses_wait_with_create_too() -> None:
    url = f"ring://{testing.unique_name()}"
    with pytest.raises(kipc.InvalidArgument, match="cannot be combined with create"):
        kipc.open(url, create=True, wait=1)
    with pytest.raises(kipc.InvalidArgument, match="cannot be combined with create"):
        kipc.open(url + "?create=1", wait=1)
    with pytest.raises(kipc.InvalidArgument, match="wait="):
        kipc.open(url, wait="soon")  # type: ignore[call-overload]


# -- a creator between its exclusive create and its ftruncate (what a waiting opener is likely to meet) --
def _size_later(fd: int, size: int, delay: float) -> threading.Thread:
    def size_it() -> None:
        time.sleep(delay)
        os.ftruncate(fd, size)

    t = threading.Thread(target=size_it)
    t.start()
    return t


def test_posix_segment_created_but_not_sized_yet() -> None:
    import posix_ipc

    name = testing.unique_name("shmsz")
    raw = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, 0o600)  # size 0: as between the two steps
    try:
        t = _size_later(raw.fd, 8192, 0.1)
        with kipc.SharedMemory(f"posix://{name}", wait=5) as seg:
            assert seg.size == 8192
        t.join()
        os.ftruncate(raw.fd, 0)  # and one that is never sized is refused after a bounded wait
        t0 = time.monotonic()
        with pytest.raises(kipc.BadObject, match="empty"):
            kipc.SharedMemory(f"posix://{name}")
        assert 0.9 < time.monotonic() - t0 < 10
    finally:
        raw.close_fd()
        posix_ipc.unlink_shared_memory("/" + name)


def test_mapped_file_created_but_not_sized_yet() -> None:
    path = f"/tmp/{testing.unique_name('mapsz')}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        t = _size_later(fd, 4096, 0.1)
        with kipc.SharedMemory(f"file://{path}", wait=5) as seg:
            assert seg.size == 4096
        t.join()
    finally:
        os.close(fd)
        os.unlink(path)
