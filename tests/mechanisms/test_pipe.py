"""kipc.pipe(): across os.fork, multiprocessing (fork and spawn) and subprocess; EOF semantics."""

from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest

import kipc
from kipc import testing

from ..helpers import REPO, check, payload

N = 200
SIZES = [0, 1, 20, 4095, 4096, 100_000, 1 << 20]


def _send_all(w: kipc.Channel, producer: int) -> None:
    for i in range(N):
        w.send(payload(producer, i, SIZES[i % len(SIZES)] if i % len(SIZES) else 64), timeout=30)


def _recv_all(r: kipc.Channel, producer: int) -> None:
    for i in range(N):
        got = r.recv(timeout=30)
        assert got == payload(producer, i, SIZES[i % len(SIZES)] if i % len(SIZES) else 64)
        if len(got) >= 20:
            check(got, producer, i)
    with pytest.raises(kipc.ChannelClosed):  # every writer closed: clean EOF at a boundary
        r.recv(timeout=30)


def test_across_os_fork() -> None:
    r, w = kipc.pipe()
    pid = os.fork()
    if pid == 0:  # child: write, close, leave without running the parent's cleanup
        code = 1
        try:
            r.close()
            _send_all(w, 11)
            w.close()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    w.close()
    try:
        _recv_all(r, 11)
    finally:
        r.close()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def mp_child(w: kipc.Channel, producer: int) -> None:
    _send_all(w, producer)
    w.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_across_multiprocessing(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    r, w = kipc.pipe()
    p = ctx.Process(target=mp_child, args=(w, 12))
    p.start()  # fork: inherited; spawn/forkserver: the end pickles as a duplicated fd
    w.close()
    try:
        _recv_all(r, 12)
    finally:
        r.close()
        p.join(30)
    assert p.exitcode == 0


CHILD_READER = """
import sys
sys.path.insert(0, sys.argv[2])
import kipc
from tests.helpers import payload
r = kipc.open_fd(int(sys.argv[1]), "r")
print("READY", flush=True)
for i in range(100):
    assert r.recv(timeout=30) == payload(13, i, 100 + i), i
try:
    r.recv(timeout=30)
except kipc.ChannelClosed:
    print("CLOSED", flush=True)
"""


def test_subprocess_pass_fds_and_open_fd() -> None:
    r, w = kipc.pipe()
    root = REPO
    with w, testing.spawn(CHILD_READER, str(r.fileno()), root, pass_fds=[r.fileno()]) as child:
        r.close()  # the child holds the read end now
        for i in range(100):
            w.send(payload(13, i, 100 + i), timeout=30)
        w.close()
        child.expect("CLOSED", 30)
        child.check(30)


TRUNCATOR = """
import os, struct, sys
fd = int(sys.argv[1])
os.write(fd, struct.pack("<I", 3) + b"abc")          # one whole frame
os.write(fd, struct.pack("<I", int(sys.argv[2])) + b"x" * int(sys.argv[3]))  # then die mid-frame
"""


@pytest.mark.parametrize("declared,sent", [(100, 10), (4 << 20, 300_000), (50, 0)])
def test_eof_mid_frame_is_a_protocol_error(declared: int, sent: int) -> None:
    r, w = kipc.pipe()
    with r:
        testing.spawn(TRUNCATOR, str(w.fileno()), str(declared), str(sent), pass_fds=[w.fileno()],
                      ready=False).check(10)
        w.close()
        assert r.recv(timeout=10) == b"abc"
        with pytest.raises(kipc.ProtocolError) as ei:
            r.recv(timeout=10)
        assert "inside a frame" in str(ei.value)


def test_eof_inside_a_header_is_a_protocol_error() -> None:
    r, w = kipc.pipe()
    with r:
        testing.spawn("import os,sys; os.write(int(sys.argv[1]), b'\\x05\\x00')", str(w.fileno()),
                      pass_fds=[w.fileno()], ready=False).check(10)
        w.close()
        with pytest.raises(kipc.ProtocolError):
            r.recv(timeout=10)


def test_reader_gone_is_peer_gone_not_sigpipe() -> None:
    r, w = kipc.pipe()
    with w:
        r.close()
        with pytest.raises(kipc.PeerGone):
            w.send(b"x", timeout=1)


def test_line_framing_talks_to_a_shell_tool() -> None:
    r, w = kipc.pipe(framing="line")
    code = "import os,sys; os.write(int(sys.argv[1]), b'one\\ntwo\\nlast-without-newline')"
    with r:
        testing.spawn(code, str(w.fileno()), pass_fds=[w.fileno()], ready=False).check(10)
        w.close()
        assert [r.recv(timeout=5) for _ in range(3)] == [b"one", b"two", b"last-without-newline"]
        with pytest.raises(kipc.ChannelClosed):
            r.recv(timeout=5)


def test_direction_and_fd_checks() -> None:
    r, w = kipc.pipe()
    with r, w:
        with pytest.raises(kipc.Unsupported):
            r.send(b"x", timeout=0)
        with pytest.raises(kipc.Unsupported):
            w.recv(timeout=0)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open_fd(-1, "r")
    with pytest.raises(kipc.InvalidArgument):
        kipc.open_fd(0, "rw")
