"""``LogInsights``: newest-first pages and SQL aggregates over a real SQLite audit shard."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fedgate.audit_entry import EventEntry, RequestLeg, ResponseLeg, time_to_micros
from fedgate.errors import AuditUnavailable, InvalidArgument, StoreVersionError
from fedgate.web.text import BEIJING
from gateway.audit import _catch_up as catch_up_module
from gateway.audit import insights as insights_module
from gateway.audit.insights import (
    CaseWithoutOrder,
    LogInsights,
    PgShard,
    TimeWindow,
    day_of,
    day_start_us,
)
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery

if TYPE_CHECKING:
    from conftest import LogFactory

ORIGIN_OF_LOGS = "fedgate.test/gateway/shard-0"
T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 China time
ALL = TimeWindow(0, time_to_micros(T0 + timedelta(days=30)))


def _source(logs: LogFactory) -> Path | PgShard:
    """What the console opens insights over for the log ``logs`` made: its file or its shard."""
    if logs.kind == "sqlite":
        return logs.db
    assert logs.pg is not None
    return PgShard(logs.pg.dsn, ORIGIN_OF_LOGS, logs.pg.schema)


def leg(
    at: datetime,
    *,
    officer: str = "440100123",
    member: str = "police.gd.afc",
    action: str = "account_holder",
    case: str = "A1",
    decision: str = "allowed",
    rule: str = "p, allow",
    target: str = "bank.icbc",
    subjects: tuple[str, ...] = ("6222020000000000001",),
    rid: str = "",
) -> RequestLeg:
    return RequestLeg(
        envelope=b"",
        peer=member,
        peer_cert_sha256="",
        received_at=at,
        decision=decision,
        rule=rule,
        request_id=rid,
        requesting_agency=member,
        officer_id=officer,
        case_number=case,
        action=action,
        target_agency=target,
        subjects=subjects,
    )


async def opened(logs: LogFactory) -> tuple[AuditLog, LogInsights]:
    log = await logs.open()
    return log, await LogInsights.open(logs.db)


class TestNewest:
    async def test_same_hits_as_search_newest_first(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            for i in range(30):
                await log.append(
                    leg(
                        T0 + timedelta(minutes=i),
                        officer=f"o{i % 3}",
                        case=f"C{i % 4}",
                        action="stop_payment" if i % 5 == 0 else "account_holder",
                        decision="refused" if i % 7 == 0 else "allowed",
                        member="police.gz.unit" if i % 2 else "police.gd.afc",
                        subjects=(f"s{i % 6}",),
                        rid=f"r{i}",
                    )
                )
            queries = [
                SearchQuery(officer_id="o1"),
                SearchQuery(case_number="C2", outcome="allowed"),
                SearchQuery(action="stop_payment"),
                SearchQuery(subject="s3"),
                SearchQuery(member="police.gz.unit", officer_id="o0"),
                SearchQuery(since_us=time_to_micros(T0 + timedelta(minutes=10)),
                            until_us=time_to_micros(T0 + timedelta(minutes=20))),
                SearchQuery(request_id="r17"),
                SearchQuery(),
            ]  # fmt: skip
            for query in queries:
                expected = await log.search(query)
                found = await insights.newest(query)
                assert [h.index for h in found] == [h.index for h in reversed(expected)], query
                assert {h.index: h.columns for h in found} == {h.index: h.columns for h in expected}
        finally:
            await insights.close()

    async def test_pages_below_an_index_and_one_kind(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            for i in range(10):
                await log.append(leg(T0 + timedelta(seconds=i)))
            await log.append(EventEntry("console_login", "audit.wang", "audit.office", T0))
            page = await insights.newest(SearchQuery(limit=4))
            assert [h.index for h in page] == [10, 9, 8, 7]
            below = await insights.newest(SearchQuery(limit=4), before_index=7)
            assert [h.index for h in below] == [6, 5, 4, 3]
            events = await insights.newest(SearchQuery(), leg=3)
            assert [h.index for h in events] == [10]
            with pytest.raises(InvalidArgument, match="limit"):
                await insights.newest(SearchQuery(limit=0))
        finally:
            await insights.close()


class TestAggregates:
    async def test_per_day_uses_china_days(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            late = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)  # 23:30 China time, 20 Nov
            after = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)  # 00:30 China time, 21 Nov
            await log.append(leg(late))
            await log.append(leg(after, action="stop_payment", member="police.gz.unit"))
            await log.append(leg(after, target="bank.ccb"))
            await log.append(EventEntry("console_login", "audit.wang", "audit.office", after))
            by_requester = await insights.per_day(ALL, "requester")
            assert {(c.day, c.key, c.count) for c in by_requester} == {
                (date(2026, 11, 20), "police.gd.afc", 1),
                (date(2026, 11, 21), "police.gd.afc", 1),
                (date(2026, 11, 21), "police.gz.unit", 1),
            }
            by_action = await insights.per_day(ALL, "action")
            assert {(c.day, c.key, c.count) for c in by_action} == {
                (date(2026, 11, 20), "account_holder", 1),
                (date(2026, 11, 21), "account_holder", 1),
                (date(2026, 11, 21), "stop_payment", 1),
            }
            by_target = await insights.per_day(ALL, "target")
            assert sum(c.count for c in by_target if c.key == "bank.ccb") == 1
            window = TimeWindow(day_start_us(date(2026, 11, 21)), ALL.until_us)
            assert sum(c.count for c in await insights.per_day(window, "action")) == 2
            with pytest.raises(InvalidArgument, match="group by"):
                await insights.per_day(ALL, "officer")
        finally:
            await insights.close()

    async def test_refusals_by_reason_code(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            for rule in ("POLICY_DENIED: no", "POLICY_DENIED: never", "QUOTA_EXCEEDED: slow",
                         "odd"):  # fmt: skip
                await log.append(leg(T0, decision="refused", rule=rule))
            receipt = await log.append(leg(T0, rid="r1"))
            await log.append(
                ResponseLeg("r1", receipt.index, "bank.icbc", T0, "refused", b"", b"", detail="no")
            )
            refusals = await insights.refusals(ALL)
            assert [(r.reason, r.count) for r in refusals] == [
                ("POLICY_DENIED", 2),
                ("AGENCY_REFUSED", 1),
                ("QUOTA_EXCEEDED", 1),
                ("odd", 1),
            ]
        finally:
            await insights.close()

    async def test_officer_days_off_hours_and_refusal_days(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            china = T0.astimezone(BEIJING)
            for hour, minute in ((6, 59), (7, 0), (20, 59), (21, 0), (23, 10)):
                await log.append(leg(china.replace(hour=hour, minute=minute)))
            await log.append(leg(china, action="stop_payment"))
            # Refused requests (e.g. naming an officer not on the member's roster) are not an
            # officer's queries: only allowed ones, whose officers the roster vouches for, count.
            for hour in (3, 4, 5, 12):
                await log.append(
                    leg(china.replace(hour=hour), officer="o-fake", decision="refused",
                        rule="POLICY_DENIED: officer 'o-fake' is not on the officer roster")
                )  # fmt: skip
            days = await insights.officer_days(ALL, {"account_holder"})
            assert [(d.day, d.count, d.first_index) for d in days] == [(date(2026, 11, 20), 5, 0)]
            off = await insights.off_hours(ALL, {"account_holder"}, start_hour=7, end_hour=21)
            assert [(d.officer_id, d.count, d.first_index) for d in off] == [("440100123", 3, 0)]
            for _ in range(3):
                await log.append(leg(china, officer="o9", decision="refused", rule="STALE: x"))
            refusals = await insights.refusal_days(ALL, minimum=3)
            assert [d.officer_id for d in refusals] == ["o-fake", "o9"]
            assert [d.officer_id for d in await insights.refusal_days(ALL, minimum=4)] == ["o-fake"]
        finally:
            await insights.close()

    async def test_queries_without_a_later_order_in_the_case(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            queries, orders = {"account_holder"}, {"stop_payment", "freeze"}
            await log.append(leg(T0, case="A1"))
            await log.append(leg(T0 + timedelta(days=2), case="A1", action="stop_payment"))
            await log.append(leg(T0, case="A2"))
            await log.append(leg(T0 + timedelta(days=8), case="A2", action="freeze"))
            later = T0 + timedelta(hours=1)
            await log.append(leg(later, case="A3", officer="o3"))
            await log.append(leg(later + timedelta(hours=1), case="A3", officer="o3"))
            await log.append(leg(T0 + timedelta(days=1), case="A3", action="freeze",
                                 decision="refused"))  # fmt: skip
            found = await insights.without_order(
                ALL, queries=queries, orders=orders, within_us=7 * 86_400_000_000
            )
            assert found == [
                CaseWithoutOrder("A3", "police.gd.afc", "o3", 2, 4, time_to_micros(later),
                                 time_to_micros(later + timedelta(hours=1))),
                CaseWithoutOrder("A2", "police.gd.afc", "440100123", 1, 2, time_to_micros(T0),
                                 time_to_micros(T0)),
            ]  # fmt: skip
        finally:
            await insights.close()

    async def test_the_checkpoint_before_a_size(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            empty = await log.checkpoint_at(0)
            await log.append(leg(T0))
            await log.append(leg(T0))
            # Sizes 1 and 2 were single batches: the store keeps the empty tree's and the head.
            assert await insights.checkpoint_before(log.size) == (0, empty)
            assert (await insights.checkpoint_before(0)) is None
        finally:
            await insights.close()


class TestOpening:
    async def test_a_missing_database_and_a_closed_one(self, tmp_path: Path) -> None:
        with pytest.raises(AuditUnavailable, match="no audit log database"):
            await LogInsights.open(tmp_path / "none.sqlite")
        (tmp_path / "other.sqlite").write_bytes(b"")
        with pytest.raises(StoreVersionError, match=r"other\.sqlite is not a fedgate audit log"):
            await LogInsights.open(tmp_path / "other.sqlite")

    async def test_it_never_writes(self, sqlite_logs: LogFactory) -> None:
        log, insights = await opened(sqlite_logs)
        try:
            await log.append(leg(T0))
            with pytest.raises(AuditUnavailable, match=r"readonly|read-only"):
                await insights._rows("write", "INSERT INTO meta (key, value) VALUES ('x', 'y')", ())
        finally:
            await insights.close()
        with pytest.raises(AuditUnavailable, match="closed"):
            await insights.refusals(ALL)


class TestDays:
    def test_china_days(self) -> None:
        assert day_of(time_to_micros(datetime(2026, 11, 20, 15, 59, tzinfo=UTC))) == date(
            2026, 11, 20
        )
        assert day_of(time_to_micros(datetime(2026, 11, 20, 16, 0, tzinfo=UTC))) == date(
            2026, 11, 21
        )
        assert day_start_us(date(2026, 11, 21)) == time_to_micros(
            datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
        )


class TestRollups:
    """Whole-day windows read the rollups kept at commit; they MUST give what aggregating the
    leaves gives, on both stores."""

    async def test_same_answers_as_the_leaves(self, logs: LogFactory) -> None:
        log = await logs.open(max_batch=7)
        china = T0.astimezone(BEIJING)
        appends = []
        for i in range(120):
            at = china.replace(hour=0) + timedelta(hours=5 * i + i % 3, minutes=i)
            refused = i % 7 == 0
            appends.append(
                leg(
                    at,
                    officer=f"o{i % 5}",
                    member=("police.gd.afc", "police.gz.unit")[i % 2],
                    action=("account_holder", "stop_payment", "transactions")[i % 3],
                    target=("bank.icbc", "bank.ccb")[i % 2],
                    decision="refused" if refused else "allowed",
                    rule=("POLICY_DENIED: no", "QUOTA_EXCEEDED: x")[i % 2] if refused else "p",
                    rid=f"r{i}",
                )
            )
        for request in appends:
            receipt = await log.append(request)
            if request.request_id in ("r3", "r10", "r17"):
                await log.append(
                    ResponseLeg(
                        request.request_id, receipt.index, request.target_agency,
                        request.received_at, "refused", b"", b"", detail="no",
                    )
                )  # fmt: skip
        source = _source(logs)
        # As the console opens it: asking the log for a catch-up before waiting for the rollups.
        fast = await LogInsights.open(source, catch_up=log.catch_up_soon)
        slow = await LogInsights.open(source, rollups=False)
        try:
            first = day_of(time_to_micros(T0))
            for days in (1, 3, 30):
                window = TimeWindow(
                    day_start_us(first + timedelta(days=1)),
                    day_start_us(first + timedelta(days=1 + days)),
                )
                for by in ("requester", "target", "action"):
                    assert await fast.per_day(window, by) == await slow.per_day(window, by)
                assert await fast.refusals(window) == await slow.refusals(window)
                actions = {"account_holder", "transactions"}
                assert await fast.officer_days(window, actions) == await slow.officer_days(
                    window, actions
                )
                assert await fast.off_hours(
                    window, actions, start_hour=8, end_hour=18
                ) == await slow.off_hours(window, actions, start_hour=8, end_hour=18)
                assert await fast.refusal_days(window, minimum=1) == await slow.refusal_days(
                    window, minimum=1
                )
            assert await fast.per_day(window, "action")  # the windows were not empty
            assert await fast.refusals(window)
        finally:
            await fast.close()
            await slow.close()

    async def test_a_chart_asks_the_writer_for_a_catch_up(
        self, logs: LogFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A busy log's catch-ups are spaced (``CATCH_UP_SPACING_S``, here made far longer
        than ``ROLLUP_WAIT_S``): a chart that asks the log for a catch-up still counts every
        entry committed when it was asked; one that only waits misses them."""
        monkeypatch.setattr(catch_up_module, "CATCH_UP_SPACING_S", 600.0)
        log = await logs.open()
        source = _source(logs)
        asking = await LogInsights.open(source, catch_up=log.catch_up_soon)
        waiting = await LogInsights.open(source)
        slow = await LogInsights.open(source, rollups=False)
        day = day_of(time_to_micros(T0))
        window = TimeWindow(day_start_us(day), day_start_us(day + timedelta(days=1)))
        try:
            await log.append(leg(T0, rid="r0"))
            assert await asking.per_day(window, "action")  # a catch-up ran: the next is spaced
            assert asking.rollup_lag == 0
            for i in range(1, 6):
                await log.append(leg(T0 + timedelta(minutes=i), rid=f"r{i}"))
            assert await waiting.per_day(window, "action") != await slow.per_day(window, "action")
            assert waiting.rollup_lag == 5
            counted = await asking.per_day(window, "action")
            assert asking.rollup_lag == 0
            assert counted == await slow.per_day(window, "action")
            assert sum(c.count for c in counted) == 6
        finally:
            for insights in (asking, waiting, slow):
                await insights.close()

    async def test_a_shard_without_a_hook_is_read_at_once(
        self, logs: LogFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another instance's shard (no ``catch_up``): nothing here can hurry its writer, so
        the chart reads the rollups once, as they are, and reports what they miss."""
        monkeypatch.setattr(catch_up_module, "CATCH_UP_DELAY_S", 600.0)  # the writer lags
        log = await logs.open()
        source = _source(logs)
        other = await LogInsights.open(source)
        day = day_of(time_to_micros(T0))
        window = TimeWindow(day_start_us(day), day_start_us(day + timedelta(days=1)))
        reads: list[int] = []
        real = insights_module._search.projected_to

        def counted(*args: Any) -> int:
            reads.append(1)
            return real(*args)

        try:
            for i in range(3):
                await log.append(leg(T0 + timedelta(minutes=i), rid=f"r{i}"))
            monkeypatch.setattr(insights_module._search, "projected_to", counted)
            await other.per_day(window, "action")
            assert len(reads) == 1  # read once: no polling for a catch-up
            assert other.rollup_lag == 3
        finally:
            await other.close()
            await log.close()
