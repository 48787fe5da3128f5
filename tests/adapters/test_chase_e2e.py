"""The chase end to end (issue 11): the police chase engine → the real gateway → real bank nodes
on generated worlds, over loopback mTLS. The worlds' truth files name which accounts hold how
much of each victim's money; the chase must stop exactly those, and no innocent one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.config import ActionMode
from adapters.synth import FraudChain, World, seed_world, victim_transfer
from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.chase import (
    Authority,
    ChaseEngine,
    ChaseReport,
    NodeKind,
    Outcome,
)
from fedgate.envelope import decode_request
from fedgate.testing import chase_authority
from fedgate.v1 import bank_pb2, common_pb2, envelope_pb2, request_pb2
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio

SEEDS = (11, 23, 37)


def authority(serial: int = 3) -> Authority:
    return chase_authority(serial)


async def chase(live: Live, chain: FraudChain, **options: float) -> ChaseReport:
    engine = ChaseEngine(client=live.police, authority=authority(chain.index), **options)
    return await engine.run(victim_transfer(chain))


def stopped_holdings(report: ChaseReport) -> dict[str, int]:
    return {n.account: n.held for n in report.stopped}


def truth_holdings(chain: FraudChain) -> dict[str, int]:
    return {h.account: h.amount_minor for h in chain.holdings}


class TestAgainstTheTruth:
    @pytest.mark.parametrize("seed", SEEDS)
    async def test_stops_exactly_the_accounts_holding_the_money(
        self, fed_dir: Path, tmp_path: Path, seed: int
    ) -> None:
        world = seed_world(tmp_path / "world", seed=seed, customers_per_bank=30, fraud_chains=3)
        async with live_federation(fed_dir, world, tmp_path / "live") as live:
            for chain in world.chains:
                report = await chase(live, chain)
                assert stopped_holdings(report) == truth_holdings(chain), chain.index
                stopped = set(stopped_holdings(report))
                assert not stopped & set(chain.innocents)  # the mules' friends are left alone
                ends = sorted(
                    (n.kind.value, n.traced_in) for n in report.nodes if n.kind != NodeKind.ACCOUNT
                )
                kinds = {"cash": "cash", "merchant": "merchant", "outside": "outside"}
                assert ends == sorted((kinds[d.kind], d.amount_minor) for d in chain.dead_ends)
                # every yuan is accounted for: held and stopped, or lost at a dead end
                assert report.stopped_minor + report.lost_minor == report.traced_minor
                assert report.unresolved_minor == 0
                # the stopped accounts are stopped at their banks
                for node in report.stopped:
                    holder = live.nodes[node.bank].core.account_holder(node.account)  # type: ignore[attr-defined]
                    assert holder.stopped

    async def test_a_branch_leaving_the_federation_is_reported(
        self, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        chain = next(c for c in world.chains if any(d.kind == "outside" for d in c.dead_ends))
        (gone,) = [d for d in chain.dead_ends if d.kind == "outside"]
        async with live_federation(fed_dir, world, tmp_path / "live") as live:
            report = await chase(live, chain)
        (node,) = [n for n in report.nodes if n.kind == NodeKind.OUTSIDE]
        assert node.outcome == Outcome.LEFT
        assert node.account == gone.to_account
        assert node.traced_in == gone.amount_minor
        assert "outside the federation" in node.detail
        parent = report.nodes[node.parent_id - 1] if node.parent_id else None
        assert parent is not None
        assert parent.account == gone.from_account


class TestBusinessRules:
    async def test_an_account_stopped_twice_is_reported_not_retried(
        self, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        chain = world.chains[0]
        hop = chain.hops[1]  # mule 2 still holds traced money (truth), stop it twice first
        assert hop.to_account in truth_holdings(chain)
        async with live_federation(fed_dir, world, tmp_path / "live") as live:
            auth = authority(40)
            for n in range(2):
                # Two stop-payments on two notices: the same notice twice would be one order
                # answered twice (a repeat of the order in force), not two stops.
                document = common_pb2.LegalDocument()
                document.CopyFrom(auth.stop_document)
                document.number = f"{document.number}-{n}"
                order = bank_pb2.StopPaymentOrder(
                    account_number=hop.to_account,
                    account_name=hop.to_name,
                    payer_account=hop.from_account,
                    payer_name=hop.from_name,
                    payer_bank=hop.from_bank,
                    amount=common_pb2.Money(currency="CNY", minor_units=hop.amount_minor),
                    victim_application="SQ2026000040",
                )
                order.transfer_time.FromDatetime(hop.ts)
                request = live.police.new_request(
                    action=order,
                    officer=auth.officer,
                    target=hop.to_bank,
                    case=auth.case,
                    legal_document=document,
                    purpose="受害人报案，资金正在转移，紧急止付",
                    urgency=common_pb2.URGENCY_EMERGENCY,
                )
                answer = await live.police.ask(request)
                assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
            report = await chase(live, chain)
            legs = await request_legs(live)
        (node,) = [n for n in report.nodes if n.account == hop.to_account]
        assert node.outcome == Outcome.LIMIT
        assert "stopped twice" in node.detail
        assert report.unresolved_minor == node.held > 0
        # the others are stopped all the same
        assert set(stopped_holdings(report)) == set(truth_holdings(chain)) - {hop.to_account}
        stops = [
            r
            for r in legs
            if r.action == "stop_payment"
            and request_of(r).stop_payment.account_number == hop.to_account
        ]
        assert len(stops) == 3  # two by hand, one by the chase, refused and not retried
        assert stops[-1].decision == "refused"
        assert "stop_payment.max_two_per_account" in stops[-1].rule


class TestFaults:
    async def test_a_bank_down_for_a_moment_is_waited_for(
        self, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        chain = world.chains[0]
        down = chain.hops[1].to_bank
        async with live_federation(fed_dir, world, tmp_path / "live", timeout_s=1.0) as live:
            await live.stop_node(down)

            async def come_back() -> None:
                await asyncio.sleep(1.5)
                await live.start_node(down)

            back = asyncio.create_task(come_back())
            report = await chase(live, chain, deadline_s=30.0, retry_s=0.2)
            await back
        assert stopped_holdings(report) == truth_holdings(chain)

    async def test_a_bank_down_for_good_is_reported_and_the_rest_stopped(
        self, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        chain = world.chains[0]
        down = chain.hops[-1].to_bank
        async with live_federation(fed_dir, world, tmp_path / "live", timeout_s=0.5) as live:
            await live.stop_node(down)
            report = await chase(live, chain, deadline_s=3.0, retry_s=0.2)
        unreachable = [n for n in report.nodes if n.outcome == Outcome.UNREACHABLE]
        assert unreachable
        assert all(n.bank == down for n in unreachable)
        assert (
            "unavailable" in unreachable[0].detail or "AGENCY_UNAVAILABLE" in unreachable[0].detail
        )
        assert all(n.bank != down for n in report.stopped)
        # every holding the chase could reach (not behind the bank that is down) is stopped
        seen = {n.account for n in report.nodes}
        expected = {h.account for h in chain.holdings if h.bank != down and h.account in seen}
        assert set(stopped_holdings(report)) == expected
        assert expected  # the branches before the bank that is down were stopped


# ----------------------------------------------------------------------------- the log


def request_of(leg: RequestLeg) -> request_pb2.Request:
    return decode_request(envelope_pb2.SignedEnvelope.FromString(leg.envelope).body)


async def request_legs(live: Live) -> list[RequestLeg]:
    log = live.gateway.audit
    legs = []
    for index in range(log.size):
        entry = decode_entry(await log.get_entry(index))
        if isinstance(entry, RequestLeg):
            legs.append(entry)
    return legs


async def test_every_exchange_is_linked_into_one_tree(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    chain = world.chains[0]
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        report = await chase(live, chain)
        legs = await request_legs(live)
    ours = [request_of(leg) for leg in legs if request_of(leg).chase_id == report.chase_id]
    ids = {r.request_id for r in ours}
    roots = [r for r in ours if not r.parent_request_id]
    assert len(roots) == 1
    assert roots[0].transactions.account_number == chain.hops[0].to_account
    assert all(r.parent_request_id in ids for r in ours if r.parent_request_id)
    for node in report.nodes:
        if node.kind == NodeKind.ACCOUNT:
            assert node.query_request_id in ids
        if node.outcome == Outcome.STOPPED:
            (stop,) = [r for r in ours if r.request_id == node.stop_request_id]
            assert stop.parent_request_id == node.query_request_id
            assert stop.stop_payment.account_number == node.account
    # nothing else: each request is a node's transactions query (again when a merge upstream
    # reached back before the first window) or a node's stop-payment
    accounts = {n.account for n in report.nodes if n.kind == NodeKind.ACCOUNT}
    stops = {n.stop_request_id for n in report.nodes if n.stop_request_id}
    for r in ours:
        if r.WhichOneof("action") == "transactions":
            assert r.transactions.account_number in accounts
        else:
            assert r.request_id in stops


async def test_banks_answer_a_chase_by_machine_even_where_staff_answer_queries(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    """``fedgate up`` leaves transactions queries to bank staff; a chase's emergency queries
    are answered at once (``NodeConfig.chase_mode``), a routine query still gets a ticket."""
    chain = world.chains[0]
    async with live_federation(
        fed_dir, world, tmp_path / "live", bank_transactions=ActionMode.MANUAL
    ) as live:
        report = await chase(live, chain)
        assert stopped_holdings(report) == truth_holdings(chain)
        auth = authority(70)
        query = bank_pb2.TransactionsQuery(account_number=chain.hops[0].to_account)
        query.window.start.FromDatetime(chain.hops[0].ts - timedelta(minutes=1))
        query.window.end.FromDatetime(datetime.now(UTC))
        routine = live.police.new_request(
            action=query,
            officer=auth.officer,
            target=chain.hops[0].to_bank,
            case=auth.case,
            legal_document=auth.query_document,
            purpose="核查涉案账户交易明细",
        )
        submitted = await live.police.submit(routine)
        assert submitted.ticket is not None
