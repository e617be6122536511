"""Signals with a payload: ``kipc.signals.send(pid, value)`` (sigqueue) and a signalfd ``Receiver``.

Contract card:

* Payload: one signed 32-bit int (``si_value.sival_int``, what a C receiver
  reads), plus what the kernel fills in: signal number, sender pid and uid,
  ``si_code`` (``SI_QUEUE`` = -1 for ``sigqueue``, ``SI_USER`` = 0 for ``kill``).
* Ordering: real-time signals (``SIGRTMIN``..``SIGRTMAX``) queue — every send
  is delivered once, in order per signal number, lowest number first across
  numbers. Standard signals (``SIGUSR1``...) coalesce: while one is pending,
  more of the same are dropped and only one arrives (its payload is the
  first one's). Queue depth: ``RLIMIT_SIGPENDING`` (``ulimit -i``); over it
  ``send`` raises :class:`LimitExceeded`.
* Receiving: :class:`Receiver` blocks its signals with ``pthread_sigmask`` and
  reads them from a ``signalfd``: ``recv(timeout=)``, iteration, ``fileno()``
  and ``await arecv()``. By default only ``SI_QUEUE`` signals claiming our own
  uid are returned; others are counted in ``dropped`` and discarded.
* What is trusted (Linux): only processes allowed to signal us can send at
  all (same uid as ours, or root / CAP_KILL). For ``SI_QUEUE`` signals the
  sender writes ``si_pid``, ``si_uid`` and the value itself
  (``rt_sigqueueinfo``): any process of our uid can claim any pid (pid 1) and
  any uid (ours, root's); root can forge anything. So ``pid``/``uid`` of a
  queued signal are the sender's claim, and the uid filter is a convenience
  (it drops honest signals of other uids), not a defence. The kernel refuses
  only a forged ``si_code >= 0`` (posing as ``kill``): ``kill`` signals
  (``SI_USER``, ``any_code=True``) carry a true pid/uid but no payload.
  ``Receiver(token=True)`` is the filter that holds: a random 32-bit secret
  (``r.token``; or ``token=N``) that senders pass as ``send(pid, v,
  token=r.token)`` in the high half of the 64-bit ``sival_ptr``; signals
  without it are dropped. It stops senders that do not know the secret; it
  is not a cryptographic barrier (a same-uid process can guess at some 10^5
  signals a second, visible in ``dropped``, or read our memory with ptrace).
* Thread / mask rules (enforced): a process-directed signal goes to any
  thread that does not block it, where its default action (terminate, for RT
  signals) would run instead of reaching the signalfd. So the signals must be
  blocked in *every* thread. ``Receiver()`` blocks them in the calling thread
  (threads started afterwards inherit the mask) and refuses
  (:class:`InvalidArgument`) when another thread of the process — Python or
  native, read from ``/proc/self/task`` — does not block them. Create the
  Receiver before starting threads, or block the signals in each thread
  first. ``close()`` leaves them blocked: unblocking could let a late signal's
  default action kill the process.
* Cleanup: ``close()`` closes the signalfd; nothing named is created.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import secrets
import signal
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .._base import Deadline, _Waitable
from .._platform import native
from ..errors import ChannelClosed, InvalidArgument, LimitExceeded, NotFound, from_oserror

__all__ = ["SI_QUEUE", "SI_USER", "Receiver", "SignalInfo", "send"]

SI_QUEUE = -1
SI_USER = 0
_INT32 = (-(2**31), 2**31 - 1)
_TOKEN_MAX = 2**32 - 1


class SignalInfo(NamedTuple):
    signo: int
    pid: int
    uid: int
    value: int
    code: int


def _check_signo(signo: object) -> int:
    if isinstance(signo, bool) or not isinstance(signo, int):
        raise TypeError(f"signo must be int, not {type(signo).__name__}")
    if not 1 <= signo < signal.NSIG or signo in (signal.SIGKILL, signal.SIGSTOP):
        raise InvalidArgument(f"signal {signo} cannot be queued/received (1..{signal.NSIG - 1}, not KILL/STOP)")
    return int(signo)


def _check_token(token: object) -> int:
    if isinstance(token, bool) or not isinstance(token, int):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    if not 1 <= token <= _TOKEN_MAX:
        raise InvalidArgument(f"token {token} must be in 1..{_TOKEN_MAX} (the high 32 bits of the sigqueue value)")
    return token


def send(pid: int, value: int, signo: int = signal.SIGRTMIN, *, token: int | None = None) -> None:
    """Queue ``signo`` with the int payload ``value`` to process ``pid`` (``sigqueue(3)``).

    ``token=`` (the receiver's ``Receiver.token``) goes in the high 32 bits of the
    64-bit ``sival_ptr``; ``value`` stays the low 32 bits (what ``sival_int`` reads).
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidArgument(f"pid must be a positive int, not {pid!r}")
    if isinstance(value, bool) or not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
        raise InvalidArgument(f"value {value!r} must be an int in {_INT32[0]}..{_INT32[1]} (C's sival_int)")
    signo = _check_signo(signo)
    word = value
    if token is not None:
        word = (_check_token(token) << 32) | (value & 0xFFFFFFFF)
        if word >= 1 << 63:
            word -= 1 << 64  # as the signed 64-bit integer C receives
    try:
        native("_sig").sigqueue(pid, signo, word)
    except OSError as e:
        if e.errno == _errno.EAGAIN:
            raise LimitExceeded(f"send signal {signo} to pid {pid}: the queue of pending signals is full "
                                "(RLIMIT_SIGPENDING, ulimit -i)", errno=e.errno) from None
        if e.errno == _errno.ESRCH:
            raise NotFound(f"send signal {signo} to pid {pid}: no such process", errno=e.errno) from None
        raise from_oserror(e, f"pid {pid}", f"send signal {signo} to") from None


# signalfd through libc: glibc's sigset_t is 128 bytes; struct signalfd_siginfo is 128 bytes.
_libc = ctypes.CDLL(None, use_errno=True)
_SFD_NONBLOCK, _SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_SIGINFO = struct.Struct("<IiiIIiIIIIiiQ")  # signo errno code pid uid fd tid band overrun trapno status int ptr
_SIGINFO_SIZE = 128


def _sigset(signals: Iterable[int]) -> ctypes.Array[ctypes.c_ubyte]:
    buf = (ctypes.c_ubyte * 128)()
    _libc.sigemptyset(buf)
    for s in signals:
        _libc.sigaddset(buf, ctypes.c_int(s))
    return buf


def _unblocking_threads(signals: set[int]) -> list[int]:
    """Thread ids of this process whose mask leaves any of ``signals`` unblocked.

    A thread that has just ended (``join()`` returned) can still be listed for a
    moment: tasks that are dead or zombies (state X/Z) are skipped, and a thread
    found unblocking is looked at again for up to ``_EXIT_GRACE`` seconds, so only
    one that stays is reported.
    """
    bad = _scan_threads(signals)
    end = time.monotonic() + _EXIT_GRACE
    while bad and time.monotonic() < end:
        time.sleep(0.005)
        bad = _scan_threads(signals, only=bad)
    return bad


_EXIT_GRACE = 0.2


def _scan_threads(signals: set[int], only: list[int] | None = None) -> list[int]:
    want = 0
    for s in signals:
        want |= 1 << (s - 1)
    bad = []
    me = threading.get_native_id()
    for tid in only if only is not None else [int(t) for t in os.listdir("/proc/self/task")]:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("State:"):
                        if line.split()[1] in ("X", "Z"):
                            break  # exiting: it can no longer take a signal
                    elif line.startswith("SigBlk:"):
                        if int(line.split()[1], 16) & want != want:
                            bad.append(tid)
                        break
        except OSError:
            continue  # the thread ended
    return bad


class Receiver(_Waitable):
    """Receive queued signals through a signalfd; see the module docstring for the rules.

    On the Resource base like every kipc object: ``close()`` from another thread wakes a
    thread blocked in ``recv`` (``ChannelClosed``); ``arecv`` waits for readiness on the
    signalfd and reads on the loop thread, so a cancellation takes no signal.
    """

    _fd: int = -1

    #: the secret a sender must pass as ``send(..., token=)`` (None: no token check)
    token: int | None = None

    def __init__(self, signals: int | Iterable[int] = (signal.SIGRTMIN,), *, any_code: bool = False,
                 any_uid: bool = False, token: int | bool | None = None) -> None:
        sigs = {signals} if isinstance(signals, int) else set(signals)
        if not sigs:
            raise InvalidArgument("Receiver needs at least one signal")
        self.signals = frozenset(_check_signo(s) for s in sigs)
        self.any_code = any_code
        self.any_uid = any_uid
        if token is True:
            self.token = secrets.randbits(32) or 1
        elif token is not None and token is not False:
            self.token = _check_token(token)
        self.dropped = 0
        bad = _unblocking_threads(set(self.signals))
        if bad:
            raise InvalidArgument(
                f"Receiver for {sorted(self.signals)}: threads {bad} do not block these signals, so the kernel "
                "could deliver them there (default action: terminate). Create the Receiver before starting "
                "threads, or call signal.pthread_sigmask(SIG_BLOCK, ...) in every thread first.")
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        mask = _sigset(self.signals)
        fd = _libc.signalfd(-1, mask, _SFD_NONBLOCK | _SFD_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise from_oserror(OSError(e, os.strerror(e)), "signalfd", "create")
        self._fd = fd
        self._uid = os.getuid()
        self._init_waitable("recv")
        self.url = f"signals:{','.join(str(s) for s in sorted(self.signals))}"
        self._closed = False

    def fileno(self) -> int:
        self._check_open("fileno")
        return self._fd

    def _wait_fd(self, op: str) -> int | None:
        return self._fd if self._fd >= 0 else None

    def _read_one(self) -> SignalInfo | None:
        """One accepted signal, None when none is pending (filtered ones are dropped)."""
        while True:
            try:
                data = os.read(self._fd, _SIGINFO_SIZE)
            except BlockingIOError:
                return None
            f = _SIGINFO.unpack_from(data)
            info = SignalInfo(signo=f[0], pid=f[3], uid=f[4], value=f[11], code=f[2])
            if (self.any_code or info.code == SI_QUEUE) and (self.any_uid or info.uid == self._uid) \
                    and (self.token is None or f[12] >> 32 == self.token):
                return info
            self.dropped += 1

    def recv(self, timeout: float | None = None) -> SignalInfo:
        """The next accepted signal as ``(signo, pid, uid, value, code)``; ``Timeout`` when ``timeout`` runs out."""
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        return self._take_ready("recv", self._read_one, deadline, f"recv on {self.url}")

    async def arecv(self, timeout: float | None = None) -> SignalInfo:
        deadline = Deadline.of(timeout)
        self._check_open("recv")
        return await self._atake_ready("recv", self._read_one, deadline, f"recv on {self.url}")

    def __iter__(self) -> Iterator[SignalInfo]:
        while not self._closed:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    def _close(self) -> None:
        """Close the signalfd. The signals stay blocked (see the module docstring)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._release_wake()

    def __enter__(self) -> Receiver:
        return self


# The real-time signal range, so ``kipc.signals.send(pid, v, kipc.signals.SIGRTMIN + 1)`` needs no
# ``import signal``; the public names are ``__all__`` (dir() shows no stdlib modules).
SIGRTMIN = signal.SIGRTMIN
SIGRTMAX = signal.SIGRTMAX
__all__ += ["SIGRTMAX", "SIGRTMIN"]


def __dir__() -> list[str]:
    return sorted(__all__)
