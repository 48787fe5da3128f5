"""The shared replay cache on PostgreSQL: several gateway instances refuse each other's replays."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest

from fedgate.actions import new_request_id
from fedgate.errors import AuditUnavailable, FedgateError, Replayed, Stale
from gateway.replay import PgReplayCache, SeenRequest

if TYPE_CHECKING:
    from conftest import PgTarget

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=10)


def rid() -> str:
    return new_request_id(int(NOW.timestamp() * 1000))


@pytest.fixture
def instances(pg: PgTarget) -> Iterator[tuple[PgReplayCache, PgReplayCache]]:
    """Two gateway instances' caches on one database and schema."""
    a = PgReplayCache(dsn=pg.dsn, schema=pg.schema, window=WINDOW)
    b = PgReplayCache(dsn=pg.dsn, schema=pg.schema, window=WINDOW)
    yield a, b
    a.close()
    b.close()


async def _outcome(call: asyncio.Future[None] | object) -> FedgateError | None:
    try:
        await call  # type: ignore[misc]
    except FedgateError as exc:
        return exc
    return None


class TestSharedReplay:
    async def test_a_request_seen_by_one_instance_is_refused_by_the_other(
        self, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, b = instances
        request_id, nonce = rid(), os.urandom(16)
        await a.remember(request_id, nonce, NOW, now=NOW)
        with pytest.raises(Replayed, match=r"request id .* and its nonce were already used"):
            await b.remember(request_id, nonce, NOW, now=NOW)
        with pytest.raises(Replayed, match=r"nonce .* already used by another request"):
            await b.remember(rid(), nonce, NOW, now=NOW)
        with pytest.raises(Replayed, match=r"request id .* was already used$"):
            await a.remember(request_id, os.urandom(16), NOW, now=NOW)

    async def test_one_request_sent_to_two_instances_at_once_runs_once(
        self, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, b = instances
        for _ in range(10):
            request_id, nonce = rid(), os.urandom(16)
            calls = [
                (a if i % 2 else b).remember(request_id, nonce, NOW, now=NOW) for i in range(8)
            ]
            outcomes = await asyncio.gather(*(_outcome(c) for c in calls))
            assert sum(o is None for o in outcomes) == 1
            assert all(isinstance(o, Replayed) for o in outcomes if o is not None)

    async def test_a_refused_request_leaves_nothing_behind(
        self, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, b = instances
        first_id, shared_nonce = rid(), os.urandom(16)
        await a.remember(first_id, shared_nonce, NOW, now=NOW)
        other_id = rid()
        with pytest.raises(Replayed):
            await b.remember(other_id, shared_nonce, NOW, now=NOW)
        await b.remember(other_id, os.urandom(16), NOW, now=NOW)  # its id was not kept

    async def test_distinct_requests_all_pass_and_survive_a_new_instance(
        self, pg: PgTarget, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, b = instances
        pairs = [(rid(), os.urandom(16)) for _ in range(40)]
        await asyncio.gather(
            *((a if i % 2 else b).remember(r, n, NOW, now=NOW) for i, (r, n) in enumerate(pairs))
        )
        assert a.stored_keys() == 80
        again = PgReplayCache(dsn=pg.dsn, schema=pg.schema, window=WINDOW)
        try:
            for request_id, nonce in pairs[:5]:
                with pytest.raises(Replayed):
                    await again.remember(request_id, nonce, NOW, now=NOW)
        finally:
            again.close()

    async def test_stale_and_expired(self, instances: tuple[PgReplayCache, PgReplayCache]) -> None:
        a, b = instances
        with pytest.raises(Stale, match="older than the replay window"):
            await a.remember(rid(), os.urandom(16), NOW - WINDOW - timedelta(seconds=1), now=NOW)
        request_id, nonce = rid(), os.urandom(16)
        await a.remember(request_id, nonce, NOW, now=NOW)
        after = NOW + WINDOW + timedelta(seconds=31)
        await b.remember(rid(), os.urandom(16), after, now=after)  # prunes what expired
        assert a.stored_keys() == 2

    async def test_restore_from_an_audit_shard(
        self, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, b = instances
        request_id, nonce = rid(), os.urandom(16)
        seen = [SeenRequest(request_id=request_id, nonce=nonce, issued_at=NOW)]
        assert a.restore(seen, now=NOW) == 1
        assert a.restore(seen, now=NOW) == 1  # already there: nothing changes
        with pytest.raises(Replayed):
            await b.remember(request_id, nonce, NOW, now=NOW)


class TestFailClosed:
    def test_an_unreachable_database_is_audit_unavailable(self) -> None:
        with pytest.raises(AuditUnavailable, match="shared replay cache unavailable"):
            PgReplayCache(
                dsn="postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",
                schema="nowhere",
                window=WINDOW,
            )

    async def test_a_database_gone_mid_way_fails_the_caller_closed(
        self, pg: PgTarget, instances: tuple[PgReplayCache, PgReplayCache]
    ) -> None:
        a, _ = instances
        await a.remember(rid(), os.urandom(16), NOW, now=NOW)
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND query LIKE %s",
                ("%replay_requests%",),
            )
        with pytest.raises(AuditUnavailable, match="shared replay cache unavailable"):
            await a.remember(rid(), os.urandom(16), NOW, now=NOW)
        await a.remember(rid(), os.urandom(16), NOW, now=NOW)  # a new connection recovers
