"""Fan-out end to end (issue 11): one signed request to every bank or carrier through the real
gateway and real nodes over mTLS; each answer verified by the client with its own receipt; one
request leg in the log and one response leg per member; a silent member reported by name.

The only queries asked of every bank or carrier are about a person (accounts_by_id, sim_count),
which the policy makes staged: these fan-outs are stage 1 (hit / no hit); both stages and the
refusal of a direct wide query are in test_staged_disclosure_e2e."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from adapters.synth import World
from fedgate.audit_entry import RequestLeg, ResponseLeg, decode_entry
from fedgate.client import FanOutItem, FedgateClient
from fedgate.errors import InvalidArgument, PolicyDenied
from fedgate.testing import case_number, officer
from fedgate.v1 import bank_pb2, carrier_pb2, common_pb2, gateway_service_pb2, request_pb2
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio

BANKS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb")
CARRIERS = ("carrier.cmcc", "carrier.cucc", "carrier.ctcc")


def fan_request(
    client: FedgateClient,
    action: object,
    *,
    targets: request_pb2.TargetSet,
    role: common_pb2.Role.ValueType = common_pb2.ROLE_POLICE_INVESTIGATOR,
) -> request_pb2.Request:
    now = datetime.now(UTC)
    document = common_pb2.LegalDocument(
        kind=common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, number="穗公(反诈)查字〔2026〕00001号"
    )
    document.issued_at.FromDatetime(now - timedelta(hours=1))
    return client.new_request(
        action=action,  # type: ignore[arg-type]
        officer=officer(0, role=role),
        target="",
        targets=targets,
        case=common_pb2.CaseInfo(
            case_number=case_number(7, when=now.date()),
            case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            reason="受害人被冒充客服诱导转账",
        ),
        legal_document=document,
        purpose="全网核查嫌疑人名下账户和号码",
        disclosure=request_pb2.Disclosure(stage=request_pb2.DISCLOSURE_STAGE_HITS),
    )


async def collect(client: FedgateClient, request: request_pb2.Request) -> list[FanOutItem]:
    return [item async for item in client.fan_out(request, timeout=20.0)]


async def legs_of(live: Live, request_id: str) -> list[RequestLeg | ResponseLeg]:
    return [leg for _, leg in await indexed_legs(live, request_id)]


async def indexed_legs(live: Live, request_id: str) -> list[tuple[int, RequestLeg | ResponseLeg]]:
    log = live.gateway.audit
    found: list[tuple[int, RequestLeg | ResponseLeg]] = []
    for index in range(log.size):
        entry = decode_entry(await log.get_entry(index))
        if isinstance(entry, RequestLeg | ResponseLeg) and entry.request_id == request_id:
            found.append((index, entry))
    return found


async def test_accounts_by_id_at_every_bank(fed_dir: Path, world: World, tmp_path: Path) -> None:
    victim = world.chains[0].victim
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_BANKS),
        )
        items = await collect(live.police, request)
        assert sorted(i.target for i in items) == sorted(BANKS)
        leaves = set()
        for item in items:
            assert item.answer is not None, (item.target, item.error, item.no_answer)
            response = item.answer.response
            assert response.responder == item.target
            assert response.request_id == request.request_id
            leaves.add(item.answer.receipt.leaf_index)
        assert len(leaves) == len(BANKS)  # each answer has its own receipt
        ok = [i for i in items if i.answer and i.answer.response.status == 1]
        assert victim.bank_id in {i.target for i in ok}
        legs = await indexed_legs(live, request.request_id)
        requests = [(i, leg) for i, leg in legs if isinstance(leg, RequestLeg)]
        responses = [leg for _, leg in legs if isinstance(leg, ResponseLeg)]
        assert len(requests) == 1  # one request leg for the whole fan-out
        request_index, request_leg = requests[0]
        assert request_leg.decision == "allowed"
        assert request_leg.rule.startswith("fan-out; ")
        assert all(bank in request_leg.rule for bank in BANKS)
        assert sorted(r.responder for r in responses) == sorted(BANKS)
        assert all(r.request_leaf_index == request_index for r in responses)
        assert all(i.answer.receipt.request_leaf_index == request_index for i in items if i.answer)


async def test_silent_carrier_is_reported_by_name(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    victim = world.chains[0].victim
    async with live_federation(
        fed_dir, world, tmp_path / "live", silent=("carrier.ctcc",), timeout_s=1.0
    ) as live:
        request = fan_request(
            live.police,
            carrier_pb2.SimCountQuery(id_number=victim.id_number),
            targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_CARRIERS),
        )
        items = await collect(live.police, request)
        assert sorted(i.target for i in items) == sorted(CARRIERS)
        silent = [i for i in items if i.no_answer]
        assert [i.target for i in silent] == ["carrier.ctcc"]
        assert "no answer from carrier.ctcc by the deadline" in silent[0].no_answer
        assert items[-1].target == "carrier.ctcc"  # the answers came first, as they arrived
        for item in items[:-1]:
            assert item.answer is not None
            assert item.answer.response.responder == item.target
        legs = await legs_of(live, request.request_id)
        ctcc = [
            leg for leg in legs if isinstance(leg, ResponseLeg) and leg.responder == "carrier.ctcc"
        ]
        assert len(ctcc) == 1
        assert ctcc[0].status == "unavailable"


async def test_policy_is_checked_per_member(fed_dir: Path, world: World, tmp_path: Path) -> None:
    """A bank query sent to a list holding a carrier: the carrier is refused by policy, the
    banks answer; the refusal is in the one request leg."""
    victim = world.chains[0].victim
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=request_pb2.TargetSet(members=["bank.icbc", "carrier.cmcc", "bank.ccb"]),
        )
        items = {i.target: i for i in await collect(live.police, request)}
        assert set(items) == {"bank.icbc", "carrier.cmcc", "bank.ccb"}
        assert isinstance(items["carrier.cmcc"].error, PolicyDenied | InvalidArgument)
        assert items["bank.icbc"].answer is not None
        assert items["bank.ccb"].answer is not None
        (leg,) = [x for x in await legs_of(live, request.request_id) if isinstance(x, RequestLeg)]
        assert "carrier.cmcc refused" in leg.rule


async def test_orders_cannot_fan_out(fed_dir: Path, world: World, tmp_path: Path) -> None:
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.StopPaymentOrder(account_number=world.chains[0].hops[0].to_account),
            targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_BANKS),
        )
        with pytest.raises(InvalidArgument, match="stop_payment"):
            await collect(live.police, request)


async def test_a_widened_set_breaks_the_signature(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    """The set is signed: a copy of the envelope with another member added is refused."""
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=world.chains[0].victim.id_number),
            targets=request_pb2.TargetSet(members=["bank.icbc"]),
        )
        envelope = live.police.sign(request)
        widened = request_pb2.Request.FromString(envelope.body)
        widened.target_set.members.append("bank.ccb")
        envelope.body = widened.SerializeToString()
        stream = live.police._stub.FanOut(gateway_service_pb2.FanOutRequest(envelope=envelope))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signature does not verify" in (info.value.details() or "")
        (leg,) = await legs_of(live, request.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"
        # the only leg: nothing was forwarded to any member


async def test_every_member_refused_refuses_the_request(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    """A bank query to every carrier: nobody may be asked, so the request is refused as a
    whole (logged as a refused request leg) with the first member's reason."""
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=world.chains[0].victim.id_number),
            targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_CARRIERS),
        )
        with pytest.raises((PolicyDenied, InvalidArgument)):
            await collect(live.police, request)
        (leg,) = await legs_of(live, request.request_id)
        assert isinstance(leg, RequestLeg)
        assert leg.decision == "refused"


async def test_an_unknown_member_in_the_list_is_refused_alone(
    fed_dir: Path, world: World, tmp_path: Path
) -> None:
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        request = fan_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=world.chains[0].victim.id_number),
            targets=request_pb2.TargetSet(members=["bank.icbc", "bank.nowhere"]),
        )
        items = {i.target: i for i in await collect(live.police, request)}
        assert items["bank.icbc"].answer is not None
        assert items["bank.nowhere"].error is not None
        assert "bank.nowhere" in items["bank.nowhere"].error.message
