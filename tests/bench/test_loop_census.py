"""``bench._loop_census``: what it counts, and only while on."""

from __future__ import annotations

import asyncio
import threading

from bench._loop_census import LoopCensus


async def _child() -> int:
    await asyncio.sleep(0)
    return 1


class TestLoopCensus:
    async def test_counts_each_kind_of_operation_while_on(self) -> None:
        loop = asyncio.get_running_loop()
        census = LoopCensus(loop)
        await loop.create_task(_child())  # not counted: off
        assert census.take() == {}

        census.on = True
        assert await loop.create_task(_child()) == 1
        future = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(future.set_result, 2)).start()
        assert await future == 2
        await asyncio.sleep(0.001)  # a timer
        census.on = False
        loop.create_future()  # not counted: off again
        counts = census.take()

        assert counts["tasks"] == 1
        assert counts["  task _child"] == 1
        assert counts["futures (loop.create_future)"] >= 2  # ours and asyncio.sleep's
        assert counts["wake-ups from other threads (call_soon_threadsafe)"] == 1
        assert counts["timers (call_at / call_later)"] == 1
        assert counts["callbacks scheduled (call_soon)"] >= 3  # task steps and wake-ups
        assert counts["loop iterations"] >= 3
        assert census.take() == {}  # reset
