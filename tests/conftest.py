"""Shared fixtures: a namespace per test and a leak check after it.

Every test gets its own ``KIPC_TEST_NS`` (inherited by child processes), and
fails if any IPC object whose name contains it (or a SysV key handed out by
``kipc.testing.unique_key()``) is left when the test ends.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from kipc import testing


@pytest.fixture(autouse=True)
def kipc_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    ns = f"kipct{secrets.token_hex(4)}"
    old = os.environ.get("KIPC_TEST_NS")
    os.environ["KIPC_TEST_NS"] = ns
    checker = testing.LeakChecker(ns)
    try:
        yield ns
    finally:
        if old is None:
            os.environ.pop("KIPC_TEST_NS", None)
        else:
            os.environ["KIPC_TEST_NS"] = old
    left = checker.leftovers()
    testing._issued_keys.clear()
    if left:
        pytest.fail(f"test left IPC objects behind: {left}", pytrace=False)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream for the whole session."""
    with testing.nats_server() as server:
        yield server.url
