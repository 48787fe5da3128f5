"""The stores of ``[shared] store = "postgres"``, against the real PostgreSQL: recorded outcomes
(``gateway.retries``), quotas (``gateway.quotas.PgQuotas``), the rule state's connection
(``gateway.rules_pg``); and ``MemoryReplayCache``, the local store of outcomes."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from fedgate.errors import AuditUnavailable, PolicyDenied, QuotaExceeded, RuleViolated
from fedgate.testing import valid_request
from fedgate.v1 import common_pb2, gateway_service_pb2, request_pb2, ticket_pb2
from gateway.quotas import PgQuotas, QuotaConfig
from gateway.replay import MemoryReplayCache
from gateway.retries import Claim, OutcomeStore, PgOutcomes, RecordedOutcome
from gateway.rules_pg import open_shared_rules

if TYPE_CHECKING:
    from conftest import PgTarget

NOW_US = 1_780_000_000_000_000
LATER_US = NOW_US + 60_000_000


def reply(tag: str) -> RecordedOutcome:
    ticket = ticket_pb2.Ticket(ticket_id=tag)
    return RecordedOutcome(reply=gateway_service_pb2.SubmitResponse(ticket=ticket))


@pytest_asyncio.fixture(params=["memory", "postgres"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[OutcomeStore, ...]]:
    """Two instances' outcome stores: one and the same in memory, two sharing PostgreSQL."""
    if request.param == "memory":
        one = MemoryReplayCache(window=timedelta(minutes=15))
        yield one, one
        return
    pg: PgTarget = request.getfixturevalue("pg")
    a, b = (PgOutcomes(dsn=pg.dsn, schema=pg.schema) for _ in range(2))
    yield a, b
    a.close()
    b.close()


class TestOutcomes:
    async def test_claim_then_record_then_read_back(self, stores: tuple[OutcomeStore, ...]) -> None:
        a, b = stores
        digest = os.urandom(32)
        assert await a.claim("r1", digest, expires_us=LATER_US, now_us=NOW_US) is None
        held = await b.claim("r1", digest, expires_us=LATER_US, now_us=NOW_US)
        assert held == Claim(body_sha256=digest, outcome=None)
        await a.record("r1", reply("t-1"))
        held = await b.claim("r1", os.urandom(32), expires_us=LATER_US, now_us=NOW_US)
        assert held is not None
        assert held.body_sha256 == digest  # another body: the caller tells it is no retry
        assert held.outcome is not None
        assert held.outcome.reply == reply("t-1").reply

    async def test_a_refusal_comes_back_as_the_same_error(
        self, stores: tuple[OutcomeStore, ...]
    ) -> None:
        a, b = stores
        await a.claim("r2", b"h" * 32, expires_us=LATER_US, now_us=NOW_US)
        await a.record("r2", RecordedOutcome(error=PolicyDenied("no rule allows it")))
        held = await b.claim("r2", b"h" * 32, expires_us=LATER_US, now_us=NOW_US)
        assert held is not None
        assert held.outcome is not None
        error = held.outcome.error
        assert isinstance(error, PolicyDenied)
        assert (error.reason, error.message) == ("POLICY_DENIED", "no rule allows it")

    async def test_of_many_concurrent_claims_exactly_one_wins(
        self, stores: tuple[OutcomeStore, ...]
    ) -> None:
        a, b = stores
        claims = await asyncio.gather(
            *(
                store.claim("r3", b"x" * 32, expires_us=LATER_US, now_us=NOW_US)
                for store in (a, b) * 8
            )
        )
        assert sum(claim is None for claim in claims) == 1

    async def test_expired_claims_are_forgotten(self, stores: tuple[OutcomeStore, ...]) -> None:
        a, _ = stores
        await a.claim("r4", b"x" * 32, expires_us=NOW_US + 1, now_us=NOW_US)
        much_later = NOW_US + 3_600_000_000
        assert await a.claim("r4", b"y" * 32, expires_us=much_later, now_us=much_later) is None

    @pytest.mark.parametrize("data", [b"", b"Z...", b"A\xff\xff\xff", b"E\x08"])
    def test_an_unreadable_record_fails_closed(self, data: bytes) -> None:
        with pytest.raises(AuditUnavailable, match="recorded outcome"):
            RecordedOutcome.decode(data)

    async def test_the_database_gone_is_audit_unavailable(self) -> None:
        with pytest.raises(AuditUnavailable, match="shared request outcomes unavailable"):
            PgOutcomes(dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", schema="x")


CONFIG = QuotaConfig(officer_per_minute=1, officer_burst=2, member_per_minute=1, member_burst=3)


@pytest_asyncio.fixture
async def quotas(pg: PgTarget) -> AsyncIterator[tuple[PgQuotas, PgQuotas]]:
    """Two instances' quotas on one database."""
    a, b = (PgQuotas(CONFIG, dsn=pg.dsn, schema=pg.schema) for _ in range(2))
    yield a, b
    a.close()
    b.close()


async def take(q: PgQuotas, officer: str = "o-1", **kw: object) -> None:
    await q.take(
        member=str(kw.get("member", "police.gd.afc")),
        officer_id=officer,
        action=str(kw.get("action", "account_holder")),
        urgency=int(kw.get("urgency", common_pb2.URGENCY_ROUTINE)),  # type: ignore[call-overload]
    )


@pytest.mark.postgres
class TestSharedQuotas:
    async def test_an_officers_burst_is_shared_by_the_instances(
        self, quotas: tuple[PgQuotas, PgQuotas]
    ) -> None:
        a, b = quotas
        await take(a)
        await take(b)
        with pytest.raises(QuotaExceeded, match=r"officer o-1 of police\.gd\.afc") as refused:
            await take(a)
        assert 0 < refused.value.retry_after_s <= 60

    async def test_the_member_bucket_holds_across_officers(
        self, quotas: tuple[PgQuotas, PgQuotas]
    ) -> None:
        a, b = quotas
        for officer, q in (("o-1", a), ("o-2", b), ("o-3", a)):
            await take(q, officer)
        with pytest.raises(QuotaExceeded, match=r"member police\.gd\.afc is over"):
            await take(b, "o-4")

    async def test_concurrent_takes_grant_no_more_than_the_burst(
        self, quotas: tuple[PgQuotas, PgQuotas]
    ) -> None:
        a, b = quotas
        results = await asyncio.gather(
            *(take(q, "o-9", member="police.gz.unit") for q in (a, b) * 5),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 2
        assert all(isinstance(r, QuotaExceeded) for r in results if r is not None)

    async def test_emergency_stop_payments_draw_on_the_floor(self, pg: PgTarget) -> None:
        config = QuotaConfig(
            officer_per_minute=1,
            officer_burst=1,
            member_burst=100,
            personal_data_only=False,
            emergency_floor_per_minute=6,  # a floor bucket of one
        )
        a, b = (PgQuotas(config, dsn=pg.dsn, schema=pg.schema) for _ in range(2))
        routine, emergency = common_pb2.URGENCY_ROUTINE, common_pb2.URGENCY_EMERGENCY
        try:
            await take(a, action="stop_payment", urgency=routine)
            with pytest.raises(QuotaExceeded):
                await take(b, action="stop_payment", urgency=routine)
            await take(b, action="stop_payment", urgency=emergency)  # from the floor
            with pytest.raises(QuotaExceeded):  # the floor is shared too
                await take(a, action="stop_payment", urgency=emergency)
        finally:
            a.close()
            b.close()

    async def test_actions_without_personal_data_are_not_counted(
        self, quotas: tuple[PgQuotas, PgQuotas]
    ) -> None:
        a, _ = quotas
        for _ in range(5):
            await take(a, action="stop_payment_release")


@pytest.mark.postgres
class TestSharedRuleState:
    def test_two_instances_count_one_accounts_stops(self, pg: PgTarget) -> None:
        a = open_shared_rules(dsn=pg.dsn, schema=pg.schema)
        b = open_shared_rules(dsn=pg.dsn, schema=pg.schema)
        try:
            now = datetime.now(UTC)
            first = valid_request("stop_payment", now=now, serial=1)
            account = first.stop_payment.account_number
            for rules, serial in ((a, 1), (b, 2)):
                stop = valid_request("stop_payment", now=now, serial=serial, account_number=account)
                rules.check(stop, action="stop_payment", now=now)
                rules.record_outcome(
                    stop, action="stop_payment", status=request_pb2.RESPONSE_STATUS_OK, now=now
                )
            third = valid_request("stop_payment", now=now, serial=3, account_number=account)
            for rules in (a, b):
                with pytest.raises(RuleViolated, match=r"stop_payment\.max_two_per_account"):
                    rules.check(third, action="stop_payment", now=now)
        finally:
            a.close()
            b.close()

    def test_an_allowed_stop_is_reserved_until_its_answer(self, pg: PgTarget) -> None:
        """Two instances cannot both allow a third stop-payment: the second check counts the
        first's reservation; a bank's refusal releases it."""
        a = open_shared_rules(dsn=pg.dsn, schema=pg.schema)
        b = open_shared_rules(dsn=pg.dsn, schema=pg.schema)
        ok, refused_status = request_pb2.RESPONSE_STATUS_OK, request_pb2.RESPONSE_STATUS_REFUSED
        try:
            now = datetime.now(UTC)
            first = valid_request("stop_payment", now=now, serial=1)
            account = first.stop_payment.account_number
            a.check(first, action="stop_payment", now=now)
            a.record_outcome(first, action="stop_payment", status=ok, now=now)
            second, third = (
                valid_request("stop_payment", now=now, serial=n, account_number=account)
                for n in (2, 3)
            )
            a.check(second, action="stop_payment", now=now)
            a.check(second, action="stop_payment", now=now)  # its own reservation: not counted
            with pytest.raises(RuleViolated, match="1 allowed and not yet answered"):
                b.check(third, action="stop_payment", now=now)
            a.record_outcome(second, action="stop_payment", status=refused_status, now=now)
            b.check(third, action="stop_payment", now=now)  # the bank refused the second
        finally:
            a.close()
            b.close()

    def test_concurrent_checks_on_two_instances_allow_one(self, pg: PgTarget) -> None:
        instances = [open_shared_rules(dsn=pg.dsn, schema=pg.schema) for _ in range(4)]
        ok = request_pb2.RESPONSE_STATUS_OK
        try:
            now = datetime.now(UTC)
            first = valid_request("stop_payment", now=now, serial=1)
            account = first.stop_payment.account_number
            instances[0].record_outcome(first, action="stop_payment", status=ok, now=now)
            orders = [
                valid_request("stop_payment", now=now, serial=n, account_number=account)
                for n in range(2, 10)
            ]
            barrier = threading.Barrier(len(orders))

            def check(n: int) -> bool:
                barrier.wait(timeout=10)
                try:
                    instances[n % 4].check(orders[n], action="stop_payment", now=now)
                except RuleViolated:
                    return False
                return True

            with ThreadPoolExecutor(len(orders)) as pool:
                allowed = list(pool.map(check, range(len(orders))))
            assert sum(allowed) == 1
        finally:
            for rules in instances:
                rules.close()


class TestInstancesStartingTogether:
    """Instances started at once (``fedgate up --gateways N``) each create the shared schemas
    and their audit schema if missing: one does, the others wait for it, none fails."""

    def test_shared_and_audit_schemas_are_created_once(self, pg: PgTarget) -> None:
        from psycopg import connect, sql

        from gateway.audit.pg_store import PgDatabase

        rules_schema, audit_schema = f"{pg.schema}_rules", f"{pg.schema}_log"
        start = threading.Barrier(6)

        def open_both(i: int) -> None:
            start.wait(timeout=10)
            open_shared_rules(dsn=pg.dsn, schema=rules_schema).close()
            PgDatabase(pg.dsn, origin=f"together/{i}", schema=audit_schema, writer=True).close()

        try:
            with ThreadPoolExecutor(6) as pool:
                for done in [pool.submit(open_both, i) for i in range(6)]:
                    done.result(timeout=60)
        finally:
            with connect(pg.dsn, autocommit=True) as conn:
                for schema in (rules_schema, audit_schema):
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
