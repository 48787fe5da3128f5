"""``LogInsights`` on a PostgreSQL shard: the same answers as on a SQLite log holding the same
entries (and nothing of another shard in the same schema), read-only, and the auditor console
of a gateway whose shard is in PostgreSQL."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio

from fedgate.audit_entry import AuditEntry, EventEntry, RequestLeg, ResponseLeg, time_to_micros
from fedgate.errors import AuditUnavailable, StoreVersionError
from fedgate.web.auth import Role, ScryptParams, UserStore
from gateway.audit.insights import LogInsights, PgShard, TimeWindow
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import open_pg_store
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import SearchQuery
from gateway.config import (
    AuditConfig,
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
)
from gateway.server import Gateway

if TYPE_CHECKING:
    from conftest import Fed, PgTarget

ORIGIN = "fedgate.test/gateway/shard-0"  # the ``logs`` fixture's
OTHER = "fedgate.test/gateway/shard-other"
T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 China time
ALL = TimeWindow(0, time_to_micros(T0 + timedelta(days=30)))
ACTIONS = ("account_holder", "transactions", "stop_payment", "freeze")
QUERIES, ORDERS = {"account_holder", "transactions"}, {"stop_payment", "freeze"}
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def leg(at: datetime, n: int, rng: random.Random) -> RequestLeg:
    refused = rng.random() < 0.25
    return RequestLeg(
        envelope=b"",
        peer="police.gd.afc",
        peer_cert_sha256="",
        received_at=at,
        decision="refused" if refused else "allowed",
        rule=rng.choice(("POLICY_DENIED: no", "QUOTA_EXCEEDED: slow", "odd", ""))
        if refused
        else "p, allow",
        request_id=f"r{n}",
        requesting_agency=rng.choice(("police.gd.afc", "police.gz.unit", "Police.SZ")),
        officer_id=rng.choice(("440100123", "o1", "O2", "o_3", "")),
        case_number=rng.choice(("A1", "A2", "b3", "")),
        action=rng.choice(ACTIONS),
        target_agency=rng.choice(("bank.icbc", "bank.ccb", "carrier.cmcc")),
        subjects=tuple(rng.sample(("6222020000000000001", "13800000000", "Zz-9", "aa"), 2)),
    )


def entries(seed: int, count: int) -> list[AuditEntry]:
    """``count`` entries over ten days, at every hour (China time), each at its own time."""
    rng = random.Random(seed)
    out: list[AuditEntry] = []
    for n in range(count):
        at = T0 + timedelta(days=rng.randrange(10), hours=rng.randrange(24), seconds=n)
        if out and rng.random() < 0.2 and isinstance(out[-1], RequestLeg):
            status = rng.choice(("ok", "refused"))
            out.append(ResponseLeg(f"r{n - 1}", len(out) - 1, "bank.icbc", at, status, b"", b""))
        elif rng.random() < 0.05:
            out.append(EventEntry("console_login", "audit.wang", "audit.office", at))
        else:
            out.append(leg(at, n, rng))
    return out


@dataclass
class Pair:
    """The same entries in a SQLite log and in a PostgreSQL shard, with insights over each."""

    size: int
    sqlite: LogInsights
    pg: LogInsights


async def _append(log: AuditLog, items: list[AuditEntry]) -> None:
    for item in items:
        await log.append(item)


@pytest_asyncio.fixture
async def pair(tmp_path: Path, fed: Fed, pg: PgTarget) -> AsyncIterator[Pair]:
    same = entries(seed=11, count=160)
    logs = [
        await AuditLog.open(
            store=await open_sqlite_store(tmp_path / "audit.sqlite", origin=ORIGIN),
            origin=ORIGIN,
            signer=fed.log_signer(),
        ),
        await AuditLog.open(
            store=await open_pg_store(
                pg.dsn, origin=ORIGIN, schema=pg.schema, state_path=tmp_path / "pg.state"
            ),
            origin=ORIGIN,
            signer=fed.log_signer(),
        ),
        # Another shard in the same schema: nothing of it may show in ``ORIGIN``'s answers.
        await AuditLog.open(
            store=await open_pg_store(
                pg.dsn, origin=OTHER, schema=pg.schema, state_path=tmp_path / "other.state"
            ),
            origin=OTHER,
            signer=fed.log_signer(OTHER),
        ),
    ]
    insights: list[LogInsights] = []
    try:
        await _append(logs[0], same)
        await _append(logs[1], same)
        await _append(logs[2], entries(seed=12, count=60))
        insights.append(await LogInsights.open(tmp_path / "audit.sqlite"))
        insights.append(await LogInsights.open(PgShard(pg.dsn, ORIGIN, pg.schema)))
        yield Pair(len(same), insights[0], insights[1])
    finally:
        for i in insights:
            await i.close()
        for log in logs:
            await log.close()


class TestSameAnswersAsSqlite:
    async def test_the_newest_first_list(self, pair: Pair) -> None:
        queries = [
            SearchQuery(),
            SearchQuery(limit=7),
            SearchQuery(officer_id="o1"),
            SearchQuery(case_number="A2", outcome="allowed"),
            SearchQuery(action="stop_payment"),
            SearchQuery(subject="aa"),
            SearchQuery(subject="6222020000000000001", member="bank.ccb"),
            SearchQuery(member="police.gz.unit", officer_id="O2"),
            SearchQuery(visible_to="carrier.cmcc"),
            SearchQuery(since_us=time_to_micros(T0 + timedelta(days=2)),
                        until_us=time_to_micros(T0 + timedelta(days=5))),
            SearchQuery(request_id="r17"),
        ]  # fmt: skip
        for query in queries:
            for before, kind in ((None, 0), (pair.size // 2, 0), (None, 1), (None, 2), (None, 3)):
                expected = await pair.sqlite.newest(query, before_index=before, leg=kind)
                found = await pair.pg.newest(query, before_index=before, leg=kind)
                assert found == expected, (query, before, kind)
        assert len(await pair.pg.newest(SearchQuery(limit=500))) == pair.size

    async def test_checkpoints(self, pair: Pair) -> None:
        for size in (0, 1, 2, pair.size // 3, pair.size, pair.size + 5):
            assert await pair.pg.checkpoint_before(size) == await pair.sqlite.checkpoint_before(
                size
            )
        assert await pair.pg.checkpoint_before(pair.size) is not None

    async def test_the_charts(self, pair: Pair) -> None:
        windows = [ALL, TimeWindow(time_to_micros(T0 + timedelta(days=3, hours=5)), ALL.until_us)]
        for window in windows:
            for by in ("requester", "target", "action"):
                expected = await pair.sqlite.per_day(window, by)
                assert expected
                assert await pair.pg.per_day(window, by) == expected
            expected_refusals = await pair.sqlite.refusals(window)
            assert {r.reason for r in expected_refusals} >= {"AGENCY_REFUSED", "UNKNOWN"}
            assert await pair.pg.refusals(window) == expected_refusals

    async def test_the_pattern_flags(self, pair: Pair) -> None:
        days = await pair.sqlite.officer_days(ALL, QUERIES)
        assert days
        assert await pair.pg.officer_days(ALL, QUERIES) == days
        for start, end in ((7, 21), (9, 17), (0, 24)):
            off = await pair.sqlite.off_hours(ALL, ACTIONS, start_hour=start, end_hour=end)
            assert await pair.pg.off_hours(ALL, ACTIONS, start_hour=start, end_hour=end) == off
        for minimum in (1, 2, 3):
            refused = await pair.sqlite.refusal_days(ALL, minimum=minimum)
            assert await pair.pg.refusal_days(ALL, minimum=minimum) == refused
        for days_after in (0, 1, 3, 20):
            within = days_after * 86_400_000_000
            expected = await pair.sqlite.without_order(
                ALL, queries=QUERIES, orders=ORDERS, within_us=within
            )
            found = await pair.pg.without_order(
                ALL, queries=QUERIES, orders=ORDERS, within_us=within
            )
            assert found == expected, days_after
        assert await pair.sqlite.refusal_days(ALL, minimum=1)
        assert await pair.sqlite.without_order(ALL, queries=QUERIES, orders=ORDERS, within_us=1)


class TestOpeningAShard:
    async def test_a_missing_shard_and_an_unreachable_database(self, pg: PgTarget) -> None:
        with pytest.raises(StoreVersionError, match=r"PostgreSQL schema .* is not a fedgate audit"):
            await LogInsights.open(PgShard(pg.dsn, ORIGIN, pg.schema))  # no tables yet
        with pytest.raises(AuditUnavailable, match="PostgreSQL"):
            await LogInsights.open(PgShard("postgresql://nobody@127.0.0.1:1/none", ORIGIN))

    async def test_no_such_origin_and_it_never_writes(self, pair: Pair) -> None:
        assert isinstance(pair.pg.source, PgShard)
        shard = pair.pg.source
        with pytest.raises(AuditUnavailable, match="no audit shard 'nowhere'"):
            await LogInsights.open(PgShard(shard.dsn, "nowhere", shard.schema))
        with pytest.raises(AuditUnavailable, match="read-only transaction"):
            await pair.pg._rows(
                "write", "INSERT INTO checkpoints (origin, size, note) VALUES (%s, 9999, 'x')", ()
            )
        assert "dsn" not in repr(shard)


class TestTheConsoleOfAGatewayOnPostgres:
    async def test_search_charts_and_flags_read_the_shard(
        self, pg: PgTarget, fed_dir: Path, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        users = UserStore.in_state_dir(state)
        users.add_user(
            "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
            password=PASSWORD, params=ScryptParams(n=2**10, r=8, p=1),
        )  # fmt: skip
        users.close()
        config = GatewayConfig(
            federation=FederationConfig(dir=fed_dir, reload_interval_s=0),
            pipeline=PipelineConfig(state_dir=state),
            server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
            audit=AuditConfig(store="postgres", dsn=pg.dsn, schema=pg.schema, origin=ORIGIN),
            console=ConsoleConfig(listen="127.0.0.1:0"),
        )
        gateway = await Gateway.start(config)
        try:
            rng = random.Random(5)
            now = datetime.now(UTC)
            legs = [leg(now - timedelta(minutes=n), n, rng) for n in range(6)]
            for item in legs:
                await gateway.audit.append(item)
            url = gateway.console_url
            assert url is not None
            async with httpx.AsyncClient(base_url=url) as client:
                token = CSRF.search((await client.get("/login")).text)
                assert token
                response = await client.post(
                    "/login",
                    data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD},
                )
                assert response.status_code == 303

                async def hits(query: str) -> list[int]:
                    page = await client.get(f"/?{query}")
                    assert page.status_code == 200, page.text[:300]
                    return [int(i) for i in re.findall(r'id="entry-(\d+)"', page.text)]

                size = gateway.audit.size  # the legs, then the login event
                index = {n: size - 7 + n for n in range(len(legs))}
                assert await hits("kind=request") == sorted(index.values(), reverse=True)
                officer = next(item.officer_id for item in legs if item.officer_id)
                assert await hits(f"officer={officer}&kind=request") == [
                    index[n] for n in reversed(range(len(legs))) if legs[n].officer_id == officer
                ]
                assert (await hits("kind=event"))[0] == size - 1
                for path in ("/charts", "/flags", "/log"):
                    assert (await client.get(path)).status_code == 200, path
        finally:
            await gateway.stop(0)
