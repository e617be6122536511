"""Real nats-server fixtures for tests: re-exported from :mod:`kipc._nats_server`.

The server runner lives outside the test package because ``kipc tour`` and ``kipc bench``
start a local server too (production code must not import ``kipc.testing``).
"""

from __future__ import annotations

from .._nats_server import NatsCluster, NatsServer, free_port, nats_cluster, nats_server, server_binary

__all__ = ["NatsCluster", "NatsServer", "free_port", "nats_cluster", "nats_server", "server_binary"]
