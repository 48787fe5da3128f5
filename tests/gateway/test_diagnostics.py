"""The tail diagnostics (``gateway.diagnostics``): loop stalls with what the loop ran, and the
stage times of each request. A configured gateway's marks are tested in test_telemetry."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from gateway.diagnostics import LoopWatch, StageClock


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking call on the event loop does


class TestLoopWatch:
    async def test_a_blocked_loop_is_recorded_with_what_it_ran(self) -> None:
        watch = LoopWatch(threshold_s=0.02)
        watch.start()
        try:
            await asyncio.sleep(0.05)
            _hold_the_loop(0.4)
            await asyncio.sleep(0.05)
        finally:
            await watch.stop()
        assert watch.count >= 1
        longest = watch.stalls()[0]
        assert longest.lag_s >= 0.2
        assert any("_hold_the_loop" in frame for frame in longest.stack)
        assert longest.cpu_s < longest.lag_s / 2  # it slept: held, but not running

    async def test_stop_removes_the_collector_hook_and_clear_forgets(self) -> None:
        watch = LoopWatch(threshold_s=0.02)
        watch.start()
        watch.start()  # idempotent
        _hold_the_loop(0.1)
        await asyncio.sleep(0.05)
        await watch.stop()
        await watch.stop()
        assert watch._on_gc not in gc.callbacks
        assert watch.count >= 1
        watch.clear()
        assert (watch.count, watch.stalls(), list(watch.gc_pauses)) == (0, [], [])

    async def test_a_stall_counts_the_collections_inside_it(self) -> None:
        watch = LoopWatch(threshold_s=0.02)
        watch.start()
        try:
            await asyncio.sleep(0.05)
            gc.collect()  # as a young collection does, on whatever frame allocates
            _hold_the_loop(0.1)
            await asyncio.sleep(0.05)
        finally:
            await watch.stop()
        longest = watch.stalls()[0]
        assert longest.lag_s >= 0.1
        assert 0 < longest.gc_s < longest.lag_s

    def test_the_threshold_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="threshold_s must be positive"):
            LoopWatch(threshold_s=0)


class TestStageClock:
    async def test_stages_marked_in_another_task_belong_to_the_request(self) -> None:
        clock = StageClock()

        async def request(name: str) -> None:
            started = time.perf_counter()
            token = clock.begin()
            clock.mark("first")

            async def exchange() -> None:  # as the pipeline's stages 8-12 run
                clock.mark("second")
                await asyncio.sleep(0)
                clock.mark(name)

            await asyncio.get_running_loop().create_task(exchange())
            clock.end(token, started)

        await asyncio.gather(request("third"), request("last"))
        clock.mark("outside")  # no request open: nothing recorded
        done = clock.all()
        assert len(done) == len(clock) == 2
        assert sorted(tuple(name for name, _ in d.stages) for d in done) == [
            ("first", "second", "last"),
            ("first", "second", "third"),
        ]
        for d in done:
            assert sum(seconds for _, seconds in d.stages) <= d.total_s

    async def test_a_finished_request_is_not_tracked_by_the_collector_once_it_was_seen(
        self,
    ) -> None:
        clock = StageClock()
        started = time.perf_counter()
        token = clock.begin()
        clock.mark("only")
        clock.end(token, started)
        gc.collect(0)
        assert not gc.is_tracked(clock._done[0])  # it never lengthens an older generation's pass
        assert [d.stages[0][0] for d in clock.all()] == ["only"]

    async def test_slowest_share_is_at_least_one_and_slowest_first(self) -> None:
        clock = StageClock()
        for pause in (0.0, 0.03, 0.0, 0.0):
            started = time.perf_counter()
            token = clock.begin()
            clock.mark("only")
            await asyncio.sleep(pause)
            clock.end(token, started)
        slowest = clock.slowest(0.01)
        assert len(slowest) == 1
        assert slowest[0].total_s == max(d.total_s for d in clock.all())
        assert len(clock.slowest(1.0)) == 4
        with pytest.raises(ValueError, match="share"):
            clock.slowest(0)
