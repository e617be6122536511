"""The eager hand-off of nats:// requests and replies (``_mailbox.start_now`` / ``Express``).

``start_now`` runs a coroutine by hand up to its first suspension; one that really waits must
finish exactly as if a Task had run it from the start: results, exceptions and cancellation
delivered, nothing lost. Real asyncio loops, no nats-server needed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kipc.transports.nats._mailbox import Express, start_now


def test_start_now_runs_to_the_first_suspension_then_a_task_finishes_it() -> None:
    async def main() -> None:
        log: list[str] = []

        async def quick() -> None:
            log.append("quick")

        assert start_now(quick()) is None and log == ["quick"]  # finished inside the call, no task
        gate = asyncio.get_running_loop().create_future()

        async def slow() -> int:
            log.append("before")
            await asyncio.sleep(0)  # a bare yield
            value = await gate  # a future
            log.append(f"after {value}")
            return value * 2

        task = start_now(slow())
        assert task is not None and log == ["quick", "before"]  # ran up to the first suspension, now
        await asyncio.sleep(0.01)
        assert not task.done()
        gate.set_result(21)
        assert await task == 42 and log[-1] == "after 21"

        async def fails() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        task = start_now(fails())
        assert task is not None
        with pytest.raises(ValueError, match="boom"):
            await task
        with pytest.raises(KeyError):  # raised before any suspension: straight to the caller
            start_now(_raises_now())

    asyncio.run(main())


async def _raises_now() -> None:
    raise KeyError("now")


def test_start_now_cancellation_reaches_the_coroutine() -> None:
    async def main() -> None:
        cleaned = asyncio.Event()
        never = asyncio.get_running_loop().create_future()

        async def waits() -> None:
            try:
                await never
            finally:
                cleaned.set()

        # cancelled before the task's first step: thrown into the coroutine where it waits
        task = start_now(waits())
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned.is_set()
        # cancelled while the task waits on the future: that future is cancelled, as with any task
        cleaned.clear()
        never = asyncio.get_running_loop().create_future()
        task = start_now(waits())
        assert task is not None
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned.is_set() and never.cancelled()

    asyncio.run(main())


def test_express_batches_kicks_from_threads_and_stop_cancels_waiting_sends() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        sent: list[int] = []
        queue: list[int] = []
        hold = threading.Event()

        async def send() -> None:
            while queue:
                item = queue.pop(0)
                if item < 0:  # this one waits: the rest of the send continues as a task
                    while not hold.is_set():
                        await asyncio.sleep(0.005)
                sent.append(item)

        express = Express(loop, send)

        def producer(base: int) -> None:
            for i in range(200):
                queue.append(base + i)
                express.kick()

        threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end = time.monotonic() + 5
        while len(sent) < 600 and time.monotonic() < end:
            time.sleep(0.005)
        assert sorted(sent) == sorted(k * 1000 + i for k in range(3) for i in range(200))  # each once
        queue.append(-1)
        express.kick()
        time.sleep(0.05)
        assert -1 not in sent  # waiting in a task
        asyncio.run_coroutine_threadsafe(express.stop(), loop).result(5)
        hold.set()
        time.sleep(0.05)
        assert -1 not in sent  # cancelled by stop, never finished
        queue.append(10**6)
        express.kick()  # stopped: nothing runs any more
        time.sleep(0.05)
        assert 10**6 not in sent and queue == [10**6]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
