"""Reading the audit shards other gateway instances write (``gateway.audit.reader``) and the
auditor console's view of every shard (``gateway.console._shards``), on PostgreSQL: the reader
proves what the writer proves and cannot write; the merged newest-first list pages through two
shards with a cursor per shard without skipping or repeating an entry; charts sum the shards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from fedgate.audit_entry import RequestLeg
from fedgate.checkpoint import parse_checkpoint
from fedgate.errors import AuditUnavailable, InvalidArgument, NotFound
from fedgate.merkle import verify_inclusion
from fedgate.note import parse_note
from gateway.audit.insights import LogInsights, PgShard
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase, open_pg_store
from gateway.audit.reader import ShardReader
from gateway.audit.store import SearchQuery
from gateway.console._shards import Shard, Shards, shard_key
from gateway.console._state import LogWatch
from tests.gateway.audit.test_insights_pg import ALL, T0, entries

if TYPE_CHECKING:
    from conftest import Fed, PgTarget

HOME = "fedgate.test/gateway/shard-0"
OTHER = "fedgate.test/gateway/shard-1"


@dataclass
class Two:
    home: AuditLog
    other: AuditLog
    shards: Shards
    pg: PgTarget


@pytest_asyncio.fixture
async def two(tmp_path: Path, fed: Fed, pg: PgTarget) -> AsyncIterator[Two]:
    logs = [
        await AuditLog.open(
            store=await open_pg_store(
                pg.dsn, origin=origin, schema=pg.schema, state_path=tmp_path / f"{n}.state"
            ),
            origin=origin,
            signer=fed.log_signer(origin),
        )
        for n, origin in enumerate((HOME, OTHER))
    ]
    insights: LogInsights | None = None
    shards: Shards | None = None
    try:
        for seed, log in enumerate(logs):
            for entry in entries(seed=20 + seed, count=45 + 10 * seed):
                await log.append(entry)
        home = PgShard(pg.dsn, HOME, pg.schema)
        insights = await LogInsights.open(home)
        watch = LogWatch(
            log=logs[0], insights=insights, registry=lambda: fed.registry, state_dir=tmp_path
        )
        shards = Shards(
            home=Shard("", logs[0], insights, watch),
            source=home,
            registry=lambda: fed.registry,
            state_dir=tmp_path,
            clock=None,
        )
        yield Two(logs[0], logs[1], shards, pg)
    finally:
        if shards is not None:
            await shards.close()
        if insights is not None:
            await insights.close()
        for log in logs:
            await log.close()


class TestShardReader:
    async def test_it_proves_what_the_writer_proves(self, two: Two) -> None:
        writer = two.other
        reader = await ShardReader.open(two.pg.dsn, origin=OTHER, schema=two.pg.schema)
        try:
            assert (reader.origin, reader.size) == (OTHER, writer.size)
            assert reader.latest_checkpoint() == writer.latest_checkpoint()
            note = parse_note(reader.latest_checkpoint()).text
            root = parse_checkpoint(note).root_hash
            for index in (0, 7, writer.size - 1):
                assert reader.leaf_hash(index) == writer.leaf_hash(index)
                assert await reader.get_entry(index) == await writer.get_entry(index)
                proof = reader.inclusion_proof(index, reader.size)
                assert proof == writer.inclusion_proof(index, writer.size)
                verify_inclusion(reader.leaf_hash(index), index, reader.size, proof, root)
            assert reader.consistency_proof(3, reader.size) == writer.consistency_proof(
                3, writer.size
            )
            with pytest.raises(NotFound, match="no entry"):
                await reader.get_entry(reader.size)
            # The writer goes on; the reader sees it once it reloads.
            for entry in entries(seed=99, count=5):
                await writer.append(entry)
            await reader.refresh(force=True)
            assert reader.size == writer.size
            assert reader.latest_checkpoint() == writer.latest_checkpoint()
        finally:
            await reader.close()

    async def test_no_such_shard(self, two: Two) -> None:
        with pytest.raises(AuditUnavailable, match="no audit shard"):
            await ShardReader.open(two.pg.dsn, origin="nobody/shard", schema=two.pg.schema)

    async def test_a_reader_cannot_write(self, two: Two) -> None:
        db = PgDatabase(two.pg.dsn, origin=OTHER, schema=two.pg.schema, writer=False)
        try:
            with pytest.raises(AuditUnavailable, match="read-only"):
                db.add_cosigned(1, two.other.latest_checkpoint())
        finally:
            db.close()


class TestShards:
    @pytest.mark.parametrize(
        ("method", "page"),
        [
            ("newest", lambda s: s.newest(SearchQuery(), cursor={}, leg=0, page=20)),
            ("per_day", lambda s: s.per_day(ALL, "action")),
            ("refusals", lambda s: s.refusals(ALL)),
            ("officer_days", lambda s: s.officer_days(ALL, ["account_holder"])),
            ("refusal_days", lambda s: s.refusal_days(ALL, minimum=3)),
            (
                "without_order",
                lambda s: s.without_order(ALL, queries=["a"], orders=["b"], within_us=1),
            ),
        ],
    )
    async def test_a_failing_shard_fails_the_page_and_stops_its_siblings(
        self,
        two: Two,
        monkeypatch: pytest.MonkeyPatch,
        method: str,
        page: Callable[[Shards], Awaitable[object]],
    ) -> None:
        """The other shard's read fails while this instance's still runs (as one waiting for
        its rollups does): the page raises ``AuditUnavailable`` itself, and by then this
        instance's read is cancelled and over, not left running."""
        await two.shards.every()
        home = two.shards.home.insights
        other = two.shards.others[shard_key(OTHER)].insights
        started = asyncio.Event()
        ended: list[str] = []

        async def held(*args: object, **kwargs: object) -> object:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise
            return []

        async def failing(*args: object, **kwargs: object) -> object:
            await started.wait()
            raise AuditUnavailable("shard-1 is unreachable (injected)")

        monkeypatch.setattr(home, method, held)
        monkeypatch.setattr(other, method, failing)
        before = asyncio.all_tasks()
        with pytest.raises(AuditUnavailable, match="injected"):
            await page(two.shards)
        assert ended == ["cancelled"]
        assert asyncio.all_tasks() <= before

    async def test_every_shard_is_found(self, two: Two) -> None:
        shards = await two.shards.every()
        assert [s.origin for s in shards] == [HOME, OTHER]
        assert [s.key for s in shards] == ["", shard_key(OTHER)]
        assert (await two.shards.shard(shard_key(OTHER))).log.size == two.other.size
        with pytest.raises(NotFound, match="no audit shard"):
            await two.shards.shard("0123456789")

    async def test_pages_cover_every_entry_of_both_shards_once(self, two: Two) -> None:
        seen: list[tuple[str, int]] = []
        cursor: dict[str, int] = {}
        pages = 0
        while True:
            hits, following = await two.shards.newest(SearchQuery(), cursor=cursor, leg=0, page=7)
            assert len(hits) <= 7
            seen += [(h.shard.origin, h.row.index) for h in hits]
            pages += 1
            if following is None:
                break
            # The cursor goes through the URL and back.
            cursor = two.shards.parse_cursor(two.shards.cursor_values(following))
            assert pages < 100
        assert len(seen) == len(set(seen))
        expected = {(HOME, i) for i in range(two.home.size)} | {
            (OTHER, i) for i in range(two.other.size)
        }
        assert set(seen) == expected
        for origin in (HOME, OTHER):
            mine = [i for o, i in seen if o == origin]
            assert mine == sorted(mine, reverse=True)  # each shard newest first

    async def test_a_page_is_merged_by_time(self, two: Two) -> None:
        hits, _ = await two.shards.newest(SearchQuery(), cursor={}, leg=0, page=20)
        assert {h.shard.origin for h in hits} == {HOME, OTHER}

    async def test_a_bad_cursor_names_the_field(self, two: Two) -> None:
        for value in ("x", "12@" + "k" * 30, "-1"):
            with pytest.raises(InvalidArgument, match="before"):
                two.shards.parse_cursor([value])

    async def test_charts_sum_the_shards(self, two: Two) -> None:
        await two.shards.every()
        other = two.shards.others[shard_key(OTHER)].insights
        home = two.shards.home.insights
        for by in ("requester", "action"):
            expected: dict[tuple[object, str], int] = {}
            for insights in (home, other):
                for row in await insights.per_day(ALL, by):
                    key = (row.day, row.key)
                    expected[key] = expected.get(key, 0) + row.count
            merged = await two.shards.per_day(ALL, by)
            assert {(r.day, r.key): r.count for r in merged} == expected
        refusals = await two.shards.refusals(ALL)
        total = 0
        for insights in (home, other):
            total += sum(r.count for r in await insights.refusals(ALL))
        assert sum(r.count for r in refusals) == total > 0

    async def test_refusals_of_one_officer_day_count_across_shards(self, two: Two) -> None:
        at = T0 + timedelta(days=3, hours=2)
        for n, log in enumerate((two.home, two.other, two.home, two.other)):
            await log.append(
                RequestLeg(
                    envelope=b"",
                    peer="police.gd.afc",
                    peer_cert_sha256="",
                    received_at=at + timedelta(minutes=n),
                    decision="refused",
                    rule="POLICY_DENIED: no",
                    request_id=f"refused-{n}",
                    requesting_agency="police.gd.afc",
                    officer_id="refused-often",
                    case_number="A9",
                    action="account_holder",
                    target_agency="bank.icbc",
                )
            )
        await two.shards.every()
        for shard in two.shards.all:
            alone = await shard.insights.refusal_days(ALL, minimum=3)
            assert "refused-often" not in {r.officer_id for r in alone}
        merged = await two.shards.refusal_days(ALL, minimum=3)
        (flagged,) = [r for r in merged if r.officer_id == "refused-often"]
        assert flagged.count == 4
        assert flagged.origin in (HOME, OTHER)
