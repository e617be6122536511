"""The fd-based channels between two real processes, plus bad input and permissions across schemes.

A ``python -c`` child opens the channel by URL (or inherits a pipe end) and
sends 1,000 corruption-detecting messages from 0 B to 16 MiB; this process
receives them and checks every byte and the order, then sees the close.
"""

from __future__ import annotations

import os
import random
import socket
import stat
import struct
from pathlib import Path

import pytest

import kipc
from kipc import testing
from kipc.transports.fifo import FifoChannel
from kipc.transports.file import SpoolChannel
from kipc.transports.unix import UnixListener

from .helpers import check, payload

ROOT = str(Path(__file__).resolve().parent.parent)
MiB = 1 << 20
SPECIAL = [0, 1, 4095, 4096, 65536, MiB, 16 * MiB]


def sizes(n: int = 1000) -> list[int]:
    """n sizes spread log-uniformly from 0 B to 128 KiB, with the special sizes placed along the way."""
    rng = random.Random(20241124)
    out = [int(2 ** rng.uniform(0, 17)) - 1 for _ in range(n - len(SPECIAL))]
    for i, s in enumerate(SPECIAL):
        out.insert((i * n) // len(SPECIAL) + 1, s)
    return out


def expected(seq: int, size: int) -> bytes:
    return payload(7, seq, size)


# The child's side: open the channel, print READY, send every message, close, print DONE.
CHILD = f"""
import sys
sys.path.insert(0, {ROOT!r})
import kipc
from tests.test_cross_process import sizes, expected
scheme, target = sys.argv[1], sys.argv[2]
if scheme == "pipe":
    ch = kipc.open_fd(int(target), "w")
elif scheme == "file":
    ch = kipc.open(target, fsync=False)
else:
    ch = kipc.open(target, timeout=20)
print("READY", flush=True)
for i, n in enumerate(sizes()):
    ch.send(expected(i, n), timeout=60)
ch.close()
print("DONE", flush=True)
"""


def _receive_all(rx: kipc.Channel, child: testing.Child) -> None:
    for i, n in enumerate(sizes()):
        got = rx.recv(timeout=60)
        assert len(got) == n, f"message {i}: {len(got)} bytes, expected {n}"
        if n >= 20:
            check(got, 7, i)
        assert got == expected(i, n), f"message {i} differs"
    child.expect("DONE", 30)
    child.check(30)


@pytest.mark.parametrize("scheme", ["pipe", "fifo", "unix", "tcp", "file"])
def test_thousand_messages_from_a_child(scheme: str) -> None:
    name = testing.unique_name(scheme)
    if scheme == "pipe":
        rx, tx = kipc.pipe()
        with rx:
            child = testing.spawn(CHILD, "pipe", str(tx.fileno()), pass_fds=[tx.fileno()])
            tx.close()  # only the child writes now: its exit is the reader's EOF
            with child:
                _receive_all(rx, child)
                with pytest.raises(kipc.ChannelClosed):
                    rx.recv(timeout=10)
        return
    if scheme in ("fifo", "file"):
        with kipc.open(f"{scheme}://{name}", create=True) as rx, \
                testing.spawn(CHILD, scheme, f"{scheme}://{name}") as child:
            _receive_all(rx, child)
            if scheme == "fifo":  # the writer left: reported once, at a boundary
                with pytest.raises(kipc.ChannelClosed):
                    rx.recv(timeout=10)
        return
    url = f"unix://{name}" if scheme == "unix" else "tcp://127.0.0.1:0"
    with kipc.listen(url) as lst, testing.spawn(CHILD, scheme, lst.url) as child, lst.accept(timeout=20) as rx:
        _receive_all(rx, child)
        with pytest.raises(kipc.ChannelClosed):
            rx.recv(timeout=10)


BAD_NAMES = ["a..b", "x" * 201, "-dash", "sp ace", "semi;colon"]
BAD_URLS = ["fifo://a/b", "unix://a/b", "file://a/b", "fifo:///tmp/../etc/x", "file:///tmp/a/../b",
            "fifo://nul\x00", "unix://tab\there", "file://nl\nx", "fifo://relative/path"]


@pytest.mark.parametrize("scheme", ["fifo", "unix", "file"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_rejected_before_any_syscall(scheme: str, name: str) -> None:
    before = set(os.listdir(kipc._naming.runtime_dir()))
    with pytest.raises(kipc.InvalidArgument):
        if scheme == "unix":
            kipc.listen(f"unix://{name}")
        else:
            kipc.open(f"{scheme}://{name}", create=True)
    assert set(os.listdir(kipc._naming.runtime_dir())) <= before | {"fifo", "sock", "spool", "objects"}


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls_rejected(url: str) -> None:
    with pytest.raises(kipc.InvalidArgument):
        if url.startswith("unix"):
            kipc.open(url)
        else:
            kipc.open(url, create=True)


def test_bad_option_types() -> None:
    name = testing.unique_name()
    with pytest.raises(TypeError):
        kipc.open(f"fifo://{name}", create=True, mode=0.6)
    with pytest.raises(kipc.InvalidArgument):  # octal text is read as in ?mode=0600, strictly
        kipc.open(f"fifo://{name}", create=True, mode="rw-------")
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"fifo://{name}", create=True, mode=0o4600)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"fifo://{name}", create=True, direction="both")
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"file://{name}", create="maybe")
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"fifo://{name}", create=True, timeout=-1)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open("tcp://127.0.0.1:70000")
    with pytest.raises(kipc.InvalidArgument):
        kipc.open("tcp://127.0.0.1")
    with pytest.raises(TypeError):
        kipc.listen("tcp://127.0.0.1:0", auth=12345)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"unix:///tmp/{'x' * 120}")  # longer than sun_path
    with pytest.raises(kipc.InvalidArgument):
        kipc.open(f"fifo://{name}?framing=words", create=True)
    assert not os.path.exists(os.path.join(kipc._naming.runtime_dir("fifo"), name))


FORGER = """
import socket, sys
family = socket.AF_UNIX if sys.argv[1].startswith("/") else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
if family == socket.AF_UNIX:
    s.connect(sys.argv[1])
else:
    s.connect(("127.0.0.1", int(sys.argv[1])))
print("READY", flush=True)
s.sendall(bytes.fromhex(sys.argv[2]))
sys.stdin.read()  # keep the connection open until the test is done
"""


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
@pytest.mark.parametrize("forged", [b"\xff\xff\xff\xff", b"\xff" * 8, struct.pack("<I", 2**31) + b"abc"])
def test_forged_length_prefix_is_a_protocol_error_without_allocation(scheme: str, forged: bytes) -> None:
    url = f"unix://{testing.unique_name()}" if scheme == "unix" else "tcp://127.0.0.1:0"
    with kipc.listen(url) as lst:
        target = lst._sock.getsockname()  # type: ignore[attr-defined]
        arg = target if scheme == "unix" else str(target[1])
        with testing.spawn(FORGER, arg, forged.hex(), stdin=True), lst.accept(timeout=10) as rx:
            rss = _maxrss_mib()
            with pytest.raises(kipc.ProtocolError) as ei:
                rx.recv(timeout=10)
            assert "exceeds the limit" in str(ei.value)
            assert _maxrss_mib() - rss < 256, "a forged length must not be allocated"


def test_forged_length_on_a_fifo() -> None:
    name = testing.unique_name()
    with kipc.open(f"fifo://{name}", create=True) as rx:
        path = os.path.join(kipc._naming.runtime_dir("fifo"), name)
        code = "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.write(fd, b'\\xff\\xff\\xff\\xff' + b'x'*10)"
        testing.spawn(code, path, ready=False).check(10)
        with pytest.raises(kipc.ProtocolError):
            rx.recv(timeout=10)


def test_permissions_under_umask_000() -> None:
    old = os.umask(0)
    try:
        name = testing.unique_name()
        with kipc.open(f"fifo://{name}", create=True) as f:
            st = os.stat(f._path)  # type: ignore[attr-defined]
            assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with kipc.listen(f"unix://{name}") as lst:
            st = os.stat(lst._path)  # type: ignore[attr-defined]
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert stat.S_IMODE(os.stat(kipc._naming.runtime_dir("sock")).st_mode) == 0o700
        with SpoolChannel(f"file://{name}", create=True, reclaim=False) as sp:
            sp.send(b"x")
            d = sp._path
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(os.path.join(d, "claimed")).st_mode) == 0o700
            msgs = [n for n in os.listdir(d) if n.endswith(".msg")]
            assert len(msgs) == 1 and stat.S_IMODE(os.stat(os.path.join(d, msgs[0])).st_mode) == 0o600
        # absolute paths too
        base = f"/tmp/{testing.unique_name('dir')}"
        os.mkdir(base, 0o700)
        try:
            with FifoChannel(f"fifo://{base}/f", create=True) as f:
                assert stat.S_IMODE(os.stat(f"{base}/f").st_mode) == 0o600
            with UnixListener(f"unix://{base}/s.sock"):
                assert stat.S_IMODE(os.stat(f"{base}/s.sock").st_mode) == 0o600
            assert os.listdir(base) == []
        finally:
            os.rmdir(base)
    finally:
        os.umask(old)


def test_unused_socket_module_guard() -> None:
    # a kipc listener is a real kernel socket: the fd is a SOCK_STREAM listening socket
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        s = socket.socket(fileno=os.dup(lst.fileno()))
        try:
            assert s.type == socket.SOCK_STREAM
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        finally:
            s.close()
