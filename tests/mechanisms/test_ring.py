"""ring:// specifics: creation and attach checks, fragments, zero-copy, numpy, MPMC stress.

The channel contract itself is checked by test_contract.py on ring:// too.
Children are real processes: forked (cheap, for the stress runs) or
``testing.spawn`` (a fresh interpreter); every wait has a deadline.
"""

from __future__ import annotations

import ast
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kipc
from kipc import _owners, testing
from kipc._platform import native
from kipc.transports.ring import RingChannel, shm_path

from ..helpers import check, fork_child, payload, wait_pid

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def ring() -> Iterator[Callable[..., RingChannel]]:
    """Factory of creator ends; everything it made is closed (and removed) at the end."""
    made: list[RingChannel] = []

    def make(**kw: object) -> RingChannel:
        ch = RingChannel(testing.unique_name("ring"), create=True, **kw)  # type: ignore[arg-type]
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


# -- creation, attach, ownership ---------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o277])
def test_created_0600_whatever_the_umask(umask: int, ring: Callable[..., RingChannel]) -> None:
    old = os.umask(umask)
    try:
        ch = ring()
    finally:
        os.umask(old)
    st = os.stat(ch.path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert ch.path == f"/dev/shm/kipc.ring.{ch.name}"


def test_exclusive_create_if_missing_and_open(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    with pytest.raises(kipc.AlreadyExists):
        RingChannel(tx.name, create=True)
    with RingChannel(tx.name, create="if_missing") as same:
        assert not same.owner
        same.send(b"via if_missing")
    assert tx.recv(timeout=5) == b"via if_missing"
    with pytest.raises(kipc.NotFound):
        RingChannel(testing.unique_name("absent"))


def test_owner_record_and_unlink_by_creator_only(ring: Callable[..., RingChannel]) -> None:
    tx = ring()
    rec = _owners.lookup(tx.url)
    assert rec is not None and rec.pid == os.getpid() and rec.kind == "ring"
    rx = RingChannel(tx.name)
    rx.close()  # an opener never removes
    assert os.path.exists(tx.path)
    with pytest.raises(kipc.PermissionDenied):
        rx.unlink()
    tx.close()
    assert not os.path.exists(tx.path) and _owners.lookup(tx.url) is None


def test_persist_keeps_object_and_records_no_owner() -> None:
    name = testing.unique_name("persist")
    ch = RingChannel(name, create=True, persist=True)
    ch.send(b"kept")
    ch.close()
    try:
        assert os.path.exists(shm_path(name)) and _owners.lookup(f"ring://{name}") is None
        with RingChannel(name) as again:
            assert again.recv(timeout=5) == b"kept"
    finally:
        os.unlink(shm_path(name))


def test_open_url_with_options() -> None:
    name = testing.unique_name("url")
    with kipc.open(f"ring://{name}?capacity=64KiB&create=1&spin=0", codec="json") as tx:
        assert isinstance(tx, RingChannel) and tx.capacity == 64 * KiB and tx.spin == 0
        with kipc.open(f"ring://{name}", codec="json") as rx:
            tx.send({"k": [1, 2]})
            assert rx.recv(timeout=5) == {"k": [1, 2]}
    for bad in ("ring://a/b", "ring://..x", "ring://x?capacity=12parsecs", "ring://x?mode=999"):
        with pytest.raises((kipc.InvalidArgument, ValueError)):
            kipc.open(bad, create=True)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x\x00y", "-x", "x" * 201])
def test_bad_names_refused_before_any_syscall(bad: str) -> None:
    before = set(os.listdir("/dev/shm"))
    with pytest.raises((kipc.InvalidArgument, TypeError)):
        RingChannel(bad, create=True)
    assert set(os.listdir("/dev/shm")) == before


def _plant(name: str, data: bytes, mode: int = 0o600) -> str:
    path = shm_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("content,error", [
    (b"", kipc.BadObject),                       # empty (creator died before ftruncate)
    (b"\x00" * 100, kipc.BadObject),             # truncated: mapping it whole would SIGBUS
    (b"\x00" * 8192, kipc.BadObject),            # right size, no magic
    (b"garbage!" * 2048, kipc.BadObject),        # planted content
], ids=["empty", "truncated", "no-magic", "garbage"])
def test_attach_refuses_planted_or_truncated(content: bytes, error: type[Exception]) -> None:
    name = testing.unique_name("plant")
    path = _plant(name, content)
    try:
        t0 = time.monotonic()
        with pytest.raises(error):
            RingChannel(name)
        assert time.monotonic() - t0 < 5
    finally:
        os.unlink(path)


def test_attach_refuses_wrong_version_and_sizes(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=8 * KiB)
    good = Path(tx.path).read_bytes()
    for label, offset, value in [("version", 8, b"\x63\x00\x00\x00"), ("capacity", 16, struct.pack("<Q", 1 << 30))]:
        name = testing.unique_name(label)
        path = _plant(name, good[:offset] + value + good[offset + len(value):])
        try:
            with pytest.raises(kipc.BadObject, match=r"version|sizes"):
                RingChannel(name)
        finally:
            os.unlink(path)


def test_attach_refuses_group_or_other_access() -> None:
    name = testing.unique_name("open")
    with RingChannel(name, create=True, mode=0o644) as tx:
        assert stat.S_IMODE(os.stat(tx.path).st_mode) == 0o644  # asked for explicitly
        with pytest.raises(kipc.PermissionDenied):
            RingChannel(name)


def test_truncated_after_create_is_refused_by_new_openers(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=8 * KiB)
    os.truncate(tx.path, 4096)
    with pytest.raises(kipc.BadObject):
        RingChannel(tx.name)


def test_stub_matches_native_module() -> None:
    mod = native("_ring")
    tree = ast.parse(Path(mod.__file__).with_name("_ring.pyi").read_text())  # type: ignore[arg-type]
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.AnnAssign) for t in [n.target] if isinstance(t, ast.Name)}
    public = {n for n in dir(mod) if not n.startswith("__")}
    assert names == public
    ring_cls = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Ring")
    ring_methods = set()
    for node in ring_cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
            ring_methods.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            ring_methods.add(node.target.id)
    assert ring_methods == {n for n in dir(mod.Ring) if not n.startswith("_")}


# -- semantics -----------------------------------------------------------------------


def test_fragmented_message_bigger_than_capacity(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=16 * KiB)
    rx = RingChannel(tx.name)
    big = [payload(1, i, n) for i, n in enumerate([20 * KiB, 100 * KiB, 8 * KiB - 16, 8 * KiB, 3 * MiB + 5])]
    t = threading.Thread(target=lambda: [tx.send(m, timeout=30) for m in big])
    t.start()
    try:
        for i, m in enumerate(big):
            got = rx.recv(timeout=30)
            assert len(got) == len(m)
            check(got, 1, i)
    finally:
        t.join(30)
        rx.close()
    assert tx.qsize() == 0


def test_timed_out_fragmented_send_delivers_nothing(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=16 * KiB)
    rx = RingChannel(tx.name)
    try:
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            tx.send(payload(2, 0, 64 * KiB), timeout=0.1)  # a few fragments fit, then nobody reads
        assert time.monotonic() - t0 >= 0.09
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(rx.recv(timeout=10)))
        t.start()  # the reader skips the aborted fragments, making room
        tx.send(b"next", timeout=10)
        t.join(10)
        assert got == [b"next"]  # the partial message was dropped, never delivered
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)
        assert tx.qsize() == 0
    finally:
        rx.close()


def test_concurrent_fragmenting_producers_do_not_interleave(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=16 * KiB)
    sizes = [30 * KiB, 9 * KiB, 70 * KiB, 100]

    def produce(p: int) -> None:
        with RingChannel(tx.name) as ch:
            for i in range(20):
                ch.send(payload(p, i, sizes[(i + p) % len(sizes)]), timeout=30)

    pids = [fork_child(lambda p=p: produce(p)) for p in range(3)]  # type: ignore[misc]
    seen = {p: -1 for p in range(3)}
    for _ in range(60):
        p, s = check(tx.recv(timeout=30))
        assert s == seen[p] + 1
        seen[p] = s
    assert all(wait_pid(pid) == 0 for pid in pids)


def test_view_recv_is_zero_copy_and_consumes_on_release(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=64 * KiB)
    rx = RingChannel(tx.name)
    try:
        tx.send(b"first")
        tx.send(b"second")
        mv = rx.recv(view=True, timeout=5)
        assert isinstance(mv, memoryview) and mv.readonly and bytes(mv) == b"first"
        with pytest.raises(TypeError):
            mv[0] = 1  # type: ignore[index]
        assert tx.qsize() == 2  # not consumed while the view lives
        other: list[bytes] = []
        t = threading.Thread(target=lambda: other.append(tx.recv(timeout=10)))
        t.start()
        time.sleep(0.05)
        assert other == []  # the other consumer waits for the view's release
        mv.release()
        t.join(10)
        assert other == [b"second"]
        with pytest.raises(RuntimeError, match=r"unreleased"):
            tx.send(b"x")
            v1 = rx.recv(view=True, timeout=5)
            rx.recv(view=True, timeout=5)  # same thread, view still held
        v1.release()
    finally:
        rx.close()


def test_loan_writes_in_place_and_aborts_on_error(ring: Callable[..., RingChannel]) -> None:
    tx = ring(capacity=64 * KiB)
    with tx.loan(5) as buf:
        buf[:] = b"hello"
    with pytest.raises(ZeroDivisionError), tx.loan(3) as buf:
        buf[:] = b"bad"
        1 / 0  # noqa: B018
    with pytest.raises(kipc.MessageTooLarge) as ei:
        with tx.loan(64 * KiB):
            pass
    assert ei.value.limit < 32 * KiB
    assert tx.recv(timeout=5) == b"hello"
    with pytest.raises(kipc.WouldBlock):
        tx.recv(timeout=0)


def test_numpy_arrays_round_trip_without_pickle(ring: Callable[..., RingChannel]) -> None:
    np = pytest.importorskip("numpy")
    tx = ring(capacity=32 * MiB)
    rx = RingChannel(tx.name)
    try:
        frame = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
        arrays = [frame, np.arange(12, dtype=">f8").reshape(3, 4), np.arange(30, dtype=np.int16).reshape(5, 6).T,
                  np.zeros((0, 3), dtype=np.complex64), np.array(7, dtype=np.uint32)]
        for a in arrays:
            tx.send_array(a)
        for a in arrays:
            got = rx.recv_array(timeout=5)
            assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
        tx.send_array(frame)
        view = rx.recv_array(timeout=5, copy=False)
        assert not view.flags.writeable and np.array_equal(view, frame)
        del view  # releases the message
        assert tx.qsize() == 0
        with pytest.raises(TypeError):
            tx.send_array(np.array([object()]))
    finally:
        rx.close()


def test_non_contiguous_buffer_is_copied_in_order(ring: Callable[..., RingChannel]) -> None:
    np = pytest.importorskip("numpy")
    tx = ring()
    a = np.arange(16, dtype=np.uint8).reshape(4, 4)[:, ::2]
    tx.send(a)
    assert tx.recv(timeout=5) == a.tobytes()


def test_creator_close_wakes_blocked_receiver_in_another_process(ring: Callable[..., RingChannel]) -> None:
    name = testing.unique_name("closing")
    tx = RingChannel(name, create=True)
    code = (f"import kipc\nfrom kipc.transports.ring import RingChannel\nch = RingChannel({name!r})\n"
            "print('READY', flush=True)\nprint('GOT', ch.recv(timeout=20), flush=True)\n"
            "try:\n    ch.recv(timeout=20)\nexcept kipc.ChannelClosed:\n    print('CLOSED', flush=True)\n")
    with testing.spawn(code) as child:
        tx.send(b"one")
        assert child.expect("GOT") == "GOT b'one'"
        time.sleep(0.05)
        tx.close()
        child.expect("CLOSED", timeout=10)
        child.check()


@pytest.mark.parametrize("spin", [0, 50])
def test_ping_pong_between_processes(spin: float, ring: Callable[..., RingChannel]) -> None:
    a, b = ring(spin=spin), ring(spin=spin)
    code = (f"from kipc.transports.ring import RingChannel\nimport sys\n"
            f"a, b = RingChannel({a.name!r}, spin={spin}), RingChannel({b.name!r}, spin={spin})\n"
            "print('READY', flush=True)\n"
            "for m in a:\n    b.send(m)\n")
    with testing.spawn(code) as child:
        for i in range(2000):
            a.send(payload(7, i, 64))
            check(b.recv(timeout=10), 7, i)
        a.close()  # creator close: the child's loop ends
        child.check(timeout=10)


def test_forked_child_copy_does_not_close_or_unlink(ring: Callable[..., RingChannel]) -> None:
    tx = ring()

    def child() -> None:
        tx.send(b"from child")
        tx.close()  # a forked copy of the creator: closes its handle only

    assert wait_pid(fork_child(child)) == 0
    assert os.path.exists(tx.path)
    assert tx.recv(timeout=5) == b"from child"


def test_asyncio_recv_view_is_refused(ring: Callable[..., RingChannel]) -> None:
    import asyncio

    tx = ring()
    with pytest.raises(kipc.Unsupported):
        asyncio.run(tx.arecv(view=True))


# -- MPMC stress ---------------------------------------------------------------------


def _stress(name: str, producers: int, consumers: int, per_producer: int, tmp: Path) -> None:
    sizes = (24, 64, 200, 1000)

    def produce(p: int) -> None:
        with RingChannel(name) as ch:
            for i in range(per_producer):
                ch.send(payload(p, i, sizes[i & 3]))

    def consume(c: int) -> None:
        got: list[tuple[int, int]] = []
        with RingChannel(name) as ch:
            for m in iter(ch.recv, b"STOP"):
                got.append(check(m))
        (tmp / f"c{c}").write_text(repr(got))

    cons = [fork_child(lambda c=c: consume(c)) for c in range(consumers)]  # type: ignore[misc]
    prods = [fork_child(lambda p=p: produce(p)) for p in range(producers)]  # type: ignore[misc]
    assert [wait_pid(p, 300) for p in prods] == [0] * producers
    with RingChannel(name) as ch:
        for _ in range(consumers):
            ch.send(b"STOP")
    assert [wait_pid(c, 300) for c in cons] == [0] * consumers
    seen: dict[int, list[int]] = {p: [] for p in range(producers)}
    for c in range(consumers):
        last: dict[int, int] = {}
        for p, s in ast.literal_eval((tmp / f"c{c}").read_text()):
            assert s > last.get(p, -1), f"consumer {c} saw producer {p} out of order"
            last[p] = s
            seen[p].append(s)
    for p in range(producers):
        assert sorted(seen[p]) == list(range(per_producer)), f"producer {p}: lost or duplicated messages"


@pytest.mark.parametrize("shape", [(1, 1), (4, 4)])
def test_mpmc_stress_100k(shape: tuple[int, int], ring: Callable[..., RingChannel], tmp_path: Path) -> None:
    p, c = shape
    tx = ring(capacity=256 * KiB)
    _stress(tx.name, p, c, 100_000 // p, tmp_path)
    assert tx.qsize() == 0


@pytest.mark.stress
@pytest.mark.parametrize("shape", [(1, 1), (4, 4)])
def test_mpmc_stress_1m(shape: tuple[int, int], ring: Callable[..., RingChannel], tmp_path: Path) -> None:
    p, c = shape
    tx = ring(capacity=1 * MiB)
    _stress(tx.name, p, c, 1_000_000 // p, tmp_path)
    assert tx.qsize() == 0


def test_wait_releases_gil(ring: Callable[..., RingChannel]) -> None:
    tx = ring(spin=0)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    with pytest.raises(kipc.Timeout):
        tx.recv(timeout=0.2)
    stop.set()
    t.join(5)
    assert ticks > 1000


def test_no_fd_held(ring: Callable[..., RingChannel]) -> None:
    before = set(os.listdir("/proc/self/fd"))
    ch = ring()
    after = set(os.listdir("/proc/self/fd"))
    assert before == after and not select.select([], [], [], 0)[0]
    with pytest.raises(kipc.Unsupported):
        ch.fileno()
