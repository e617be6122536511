"""file:// spool queue: many writers and readers, exactly-once, restarts, crashed readers, disk full."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

import kipc
from kipc import _owners, testing
from kipc.transports import file as spool
from kipc.transports.file import SpoolChannel

from ..helpers import REPO, check, payload

ROOT = REPO


def _dir(name: str) -> str:
    return os.path.join(kipc._naming.runtime_dir("spool"), name)


def _queued(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".msg"))


WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
import kipc
from tests.helpers import payload
ch = kipc.open(sys.argv[1], fsync=False)
producer, n = int(sys.argv[3]), int(sys.argv[4])
print("READY", flush=True)
for i in range(n):
    ch.send(payload(producer, i, 30 + i % 500), timeout=0)  # unbounded: never blocks
ch.close()
"""

READER = """
import sys
sys.path.insert(0, sys.argv[2])
import kipc
from tests.helpers import check
ch = kipc.open(sys.argv[1])
print("READY", flush=True)
while True:
    try:
        p, s = check(ch.recv(timeout=2))
    except kipc.DeadlineExceeded:
        break
    print(p, s, flush=True)
print("END", flush=True)
"""


def test_many_writers_many_readers_each_message_exactly_once() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True):
        writers = [testing.spawn(WRITER, url, ROOT, str(p), "150") for p in (1, 2, 3)]
        readers = [testing.spawn(READER, url, ROOT) for _ in range(2)]
        try:
            for w in writers:
                w.check(30)
            got: list[list[tuple[int, int]]] = []
            for r in readers:
                mine = []
                while (line := r.readline(30)) != "END":
                    p, s = map(int, line.split())
                    mine.append((p, s))
                r.check(10)
                got.append(mine)
        finally:
            for c in writers + readers:
                c.close()
    everything = sorted(m for mine in got for m in mine)
    assert everything == sorted((p, s) for p in (1, 2, 3) for s in range(150))  # none lost, none twice
    for mine in got:  # each reader sees every producer's messages in order
        for p in (1, 2, 3):
            seqs = [s for q, s in mine if q == p]
            assert seqs == sorted(seqs)


def test_fifo_per_producer_and_recv_wakes_on_arrival() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True) as rx:
        with testing.spawn(WRITER, url, ROOT, "4", "300") as w:
            for i in range(300):
                check(rx.recv(timeout=10), 4, i)
            w.check(10)
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)


def test_polling_fallback_without_inotify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "_libc", None)  # as on a kernel/libc without inotify
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True) as rx:
        with pytest.raises(kipc.Unsupported):
            rx.fileno()
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            rx.recv(timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 2
        with testing.spawn(WRITER, url, ROOT, "5", "50") as w:
            for i in range(50):
                check(rx.recv(timeout=10), 5, i)
            w.check(10)


def test_survives_restart_of_both_sides() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    path = _dir(name)
    make = f"import kipc; ch = kipc.open({url!r}, create=True, persist=True); ch.close()"
    testing.spawn(make, ready=False).check(10)
    try:
        assert _owners.lookup(url) is None  # persist: not kipc gc's to collect
        testing.spawn(WRITER, url, ROOT, "6", "40").check(10)  # the writer is gone...
        assert len(_queued(path)) == 40
        code = f"import kipc; ch = kipc.open({url!r}); print([len(ch.recv(timeout=5)) for _ in range(10)])"
        testing.spawn(code, ready=False).check(10)  # ...a reader takes 10 and exits...
        with kipc.open(url) as rx:  # ...and a new reader gets the rest, in order
            for i in range(10, 40):
                check(rx.recv(timeout=5), 6, i)
    finally:
        shutil.rmtree(path)


CRASHING_READER = """
import os, signal, sys
import kipc
ch = kipc.open(sys.argv[1], reclaim=False)
name = sorted(n for n in os.listdir(ch._path) if n.endswith(".msg"))[0]
# claim the first message exactly as recv does, then die before reading it
os.rename(name, f"{ch._tag}-{name}", src_dir_fd=ch._dfd, dst_dir_fd=ch._cdfd)
print("READY", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_message_claimed_by_a_crashed_reader_is_returned() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True) as tx:
        for i in range(3):
            tx.send(payload(7, i, 64), timeout=0)
        child = testing.spawn(CRASHING_READER, url)
        assert child.wait(10) == -signal.SIGKILL
        child.close()
        assert len(_queued(tx._path)) == 2 and len(os.listdir(os.path.join(tx._path, "claimed"))) == 1
        with kipc.open(url) as rx:  # a new reader returns the dead reader's claim at open
            assert [check(rx.recv(timeout=5), 7)[1] for _ in range(3)] == [0, 1, 2]
        assert os.listdir(os.path.join(tx._path, "claimed")) == []


def test_dead_writers_temp_files_are_removed() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True) as ch:
        dead = subprocess.Popen(["true"])
        dead.wait()
        tmp = os.path.join(ch._path, f".tmp-{dead.pid}-1-0")
        open(tmp, "wb").close()
        with kipc.open(url):
            pass
        assert not os.path.exists(tmp)


def test_creator_removes_the_directory_and_other_handles_see_closed() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    owner = kipc.open(url, create=True)
    other = kipc.open(url)
    with pytest.raises(kipc.AlreadyExists):
        kipc.open(url, create=True)
    kipc.open(url, create="if_missing").close()  # attaches, does not remove
    owner.send(b"unread", timeout=0)
    owner.close()  # unread messages go with the directory (documented, like unlinking a queue)
    assert not os.path.exists(_dir(name)) and _owners.lookup(url) is None
    with other:
        with pytest.raises(kipc.ChannelClosed):
            other.recv(timeout=2)
        with pytest.raises(kipc.ChannelClosed):
            other.send(b"x", timeout=0)
    with pytest.raises(kipc.NotFound):
        kipc.open(url)


def test_attach_refuses_foreign_or_open_directories() -> None:
    base = f"/tmp/{testing.unique_name('d')}"
    os.mkdir(base, 0o700)
    try:
        os.mkdir(f"{base}/q", 0o700)
        kipc.open(f"file://{base}/q").close()  # a hand-made directory gains claimed/ and works
        assert stat.S_IMODE(os.stat(f"{base}/q/claimed").st_mode) == 0o700
        os.symlink(f"{base}/q", f"{base}/link")
        with pytest.raises(kipc.BadObject):
            kipc.open(f"file://{base}/link")
        open(f"{base}/plain", "w").close()
        with pytest.raises(kipc.BadObject):
            kipc.open(f"file://{base}/plain")
        os.chmod(f"{base}/q", 0o755)
        with pytest.raises(kipc.PermissionDenied, match="group/other"):
            kipc.open(f"file://{base}/q")
        kipc.open(f"file://{base}/q", allow_open_mode=True).close()
        os.chmod(f"{base}/q", 0o700)
        os.chown(f"{base}/q", 65534, 65534)
        with pytest.raises(kipc.PermissionDenied, match="uid 65534"):
            kipc.open(f"file://{base}/q")
    finally:
        shutil.rmtree(base)


def test_oversize_message_is_left_for_a_bigger_reader() -> None:
    name = testing.unique_name()
    url = f"file://{name}"
    with kipc.open(url, create=True) as tx, SpoolChannel(url, max_message_size=100) as small:
        tx.send(b"y" * 500, timeout=0)
        with pytest.raises(kipc.MessageTooLarge) as ei:
            small.recv(timeout=2)
        assert ei.value.size == 500 and ei.value.limit == 100
        assert tx.recv(timeout=2) == b"y" * 500


def test_disk_full_is_limit_exceeded_and_nothing_is_half_written() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tiny tmpfs to fill the disk and needs root", pytrace=False)
    mnt = f"/tmp/{testing.unique_name('mnt')}"
    os.mkdir(mnt, 0o700)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt], check=True, timeout=10)
        try:
            with kipc.open(f"file://{mnt}/q", create=True) as ch:
                sent = 0
                with pytest.raises(kipc.LimitExceeded, match="no space"):
                    for sent in range(100):
                        ch.send(payload(8, sent, 40_000), timeout=0)
                assert not [n for n in os.listdir(f"{mnt}/q") if n.startswith(".tmp")]
                for i in range(sent):
                    check(ch.recv(timeout=2), 8, i)
                ch.send(payload(8, 0, 40_000), timeout=0)  # room again
                check(ch.recv(timeout=2), 8, 0)
        finally:
            subprocess.run(["umount", mnt], check=True, timeout=10)
    finally:
        os.rmdir(mnt)
