"""Every bank and carrier action end to end (issues 5 and 6): the police ``FedgateClient`` →
a real gateway → real bank and carrier nodes on a seeded world, over loopback mTLS, and back.

The client checks every answer (agency signature, binding to the request, the gateway's
countersignature, the receipt's inclusion proof); the tests check the answer against the
world's ground truth (``World.chains``) and the reference backends, and that every refusal
is the documented one and is in the audit log.

One gateway and one node per member serve the whole module; each test takes its own accounts
and numbers from the world (``E2E.take_hop``, ``E2E.take_fraud_number``) so that the orders of
one test never change what another one sees.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from adapters.bank.node import BankNode
from adapters.carrier.backend import SubscriberSystem
from adapters.carrier.node import CarrierNode
from adapters.config import ActionMode, NodeConfig
from adapters.node import AgencyNode
from adapters.synth import FraudChain, FraudNumber, Hop, World
from fedgate.actions import RESULT_FIELD, new_request_id
from fedgate.audit_entry import AuditEntry, RequestLeg, ResponseLeg, decode_entry
from fedgate.client import Answer, FedgateClient
from fedgate.errors import FedgateError, InvalidArgument, NotFound, RuleViolated
from fedgate.testing import (
    LEGAL_KIND,
    case_number,
    mobile_number,
    officer,
    resident_id,
    second_officer,
)
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, carrier_pb2, common_pb2, gateway_service_pb2, request_pb2
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    TicketsConfig,
)
from gateway.server import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICE = MemberId("police.gd.afc")
PBOC = MemberId("pboc.gz")
BANKS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb")
CARRIERS = ("carrier.cmcc", "carrier.cucc", "carrier.ctcc")
SC = grpc.StatusCode
OK = request_pb2.RESPONSE_STATUS_OK
REFUSED = request_pb2.RESPONSE_STATUS_REFUSED
DOC = common_pb2.LegalDocumentKind
DUTY_PHONE = "020-83113110"

_DOC_PREFIX: dict[DOC.ValueType, str] = {
    common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION: "穗公(反诈)立字",
    common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE: "穗公(反诈)查字",
    common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE: "穗公(反诈)止字",
    common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE: "穗公(反诈)冻字",
    common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE: "穗公(反诈)解字",
    common_pb2.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE: "穗公(反诈)证字",
    common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER: "穗公(反诈)反制字",
}


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def when(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def window(start: datetime, end: datetime) -> common_pb2.TimeWindow:
    return common_pb2.TimeWindow(start=stamp(start), end=stamp(end))


def now_s() -> datetime:
    """Now, to the second (so that times sent and times answered compare exactly)."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class E2E:
    """The running federation and the world it serves, seen from the police side."""

    world: World
    gateway: Gateway
    nodes: dict[str, AgencyNode]
    police: FedgateClient
    pboc: FedgateClient
    serial: int = 0
    used: set[str] = field(default_factory=set)

    # -- the world's ground truth, handed out once each -------------------------------------

    def bank(self, member: str) -> BankNode:
        node = self.nodes[member]
        assert isinstance(node, BankNode)
        return node

    def carrier(self, member: str) -> CarrierNode:
        node = self.nodes[member]
        assert isinstance(node, CarrierNode)
        return node

    def take_hop(self, *, bank: str | None = None, last: bool = False) -> Hop:
        """A fraud-chain transfer whose receiving account no other test has taken (``last``:
        the final hop of its chain, where the money still sits)."""
        # Final hops whose mule sent nothing on (the world's truth: odd chains end with part of
        # the money sent out of the federation); the mule's own spending is its own money.
        finals = [
            c.hops[-1]
            for c in self.world.chains
            if not any(d.from_account == c.hops[-1].to_account for d in c.dead_ends)
        ]
        # Other tests get the hops in the middle of the chains first: few chains, few finals.
        others = [h for c in self.world.chains for h in c.hops[:-1]]
        for hop in finals if last else others + finals:
            if hop.to_account in self.used or (bank is not None and hop.to_bank != bank):
                continue
            self.used.add(hop.to_account)
            return hop
        raise LookupError(f"no untaken hop (bank={bank}, last={last}) in the seeded world")

    def take_fraud_number(self, carrier: str | None = None) -> tuple[FraudChain, FraudNumber]:
        """A number used in a chain to call its victim, not yet taken by another test."""
        for chain in self.world.chains:
            for number in chain.fraud_numbers:
                if number.number in self.used:
                    continue
                if carrier is not None and number.carrier_id != carrier:
                    continue
                self.used.add(number.number)
                return chain, number
        raise LookupError(f"no untaken fraud number (carrier={carrier}) in the seeded world")

    # -- requests -----------------------------------------------------------------------------

    def request(
        self,
        name: str,
        action: Message,
        *,
        target: str,
        client: FedgateClient | None = None,
        who: common_pb2.Person | None = None,
        kind: DOC.ValueType | None = None,
        second: common_pb2.Person | None = None,
        original_request_id: str = "",
        urgency: common_pb2.Urgency.ValueType = common_pb2.URGENCY_ROUTINE,
        purpose: str = "核查电信网络诈骗案件涉案线索",
    ) -> request_pb2.Request:
        """A fresh request for ``name`` under a new case, built by the client SDK."""
        self.serial += 1
        now = datetime.now(UTC)
        kind = (
            LEGAL_KIND.get(name, common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE)
            if kind is None
            else kind
        )
        document = common_pb2.LegalDocument(
            kind=kind,
            number=f"{_DOC_PREFIX[kind]}〔{now.year}〕{self.serial:05d}号",
            issued_at=stamp(now - timedelta(hours=1)),
        )
        case = common_pb2.CaseInfo(
            case_number=case_number(self.serial, when=now.date()),
            case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            reason="受害人被冒充客服诱导转账",
        )
        request = (client or self.police).new_request(
            action=action,
            officer=who or officer(0),
            target=target,
            case=case,
            legal_document=document,
            purpose=purpose,
            urgency=urgency,
            second_officer=second,
            original_request_id=original_request_id,
            action_name=name,
        )
        assert request.WhichOneof("action") == name
        return request

    async def ask(
        self, request: request_pb2.Request, *, client: FedgateClient | None = None
    ) -> request_pb2.Response:
        """Submit; the answer is verified by the client, signed by the target, and its
        response leg is in the log with the answer's status."""
        answer: Answer = await (client or self.police).ask(request)
        response = answer.response
        assert response.request_id == request.request_id
        assert response.responder == request.target_agency
        assert answer.receipt.leaf_index > answer.receipt.request_leaf_index
        leg = decode_entry(await self.gateway.audit.get_entry(answer.receipt.leaf_index))
        assert isinstance(leg, ResponseLeg)
        assert leg.request_id == request.request_id
        status = request_pb2.ResponseStatus.Name(response.status)
        assert leg.status == status.removeprefix("RESPONSE_STATUS_").lower()
        return response

    async def ok(
        self, request: request_pb2.Request, *, client: FedgateClient | None = None
    ) -> request_pb2.Response:
        """``ask``, insisting on status OK with the action's result field set."""
        response = await self.ask(request, client=client)
        assert response.status == OK, response.detail
        action = request.WhichOneof("action")
        assert action is not None
        assert response.WhichOneof("result") == RESULT_FIELD[action]
        return response

    async def refused(
        self, request: request_pb2.Request, *, client: FedgateClient | None = None
    ) -> tuple[FedgateError, RequestLeg]:
        """Submit and expect the gateway to refuse: the error, and the refused request leg
        (the only entry for this request: nothing was forwarded)."""
        start = self.gateway.audit.size
        with pytest.raises(FedgateError) as info:
            await (client or self.police).submit(request)
        wire = info.value.__cause__
        assert isinstance(wire, grpc.aio.AioRpcError)
        assert wire.code() == info.value.code  # the status on the wire, not only the reason
        entries = await self.entries_for(request.request_id, start=start)
        assert len(entries) == 1, entries
        leg = entries[0]
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"
        assert leg.rule.startswith(f"{info.value.reason}: "), leg.rule
        with pytest.raises(NotFound):
            await self.nodes[request.target_agency].get_result(request.request_id)
        return info.value, leg

    async def entries_for(self, request_id: str, *, start: int = 0) -> list[AuditEntry]:
        log = self.gateway.audit
        found = []
        for index in range(start, log.size):
            entry = decode_entry(await log.get_entry(index))
            if getattr(entry, "request_id", None) == request_id:
                found.append(entry)
        return found

    async def number_order(
        self,
        request: request_pb2.Request,
        number: str,
        kind: carrier_pb2.NumberOrderKind.ValueType,
        status: str,
    ) -> carrier_pb2.NumberOrderResult:
        """``ok`` for a carrier order, insisting on its subject, kind and resulting status."""
        result = (await self.ok(request)).number_order
        assert (result.subject, result.kind, result.status) == (number, kind, status)
        return result

    # -- orders used by several tests ----------------------------------------------------------

    def stop_payment(self, hop: Hop, **changes: str) -> request_pb2.Request:
        """An emergency stop-payment on the account that received ``hop``, as the victim's
        report gives it (``changes`` replace fields, to make it wrong)."""
        order = bank_pb2.StopPaymentOrder(
            account_number=hop.to_account,
            account_name=hop.to_name,
            payer_account=hop.from_account,
            payer_name=hop.from_name,
            payer_bank=hop.from_bank,
            amount=common_pb2.Money(currency=hop.currency, minor_units=hop.amount_minor),
            transfer_time=stamp(hop.ts),
            victim_application=f"SQ{hop.ts:%Y%m%d}{self.serial + 1:04d}",
        )
        for name, value in changes.items():
            setattr(order, name, value)
        return self.request(
            "stop_payment",
            order,
            target=hop.to_bank,
            urgency=common_pb2.URGENCY_EMERGENCY,
            purpose="受害人报案，资金正在转移，申请紧急止付",
        )


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("every-action")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def e2e(fed_dir: Path, world_template: World, module_dir: Path) -> AsyncIterator[E2E]:
    """The gateway in front of every bank and carrier node of a private copy of the world."""
    shutil.copytree(world_template.directory, module_dir / "world")
    world = replace(world_template, directory=module_dir / "world")
    nodes: dict[str, AgencyNode] = {}
    gateway: Gateway | None = None
    clients: list[FedgateClient] = []
    try:
        for member in (*BANKS, *CARRIERS):
            is_bank = member in BANKS
            config = NodeConfig(
                member_id=MemberId(member),
                federation_dir=fed_dir,
                state_dir=module_dir / "nodes" / member,
                listen="127.0.0.1:0",
                staff=(f"{member.split('.')[1]}.zhang",),
                backend_path=world.database(member),
                # Automatic for every action, said explicitly for the two that `fedgate up`
                # leaves to stationed staff.
                default_mode=ActionMode.AUTOMATIC,
                modes={("transactions" if is_bank else "call_records"): ActionMode.AUTOMATIC},
                monitor_poll_s=3600.0,
            )
            node: AgencyNode = (BankNode if is_bank else CarrierNode).open(config)
            await node.start()
            nodes[member] = node
        gateway = await Gateway.start(
            GatewayConfig(
                federation=FederationConfig(dir=fed_dir),
                pipeline=PipelineConfig(state_dir=module_dir / "gateway"),
                server=ServerConfig(listen="127.0.0.1:0", grace_period_s=1.0),
                routing=RoutingConfig(
                    timeout_s=5.0, endpoints={MemberId(m): n.endpoint for m, n in nodes.items()}
                ),
                quotas={"officer_burst": 200, "officer_per_minute": 600},
                tickets=TicketsConfig(poll_interval_s=0.05),
            )
        )
        for member in (POLICE, PBOC):
            clients.append(
                FedgateClient.from_federation(fed_dir, member, endpoint=gateway.endpoint)
            )
        yield E2E(world=world, gateway=gateway, nodes=nodes, police=clients[0], pboc=clients[1])
    finally:
        for client in clients:
            await client.close()
        if gateway is not None:
            await gateway.stop(0.5)
        for node in nodes.values():
            await node.stop(grace=None)


# ----------------------------------------------------------------------------- bank queries


class TestBankQueries:
    async def test_account_holder_of_a_mule_account(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        truth = e2e.bank(hop.to_bank).core.account_holder(hop.to_account)
        request = e2e.request(
            "account_holder",
            bank_pb2.AccountHolderQuery(account_number=hop.to_account),
            target=hop.to_bank,
        )
        result = (await e2e.ok(request)).account_holder
        assert result.account_number == hop.to_account
        assert result.account_name == hop.to_name
        assert result.id_number == truth.id_number
        assert result.phone == truth.phone
        assert result.branch == truth.branch
        assert result.status == "normal"
        assert result.balance == common_pb2.Money(currency="CNY", minor_units=truth.balance_minor)
        assert truth.balance_minor >= 0

    async def test_transactions_of_the_victim_page_by_page(self, e2e: E2E) -> None:
        chain = e2e.world.chains[0]
        victim, first = chain.victim, chain.hops[0]
        core = e2e.bank(victim.bank_id).core
        start, end = now_s() - timedelta(days=91), now_s() + timedelta(hours=1)
        every = core.transactions(
            victim.account_number, start, end, page_size=1000, page_token=""
        ).transactions
        assert len(every) >= 3
        page_size = (len(every) + 2) // 3

        seen: list[bank_pb2.Transaction] = []
        token, pages = "", 0
        while True:
            query = bank_pb2.TransactionsQuery(
                account_number=victim.account_number,
                window=window(start, end),
                page=common_pb2.PageRequest(page_size=page_size, page_token=token),
            )
            result = (
                await e2e.ok(e2e.request("transactions", query, target=victim.bank_id))
            ).transactions
            assert result.account_number == victim.account_number
            assert len(result.transactions) <= page_size
            seen.extend(result.transactions)
            pages += 1
            token = result.next_page_token
            if not token:
                break
        assert pages >= 3
        assert [t.transaction_id for t in seen] == [str(t.id) for t in every]
        assert [when(t.time) for t in seen] == sorted(when(t.time) for t in seen)
        # The victim's own transfer to the first mule is in the statement.
        (transfer,) = [
            t
            for t in seen
            if t.direction == "out"
            and t.counterparty_account == first.to_account
            and when(t.time) == first.ts
        ]
        assert transfer.amount == common_pb2.Money(currency="CNY", minor_units=first.amount_minor)
        assert transfer.counterparty_name == first.to_name
        assert transfer.counterparty_bank == first.to_bank

    async def test_accounts_by_id_of_the_victim(self, e2e: E2E) -> None:
        victim = e2e.world.chains[1].victim
        truth = e2e.bank(victim.bank_id).core.accounts_by_id(victim.id_number)
        request = e2e.request(
            "accounts_by_id",
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            target=victim.bank_id,
        )
        result = (await e2e.ok(request)).accounts_by_id
        assert result.id_number == victim.id_number
        assert result.holder_name == victim.name
        numbers = [a.account_number for a in result.accounts]
        assert victim.account_number in numbers
        assert numbers == [s.account_number for s in truth]
        assert [a.balance.minor_units for a in result.accounts] == [s.balance_minor for s in truth]

    async def test_login_records_of_a_mule_account(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        core = e2e.bank(hop.to_bank).core
        start, end = now_s() - timedelta(days=7), now_s() + timedelta(hours=1)
        truth = core.login_records(hop.to_account, start, end)
        request = e2e.request(
            "login_records",
            bank_pb2.LoginRecordsQuery(account_number=hop.to_account, window=window(start, end)),
            target=hop.to_bank,
        )
        result = (await e2e.ok(request)).login_records
        assert result.account_number == hop.to_account
        assert [(when(r.time), r.device_id, r.ip) for r in result.records] == [
            (t.ts, t.device_id, t.ip) for t in truth
        ]
        # The mule logged in around the transfer it received (the chain's shared device).
        near = [r for r in result.records if abs(when(r.time) - hop.ts) <= timedelta(minutes=2)]
        assert len(near) >= 2
        assert len({r.device_id for r in near}) == 1


# ----------------------------------------------------------------------------- bank orders


class TestBankOrders:
    async def test_stop_payment_then_extend_then_release(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        core = e2e.bank(hop.to_bank).core
        stop = e2e.stop_payment(hop)
        result = (await e2e.ok(stop)).stop_payment
        assert result.account_number == hop.to_account
        assert result.in_force
        assert result.stop_count == 1
        assert when(result.end) - when(result.start) == timedelta(hours=48)
        assert abs(when(result.start) - datetime.now(UTC)) < timedelta(seconds=30)
        truth = core.account_holder(hop.to_account)
        assert truth.stopped
        assert result.balance.minor_units == truth.balance_minor
        assert truth.balance_minor >= 0

        extend = e2e.request(
            "stop_payment_extend",
            bank_pb2.StopPaymentExtendOrder(
                account_number=hop.to_account, reason="案件尚在侦查，需延长止付"
            ),
            target=hop.to_bank,
            original_request_id=stop.request_id,
        )
        extended = (await e2e.ok(extend)).stop_payment
        assert extended.in_force
        assert extended.start == result.start
        assert when(extended.end) == when(result.end) + timedelta(hours=48)
        assert extended.stop_count == 2

        release = e2e.request(
            "stop_payment_release",
            bank_pb2.StopPaymentReleaseOrder(
                account_number=hop.to_account, reason="经核查资金与案件无关"
            ),
            target=hop.to_bank,
            original_request_id=stop.request_id,
        )
        released = (await e2e.ok(release)).stop_payment
        assert not released.in_force
        assert when(released.end) <= datetime.now(UTC)
        assert not core.account_holder(hop.to_account).stopped

    async def test_freeze_then_renew_then_release(self, e2e: E2E) -> None:
        hop = e2e.take_hop(last=True)
        core = e2e.bank(hop.to_bank).core
        balance = core.account_holder(hop.to_account).balance_minor
        assert balance >= hop.amount_minor  # the end of the chain: the money is still there
        now = now_s()
        freeze = e2e.request(
            "freeze",
            bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_FIXED_AMOUNT,
                amount=common_pb2.Money(currency="CNY", minor_units=hop.amount_minor),
                start=stamp(now),
                end=stamp(now + timedelta(days=90)),
                duty_phone=DUTY_PHONE,
                bulk_count=1,
            ),
            target=hop.to_bank,
            purpose="已立案，冻结涉案账户资金以便返还受害人",
        )
        assert freeze.legal_document.kind == common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION
        result = (await e2e.ok(freeze)).freeze
        assert result.account_number == hop.to_account
        assert result.in_force
        assert result.amount_frozen.minor_units == hop.amount_minor
        assert result.balance.minor_units == balance
        assert result.available_balance.minor_units == balance - hop.amount_minor
        assert when(result.end) == now + timedelta(days=90)
        assert list(result.prior_freezes) == []
        assert core.account_holder(hop.to_account).frozen

        renew = e2e.request(
            "freeze_renew",
            bank_pb2.FreezeRenewOrder(
                account_number=hop.to_account, end=stamp(now + timedelta(days=120))
            ),
            target=hop.to_bank,
            original_request_id=freeze.request_id,
        )
        renewed = (await e2e.ok(renew)).freeze
        assert renewed.in_force
        assert when(renewed.end) == now + timedelta(days=120)
        assert renewed.amount_frozen.minor_units == hop.amount_minor

        release = e2e.request(
            "freeze_release",
            bank_pb2.FreezeReleaseOrder(account_number=hop.to_account, reason="资金已返还受害人"),
            target=hop.to_bank,
            original_request_id=freeze.request_id,
        )
        released = (await e2e.ok(release)).freeze
        assert not released.in_force
        assert released.amount_frozen.minor_units == 0
        assert released.available_balance.minor_units == balance
        assert not core.account_holder(hop.to_account).frozen

    async def test_monitor_start_then_stop(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        until = now_s() + timedelta(days=30)
        start = e2e.request(
            "monitor_start",
            bank_pb2.MonitorStartOrder(account_number=hop.to_account, until=stamp(until)),
            target=hop.to_bank,
        )
        started = (await e2e.ok(start)).monitor
        assert (started.account_number, started.active, when(started.until)) == (
            hop.to_account,
            True,
            until,
        )
        assert [m.account_number for m in e2e.bank(hop.to_bank).core.monitored_accounts()] == [
            hop.to_account
        ]

        stop = e2e.request(
            "monitor_stop",
            bank_pb2.MonitorStopOrder(account_number=hop.to_account),
            target=hop.to_bank,
            original_request_id=start.request_id,
        )
        stopped = (await e2e.ok(stop)).monitor
        assert stopped.account_number == hop.to_account
        assert not stopped.active
        assert e2e.bank(hop.to_bank).core.monitored_accounts() == ()

    async def test_aggregate_stats_for_the_central_bank_count_the_stop(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        assert (await e2e.ok(e2e.stop_payment(hop))).stop_payment.in_force
        start, end = now_s() - timedelta(days=1), now_s() + timedelta(hours=1)
        request = e2e.request(
            "aggregate_stats",
            bank_pb2.AggregateStatsQuery(metric="stop_payments", window=window(start, end)),
            target=hop.to_bank,
            client=e2e.pboc,
            who=officer(7, role=common_pb2.ROLE_CENTRAL_BANK_ANALYST),
            purpose="统计本季度紧急止付情况",
        )
        assert request.requesting_agency == PBOC
        result = (await e2e.ok(request, client=e2e.pboc)).aggregate_stats
        truth = e2e.bank(hop.to_bank).core.aggregate_stats("stop_payments", start, end)
        assert result.metric == "stop_payments"
        assert result.count >= 1
        assert result.total.minor_units >= hop.amount_minor
        assert (result.count, result.total.minor_units) == (truth.count, truth.total_minor)


# ----------------------------------------------------------------------------- carrier queries


class TestCarrierQueries:
    async def test_subscriber_of_the_victims_number(self, e2e: E2E) -> None:
        victim = e2e.world.chains[0].victim
        request = e2e.request(
            "subscriber",
            carrier_pb2.SubscriberQuery(phone_number=victim.phone),
            target=victim.carrier_id,
        )
        result = (await e2e.ok(request)).subscriber
        assert result.phone_number == victim.phone
        assert result.name == victim.name
        assert result.id_number == victim.id_number
        assert result.status == "active"

    async def test_subscriber_of_the_calling_number(self, e2e: E2E) -> None:
        _, number = e2e.take_fraud_number()
        truth = e2e.carrier(number.carrier_id).core.subscriber(number.number)
        request = e2e.request(
            "subscriber",
            carrier_pb2.SubscriberQuery(phone_number=number.number),
            target=number.carrier_id,
        )
        result = (await e2e.ok(request)).subscriber
        assert (result.phone_number, result.name, result.id_number, result.channel) == (
            number.number,
            truth.name,
            truth.id_number,
            truth.channel.value,
        )
        assert when(result.registered_at) == truth.registered_at

        status = e2e.request(
            "number_status",
            carrier_pb2.NumberStatusQuery(phone_number=number.number),
            target=number.carrier_id,
        )
        answered = (await e2e.ok(status)).number_status
        assert (answered.phone_number, answered.status) == (number.number, "active")
        assert when(answered.since) == truth.registered_at

    async def test_sim_count_of_the_victim_and_of_an_unknown_id(self, e2e: E2E) -> None:
        victim = e2e.world.chains[0].victim
        core = e2e.carrier(victim.carrier_id).core
        request = e2e.request(
            "sim_count",
            carrier_pb2.SimCountQuery(id_number=victim.id_number),
            target=victim.carrier_id,
        )
        result = (await e2e.ok(request)).sim_count
        assert result.id_number == victim.id_number
        assert result.live_sims >= 1
        assert result.live_sims == core.sim_count(victim.id_number)

        nobody = resident_id(901)
        assert core.sim_count(nobody) == 0
        request = e2e.request(
            "sim_count", carrier_pb2.SimCountQuery(id_number=nobody), target=victim.carrier_id
        )
        assert (await e2e.ok(request)).sim_count.live_sims == 0

    async def test_call_records_of_the_calling_number_with_a_second_officer(self, e2e: E2E) -> None:
        chain, number = e2e.take_fraud_number("carrier.cucc")
        start, end = now_s() - timedelta(days=14), now_s() + timedelta(hours=1)
        truth = e2e.carrier(number.carrier_id).core.call_records(
            number.number, start, end, page_size=1000, page_token="", include_sms=True
        )
        request = e2e.request(
            "call_records",
            carrier_pb2.CallRecordsQuery(
                phone_number=number.number,
                window=window(start, end),
                include_sms=True,
                page=common_pb2.PageRequest(page_size=200),
            ),
            target=number.carrier_id,
            second=second_officer(),
            purpose="调取涉案号码通话记录以查明作案人员",
        )
        assert request.second_officer.id != request.officer.id
        result = (await e2e.ok(request)).call_records
        assert result.phone_number == number.number
        assert result.next_page_token == ""
        assert [(when(r.time), r.counterparty) for r in result.records] == [
            (r.ts, r.other_number) for r in truth.records
        ]
        # The number called its victim, shortly before the first contact was reported.
        to_victim = [
            r
            for r in result.records
            if r.counterparty == chain.victim.phone and r.direction == "out"
        ]
        assert to_victim
        # A number does not call itself (the generator once let the fraudster be "another").
        assert number.number not in {r.counterparty for r in result.records}
        assert {r.kind for r in to_victim} <= {"call", "sms"}
        assert all(abs(when(r.time) - chain.first_contact) < timedelta(hours=1) for r in to_victim)

    async def test_location_of_the_calling_number(self, e2e: E2E) -> None:
        _, number = e2e.take_fraud_number()
        at = now_s()
        truth = e2e.carrier(number.carrier_id).core.location(number.number, at)
        request = e2e.request(
            "location",
            carrier_pb2.LocationQuery(phone_number=number.number, at=stamp(at)),
            target=number.carrier_id,
            second=second_officer(),
            purpose="定位涉案号码以抓捕嫌疑人",
        )
        result = (await e2e.ok(request)).location
        assert (result.phone_number, result.cell_id) == (number.number, truth.cell_id)
        assert (result.latitude, result.longitude) == (truth.lat, truth.lon)
        assert when(result.observed_at) == truth.observed_at
        assert at - timedelta(hours=24) < when(result.observed_at) <= at

    async def test_an_unknown_number_in_range_is_a_signed_not_found(self, e2e: E2E) -> None:
        core = e2e.carrier("carrier.cmcc").core
        number = _unassigned(core, "carrier.cmcc")
        request = e2e.request(
            "subscriber", carrier_pb2.SubscriberQuery(phone_number=number), target="carrier.cmcc"
        )
        response = await e2e.ask(request)
        assert response.status == request_pb2.RESPONSE_STATUS_NOT_FOUND
        assert response.WhichOneof("result") is None
        assert "not assigned" in response.detail

    async def test_a_number_of_another_carrier_is_invalid_at_the_gateway(self, e2e: E2E) -> None:
        foreign = next(
            n.number
            for c in e2e.world.chains
            for n in c.fraud_numbers
            if n.carrier_id != "carrier.cmcc"
        )
        request = e2e.request(
            "subscriber", carrier_pb2.SubscriberQuery(phone_number=foreign), target="carrier.cmcc"
        )
        error, _ = await e2e.refused(request)
        assert isinstance(error, InvalidArgument)
        assert isinstance(error.__cause__, grpc.aio.AioRpcError)
        assert error.__cause__.code() == SC.INVALID_ARGUMENT
        (violation,) = error.violations
        assert violation.field == "subscriber.phone_number"
        assert "not carrier.cmcc" in violation.description
        assert foreign not in violation.description  # masked


def _unassigned(core: SubscriberSystem, carrier: str) -> str:
    """A number in ``carrier``'s ranges that the carrier has not assigned to anyone."""
    for serial in range(1000):
        number = mobile_number(carrier, serial)
        try:
            core.subscriber(number)
        except NotFound:
            return number
    raise LookupError(f"every number tried is assigned at {carrier}")


# ----------------------------------------------------------------------------- carrier orders


class TestCarrierOrders:
    async def test_suspend_then_restore_the_calling_number(self, e2e: E2E) -> None:
        _, number = e2e.take_fraud_number("carrier.cmcc")
        carrier = number.carrier_id
        suspend = e2e.request(
            "number_suspend",
            carrier_pb2.NumberSuspendOrder(
                phone_number=number.number, reason="该号码用于冒充客服实施诈骗"
            ),
            target=carrier,
            urgency=common_pb2.URGENCY_URGENT,
        )
        result = await e2e.number_order(
            suspend, number.number, carrier_pb2.NUMBER_ORDER_KIND_SUSPEND, "suspended"
        )
        status = e2e.request(
            "number_status",
            carrier_pb2.NumberStatusQuery(phone_number=number.number),
            target=carrier,
        )
        answered = (await e2e.ok(status)).number_status
        assert answered.status == "suspended"
        assert answered.since == result.effective_at

        restore = e2e.request(
            "number_restore",
            carrier_pb2.NumberRestoreOrder(phone_number=number.number, reason="申诉核查属实"),
            target=carrier,
            original_request_id=suspend.request_id,
        )
        await e2e.number_order(
            restore, number.number, carrier_pb2.NUMBER_ORDER_KIND_RESTORE, "active"
        )
        truth = e2e.carrier(carrier).core.number_status(number.number)
        assert (truth.state.value, truth.order_ref) == ("active", restore.request_id)

    async def test_block_the_calling_number(self, e2e: E2E) -> None:
        _, number = e2e.take_fraud_number()
        block = e2e.request(
            "number_block",
            carrier_pb2.NumberBlockOrder(phone_number=number.number, reason="涉诈号码，予以封停"),
            target=number.carrier_id,
        )
        await e2e.number_order(block, number.number, carrier_pb2.NUMBER_ORDER_KIND_BLOCK, "blocked")
        truth = e2e.carrier(number.carrier_id).core.number_status(number.number)
        assert (truth.state.value, truth.order_ref) == ("blocked", block.request_id)

    async def test_sms_block_of_the_calling_number(self, e2e: E2E) -> None:
        _, number = e2e.take_fraud_number()
        block = e2e.request(
            "sms_block",
            carrier_pb2.SmsBlockOrder(sender=number.number, reason="发送仿冒银行的诈骗短信"),
            target=number.carrier_id,
        )
        result = await e2e.number_order(
            block, number.number, carrier_pb2.NUMBER_ORDER_KIND_BLOCK, "sms_blocked"
        )
        assert abs(when(result.effective_at) - datetime.now(UTC)) < timedelta(seconds=30)


# ----------------------------------------------------------------------------- refusals


class TestRefusals:
    async def test_a_third_stop_payment_is_refused_by_the_gateway(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        for count in (1, 2):
            result = (await e2e.ok(e2e.stop_payment(hop))).stop_payment
            assert (result.in_force, result.stop_count) == (True, count)
        # The gateway counts the executed stops itself and refuses before the bank sees it.
        error, leg = await e2e.refused(e2e.stop_payment(hop))
        assert isinstance(error, RuleViolated)
        assert error.code == SC.PERMISSION_DENIED
        assert error.reason == "RULE_VIOLATED"
        assert leg.rule.startswith("RULE_VIOLATED: RULE stop_payment.max_two_per_account: ")
        assert "already been stopped twice (2 stop-payment(s))" in leg.rule
        assert hop.to_account not in leg.rule  # masked in the log's rule text

    async def test_release_of_a_stop_payment_that_does_not_exist(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        never = new_request_id()
        release = e2e.request(
            "stop_payment_release",
            bank_pb2.StopPaymentReleaseOrder(
                account_number=hop.to_account, reason="经核查资金与案件无关"
            ),
            target=hop.to_bank,
            original_request_id=never,
        )
        error, leg = await e2e.refused(release)
        assert isinstance(error, RuleViolated)
        assert error.code == SC.PERMISSION_DENIED
        assert leg.rule == (
            "RULE_VIOLATED: RULE stop_payment_release.cites_executed_stop: "
            f"{never} is not an executed stop-payment"
        )

    async def test_a_freeze_past_six_months_is_refused_by_the_gateway(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        now = now_s()
        freeze = e2e.request(
            "freeze",
            bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_RECEIVE_ONLY,
                start=stamp(now),
                end=stamp(now + timedelta(days=200)),
                duty_phone=DUTY_PHONE,
            ),
            target=hop.to_bank,
        )
        # Field validation accepts it (a well-formed window); the business rule refuses it.
        error, leg = await e2e.refused(freeze)
        assert isinstance(error, RuleViolated)
        assert error.code == SC.PERMISSION_DENIED
        assert leg.rule.startswith("RULE_VIOLATED: RULE freeze.max_six_months: ")
        assert "lasts 200 days; at most 183" in leg.rule
        assert not e2e.bank(hop.to_bank).core.account_holder(hop.to_account).frozen

    async def test_a_freeze_starting_later_is_invalid_at_the_gateway(self, e2e: E2E) -> None:
        # Banks freeze when they execute; a later start would freeze early, unannounced, so the
        # gateway refuses it (and counts six months from execution).
        hop = e2e.take_hop()
        now = now_s()
        freeze = e2e.request(
            "freeze",
            bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_RECEIVE_ONLY,
                start=stamp(now + timedelta(days=30)),
                end=stamp(now + timedelta(days=200)),
                duty_phone=DUTY_PHONE,
            ),
            target=hop.to_bank,
        )
        error, _ = await e2e.refused(freeze)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["freeze.start"]
        assert not e2e.bank(hop.to_bank).core.account_holder(hop.to_account).frozen

    async def test_a_freeze_without_a_case_filing_decision(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        now = now_s()
        freeze = e2e.request(
            "freeze",
            bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_RECEIVE_ONLY,
                start=stamp(now),
                end=stamp(now + timedelta(days=30)),
                duty_phone=DUTY_PHONE,
            ),
            target=hop.to_bank,
            kind=common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE,
        )
        error, leg = await e2e.refused(freeze)
        assert isinstance(error, RuleViolated)
        assert leg.rule.startswith("RULE_VIOLATED: RULE legal_document.accepted_kind: ")

    async def test_call_records_without_a_second_officer(self, e2e: E2E) -> None:
        chain = e2e.world.chains[0]
        number = chain.fraud_numbers[0]
        start, end = now_s() - timedelta(days=14), now_s()
        request = e2e.request(
            "call_records",
            carrier_pb2.CallRecordsQuery(
                phone_number=number.number, window=window(start, end), include_sms=True
            ),
            target=number.carrier_id,
        )
        assert not request.HasField("second_officer")
        error, leg = await e2e.refused(request)
        assert isinstance(error, RuleViolated)
        assert error.code == SC.PERMISSION_DENIED
        assert leg.rule == (
            "RULE_VIOLATED: RULE call_records.requires_second_officer: "
            "second_officer with a badge number and a name is required"
        )

    async def test_a_stop_payment_with_a_wrong_name_is_refused_by_the_bank(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        wrong = e2e.stop_payment(hop, account_name="王二小" if hop.to_name != "王二小" else "李四")
        response = await e2e.ask(wrong)
        assert response.status == REFUSED
        assert response.detail == "account_name does not match the holder of account_number"
        assert response.WhichOneof("result") is None
        assert not e2e.bank(hop.to_bank).core.account_holder(hop.to_account).stopped
        entries = await e2e.entries_for(wrong.request_id)
        assert [type(e).__name__ for e in entries] == ["RequestLeg", "ResponseLeg"]
        assert isinstance(entries[1], ResponseLeg)
        assert (entries[1].status, entries[1].detail) == ("refused", response.detail)
        # A refused order counts for nothing: the right order is the account's first stop.
        right = (await e2e.ok(e2e.stop_payment(hop))).stop_payment
        assert (right.in_force, right.stop_count) == (True, 1)


class TestDailyUse:
    """Rules a clerk could break, and reading an outcome again, through the real gateway."""

    def _freeze(self, e2e: E2E, hop: Hop) -> request_pb2.Request:
        now = now_s()
        return e2e.request(
            "freeze",
            bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_FIXED_AMOUNT,
                amount=common_pb2.Money(currency="CNY", minor_units=100),
                start=stamp(now),
                end=stamp(now + timedelta(days=30)),
                duty_phone=DUTY_PHONE,
            ),
            target=hop.to_bank,
        )

    async def test_a_repeated_freeze_is_answered_with_the_freeze_in_force(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        first = self._freeze(e2e, hop)
        frozen = (await e2e.ok(first)).freeze
        repeat = self._freeze(e2e, hop)
        repeat.case.CopyFrom(first.case)
        repeat.legal_document.CopyFrom(first.legal_document)
        again = (await e2e.ok(repeat)).freeze
        assert again.repeat_of == first.request_id
        assert again.available_balance == frozen.available_balance  # nothing frozen twice
        assert again.amount_frozen == frozen.amount_frozen

    async def test_a_stop_payment_on_a_query_notice_never_reaches_the_bank(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        stop = e2e.stop_payment(hop)
        stop.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE
        error, _ = await e2e.refused(stop)
        assert isinstance(error, RuleViolated)
        assert "紧急止付通知书 (stop_payment_notice)" in error.message
        assert not e2e.bank(hop.to_bank).core.account_holder(hop.to_account).stopped

    async def test_the_stored_outcome_of_an_answer_verifies_like_the_answer(self, e2e: E2E) -> None:
        hop = e2e.world.chains[0].hops[0]  # a query changes nothing: no need to take the hop
        request = e2e.request(
            "account_holder",
            bank_pb2.AccountHolderQuery(account_number=hop.to_account),
            target=hop.to_bank,
        )
        live = await e2e.police.ask(request)
        reply, stored = await e2e.police.get_outcome(request.request_id)
        assert reply.state == gateway_service_pb2.OUTCOME_STATE_ANSWERED
        assert stored is not None
        assert stored.response == live.response
        assert stored.signed.countersignature == live.signed.countersignature
        assert stored.receipt.leaf_index == live.receipt.leaf_index
        # another member cannot read it, and learns nothing more than for an unknown id
        with pytest.raises(NotFound):
            await e2e.pboc.get_outcome(request.request_id)
        with pytest.raises(NotFound):
            await e2e.police.get_outcome(new_request_id())

    async def test_the_stored_outcome_of_a_refusal_says_why(self, e2e: E2E) -> None:
        hop = e2e.take_hop()
        stop = e2e.stop_payment(hop)
        stop.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE
        await e2e.refused(stop)
        reply, answer = await e2e.police.get_outcome(stop.request_id)
        assert answer is None
        assert reply.state == gateway_service_pb2.OUTCOME_STATE_REFUSED
        assert "legal_document.accepted_kind" in reply.refusal
