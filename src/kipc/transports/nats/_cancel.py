"""Cancellation without loss (the channel contract's asyncio rule) for I/O that runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..._base import Deadline
from ...errors import (
    KipcError,
)
from ._client import _translate

T = TypeVar("T")

async def _keep_on_cancel(ch: Any, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` (a receive) on the channel's loop thread. If the caller is cancelled, the
    receive goes on there as the channel's *orphan*: the next recv/arecv waits for it first and
    returns its message, so a pulled (and acked) message is neither lost nor reordered."""
    assert ch._runner is not None
    if asyncio.get_running_loop() is ch._runner.loop:
        return await coro
    cf = ch._runner.submit(coro)
    try:
        return await asyncio.shield(asyncio.wrap_future(cf))
    except asyncio.CancelledError:
        ch._orphan = cf
        raise
    except (KipcError, RuntimeError):
        raise
    except Exception as e:
        raise _translate(e, ch.url, "operation on") from e


_NOTHING = object()


def _adopt_orphan(ch: Any, deadline: Deadline) -> Any:
    """Sync side of :func:`_keep_on_cancel`: the orphan's message, or _NOTHING if it failed."""
    cf, ch._orphan = ch._orphan, None
    try:
        return cf.result(deadline.remaining())
    except concurrent.futures.TimeoutError:
        ch._orphan = cf  # still the pending receive: the next call waits for it again
        raise deadline.error(f"recv on {ch.url}") from None
    except BaseException:
        return _NOTHING  # that receive ended without a message: receive afresh


async def _aadopt_orphan(ch: Any, deadline: Deadline) -> Any:
    cf, ch._orphan = ch._orphan, None
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(cf)), deadline.remaining())
    except asyncio.CancelledError:
        ch._orphan = cf  # cancelled again: still the pending receive
        raise
    except TimeoutError:
        ch._orphan = cf
        raise deadline.error(f"recv on {ch.url}") from None
    except Exception:
        return _NOTHING


async def _uncancellable_publish(ch: Any, coro: Coroutine[Any, Any, None]) -> None:
    """Await a publish on the loop thread. A message handed to the server cannot be taken back,
    so a cancellation that arrives while the publish runs waits for it: if it went out, asend
    returns normally (the caller sees it sent); if it failed, CancelledError is raised."""
    assert ch._runner is not None
    if asyncio.get_running_loop() is ch._runner.loop:
        return await coro
    cf = ch._runner.submit(coro)
    inner = asyncio.wrap_future(cf)
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        if cf.cancel():
            raise  # not started: nothing was sent
        try:
            await asyncio.wait_for(asyncio.shield(inner), 30)
        except Exception:
            raise asyncio.CancelledError from None
        return  # it was sent: report the truth rather than a cancellation
    except (KipcError, RuntimeError):
        raise
    except Exception as e:
        raise _translate(e, ch.url, "operation on") from e
