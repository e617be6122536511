"""nats:// channels, Topic and KV against a real nats-server (the session's ``nats_url``)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

pytest.importorskip("nats", reason="the nats extra (kipc[nats]) is part of make test")

import kipc
from kipc import testing
from kipc.testing._pairs import topic_pair
from kipc.transports.nats import KV, NatsChannel, Topic

from ..helpers import TESTS

HERE = TESTS  # children import helpers from here


def _pair(nats_url: str, **options: object):  # type: ignore[no-untyped-def]
    return testing.channel_pair("nats", servers=nats_url, **options)


def _delete_stream(server: str, stream: str) -> None:
    """Remove a persisted stream with a plain nats-py client (what an operator would do)."""
    import nats

    async def go() -> None:
        nc = await nats.connect(server)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(go())


# -- the channel contract ------------------------------------------------------------------
def test_roundtrip_fifo_and_boundaries(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        msgs = [b"", b"a", b"hello", bytes(range(256)) * 100]
        for m in msgs:
            tx.send(m)
        assert [rx.recv(timeout=5) for _ in msgs] == msgs
        tx.send(memoryview(b"view"))
        assert rx.recv(timeout=5) == b"view"


def test_codec_json(nats_url: str) -> None:
    with _pair(nats_url, codec="json") as (tx, rx):
        tx.send({"job": 1, "args": [1, 2]})
        assert rx.recv(timeout=5) == {"job": 1, "args": [1, 2]}


def test_timeouts_wouldblock_and_empty(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout):
            rx.recv(timeout=0.3)
        assert time.monotonic() - t0 < 3.0  # honoured, generously bounded
        tx.send(b"x", timeout=0)
        assert rx.recv(timeout=0) == b"x"


def test_message_too_large_names_both_numbers(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        big = b"x" * (16 << 20)
        with pytest.raises(kipc.MessageTooLarge) as ei:
            tx.send(big)
        assert ei.value.size == len(big) and ei.value.limit == tx.max_message_size
        assert str(len(big)) in str(ei.value) and str(tx.max_message_size) in str(ei.value)
        assert tx.max_message_size < 1 << 20  # under the server's 1 MiB max_payload
        with pytest.raises(kipc.WouldBlock):  # nothing was published
            rx.recv(timeout=0)
        largest = b"y" * tx.max_message_size
        tx.send(largest)
        assert rx.recv(timeout=5) == largest


def test_knobs_unsupported_and_unknown(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        with pytest.raises(kipc.Unsupported):
            tx.send(b"x", type=1)
        with pytest.raises(kipc.Unsupported):
            tx.send(b"x", priority=3)
        with pytest.raises(kipc.Unsupported):
            rx.recv(type=1)
        with pytest.raises(TypeError):
            tx.send(b"x", colour="red")


def test_full_stream_blocks_then_resumes(nats_url: str) -> None:
    with _pair(nats_url, max_msgs=3) as (tx, rx):
        for i in range(3):
            tx.send(b"m%d" % i)
        with pytest.raises(kipc.WouldBlock):
            tx.send(b"over", timeout=0)
        with pytest.raises(kipc.Timeout):
            tx.send(b"over", timeout=0.3)
        done = threading.Event()

        def blocked() -> None:
            tx.send(b"m3", timeout=10)
            done.set()

        t = threading.Thread(target=blocked)
        t.start()
        assert not done.wait(0.3)  # still blocked: nothing dropped, nothing overwritten
        assert rx.recv(timeout=5) == b"m0"
        t.join(10)
        assert done.is_set()
        assert [rx.recv(timeout=5) for _ in range(3)] == [b"m1", b"m2", b"m3"]
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)


def test_create_open_persist_and_removal(nats_url: str) -> None:
    name = testing.unique_name("nats")
    url = f"{nats_url}/{name}"
    with pytest.raises(kipc.NotFound):
        kipc.open(url)
    with kipc.open(url, create=True) as creator:
        assert creator.owner
        with pytest.raises(kipc.AlreadyExists):
            kipc.open(url, create=True)
        with kipc.open(url, create="if_missing") as other:
            assert not other.owner
        with kipc.open(url) as opener:
            opener.send(b"still here")  # an opener's close removes nothing
        assert creator.recv(timeout=5) == b"still here"
    with pytest.raises(kipc.NotFound):  # the creator's close removed the stream
        kipc.open(url)
    with kipc.open(url, create=True, persist=True) as keeper:
        keeper.send(b"kept")
        stream = keeper.stream
    try:
        with kipc.open(url) as again:
            assert again.recv(timeout=5) == b"kept"
    finally:
        _delete_stream(nats_url, stream)


def test_query_options_and_bad_input(nats_url: str) -> None:
    name = testing.unique_name("nats")
    with kipc.open(f"{nats_url}/{name}?ack_wait=1.5&max_msgs=2", create=True) as ch:
        ch.send(b"a")
        ch.send(b"b")
        with pytest.raises(kipc.WouldBlock):
            ch.send(b"c", timeout=0)
        assert ch.recv(timeout=5) == b"a"
    # rejected before any connection is attempted (port 1 would refuse)
    for bad in ("nats://127.0.0.1:1/a/b", "nats://127.0.0.1:1/..x", "nats://127.0.0.1:1/", "nats:///x"):
        with pytest.raises(kipc.InvalidArgument):
            kipc.open(bad)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open("nats://127.0.0.1:1/x", ack_wait=-1)
    with pytest.raises(kipc.InvalidArgument):
        kipc.open("nats://127.0.0.1:1/x", storage="tape")
    with pytest.raises(TypeError):
        kipc.open("nats://127.0.0.1:1/x", colour="red")


def test_names_are_escaped_not_mixed(nats_url: str) -> None:
    a, b = testing.unique_name("n.a"), testing.unique_name("n_2Ea")
    with kipc.open(f"{nats_url}/{a}", create=True) as ca, kipc.open(f"{nats_url}/{b}", create=True) as cb:
        assert ca.stream != cb.stream and ca.subject != cb.subject
        ca.send(b"to a")
        with pytest.raises(kipc.WouldBlock):
            cb.recv(timeout=0)
        assert ca.recv(timeout=5) == b"to a"


# -- acknowledgement -----------------------------------------------------------------------
def test_receive_acks_on_clean_exit_naks_on_error(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        tx.send(b"job1")
        with rx.receive(timeout=5) as m:
            assert m.data == b"job1" and m.redelivered == 0
        with pytest.raises(kipc.WouldBlock):  # acked: gone for good
            rx.recv(timeout=0)
        tx.send(b"job2")
        with pytest.raises(RuntimeError), rx.receive(timeout=5) as m:
            raise RuntimeError("handler failed")
        with rx.receive(timeout=5) as m:  # nak: handed back at once
            assert m.data == b"job2" and m.redelivered == 1


def test_unacked_delivery_comes_back_after_ack_wait(nats_url: str) -> None:
    with _pair(nats_url, ack_wait=1.0) as (tx, rx):
        tx.send(b"slow job")
        first = rx.receive(timeout=5)  # never acked, as if the handler hung
        assert first.data == b"slow job"
        t0 = time.monotonic()
        again = rx.receive(timeout=10)
        assert again.data == b"slow job" and again.redelivered == 1
        assert time.monotonic() - t0 > 0.5  # not before the ack wait
        again.ack()
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)


# -- asyncio ---------------------------------------------------------------------------------
def test_asyncio_native(nats_url: str) -> None:
    async def main(tx: NatsChannel, rx: NatsChannel) -> list[bytes]:
        receivers = [asyncio.create_task(rx.arecv(timeout=10)) for _ in range(5)]
        await asyncio.sleep(0)
        for i in range(5):
            await tx.asend(b"a%d" % i)
        got = await asyncio.gather(*receivers)
        with pytest.raises(kipc.Timeout):
            await rx.arecv(timeout=0.2)
        with pytest.raises(kipc.MessageTooLarge):
            await tx.asend(b"x" * (2 << 20))
        await tx.asend(b"last")
        async with await rx.areceive(timeout=5) as m:
            assert m.data == b"last"
        return sorted(got)

    with _pair(nats_url) as (tx, rx):
        assert asyncio.run(main(tx, rx)) == [b"a%d" % i for i in range(5)]


# -- processes -------------------------------------------------------------------------------
def test_fork_child_does_not_reuse_parent_loop(nats_url: str) -> None:
    with _pair(nats_url) as (tx, rx):
        tx.send(b"warm up the parent's loop thread")
        assert rx.recv(timeout=5)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the parent's channel must refuse; a fresh one works
            code = 1
            try:
                try:
                    tx.send(b"from parent's channel")
                except kipc.ChannelClosed:
                    with kipc.open(tx.url, servers=nats_url) as mine:
                        mine.send(b"from child")
                    code = 0
            finally:
                os.write(w, b"%d" % code)
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert os.read(r, 10) == b"0" and os.waitstatus_to_exitcode(status) == 0
        os.close(r)
        assert rx.recv(timeout=5) == b"from child"
        with pytest.raises(kipc.WouldBlock):
            rx.recv(timeout=0)


def test_cross_process_json_worker(nats_url: str) -> None:
    code = """
import sys, kipc
with kipc.open(sys.argv[1], codec="json") as ch:
    print("READY", flush=True)
    job = ch.recv(timeout=20)
    print("DONE", job["x"] * 2, flush=True)
"""
    with _pair(nats_url, codec="json") as (tx, _rx), testing.spawn(code, tx.url) as child:
        tx.send({"x": 21})
        assert child.expect("DONE", 20) == "DONE 42"
        child.check()


def test_unreachable_server_clear_error_within_timeout() -> None:
    # refused: nothing listens on the port
    port = _free_port()
    url = f"nats://127.0.0.1:{port}/jobs"
    t0 = time.monotonic()
    with pytest.raises(kipc.NotFound) as ei:
        kipc.open(url)  # the default 5 s connect_timeout: a refusal must not wait for it
    assert url in str(ei.value) and time.monotonic() - t0 < 0.5
    with pytest.raises(kipc.NotFound):  # every server of a list refusing: also at once
        kipc.open(url, servers=[f"nats://127.0.0.1:{_free_port()}", f"nats://127.0.0.1:{port}"])
    # black hole: the port accepts TCP but never speaks NATS
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        url = f"nats://127.0.0.1:{hole.getsockname()[1]}/jobs"
        t0 = time.monotonic()
        with pytest.raises(kipc.Timeout) as et:
            kipc.open(url, connect_timeout=1.0)
        assert url in str(et.value) and time.monotonic() - t0 < 5


def _free_port() -> int:
    from kipc.testing._nats import free_port

    return free_port()


def test_credentials_passed_through() -> None:
    with testing.nats_server(user="alice", password="s3cret") as server:
        name = testing.unique_name("nats")
        with pytest.raises(kipc.PermissionDenied):
            kipc.open(f"{server.url}/{name}", create=True, user="alice", password="wrong", connect_timeout=2)
        with kipc.open(f"{server.url}/{name}", create=True, user="alice", password="s3cret") as ch:
            ch.send(b"authenticated")
            assert ch.recv(timeout=5) == b"authenticated"
        port = server.port
        with kipc.open(f"nats://alice:s3cret@127.0.0.1:{port}/{name}", create=True) as ch:
            assert "s3cret" not in ch.url and "s3cret" not in repr(ch)
    with testing.nats_server(token="tok-123") as server:
        with kipc.open(f"{server.url}/{testing.unique_name('nats')}", create=True, token="tok-123") as ch:
            ch.send(b"t")
            assert ch.recv(timeout=5) == b"t"


# -- Topic -----------------------------------------------------------------------------------
def test_topic_fans_out_to_every_subscriber(nats_url: str) -> None:
    url = f"{nats_url}/{testing.unique_name('topic')}"
    code = """
import sys, kipc
with kipc.Topic(sys.argv[1]) as t:
    print("READY", flush=True)
    got = [t.recv(timeout=20) for _ in range(3)]
    print("GOT", b",".join(got).decode(), flush=True)
"""
    with kipc.Topic(url) as mine, kipc.Topic(url, subscribe=False) as pub:
        children = [testing.spawn(code, url) for _ in range(2)]
        try:
            for m in (b"a", b"b", b"c"):
                pub.send(m)
            for c in children:
                assert c.expect("GOT", 20) == "GOT a,b,c"
                c.check()
            assert [mine.recv(timeout=5) for _ in range(3)] == [b"a", b"b", b"c"]
            with pytest.raises(kipc.WouldBlock):
                mine.recv(timeout=0)
            with pytest.raises(kipc.Unsupported):
                pub.recv(timeout=0)
        finally:
            for c in children:
                c.close()


def test_topic_via_lazy_export_and_async(nats_url: str) -> None:
    assert kipc.KV is KV  # kipc.Topic is the scheme factory (kipc.topics); nats:// gives this Topic
    with topic_pair(testing.unique_name("topic"), servers=nats_url) as (_pub0, sub):
        async def main() -> bytes:
            async with asyncio.timeout(10):
                with Topic(sub.url, subscribe=False) as pub:
                    await pub.asend(b"async hello")
                    return await sub.arecv(timeout=5)  # type: ignore[no-any-return]

        assert asyncio.run(main()) == b"async hello"


# -- KV ----------------------------------------------------------------------------------------
def test_kv_get_put_delete_cas_watch(nats_url: str) -> None:
    bucket = testing.unique_name("kv").replace(".", "_")
    with KV(f"{nats_url}/{bucket}", create=True, history=5) as kv:
        assert kv.get("missing", None) is None
        with pytest.raises(KeyError):
            kv.get("missing")
        r1 = kv.put("cfg.rate", b"10")
        assert kv.get("cfg.rate") == b"10" and kv.entry("cfg.rate") == (b"10", r1)
        r2 = kv.cas("cfg.rate", b"20", r1)
        assert r2 is not None and r2 > r1
        assert kv.cas("cfg.rate", b"30", r1) is None  # stale revision: refused, value unchanged
        assert kv.get("cfg.rate") == b"20"
        assert kv.cas("new", b"x", 0) is not None and kv.cas("new", b"y", 0) is None
        with kv.watch("cfg.>") as w:
            first = w.next(timeout=5)  # the current value first
            assert (first.key, first.value) == ("cfg.rate", b"20")
            kv.put("cfg.mode", b"fast")
            kv.delete("cfg.rate")
            ev1, ev2 = w.next(timeout=5), w.next(timeout=5)
            assert (ev1.key, ev1.value, ev1.operation) == ("cfg.mode", b"fast", "PUT")
            assert (ev2.key, ev2.value, ev2.operation) == ("cfg.rate", None, "DEL")
            with pytest.raises(kipc.WouldBlock):
                w.next(timeout=0)
        assert kv.get("cfg.rate", None) is None
        assert sorted(kv.keys()) == ["cfg.mode", "new"]
        with pytest.raises(kipc.InvalidArgument):
            kv.put("bad key", b"x")
        with pytest.raises(kipc.AlreadyExists):
            KV(f"{nats_url}/{bucket}", create=True)
    with pytest.raises(kipc.NotFound):  # the creator removed the bucket
        KV(f"{nats_url}/{bucket}")


def test_kv_cas_counter_across_processes(nats_url: str) -> None:
    bucket = testing.unique_name("kv").replace(".", "_")
    code = f"""
import sys
sys.path.insert(0, {HERE!r})
from kipc.transports.nats import KV
with KV(sys.argv[1]) as kv:
    print("READY", flush=True)
    conflicts = 0
    for _ in range(40):
        while True:
            value, rev = kv.entry("n")
            if kv.cas("n", str(int(value) + 1).encode(), rev) is not None:
                break
            conflicts += 1
    print("DONE", conflicts, flush=True)
"""
    with KV(f"{nats_url}/{bucket}", create=True) as kv:
        kv.put("n", b"0")
        kids = [testing.spawn(code, kv.url) for _ in range(2)]
        try:
            for k in kids:
                k.expect("DONE", 60)
                k.check()
        finally:
            for k in kids:
                k.close()
        assert kv.get("n") == b"80"  # no lost update


def test_exit_without_close_is_clean_and_removes_nothing(nats_url: str) -> None:
    # A process that forgets close(): the loop thread stops at exit (no hang), and the
    # finalizer only disconnects (never deletes the stream behind the user's back).
    name = testing.unique_name("nats")
    code = """
import sys, kipc
ch = kipc.open(sys.argv[1], create=True)
ch.send(b"left for later")
lost = kipc.open(sys.argv[1])
t = kipc.Topic(sys.argv[1] + "-t")
t.send(b"to myself")  # its delivery pump is running at exit
assert t.recv(timeout=10) == b"to myself"
del lost
print("READY", flush=True)
"""
    with testing.spawn(code, f"{nats_url}/{name}") as child:
        child.check(20)
        err = child.stderr_now()
    for bad in ("never awaited", "Warning", "Task was destroyed", "Traceback"):
        assert bad not in err, err
    with kipc.open(f"{nats_url}/{name}") as ch:
        try:
            assert ch.recv(timeout=5) == b"left for later"
        finally:
            _delete_stream(nats_url, ch.stream)


def _make_tls_files(d: str) -> tuple[str, str, str]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed: cannot make test certificates")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        # The key usages and key identifiers are what Python >= 3.13's default context demands
        # (VERIFY_X509_STRICT): without them the CA given as tls_ca= is refused.
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
        "-subj", "/CN=kipc test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
        "-extfile", ext)
    return cert, key, ca


def test_tls_ca_passed_through() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kipc-tls-") as d:
        cert, key, ca = _make_tls_files(d)
        with testing.nats_server(tls=(cert, key, ca)) as server:
            url = f"{server.url}/{testing.unique_name('nats')}"
            with pytest.raises(kipc.PermissionDenied) as ei:  # no CA given: the self-signed chain is refused
                kipc.open(url, create=True, connect_timeout=1.5)
            assert server.url in str(ei.value) and "TLS" in str(ei.value)
            with kipc.open(url, create=True, tls_ca=ca) as ch:
                ch.send(b"over tls")
                assert ch.recv(timeout=5) == b"over tls"


def test_blocked_receiver_sees_stream_removed(nats_url: str) -> None:
    name = testing.unique_name("nats")
    creator = kipc.open(f"{nats_url}/{name}", create=True)
    try:
        with kipc.open(f"{nats_url}/{name}") as rx:
            outcome: list[BaseException] = []

            def wait() -> None:
                try:
                    rx.recv(timeout=20)
                except BaseException as e:
                    outcome.append(e)

            t = threading.Thread(target=wait)
            t.start()
            time.sleep(0.2)  # most likely blocked by now; either way the outcome must be ChannelClosed
            creator.close()  # the creator removes the stream
            t.join(15)
            assert not t.is_alive()
            assert len(outcome) == 1 and isinstance(outcome[0], kipc.ChannelClosed), outcome
    finally:
        creator.close()


def test_channel_pair_without_servers_runs_its_own() -> None:
    """kipc.testing.channel_pair("nats") works for every scheme's users: no servers= starts a private nats-server."""
    with testing.channel_pair("nats") as (tx, rx):
        tx.send(b"over a private server", timeout=10)
        assert rx.recv(timeout=10) == b"over a private server"
