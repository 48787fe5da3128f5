"""The hostile and faulty requests of issue 4: each is refused with its exact status and reason,
and the refusal is in the audit log (or, for TLS handshake refusals, nothing reaches the
application and nothing is forwarded)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.envelope import MAX_BODY_BYTES, Domain, Signer, sign_envelope
from fedgate.errors import InvalidArgument, QuotaExceeded
from fedgate.tls import MemberCredentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc, request_pb2

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import GatewayHarness, Refusal

pytestmark = pytest.mark.asyncio(loop_scope="module")

SC = grpc.StatusCode


async def assert_refused(h: GatewayHarness, refusal: Refusal, code: SC, reason: str) -> RequestLeg:
    """The refusal has this code and reason, and the newest audit entry records it."""
    assert (refusal.code, refusal.error.reason) == (code, reason), refusal.error.message
    entry = await h.last_entry()
    assert isinstance(entry, RequestLeg)
    assert entry.decision == "refused"
    assert entry.rule.startswith(f"{reason}: ")
    return entry


def resign(h: GatewayHarness, request: request_pb2.Request, member: str = "police.gd.afc"):
    signer = Signer.from_key(MemberCredentials.load(h.federation, MemberId(member)).signing_key)
    return sign_envelope(request.SerializeToString(), signer, Domain.REQUEST)


async def call_with(
    h: GatewayHarness, credentials: grpc.ChannelCredentials
) -> grpc.aio.AioRpcError:
    envelope = h.sign(h.request())
    async with grpc.aio.secure_channel(
        h.endpoint, credentials, options=channel_options(MemberId("gateway"))
    ) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(gateway_service_pb2.SubmitRequest(envelope=envelope), timeout=3)
    return info.value


class TestTransport:
    async def test_no_client_certificate(self, harness: GatewayHarness) -> None:
        before, seen = harness.gateway.audit.size, len(harness.node.received)
        ca = MemberCredentials.load(harness.federation, MemberId("police.gd.afc")).ca_pem
        error = await call_with(harness, grpc.ssl_channel_credentials(root_certificates=ca))
        assert error.code() == SC.UNAVAILABLE
        assert harness.gateway.audit.size == before
        assert len(harness.node.received) == seen

    async def test_certificate_from_another_ca(
        self, harness: GatewayHarness, other_ca_federation: Path
    ) -> None:
        before, seen = harness.gateway.audit.size, len(harness.node.received)
        ours = MemberCredentials.load(harness.federation, MemberId("police.gd.afc"))
        foreign = MemberCredentials.load(other_ca_federation, MemberId("police.gd.afc"))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ours.ca_pem,
            private_key=foreign.tls_key_pem,
            certificate_chain=foreign.tls_cert_pem,
        )
        error = await call_with(harness, credentials)
        assert error.code() == SC.UNAVAILABLE
        assert harness.gateway.audit.size == before
        assert len(harness.node.received) == seen

    async def test_revoked_member(self, harness: GatewayHarness) -> None:
        request = harness.request("subscriber", requesting_agency="carrier.ctcc")
        refusal = await harness.refusal(
            resign(harness, request, "carrier.ctcc"), member="carrier.ctcc"
        )
        entry = await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "MEMBER_REFUSED")
        assert entry.peer == "carrier.ctcc"
        assert "revoked" in entry.rule


class TestSignature:
    async def test_member_a_certificate_with_member_b_signature(
        self, harness: GatewayHarness
    ) -> None:
        envelope = harness.sign(harness.request())  # signed by police.gd.afc
        refusal = await harness.refusal(envelope, member="police.gz.unit")
        entry = await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "PEER_MISMATCH")
        assert entry.peer == "police.gz.unit"

    async def test_requesting_agency_other_than_signer(self, harness: GatewayHarness) -> None:
        request = harness.request(requesting_agency="police.gz.unit")
        refusal = await harness.refusal(resign(harness, request))
        await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "PEER_MISMATCH")

    async def test_tampered_body(self, harness: GatewayHarness) -> None:
        request = harness.request()
        envelope = harness.sign(request)
        request.account_holder.account_number = harness.request().account_holder.account_number
        envelope.body = request.SerializeToString()
        refusal = await harness.refusal(envelope)
        await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "SIGNATURE_INVALID")

    async def test_tampered_signature(self, harness: GatewayHarness) -> None:
        envelope = harness.sign(harness.request())
        signature = bytearray(envelope.signature)
        signature[10] ^= 0x40
        envelope.signature = bytes(signature)
        refusal = await harness.refusal(envelope)
        await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "SIGNATURE_INVALID")

    async def test_unknown_key_id(self, harness: GatewayHarness) -> None:
        envelope = harness.sign(harness.request())
        envelope.key_id = "00" * 16
        refusal = await harness.refusal(envelope)
        await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "UNKNOWN_KEY")

    async def test_key_outside_its_validity(self, harness: GatewayHarness) -> None:
        # The federation was issued a day ago: no key of it was valid two days ago.
        request = harness.request()
        request.issued_at.FromDatetime(datetime.now(UTC) - timedelta(days=2))
        refusal = await harness.refusal(resign(harness, request))
        await assert_refused(harness, refusal, SC.UNAUTHENTICATED, "KEY_NOT_VALID")


class TestFreshness:
    async def test_a_resent_request_is_not_run_again(self, harness: GatewayHarness) -> None:
        """The same signed request again is a retry (``gateway.retries``): answered from the
        first attempt's record, never forwarded twice (``test_retries`` has the rest)."""
        envelope = harness.sign(harness.request())
        answer = await harness.client().submit(envelope)
        assert answer.answer is not None
        seen = len(harness.node.received)
        again = await harness.client().submit(envelope)
        assert again.answer is not None
        assert again.answer.signed == answer.answer.signed
        assert len(harness.node.received) == seen
        entry = await harness.last_entry()
        assert isinstance(entry, RequestLeg)
        assert (entry.decision, entry.rule.split(":")[0]) == ("refused", "RETRIED")

    @pytest.mark.parametrize("reuse", ["request_id", "nonce"])
    async def test_a_reused_request_id_or_nonce_is_replayed(
        self, harness: GatewayHarness, reuse: str
    ) -> None:
        first = harness.request()
        assert (await harness.client().submit(harness.sign(first))).answer is not None
        second = harness.request()
        setattr(second, reuse, getattr(first, reuse))
        seen = len(harness.node.received)
        refusal = await harness.refusal(resign(harness, second))
        entry = await assert_refused(harness, refusal, SC.ALREADY_EXISTS, "REPLAYED")
        assert entry.request_id == second.request_id
        assert len(harness.node.received) == seen

    @pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)])
    async def test_stale_or_future_issued_at(
        self, harness: GatewayHarness, offset: timedelta
    ) -> None:
        request = harness.request()
        request.issued_at.FromDatetime(datetime.now(UTC) + offset)
        refusal = await harness.refusal(resign(harness, request))
        entry = await assert_refused(harness, refusal, SC.FAILED_PRECONDITION, "STALE")
        assert ("future" if offset > timedelta(0) else "past") in entry.rule

    @pytest.mark.parametrize(("seconds", "nanos"), [(2**62, 0), (-(2**40), 0), (10**9, -1)])
    async def test_issued_at_that_is_not_a_timestamp(
        self, harness: GatewayHarness, seconds: int, nanos: int
    ) -> None:
        request = harness.request()
        request.issued_at.seconds, request.issued_at.nanos = seconds, nanos
        refusal = await harness.refusal(resign(harness, request))
        await assert_refused(harness, refusal, SC.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert isinstance(refusal.error, InvalidArgument)
        assert [v.field for v in refusal.error.violations] == ["issued_at"]


def _bad_card(r: request_pb2.Request) -> None:
    number = r.account_holder.account_number
    r.account_holder.account_number = number[:-1] + str((int(number[-1]) + 1) % 10)


def _bad_officer(r: request_pb2.Request) -> None:
    r.officer.id = ""


def _bad_case(r: request_pb2.Request) -> None:
    r.case.case_number = "B123"


def _bad_window(r: request_pb2.Request) -> None:
    w = r.transactions.window
    start, end = w.start.ToDatetime(), w.end.ToDatetime()
    w.start.FromDatetime(end)
    w.end.FromDatetime(start)


def _bad_amount(r: request_pb2.Request) -> None:
    r.stop_payment.amount.minor_units = -5


def _bad_mobile(r: request_pb2.Request) -> None:
    r.subscriber.phone_number = "12345"


def _bad_resident_id(r: request_pb2.Request) -> None:
    r.accounts_by_id.id_number = r.accounts_by_id.id_number[:-1] + (
        "0" if r.accounts_by_id.id_number[-1] != "0" else "1"
    )


INVALID_FIELDS = [
    ("account_holder", _bad_card, "account_holder.account_number"),
    ("account_holder", _bad_officer, "officer.id"),
    ("account_holder", _bad_case, "case.case_number"),
    ("transactions", _bad_window, "transactions.window"),
    ("stop_payment", _bad_amount, "stop_payment.amount"),
    ("subscriber", _bad_mobile, "subscriber.phone_number"),
    ("accounts_by_id", _bad_resident_id, "accounts_by_id.id_number"),
]


class TestValidation:
    @pytest.mark.parametrize(
        ("action", "mutate", "field"), INVALID_FIELDS, ids=[f for _, _, f in INVALID_FIELDS]
    )
    async def test_invalid_field_is_named(
        self, harness: GatewayHarness, action: str, mutate, field: str
    ) -> None:
        request = harness.request(action)
        mutate(request)
        refusal = await harness.refusal(resign(harness, request))
        await assert_refused(harness, refusal, SC.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert isinstance(refusal.error, InvalidArgument)
        fields = [v.field for v in refusal.error.violations]
        assert any(f == field or f.startswith(field + ".") for f in fields), fields


class TestAuthorization:
    async def test_action_not_allowed_for_the_role(self, harness: GatewayHarness) -> None:
        request = harness.request("freeze")
        request.officer.role = common_pb2.ROLE_POLICE_DUTY_OFFICER
        refusal = await harness.refusal(resign(harness, request))
        entry = await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "POLICY_DENIED")
        assert "police_duty_officer" in entry.rule

    async def test_role_not_granted_to_the_member(self, harness: GatewayHarness) -> None:
        request = harness.request(requesting_agency="police.gz.unit")
        request.officer.role = common_pb2.ROLE_CENTRE_SUPERVISOR
        refusal = await harness.refusal(
            resign(harness, request, "police.gz.unit"), member="police.gz.unit"
        )
        entry = await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "POLICY_DENIED")
        assert "not granted to member police.gz.unit" in entry.rule

    async def test_auditor_asking_for_personal_data(self, harness: GatewayHarness) -> None:
        request = harness.request(requesting_agency="audit.office")
        request.officer.role = common_pb2.ROLE_AUDITOR
        refusal = await harness.refusal(
            resign(harness, request, "audit.office"), member="audit.office"
        )
        await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "POLICY_DENIED")

    async def test_third_stop_payment_on_one_account(self, harness: GatewayHarness) -> None:
        account = harness.request("stop_payment").stop_payment.account_number
        client = harness.client()
        for _ in range(2):
            done = await client.submit(harness.request("stop_payment", account_number=account))
            assert done.answer is not None
            assert done.answer.response.status == request_pb2.RESPONSE_STATUS_OK
        seen = len(harness.node.received)
        third = harness.request("stop_payment", account_number=account)
        refusal = await harness.refusal(harness.sign(third))
        entry = await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "RULE_VIOLATED")
        assert "stop_payment.max_two_per_account" in entry.rule
        assert len(harness.node.received) == seen

    async def test_freeze_without_case_filing_decision(self, harness: GatewayHarness) -> None:
        request = harness.request("freeze")
        request.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE
        refusal = await harness.refusal(resign(harness, request))
        entry = await assert_refused(harness, refusal, SC.PERMISSION_DENIED, "RULE_VIOLATED")
        assert "case_filing" in entry.rule


class TestQuotas:
    async def test_over_quota_officer(self, harness: GatewayHarness) -> None:
        serial = 77  # one officer, burst of 5 personal-data queries
        client = harness.client()
        for i in range(5):
            request = harness.request(serial=serial)
            request.account_holder.account_number = harness.request().account_holder.account_number
            assert (await client.submit(resign(harness, request))).answer is not None, i
        refusal = await harness.refusal(harness.sign(harness.request(serial=serial)))
        await assert_refused(harness, refusal, SC.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
        assert isinstance(refusal.error, QuotaExceeded)
        assert refusal.error.retry_after_s > 0


class TestSize:
    async def test_oversized_body_is_refused_and_logged(self, harness: GatewayHarness) -> None:
        request = harness.request()
        request.purpose = "x" * (MAX_BODY_BYTES + 1)
        seen = len(harness.node.received)
        refusal = await harness.refusal(resign(harness, request))
        entry = await assert_refused(harness, refusal, SC.INVALID_ARGUMENT, "MALFORMED")
        assert entry.envelope == b""  # not copied into the log
        assert len(harness.node.received) == seen

    async def test_message_over_the_transport_limit(self, harness: GatewayHarness) -> None:
        before = harness.gateway.audit.size
        refusal = await harness.refusal(b"\x0a" + b"\xff" * (5 << 20))
        assert refusal.code == SC.RESOURCE_EXHAUSTED
        assert harness.gateway.audit.size == before

    async def test_garbage_is_malformed(self, harness: GatewayHarness) -> None:
        refusal = await harness.refusal(b"\xff\xff\xff\xff")
        await assert_refused(harness, refusal, SC.INVALID_ARGUMENT, "MALFORMED")


class TestAgencyFaults:
    async def test_node_down_is_unavailable_before_the_deadline(
        self, harness: GatewayHarness
    ) -> None:
        # UNAVAILABLE, not DEADLINE_EXCEEDED: the gateway answered within the caller's deadline.
        request = harness.request(target="bank.ccb")
        refusal = await harness.refusal(harness.sign(request), timeout=5)
        assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "AGENCY_UNAVAILABLE")
        entry = await harness.last_entry()
        assert isinstance(entry, ResponseLeg)
        assert (entry.status, entry.request_id) == ("unavailable", request.request_id)

    async def test_slow_node_answers_unavailable_within_the_deadline(
        self, harness: GatewayHarness
    ) -> None:
        harness.node.mode, harness.node.delay_s = "slow", 3.0
        try:
            # The node sleeps 3 s; the caller gives 1 s. UNAVAILABLE (not DEADLINE_EXCEEDED)
            # shows the gateway gave up on the node in time to answer the caller itself.
            refusal = await harness.refusal(harness.sign(harness.request()), timeout=1.0)
        finally:
            harness.node.mode = "ok"
        assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "AGENCY_UNAVAILABLE")
        entry = await harness.last_entry()
        assert isinstance(entry, ResponseLeg)
        assert entry.status == "unavailable"

    @pytest.mark.parametrize("mode", ["bad_signature", "other_hash", "refuse", "bad_deadline"])
    async def test_node_answering_wrongly_is_a_node_fault(
        self, harness: GatewayHarness, mode: str
    ) -> None:
        harness.node.mode = mode
        try:
            request = harness.request()
            refusal = await harness.refusal(harness.sign(request))
        finally:
            harness.node.mode = "ok"
        assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "AGENCY_FAULT")
        entry = await harness.last_entry()
        assert isinstance(entry, ResponseLeg)
        assert (entry.status, entry.request_id) == ("node_fault", request.request_id)


class TestAuditFailure:
    async def test_request_is_not_forwarded_when_the_log_fails(
        self, harness: GatewayHarness
    ) -> None:
        seen, before = len(harness.node.received), harness.gateway.audit.size
        harness.store.failing = True
        try:
            refusal = await harness.refusal(harness.sign(harness.request()))
        finally:
            harness.store.failing = False
        assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "AUDIT_UNAVAILABLE")
        assert len(harness.node.received) == seen
        assert harness.gateway.audit.size == before
        # The log recovers once the store does.
        assert (await harness.client().submit(harness.request())).answer is not None

    async def test_answer_is_not_returned_when_its_leg_cannot_be_logged(
        self, harness: GatewayHarness
    ) -> None:
        harness.node.mode, harness.node.delay_s = "slow", 0.3
        harness.node.arrived.clear()
        try:
            pending = asyncio.ensure_future(harness.refusal(harness.sign(harness.request())))
            # The request leg is in and the request forwarded: now break the log.
            await asyncio.wait_for(harness.node.arrived.wait(), timeout=5)
            harness.store.failing = True
            refusal = await pending
        finally:
            harness.store.failing = False
            harness.node.mode = "ok"
        assert (refusal.code, refusal.error.reason) == (SC.UNAVAILABLE, "AUDIT_UNAVAILABLE")


class TestRestart:
    async def test_replay_after_a_gateway_restart(self, harness: GatewayHarness) -> None:
        envelope = harness.sign(harness.request())
        assert (await harness.client().submit(envelope)).answer is not None
        await harness.restart()
        refusal = await harness.refusal(envelope)
        await assert_refused(harness, refusal, SC.ALREADY_EXISTS, "REPLAYED")
