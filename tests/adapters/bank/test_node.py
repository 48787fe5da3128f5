"""Every bank action end to end: police-signed envelope → node over mTLS with the gateway's
certificate → signed, hash-bound answer from the bank, on a seeded world."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from adapters.bank.backend import Direction
from fedgate.testing import card_number
from fedgate.tls import server_credentials
from fedgate.v1 import (
    bank_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    request_pb2,
    ticket_pb2,
)

OK = request_pb2.RESPONSE_STATUS_OK
REFUSED = request_pb2.RESPONSE_STATUS_REFUSED
NOT_FOUND = request_pb2.RESPONSE_STATUS_NOT_FOUND
INVALID = request_pb2.RESPONSE_STATUS_INVALID


async def ask(kit: Any, node: Any, request: request_pb2.Request) -> request_pb2.Response:
    envelope = kit.sign(request)
    reply = await kit.link(node).handle(envelope)
    response: request_pb2.Response = kit.verify(envelope, reply)
    return response


class TestBankQueries:
    async def test_account_holder_answers_from_core_banking(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        request = kit.request("account_holder")
        request.account_holder.account_number = hop.to_account
        response = await ask(kit, node, request)
        assert response.status == OK
        holder = response.account_holder
        assert (holder.account_number, holder.account_name) == (hop.to_account, hop.to_name)
        assert holder.status == "normal"
        assert holder.balance.currency == "CNY"
        assert response.answered_by == ""

    async def test_unknown_account_is_a_signed_not_found(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("account_holder")
        request.account_holder.account_number = card_number("bank.icbc", 987_654)
        response = await ask(kit, node, request)
        assert response.status == NOT_FOUND
        assert "no account" in response.detail
        assert response.WhichOneof("result") is None

    async def test_another_banks_card_is_a_signed_invalid(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("account_holder")
        request.account_holder.account_number = card_number("bank.ccb", 5)
        response = await ask(kit, node, request)
        assert response.status == INVALID
        assert "account_number" in response.detail

    async def test_transactions_in_a_window_are_paged(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        request = kit.request("transactions")
        q = request.transactions
        q.account_number = hop.to_account
        q.window.start.FromDatetime(hop.ts - timedelta(days=89))
        q.window.end.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
        q.page.page_size = 500
        everything = (await ask(kit, node, request)).transactions
        incoming = [
            t
            for t in everything.transactions
            if t.counterparty_account == hop.from_account and t.direction == "in"
        ]
        assert [t.amount.minor_units for t in incoming] == [hop.amount_minor]
        assert everything.next_page_token == ""

        q.page.page_size = 1
        pages: list[str] = []
        token = ""
        for _ in range(len(everything.transactions)):
            q.page.page_token = token
            page = (await ask(kit, node, _fresh(kit, request))).transactions
            pages += [t.transaction_id for t in page.transactions]
            token = page.next_page_token
            if not token:
                break
        assert pages == [t.transaction_id for t in everything.transactions]

    async def test_all_accounts_under_an_id_number(self, kit: Any, bank_node: Any) -> None:
        victim = kit.world.chains[0].victim
        node = await bank_node(victim.bank_id)
        request = kit.request("accounts_by_id", target=victim.bank_id)
        request.accounts_by_id.id_number = victim.id_number
        result = (await ask(kit, node, request)).accounts_by_id
        assert result.holder_name == victim.name
        assert victim.account_number in [a.account_number for a in result.accounts]
        assert {a.status for a in result.accounts} <= {"normal", "stopped", "frozen", "closed"}

    async def test_login_records_in_a_window(self, kit: Any, bank_node: Any) -> None:
        victim = kit.world.chains[0].victim
        node = await bank_node(victim.bank_id)
        request = kit.request("login_records", target=victim.bank_id)
        request.login_records.account_number = victim.account_number
        request.login_records.window.start.FromDatetime(kit.world.now - timedelta(days=90))
        request.login_records.window.end.FromDatetime(kit.world.now + timedelta(days=1))
        result = (await ask(kit, node, request)).login_records
        assert result.account_number == victim.account_number
        times = [r.time.ToDatetime() for r in result.records]
        assert times == sorted(times)
        assert all(r.device_id and r.ip for r in result.records)

    async def test_aggregate_stats_count_without_personal_data(
        self, kit: Any, bank_node: Any
    ) -> None:
        node = await bank_node("bank.icbc")
        response = await ask(kit, node, kit.request("aggregate_stats"))
        assert response.status == OK
        assert response.aggregate_stats.metric == "stop_payments"
        assert response.aggregate_stats.count >= 0
        assert response.aggregate_stats.total.currency == "CNY"

    async def test_an_unknown_metric_is_invalid(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("aggregate_stats")
        request.aggregate_stats.metric = "balances_by_name"
        response = await ask(kit, node, request)
        assert response.status == INVALID
        assert "metric" in response.detail


class TestStageOne:
    """Staged disclosure, stage 1: the bank answers from core banking whether any account is
    held under the ID, and nothing more, automatically even where staff answer the details."""

    def _hits(self, kit: Any, bank: str, id_number: str) -> request_pb2.Request:
        request = kit.request("accounts_by_id", target=bank)
        request.accounts_by_id.id_number = id_number
        request.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
        return request

    async def test_hit_and_no_hit(self, kit: Any, bank_node: Any) -> None:
        victim = kit.world.chains[0].victim
        node = await bank_node(victim.bank_id, manual={"accounts_by_id"})
        response = await ask(kit, node, self._hits(kit, victim.bank_id, victim.id_number))
        assert response.status == OK
        assert response.WhichOneof("result") == "hit"
        assert response.hit.hit is True
        assert not response.detail
        assert not response.answered_by
        unknown = self._hits(kit, victim.bank_id, "440106195001019976")
        response = await ask(kit, node, unknown)
        assert (response.status, response.hit.hit) == (OK, False)

    async def test_only_accounts_by_id_has_a_stage_one(self, kit: Any, bank_node: Any) -> None:
        victim = kit.world.chains[0].victim
        node = await bank_node(victim.bank_id)
        request = kit.request("account_holder", target=victim.bank_id)
        request.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
        response = await ask(kit, node, request)
        assert response.status == INVALID
        assert "disclosure.stage" in response.detail
        assert response.WhichOneof("result") is None


def _fresh(kit: Any, request: request_pb2.Request) -> request_pb2.Request:
    """The same query under a new request id (a new page is a new request)."""
    again = kit.request("transactions")
    again.transactions.CopyFrom(request.transactions)
    return again


class TestStopPayment:
    async def test_matching_order_stops_the_account_for_48_hours(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        response = await ask(kit, node, kit.stop_request(hop))
        assert response.status == OK
        stop = response.stop_payment
        assert stop.in_force
        assert stop.stop_count == 1
        assert stop.end.ToDatetime() - stop.start.ToDatetime() == timedelta(hours=48)
        holder_query = kit.request("account_holder")
        holder_query.account_holder.account_number = hop.to_account
        assert (await ask(kit, node, holder_query)).account_holder.status == "stopped"

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"account_name": "王某某"}, "account_name does not match"),
            ("amount", "amount does not match"),
            ("time", "transfer_time does not match"),
        ],
    )
    async def test_mismatched_order_is_refused_with_the_reason(
        self, kit: Any, bank_node: Any, change: Any, reason: str
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        request = kit.stop_request(hop, **(change if isinstance(change, dict) else {}))
        if change == "amount":
            request.stop_payment.amount.minor_units = hop.amount_minor + 100
        if change == "time":
            request.stop_payment.transfer_time.FromDatetime(hop.ts - timedelta(hours=3))
        response = await ask(kit, node, request)
        assert response.status == REFUSED
        assert reason in response.detail
        assert response.WhichOneof("result") is None

    async def test_a_third_stop_payment_is_refused(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        counts = [
            (await ask(kit, node, kit.stop_request(hop))).stop_payment.stop_count for _ in (1, 2)
        ]
        assert counts == [1, 2]
        third = await ask(kit, node, kit.stop_request(hop))
        assert third.status == REFUSED
        assert "already been stopped 2 times" in third.detail

    async def test_release_and_extension_cite_the_original(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        order = kit.stop_request(hop)
        first = (await ask(kit, node, order)).stop_payment
        extend = kit.request("stop_payment_extend", original_request_id=order.request_id)
        extend.stop_payment_extend.account_number = hop.to_account
        extended = (await ask(kit, node, extend)).stop_payment
        assert extended.end.ToDatetime() == first.end.ToDatetime() + timedelta(hours=48)
        assert extended.stop_count == 2
        release = kit.request("stop_payment_release", original_request_id=order.request_id)
        release.stop_payment_release.account_number = hop.to_account
        released = await ask(kit, node, release)
        assert released.status == OK
        assert not released.stop_payment.in_force

    @pytest.mark.parametrize(
        ("orderer", "undoer", "action", "refusal"),
        [
            ("police.gd.afc", "police.gz.unit", "stop_payment_release", "ordering unit"),
            ("police.gd.afc", "police.gz.unit", "stop_payment_extend", "ordering unit"),
            ("police.gz.unit", "police.gd.afc", "stop_payment_release", None),
            ("police.gz.unit", "police.gz.unit", "stop_payment_extend", None),
            ("police.gd.afc", "police.gd.afc", "stop_payment_release", None),
        ],
    )
    async def test_only_the_ordering_unit_or_one_above_it_may_undo(
        self,
        kit: Any,
        bank_node: Any,
        orderer: str,
        undoer: str,
        action: str,
        refusal: str | None,
    ) -> None:
        """Defence in depth: the node checks who gave the order it executed (issue 10, item 2)."""
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")

        async def send(request: Any, member: str) -> Any:
            envelope = kit.sign(request, member)
            return kit.verify(envelope, await kit.link(node).handle(envelope))

        order = kit.stop_request(hop)
        order.requesting_agency = orderer
        assert (await send(order, orderer)).status == OK
        undo = kit.request(action, requesting_agency=undoer, original_request_id=order.request_id)
        getattr(undo, action).account_number = hop.to_account
        response = await send(undo, undoer)
        if refusal is None:
            assert response.status == OK, response.detail
            return
        assert response.status == REFUSED
        assert response.detail == (
            f"RULE undo.by_ordering_unit_or_above: stop_payment {order.request_id} was ordered "
            f"by {orderer}: only {orderer} or a member above it (none) may "
            f"{action.replace('_', ' ')} it, not {undoer}"
        )

    async def test_an_undo_citing_an_order_on_another_account_is_refused(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        order = kit.stop_request(hop)
        assert (await ask(kit, node, order)).status == OK
        release = kit.request("stop_payment_release", original_request_id=order.request_id)
        release.stop_payment_release.account_number = card_number("bank.icbc", 999)
        response = await ask(kit, node, release)
        assert response.status == REFUSED
        assert response.detail.startswith(
            f"RULE undo.cites_original_order: stop_payment {order.request_id} is on "
        )

    async def test_release_of_a_stop_payment_that_does_not_exist_is_refused(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        release = kit.request("stop_payment_release")  # cites a fresh, unknown request id
        release.stop_payment_release.account_number = hop.to_account
        response = await ask(kit, node, release)
        assert response.status == REFUSED
        assert response.detail == (
            f"RULE undo.cites_original_order: {release.original_request_id} is not an order "
            "bank.icbc executed"
        )


class TestFreeze:
    def _freeze(self, kit: Any, hop: Any, *, amount: int = 100_00, days: int = 90) -> Any:
        request = kit.request("freeze")
        order = request.freeze
        order.account_number = hop.to_account
        order.account_name = hop.to_name
        order.amount.minor_units = amount
        order.end.FromDatetime(datetime.now(UTC) + timedelta(days=days))
        return request

    async def test_fixed_amount_freeze_reports_balances_and_earlier_freezes(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        first = (await ask(kit, node, self._freeze(kit, hop))).freeze
        assert first.in_force
        assert first.amount_frozen.minor_units == 100_00
        assert first.available_balance.minor_units == first.balance.minor_units - 100_00
        assert list(first.prior_freezes) == []
        second_request = self._freeze(kit, hop, amount=50_00)
        second_request.freeze.method = bank_pb2.FREEZE_METHOD_RECEIVE_ONLY
        second_request.freeze.ClearField("amount")
        second_request.legal_document.number += "-2"  # a second decision, not a repeat
        second = (await ask(kit, node, second_request)).freeze
        assert [p.amount.minor_units for p in second.prior_freezes] == [100_00]
        assert second.prior_freezes[0].agency == "police.gd.afc"

    async def test_freeze_past_six_months_is_refused(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        response = await ask(kit, node, self._freeze(kit, hop, days=200))
        assert response.status == REFUSED
        assert "183 days" in response.detail or "6 months" in response.detail

    async def test_renew_and_release_cite_the_original(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        order = self._freeze(kit, hop, days=30)
        await ask(kit, node, order)
        renew = kit.request("freeze_renew", original_request_id=order.request_id)
        renew.freeze_renew.account_number = hop.to_account
        new_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=150)
        renew.freeze_renew.end.FromDatetime(new_end)
        renewed = (await ask(kit, node, renew)).freeze
        assert renewed.end.ToDatetime(tzinfo=UTC) == new_end
        release = kit.request("freeze_release", original_request_id=order.request_id)
        release.freeze_release.account_number = hop.to_account
        released = await ask(kit, node, release)
        assert released.status == OK
        assert not released.freeze.in_force


class FakeGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Stands in for the gateway's Submit (a fake at the public seam): records envelopes."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    async def Submit(self, request: Any, context: Any) -> Any:
        self.received.append(request.envelope)
        body = request_pb2.Request.FromString(request.envelope.body)
        ticket = ticket_pb2.Ticket(
            ticket_id=body.request_id,
            target_agency=body.target_agency,
            state=ticket_pb2.TICKET_STATE_WAITING,
        )
        return gateway_service_pb2.SubmitResponse(ticket=ticket)


async def start_fake_gateway(kit: Any) -> tuple[grpc.aio.Server, FakeGateway, str]:
    server = grpc.aio.server()
    fake = FakeGateway()
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(kit.creds("gateway")))
    await server.start()
    return server, fake, f"127.0.0.1:{port}"


class TestMonitoring:
    async def test_new_transactions_are_pushed_to_the_police_who_asked(
        self, kit: Any, bank_node: Any
    ) -> None:
        from fedgate.envelope import Domain, verify_envelope
        from fedgate.types import KeyId

        _, hop = kit.hop_into("bank.icbc")
        server, fake, endpoint = await start_fake_gateway(kit)
        try:
            node = await bank_node("bank.icbc", gateway_endpoint=endpoint)
            start = kit.request("monitor_start")
            start.monitor_start.account_number = hop.to_account
            started = await ask(kit, node, start)
            assert started.monitor.active
            assert await node.push_monitored() == 0
            tx = node.core.record_transaction(
                hop.to_account,
                direction=Direction.IN,
                amount_minor=12_345,
                counterparty_account=hop.from_account,
                counterparty_name=hop.from_name,
                counterparty_bank=hop.from_bank,
            )
            assert await node.push_monitored() == 1
            assert await node.push_monitored() == 0  # delivered once
            (envelope,) = fake.received
            member, key = kit.registry.signing_key(KeyId(envelope.key_id), at=datetime.now(UTC))
            assert member.id == "bank.icbc"
            verify_envelope(envelope, key, Domain.REQUEST)
            report = request_pb2.Request.FromString(envelope.body)
            assert report.target_agency == "police.gd.afc"
            assert report.requesting_agency == "bank.icbc"
            assert report.legal_document.kind == 8  # AGENCY_REPORT
            assert report.officer.role == 4  # ROLE_BANK_STAFF
            assert report.case.case_number == start.case.case_number
            pushed = report.monitored_transaction
            assert pushed.monitor_request_id == start.request_id
            assert pushed.transaction.transaction_id == str(tx.id)
            assert pushed.transaction.amount.minor_units == 12_345

            stop = kit.request("monitor_stop", original_request_id=start.request_id)
            stop.monitor_stop.account_number = hop.to_account
            stopped = await ask(kit, node, stop)
            assert not stopped.monitor.active
            node.core.record_transaction(
                hop.to_account,
                direction=Direction.IN,
                amount_minor=1_00,
                counterparty_account=hop.from_account,
                counterparty_name=hop.from_name,
                counterparty_bank=hop.from_bank,
            )
            assert await node.push_monitored() == 0
        finally:
            await server.stop(None)

    async def test_unreachable_gateway_is_retried_without_losing_transactions(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        server, _, endpoint = await start_fake_gateway(kit)
        await server.stop(None)  # the address is known but nobody answers there
        node = await bank_node("bank.icbc", gateway_endpoint=endpoint)
        start = kit.request("monitor_start")
        start.monitor_start.account_number = hop.to_account
        await ask(kit, node, start)
        node.core.record_transaction(
            hop.to_account,
            direction=Direction.IN,
            amount_minor=777,
            counterparty_account=hop.from_account,
            counterparty_name=hop.from_name,
            counterparty_bank=hop.from_bank,
        )
        assert await node.push_monitored() == 0
        (watch,) = node.ledger.active(datetime.now(UTC))
        assert watch.last_id < max(
            t.id for t in node.core.new_transactions_since(hop.to_account, 0)
        )


class TestReports:
    async def test_send_report_goes_to_the_gateway_signed_by_the_bank(
        self, kit: Any, bank_node: Any
    ) -> None:
        server, fake, endpoint = await start_fake_gateway(kit)
        try:
            node = await bank_node("bank.icbc", gateway_endpoint=endpoint)
            template = kit.request("case_report", target="police.gd.afc")
            submitted = await node.send_report(
                target="police.gd.afc",
                report=template.case_report,
                case=template.case,
                reference="ICBC-GZ-0001",
            )
            assert submitted.ticket is not None
            (envelope,) = fake.received
            report = request_pb2.Request.FromString(envelope.body)
            assert report.WhichOneof("action") == "case_report"
            assert report.case_report == template.case_report
            assert report.legal_document.number == "ICBC-GZ-0001"
        finally:
            await server.stop(None)
