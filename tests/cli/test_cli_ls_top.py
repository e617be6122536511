"""``kipc ls`` lists TCP listeners (issue 16); ``kipc top`` shows bytes/s beside msgs/s, sorts, fits 80 columns."""

from __future__ import annotations

import json
import os

import pytest

import kipc
from kipc import _owners, _procnet, testing
from kipc.cli.main import main

_PLAIN_LISTENER = """
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print("READY", s.getsockname()[1], flush=True)
import sys; sys.stdin.readline()
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _tcp_rows(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    rc, out, _ = run(["ls", "--kind", "tcp", "--json"], capsys)
    assert rc == 0
    return {str(r["url"]): r for r in json.loads(out)}


# -- ls: TCP listeners ---------------------------------------------------------------------------------
def test_ls_lists_kipc_and_other_tcp_listeners(capsys: pytest.CaptureFixture[str]) -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst, kipc.listen("tcp://[::1]:0") as lst6, \
            testing.spawn(_PLAIN_LISTENER, ready=False, stdin=True) as child:
        port = int(child.expect("READY").split()[1])
        plain = f"tcp://127.0.0.1:{port}"
        rows = _tcp_rows(capsys)
        for url in (lst.url, lst6.url):
            r = rows[url]
            assert r["kipc"] is True and r["creator_pid"] == os.getpid() and r["alive"] is True
            assert r["pids"] == [os.getpid()] and r["command"] and r["uid"] == os.geteuid()
        other = rows[plain]
        assert other["kipc"] is False and other["pids"] == [child.pid] and other["creator_pid"] is None
        assert str(other["command"]).startswith("python")
        rc, out, _ = run(["ls", "tcp://127.0.0.1"], capsys)  # the table, by pattern
        assert rc == 0 and lst.url in out.split() and plain in out.split()
        child.write("\n")
        child.check()
    rows = _tcp_rows(capsys)
    assert lst.url not in rows and lst6.url not in rows and plain not in rows
    assert _owners.lookup(lst.url) is None  # close() dropped the record


def test_a_forked_childs_close_keeps_the_listeners_record(capsys: pytest.CaptureFixture[str]) -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        pid = os.fork()
        if pid == 0:
            try:
                lst.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert _owners.lookup(lst.url) is not None
        assert _tcp_rows(capsys)[lst.url]["kipc"] is True
    assert _owners.lookup(lst.url) is None


def test_dead_listener_record_is_not_listed_and_gc_drops_it(capsys: pytest.CaptureFixture[str]) -> None:
    code = "import kipc, os\nl = kipc.listen('tcp://127.0.0.1:0')\nprint(l.url, flush=True)\nos._exit(0)\n"
    with testing.Child(code) as child:
        url = child.readline()
        child.check()
    rec = _owners.lookup(url)
    assert rec is not None and not rec.alive
    try:
        assert url not in _tcp_rows(capsys)  # the port went with its process
        with pytest.raises(kipc.Unsupported):
            kipc.remove(url)
        rc, out, _ = run(["gc", "--kind", "tcp", "--owner", str(rec.pid), "--json"], capsys)
        assert rc == 0
        report = json.loads(out)
        assert [d["url"] for d in report["dropped"]] == [url] and report["removed"] == []
        assert _owners.lookup(url) is None
    finally:
        _owners.forget(url)


def test_proc_net_parser_trusts_nothing() -> None:
    lines = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0",
        "   1: 0100007F:1F91 0100007F:D4E9 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0",
        "   2: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0:0 0:0 0 7 0 99",
        "   3: ZZZZ007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0",
        "   4: 0100007F:1F9 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0",
        "   5: 0100007F:1F92 00000000:0000 0A x x x -5 0 notanumber",
        "garbage",
        "",
    ]
    got = _procnet._parse(lines)
    assert [(s.host, s.port, s.uid, s.inode) for s in got] == [("127.0.0.1", 8080, 1000, 4242), ("::1", 22, 7, 99)]


def test_real_listener_is_found_with_its_holder() -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        port = int(lst.url.rsplit(":", 1)[1])
        mine = [s for s in _procnet.tcp_listeners() if s.port == port and s.host == "127.0.0.1"]
        assert len(mine) == 1
        assert _procnet.socket_holders([mine[0].inode]) == {mine[0].inode: [os.getpid()]}
        assert _procnet.command_of(os.getpid()).startswith("python")
        assert _procnet.command_of(-1) == ""  # no such process
