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

import importlib as _importlib
from typing import TYPE_CHECKING

from ._base import Channel, CreateMode, Deadline, Listener
from .codecs import get_codec
from .errors import (
    AlreadyExists,
    BadObject,
    ChannelClosed,
    DeadlineExceeded,
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
    "RingChannel": "kipc.transports.ring:RingChannel",
    "SysVMessageQueue": "kipc.transports.sysvmq:SysVMessageQueue",
    "PosixMessageQueue": "kipc.transports.posixmq:PosixMessageQueue",
    "FifoChannel": "kipc.transports.fifo:FifoChannel",
    "UnixChannel": "kipc.transports.unix:UnixChannel",
    "UnixListener": "kipc.transports.unix:UnixListener",
    "TcpChannel": "kipc.transports.tcp:TcpChannel",
    "TcpListener": "kipc.transports.tcp:TcpListener",
    "SpoolChannel": "kipc.transports.file:SpoolChannel",
    "PipeChannel": "kipc.transports.pipe:PipeChannel",
    "NatsChannel": "kipc.transports.nats:NatsChannel",
    "Topic": "kipc.topics:Topic",
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
    "CreateMode",
    "Deadline",
    "DeadlineExceeded",
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


# What type checkers see of the lazy names (kept equal to _LAZY by tests/contract/test_typing.py).
if TYPE_CHECKING:
    from . import testing as testing
    from ._waiting import wait as wait
    from .admin import remove as remove
    from .queues import JoinableQueue as JoinableQueue
    from .queues import Queue as Queue
    from .queues import SimpleQueue as SimpleQueue
    from .reqrep import Client as Client
    from .reqrep import Server as Server
    from .shm import SharedMemory as SharedMemory
    from .sync import signals as signals
    from .sync.event import Event as Event
    from .sync.filelock import FileLock as FileLock
    from .sync.lock import Lock as Lock
    from .sync.lock import RLock as RLock
    from .sync.semaphore import Semaphore as Semaphore
    from .topics import Topic as Topic
    from .transports.fifo import FifoChannel as FifoChannel
    from .transports.file import SpoolChannel as SpoolChannel
    from .transports.nats import KV as KV
    from .transports.nats import NatsChannel as NatsChannel
    from .transports.pipe import PipeChannel as PipeChannel
    from .transports.pipe import open_fd as open_fd
    from .transports.pipe import pipe as pipe
    from .transports.posixmq import PosixMessageQueue as PosixMessageQueue
    from .transports.ring import RingChannel as RingChannel
    from .transports.sysvmq import SysVMessageQueue as SysVMessageQueue
    from .transports.tcp import TcpChannel as TcpChannel
    from .transports.tcp import TcpListener as TcpListener
    from .transports.unix import UnixChannel as UnixChannel
    from .transports.unix import UnixListener as UnixListener


def __getattr__(name: str) -> object:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'kipc' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    mod = _importlib.import_module(module)
    value = getattr(mod, attr) if attr else mod
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__"})
