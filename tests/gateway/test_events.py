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
    SignatureInvalid,
    Stale,
)
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
)
from gateway.events import check_event

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

    async def test_nothing_is_logged_for_a_refusal(self, harness: GatewayHarness) -> None:
        size = harness.gateway.audit.size
        creds = MemberCredentials.load(harness.federation, MemberId(BANK))
        envelope = sign_envelope(
            _event(kind="Bad Kind!").SerializeToString(),
            Signer.from_key(creds.signing_key),
            Domain.EVENT,
        )
        error = await _send(harness, envelope)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["kind"]
        assert harness.gateway.audit.size == size


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
