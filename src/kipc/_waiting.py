"""``kipc.wait(objects, timeout=None)``: wait until some channels can be received from.

Like ``multiprocessing.connection.wait`` and ``zmq.Poller``, across every
transport, mixed in one call: channels (ready = a ``recv(timeout=0)`` may make
progress) and listeners (ready = an ``accept(timeout=0)`` may succeed).

* Returns the ready objects (in the order given) as soon as at least one is
  ready; an empty list when ``timeout`` passes (``timeout=0`` only probes).
  Nothing is consumed: readiness is a hint, and another thread or process may
  take the message first, so receive with ``timeout=0`` (or a short timeout)
  after a wait.
* How it waits: only fd-backed objects (pipe, FIFO, sockets, POSIX queues,
  spools with inotify) -> one ``poll``; a single object without an fd (a ring,
  a SysV queue) -> its own wait (a futex for rings); several objects, some
  without an fd -> ``poll`` on the fds in short slices with the others probed
  between slices (at most 2 ms apart once idle).
* Closed objects raise :class:`ChannelClosed`, also when another thread closes one of them
  during the wait (the wait watches each object's wake fd).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterable
from typing import TypeVar

from ._base import Deadline, _Waitable

__all__ = ["wait"]

W = TypeVar("W", bound=_Waitable)

_SPIN = 100e-6
_FIRST = 50e-6
_MAX = 0.002


def wait(objects: Iterable[W], timeout: float | None = None) -> list[W]:
    """The objects among ``objects`` that are ready to receive (or accept); [] after ``timeout``."""
    objs = list(objects)
    deadline = Deadline.of(timeout)
    for o in objs:
        o._check_open("wait")
    if not objs:
        if deadline.blocking:
            raise ValueError("kipc.wait([]) without a timeout would wait forever")
        time.sleep(deadline.remaining() or 0.0)
        return []
    fds: dict[int, W] = {}
    nofd: list[W] = []
    for o in objs:
        fd = o._wait_fd("recv")
        if fd is None:
            nofd.append(o)
        else:
            fds[fd] = o
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    for o in fds.values():
        # the wake fd close() writes: a close() from another thread ends this wait too
        poller.register(o._wake_fd(), select.POLLIN)
    spin_end = time.monotonic() + _SPIN
    pause = _FIRST
    while True:
        for o in objs:  # first: closed by another thread meanwhile is an error, not "ready"
            o._check_open("wait")
        ready = [o for o in objs if o._ready("recv")]
        if ready or deadline.nonblocking or deadline.expired():
            return ready
        if not nofd:
            poller.poll(deadline.remaining_ms())
        elif len(objs) == 1:
            objs[0]._wait("recv", deadline.slice())
        elif time.monotonic() < spin_end:
            if fds:
                poller.poll(0)
            os.sched_yield()
        else:
            slice_ = deadline.slice(pause).remaining() or 0.0
            if fds:
                poller.poll(max(1, round(slice_ * 1000)) if slice_ >= 0.001 else 0)
                if slice_ < 0.001:
                    time.sleep(slice_)
            else:
                time.sleep(slice_)
            pause = min(pause * 2, _MAX)
