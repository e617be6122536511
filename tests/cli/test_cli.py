"""``kipc`` verbs called in-process through ``main(argv)`` (real objects, real child processes)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

import kipc
from kipc import registry
from kipc.cli import _benchlib
from kipc.cli.main import main
from kipc.testing import unique_key, unique_name


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -- errors and exit codes --------------------------------------------------------------------------
@pytest.mark.parametrize("argv, code, needle", [
    (["frob"], 2, "invalid choice"),
    (["send"], 2, "required"),
    (["recv", "ring://x", "-n", "0"], 2, "at least 1"),
    (["send", "nourl", "x"], 2, "has no scheme"),
    (["send", "zzz://x", "x"], 2, "unknown channel scheme"),
    (["recv", "ring://bad/name"], 2, "ring"),
    (["rm", "sysvmq://0x1ffffffff"], 2, "outside key_t"),
    (["bench", "-m", "carrier-pigeon"], 2, "unknown mechanism"),
    (["send", "ring://x", "hi", "--type", "3"], 1, ""),  # missing ring: NotFound before the knob matters
    (["ls", "--kind", "bogus"], 2, "unknown kind"),
])
def test_errors_are_one_line_with_exit_codes(argv: list[str], code: int, needle: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    if argv[1:2] == ["ring://x"]:
        argv = [argv[0], f"ring://{unique_name('missing')}", *argv[2:]]
    rc, _, err = run(argv, capsys)
    assert rc == code, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kipc: error: "), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_missing_object_and_timeout_are_operational_errors(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"posixmq://{unique_name('nope')}"
    rc, _, err = run(["recv", url, "--timeout", "0.1"], capsys)
    assert rc == 1 and err.startswith("kipc: error: ") and len(err.strip().splitlines()) == 1
    with kipc.open(url, create=True):
        rc, _, err = run(["recv", url, "--timeout", "0.1"], capsys)
        assert rc == 1 and "timed out" in err
        rc, _, err = run(["send", url, "x", "--type", "2"], capsys)
        assert rc == 1 and "type" in err  # a knob posixmq cannot honour: Unsupported


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["rm", f"ring://{unique_name('x')}", "--debug"], capsys)
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("kipc: error: ")


# -- send / recv on every scheme that needs no listener ------------------------------------------------
def _round_trip(url: str, capsys: pytest.CaptureFixture[str], **kw: str) -> None:
    rc, _, err = run(["send", url, "hello", "--create", *kw.get("send", "").split()], capsys)
    assert rc == 0, err
    rc, _, err = run(["send", url, "00ff0a", "--hex", *kw.get("send", "").split()], capsys)
    assert rc == 0, err
    rc, out, err = run(["recv", url, "-n", "2", "--json", "--timeout", "10", *kw.get("recv", "").split()], capsys)
    assert rc == 0, err
    msgs = [json.loads(line) for line in out.splitlines()]
    assert msgs[0]["text"] == "hello" and msgs[1]["hex"] == "00ff0a" and msgs[1]["text"] is None


@pytest.mark.parametrize("scheme", ["sysvmq", "posixmq", "ring", "file"])
def test_send_create_outlives_the_cli_then_recv(scheme: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sysvmq://{unique_key()}" if scheme == "sysvmq" else f"{scheme}://{unique_name('cli')}"
    try:
        _round_trip(url, capsys)
    finally:
        kipc.remove(url)


def test_send_recv_nats(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://{nats_url.split('://')[1]}/{unique_name('cli')}"
    _round_trip(url, capsys)


def test_sysvmq_types_and_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    url = f"sysvmq://{unique_key()}"
    with kipc.open(url, create=True) as q:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n")))
        assert run(["send", url, "--type", "3", "--lines"], capsys)[0] == 0
        assert run(["send", url, "seven", "--type", "7"], capsys)[0] == 0
        rc, out, _ = run(["recv", url, "--type", "7", "--json"], capsys)
        assert rc == 0 and json.loads(out)["text"] == "seven"
        assert q.recv_with_type(timeout=1) == (b"a", 3)
        assert q.recv_with_type(timeout=1) == (b"b", 3)


def test_every_registered_scheme_works_in_send_and_recv() -> None:
    """The per-scheme tests here and in test_cli_shell.py together must name every registered scheme."""
    from tests.cli import test_cli_shell

    covered = {"sysvmq", "posixmq", "ring", "file", "nats"} | set(test_cli_shell.LISTENER_OR_FIFO)
    missing = set(registry.schemes()) - covered
    assert not missing, f"kipc send/recv untested for {missing}"


# -- bench ------------------------------------------------------------------------------------------
def test_bench_quick_json_has_a_row_per_mechanism_and_plot(tmp_path: os.PathLike[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    png = os.path.join(tmp_path, "bench.png")
    rc, out, err = run(["bench", "--quick", "--json", "--plot", png, "--sizes", "64", "4096"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    rows = {r["mechanism"]: r for r in doc["results"]}
    assert set(rows) == {"pipe", *registry.schemes(), "queue", *_benchlib.PATTERNS}
    for name, r in rows.items():
        assert r["available"], f"{name}: {r['error']}"
        assert r["rtt_us"] > 0 and r["rtt_iters"] > 0
        # request/reply has a round trip only; everything else (topics too) a stream per size
        assert {s["size"] for s in r["stream"]} == (set() if name.endswith("-reqrep") else {64, 4096})
        assert all(s["mb_s"] > 0 for s in r["stream"]), r["stream"]
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000


def test_bench_peers_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["bench", "--quick", "-m", "ring", "pipe", "--peers", "--sizes", "1024"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mechanism"))
    body = [line.split()[0] for line in lines[header + 1:] if line.strip()]
    assert {"ring", "pipe", "mp.Queue", "mp.Pipe", "faster-fifo", "pyzmq"} <= set(body)
    assert "1.0x" in lines[header + 1]  # sorted: the fastest first, ratio 1.0


def test_steal_sample_reads_proc_stat() -> None:
    a = _benchlib.steal_sample()
    assert a[1] > 0
    assert _benchlib.steal_between(a, a) is None


# -- tour -------------------------------------------------------------------------------------------
def test_tour_runs_every_scene_and_leaves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    rc, out, err = run(["tour", "--quick", "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    scenes = ("pipe", "sysvmq", "shm", "sem", "lock", "signal", "unix", "file", "ring", "nats", "fanout", "reqrep")
    assert doc["status"] == {k: "ok" for k in scenes}, doc["status"]
    lines = [x["line"] for x in doc["lines"]]
    assert lines.count("received frame 0, frame 1, frame 2") == 2  # fan-out: both subscribers got everything
    assert "asked [20, 22], got the reply 42" in lines and "asked [40, 2], got the reply 42" in lines
    assert "20 bytes: Hello Child Process!" in lines and "Linux Programming" in lines  # says what 20 is
    assert any("pong from B" in x for x in lines) and any("value 42" in x for x in lines)
    assert any("recovered=True" in x for x in lines)
    assert all(doc["rtt_us"][m] for m in ("pipe", "sysvmq", "ring", "unix", "file", "nats", "shm", "semaphore"))
    assert time.monotonic() - t0 < 60
    # the autouse leak check fails this test if any object of its namespace is left


def test_tour_in_korean(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["tour", "--quick", "--lang", "ko"], capsys)
    assert rc == 0, err
    assert "파이프" in out and "Hello Child Process!" in out and "왕복" in out
    assert "발행/구독" in out and "요청/응답" in out and "응답 42를 받음" in out
    # fully translated: no English narration of who said what
    for english in ("process B", "child ", "parent", "printed:", "got type", "holding the lock", "counter ="):
        assert english not in out, english


# -- top under a pseudo-terminal ----------------------------------------------------------------------
def test_top_refreshes_under_a_pty_and_quits_on_q() -> None:
    ring_url = f"ring://{unique_name('top')}"
    with kipc.open(ring_url, create=True) as ring:
        ring.send(b"x")
        pid, fd = pty.fork()
        if pid == 0:  # child: the real kipc command on the pty
            os.execve(sys.executable, [sys.executable, "-m", "kipc", "top", "--interval", "0.2"],
                      dict(os.environ, COLUMNS="250", LINES="50", TERM="xterm-256color"))
        seen = b""
        try:
            end = time.monotonic() + 30
            while seen.count(b"kipc top") < 3 and time.monotonic() < end:
                r, _, _ = select.select([fd], [], [], 1)
                if r:
                    seen += os.read(fd, 65536)
            assert seen.count(b"kipc top") >= 3, seen[-2000:]
            assert ring_url.encode()[:20] in seen
            os.write(fd, b"q")
            end = time.monotonic() + 15
            while time.monotonic() < end:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    try:
                        os.read(fd, 65536)
                    except OSError:
                        pass
            else:
                raise AssertionError("kipc top did not exit on q")
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(fd)


def test_top_plain_iterations(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sysvmq://{unique_key()}"
    with kipc.open(url, create=True) as q:
        q.send(b"1")
        rc, out, _ = run(["top", "--iterations", "2", "--interval", "0.05", "--json"], capsys)
        assert rc == 0
        snaps = [json.loads(line) for line in out.splitlines()]
        assert [s["refresh"] for s in snaps] == [1, 2]
        row = next(r for r in snaps[1]["objects"] if r["kind"] == "sysvmq" and r["depth"] == 1
                   and r["kipc"] and r["creator_pid"] == os.getpid())
        assert row["rate"] != ""


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "kipc", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert all(v in out.stdout for v in ("ls", "rm", "gc", "send", "recv", "bench", "tour", "top"))
