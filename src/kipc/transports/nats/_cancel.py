"""Cancellation without loss (the channel contract's asyncio rule) for I/O that runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
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


async def _uncancellable_publish(ch: Any, make: Callable[[list[bool]], Coroutine[Any, Any, None]]) -> None:
    """Await a publish on the loop thread. A message handed to the server cannot be taken back,
    so a cancellation decides *on the loop thread*: if the publish has not started (``started[0]``
    is still False, set by the coroutine right before it hands the message over), its task is
    cancelled there and then -- nothing was sent, CancelledError; if it has started, asend waits
    for it and returns normally (the caller sees it sent), or raises CancelledError if it failed."""
    runner = ch._runner
    assert runner is not None
    started = [False]
    if asyncio.get_running_loop() is runner.loop:
        return await make(started)
    tasks: list[asyncio.Task[None]] = []
    abandoned = [False]  # set by decide(): the caller was told "nothing sent"

    async def run() -> None:
        if abandoned[0]:
            # decided before this task's first step: cf.cancel() cancels the task only after that
            # step has run, and one step is enough to put the message on the wire
            return
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await make(started)

    cf = runner.submit(run())
    inner = asyncio.wrap_future(cf)
    try:
        await asyncio.shield(inner)
    except asyncio.CancelledError:
        verdict: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def decide() -> None:  # on the loop thread: nothing else moves the publish meanwhile
            if not started[0]:
                abandoned[0] = True
                for t in tasks:
                    t.cancel()  # it is suspended before the publish: it never reaches it
                if not tasks:
                    cf.cancel()  # not even started running
                verdict.set_result(False)
            else:
                verdict.set_result(True)

        runner.loop.call_soon_threadsafe(decide)
        if not await asyncio.wrap_future(verdict):
            raise
        try:
            await asyncio.wait_for(asyncio.shield(inner), 30)
        except Exception:
            raise asyncio.CancelledError from None
        return  # it was sent: report the truth rather than a cancellation
    except (KipcError, RuntimeError):
        raise
    except Exception as e:
        raise _translate(e, ch.url, "operation on") from e
