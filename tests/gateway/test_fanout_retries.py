"""Safe retries of a fan-out (``gateway.pipeline._fanout``, ``gateway.retries``): the same
signed ``FanOut`` sent again gets every member's item of the first attempt, byte for byte (each
answer with its countersignature and receipt), or ``IN_PROGRESS`` while the first still runs;
no member is asked twice. A different request reusing the id or the nonce stays refused. On one
gateway with local state and on two gateways sharing their outcomes in PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.errors import InProgress
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, gateway_service_pb2, request_pb2
from gateway.server import Gateway
from tests.gateway.conftest import BANK, DOWN_BANK, GatewayHarness, Refusal
from tests.gateway.test_retries import Pair, call, first_arrival, pair  # noqa: F401 - fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICE = MemberId("police.gd.afc")
SC = grpc.StatusCode
Items = list[gateway_service_pb2.FanOutResponse]


def fan_request(h: GatewayHarness) -> request_pb2.Request:
    """A stage-1 (hit / no hit) account query of the stub bank and of a bank that is down."""
    request = h.request("accounts_by_id")
    request.ClearField("target_agency")
    request.target_set.members.extend([BANK, DOWN_BANK])
    request.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
    return request


async def fan_out(
    federation: Path, endpoint: str, envelope: envelope_pb2.SignedEnvelope, timeout: float = 15.0
) -> Items | Refusal:
    """One FanOut over a channel of its own: the items in the order streamed, or the failure."""
    creds = MemberCredentials.load(federation, POLICE)
    async with grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        stub = channel.unary_stream(
            "/fedgate.v1.GatewayService/FanOut",
            request_serializer=gateway_service_pb2.FanOutRequest.SerializeToString,
            response_deserializer=gateway_service_pb2.FanOutResponse.FromString,
        )
        items: Items = []
        try:
            async for item in stub(
                gateway_service_pb2.FanOutRequest(envelope=envelope), timeout=timeout
            ):
                items.append(item)
        except grpc.aio.AioRpcError as exc:
            return Refusal(exc.code(), error_from_rpc(exc))
        return items


def streamed(outcome: Items | Refusal) -> list[bytes]:
    assert not isinstance(outcome, Refusal), outcome
    by_target = {item.target_agency: item for item in outcome}
    assert sorted(by_target) == sorted([BANK, DOWN_BANK])
    assert by_target[BANK].HasField("response")
    assert by_target[BANK].response.receipt.log_origin
    assert by_target[DOWN_BANK].WhichOneof("outcome") in ("no_answer", "error")
    return [item.SerializeToString() for item in outcome]


def refused(outcome: Items | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), "the gateway answered"
    return outcome


def asked(h: GatewayHarness, request_id: str) -> int:
    return sum(r.request_id == request_id for r in h.node.received)


async def last_leg(gateway: Gateway) -> RequestLeg:
    log = gateway.audit
    entry = decode_entry(await log.get_entry(log.size - 1))
    assert isinstance(entry, RequestLeg)
    return entry


class TestOneGateway:
    async def test_a_retry_gets_every_members_first_item(self, harness: GatewayHarness) -> None:
        request = fan_request(harness)
        envelope = harness.sign(request)
        first = streamed(await fan_out(harness.federation, harness.endpoint, envelope))
        for _ in range(2):
            again = streamed(await fan_out(harness.federation, harness.endpoint, envelope))
            assert again == first  # the same items, answers, countersignatures and receipts
        assert asked(harness, request.request_id) == 1
        leg = await last_leg(harness.gateway)
        assert (leg.request_id, leg.decision) == (request.request_id, "refused")
        assert leg.rule.startswith("RETRIED: ")
        assert "its answer" in leg.rule

    async def test_in_progress_while_a_member_is_still_asked(self, harness: GatewayHarness) -> None:
        request = fan_request(harness)
        envelope = harness.sign(request)
        harness.node.mode, harness.node.delay_s = "slow", 1.5
        harness.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(fan_out(harness.federation, harness.endpoint, envelope))
            await first_arrival(harness, pending)
            refusal = refused(await fan_out(harness.federation, harness.endpoint, envelope))
            assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "IN_PROGRESS")
            assert isinstance(refusal.error, InProgress)
            leg = await last_leg(harness.gateway)
            assert (leg.decision, leg.rule.split(":")[0]) == ("refused", "IN_PROGRESS")
            first = streamed(await pending)
        finally:
            harness.node.mode = "ok"
        again = streamed(await fan_out(harness.federation, harness.endpoint, envelope))
        assert again == first
        assert asked(harness, request.request_id) == 1

    async def test_another_request_reusing_the_id_or_nonce_stays_refused(
        self, harness: GatewayHarness
    ) -> None:
        first = fan_request(harness)
        streamed(await fan_out(harness.federation, harness.endpoint, harness.sign(first)))
        for reuse in ("request_id", "nonce"):
            forged = fan_request(harness)
            setattr(forged, reuse, getattr(first, reuse))
            outcome = await fan_out(harness.federation, harness.endpoint, harness.sign(forged))
            refusal = refused(outcome)
            assert (refusal.code, refusal.error.reason) == (SC.ALREADY_EXISTS, "REPLAYED")
            assert asked(harness, forged.request_id) == (1 if reuse == "request_id" else 0)

    async def test_the_fan_outs_envelope_sent_to_submit_is_refused(
        self, harness: GatewayHarness
    ) -> None:
        envelope = harness.sign(fan_request(harness))
        streamed(await fan_out(harness.federation, harness.endpoint, envelope))
        outcome = await call(harness.federation, harness.endpoint, envelope)
        assert isinstance(outcome, Refusal)
        assert outcome.error.reason == "REPLAYED"


class TestTwoGatewaysSharingOutcomes:
    async def test_a_retry_to_the_other_instance_gets_the_first_items(self, pair: Pair) -> None:  # noqa: F811
        h, (a, b) = pair.a, pair.endpoints
        request = fan_request(h)
        envelope = h.sign(request)
        first = streamed(await fan_out(h.federation, a, envelope))
        assert streamed(await fan_out(h.federation, b, envelope)) == first
        assert asked(h, request.request_id) == 1
        leg = await last_leg(pair.b)
        assert leg.rule.startswith("RETRIED: ")

    async def test_in_progress_on_the_other_instance(self, pair: Pair) -> None:  # noqa: F811
        h, (a, b) = pair.a, pair.endpoints
        request = fan_request(h)
        envelope = h.sign(request)
        h.node.mode, h.node.delay_s = "slow", 1.5
        h.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(fan_out(h.federation, a, envelope))
            await first_arrival(h, pending)
            refusal = refused(await fan_out(h.federation, b, envelope))
            assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "IN_PROGRESS")
            first = streamed(await pending)
        finally:
            h.node.mode = "ok"
        assert streamed(await fan_out(h.federation, b, envelope)) == first
        assert asked(h, request.request_id) == 1

    async def test_a_forged_reuse_is_refused_by_the_other(self, pair: Pair) -> None:  # noqa: F811
        h, (a, b) = pair.a, pair.endpoints
        first = fan_request(h)
        streamed(await fan_out(h.federation, a, h.sign(first)))
        for reuse in ("request_id", "nonce"):
            forged = fan_request(h)
            setattr(forged, reuse, getattr(first, reuse))
            refusal = refused(await fan_out(h.federation, b, h.sign(forged)))
            assert (refusal.code, refusal.error.reason) == (SC.ALREADY_EXISTS, "REPLAYED")
        assert asked(h, first.request_id) == 1


class TestTheSdk:
    async def test_it_retries_a_cut_off_fan_out_and_gets_the_first_items(
        self, harness: GatewayHarness
    ) -> None:
        request = fan_request(harness)
        # The request leg's commit stalls past the caller's deadline: the call times out while
        # the gateway still runs the fan-out. The SDK sends the same envelope again:
        # IN_PROGRESS (or a timeout) until the first attempt's items are recorded, then those
        # items, each yielded once.
        harness.store.stall_next_s = 1.0
        client = harness.client()
        items = [i async for i in client.fan_out(request, timeout=0.4, attempts=20)]
        by_target = {item.target: item for item in items}
        assert len(items) == len(by_target) == 2
        assert asked(harness, request.request_id) <= 1
        legs = [e for e in await harness.entries() if isinstance(e, RequestLeg)]
        mine = [leg for leg in legs if leg.request_id == request.request_id]
        assert mine[0].decision == "allowed"
        assert len(mine) >= 2, "the SDK did not retry"
        assert {leg.rule.split(":")[0] for leg in mine[1:]} <= {"RETRIED", "IN_PROGRESS"}
        assert mine[-1].rule.startswith("RETRIED: ")
        # What the SDK yielded is the recorded outcome: a raw retry gets the same bank item.
        again = await fan_out(harness.federation, harness.endpoint, harness.sign(request))
        assert not isinstance(again, Refusal)
        (bank,) = [item for item in again if item.target_agency == BANK]
        yielded = by_target[BANK]
        if bank.HasField("response"):
            assert yielded.answer is not None
            assert yielded.answer.signed == bank.response
        else:
            assert yielded.no_answer == bank.no_answer.detail
            assert bank.no_answer.detail
