"""``kipc recv URL --subscribe``, ``kipc send URL --request DATA`` and the topics/services of ``kipc ls``
(in-process ``main(argv)`` against real publishers and servers in child processes)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

import kipc
from kipc import testing
from kipc.cli.main import main

PUBLISHER = """
import sys, time
import kipc
with kipc.Topic(sys.argv[1], create=True, subscribe=False) as pub:
    print("READY", flush=True)
    end = time.monotonic() + 20
    while pub.subscribers < 1 and time.monotonic() < end:   # publish once the CLI has subscribed
        pub.flush(timeout=1)
        time.sleep(0.01)
    for i in range(3):
        pub.send(b"frame %d" % i, timeout=10)
"""

SERVER = """
import sys
import kipc
with kipc.Server(sys.argv[1], create=True) as server:
    print("READY", flush=True)
    for req in server:
        req.reply(req.data.upper())
        if req.data == b"bye":
            break
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_recv_subscribe_prints_what_a_unix_topic_publishes(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"unix://{testing.unique_name('topic')}"
    with testing.spawn(PUBLISHER, url) as child:
        rc, out, err = run(["recv", url, "--subscribe", "--follow", "--timeout", "10"], capsys)
        assert (rc, out) == (0, "frame 0\nframe 1\nframe 2\n"), err  # --follow ends with the topic
        child.check(10)


def test_recv_subscribe_json_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"unix://{testing.unique_name('topic')}"
    with testing.spawn(PUBLISHER, url) as child:
        rc, out, _ = run(["recv", url, "--subscribe", "-n", "2", "--json", "--timeout", "10"], capsys)
        assert rc == 0
        assert [json.loads(line)["text"] for line in out.splitlines()] == ["frame 0", "frame 1"]
        child.check(10)


def test_recv_subscribe_on_nats(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{nats_url}/{testing.unique_name('topic')}"
    stop = threading.Event()

    def tick() -> None:  # at most once on NATS: publish until the CLI has seen enough
        with kipc.Topic(url, subscribe=False) as pub:
            while not stop.is_set():
                pub.send(b"tick")
                time.sleep(0.02)

    t = threading.Thread(target=tick)
    t.start()
    try:
        rc, out, _ = run(["recv", url, "--subscribe", "-n", "2", "--timeout", "10"], capsys)
    finally:
        stop.set()
        t.join(10)
    assert (rc, out) == (0, "tick\ntick\n")


@pytest.mark.parametrize("scheme", ["ring", "unix"])
def test_send_request_prints_the_reply(scheme: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{scheme}://{testing.unique_name('svc')}"
    with testing.spawn(SERVER, url) as child:
        rc, out, err = run(["send", url, "--request", "hello", "--timeout", "10"], capsys)
        assert (rc, out) == (0, "HELLO\n"), err
        rc, out, _ = run(["send", url, "--request", "--json", "bye"], capsys)
        assert rc == 0 and json.loads(out) == {"url": url, "size": 3, "text": "BYE", "hex": "425945"}
        child.check(10)


def test_send_request_timeout_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ring://{testing.unique_name('svc')}"
    with kipc.Server(url, create=True):  # never answers
        t0 = time.monotonic()
        rc, _, err = run(["send", url, "--request", "x", "--timeout", "0.3"], capsys)
        assert rc == 1 and "timed out" in err and time.monotonic() - t0 < 5


@pytest.mark.parametrize("argv, needle", [
    (["recv", "unix://x", "--subscribe", "--create"], "created by its publisher"),
    (["recv", "unix://x", "--subscribe", "--type", "2"], "topics take no --type"),
    (["recv", "tcp://127.0.0.1:1", "--subscribe"], "no topics on tcp://"),
    (["send", "ring://x", "--request", "--lines", "a"], "not with --lines"),
    (["send", "posixmq://x", "--request", "a"], "request/reply runs on"),
])
def test_usage_errors_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(argv, capsys)
    assert rc == 2, err
    assert err.startswith("kipc: error: ") and needle in err and len(err.strip().splitlines()) == 1


def test_ls_shows_topics_and_services_with_their_peers(capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"unix://{testing.unique_name('cam')}"
    svc = f"ring://{testing.unique_name('calc')}"
    with kipc.Topic(topic, create=True, subscribe=False) as pub, kipc.Topic(topic), kipc.Topic(topic), \
            kipc.Server(svc, create=True), kipc.Client(svc):
        pub.send(b"x")  # accepts both subscribers
        rc, out, _ = run(["ls", os.environ["KIPC_TEST_NS"]], capsys)  # this test's namespace
        assert rc == 0 and "topics and services" in out
        section = out.split("topics and services", 1)[1].splitlines()
        (row,) = [line.split() for line in section if topic in line]
        assert row[:3] == ["unix", "topic", topic] and row[-1] == "2"  # role, url, ..., peers
        (row,) = [line.split() for line in section if svc in line]
        assert row[:3] == ["reqrep", "server", svc]
        rc, out, _ = run(["ls", "--json", os.environ["KIPC_TEST_NS"]], capsys)
        rows = {r["url"]: r for r in json.loads(out)}
        assert rows[topic]["role"] == "unix topic" and rows[topic]["peers"] == 2
        assert rows[svc]["role"] == "reqrep server" and rows[svc]["peers"] == 1
        assert rows[svc]["peer_pids"] == [os.getpid()]


SUBSCRIBER = """
import sys
import kipc
with kipc.Topic(sys.argv[1]) as sub:
    print("READY", flush=True)
    n = int(sys.stdin.readline())      # receive this many, then report and wait for the word to leave
    got = [sub.recv(timeout=10) for _ in range(n)]
    print("GOT", len(got), flush=True)
    sys.stdin.readline()
"""


def test_ls_shows_ring_topic_subscribers_with_lag_without_joining(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ring://{testing.unique_name('cam')}"
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as near, \
            testing.spawn(SUBSCRIBER, url, stdin=True) as child:
        for i in range(5):
            pub.send(b"m%d" % i, timeout=10)
        assert near.recv(timeout=10) == b"m0"       # this one is 4 behind ...
        child.write("1\n")                          # ... the child's 4 after taking 1, so receive 3 here
        assert child.expect("GOT", 10) == "GOT 1"
        assert [near.recv(timeout=10) for _ in range(3)] == [b"m1", b"m2", b"m3"]  # near: lag 1, far: lag 4
        before = pub.info()

        rc, out, err = run(["ls", url], capsys)
        assert rc == 0, err
        section = out.split("topics and services", 1)[1]
        (row,) = [line.split() for line in section.splitlines() if url in line and "topic" in line]
        assert row[:3] == ["ring", "topic", url] and row[-2:] == ["2", ",".join(map(str, sorted({os.getpid(),
                                                                                                  child.pid})))]
        subs = section.split("subscribers", 1)[1].splitlines()
        got = {(int(r[1]), r[2], int(r[3]), int(r[4])) for r in (line.split() for line in subs) if r and r[0] == url}
        assert got == {(os.getpid(), "yes", 1, 0), (child.pid, "yes", 4, 0)}

        rc, out, _ = run(["ls", "--json", url], capsys)
        (obj,) = [r for r in json.loads(out) if r["url"] == url]
        assert obj["role"] == "ring topic" and obj["peers"] == 2
        assert sorted(obj["peer_pids"]) == sorted([os.getpid(), child.pid])
        assert sorted((s["pid"], s["lag"], s["dropped"], s["alive"]) for s in obj["subscribers"]) == sorted(
            [(os.getpid(), 1, 0, True), (child.pid, 4, 0, True)])

        # looking took no slot and moved nothing: same header, and the subscribers carry on from where they were
        assert pub.info() == before and len(before["slots"]) == 2
        assert near.recv(timeout=10) == b"m4"
        child.write("\n")
        child.check(10)
