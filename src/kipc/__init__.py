"""kipc: inter-process communication for Python on Linux.

One contract for every mechanism::

    import kipc
    with kipc.open("ring://frames", create=True) as ch:   # or fifo://, unix://, tcp://, file://,
        ch.send(b"hello")                                   # sysvmq://, posixmq://, nats://
        print(ch.recv(timeout=1.0))

``kipc.pipe()`` gives a parent/child pipe; ``kipc.listen(url)`` accepts
``unix://``/``tcp://`` peers; ``kipc.SharedMemory`` and ``kipc.Semaphore`` address
``sysv://KEY`` and ``posix://name`` objects; ``kipc.Queue`` is a drop-in faster
``multiprocessing.Queue``; ``kipc.wait(channels, timeout)`` waits on many
channels of any kind at once. Everything is re-exported here; heavier parts are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._base import Channel, Deadline, Listener
from .codecs import get_codec
from .errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    InvalidArgument,
    KipcError,
    LimitExceeded,
    MessageTooLarge,
    NotFound,
    PeerGone,
    PermissionDenied,
    ProtocolError,
    Timeout,
    Unsupported,
    WouldBlock,
)
from .registry import listen, open, schemes

__version__ = "0.1.0"

# name -> "module:attr", imported on first access (keeps `import kipc` light and
# lets optional dependencies fail only for their users).
_LAZY: dict[str, str] = {
    "pipe": "kipc.transports.pipe:pipe",
    "open_fd": "kipc.transports.pipe:open_fd",
    "SharedMemory": "kipc.shm:SharedMemory",
    "Semaphore": "kipc.sync.semaphore:Semaphore",
    "Lock": "kipc.sync.lock:Lock",
    "RLock": "kipc.sync.lock:RLock",
    "Event": "kipc.sync.event:Event",
    "FileLock": "kipc.sync.filelock:FileLock",
    "signals": "kipc.sync.signals:",
    "Queue": "kipc.queues:Queue",
    "JoinableQueue": "kipc.queues:JoinableQueue",
    "SimpleQueue": "kipc.queues:SimpleQueue",
    "Topic": "kipc.transports.nats:Topic",
    "KV": "kipc.transports.nats:KV",
    "remove": "kipc.admin:remove",
    "wait": "kipc._waiting:wait",
    "Server": "kipc.reqrep:Server",
    "Client": "kipc.reqrep:Client",
    "testing": "kipc.testing:",
}

__all__ = [
    "AlreadyExists",
    "BadObject",
    "Channel",
    "ChannelClosed",
    "Deadline",
    "InvalidArgument",
    "KipcError",
    "LimitExceeded",
    "Listener",
    "MessageTooLarge",
    "NotFound",
    "PeerGone",
    "PermissionDenied",
    "ProtocolError",
    "Timeout",
    "Unsupported",
    "WouldBlock",
    "get_codec",
    "listen",
    "open",
    "schemes",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'kipc' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    mod = importlib.import_module(module)
    value = getattr(mod, attr) if attr else mod
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
