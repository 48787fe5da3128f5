"""Staged disclosure end to end (issue 15): a wide query about a person goes hit / no-hit first,
then details only from the members that hit, citing stage 1; through the real gateway and real
bank and carrier nodes over mTLS with the test PKI, every answer verified by the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.synth import World
from fedgate.audit_entry import RequestLeg, ResponseLeg, decode_entry
from fedgate.client import FanOutItem, FedgateClient
from fedgate.disclosure import HIT, NO_HIT, hit_of
from fedgate.errors import AgencyFault, InvalidArgument, PolicyDenied, RuleViolated
from fedgate.staged import details_request, run_staged
from fedgate.testing import case_number, officer, resident_id
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, carrier_pb2, common_pb2, request_pb2
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio

BANKS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb")
CARRIERS = ("carrier.cmcc", "carrier.cucc", "carrier.ctcc")
ALL_BANKS = request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_BANKS)
ALL_CARRIERS = request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_CARRIERS)
HITS = request_pb2.Disclosure(stage=request_pb2.DISCLOSURE_STAGE_HITS)
SLOW_MACHINE_S = 15.0
"""How long the gateway waits for a node: the tests assert who answered what, so a node slowed
by a loaded machine must not turn into a "no answer" (the silent-member case is tested in
test_fanout_e2e)."""


def wide_request(
    client: FedgateClient,
    action: object,
    *,
    targets: request_pb2.TargetSet,
    disclosure: request_pb2.Disclosure | None = HITS,
    case_serial: int = 15,
) -> request_pb2.Request:
    now = datetime.now(UTC)
    document = common_pb2.LegalDocument(
        kind=common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, number="穗公(反诈)查字〔2026〕00015号"
    )
    document.issued_at.FromDatetime(now - timedelta(hours=1))
    return client.new_request(
        action=action,  # type: ignore[arg-type]
        officer=officer(0),
        target="",
        targets=targets,
        case=common_pb2.CaseInfo(
            case_number=case_number(case_serial, when=now.date()),
            case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            reason="核查嫌疑人名下账户和号码",
        ),
        legal_document=document,
        purpose="全网核查嫌疑人名下账户和号码",
        disclosure=disclosure,
    )


async def collect(client: FedgateClient, request: request_pb2.Request) -> dict[str, FanOutItem]:
    return {item.target: item async for item in client.fan_out(request, timeout=20.0)}


@pytest.fixture
async def live(fed_dir: Path, world: World, tmp_path: Path) -> AsyncIterator[Live]:
    """The federation on loopback, with time for a loaded machine."""
    async with live_federation(fed_dir, world, tmp_path / "live", timeout_s=SLOW_MACHINE_S) as f:
        yield f


async def stage_one(live: Live, id_number: str) -> request_pb2.Request:
    """Stage 1 at every bank about ``id_number``, answered; returns the request."""
    first = wide_request(
        live.police, bank_pb2.AccountsByIdQuery(id_number=id_number), targets=ALL_BANKS
    )
    await collect(live.police, first)
    return first


async def legs_of(live: Live, request_id: str) -> list[RequestLeg | ResponseLeg]:
    log = live.gateway.audit
    found: list[RequestLeg | ResponseLeg] = []
    for index in range(log.size):
        entry = decode_entry(await log.get_entry(index))
        if isinstance(entry, RequestLeg | ResponseLeg) and entry.request_id == request_id:
            found.append(entry)
    return found


def banks_without(world: World, id_number: str) -> list[str]:
    """The banks where ``id_number`` holds no account (asked of the seeded databases)."""
    import sqlite3

    out = []
    for bank in BANKS:
        with sqlite3.connect(world.database(bank)) as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM customers c JOIN accounts a ON a.customer_id = c.id"
                " WHERE c.id_number = ?",
                (id_number,),
            ).fetchone()
        if n == 0:
            out.append(bank)
    return out


class TestBothStages:
    async def test_accounts_by_id_at_every_bank(self, live: Live, world: World) -> None:
        victim = world.chains[0].victim
        first = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
        )
        staged = await run_staged(live.police, first, timeout=20.0)
        # stage 1: every bank answered, hit or no hit, and nothing else
        assert sorted(i.target for i in staged.hits) == sorted(BANKS)
        for item in staged.hits:
            assert item.answer is not None, (item.target, item.error, item.no_answer)
            response = item.answer.response
            assert response.WhichOneof("result") == "hit"
            assert not response.detail
        assert victim.bank_id in staged.hit_members
        no_hit = set(banks_without(world, victim.id_number))
        assert no_hit, "the seeded victim should bank at only some of the banks"
        assert set(staged.hit_members) == set(BANKS) - no_hit
        # stage 2: the details, from the members that hit and no other
        assert staged.details_request is not None
        cited = staged.details_request.disclosure
        assert cited.hits_request_id == first.request_id
        assert cited.stage == request_pb2.DISCLOSURE_STAGE_DETAILS
        assert {i.target for i in staged.details} == set(staged.hit_members)
        for item in staged.details:
            assert item.answer is not None, (item.target, item.error)
            accounts = item.answer.response.accounts_by_id
            assert accounts.id_number == victim.id_number
            assert accounts.accounts
        # the log: stage-1 legs carry the hit, stage 2 names the stage it cites
        legs = await legs_of(live, first.request_id)
        answers = {leg.responder: leg.detail for leg in legs if isinstance(leg, ResponseLeg)}
        assert answers == {b: (NO_HIT if b in no_hit else HIT) for b in BANKS}
        (second_leg,) = [
            leg
            for leg in await legs_of(live, staged.details_request.request_id)
            if isinstance(leg, RequestLeg)
        ]
        assert second_leg.decision == "allowed"
        assert f"disclosure details citing {first.request_id}" in second_leg.rule

    async def test_sim_count_at_every_carrier(self, live: Live, world: World) -> None:
        victim = world.chains[0].victim
        first = wide_request(
            live.police,
            carrier_pb2.SimCountQuery(id_number=victim.id_number),
            targets=ALL_CARRIERS,
        )
        staged = await run_staged(live.police, first, timeout=20.0)
        assert sorted(i.target for i in staged.hits) == sorted(CARRIERS)
        assert victim.carrier_id in staged.hit_members
        for item in staged.hits:
            assert item.answer is not None
            assert item.answer.response.WhichOneof("result") == "hit"
        assert {i.target for i in staged.details} == set(staged.hit_members)
        for item in staged.details:
            assert item.answer is not None
            assert item.answer.response.sim_count.live_sims >= 1

    async def test_nobody_hit_means_no_second_stage(self, live: Live, world: World) -> None:
        nobody = resident_id(9_999, born=datetime(1950, 1, 1).date())
        first = wide_request(
            live.police, bank_pb2.AccountsByIdQuery(id_number=nobody), targets=ALL_BANKS
        )
        staged = await run_staged(live.police, first, timeout=20.0)
        assert staged.hit_members == ()
        assert all(i.answer is not None and hit_of(i.answer.response) is False for i in staged.hits)
        assert staged.details_request is None


class TestPolicy:
    async def test_a_direct_wide_query_is_refused_naming_the_rule(
        self, live: Live, world: World
    ) -> None:
        victim = world.chains[0].victim
        request = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
            disclosure=None,
        )
        with pytest.raises(PolicyDenied, match="staged disclosure") as info:
            await collect(live.police, request)
        rule = "p, police_investigator, police, accounts_by_id:wide, bank, deny"
        assert rule in info.value.message
        (leg,) = await legs_of(live, request.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"
        assert rule in leg.rule

    async def test_one_member_is_not_a_wide_query(self, live: Live, world: World) -> None:
        """The stages are for asking many members at once; one bank is asked directly."""
        victim = world.chains[0].victim
        request = live.police.new_request(
            action=bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            officer=officer(0),
            target=victim.bank_id,
            case=common_pb2.CaseInfo(
                case_number=case_number(15, when=datetime.now(UTC).date()),
                case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            ),
            legal_document=common_pb2.LegalDocument(
                kind=common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, number="穗公查字〔2026〕1号"
            ),
            purpose="核查嫌疑人名下账户",
        )
        answer = await live.police.ask(request, timeout=20.0)
        assert answer.response.accounts_by_id.accounts


class TestHostile:
    async def test_stage_two_to_a_member_that_said_no_hit(self, live: Live, world: World) -> None:
        victim = world.chains[0].victim
        first = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
        )
        hits = await collect(live.police, first)
        no_hit = next(b for b, i in hits.items() if hit_of(i.answer.response) is False)  # type: ignore[union-attr]
        second = details_request(live.police, first, (MemberId(victim.bank_id), MemberId(no_hit)))
        items = await collect(live.police, second)
        assert items[victim.bank_id].answer is not None
        refused = items[no_hit].error
        assert isinstance(refused, RuleViolated)
        assert "disclosure.cites_a_hit" in refused.message
        assert NO_HIT in refused.message
        # the member that said no hit was never asked: no response leg from it
        legs = await legs_of(live, second.request_id)
        assert [leg.responder for leg in legs if isinstance(leg, ResponseLeg)] == [victim.bank_id]
        (leg,) = [leg for leg in legs if isinstance(leg, RequestLeg)]
        assert f"{no_hit} refused (RULE_VIOLATED" in leg.rule

        # only that member asked: the whole stage 2 is refused and logged
        alone = details_request(live.police, first, (MemberId(no_hit),))
        with pytest.raises(RuleViolated, match=r"disclosure\.cites_a_hit"):
            await collect(live.police, alone)
        (leg,) = await legs_of(live, alone.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"

    async def test_stage_two_citing_another_members_stage_one(
        self, live: Live, world: World, fed_dir: Path
    ) -> None:
        victim = world.chains[0].victim
        first = await stage_one(live, victim.id_number)
        other = FedgateClient.from_federation(
            fed_dir, MemberId("police.gz.unit"), endpoint=live.gateway.endpoint
        )
        async with other:
            second = details_request(other, first, (MemberId(victim.bank_id),))
            with pytest.raises(PolicyDenied, match=r"disclosure\.same_member_and_case"):
                await collect(other, second)
        (leg,) = await legs_of(live, second.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"
        assert "police.gd.afc" in leg.rule

    async def test_stage_two_in_another_case(self, live: Live, world: World) -> None:
        victim = world.chains[0].victim
        first = await stage_one(live, victim.id_number)
        second = details_request(live.police, first, (MemberId(victim.bank_id),))
        second.case.case_number = case_number(16, when=datetime.now(UTC).date())
        with pytest.raises(PolicyDenied, match=r"disclosure\.same_member_and_case"):
            await collect(live.police, second)

    async def test_stage_two_about_another_person(self, live: Live, world: World) -> None:
        victim, other = world.chains[0].victim, world.chains[1].victim
        first = await stage_one(live, victim.id_number)
        second = details_request(live.police, first, (MemberId(victim.bank_id),))
        second.accounts_by_id.id_number = other.id_number
        with pytest.raises(RuleViolated, match=r"disclosure\.cites_stage_one"):
            await collect(live.police, second)

    async def test_stage_two_of_another_action(self, live: Live, world: World) -> None:
        """A hit at the banks opens no carrier: stage 2 repeats stage 1's action."""
        victim = world.chains[0].victim
        first = await stage_one(live, victim.id_number)
        second = wide_request(
            live.police,
            carrier_pb2.SimCountQuery(id_number=victim.id_number),
            targets=request_pb2.TargetSet(members=[victim.carrier_id]),
            disclosure=request_pb2.Disclosure(
                stage=request_pb2.DISCLOSURE_STAGE_DETAILS, hits_request_id=first.request_id
            ),
        )
        with pytest.raises(RuleViolated, match="another action"):
            await collect(live.police, second)

    async def test_stage_two_without_document(self, live: Live, world: World) -> None:
        victim = world.chains[0].victim
        first = await stage_one(live, victim.id_number)
        second = details_request(
            live.police,
            first,
            (MemberId(victim.bank_id),),
            legal_document=common_pb2.LegalDocument(),
        )
        with pytest.raises(InvalidArgument) as info:
            await collect(live.police, second)
        fields = {v.field for v in info.value.violations}
        assert {"legal_document.kind", "legal_document.number"} <= fields
        (leg,) = await legs_of(live, second.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"

    async def test_stage_two_citing_no_stage_one(self, live: Live, world: World) -> None:
        """Citing an ordinary request (or an id never seen) is refused: only an allowed stage-1
        request opens stage 2."""
        victim = world.chains[0].victim
        direct = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=request_pb2.TargetSet(members=[victim.bank_id]),
            disclosure=None,
        )
        with pytest.raises(PolicyDenied):
            await collect(live.police, direct)  # refused wide: never a stage 1
        first = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
        )
        second = details_request(live.police, first, (MemberId(victim.bank_id),))
        second.disclosure.hits_request_id = direct.request_id
        with pytest.raises(RuleViolated, match=r"disclosure\.cites_stage_one"):
            await collect(live.police, second)

    async def test_a_stage_one_answer_with_details_is_an_agency_fault(
        self, live: Live, world: World
    ) -> None:
        """A node that leaks the details at stage 1: the gateway refuses the answer, logs it as
        a node fault, and the officer never sees the details."""
        victim = world.chains[0].victim
        node = live.nodes[victim.bank_id]
        honest = node.backend

        class Leaky:
            actions = honest.actions

            def answer(
                self, request: request_pb2.Request, *, now: datetime
            ) -> request_pb2.Response:
                copy = request_pb2.Request()
                copy.CopyFrom(request)
                copy.ClearField("disclosure")  # answers stage 1 as if it were stage 2
                return honest.answer(copy, now=now)

        node.backend = Leaky()
        first = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
        )
        items = await collect(live.police, first)
        fault = items[victim.bank_id].error
        assert isinstance(fault, AgencyFault)
        assert "with details (accounts_by_id)" in fault.message
        (leg,) = [
            leg
            for leg in await legs_of(live, first.request_id)
            if isinstance(leg, ResponseLeg) and leg.responder == victim.bank_id
        ]
        assert leg.status == "node_fault"
        # and that fault is no hit to cite
        second = details_request(live.police, first, (MemberId(victim.bank_id),))
        with pytest.raises(RuleViolated, match=r"disclosure\.cites_a_hit"):
            await collect(live.police, second)
