"""Safe retries (``gateway.retries``): the same signed request sent again gets the first
attempt's recorded outcome (the same bytes), or ``IN_PROGRESS`` while the first still runs;
never a second execution, never a bare ``REPLAYED`` for its own retry. A different request
reusing the id stays refused. On one gateway with local state, and on two gateways sharing
their state in PostgreSQL (``[shared] store = "postgres"``), where the business rules and the
quotas are shared too."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from fedgate.audit_entry import RequestLeg
from fedgate.client import FedgateClient
from fedgate.errors import FedgateError, InProgress
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, gateway_service_pb2
from gateway.config import SHARED_STORES, AuditConfig, PipelineConfig, SharedConfig
from gateway.server import Gateway
from tests.gateway.conftest import GatewayHarness, Refusal, start_harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICE = MemberId("police.gd.afc")
SC = grpc.StatusCode


async def call(
    federation: Path, endpoint: str, envelope: envelope_pb2.SignedEnvelope, timeout: float = 10.0
) -> gateway_service_pb2.SubmitResponse | Refusal:
    """One Submit over a channel of its own: the reply as received, or how it failed."""
    creds = MemberCredentials.load(federation, POLICE)
    async with grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        stub = channel.unary_unary(
            "/fedgate.v1.GatewayService/Submit",
            request_serializer=gateway_service_pb2.SubmitRequest.SerializeToString,
            response_deserializer=gateway_service_pb2.SubmitResponse.FromString,
        )
        try:
            reply: gateway_service_pb2.SubmitResponse = await stub(
                gateway_service_pb2.SubmitRequest(envelope=envelope), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return Refusal(exc.code(), error_from_rpc(exc))
        return reply


def answered(outcome: gateway_service_pb2.SubmitResponse | Refusal) -> bytes:
    assert isinstance(outcome, gateway_service_pb2.SubmitResponse), outcome
    assert outcome.HasField("response")
    return outcome.SerializeToString()


def refused(outcome: gateway_service_pb2.SubmitResponse | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), "the gateway answered"
    return outcome


async def retry_leg(gateway: Gateway) -> RequestLeg:
    from fedgate.audit_entry import decode_entry

    log = gateway.audit
    entry = decode_entry(await log.get_entry(log.size - 1))
    assert isinstance(entry, RequestLeg)
    return entry


async def first_arrival(h: GatewayHarness, pending: asyncio.Task[Any]) -> None:
    """Wait (bounded) until the slow node has the first attempt."""
    await asyncio.wait_for(h.node.arrived.wait(), timeout=5)
    assert not pending.done()


class TestOneGateway:
    """Local state: the retries reach the instance that ran the first attempt."""

    async def test_a_retry_gets_the_same_signed_answer_and_receipt(
        self, harness: GatewayHarness
    ) -> None:
        envelope = harness.sign(harness.request())
        first = answered(await call(harness.federation, harness.endpoint, envelope))
        seen = len(harness.node.received)
        for _ in range(2):
            again = answered(await call(harness.federation, harness.endpoint, envelope))
            assert again == first
        assert len(harness.node.received) == seen
        leg = await retry_leg(harness.gateway)
        assert leg.decision == "refused"
        assert leg.rule.startswith("RETRIED: ")
        assert "its answer" in leg.rule

    async def test_in_progress_then_the_answer(self, harness: GatewayHarness) -> None:
        envelope = harness.sign(harness.request())
        harness.node.mode, harness.node.delay_s = "slow", 1.5
        harness.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(call(harness.federation, harness.endpoint, envelope))
            await first_arrival(harness, pending)
            refusal = refused(await call(harness.federation, harness.endpoint, envelope))
            assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "IN_PROGRESS")
            assert isinstance(refusal.error, InProgress)
            assert refusal.error.retry_after_s > 0
            assert "still running the first attempt" in refusal.error.message
            leg = await retry_leg(harness.gateway)
            assert (leg.decision, leg.rule.split(":")[0]) == ("refused", "IN_PROGRESS")
            first = answered(await pending)
        finally:
            harness.node.mode = "ok"
        again = answered(await call(harness.federation, harness.endpoint, envelope))
        assert again == first
        assert sum(r.request_id == leg.request_id for r in harness.node.received) == 1

    async def test_another_request_with_the_same_id_stays_refused(
        self, harness: GatewayHarness
    ) -> None:
        first = harness.request()
        answered(await call(harness.federation, harness.endpoint, harness.sign(first)))
        other = harness.request()
        other.request_id = first.request_id
        seen = len(harness.node.received)
        refusal = refused(await call(harness.federation, harness.endpoint, harness.sign(other)))
        assert (refusal.code, refusal.error.reason) == (SC.ALREADY_EXISTS, "REPLAYED")
        assert len(harness.node.received) == seen

    async def test_a_refusal_is_the_recorded_outcome_too(self, harness: GatewayHarness) -> None:
        # A release citing no executed stop-payment: refused by a business rule at stage 6.
        envelope = harness.sign(harness.request("stop_payment_release"))
        first = refused(await call(harness.federation, harness.endpoint, envelope))
        assert first.error.reason == "RULE_VIOLATED"
        again = refused(await call(harness.federation, harness.endpoint, envelope))
        assert (again.code, again.error.reason, again.error.message) == (
            first.code,
            first.error.reason,
            first.error.message,
        )
        leg = await retry_leg(harness.gateway)
        assert leg.rule.startswith("RETRIED: ")
        assert "(RULE_VIOLATED)" in leg.rule

    async def test_the_sdk_waits_out_in_progress_and_gets_the_first_answer(
        self, harness: GatewayHarness
    ) -> None:
        envelope = harness.sign(harness.request())
        harness.node.mode, harness.node.delay_s = "slow", 1.0
        harness.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(call(harness.federation, harness.endpoint, envelope))
            await first_arrival(harness, pending)
            submitted = await harness.client().submit(envelope, timeout=5, attempts=20)
            first = answered(await pending)
        finally:
            harness.node.mode = "ok"
        assert submitted.answer is not None
        reply = gateway_service_pb2.SubmitResponse.FromString(first)
        assert submitted.answer.signed == reply.response
        request_id = submitted.answer.response.request_id
        assert sum(r.request_id == request_id for r in harness.node.received) == 1

    async def test_the_sdk_retries_a_timeout_and_gets_the_first_answer(
        self, harness: GatewayHarness
    ) -> None:
        request = harness.request()
        # The request leg's commit stalls past the caller's deadline: the call times out while
        # the gateway still runs it. The SDK sends it again: IN_PROGRESS (or a timeout) until
        # the first attempt's answer is recorded, then that answer.
        harness.store.stall_next_s = 1.0
        submitted = await harness.client().submit(request, timeout=0.4, attempts=12)
        assert submitted.answer is not None
        assert submitted.answer.response.request_id == request.request_id
        assert sum(r.request_id == request.request_id for r in harness.node.received) == 1
        legs = [e for e in await harness.entries() if isinstance(e, RequestLeg)]
        mine = [leg for leg in legs if leg.request_id == request.request_id]
        assert mine[0].decision == "allowed"
        assert len(mine) >= 2, "the SDK did not retry"
        assert {leg.rule.split(":")[0] for leg in mine[1:]} <= {"RETRIED", "IN_PROGRESS"}
        assert mine[-1].rule.startswith("RETRIED: ")

    async def test_the_sdk_does_not_retry_a_refusal(self, harness: GatewayHarness) -> None:
        request = harness.request("stop_payment_release")
        with pytest.raises(FedgateError) as refused_once:
            await harness.client().submit(request, attempts=5)
        assert refused_once.value.reason == "RULE_VIOLATED"
        legs = [e for e in await harness.entries() if isinstance(e, RequestLeg)]
        assert sum(leg.request_id == request.request_id for leg in legs) == 1


# -- two gateways sharing their state ---------------------------------------------------------

SHARD_A = "fedgate.test/gateway/shard-a"
SHARD_B = "fedgate.test/gateway/shard-b"


@dataclasses.dataclass
class Pair:
    a: GatewayHarness
    b: Gateway

    @property
    def endpoints(self) -> tuple[str, str]:
        return self.a.endpoint, self.b.endpoint


@pytest_asyncio.fixture(loop_scope="module")
async def pair(pg: Any, gw_federation: Path, tmp_path: Path) -> AsyncIterator[Pair]:
    """Gateways A and B, each with its own audit shard, sharing replay protection, outcomes,
    business-rule state and quotas in the test's PostgreSQL schema."""
    shared = SharedConfig(store="postgres", schema=pg.schema)

    def audit(origin: str) -> AuditConfig:
        return AuditConfig(store="postgres", dsn=pg.dsn, schema=pg.schema, origin=origin)

    a = await start_harness(
        gw_federation,
        tmp_path / "a",
        audit=audit(SHARD_A),
        replay_store="",
        shared=shared,
        quotas={"officer_per_minute": 1, "officer_burst": 3},
    )
    try:
        config_b = dataclasses.replace(
            a.config(),
            audit=audit(SHARD_B),
            pipeline=PipelineConfig(state_dir=tmp_path / "b", replay_store=""),
        )
        b = await Gateway.start(config_b)
        try:
            yield Pair(a, b)
        finally:
            await b.stop(0.5)
    finally:
        await a.close()
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            for store in SHARED_STORES:
                admin.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(f"{pg.schema}_{store}")
                    )
                )


class TestTwoGatewaysSharingState:
    async def test_a_retry_to_the_other_instance_gets_the_same_answer(self, pair: Pair) -> None:
        h, (a, b) = pair.a, pair.endpoints
        envelope = h.sign(h.request())
        first = answered(await call(h.federation, a, envelope))
        again = answered(await call(h.federation, b, envelope))
        assert again == first
        assert len(h.node.received) == 1
        leg = await retry_leg(pair.b)
        assert leg.rule.startswith("RETRIED: ")

    async def test_in_progress_on_the_other_instance(self, pair: Pair) -> None:
        h, (a, b) = pair.a, pair.endpoints
        envelope = h.sign(h.request())
        h.node.mode, h.node.delay_s = "slow", 1.5
        h.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(call(h.federation, a, envelope))
            await first_arrival(h, pending)
            refusal = refused(await call(h.federation, b, envelope))
            assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "IN_PROGRESS")
            first = answered(await pending)
        finally:
            h.node.mode = "ok"
        assert answered(await call(h.federation, b, envelope)) == first
        assert len(h.node.received) == 1

    async def test_one_request_sent_to_both_at_once_runs_once(self, pair: Pair) -> None:
        h, (a, b) = pair.a, pair.endpoints
        for _ in range(3):
            envelope = h.sign(h.request())
            before = len(h.node.received)
            outcomes = await asyncio.gather(
                call(h.federation, a, envelope), call(h.federation, b, envelope)
            )
            assert len(h.node.received) == before + 1
            replies = [o.SerializeToString() for o in outcomes if not isinstance(o, Refusal)]
            reasons = [o.error.reason for o in outcomes if isinstance(o, Refusal)]
            assert replies, outcomes
            assert len(set(replies)) == 1  # a retry answered from the record: the same bytes
            assert reasons in ([], ["IN_PROGRESS"])

    async def test_another_request_with_the_same_id_is_refused_by_the_other(
        self, pair: Pair
    ) -> None:
        h, (a, b) = pair.a, pair.endpoints
        first = h.request()
        answered(await call(h.federation, a, h.sign(first)))
        for reuse in ("request_id", "nonce"):
            other = h.request()
            setattr(other, reuse, getattr(first, reuse))
            refusal = refused(await call(h.federation, b, h.sign(other)))
            assert (refusal.code, refusal.error.reason) == (SC.ALREADY_EXISTS, "REPLAYED")
        assert len(h.node.received) == 1

    async def test_the_third_stop_payment_is_refused_whichever_instance_gets_it(
        self, pair: Pair
    ) -> None:
        h, (a, b) = pair.a, pair.endpoints
        account = h.request("stop_payment").stop_payment.account_number
        for endpoint in (a, b):
            stop = h.sign(h.request("stop_payment", account_number=account))
            answered(await call(h.federation, endpoint, stop))
        for endpoint in (a, b):
            third = h.sign(h.request("stop_payment", account_number=account))
            refusal = refused(await call(h.federation, endpoint, third))
            assert refusal.error.reason == "RULE_VIOLATED"
            assert "stop_payment.max_two_per_account" in refusal.error.message
            assert "stopped twice" in refusal.error.message
        assert len(h.node.received) == 2

    async def test_an_officers_quota_is_one_quota_across_instances(self, pair: Pair) -> None:
        h, (a, b) = pair.a, pair.endpoints
        # One officer (serial 99), burst 3, 1 per minute: three answers, then refused anywhere.
        for endpoint in (a, b, a):
            envelope = h.sign(h.request("account_holder", serial=99))
            answered(await call(h.federation, endpoint, envelope))
        for endpoint in (b, a):
            envelope = h.sign(h.request("account_holder", serial=99))
            refusal = refused(await call(h.federation, endpoint, envelope))
            assert (refusal.code, refusal.error.reason) == (SC.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
            assert "over the personal-data query quota" in refusal.error.message
        # Another officer of the same member is not affected.
        envelope = h.sign(h.request("account_holder", serial=98))
        answered(await call(h.federation, b, envelope))

    async def test_the_sdk_client_of_the_other_instance_gets_the_answer(self, pair: Pair) -> None:
        h, (_a, b) = pair.a, pair.endpoints
        envelope = h.sign(h.request())
        first = answered(await call(h.federation, pair.a.endpoint, envelope))
        client = FedgateClient.from_federation(h.federation, POLICE, endpoint=b)
        try:
            client.remember(envelope.body)
            submitted = await client.submit(envelope)
        finally:
            await client.close()
        assert submitted.answer is not None
        assert (
            submitted.answer.signed == gateway_service_pb2.SubmitResponse.FromString(first).response
        )
