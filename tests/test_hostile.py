"""Hostile local users: objects planted under our names, numbers spelled to slip past a parser.

A planted SysV object is made by a real other uid (65534, via setresuid in a
``python -c`` child; the CI runs as root), which then hands the object to us
with ``IPC_SET`` as the kernel lets a creator do, keeping its own access.
"""

from __future__ import annotations

import os
import time

import pytest
import sysv_ipc

import kipc
from kipc import _naming, _objects
from kipc.testing import spawn, unique_key, unique_name

from .conftest import Figures

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
                       target="2 of 2 / attaches")
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
                   f"{refused} of {refused}", target="all")
