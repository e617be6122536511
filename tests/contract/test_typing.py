"""What a user gets from ``import kipc`` under ``mypy --strict`` (issue 16), and the public namespace."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kipc

HERE = Path(__file__).parent
INIT = Path(kipc.__file__)


def _type_checking_names() -> set[str]:
    """Names bound at top level of kipc/__init__.py, including under ``if TYPE_CHECKING:``."""
    tree = ast.parse(INIT.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_public_name_is_typed() -> None:
    # every lazy name has a TYPE_CHECKING import, so a type checker never sees it as Any
    missing = set(kipc.__all__) - _type_checking_names()
    assert not missing, f"add to the TYPE_CHECKING block of kipc/__init__.py: {sorted(missing)}"
    for name in kipc.__all__:
        getattr(kipc, name)  # and every name resolves at run time


def test_namespace_is_clean() -> None:
    for leaked in ("Any", "annotations", "importlib", "TYPE_CHECKING"):
        assert leaked not in dir(kipc)
        assert leaked not in kipc.__all__
    assert "SIGRTMIN" in dir(kipc.signals) and "SIGRTMIN" in kipc.signals.__all__
    for leaked in ("os", "struct", "asyncio", "signal"):
        assert leaked not in dir(kipc.signals)


def test_mechanism_classes_exported() -> None:
    from kipc.transports.ring import RingChannel
    from kipc.transports.sysvmq import SysVMessageQueue

    assert kipc.RingChannel is RingChannel
    assert kipc.SysVMessageQueue is SysVMessageQueue
    for name in ("PosixMessageQueue", "FifoChannel", "UnixChannel", "TcpChannel", "SpoolChannel", "PipeChannel",
                 "NatsChannel", "UnixListener", "TcpListener"):
        assert issubclass(getattr(kipc, name), kipc.Channel | kipc.Listener)


def _mypy(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--warn-return-any", "--disallow-any-expr", "--no-incremental",
         "--cache-dir", "/dev/null", "--python-version", "3.11", "--no-warn-unused-configs", *extra, str(path)],
        capture_output=True, text=True, timeout=300, cwd=path.parent)


def test_user_script_passes_mypy_strict_without_any() -> None:
    script = HERE / "typing_user_script.py"
    text = script.read_text()
    used = {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
    used |= {n.attr for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)}
    assert not used & {"cast", "Any"} and "type: ignore" not in text
    r = _mypy(script)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_types_views_arrays_and_kv(tmp_path: Path) -> None:
    probe = tmp_path / "probe_views.py"
    probe.write_text(
        "import kipc\n"
        "ring = kipc.open('ring://x', scheme='ring')\n"
        "kv = kipc.KV('nats://h/b')\n"
        "reveal_type(ring.recv(view=True))\n"
        "reveal_type(ring.recv(timeout=1.0))\n"
        "reveal_type(ring.recv_array())\n"
        "reveal_type(kv.get('k'))\n"
        "reveal_type(kv.get('k', None))\n"
        "b: bytes = ring.recv(view=True)\n"                    # a view is not bytes
    )
    out = _mypy(probe).stdout
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines() if "Revealed type" in line]
    assert revealed[0].startswith('"memoryview') and revealed[1] == '"bytes"', out
    assert revealed[2].startswith('"numpy.ndarray['), out
    assert revealed[3:] == ['"bytes"', '"bytes | None"'], out
    assert "probe_views.py:9: error" in out, out


def test_mypy_flags_user_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import kipc\n"
        "ch = kipc.open('ring://x', create='yes')\n"          # not a CreateMode
        "ch.send('text')\n"                                    # str has no buffer protocol
        "n: int = ch.recv()\n"                                 # recv() is bytes
        "kipc.open('sysvmq://1').recv_with_type()\n"           # base Channel: narrow with scheme=
    )
    r = _mypy(bad)
    out = r.stdout
    assert r.returncode == 1, out
    assert "bad.py:2:" in out and "bad.py:3:" in out and "bad.py:4:" in out and "bad.py:5:" in out, out


def test_topic_is_typed_through_the_factory(tmp_path: Path) -> None:
    # kipc.Topic is a function (kipc.topics); its result is TopicEnd[bytes] without a codec
    bad = tmp_path / "bad_topic.py"
    bad.write_text(
        "import kipc\n"
        "t = kipc.Topic('unix://cam')\n"
        "n: int = t.recv()\n"                                  # recv() is bytes
        "t.send('text')\n"                                     # str has no buffer protocol
    )
    out = _mypy(bad).stdout
    assert "bad_topic.py:3:" in out and "bad_topic.py:4:" in out, out
