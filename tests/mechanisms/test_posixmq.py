"""posixmq:// — priorities, creation limits naming /proc/sys/fs/mqueue, fd-based asyncio, perms."""

from __future__ import annotations

import asyncio
import os
import select

import pytest

import kipc
from kipc import testing


def test_priority_order_and_priority_back() -> None:
    with testing.channel_pair("posixmq") as (s, r):
        for m, p in [(b"a", 0), (b"b", 5), (b"c", 5), (b"d", 1)]:
            s.send(m, priority=p)
        assert [r.recv_with_priority() for _ in range(4)] == [(b"b", 5), (b"c", 5), (b"d", 1), (b"a", 0)]
        with pytest.raises(kipc.InvalidArgument):
            s.send(b"x", priority=10**6)
        with pytest.raises(kipc.Unsupported):
            r.recv(type=1)


def test_creation_limits_name_the_sysctl() -> None:
    name = testing.unique_name("mq")
    msg_max = int(open("/proc/sys/fs/mqueue/msg_max").read())
    with pytest.raises(kipc.LimitExceeded, match="/proc/sys/fs/mqueue/msg_max"):
        kipc.open(f"posixmq://{name}", create=True, max_messages=msg_max + 1)
    size_max = int(open("/proc/sys/fs/mqueue/msgsize_max").read())
    with pytest.raises(kipc.LimitExceeded, match="/proc/sys/fs/mqueue/msgsize_max"):
        kipc.open(f"posixmq://{name}", create=True, max_message_size=size_max + 1)
    with kipc.open(f"posixmq://{name}", create=True, max_messages=2, max_message_size=100) as q:
        with pytest.raises(kipc.MessageTooLarge, match=r"101 bytes.*100 bytes"):
            q.send(b"x" * 101)
        q.send(b"1", timeout=0)
        q.send(b"2", timeout=0)
        with pytest.raises(kipc.WouldBlock):
            q.send(b"3", timeout=0)
        assert q.current_messages == 2


def test_fileno_polls_and_asyncio() -> None:
    async def main(s: kipc.Channel, r: kipc.Channel) -> None:
        asyncio.get_running_loop().call_later(0.05, s.send, b"late")
        assert await r.arecv(timeout=2) == b"late"
        with pytest.raises(kipc.Timeout):
            await r.arecv(timeout=0.05)

    with testing.channel_pair("posixmq") as (s, r):
        assert select.select([r.fileno()], [], [], 0)[0] == []
        s.send(b"x")
        assert select.select([r.fileno()], [], [], 1)[0] == [r.fileno()]
        assert r.recv() == b"x"
        asyncio.run(main(s, r))


def test_between_processes_and_mode_under_umask() -> None:
    old = os.umask(0)
    try:
        name = testing.unique_name("mq")
        with kipc.open(f"posixmq://{name}", create=True) as q:
            assert os.fstat(q.fileno()).st_mode & 0o777 == 0o600
            code = ("import kipc, sys\nq = kipc.open('posixmq://' + sys.argv[1])\nprint('READY', flush=True)\n"
                    "for i in range(50): q.send(b'm%d' % i, timeout=10)\n")
            with testing.spawn(code, name) as child:
                got = [q.recv(timeout=10) for _ in range(50)]
                child.check()
            assert got == [b"m%d" % i for i in range(50)]
            with pytest.raises(kipc.AlreadyExists):
                kipc.open(f"posixmq://{name}", create=True)
    finally:
        os.umask(old)
    with pytest.raises(kipc.NotFound):
        kipc.open(f"posixmq://{name}")


def test_bad_names_rejected() -> None:
    for url in ["posixmq://a/b", "posixmq://..x", "posixmq://", "posixmq://-x"]:
        with pytest.raises(kipc.InvalidArgument):
            kipc.open(url, create=True)
