"""NATS: the kipc channel contract across machines (JetStream work queues), plus Topic and KV.

One module per concern (each opens with its contract card):

* :mod:`.channel` -- ``nats://host:port/name``: :class:`NatsChannel` (a JetStream
  work-queue stream with one shared durable pull consumer; at-least-once,
  acknowledged; a send window and prefetched receives), :class:`Delivery` (ack after
  the handler), core request/reply (:class:`Request`, :class:`Requests`), the object ``KIND``.
* :mod:`.topic` -- :class:`Topic`: fan-out on a core NATS subject (at most once).
* :mod:`.kv` -- :class:`KV`: a JetStream key-value bucket (compare-and-set, watch).
* :mod:`._client` -- one nats-py connection per object: URL/option parsing,
  credentials and TLS, error translation, calls into the loop thread.
* :mod:`._runtime` -- the process's background asyncio loop thread (fork, atexit).
* :mod:`._mailbox` -- batched hand-off between that loop and callers (no thread hop per message).
* :mod:`._cancel` -- the contract's cancellation rules for I/O on that loop (timed sends).
* :mod:`._driven` -- a private loop run by the threads that need it, with a watchdog
  (no thread crossing), under :mod:`._responder` (``requests()``) and :mod:`._requester`
  (sync ``request()``, ``request_conn="own"``, the default); :mod:`._direct` is the
  per-thread connection of ``request_conn="thread"``.

Only ``nats://`` is a registered scheme (``kipc.open`` gives a channel); Topic
and KV are opened by class (``kipc.Topic(url)``, ``kipc.KV(url)``).
"""


from __future__ import annotations

try:
    import nats  # noqa: F401  (the gate: a clear message when the extra is missing)
except ImportError as _e:  # pragma: no cover - the extra is not installed
    raise ImportError("nats:// channels need nats-py: pip install 'kipc[nats]'") from _e

from .channel import KIND, Delivery, NatsChannel, Request, Requests
from .kv import KV, KVEvent, KVWatch
from .topic import Topic

__all__ = ["KIND", "KV", "Delivery", "KVEvent", "KVWatch", "NatsChannel", "Request", "Requests", "Topic"]
