"""Tests for gateway.replay: freshness, replays refused (also after a restart and under races)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedgate.actions import new_request_id
from fedgate.errors import AuditUnavailable, FedgateError, PolicyDenied, Replayed, Stale
from gateway.replay import MemoryReplayCache, ReplayCache, describe_span
from gateway.retries import RecordedOutcome

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
SKEW = timedelta(minutes=5)
WINDOW = timedelta(minutes=10)


def rid() -> str:
    return new_request_id(int(NOW.timestamp() * 1000))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "replay.sqlite"


@pytest.fixture(params=["sqlite", "memory"])
def cache(path: Path, request: pytest.FixtureRequest) -> Iterator[ReplayCache]:
    """Both caches keep the same contract; only the SQLite one survives a restart by itself."""
    c: ReplayCache | MemoryReplayCache
    if request.param == "sqlite":
        c = ReplayCache.open(path, window=WINDOW)
    else:
        c = MemoryReplayCache(window=WINDOW)
    yield c  # type: ignore[misc]
    c.close()


class TestFreshness:
    @pytest.mark.parametrize("offset", [timedelta(0), SKEW, -SKEW, timedelta(seconds=-299)])
    def test_within_the_skew(self, cache: ReplayCache, offset: timedelta) -> None:
        cache.check_freshness(NOW + offset, now=NOW, skew=SKEW)

    def test_too_old(self, cache: ReplayCache) -> None:
        issued = NOW - timedelta(minutes=7, seconds=12)
        with pytest.raises(Stale, match=r"^issued_at is 7m12s in the past; allowed skew is 5m$"):
            cache.check_freshness(issued, now=NOW, skew=SKEW)

    def test_too_new(self, cache: ReplayCache) -> None:
        issued = NOW + timedelta(minutes=6)
        with pytest.raises(Stale, match=r"^issued_at is 6m in the future; allowed skew is 5m$"):
            cache.check_freshness(issued, now=NOW, skew=SKEW)

    def test_just_past_the_skew(self, cache: ReplayCache) -> None:
        with pytest.raises(Stale, match="in the past"):
            cache.check_freshness(NOW - SKEW - timedelta(microseconds=1), now=NOW, skew=SKEW)

    def test_a_skew_beyond_the_window_is_refused(self, cache: ReplayCache) -> None:
        with pytest.raises(ValueError, match="exceeds the replay window"):
            cache.check_freshness(NOW, now=NOW, skew=WINDOW + timedelta(seconds=1))

    @pytest.mark.parametrize(
        ("span", "text"),
        [
            (timedelta(minutes=7, seconds=12), "7m12s"),
            (timedelta(minutes=5), "5m"),
            (timedelta(hours=2, minutes=3, seconds=4), "2h3m"),
            (timedelta(days=1, hours=2), "1d2h"),
            (timedelta(seconds=40), "40s"),
            (timedelta(milliseconds=500), "0.5s"),
            (-timedelta(minutes=6), "6m"),
        ],
    )
    def test_describe_span(self, span: timedelta, text: str) -> None:
        assert describe_span(span) == text


class TestReplay:
    def test_a_new_request_passes_and_its_replay_is_refused(self, cache: ReplayCache) -> None:
        request_id, nonce = rid(), os.urandom(16)
        cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        with pytest.raises(Replayed, match=rf"^request id {request_id} and its nonce were"):
            cache.check_and_remember(request_id, nonce, NOW, now=NOW + timedelta(seconds=1))

    def test_a_reused_request_id_is_named(self, cache: ReplayCache) -> None:
        request_id = rid()
        cache.check_and_remember(request_id, os.urandom(16), NOW, now=NOW)
        with pytest.raises(Replayed, match=rf"^request id {request_id} was already used$"):
            cache.check_and_remember(request_id, os.urandom(16), NOW, now=NOW)

    def test_a_reused_nonce_is_named(self, cache: ReplayCache) -> None:
        nonce = os.urandom(16)
        cache.check_and_remember(rid(), nonce, NOW, now=NOW)
        other = rid()
        with pytest.raises(Replayed, match=rf"^the nonce of request {other} was already used"):
            cache.check_and_remember(other, nonce, NOW, now=NOW)

    def test_a_refused_request_leaves_nothing_behind(self, cache: ReplayCache) -> None:
        nonce = os.urandom(16)
        cache.check_and_remember(rid(), nonce, NOW, now=NOW)
        other = rid()
        with pytest.raises(Replayed):
            cache.check_and_remember(other, nonce, NOW, now=NOW)
        cache.check_and_remember(other, os.urandom(16), NOW, now=NOW)  # its id was not kept

    def test_replay_refused_after_a_restart(self, path: Path) -> None:
        request_id, nonce = rid(), os.urandom(16)
        first = ReplayCache.open(path, window=WINDOW)
        first.check_and_remember(request_id, nonce, NOW, now=NOW)
        first.close()
        again = ReplayCache.open(path, window=WINDOW)
        try:
            with pytest.raises(Replayed, match="request id"):
                again.check_and_remember(request_id, nonce, NOW, now=NOW + timedelta(minutes=1))
        finally:
            again.close()

    def test_older_than_the_window_is_stale_not_remembered(self, cache: ReplayCache) -> None:
        with pytest.raises(Stale, match="older than the replay window"):
            cache.check_and_remember(
                rid(), os.urandom(16), NOW - WINDOW - timedelta(seconds=1), now=NOW
            )
        assert cache.stored_keys() == 0

    def test_entries_are_kept_for_the_window_then_pruned(self, cache: ReplayCache) -> None:
        request_id, nonce = rid(), os.urandom(16)
        cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        late = NOW + WINDOW - timedelta(seconds=1)
        with pytest.raises(Replayed):
            cache.check_and_remember(request_id, nonce, NOW, now=late)
        cache.check_and_remember(rid(), os.urandom(16), late, now=late)
        assert cache.stored_keys() == 4
        after = NOW + WINDOW + timedelta(seconds=31)
        cache.check_and_remember(rid(), os.urandom(16), after, now=after)
        assert cache.stored_keys() == 4  # the first pair is gone, two pairs remain

    def test_a_closed_cache_fails_closed(self, path: Path) -> None:
        c = ReplayCache.open(path, window=WINDOW)
        c.close()
        with pytest.raises(AuditUnavailable, match="replay cache unavailable"):
            c.check_and_remember(rid(), os.urandom(16), NOW, now=NOW)

    def test_an_unopenable_path_fails_closed(self, tmp_path: Path) -> None:
        (tmp_path / "dir.sqlite").mkdir()
        with pytest.raises(AuditUnavailable, match="cannot open the replay cache"):
            ReplayCache.open(tmp_path / "dir.sqlite")

    def test_synchronous_must_be_full_or_normal(self, path: Path) -> None:
        with pytest.raises(ValueError, match="FULL or NORMAL"):
            ReplayCache.open(path, synchronous="OFF")  # type: ignore[arg-type]


def race(calls: list[tuple[ReplayCache, str, bytes]]) -> list[FedgateError | None]:
    """Run every call at once from its own thread; the error (or None) of each."""
    barrier = threading.Barrier(len(calls))
    results: list[FedgateError | None] = [None] * len(calls)

    def run(i: int, cache: ReplayCache, request_id: str, nonce: bytes) -> None:
        barrier.wait()
        try:
            cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        except FedgateError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, *call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class TestConcurrency:
    def test_identical_concurrent_requests_exactly_one_passes(self, cache: ReplayCache) -> None:
        for _ in range(5):
            request_id, nonce = rid(), os.urandom(16)
            results = race([(cache, request_id, nonce)] * 16)
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, Replayed) for r in results if r is not None)
        assert cache.stored_keys() == 2 * 5

    def test_distinct_concurrent_requests_all_pass(self, cache: ReplayCache) -> None:
        calls = [(cache, rid(), os.urandom(16)) for _ in range(32)]
        assert race(calls) == [None] * 32
        assert cache.stored_keys() == 64

    def test_two_caches_on_one_file_agree(self, path: Path) -> None:
        a, b = ReplayCache.open(path, window=WINDOW), ReplayCache.open(path, window=WINDOW)
        try:
            request_id, nonce = rid(), os.urandom(16)
            results = race([(a, request_id, nonce), (b, request_id, nonce)] * 4)
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, Replayed) for r in results if r is not None)
        finally:
            a.close()
            b.close()


class TestRememberOnTheEventLoop:
    """``remember``: the same contract as ``check_and_remember``, one commit job per batch."""

    async def test_identical_concurrent_requests_exactly_one_passes(
        self, cache: ReplayCache
    ) -> None:
        request_id, nonce = rid(), os.urandom(16)
        results = await asyncio.gather(
            *(cache.remember(request_id, nonce, NOW, now=NOW) for _ in range(16)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, Replayed) for r in results if r is not None)
        assert cache.stored_keys() == 2

    async def test_distinct_concurrent_requests_all_pass_and_survive_a_restart(
        self, path: Path
    ) -> None:
        cache = ReplayCache.open(path, window=WINDOW)
        calls = [(rid(), os.urandom(16)) for _ in range(32)]
        results = await asyncio.gather(
            *(cache.remember(r, n, NOW, now=NOW) for r, n in calls), return_exceptions=True
        )
        assert results == [None] * 32
        cache.close()
        reopened = ReplayCache.open(path, window=WINDOW)
        try:
            with pytest.raises(Replayed, match="already used"):
                await reopened.remember(calls[7][0], calls[7][1], NOW, now=NOW)
        finally:
            reopened.close()

    async def test_it_agrees_with_synchronous_callers(self, cache: ReplayCache) -> None:
        request_id, nonce = rid(), os.urandom(16)
        cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        with pytest.raises(Replayed, match=f"request id {request_id} and its nonce"):
            await cache.remember(request_id, nonce, NOW, now=NOW)

    async def test_older_than_the_window_is_stale(self, cache: ReplayCache) -> None:
        with pytest.raises(Stale, match="older than the replay window"):
            await cache.remember(rid(), os.urandom(16), NOW - 2 * WINDOW, now=NOW)
        assert cache.stored_keys() == 0

    async def test_a_failing_database_fails_every_caller_closed(self, path: Path) -> None:
        cache = ReplayCache.open(path, window=WINDOW)
        cache._db.close()  # the database goes away under the cache
        results = await asyncio.gather(
            *(cache.remember(rid(), os.urandom(16), NOW, now=NOW) for _ in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, AuditUnavailable) for r in results)
        cache.close()


class TestMemoryCache:
    def test_restore_keeps_the_later_expiry_and_refuses_replays_after(self) -> None:
        from gateway.replay import SeenRequest

        cache = MemoryReplayCache(window=WINDOW)
        request_id, nonce = rid(), os.urandom(16)
        seen = [SeenRequest(request_id=request_id, nonce=nonce, issued_at=NOW)]
        assert cache.restore(seen, now=NOW) == 1
        assert cache.restore(seen, now=NOW) == 1  # idempotent
        assert cache.stored_keys() == 2
        with pytest.raises(Replayed, match=r"request id .* and its nonce"):
            cache.check_and_remember(request_id, nonce, NOW, now=NOW)

    def test_restore_skips_what_has_expired(self) -> None:
        from gateway.replay import SeenRequest

        cache = MemoryReplayCache(window=WINDOW)
        old = NOW - WINDOW - timedelta(seconds=1)
        seen = [SeenRequest(request_id=rid(), nonce=os.urandom(16), issued_at=old)]
        assert cache.restore(seen, now=NOW) == 0
        assert cache.stored_keys() == 0

    def test_expired_requests_are_forgotten_a_few_per_call_without_a_sweep(self) -> None:
        cache = MemoryReplayCache(window=WINDOW)
        for _ in range(100):
            cache.check_and_remember(rid(), os.urandom(16), NOW, now=NOW)
        after = NOW + WINDOW + timedelta(seconds=1)
        held = []
        for _ in range(5):
            cache.check_and_remember(rid(), os.urandom(16), after, now=after)
            held.append(cache.stored_keys())
        # 8 of the 100 expired requests (id and nonce each) go per call, one is added
        assert held == [2 * 93, 2 * 86, 2 * 79, 2 * 72, 2 * 65]

    async def test_held_requests_are_not_walked_by_the_garbage_collector(self) -> None:
        """Hundreds of thousands are held at a time: as tracked objects they made every full
        collection of the gateway walk them all."""
        cache = MemoryReplayCache(window=WINDOW)
        cache.check_and_remember(rid(), os.urandom(16), NOW, now=NOW)
        claimed = rid()
        now_us = int(NOW.timestamp() * 1_000_000)
        expires_us = now_us + int(WINDOW.total_seconds() * 1_000_000)
        await cache.claim(claimed, os.urandom(32), expires_us=expires_us, now_us=now_us)
        await cache.remember(claimed, os.urandom(16), NOW, now=NOW)
        await cache.record(claimed, RecordedOutcome(error=PolicyDenied("no")))
        gc.collect()
        assert len(cache._held) == 2
        assert not any(gc.is_tracked(held) for held in cache._held.values())

    def test_memory_is_bounded_by_one_window(self) -> None:
        cache = MemoryReplayCache(window=WINDOW)
        for minute in range(0, 60, 1):
            at = NOW + timedelta(minutes=minute)
            for _ in range(10):
                cache.check_and_remember(rid(), os.urandom(16), at, now=at)
        # at most one window (10 min) plus one pruning interval of requests are held
        assert cache.stored_keys() <= 2 * 10 * 11

    async def test_the_attempt_that_claimed_an_id_remembers_it_once(self) -> None:
        cache = MemoryReplayCache(window=WINDOW)
        request_id, digest = rid(), os.urandom(32)
        expires_us = int((NOW + WINDOW).timestamp() * 1_000_000)
        now_us = int(NOW.timestamp() * 1_000_000)
        assert await cache.claim(request_id, digest, expires_us=expires_us, now_us=now_us) is None
        await cache.remember(request_id, os.urandom(16), NOW, now=NOW)
        assert cache.stored_keys() == 2  # the id is held once for both
        with pytest.raises(Replayed, match="request id"):
            await cache.remember(request_id, os.urandom(16), NOW, now=NOW)

    def test_a_full_cache_refuses_new_requests_and_forgets_nothing(self) -> None:
        cache = MemoryReplayCache(window=WINDOW, max_requests=3)
        held = [(rid(), os.urandom(16)) for _ in range(3)]
        for request_id, nonce in held:
            cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        with pytest.raises(AuditUnavailable, match="limit of 3 requests"):
            cache.check_and_remember(rid(), os.urandom(16), NOW, now=NOW)
        with pytest.raises(Replayed):
            cache.check_and_remember(*held[0], NOW, now=NOW)
        later = NOW + WINDOW + timedelta(minutes=1)  # the window has passed: room again
        cache.check_and_remember(rid(), os.urandom(16), later, now=later)

    async def test_outcomes_beyond_their_budget_are_forgotten_oldest_first(self) -> None:

        size = len(RecordedOutcome(error=PolicyDenied("no")).encode())
        cache = MemoryReplayCache(window=WINDOW, max_outcome_bytes=2 * size)
        now_us = int(NOW.timestamp() * 1_000_000)
        expires_us = now_us + int(WINDOW.total_seconds() * 1_000_000)
        ids = [rid() for _ in range(3)]
        for request_id in ids:
            await cache.claim(request_id, b"h" * 32, expires_us=expires_us, now_us=now_us)
            await cache.remember(request_id, os.urandom(16), NOW, now=NOW)
            await cache.record(request_id, RecordedOutcome(error=PolicyDenied("no")))
        assert cache.outcome_bytes() == 2 * size
        # the oldest outcome is gone: its retry claims anew and is refused as a replay
        assert await cache.claim(ids[0], b"h" * 32, expires_us=expires_us, now_us=now_us) is None
        with pytest.raises(Replayed):
            await cache.remember(ids[0], os.urandom(16), NOW, now=NOW)
        kept = await cache.claim(ids[2], b"h" * 32, expires_us=expires_us, now_us=now_us)
        assert kept is not None
        assert kept.outcome is not None
        assert isinstance(kept.outcome.error, PolicyDenied)
