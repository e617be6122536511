"""A realistic user script, checked by ``mypy --strict --warn-return-any --disallow-any-expr``
(tests/contract/test_typing.py). It is never run: it shows what a user gets from ``import kipc``
without a ``cast`` or an ``Any``. Keep every public class in it.
"""

import asyncio
import os

import kipc


def channels() -> None:
    # the default codec: recv() is bytes
    with kipc.open("ring://frames", create=True, capacity="1MiB") as ch:
        ch.send(b"hello")
        data: bytes = ch.recv(timeout=1.0)
        print(data.decode())
        for msg in ch:
            print(len(msg))

    # the mechanism's own class, narrowed by scheme= (no cast)
    with kipc.open("ring://frames2", scheme="ring", create="if_missing") as ring:
        with ring.loan(64) as view:
            view[:5] = b"hello"
        print(ring.capacity, ring.qsize())

    # zero-copy: recv(view=True) is a memoryview, view=False (the default) bytes
    with kipc.open("ring://frames3", scheme="ring", create=True) as zc:
        zview: memoryview = zc.recv(view=True, timeout=1.0)
        print(zview.nbytes, zview[0])
        zview.release()
        copied: bytes = zc.recv(view=False)
        print(copied.hex())
        # numpy arrays (numpy.ndarray of some dtype)
        with zc.loan_array((480, 640), "u1") as frame:
            frame.fill(0)
        arr = zc.recv_array(timeout=1.0, copy=False)
        print(arr.shape[0], arr.nbytes, arr.dtype.name, arr.ndim)

    with kipc.open("sysvmq://1234", scheme="sysvmq", create=True) as mq:
        mq.send(b"job", type=2)
        body, mtype = mq.recv_with_type(type=2)
        print(body.hex(), mtype + 1, mq.stat().messages)

    with kipc.open("posixmq://jobs", scheme="posixmq", create=True) as pmq:
        pmq.send(b"urgent", priority=5)
        msg, prio = pmq.recv_with_priority()
        print(msg.upper(), prio)

    # or the class itself
    direct: kipc.SysVMessageQueue = kipc.SysVMessageQueue("sysvmq://1235", create=True)
    direct.close()

    fifo = kipc.open("fifo://f", scheme="fifo", create=True, direction="recv")
    spool: kipc.SpoolChannel = kipc.open("file://spool", scheme="file", create=True)
    unix: kipc.UnixChannel = kipc.open("unix://chat", scheme="unix", wait=5.0)
    tcp: kipc.TcpChannel = kipc.open("tcp://127.0.0.1:9000", scheme="tcp")
    nats: kipc.NatsChannel = kipc.open("nats://127.0.0.1:4222/jobs", scheme="nats", create=True)
    with nats.receive(timeout=1.0) as delivery:
        print(delivery.data, delivery.redelivered)
    # a codec: messages are objects (narrow them yourself)
    js = kipc.open("ring://objs", codec="json", create=True)
    obj: object = js.recv()
    if isinstance(obj, dict):
        print(len(obj))
    generic: kipc.Channel[bytes] = kipc.open("posixmq://x")
    for c in kipc.wait([fifo, spool, unix, tcp, generic], timeout=0.5):
        print(c.url, c.recv(timeout=0))
    js.close()

    with kipc.listen("unix://srv", scheme="unix") as srv:
        conn = srv.accept(timeout=1.0)
        conn.send(memoryview(b"x"))
    with kipc.listen("tcp://127.0.0.1:0") as tsrv:
        print(tsrv.url)


def errors() -> None:
    try:
        kipc.open("ring://nope").recv(timeout=0)
    except kipc.WouldBlock:
        print("empty")
    except kipc.Timeout as e:
        print(e.errno)
    except kipc.DeadlineExceeded:
        pass
    except kipc.NotFound:
        pass


async def server() -> None:
    async with kipc.open("ring://aio", create=True) as ch:
        await ch.asend(b"ping")
        reply: bytes = await ch.arecv(timeout=1.0)
        print(reply)
        async for m in ch:
            print(m)


def objects() -> None:
    with kipc.SharedMemory("posix://seg", size=4096, create=True) as seg:
        seg.buf[:4] = b"abcd"
    with kipc.Semaphore("posix://sem", value=1, create=True) as sem:
        print(sem.value)
    sem2 = kipc.Semaphore("sysv://1234", create="if_missing")
    if sem2.acquire(timeout=1.0):
        sem2.release()
    lock = kipc.Lock("posix://lk", create=True)
    with lock:
        print(lock.recovered)
    rlock = kipc.RLock("posix://rlk", create=True)
    with rlock:
        pass
    ev = kipc.Event("posix://ev", create=True)
    ev.set()
    print(ev.wait(timeout=0.1), ev.is_set())
    with kipc.FileLock("file:///tmp/app.lock") as fl:
        print(fl.held)

    q: kipc.Queue[int] = kipc.Queue()
    q.put(1)
    n: int = q.get(timeout=1.0)
    jq: kipc.JoinableQueue[str] = kipc.JoinableQueue()
    jq.put("job")
    jq.task_done()
    sq: kipc.SimpleQueue[bytes] = kipc.SimpleQueue()
    sq.put(b"x")
    print(n + 1, sq.get())

    reader, writer = kipc.pipe()
    writer.send(b"through the pipe")
    got: bytes = reader.recv()
    print(got, isinstance(reader, kipc.PipeChannel))

    with kipc.signals.Receiver() as rx:
        kipc.signals.send(os.getpid(), 7)
        info = rx.recv(timeout=1.0)
        print(info.value + 1, info.pid, kipc.signals.SIGRTMIN)

    topic = kipc.Topic("nats://127.0.0.1:4222/news")
    topic.send(b"headline")
    print(topic.recv(timeout=1.0))
    # the same factory on a unix socket; the codec decides recv()'s type
    with kipc.Topic("unix://cam", create=True, subscribe=False) as cam, kipc.Topic("unix://cam") as frames:
        cam.send(b"frame")
        frame: bytes = frames.recv(timeout=1.0)
        print(len(frame), frames.dropped + 1)
        for f in frames:
            print(f.hex())
    events = kipc.Topic("unix://events", codec="json")
    event: object = events.recv()
    print(event)
    kv = kipc.KV("nats://127.0.0.1:4222/config", create=True)
    rev: int = kv.put("k", b"v")
    current: bytes = kv.get("k")
    maybe: bytes | None = kv.get("absent", None)
    print(current, maybe)
    entry = kv.entry("k")
    if entry is not None:
        value, revision = entry
        print(value, revision, rev)
    with kipc.Server("ring://calc", create=True) as server:
        req = server.recv(timeout=1.0)
        if isinstance(req.data, bytes):
            print(req.reply(req.data.upper()))
    with kipc.Client("ring://calc") as client:
        answer = client.request(b"ping", timeout=1.0)
        print(isinstance(answer, bytes))
    kipc.remove("ring://frames")


if __name__ == "__main__":
    channels()
    errors()
    objects()
    asyncio.run(server())
