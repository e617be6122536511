"""The command line as a new user meets it (issue 16): 80 columns, patterns, stat, limited gc,
options anywhere, clean exits on SIGTERM/SIGHUP, FIFO timeouts, type/priority in --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kipc
from kipc.cli._output import human_size
from kipc.cli.main import main
from kipc.testing import unique_key, unique_name

KIPC = [sys.executable, "-m", "kipc"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_human_sizes() -> None:
    assert human_size(4198400) == "4.0 MiB"
    assert human_size(512) == "512 B"
    assert human_size(4096) == "4.0 KiB"
    assert human_size(3 << 30) == "3.0 GiB"
    assert human_size(None) == ""


@pytest.mark.parametrize("verb", [["ls"], ["top", "--iterations", "1", "--interval", "0.05"]])
def test_ls_and_top_fit_80_columns(verb: list[str], capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    long_ring = f"ring://{unique_name('a-rather-long-name-for-the-width')}"
    queue = f"sysvmq://{unique_key()}"
    with kipc.open(long_ring, create=True, capacity="4MiB"), kipc.open(queue, create=True) as q:
        q.send(b"x" * 100)
        # one pattern each: objects of other users of this machine may have URLs that alone exceed 80 columns
        outs = {url: run([*verb, url], capsys) for url in (long_ring, queue)}
    for url, (rc, out, _) in outs.items():
        assert rc == 0
        lines = out.splitlines()
        assert all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
        assert url in out.split()  # whole, listed as its creator named it
    if verb == ["ls"]:
        out = outs[long_ring][1]
        assert "4.0 MiB" in out and "4198400" not in out


def test_ls_pattern_and_kind(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = f"ring://{unique_name('alpha')}", f"ring://{unique_name('beta')}"
    key = unique_key()
    with kipc.open(a, create=True), kipc.open(b, create=True), kipc.open(f"sysvmq://{key}", create=True):
        _, out, _ = run(["ls", "--json", "*alpha*"], capsys)
        urls = [o["url"] for o in json.loads(out)]
        assert a in urls and b not in urls
        _, out, _ = run(["ls", "beta", "--json"], capsys)  # a substring; options after the pattern
        assert [o["url"] for o in json.loads(out)] == [b]
        _, out, _ = run(["ls", "--kind", "sysvmq", "--json", str(key)], capsys)
        assert [o["kind"] for o in json.loads(out)] == ["sysvmq"]


def test_mqueue_note_once_per_boot(capsys: pytest.CaptureFixture[str]) -> None:
    from kipc.cli.ls import notes_once

    note = f"a note for {unique_name()}"
    assert notes_once([note]) == [note]
    assert notes_once([note]) == []


def test_stat(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sysvmq://{unique_key()}"
    with kipc.open(url, create=True) as q:
        q.send(b"hello")
        rc, out, _ = run(["stat", url], capsys)
        assert rc == 0
        assert "depth" in out and "1" in out and "0600" in out and url in out
        rc, out, _ = run(["stat", "--json", url], capsys)
        d = json.loads(out)
        assert d["depth"] == 1 and d["kipc"] is True and d["mode"] == "0600" and d["url"] == url
    rc, _, err = run(["stat", url], capsys)
    assert rc == 1 and "no such object" in err


def _dead_ring(url: str) -> None:
    code = f"import kipc, os\nch = kipc.open({url!r}, create=True)\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_gc_limited_by_url_kind_owner(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = f"ring://{unique_name('gca')}", f"ring://{unique_name('gcb')}"
    _dead_ring(a)
    _dead_ring(b)
    try:
        rc, out, _ = run(["gc", "--json", "-n", a], capsys)
        assert rc == 0 and [i["url"] for i in json.loads(out)["removed"]] == [a]
        rc, out, _ = run(["gc", "--json", "--kind", "sysvmq"], capsys)
        assert all(i["kind"] == "sysvmq" for i in json.loads(out)["removed"])
        rc, out, _ = run(["gc", "--json", "--owner", "1", "--kind", "ring"], capsys)
        assert json.loads(out)["removed"] == []
        rc, out, _ = run(["gc", a, "--json"], capsys)  # options anywhere
        assert [i["url"] for i in json.loads(out)["removed"]] == [a]
        assert Path(f"/dev/shm/kipc.ring.{b[7:]}").exists()
        rc, out, _ = run(["gc", b], capsys)
        assert f"removed ring {b}" in out
    finally:
        for u in (a, b):
            try:
                kipc.remove(u)
            except kipc.NotFound:
                pass


def test_options_anywhere(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ring://{unique_name()}"
    rc, _, err = run(["send", url, "--create", "hello"], capsys)
    assert rc == 0, err
    try:
        rc, out, _ = run(["recv", url, "--timeout", "5"], capsys)
        assert out == "hello\n"
    finally:
        kipc.remove(url)


def test_recv_json_has_type_and_priority(capsys: pytest.CaptureFixture[str]) -> None:
    sq, pq = f"sysvmq://{unique_key()}", f"posixmq://{unique_name()}"
    with kipc.open(sq, create=True) as q, kipc.open(pq, create=True) as p:
        q.send(b"a", type=7)
        p.send(b"b", priority=3)
        _, out, _ = run(["recv", sq, "--json"], capsys)
        assert json.loads(out)["type"] == 7
        _, out, _ = run(["recv", pq, "--json"], capsys)
        assert json.loads(out)["priority"] == 3


def test_send_fifo_create_timeout_no_reader_leaves_nothing() -> None:
    url = f"fifo://{unique_name()}"
    t0 = time.monotonic()
    r = subprocess.run([*KIPC, "send", url, "--create", "--timeout", "1", "hi"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "timed out after 1 s" in r.stderr
    assert time.monotonic() - t0 < 10
    with pytest.raises(kipc.NotFound):
        kipc.open(url)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("scheme", ["unix", "fifo", "ring"])
def test_recv_create_cleans_up_on_sigterm_and_sighup(scheme: str, signo: int) -> None:
    url = f"{scheme}://{unique_name()}"
    p = subprocess.Popen([*KIPC, "recv", url, "--create", "--follow"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any(url in i.url for i in kipc.admin.inventory()):
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.stderr else ""
            time.sleep(0.05)
        os.kill(p.pid, signo)
        assert p.wait(30) == 128 + signo
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not any(url in i.url for i in kipc.admin.inventory())


def test_shell_send_create_then_recv(tmp_path: Path) -> None:
    url = f"posixmq://{unique_name()}"
    env = {**os.environ, "COLUMNS": "80"}
    script = (f"set -e\necho hi | kipc send {url} --create\nkipc recv {url} --json\n"
              f"kipc ls --json {url}\nkipc rm {url}\n")
    bindir = Path(sys.executable).parent
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**env, "PATH": f"{bindir}:{env['PATH']}"})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert json.loads(first)["text"] == "hi" and json.loads(first)["priority"] == 0


def test_ls_one_very_long_url_does_not_widen_every_row(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """an object whose URL alone nearly fills 80 columns overflows its own row only"""
    monkeypatch.setenv("COLUMNS", "80")
    ns = os.environ["KIPC_TEST_NS"]
    short = f"ring://{unique_name('s')}"
    huge = f"ring://{unique_name('h' * (72 - len(ns)))}"
    assert len(huge) > 70
    with kipc.open(short, create=True, capacity="4MiB"), kipc.open(huge, create=True, capacity="4MiB"):
        rc, out, _ = run(["ls", ns], capsys)
    assert rc == 0
    lines = out.splitlines()
    row = next(line for line in lines if short in line.split())
    assert len(row) <= 80 and "4.0 MiB" in row  # the size column survived the long neighbour
    assert any(huge in line.split() for line in lines)
    assert [line for line in lines if len(line) > 80 and huge not in line] == []


def test_ls_says_nothing_found_only_when_nothing_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    ns = os.environ["KIPC_TEST_NS"]
    with kipc.open(f"ring://{unique_name('here')}", create=True):
        rc, out, err = run(["ls", ns], capsys)
    assert rc == 0 and ns in out and "no IPC objects" not in err
    rc, out, err = run(["ls", ns], capsys)
    assert rc == 0 and ns not in out and "no IPC objects matching" in err
