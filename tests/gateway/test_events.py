"""EventService: agencies' own audited events land in the gateway's log, signed and checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from fedgate.audit_entry import EventEntry
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.errors import (
    InvalidArgument,
    PeerMismatch,
    Replayed,
    SignatureInvalid,
    Stale,
)
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    envelope_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
)
from gateway.events import REFUSED_KIND, check_event

if TYPE_CHECKING:
    from conftest import GatewayHarness


BANK = "bank.icbc"


def _event(member: str = BANK, **changes: object) -> event_service_pb2.AuditEvent:
    event = event_service_pb2.AuditEvent(
        kind="console_login",
        actor="icbc.zhang",
        member=member,
        detail=[event_service_pb2.EventDetail(key="ip", value="127.0.0.1")],
    )
    event.at.FromDatetime(datetime.now(UTC))
    for key, value in changes.items():
        setattr(event, key, value)
    return event


async def _send(harness: GatewayHarness, envelope: object, *, caller: str = BANK) -> Exception:
    creds = MemberCredentials.load(harness.federation, MemberId(caller))
    async with grpc.aio.secure_channel(
        harness.endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RecordEvent(event_service_pb2.RecordEventRequest(event=envelope))
    return error_from_rpc(info.value)


def _signed(
    harness: GatewayHarness, event: event_service_pb2.AuditEvent, member: str = BANK
) -> envelope_pb2.SignedEnvelope:
    creds = MemberCredentials.load(harness.federation, MemberId(member))
    return sign_envelope(
        event.SerializeToString(), Signer.from_key(creds.signing_key), Domain.EVENT
    )


async def _record(harness: GatewayHarness, envelope: envelope_pb2.SignedEnvelope) -> None:
    creds = MemberCredentials.load(harness.federation, MemberId(BANK))
    async with grpc.aio.secure_channel(
        harness.endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        await stub.RecordEvent(event_service_pb2.RecordEventRequest(event=envelope))


async def _assert_refusal_logged(harness: GatewayHarness, reason: str, kind: str) -> None:
    entry = await harness.last_entry()
    assert isinstance(entry, EventEntry)
    assert (entry.kind, entry.member) == (REFUSED_KIND, BANK)
    detail = dict(entry.detail)
    assert detail["reason"] == reason
    assert detail["event_kind"] == kind


@pytest.mark.asyncio(loop_scope="module")
class TestRecordEvent:
    async def test_a_signed_event_is_logged_and_proved(self, harness: GatewayHarness) -> None:
        client = harness.client(BANK)
        at = datetime.now(UTC)
        receipt = await client.record_event(
            kind="console_answer", actor="icbc.zhang", at=at, detail=[("request_id", "r-1")]
        )
        entry = await harness.last_entry()
        assert isinstance(entry, EventEntry)
        assert (entry.kind, entry.actor, entry.member) == ("console_answer", "icbc.zhang", BANK)
        assert entry.detail == (("request_id", "r-1"),)
        assert receipt.leaf_index == harness.gateway.audit.size - 1

    async def test_an_event_of_another_member_is_refused(self, harness: GatewayHarness) -> None:
        creds = MemberCredentials.load(harness.federation, MemberId(BANK))
        signer = Signer.from_key(creds.signing_key)
        body = _event(member="bank.ccb").SerializeToString()
        error = await _send(harness, sign_envelope(body, signer, Domain.EVENT))
        assert isinstance(error, PeerMismatch)

    async def test_signed_by_one_member_sent_by_another(self, harness: GatewayHarness) -> None:
        creds = MemberCredentials.load(harness.federation, MemberId("bank.ccb"))
        envelope = sign_envelope(
            _event(member="bank.ccb").SerializeToString(),
            Signer.from_key(creds.signing_key),
            Domain.EVENT,
        )
        error = await _send(harness, envelope, caller=BANK)
        assert isinstance(error, PeerMismatch)

    async def test_a_request_signature_is_not_an_event_signature(
        self, harness: GatewayHarness
    ) -> None:
        creds = MemberCredentials.load(harness.federation, MemberId(BANK))
        envelope = sign_envelope(
            _event().SerializeToString(), Signer.from_key(creds.signing_key), Domain.REQUEST
        )
        error = await _send(harness, envelope)
        assert isinstance(error, SignatureInvalid)

    async def test_a_refusal_is_logged_as_such(self, harness: GatewayHarness) -> None:
        size = harness.gateway.audit.size
        envelope = _signed(harness, _event(kind="Bad Kind!"))
        error = await _send(harness, envelope)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["kind"]
        assert harness.gateway.audit.size == size + 1
        await _assert_refusal_logged(harness, "INVALID_ARGUMENT", "Bad Kind!")

    async def test_the_same_event_twice_is_replayed_and_logged(
        self, harness: GatewayHarness
    ) -> None:
        envelope = _signed(harness, _event(kind="console_claim"))
        await _record(harness, envelope)
        size = harness.gateway.audit.size
        error = await _send(harness, envelope)
        assert isinstance(error, Replayed)
        assert harness.gateway.audit.size == size + 1
        await _assert_refusal_logged(harness, "REPLAYED", "console_claim")

    async def test_the_same_content_signed_again_is_replayed(self, harness: GatewayHarness) -> None:
        event = _event(kind="console_answer")
        await _record(harness, _signed(harness, event))
        again = event_service_pb2.AuditEvent()
        again.CopyFrom(event)
        error = await _send(harness, _signed(harness, again))
        assert isinstance(error, Replayed)

    async def test_a_replay_after_a_gateway_restart_is_refused(
        self, harness: GatewayHarness
    ) -> None:
        envelope = _signed(harness, _event(kind="console_logout"))
        await _record(harness, envelope)
        await harness.restart()
        error = await _send(harness, envelope)
        assert isinstance(error, Replayed)

    async def test_an_event_logged_nowhere_may_be_sent_again(self, harness: GatewayHarness) -> None:
        envelope = _signed(harness, _event(kind="console_reveal"))
        harness.store.failing = True
        try:
            error = await _send(harness, envelope)
        finally:
            harness.store.failing = False
        assert error.reason == "AUDIT_UNAVAILABLE"
        await _record(harness, envelope)  # not a replay: the first copy was never logged

    async def test_a_refusal_that_cannot_be_logged_is_audit_unavailable(
        self, harness: GatewayHarness
    ) -> None:
        envelope = _signed(harness, _event(kind="Bad Kind!"))
        harness.store.failing = True
        try:
            error = await _send(harness, envelope)
        finally:
            harness.store.failing = False
        assert error.reason == "AUDIT_UNAVAILABLE"

    @pytest.mark.parametrize(("seconds", "nanos"), [(2**62, 0), (-(2**40), 0), (10**9, -1)])
    async def test_an_event_time_out_of_range_names_the_field(
        self, harness: GatewayHarness, seconds: int, nanos: int
    ) -> None:
        event = _event()
        event.at.seconds, event.at.nanos = seconds, nanos
        error = await _send(harness, _signed(harness, event))
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["at"]
        await _assert_refusal_logged(harness, "INVALID_ARGUMENT", "console_login")


class TestCheckEvent:
    def test_stale_event(self) -> None:
        event = _event()
        event.at.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
        with pytest.raises(Stale):
            check_event(event, member=BANK, now=datetime.now(UTC), skew=timedelta(minutes=5))

    def test_bounded_details(self) -> None:
        event = _event()
        event.detail.add(key="k", value="v" * 300)
        with pytest.raises(InvalidArgument, match=r"detail\[1\]"):
            check_event(event, member=BANK, now=datetime.now(UTC), skew=timedelta(minutes=5))


@pytest.mark.asyncio(loop_scope="module")
class TestAuditServiceOnTheGateway:
    async def test_auditor_reads_and_agency_sees_only_its_own(
        self, harness: GatewayHarness
    ) -> None:
        await harness.client(BANK).record_event(
            kind="console_login", actor="icbc.zhang", at=datetime.now(UTC)
        )

        async def search(member: str) -> list[str]:
            creds = MemberCredentials.load(harness.federation, MemberId(member))
            async with grpc.aio.secure_channel(
                harness.endpoint,
                channel_credentials(creds),
                options=channel_options(MemberId("gateway")),
            ) as channel:
                stub = audit_service_pb2_grpc.AuditServiceStub(channel)
                checkpoint = await stub.GetCheckpoint(audit_service_pb2.GetCheckpointRequest())
                assert checkpoint.checkpoint.startswith(checkpoint.origin + "\n")
                reply = await stub.SearchEntries(audit_service_pb2.SearchEntriesRequest())
                return [e.requesting_agency or e.target_agency for e in reply.entries]

        everyone = await search("audit.office")
        assert everyone
        assert set(await search("bank.ccb")) <= {"bank.ccb"}

    async def test_a_reveal_shows_nothing_when_it_cannot_be_logged(
        self, harness: GatewayHarness
    ) -> None:
        await harness.client().submit(harness.request())
        index = harness.gateway.audit.size - 2  # the request leg
        creds = MemberCredentials.load(harness.federation, MemberId("audit.office"))
        async with grpc.aio.secure_channel(
            harness.endpoint,
            channel_credentials(creds),
            options=channel_options(MemberId("gateway")),
        ) as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            harness.store.failing = True
            try:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.RevealEntry(
                        audit_service_pb2.RevealEntryRequest(
                            leaf_index=index, reason="checking the account holder query"
                        )
                    )
            finally:
                harness.store.failing = False
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_from_rpc(caught.value).reason == "AUDIT_UNAVAILABLE"
            revealed = await stub.RevealEntry(
                audit_service_pb2.RevealEntryRequest(
                    leaf_index=index, reason="checking the account holder query"
                )
            )
            assert revealed.entry == await harness.gateway.audit.get_entry(index)
