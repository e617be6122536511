"""Foundation units: naming/validation, framing, codecs, errors, runtime dir, owner records, layering."""

from __future__ import annotations

import ast
import errno
import os
import pickle
import random
import stat
import struct
from pathlib import Path

import pytest

import kipc
from kipc import _naming, _owners, errors
from kipc._framing import HEADER, FrameDecoder, encode_header
from kipc.codecs import get_codec

SRC = Path(kipc.__file__).parent

BAD_NAMES = ["", "a/b", "/abs", "..", "a..b", "nul\x00", "tab\there", "nl\n", "\x7f", "-dash", ".hidden",
             "x" * 201, "sp ace", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(kipc.InvalidArgument):
        _naming.validate_name(name)


def test_good_names() -> None:
    for name in ["a", "jobs", "frames-1", "x.y_z@h+1", "A" * 200]:
        assert _naming.validate_name(name) == name
    with pytest.raises(TypeError):
        _naming.validate_name(b"bytes")


def test_keys() -> None:
    assert _naming.validate_key("1234") == 1234
    assert _naming.validate_key("0x4d2") == 1234
    assert _naming.validate_key(0xFFFFFFFF) == -1  # unsigned spelling as ipcs prints it
    for bad in ("12a", "0xZZ", 2**32, -(2**31) - 1, ""):
        with pytest.raises(kipc.InvalidArgument):
            _naming.validate_key(bad)
    with pytest.raises(kipc.InvalidArgument):
        _naming.validate_key(0)
    assert _naming.validate_key(0, allow_private=True) == 0
    with pytest.raises(TypeError):
        _naming.validate_key(True)
    with pytest.raises(TypeError):
        _naming.validate_key(1.5)


def test_paths_modes_timeouts_sizes() -> None:
    for bad in ("rel/path", "/a/../b", "/nul\x00", ""):
        with pytest.raises(kipc.InvalidArgument):
            _naming.validate_path(bad)
    with pytest.raises(kipc.InvalidArgument):
        _naming.validate_path("/" + "x" * 5000)
    assert _naming.validate_mode(0o600) == 0o600
    for bad in (0o4600, -1, 0o400, 0o1000):
        with pytest.raises(kipc.InvalidArgument):
            _naming.validate_mode(bad)
    assert _naming.validate_timeout(None) is None
    assert _naming.validate_timeout(0) == 0.0
    for bad in (-0.001, float("nan"), float("inf"), 1e12, 10**400, -10**400):
        with pytest.raises(kipc.InvalidArgument):
            _naming.validate_timeout(bad)
    for bad in ("1", True, [1]):
        with pytest.raises(TypeError):
            _naming.validate_timeout(bad)
    assert _naming.parse_size("64MiB") == 64 << 20
    assert _naming.parse_size("4096") == 4096
    with pytest.raises(kipc.InvalidArgument):
        _naming.parse_size("12 parsecs")


def test_url_parsing() -> None:
    u = _naming.parse_url("ring://frames?capacity=64MiB&spin=0")
    assert (u.scheme, u.netloc, u.path, u.query) == ("ring", "frames", "", {"capacity": "64MiB", "spin": "0"})
    u = _naming.parse_url("fifo:///tmp/x")
    assert (u.netloc, u.path) == ("", "/tmp/x")
    for bad in ("noscheme", "1x://a", "fifo:///a\x00b", "ring://a?x=1&x=2", "ring://a#frag"):
        with pytest.raises(kipc.InvalidArgument):
            _naming.parse_url(bad)
    with pytest.raises(kipc.InvalidArgument, match="unknown channel scheme"):
        kipc.open("gopher://x")


def test_runtime_dir_private_under_umask_000(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "rt"
    monkeypatch.setenv("KIPC_RUNTIME_DIR", str(base))
    monkeypatch.setattr(_naming, "_runtime_cache", {})
    old = os.umask(0)
    try:
        d = _naming.runtime_dir("sub")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_runtime_dir_refuses_planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "rt"
    link.symlink_to(target)
    monkeypatch.setenv("KIPC_RUNTIME_DIR", str(link))
    monkeypatch.setattr(_naming, "_runtime_cache", {})
    with pytest.raises(kipc.PermissionDenied, match="not a directory"):
        _naming.runtime_dir()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("KIPC_RUNTIME_DIR", str(open_dir))
    with pytest.raises(kipc.PermissionDenied, match="expected 0700"):
        _naming.runtime_dir()


# -- framing -----------------------------------------------------------------


def _frames(payloads: list[bytes]) -> bytes:
    return b"".join(encode_header(len(p)) + p for p in payloads)


def test_framing_two_decoders_over_random_chunks() -> None:
    rng = random.Random(7)
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 3, 4, 5, 100, 5000]))) for _ in range(200)]
    stream = _frames(payloads)
    for _ in range(2):  # two decoders, two chunkings
        dec = FrameDecoder()
        out: list[bytes] = []
        i = 0
        while i < len(stream):
            n = rng.randint(1, 700)
            dec.feed(stream[i : i + n])
            i += n
            while (f := dec.next_frame()) is not None:
                out.append(f)
        assert out == payloads
        assert dec.at_boundary
        dec.eof()  # clean end: no error


def test_framing_truncated_is_protocol_error() -> None:
    dec = FrameDecoder()
    dec.feed(_frames([b"hello"])[:-1])
    assert dec.next_frame() is None
    with pytest.raises(kipc.ProtocolError, match="ended inside a frame"):
        dec.eof()
    dec = FrameDecoder()
    dec.feed(b"\x05\x00")
    with pytest.raises(kipc.ProtocolError, match="header"):
        dec.eof()


@pytest.mark.parametrize("forged", [2**32 - 1, 2**31, 2**30 + 1])
def test_framing_forged_length_rejected_before_allocation(forged: int) -> None:
    dec = FrameDecoder()
    dec.feed(HEADER.pack(forged))
    with pytest.raises(kipc.ProtocolError, match="exceeds the limit"):
        dec.next_frame()
    assert dec.buffered == 4  # nothing allocated for the payload


def test_framing_forged_u64_and_negative() -> None:
    for raw in (struct.pack("<Q", 2**64 - 1), struct.pack("<q", -1), struct.pack("<i", -5)):
        dec = FrameDecoder(max_size=1 << 20)
        dec.feed(raw)
        with pytest.raises(kipc.ProtocolError):
            dec.next_frame()


def test_encode_header_limit() -> None:
    with pytest.raises(kipc.MessageTooLarge) as ei:
        encode_header(11, max_size=10)
    assert (ei.value.size, ei.value.limit) == (11, 10)


# -- codecs ------------------------------------------------------------------


def test_codecs() -> None:
    assert get_codec(None).name == "bytes"
    j = get_codec("json")
    assert j.decode(j.encode({"a": 1})) == {"a": 1}
    m = get_codec("msgpack")
    assert m.decode(m.encode([1, b"x"])) == [1, b"x"]
    p = get_codec("pickle")
    assert p.decode(p.encode({1, 2})) == {1, 2}
    with pytest.raises(kipc.InvalidArgument):
        get_codec("yaml")
    with pytest.raises(TypeError):
        get_codec(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not str"):
        get_codec(None).encode("str")


def test_pickle_never_default_on_named_channels(tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.mkdir, (str(canary),))

    evil = pickle.dumps(Evil())
    # the default codec hands the bytes back untouched: nothing is unpickled
    assert get_codec(None).decode(evil) == evil
    assert not canary.exists()


# -- errors ------------------------------------------------------------------


def test_error_tree_inherits_builtins() -> None:
    assert issubclass(kipc.AlreadyExists, FileExistsError)
    assert issubclass(kipc.NotFound, FileNotFoundError)
    assert issubclass(kipc.PermissionDenied, PermissionError)
    assert issubclass(kipc.Timeout, TimeoutError)
    # as the stdlib: non-blocking -> BlockingIOError, timed out -> TimeoutError; siblings under DeadlineExceeded
    assert issubclass(kipc.WouldBlock, BlockingIOError) and not issubclass(kipc.WouldBlock, TimeoutError)
    assert not issubclass(kipc.Timeout, BlockingIOError)
    assert issubclass(kipc.WouldBlock, kipc.DeadlineExceeded) and issubclass(kipc.Timeout, kipc.DeadlineExceeded)
    assert issubclass(kipc.MessageTooLarge, ValueError)
    assert issubclass(kipc.PeerGone, kipc.ChannelClosed)
    for cls in (kipc.AlreadyExists, kipc.Timeout, kipc.MessageTooLarge, kipc.Unsupported, kipc.BadObject):
        assert issubclass(cls, kipc.KipcError)


def test_from_oserror_names_object_and_operation() -> None:
    e = errors.from_oserror(OSError(errno.EEXIST, "File exists"), "fifo:///tmp/x", "create")
    assert isinstance(e, kipc.AlreadyExists) and e.errno == errno.EEXIST
    assert str(e) == "create fifo:///tmp/x: File exists"
    e = errors.from_oserror(OSError(errno.EMFILE, "Too many open files"), "ring://x", "open")
    assert isinstance(e, kipc.LimitExceeded) and "RLIMIT_NOFILE" in str(e)
    e = errors.from_oserror(OSError(errno.EACCES, "Permission denied"), "posix://x", "open")
    assert isinstance(e, PermissionError)


# -- owner records -------------------------------------------------------------


def test_owner_records_roundtrip(kipc_namespace: str) -> None:
    url = f"ring://{kipc_namespace}-rec"
    rec = _owners.record(url, "ring", note=1)
    try:
        assert rec.alive
        got = _owners.lookup(url)
        assert got is not None and got.pid == os.getpid() and got.extra == {"note": 1}
        assert any(r.url == url for r in _owners.records())
    finally:
        _owners.forget(url)
    assert _owners.lookup(url) is None


def test_owner_liveness_not_fooled_by_pid_reuse() -> None:
    me = os.getpid()
    start = _owners.process_start_time(me)
    assert start is not None
    assert _owners.owner_alive(me, start)
    assert not _owners.owner_alive(me, start + 1)  # same pid, other start time: a different process
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not _owners.owner_alive(pid, None)


# -- layering ----------------------------------------------------------------

# A module may import only from its own layer or below (design.md §2).
LAYER = {
    "errors": 0, "_platform": 0, "_native": 0,
    "_procnet": 1,
    "_naming": 1, "codecs": 1, "_procs": 1, "_nats_server": 1, "_owners": 2, "_framing": 2, "_objects": 2, "_kinds": 2,
    "_base": 3, "_waiting": 3,
    "shm": 4, "_mapped": 4, "sync": 4, "transports": 4,
    "queues": 5, "registry": 5, "topics": 5, "reqrep": 6,
    "admin": 6, "testing": 6,
    "cli": 7, "__init__": 8, "__main__": 8,
}


def _layer_of(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def test_imports_point_down() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        me = _layer_of(rel)
        if me not in LAYER:
            problems.append(f"{rel}: module not assigned to a layer")
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                pkg = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                mod = [*pkg, *(node.module.split(".") if node.module else [])]
                targets = [mod[0]] if mod else [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kipc."):
                targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("kipc.")]
            for t in targets:
                if t in LAYER and t != me and LAYER[t] > LAYER[me]:
                    problems.append(f"{rel} imports kipc.{t} (layer {LAYER[t]} > {LAYER[me]})")
    assert not problems, "\n".join(problems)


def test_only_platform_imports_native() -> None:
    offenders = [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
        if p.name != "_platform.py" and "_native" in p.read_text()
        and "kipc._native" in p.read_text() and p.parent.name != "_native"
    ]
    assert not offenders


def test_native_extension_built() -> None:
    from kipc._platform import native

    sig = native("_sig")
    assert callable(sig.sigqueue)
    with pytest.raises(ImportError, match="make build"):
        native("_does_not_exist")


def test_no_test_hooks_in_production_code() -> None:
    """Pair factories live in kipc.testing._pairs; nothing below the CLI imports kipc.testing (design.md §11)."""
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("testing", "cli"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "test_pair":
                problems.append(f"{rel}: defines test_pair")
            mods: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level] if node.level else []
                mods = [".".join([*base, node.module or ""])] if node.level else [node.module or ""]
                mods = [m.removeprefix("kipc.") for m in mods]
            elif isinstance(node, ast.Import):
                mods = [a.name.removeprefix("kipc.") for a in node.names]
            if any(m == "testing" or m.startswith("testing.") for m in mods):
                problems.append(f"{rel}: imports kipc.testing")
    assert not problems, "\n".join(problems)
