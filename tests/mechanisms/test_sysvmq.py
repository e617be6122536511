"""sysvmq:// — kernel type semantics, timeouts by back-off, limits, removal, permissions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time

import pytest

import kipc
from kipc import testing
from kipc.transports.sysvmq import SysVMessageQueue


def test_type_semantics_zero_positive_negative() -> None:
    with testing.channel_pair("sysvmq") as (s, r):
        for t, m in [(3, b"c"), (1, b"a"), (2, b"b"), (1, b"a2")]:
            s.send(m, type=t)
        assert r.recv(type=2) == b"b"            # first of type 2
        assert r.recv_with_type(type=-2) == (b"a", 1)  # lowest type <= 2, FIFO within it
        assert r.recv(type=0) == b"c"            # first message of any type
        assert r.recv_with_type() == (b"a2", 1)
        with pytest.raises(kipc.InvalidArgument):
            s.send(b"x", type=0)
        with pytest.raises(kipc.WouldBlock):
            r.recv(type=7, timeout=0)


def test_timeout_honoured_and_cheap() -> None:
    """recv(timeout=0.2) on an empty queue: Timeout after 0.2-0.25 s, < 5 % of a core (promised)."""
    with testing.channel_pair("sysvmq") as (_, r):
        wall0, cpu0 = time.monotonic(), time.process_time()
        with pytest.raises(kipc.Timeout):
            r.recv(timeout=0.2)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        assert 0.2 <= wall <= 0.25, wall
        assert cpu / wall < 0.05, f"{cpu / wall:.1%} of a core while waiting"


def test_oversize_names_limit_and_sysctl_queue_unchanged() -> None:
    limit = int(open("/proc/sys/kernel/msgmax").read())
    with testing.channel_pair("sysvmq") as (s, r):
        s.send(b"keep")
        with pytest.raises(kipc.MessageTooLarge) as ei:
            s.send(b"x" * (limit + 1))
        msg = str(ei.value)
        assert str(limit + 1) in msg and str(limit) in msg and "kernel.msgmax" in msg
        assert (ei.value.size, ei.value.limit) == (limit + 1, limit)
        s.send(b"y" * limit)  # exactly the limit fits
        assert s.stat().messages == 2 and r.recv() == b"keep" and len(r.recv()) == limit


def test_stat_and_max_bytes() -> None:
    with testing.channel_pair("sysvmq") as (s, r):
        s.send(b"12345")
        st = r.stat()
        assert (st.messages, st.bytes, st.last_send_pid, st.mode) == (1, 5, os.getpid(), 0o600)
        msgmnb = int(open("/proc/sys/kernel/msgmnb").read())
        s.max_bytes = msgmnb // 2
        assert r.stat().max_bytes == msgmnb // 2
        r.recv()
        assert r.stat().last_recv_pid == os.getpid()


def test_full_queue_blocks_then_succeeds_across_processes() -> None:
    with testing.channel_pair("sysvmq") as (s, r):
        s.max_bytes = 4096
        for _ in range(4):
            s.send(b"z" * 1024, timeout=0)
        with pytest.raises(kipc.Timeout):
            s.send(b"w" * 1024, timeout=0.05)
        code = ("import kipc, sys\nq = kipc.open(f'sysvmq://{sys.argv[1]}')\nprint('READY', flush=True)\n"
                "print(len(q.recv(timeout=10)), flush=True)\n")
        with testing.spawn(code, str(s.key)) as child:
            s.send(b"w" * 1024, timeout=10)  # blocks until the child makes room
            assert child.readline() == "1024"
            child.check()
        assert [len(r.recv(timeout=1)) for _ in range(4)] == [1024, 1024, 1024, 1024]


def test_removal_while_blocked_is_channel_closed_promptly() -> None:
    with testing.channel_pair("sysvmq") as (s, r):
        threading.Timer(0.2, s.close).start()
        t0 = time.monotonic()
        with pytest.raises(kipc.ChannelClosed):
            r.recv()  # blocking in the kernel: EIDRM
        assert time.monotonic() - t0 < 2
    with testing.channel_pair("sysvmq") as (s, r):
        threading.Timer(0.2, s.close).start()
        with pytest.raises(kipc.ChannelClosed):
            r.recv(timeout=5)  # polling: EINVAL on the gone id


def test_asyncio_recv_and_timeout() -> None:
    async def main(s: SysVMessageQueue, r: SysVMessageQueue) -> None:
        asyncio.get_running_loop().call_later(0.05, s.send, b"late")
        assert await r.arecv(timeout=2) == b"late"
        with pytest.raises(kipc.Timeout):
            await r.arecv(timeout=0.05)
        await s.asend(b"x", type=9)
        assert await r.arecv(type=9) == b"x"

    with testing.channel_pair("sysvmq") as (s, r):
        asyncio.run(main(s, r))  # type: ignore[arg-type]


def test_perms_600_in_ipcs_under_umask_000_and_exclusive_create() -> None:
    old = os.umask(0)
    try:
        key = testing.unique_key()
        with kipc.open(f"sysvmq://{key:#x}", create=True):
            out = subprocess.run(["ipcs", "-q"], capture_output=True, text=True, check=True).stdout
            row = [line.split() for line in out.splitlines() if line.startswith(f"{key:#010x}")]
            assert row and row[0][3] == "600", out
            with pytest.raises(kipc.AlreadyExists):
                kipc.open(f"sysvmq://{key}", create=True)
            with kipc.open(f"sysvmq://{key}", create="if_missing") as again:
                assert not again.owner
    finally:
        os.umask(old)
    with pytest.raises(kipc.NotFound):
        kipc.open(f"sysvmq://{key}")


def test_bad_urls_rejected_before_any_syscall() -> None:
    for url in ["sysvmq://abc", "sysvmq://0", "sysvmq://99999999999", "sysvmq:///no/proj", "sysvmq://private"]:
        with pytest.raises(kipc.InvalidArgument):
            kipc.open(url)


def test_ftok_and_private() -> None:
    with kipc.open("sysvmq://private", create=True) as p:
        p.send(b"only via fork or id")
        assert p.recv() == b"only via fork or id"
        qid = p.id
    assert qid not in [int(line.split()[1]) for line in open("/proc/sysvipc/msg").readlines()[1:]]
    path = f"/tmp/{testing.unique_name('ftok')}"
    open(path, "w").close()
    try:
        import sysv_ipc

        key = sysv_ipc.ftok(path, 65, silence_warning=True)
        with kipc.open(f"sysvmq://{path}?proj=65", create=True) as q:
            assert q.key == key
            testing._issued_keys.add(key)
    finally:
        os.unlink(path)


def test_foreign_owner_refused() -> None:
    import sysv_ipc

    key = testing.unique_key()
    with kipc.open(f"sysvmq://{key}", create=True):
        raw = sysv_ipc.MessageQueue(key)
        raw.uid = 65534  # root can re-own it: now it looks planted by another user
        with pytest.raises(kipc.PermissionDenied, match="uid 65534"):
            kipc.open(f"sysvmq://{key}")
        kipc.open(f"sysvmq://{key}", allow_foreign=True).close()
