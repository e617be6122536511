"""``kipc ls`` lists TCP listeners (issue 16); ``kipc top`` shows bytes/s beside msgs/s, sorts, fits 80 columns."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

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


def test_netlink_and_proc_tables_agree() -> None:
    with kipc.listen("tcp://127.0.0.1:0") as a, kipc.listen("tcp://[::1]:0") as b:
        ports = {int(u.rsplit(":", 1)[1]) for u in (a.url, b.url)}
        fast = {x for x in _procnet._netlink(socket.AF_INET) + _procnet._netlink(socket.AF_INET6) if x.port in ports}
        slow = {x for x in _procnet._proc() if x.port in ports}
        assert len(fast) == 2 and fast == slow
        assert {x.host for x in fast} == {"127.0.0.1", "::1"} and {x.uid for x in fast} == {os.geteuid()}


def test_real_listener_is_found_with_its_holder() -> None:
    with kipc.listen("tcp://127.0.0.1:0") as lst:
        port = int(lst.url.rsplit(":", 1)[1])
        mine = [s for s in _procnet.tcp_listeners() if s.port == port and s.host == "127.0.0.1"]
        assert len(mine) == 1
        assert _procnet.socket_holders([mine[0].inode]) == {mine[0].inode: [os.getpid()]}
        assert _procnet.command_of(os.getpid()).startswith("python")
        assert _procnet.command_of(-1) == ""  # no such process


# -- top: bytes/s, sort keys, 80 columns ---------------------------------------------------------------
def _row(rows: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return next(r for r in rows if r["url"] == url)


def test_top_bytes_per_second_beside_msgs_per_second() -> None:
    from kipc.cli.top import Sampler

    ring_url, mq_url = f"ring://{testing.unique_name('topb')}", f"sysvmq://{testing.unique_key()}"
    with kipc.open(ring_url, create=True) as ring, kipc.open(mq_url, create=True) as mq:
        sampler = Sampler(False)
        first = sampler.sample()
        assert _row(first, ring_url)["bytes_per_s"] is None  # a rate needs two samples
        for _ in range(10):
            ring.send(b"r" * 1000)
        for _ in range(3):
            mq.send(b"q" * 100)
        rows = sampler.sample()
        r, q = _row(rows, ring_url), _row(rows, mq_url)
        # ring: exact counters (bytes include kipc's record framing); queue: change of depth / queued bytes
        assert isinstance(r["msgs_per_s"], float) and isinstance(r["bytes_per_s"], float)
        assert r["estimated"] is False and r["queued"] >= 10_000 and r["bytes_total"] >= 10_000
        assert 1000 <= r["bytes_per_s"] / r["msgs_per_s"] < 1100
        assert str(r["bytes_rate"]).endswith("/s") and not str(r["rate"]).startswith("~")
        assert isinstance(q["msgs_per_s"], float) and isinstance(q["bytes_per_s"], float)
        assert q["estimated"] is True and q["queued"] == 300
        assert abs(q["bytes_per_s"] / q["msgs_per_s"] - 100) < 1e-6
        assert str(q["rate"]).startswith("~") and str(q["bytes_rate"]).startswith("~")


def test_top_sort_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from kipc.cli.top import SORT_KEYS

    small, big = f"sysvmq://{testing.unique_key()}", f"sysvmq://{testing.unique_key()}"
    with kipc.open(small, create=True) as a, kipc.open(big, create=True) as b:
        a.send(b"x" * 10)
        for _ in range(3):
            b.send(b"y" * 500)
        for key in SORT_KEYS:
            rc, out, err = run(["top", "sysvmq://", "--iterations", "1", "--interval", "0.05", "--json",
                                "--sort", key], capsys)
            assert rc == 0, err
            urls = [o["url"] for o in json.loads(out)["objects"]]
            assert {small, big} <= set(urls) and all(u.startswith("sysvmq://") for u in urls)
            if key in ("queued", "size", "depth"):
                assert urls.index(big) < urls.index(small), (key, urls)  # largest first
            if key == "url":
                assert urls == sorted(urls)
    assert main(["top", "--sort", "colour", "--iterations", "1"]) == 2  # a usage error


def test_top_with_traffic_fits_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    url = f"ring://{testing.unique_name('a-long-name-for-top')}"
    # READY after the first round trip: traffic is flowing before top takes its first sample
    code = ("import kipc, sys, time\nch = kipc.open(sys.argv[1])\nch.send(b'z' * 4000, timeout=5)\n"
            "ch.recv(timeout=5)\nprint('READY', flush=True)\nend = time.monotonic() + 30\n"
            "while time.monotonic() < end:\n    ch.send(b'z' * 4000, timeout=5)\n    ch.recv(timeout=5)\n")
    with kipc.open(url, create=True, capacity="1MiB"), testing.spawn(code, url):
        # PATTERN: other users of this machine may have objects whose URLs alone exceed 80 columns
        rc, out, _ = run(["top", testing.namespace(), "--iterations", "2", "--interval", "0.6"], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
    last = lines[lines.index(next(line for line in lines if line.startswith("-- kipc top #2"))):]
    assert "msgs/s" in last[1] and "bytes/s" in last[1]
    row = next(line for line in last if url in line.split())
    assert "/s" in row  # KiB/s or MiB/s: the child is sending


def test_human_rate() -> None:
    from kipc.cli.top import human_rate

    assert human_rate(None) == ""
    assert human_rate(950) == "950"
    assert human_rate(12_345) == "12.3k"
    assert human_rate(4_500_000, estimated=True) == "~4.5M"
    assert human_rate(512, unit="B") == "512 B/s"
    assert human_rate(3.5 * 2**20, unit="B") == "3.5 MiB/s"
