"""fifo://: creation and attach checks, rendezvous of unrelated processes, writers coming and going, shell tools."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

import kipc
from kipc import _owners, testing

from ..helpers import REPO, check


def _fifo(name: str) -> str:
    return os.path.join(kipc._naming.runtime_dir("fifo"), name)


WRITER = """
import sys
import kipc
url, producer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from tests.helpers import payload
w = kipc.open(url, timeout=10)   # waits for the reader (ENXIO retried)
print("READY", flush=True)
for i in range(n):
    w.send(payload(producer, i, 64 + i), timeout=10)
w.close()
"""
ROOT = REPO


def _writer(url: str, producer: int, n: int) -> testing.Child:
    return testing.spawn(WRITER, url, str(producer), str(n), ROOT)


def test_create_is_exclusive_0600_recorded_and_removed_by_creator_only() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    old = os.umask(0o022)
    try:
        rx = kipc.open(url, create=True)
    finally:
        os.umask(old)
    with rx:
        st = os.lstat(_fifo(name))
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        rec = _owners.lookup(url)
        assert rec is not None and rec.pid == os.getpid() and rec.kind == "fifo"
        with pytest.raises(kipc.AlreadyExists):
            kipc.open(url, create=True)
        other = kipc.open(url, create="if_missing", direction="recv")
        assert not other.owner
        other.close()  # an opener never unlinks
        assert os.path.exists(_fifo(name))
    assert not os.path.exists(_fifo(name))
    assert _owners.lookup(url) is None


def test_persist_keeps_the_fifo_and_drops_the_owner_record() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    with kipc.open(url, create=True, persist=True):
        pass
    try:
        assert stat.S_ISFIFO(os.lstat(_fifo(name)).st_mode)
        assert _owners.lookup(url) is None
    finally:
        os.unlink(_fifo(name))


def test_refuses_what_is_not_a_private_fifo_of_ours() -> None:
    base = f"/tmp/{testing.unique_name('d')}"
    os.mkdir(base, 0o700)
    try:
        regular = f"{base}/regular"
        open(regular, "w").close()
        with pytest.raises(kipc.BadObject):
            kipc.open(f"fifo://{regular}", direction="recv")
        with pytest.raises(kipc.BadObject):
            kipc.open(f"fifo://{regular}", direction="send", timeout=0)
        real = f"{base}/real"
        os.mkfifo(real, 0o600)
        os.symlink(real, f"{base}/link")
        for direction in ("recv", "send"):
            with pytest.raises(kipc.PermissionDenied, match="symlink"):
                kipc.open(f"fifo://{base}/link", direction=direction, timeout=0)
        os.chmod(real, 0o666)
        with pytest.raises(kipc.PermissionDenied, match="group/other"):
            kipc.open(f"fifo://{real}", direction="recv")
        kipc.open(f"fifo://{real}", direction="recv", allow_open_mode=True).close()
        os.chmod(real, 0o600)
        os.chown(real, 65534, 65534)  # we run as root here; as a user this needs another owner's fifo
        with pytest.raises(kipc.PermissionDenied, match="uid 65534"):
            kipc.open(f"fifo://{real}", direction="recv")
        kipc.open(f"fifo://{real}", direction="recv", allow_uids=[65534]).close()
        with pytest.raises(kipc.NotFound):
            kipc.open(f"fifo://{base}/missing", direction="send", timeout=0)
    finally:
        for n in os.listdir(base):
            os.unlink(f"{base}/{n}")
        os.rmdir(base)


def test_writer_open_waits_for_a_reader_then_times_out() -> None:
    name = testing.unique_name()
    with _made(name):
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            kipc.open(f"fifo://{name}", direction="send", timeout=0.3)
        assert 0.29 <= time.monotonic() - t0 < 5
        with pytest.raises(kipc.WouldBlock):
            kipc.open(f"fifo://{name}", direction="send", timeout=0)


class _made:
    """A FIFO made by the test with no reader open (the creator writes, so it holds no read end)."""

    def __init__(self, name: str) -> None:
        self.path = _fifo(name)
        os.mkfifo(self.path, 0o600)

    def __enter__(self) -> _made:
        return self

    def __exit__(self, *exc: object) -> None:
        os.unlink(self.path)


def test_rendezvous_unrelated_processes_and_writers_coming_and_going() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    with kipc.open(url, create=True) as rx:
        with pytest.raises(kipc.WouldBlock):  # no writer yet: nothing, and no false EOF
            rx.recv(timeout=0)
        for producer in (1, 2):  # one writer after the other
            with _writer(url, producer, 50) as child:
                for i in range(50):
                    check(rx.recv(timeout=10), producer, i)
                child.check(10)
            with pytest.raises(kipc.ChannelClosed):  # the writer left: reported once
                rx.recv(timeout=10)
            with pytest.raises(kipc.Timeout):  # then the channel waits for the next writer
                rx.recv(timeout=0.1)
        assert not rx.closed


def test_follow_mode_waits_through_writers_leaving() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    with kipc.open(url, create=True, follow=True) as rx:
        for producer in (3, 4, 5):
            with _writer(url, producer, 20) as child:
                child.check(10)  # the writer is gone before we read anything
            for i in range(20):
                check(rx.recv(timeout=10), producer, i)
        with pytest.raises(kipc.Timeout):
            rx.recv(timeout=0.1)


def test_writer_dying_mid_frame_is_reported_and_the_next_writer_works() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    code = "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.write(fd, b'\\x10\\x00\\x00\\x00abc')"
    with kipc.open(url, create=True) as rx:
        testing.spawn(code, _fifo(name), ready=False).check(10)
        with pytest.raises(kipc.ProtocolError):
            rx.recv(timeout=10)
        with _writer(url, 6, 3) as child:
            for i in range(3):
                check(rx.recv(timeout=10), 6, i)
            child.check(10)


def test_reader_gone_is_peer_gone() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    rx = kipc.open(url, create=True, persist=True)
    try:
        with kipc.open(url, timeout=5) as tx:
            tx.send(b"x", timeout=1)
            rx.close()
            with pytest.raises(kipc.PeerGone):
                tx.send(b"y", timeout=1)
    finally:
        rx.close()
        os.unlink(_fifo(name))


def test_shell_echo_and_cat_interoperate() -> None:
    name = testing.unique_name()
    path = _fifo(name)
    with kipc.open(f"fifo://{name}?framing=line", create=True) as rx:
        subprocess.run(["sh", "-c", f"echo hi > {path}"], timeout=10, check=True)
        assert rx.recv(timeout=5) == b"hi"
        with pytest.raises(kipc.ChannelClosed):
            rx.recv(timeout=5)
        subprocess.run(["sh", "-c", f"printf 'a\\nb\\n' > {path}"], timeout=10, check=True)
        assert [rx.recv(timeout=5), rx.recv(timeout=5)] == [b"a", b"b"]
    for framing, sent, seen in (("line", [b"one", b"two"], b"one\ntwo\n"),
                                ("raw", [b"ab", b"cd\n"], b"abcd\n")):
        name = testing.unique_name()
        path = _fifo(name)
        with _made(name):
            cat = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
            try:
                with kipc.open(f"fifo://{name}?framing={framing}", timeout=10) as tx:
                    for m in sent:
                        tx.send(m, timeout=5)
                out, _ = cat.communicate(timeout=10)
            finally:
                cat.kill()
                cat.wait(5)
                assert cat.stdout is not None
                cat.stdout.close()
            assert out == seen


def test_small_frames_from_many_writers_do_not_interleave() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    with kipc.open(url, create=True, follow=True) as rx:
        writers = [_writer(url, p, 300) for p in (7, 8, 9)]
        try:
            nxt = {7: 0, 8: 0, 9: 0}
            for _ in range(900):
                p, s = check(rx.recv(timeout=20))
                assert s == nxt[p]  # FIFO per producer, no torn frame
                nxt[p] += 1
            for w in writers:
                w.check(10)
        finally:
            for w in writers:
                w.close()


def test_codec_and_message_limit() -> None:
    name = testing.unique_name()
    url = f"fifo://{name}"
    with kipc.open(url, create=True, codec="json") as rx, \
            kipc.open(url, codec="json", max_message_size=100, timeout=5) as tx:
        tx.send({"k": [1, 2]}, timeout=5)
        assert rx.recv(timeout=5) == {"k": [1, 2]}
        with pytest.raises(kipc.MessageTooLarge) as ei:
            tx.send("x" * 200, timeout=5)
        assert ei.value.limit == 100
