"""Tickets, alert streams and console sessions shared by gateway instances on PostgreSQL
(``[shared] store = "postgres"``): real gateways (each its own audit shard) over real gRPC and
mTLS in front of one stub bank node, and the shared stores on their own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from fedgate.audit_entry import EntryKind, EventEntry, RequestLeg, ResponseLeg, decode_entry
from fedgate.auditverify import normalized_subjects
from fedgate.cli import main as fedgate_main
from fedgate.client import FedgateClient
from fedgate.errors import AgencyUnavailable, NotFound, RuleViolated
from fedgate.kek import write_kek_file
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, request_pb2, ticket_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from gateway.alerts import Alert, PgAlertHub
from gateway.audit.pg_store import PgDatabase
from gateway.audit.service import export_evidence
from gateway.audit.store import SearchQuery
from gateway.config import (
    SHARED_STORES,
    AuditConfig,
    ConsoleConfig,
    PipelineConfig,
    SharedConfig,
)
from gateway.rules_pg import open_shared_rules
from gateway.rules_rebuild import rebuild_rules
from gateway.server import Gateway
from gateway.sessions import PgRevocations
from gateway.tickets import PendingRequest, PgTickets, TicketRecord
from tests.gateway.conftest import GatewayHarness, start_harness

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

POLICE = MemberId("police.gd.afc")
SHARD_A = "fedgate.test/gateway/shard-a"
SHARD_B = "fedgate.test/gateway/shard-b"
SHARD_C = "fedgate.test/gateway/shard-c"
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclasses.dataclass
class Trio:
    """Instance A (the harness: its node and signing helpers), B and C (auditor consoles on
    one accounts directory), all sharing their state in one PostgreSQL schema."""

    a: GatewayHarness
    b: Gateway
    c: Gateway
    clients: list[FedgateClient]
    ticket: ticket_pb2.Ticket = dataclasses.field(default_factory=ticket_pb2.Ticket)

    async def open_ticket(self, request: request_pb2.Request | None = None) -> tuple[str, bytes]:
        """A ticket opened through A (the node queues ``request``, by default an account
        holder query): its id and the request body, which a police client of another
        instance ``remember``s to check the answer."""
        h = self.a
        envelope = h.sign(h.request() if request is None else request)
        h.node.mode = "queue"
        try:
            submitted = await h.client().submit(envelope)
        finally:
            h.node.mode = "ok"
        assert submitted.ticket is not None
        self.ticket = submitted.ticket
        return submitted.ticket.ticket_id, envelope.body

    def police_on(self, gateway: Gateway, sent: bytes) -> FedgateClient:
        client = self.client(gateway)
        client.remember(sent)
        return client

    def client(self, gateway: Gateway, member: str = POLICE) -> FedgateClient:
        client = FedgateClient.from_federation(
            self.a.federation, MemberId(member), endpoint=gateway.endpoint
        )
        self.clients.append(client)
        return client


def drop_shared(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for store in SHARED_STORES:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(f"{schema}_{store}")
                )
            )


@pytest_asyncio.fixture(loop_scope="module")
async def trio(pg: Any, gw_federation: Path, tmp_path: Path) -> AsyncIterator[Trio]:
    async with three_instances(pg, gw_federation, tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def three_instances(
    pg: Any, gw_federation: Path, tmp_path: Path, *, kek: Path | None = None
) -> AsyncIterator[Trio]:
    """A, B and C on one PostgreSQL schema; with ``kek``, every shard sealed under it (each
    instance's vault opens its own shard's bodies only)."""
    shared = SharedConfig(store="postgres", schema=pg.schema)
    accounts = tmp_path / "accounts"
    users = UserStore.in_state_dir(accounts)
    users.add_user(
        "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
        password=PASSWORD, params=ScryptParams(n=2**10, r=8, p=1),
    )  # fmt: skip
    users.close()

    def audit(origin: str) -> AuditConfig:
        return AuditConfig(
            store="postgres", dsn=pg.dsn, schema=pg.schema, origin=origin, kek_path=kek
        )

    a = await start_harness(
        gw_federation, tmp_path / "a", audit=audit(SHARD_A), replay_store="", shared=shared
    )
    started: list[Gateway] = []
    trio: Trio | None = None
    try:
        for origin, state in ((SHARD_B, "b"), (SHARD_C, "c")):
            config = dataclasses.replace(
                a.config(),
                audit=audit(origin),
                pipeline=PipelineConfig(state_dir=tmp_path / state, replay_store=""),
                console=ConsoleConfig(listen="127.0.0.1:0", users_dir=accounts),
            )
            started.append(await Gateway.start(config))
        trio = Trio(a, started[0], started[1], [])
        yield trio
        for client in trio.clients:
            await client.close()
    finally:
        # (A test may have restarted B or C: stop what the trio holds too; stop is idempotent.)
        for gateway in [*started, *([] if trio is None else [trio.b, trio.c])]:
            await gateway.stop(0.5)
        await a.close()
        drop_shared(pg.dsn, pg.schema)


async def entries(gateway: Gateway, start: int) -> list[Any]:
    log = gateway.audit
    return [decode_entry(await log.get_entry(i)) for i in range(start, log.size)]


async def answer_legs(gateways: list[Gateway], sizes: list[int], request_id: str) -> list[Any]:
    return [
        (gateway.audit.origin, e)
        for gateway, size in zip(gateways, sizes, strict=True)
        for e in await entries(gateway, size)
        if isinstance(e, ResponseLeg) and e.request_id == request_id
    ]


class TestTicketsAcrossInstances:
    async def test_a_ticket_opened_on_a_is_answered_and_read_on_b(self, trio: Trio) -> None:
        h, b = trio.a, trio.b
        ticket_id, sent = await trio.open_ticket()
        ticket = trio.ticket
        on_b = trio.police_on(b, sent)
        state, answer = await on_b.get_ticket(ticket_id)
        assert (state.state, answer) == (ticket_pb2.TICKET_STATE_WAITING, None)
        sizes = [h.gateway.audit.size, b.audit.size]
        h.node.answer(ticket.ticket_id)
        state, answer = await on_b.get_ticket(ticket.ticket_id)
        assert state.state == ticket_pb2.TICKET_STATE_ANSWERED
        assert answer is not None  # verified by the SDK
        assert answer.response.answered_by == "staff-007"
        # The answer is logged once, in B's shard, naming the request leg in A's shard.
        (leg,) = await answer_legs([h.gateway, b], sizes, ticket.ticket_id)
        origin, entry = leg
        assert origin == SHARD_B
        assert (entry.status, entry.request_origin) == ("ok", SHARD_A)
        assert entry.request_leaf_index == ticket.request_receipt.leaf_index
        receipt = answer.receipt
        assert (receipt.log_origin, receipt.request_log_origin) == (SHARD_B, SHARD_A)
        assert receipt.request_leaf_index == entry.request_leaf_index
        # A reads the stored answer, the same bytes, logging nothing again.
        sizes = [h.gateway.audit.size, b.audit.size]
        _, again = await h.client().get_ticket(ticket.ticket_id)
        assert again is not None
        assert again.signed == answer.signed
        assert [h.gateway.audit.size, b.audit.size] == sizes
        # B's evidence of the answer holds its own entry only: the request is A's to export.
        bundle = json.loads(await export_evidence(b.audit, answer.receipt.leaf_index))
        assert bundle["origin"] == SHARD_B
        assert [e["index"] for e in bundle["entries"]] == [answer.receipt.leaf_index]

    async def test_another_member_gets_not_found_on_b_and_the_probe_is_logged_there(
        self, trio: Trio
    ) -> None:
        b = trio.b
        ticket_id, _ = await trio.open_ticket()
        with pytest.raises(NotFound) as refused:
            await trio.client(b, "police.gz.unit").get_ticket(ticket_id)
        assert "police.gd.afc" not in refused.value.message
        event = decode_entry(await b.audit.get_entry(b.audit.size - 1))
        assert isinstance(event, EventEntry)
        assert (event.kind, event.actor) == ("ticket_read_refused", "police.gz.unit")
        assert dict(event.detail)["owner"] == "police.gd.afc"

    async def test_reads_on_both_instances_at_once_finish_the_answer_once(self, trio: Trio) -> None:
        h, b = trio.a, trio.b
        on_a, on_b = h.client(), trio.client(b)
        for _ in range(3):
            ticket_id, sent = await trio.open_ticket()
            on_b.remember(sent)
            h.node.answer(ticket_id)
            sizes = [h.gateway.audit.size, b.audit.size]
            results = await asyncio.gather(
                *(c.get_ticket(ticket_id) for c in (on_a, on_b, on_a, on_b, on_b, on_a))
            )
            answers = {answer.signed.SerializeToString() for _, answer in results if answer}
            assert len(answers) == 1  # everyone got the one answer, countersigned once
            assert all(state.state == ticket_pb2.TICKET_STATE_ANSWERED for state, _ in results)
            legs = await answer_legs([h.gateway, b], sizes, ticket_id)
            assert [e.status for _, e in legs] == ["ok"]

    async def test_a_watch_on_b_follows_a_ticket_opened_on_a(self, trio: Trio) -> None:
        h, b = trio.a, trio.b
        ticket_id, sent = await trio.open_ticket()
        states = []

        async def follow() -> None:
            async for state, answer in trio.police_on(b, sent).watch_ticket(ticket_id):
                states.append(state.state)
                if state.state == ticket_pb2.TICKET_STATE_WAITING:
                    h.node.answer(ticket_id)
                if answer is not None:
                    return

        await asyncio.wait_for(follow(), timeout=20)
        assert states == [ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_ANSWERED]

    async def test_every_shard_verifies_with_the_cross_shard_legs(
        self, trio: Trio, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``fedgate audit verify`` over every shard: signatures, index rows, and the ticket
        answers logged in B's shard whose request legs are in A's (none flagged missing)."""
        h = trio.a
        ticket_id, sent = await trio.open_ticket()
        h.node.answer(ticket_id)
        _, answer = await trio.police_on(trio.b, sent).get_ticket(ticket_id)
        assert answer is not None
        assert await verify_every_shard(trio) == 0
        out = capsys.readouterr().out
        assert "cross-shard links: 1 response leg(s) each name their request leg: OK" in out

    async def test_a_cross_shard_leg_naming_the_wrong_request_fails_verification(
        self, trio: Trio, capsys: pytest.CaptureFixture[str]
    ) -> None:
        h = trio.a
        await h.client().submit(h.request())  # entries 0 and 1 of shard A: another request
        await trio.b.audit.append(
            ResponseLeg(
                request_id="not-that-request",
                request_leaf_index=0,
                responder="bank.icbc",
                received_at=datetime.now(UTC),
                status="unavailable",
                response_hash=b"",
                responder_signature=b"",
                request_origin=SHARD_A,
            )
        )
        assert await verify_every_shard(trio) == 1
        out = capsys.readouterr().out
        assert f"names {SHARD_A} entry 0, which is not the allowed request leg" in out


class TestOrdersAnsweredThroughAnotherInstance:
    """A stop-payment opened through A, queued for the bank's staff, answered through B: B's
    response leg carries the request leg's columns (read from A's shard), so B's shard finds
    it by officer, case, action and subject, and the start-up rebuild counts the order."""

    async def answered_on_b(self, trio: Trio) -> tuple[request_pb2.Request, RequestLeg, int]:
        h = trio.a
        order = h.request("stop_payment")
        ticket_id, sent = await trio.open_ticket(order)
        h.node.answer(ticket_id)
        _, answer = await trio.police_on(trio.b, sent).get_ticket(ticket_id)
        assert answer is not None
        request_leg = decode_entry(
            await h.gateway.audit.get_entry(trio.ticket.request_receipt.leaf_index)
        )
        assert isinstance(request_leg, RequestLeg)
        assert (request_leg.action, request_leg.officer_id) == ("stop_payment", order.officer.id)
        return order, request_leg, answer.receipt.leaf_index

    async def test_bs_shard_finds_the_answer_by_the_requests_columns(self, trio: Trio) -> None:
        _, q, index = await self.answered_on_b(trio)
        assert q.subjects
        assert q.case_number
        for query in (
            SearchQuery(officer_id=q.officer_id),
            SearchQuery(case_number=q.case_number),
            SearchQuery(action="stop_payment", outcome="ok"),
            SearchQuery(subject=q.subjects[0]),
            SearchQuery(member=q.requesting_agency),
            SearchQuery(visible_to=q.requesting_agency, leg=EntryKind.RESPONSE),
        ):
            (hit,) = [h for h in await trio.b.audit.search(query) if h.index == index]
            assert hit.columns[:10] == (
                EntryKind.RESPONSE, q.request_id, hit.columns[2], q.requesting_agency,
                q.officer_id, q.case_number, "stop_payment", hit.columns[7], "ok",
                hit.columns[9],
            )  # fmt: skip
            assert (hit.columns[10], hit.columns[11]) == (normalized_subjects(q.subjects), -1)

    async def test_the_rules_rebuilt_from_bs_shard_count_the_order(
        self, trio: Trio, pg: Any
    ) -> None:
        order, _, _ = await self.answered_on_b(trio)
        account = order.stop_payment.account_number
        # The shared rule state wiped (an empty schema: a restore older than the order),
        # then B's shard recorded again into it, as B's start-up does.
        wiped = f"{pg.schema}_wiped_rules"
        rules = open_shared_rules(dsn=pg.dsn, schema=wiped)
        reader = PgDatabase(pg.dsn, origin=SHARD_B, schema=pg.schema, writer=False)
        try:
            rebuilt = await asyncio.to_thread(rebuild_rules, rules, reader, origin=SHARD_B)
            assert rebuilt.orders == 1
            now = datetime.now(UTC)
            second = trio.a.request("stop_payment", account_number=account)
            rules.check(second, action="stop_payment", now=now)
            rules.record_outcome(
                second, action="stop_payment", status=request_pb2.RESPONSE_STATUS_OK, now=now
            )
            third = trio.a.request("stop_payment", account_number=account)
            with pytest.raises(RuleViolated, match=r"stop_payment\.max_two_per_account"):
                rules.check(third, action="stop_payment", now=now)
        finally:
            reader.close()
            rules.close()
            with psycopg.connect(pg.dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(wiped))
                )

    async def test_an_altered_row_of_a_cross_shard_leg_fails_verification(
        self, trio: Trio, pg: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _, _, index = await self.answered_on_b(trio)
        assert await verify_every_shard(trio) == 0
        with psycopg.connect(pg.dsn, autocommit=True) as attacker:  # triggers out of the way
            leaves = sql.Identifier(pg.schema, "leaves")
            attacker.execute("SET lock_timeout = '10s'")  # bounded, should a reader hold it
            attacker.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(leaves))
            attacker.execute(
                sql.SQL(
                    "UPDATE {} SET officer_id = 'someone.else' WHERE origin = %s AND idx = %s"
                ).format(leaves),
                (SHARD_B, index),
            )
            attacker.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(leaves))
        assert await verify_every_shard(trio) == 1
        out = capsys.readouterr().out
        assert f"{SHARD_B} entry {index}: its search index row does not match" in out


class TestSealedShards:
    async def test_b_restarts_with_an_order_whose_request_leg_is_sealed_in_a(
        self, pg: Any, gw_federation: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """B's vault cannot open A's sealed request leg: B's search still finds the answer by
        the request's (sealed) columns, and B's start-up counts the order as not re-recorded
        instead of refusing to start."""
        kek = tmp_path / "keys" / "audit.kek"
        write_kek_file(kek)
        async with three_instances(pg, gw_federation, tmp_path, kek=kek) as trio:
            order = trio.a.request("stop_payment")
            ticket_id, sent = await trio.open_ticket(order)
            trio.a.node.answer(ticket_id)
            _, answer = await trio.police_on(trio.b, sent).get_ticket(ticket_id)
            assert answer is not None
            hits = await trio.b.audit.search(SearchQuery(officer_id=order.officer.id))
            assert [(h.index, h.columns[6]) for h in hits] == [
                (answer.receipt.leaf_index, "stop_payment")
            ]
            config = trio.b.config
            await trio.b.stop(0.5)
            with caplog.at_level("WARNING", logger="gateway.server"):
                trio.b = await Gateway.start(config)
            assert "1 executed orders answered here have their request leg sealed" in caplog.text


async def verify_every_shard(trio: Trio) -> int:
    audit = trio.a.config().audit
    argv = ["audit", "verify", "--pg", audit.dsn, "--schema", audit.schema,
            "--federation", str(trio.a.federation), "--quiet"]  # fmt: skip
    return int(await asyncio.to_thread(fedgate_main, argv))


class TestAlertsAcrossInstances:
    async def test_a_report_through_a_reaches_a_subscriber_on_b_and_resumes_on_a(
        self, trio: Trio
    ) -> None:
        h, b = trio.a, trio.b
        got: list[Any] = []
        first = h.request("early_warning")  # bank.icbc → police.gd.afc
        second = h.request("early_warning")

        async def subscribe(client: FedgateClient, after: int, want: str) -> Any:
            async for alert in client.alerts(kinds=["early_warning"], after=after):
                seen = decode_request_id(alert.report)
                if seen == want:
                    return alert

        on_b = trio.client(b)
        waiting = asyncio.ensure_future(subscribe(on_b, 0, first.request_id))
        await asyncio.sleep(0.2)  # subscribed before the report exists: a live delivery
        await h.client("bank.icbc").submit(h.sign(first, "bank.icbc"))
        alert = await asyncio.wait_for(waiting, timeout=20)
        got.append(alert)
        # Another report stored through B; the police system reconnects to A from the last
        # sequence it saw and gets that report, not the first again.
        await trio.client(b, "bank.icbc").submit(h.sign(second, "bank.icbc"))
        on_a = h.client()
        resumed = []
        async for again in on_a.alerts(kinds=["early_warning"], after=alert.sequence, idle_s=2):
            resumed.append(decode_request_id(again.report))
            if resumed[-1] == second.request_id:
                break
        assert first.request_id not in resumed
        assert resumed[-1] == second.request_id


def decode_request_id(report: envelope_pb2.SignedEnvelope) -> str:
    from fedgate.v1 import request_pb2

    return request_pb2.Request.FromString(report.body).request_id


async def console_login(client: httpx.AsyncClient) -> None:
    token = CSRF.search((await client.get("/login")).text)
    assert token
    login = await client.post(
        "/login", data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD}
    )
    assert login.status_code == 303


class TestConsoleSessionsAcrossInstances:
    async def test_bs_console_shows_a_ticket_answer_whose_request_is_in_a(self, trio: Trio) -> None:
        ticket_id, sent = await trio.open_ticket()
        trio.a.node.answer(ticket_id)
        _, answer = await trio.police_on(trio.b, sent).get_ticket(ticket_id)
        assert answer is not None
        assert trio.b.console_url is not None
        async with httpx.AsyncClient(base_url=trio.b.console_url) as on_b:
            await console_login(on_b)
            page = await on_b.get(f"/entries/{answer.receipt.leaf_index}")
        assert page.status_code == 200
        assert f"其请求记录在另一分片 {SHARD_A} 第 {answer.receipt.request_leaf_index} 条" in (
            page.text
        )
        assert "并绑定到本请求" not in page.text  # the binding is not claimed from B alone

    async def test_a_login_on_b_works_on_c_and_a_logout_on_b_is_refused_on_c(
        self, trio: Trio
    ) -> None:
        b_url, c_url = trio.b.console_url, trio.c.console_url
        assert b_url is not None
        assert c_url is not None
        async with httpx.AsyncClient(base_url=b_url) as on_b:
            await console_login(on_b)
            cookies = dict(on_b.cookies)
            async with httpx.AsyncClient(base_url=c_url, cookies=cookies) as on_c:
                page = await on_c.get("/")
                assert page.status_code == 200  # the same key: C takes B's cookie
                home = (await on_b.get("/")).text
                token = CSRF.search(home)
                assert token
                out = await on_b.post("/logout", data={"csrf": token.group(1)})
                assert out.status_code == 303
                on_c.cookies.clear()
                for name, value in cookies.items():
                    on_c.cookies.set(name, value)  # the copied cookie, as it was before
                refused = await on_c.get("/")
                assert refused.status_code == 303
                assert refused.headers["location"].startswith("/login")


# -- the shared stores on their own ------------------------------------------------------------


def pending(request_id: str) -> PendingRequest:
    return PendingRequest(
        request_id=request_id,
        requester=POLICE,
        target=MemberId("bank.icbc"),
        action="account_holder",
        request_body=b"body",
        request_leaf_index=7,
        request_receipt=envelope_pb2.AuditReceipt(log_origin=SHARD_A),
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )


class TestPgTickets:
    async def test_a_second_holder_waits_and_reads_what_the_first_stored(self, pg: Any) -> None:
        a = PgTickets(dsn=pg.dsn, schema=pg.schema, origin=SHARD_A)
        b = PgTickets(dsn=pg.dsn, schema=pg.schema, origin=SHARD_B)
        try:
            waiting = TicketRecord(pending=pending("t-1"), state=ticket_pb2.TICKET_STATE_WAITING)
            await a.create(waiting)
            order: list[str] = []

            async def second() -> TicketRecord | None:
                async with b.hold("t-1") as held:
                    order.append("b holds")
                    return held.record

            async with a.hold("t-1") as held:
                assert held.record is not None
                contender = asyncio.ensure_future(second())
                await asyncio.sleep(0.3)
                assert order == []  # B waits for A's row lock
                answered = dataclasses.replace(
                    held.record, state=ticket_pb2.TICKET_STATE_ANSWERED, detail="done"
                )
                await held.update(answered)
                order.append("a stored")
            seen = await asyncio.wait_for(contender, timeout=10)
            assert order == ["a stored", "b holds"]
            assert seen is not None
            assert (seen.state, seen.detail) == (ticket_pb2.TICKET_STATE_ANSWERED, "done")
            assert seen.pending.request_origin == SHARD_A  # the shard of the request leg
            assert await b.get("nope") is None
        finally:
            a.close()
            b.close()

    async def test_a_holders_failure_stores_nothing_and_the_ticket_stays_usable(
        self, pg: Any
    ) -> None:
        store = PgTickets(dsn=pg.dsn, schema=pg.schema, origin=SHARD_A, connections=1)
        try:
            waiting = TicketRecord(pending=pending("t-2"), state=ticket_pb2.TICKET_STATE_WAITING)
            await store.create(waiting)

            async def claim_then_fail() -> None:
                async with store.hold("t-2") as held:
                    assert held.record is not None
                    claimed = dataclasses.replace(
                        held.record, state=ticket_pb2.TICKET_STATE_CLAIMED
                    )
                    await held.update(claimed)
                    raise AgencyUnavailable("node down")

            with pytest.raises(AgencyUnavailable, match="node down"):
                await claim_then_fail()
            async with store.hold("t-2") as held:  # the one connection, rolled back, reused
                assert held.record is not None
                assert held.record.state == ticket_pb2.TICKET_STATE_WAITING
        finally:
            store.close()


class TestPgAlertHub:
    async def test_notify_wakes_a_subscriber_of_another_instance(self, pg: Any) -> None:
        # A fallback poll far beyond the test's bound: only the notification can deliver.
        one = PgAlertHub(dsn=pg.dsn, schema=pg.schema, fallback_poll_s=3600)
        two = PgAlertHub(dsn=pg.dsn, schema=pg.schema, fallback_poll_s=3600)
        try:
            stream = two.subscribe(POLICE)
            first = asyncio.ensure_future(anext(aiter(stream)))
            await asyncio.sleep(0.5)  # the subscriber has read the empty table and waits
            alert = Alert(
                target=POLICE,
                source=MemberId("bank.icbc"),
                kind="early_warning",
                received_at=datetime.now(UTC),
                report=envelope_pb2.SignedEnvelope(body=b"r", key_id="k"),
                receipt=envelope_pb2.AuditReceipt(log_origin=SHARD_A),
            )
            sequence = await one.publish(alert)
            got = await asyncio.wait_for(first, timeout=30)
            assert (got.sequence, got.report.body) == (sequence, b"r")
            later = await one.publish(alert)
            resumed = await anext(aiter(one.subscribe(POLICE, after_sequence=sequence)))
            assert resumed.sequence == later
            await stream.aclose()
        finally:
            await one.aclose()
            await two.aclose()


class TestPgRevocations:
    async def test_a_revocation_is_seen_by_every_instance_until_it_expires(self, pg: Any) -> None:
        a = PgRevocations(dsn=pg.dsn, schema=pg.schema)
        b = PgRevocations(dsn=pg.dsn, schema=pg.schema)
        try:
            assert not await b.is_revoked("sid-1", now=1000.0)
            await a.revoke("sid-1", until=2000.0, now=1000.0)
            assert await b.is_revoked("sid-1", now=1500.0)
            assert not await b.is_revoked("sid-1", now=2000.0)
            await b.revoke("sid-2", until=4000.0, now=3000.0)  # prunes sid-1
            assert not await a.is_revoked("sid-1", now=0.0)
        finally:
            a.close()
            b.close()
