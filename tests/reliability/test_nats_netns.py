"""NATS across real interfaces: a 3-node cluster, a producer and a consumer, each in its own
network namespace, joined by veth links to a bridge; a node's link is cut mid-stream.

Messages really cross interfaces (10.231.x.0/24 inside the namespaces only; nothing is
added to the host's own network namespace). Needs root and iproute2 (``ip``): it fails,
not skips, without them, since CI runs as root and must run it (part of make test, ~20 s;
``pytest -m netns`` runs it alone). Every namespace (and with it every link and bridge)
is removed in a ``finally``, and any left by an earlier crashed run is removed first.

The producer and the consumer connect through the stream leader only (the hard case:
they must notice the dead connection and fail over to a node learnt from the cluster's
INFO ``connect_urls``); then that node's link is cut at the bridge (no RST, like a pulled
cable) while the producer's window is full of ~2 KiB messages.

What it found (fixed in ``transports/nats/_runtime``): nats-py noticed the stale
connection (``ping_interval=0.5``) but its reconnect awaited ``wait_closed()`` on a
socket whose unsent publishes could never be written, for ~15 min
(nats-io/nats.py#671); the clients stayed disconnected, so ``stream_info`` and the
window never recovered although the two reachable servers had a new stream leader in
~2 s. kipc now sets ``TCP_USER_TIMEOUT`` on its sockets, so the kernel aborts such a
connection and nats-py fails over. Two test bugs hid behind it: the producer (the
stream's creator) deleted the stream on close while the consumer was still draining
(now ``persist=True``), and END can overtake a batch that was in flight on the cut link
(redelivered after ``ack_wait``), so the consumer stops on END *and* all ``n`` seen, or
25 s of silence after END. ``KIPC_NETNS_DEBUG=1`` prints the producer's window state,
``KIPC_NETNS_KEEP=1`` keeps the server logs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

from kipc import testing
from kipc.testing._nats import server_binary

from ..helpers import TESTS

pytestmark = pytest.mark.netns  # `pytest -m netns` runs it alone

IP = shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)
_PREFIX = "kipcnt"  # every namespace this test makes starts with it


def _need_root_and_ip() -> str:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CI runs this as root)")
    if IP is None:
        pytest.fail("iproute2 (`ip`) is missing: `apt-get install -y iproute2` (CI must run this test)")
    return IP


def _ip(*args: str, ns: str | None = None) -> None:
    assert IP is not None
    cmd = [IP, "netns", "exec", ns, IP, *args] if ns else [IP, *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def _namespaces() -> list[str]:
    assert IP is not None
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _remove_ours(tag: str = "") -> None:
    for ns in _namespaces():
        if ns.startswith(_PREFIX + tag):
            subprocess.run([IP or "ip", "netns", "del", ns], capture_output=True, timeout=20)


ENTER = f"""
import ctypes, os, sys
fd = os.open("/var/run/netns/" + sys.argv.pop(1), os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, before any socket
    raise OSError(ctypes.get_errno(), "setns")
os.close(fd)
sys.path.insert(0, {TESTS!r})
from helpers import check, payload
import kipc
"""

PRODUCER = ENTER + """
import time, asyncio, nats
url, servers, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
end = time.monotonic() + 60
while True:  # the cluster elects its JetStream leader first
    try:
        ch = kipc.open(url, servers=servers, create="if_missing", replicas=3, ack_wait=10, ping_interval=0.5,
                       persist=True)  # the consumer may still be draining when the producer is done
        break
    except kipc.KipcError:
        if time.monotonic() > end:
            raise
        time.sleep(0.5)

async def leader():
    nc = await nats.connect(servers)
    try:
        return (await nc.jetstream().stream_info(ch.stream)).cluster.leader
    finally:
        await nc.close()

leader = asyncio.run(leader())
ch.close()
# Reopen through the stream leader alone (the node whose link is cut): the hard case, where the
# client must notice its dead connection and fail over to a node it learnt from the cluster.
ch = kipc.open(url, servers=[servers[int(leader[1:])]], ack_wait=10, ping_interval=0.5)
print("READY", leader, flush=True)
if os.environ.get("KIPC_NETNS_DEBUG"):
    import threading
    def report():
        while True:
            time.sleep(2)
            nc = ch._nc
            print("STATE unconfirmed", ch.unconfirmed, "connected", nc.is_connected, nc.connected_url,
                  "retry", len(ch._retry), "pubs", len(ch._pubs), "outq", len(ch._outq),
                  "resender", ch._resender, file=sys.stderr, flush=True)
    threading.Thread(target=report, daemon=True).start()
for seq in range(n):
    ch.send(payload(1, seq, 64 + seq % 4000))  # a full window (~512 KiB) outgrows the socket buffer
    if seq == n // 4:
        print("QUARTER", flush=True)
        time.sleep(0.5)  # the link is cut now, while messages keep flowing
ch.flush(timeout=120)
ch.send(b"END", timeout=60)
print("SENT", n, flush=True)
ch.close()
"""

CONSUMER = ENTER + """
import time
url, servers, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
end = time.monotonic() + 60
while True:
    try:
        ch = kipc.open(url, servers=servers, ping_interval=0.5)
        break
    except kipc.KipcError:  # NotFound until the producer created the stream
        if time.monotonic() > end:
            raise
        time.sleep(0.2)
print("READY", flush=True)
# END can overtake messages: a pull batch in flight on the cut link is redelivered only after
# ack_wait (10 s), while newer ones arrive through the new connection. So stop once END and all
# n were seen, or when nothing came for longer than ack_wait after END (the test counts the lost).
got, redelivered, seen, ended = [], 0, set(), False
while not (ended and len(seen) == n):
    try:
        with ch.receive(timeout=25 if ended else 120) as m:
            if m.data == b"END":
                ended = True
                continue
            got.append(check(m.data)[1])
            seen.add(got[-1])
            redelivered += m.redelivered > 0
    except kipc.Timeout:
        if ended:
            break
        raise
ch.close()
print("GOT", redelivered, ",".join(map(str, got)), flush=True)
"""


@contextlib.contextmanager
def _network(tag: str, members: list[str]) -> Iterator[dict[str, str]]:
    """One namespace per member on a bridge in a hub namespace; yields member -> address."""
    hub = f"{_PREFIX}{tag}h"
    addrs: dict[str, str] = {}
    try:
        _ip("netns", "add", hub)
        _ip("link", "add", "br0", "type", "bridge", ns=hub)
        _ip("link", "set", "br0", "up", ns=hub)
        for i, m in enumerate(members):
            ns = f"{_PREFIX}{tag}{m}"
            _ip("netns", "add", ns)
            _ip("link", "set", "lo", "up", ns=ns)
            a, b = f"k{tag}{m}a", f"k{tag}{m}b"
            _ip("link", "add", a, "type", "veth", "peer", "name", b, ns=hub)
            _ip("link", "set", b, "netns", ns, ns=hub)
            _ip("link", "set", a, "master", "br0", ns=hub)
            _ip("link", "set", a, "up", ns=hub)
            addrs[m] = f"10.231.0.{i + 1}"
            _ip("addr", "add", f"{addrs[m]}/24", "dev", b, ns=ns)
            _ip("link", "set", b, "up", ns=ns)
        yield addrs
    finally:
        _remove_ours(tag)


def _cut(tag: str, member: str) -> None:
    """Take a member's link down at the bridge: its packets stop, no RST, like a pulled cable."""
    _ip("link", "set", f"k{tag}{member}a", "down", ns=f"{_PREFIX}{tag}h")


@pytest.mark.timeout(300)
def test_cluster_in_namespaces_node_link_cut_mid_stream_zero_lost() -> None:
    _need_root_and_ip()
    _remove_ours()  # leftovers of a crashed earlier run
    tag = secrets.token_hex(2)
    nodes = ["n0", "n1", "n2"]
    n = 3000
    servers_procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.mkdtemp(prefix="kipc-netns-")
    try:
        with _network(tag, [*nodes, "p", "c"]) as addr:
            client_urls = [f"nats://{addr[x]}:4222" for x in nodes]
            for x in nodes:
                routes = ",".join(f"nats://{addr[y]}:6222" for y in nodes if y != x)
                cmd = [IP or "ip", "netns", "exec", f"{_PREFIX}{tag}{x}", server_binary(), "-js",
                       "-sd", os.path.join(tmp, x), "-a", addr[x], "-p", "4222", "-n", x,
                       "--cluster_name", "kipc", "--cluster", f"nats://{addr[x]}:6222", "--routes", routes,
                       "-l", os.path.join(tmp, f"{x}.log")]
                servers_procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            url = f"{client_urls[0]}/{testing.unique_name('netns')}"
            servers = ",".join(client_urls)
            consumer = None
            try:
                with testing.spawn(PRODUCER, f"{_PREFIX}{tag}p", url, servers, str(n), timeout=90) as producer:
                    leader = producer.lines_seen[-1].split()[1] if producer.lines_seen else "n0"
                    victim = leader if leader in nodes else "n0"
                    # the consumer too connects through the node about to be cut
                    consumer = testing.spawn(CONSUMER, f"{_PREFIX}{tag}c", url, client_urls[nodes.index(victim)],
                                             str(n), timeout=60)
                    producer.expect("QUARTER", 60)
                    _cut(tag, victim)  # the stream leader's only link, mid-stream
                    cut_at = time.monotonic()
                    try:
                        producer.expect("SENT", float(os.environ.get("KIPC_NETNS_SENT", 180)))
                        drained = time.monotonic() - cut_at
                    except AssertionError:
                        producer.kill()
                        time.sleep(0.5)
                        err = producer.stderr_now()
                        raise AssertionError(f"producer stuck; stderr:\n{err[-3000:]}") from None
                    try:
                        producer.check(30)
                    except AssertionError as e:
                        raise AssertionError("\n".join(x for x in str(e).splitlines() if "STATE" not in x)) from None
                try:
                    line = consumer.expect("GOT", 180)
                except AssertionError as e:
                    consumer.kill()
                    raise AssertionError("consumer failed: " + str(e)[-3000:]) from None
                consumer.check(30)
            finally:
                if consumer is not None:
                    consumer.close()
            _, redelivered_s, body = [*line.split(" ", 2), ""][:3]
            got = [int(x) for x in body.split(",") if x]
            counts = collections.Counter(got)
            lost = sorted(set(range(n)) - set(counts))
            dups = sum(c - 1 for c in counts.values())
            print(f"netns: leader {victim} cut; producer done {drained:.1f} s later; {len(got)} received, "
                  f"{len(lost)} lost, {dups} duplicates, {redelivered_s} redelivered")
            assert not lost, f"lost: {lost[:10]}"
            assert dups <= 256 and int(redelivered_s) <= 512, (dups, redelivered_s)  # bounded by the window/prefetch
    finally:
        for p in servers_procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait(10)
        _remove_ours(tag)
        if not os.environ.get("KIPC_NETNS_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        assert not [ns for ns in _namespaces() if ns.startswith(_PREFIX + tag)], "namespaces left behind"
