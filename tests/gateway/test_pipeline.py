"""The pipeline end to end over loopback mTLS: verified answers, both audit legs, agency reports
and their alert stream, batches, health and reflection, registry reload, graceful shutdown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.pki import revoke_member
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    request_pb2,
)
from gateway.server import SERVICE_NAMES

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")


def channel_as(h: GatewayHarness, member: str) -> grpc.aio.Channel:
    creds = MemberCredentials.load(h.federation, MemberId(member))
    return grpc.aio.secure_channel(
        h.endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    )


class TestAnswer:
    async def test_answer_is_verified_and_both_legs_are_logged(
        self, harness: GatewayHarness
    ) -> None:
        before = harness.gateway.audit.size
        request = harness.request()
        submitted = await harness.client().submit(request)  # verifies signature, binding,
        answer = submitted.answer  # countersignature and inclusion proof
        assert answer is not None
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        assert answer.response.responder == "bank.icbc"
        request_leg, response_leg = await harness.entries(before)
        assert isinstance(request_leg, RequestLeg)
        assert isinstance(response_leg, ResponseLeg)
        assert request_leg.decision == "allowed"
        assert request_leg.rule == "p, police_investigator, police, account_holder, bank, allow"
        assert request_leg.subjects == (request.account_holder.account_number,)
        assert (response_leg.status, response_leg.request_leaf_index) == ("ok", before)
        assert response_leg.response_envelope == answer.signed.response.SerializeToString()
        receipt = answer.receipt
        assert (receipt.request_leaf_index, receipt.leaf_index) == (before, before + 1)
        assert receipt.log_origin == harness.gateway.audit.origin
        assert receipt.tlog_proof

    async def test_the_forwarded_envelope_is_the_one_received(
        self, harness: GatewayHarness
    ) -> None:
        envelope = harness.sign(harness.request())
        await harness.client().submit(envelope)
        assert harness.node.received[-1].SerializeToString() == envelope.body

    async def test_exchange_is_logged_to_its_end_when_the_caller_leaves(
        self, harness: GatewayHarness
    ) -> None:
        harness.node.mode, harness.node.delay_s = "slow", 0.4
        harness.node.arrived.clear()
        request = harness.request()
        try:
            async with channel_as(harness, "police.gd.afc") as channel:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                call = stub.Submit(
                    gateway_service_pb2.SubmitRequest(envelope=harness.sign(request)), timeout=5
                )
                await asyncio.wait_for(harness.node.arrived.wait(), timeout=5)
                call.cancel()
            for _ in range(100):
                last = await harness.last_entry()
                if isinstance(last, ResponseLeg) and last.request_id == request.request_id:
                    break
                await asyncio.sleep(0.02)
        finally:
            harness.node.mode = "ok"
        assert isinstance(last, ResponseLeg)
        assert (last.request_id, last.status) == (request.request_id, "ok")


async def _alert_for(stream: Any, request_id: str) -> tuple[Any, list[str]]:
    """Read ``stream`` (history first, then live; at most 50 alerts, 5 s each) up to the alert
    carrying the report ``request_id``; returns it and the request ids read before it."""
    before: list[str] = []
    for _ in range(50):
        alert = await asyncio.wait_for(stream.read(), timeout=5)
        seen = request_pb2.Request.FromString(alert.report.body).request_id
        if seen == request_id:
            return alert, before
        before.append(seen)
    raise AssertionError(f"no alert for {request_id} among {len(before)} read")


class TestReports:
    """Self-contained: each test finds its own report by request id, whatever the module's
    harness delivered before (a subscription from sequence 0 replays the stored alerts)."""

    async def test_report_is_acknowledged_by_the_gateway_and_streamed_to_police(
        self, harness: GatewayHarness
    ) -> None:
        async with channel_as(harness, "police.gd.afc") as channel:
            stream = alert_service_pb2_grpc.AlertServiceStub(channel).SubscribeAlerts(
                alert_service_pb2.SubscribeAlertsRequest()
            )
            report = harness.request("early_warning")  # bank.icbc → police.gd.afc
            envelope = harness.sign(report, "bank.icbc")
            submitted = await harness.client("bank.icbc").submit(envelope)
            assert submitted.answer is not None
            ack = submitted.answer.response
            assert (ack.responder, ack.status) == ("gateway", request_pb2.RESPONSE_STATUS_OK)
            assert ack.report_ack.reference.startswith(harness.gateway.audit.origin + "#")
            alert, _ = await _alert_for(stream, report.request_id)
            stream.cancel()
        assert (alert.source_agency, alert.kind) == ("bank.icbc", "early_warning")
        assert alert.report == envelope
        assert alert.receipt.leaf_index == submitted.answer.receipt.request_leaf_index

    async def test_other_police_members_do_not_see_the_report(
        self, harness: GatewayHarness
    ) -> None:
        bank = harness.client("bank.icbc")
        to_afc = harness.request("early_warning")  # addressed to police.gd.afc
        await bank.submit(harness.sign(to_afc, "bank.icbc"))
        to_unit = harness.request("early_warning", target="police.gz.unit")
        await bank.submit(harness.sign(to_unit, "bank.icbc"))
        async with channel_as(harness, "police.gz.unit") as channel:
            stream = alert_service_pb2_grpc.AlertServiceStub(channel).SubscribeAlerts(
                alert_service_pb2.SubscribeAlertsRequest()
            )
            # everything police.gz.unit is shown up to its own report, which came after
            _, before = await _alert_for(stream, to_unit.request_id)
            stream.cancel()
        assert to_afc.request_id not in before


class TestBatch:
    async def test_each_request_gets_its_own_outcome(self, harness: GatewayHarness) -> None:
        good = harness.sign(harness.request())
        bad = harness.sign(harness.request())
        bad.signature = bytes(64)
        async with channel_as(harness, "police.gd.afc") as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            call = stub.SubmitBatch(gateway_service_pb2.SubmitBatchRequest(envelopes=[good, bad]))
            outcomes = [item async for item in call]
        by_kind = {o.WhichOneof("outcome"): o for o in outcomes}
        assert set(by_kind) == {"response", "error"}
        assert by_kind["error"].error.reason == "SIGNATURE_INVALID"
        assert by_kind["error"].error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]

    @pytest.mark.parametrize(
        ("member", "count", "code", "reason"),
        [
            ("police.gd.afc", 0, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
            ("police.gd.afc", 65, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
            ("carrier.ctcc", 1, grpc.StatusCode.PERMISSION_DENIED, "MEMBER_REFUSED"),
        ],
    )
    async def test_a_refused_batch_is_logged(
        self, harness: GatewayHarness, member: str, count: int, code: grpc.StatusCode, reason: str
    ) -> None:
        envelope = harness.sign(harness.request())
        before = harness.gateway.audit.size
        async with channel_as(harness, member) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            batch = gateway_service_pb2.SubmitBatchRequest(envelopes=[envelope] * count)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [item async for item in stub.SubmitBatch(batch)]
        assert info.value.code() == code
        assert harness.gateway.audit.size == before + 1
        entry = await harness.last_entry()
        assert isinstance(entry, RequestLeg)
        assert (entry.peer, entry.decision) == (member, "refused")
        assert entry.rule.startswith(f"{reason}: ")


class TestServer:
    async def test_health_reports_every_service_serving(self, harness: GatewayHarness) -> None:
        async with channel_as(harness, "police.gd.afc") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", *SERVICE_NAMES):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_reflection_lists_the_services(self, harness: GatewayHarness) -> None:
        async with channel_as(harness, "audit.office") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            reply = await call.read()
            call.cancel()
        names = {s.name for s in reply.list_services_response.service}
        assert {*SERVICE_NAMES, "grpc.health.v1.Health"} <= names

    async def test_registry_reload_refuses_a_newly_revoked_member(
        self, harness: GatewayHarness
    ) -> None:
        client = harness.client("police.gz.unit")
        ok = harness.request(requesting_agency="police.gz.unit")
        assert (await client.submit(ok)).answer is not None
        revoke_member(harness.federation, MemberId("police.gz.unit"), reason="test revocation")
        for _ in range(50):
            await asyncio.sleep(0.1)
            if harness.gateway.pipeline.registry.find("police.gz.unit") and (
                harness.gateway.pipeline.registry.revocation_of("police.gz.unit")
            ):
                break
        request = harness.request(requesting_agency="police.gz.unit")
        refusal = await harness.refusal(
            harness.sign(request, "police.gz.unit"), member="police.gz.unit"
        )
        assert (refusal.code, refusal.error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "MEMBER_REFUSED",
        )

    async def test_shutdown_drains_calls_in_flight(self, harness: GatewayHarness) -> None:
        harness.node.mode, harness.node.delay_s = "slow", 0.5
        harness.node.arrived.clear()
        in_flight = asyncio.ensure_future(harness.client().submit(harness.request()))
        await asyncio.wait_for(harness.node.arrived.wait(), timeout=5)
        await harness.gateway.stop(grace=5.0)
        submitted = await in_flight
        harness.node.mode = "ok"
        assert submitted.answer is not None
        assert submitted.answer.response.status == request_pb2.RESPONSE_STATUS_OK
