"""AuditService over real gRPC with mutual TLS: who sees what, proofs, paging, evidence."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from fedgate.audit_entry import EventEntry, RequestLeg, ResponseLeg, decode_entry
from fedgate.checkpoint import open_checkpoint
from fedgate.envelope import decode_request
from fedgate.errors import InvalidArgument
from fedgate.evidence import verify_bundle
from fedgate.kek import write_kek_file
from fedgate.logs import mask
from fedgate.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedgate.registry import Registry
from fedgate.sealed import matches
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc, common_pb2, envelope_pb2
from gateway.audit import BodyVault, FileKeyWrapper, RetentionPolicy, run_retention
from gateway.audit.log import AuditLog
from gateway.audit.service import AuditServicer
from gateway.policy import IndexedDecider, PolicyDecider, default_policy_dir

if TYPE_CHECKING:
    from conftest import LogFactory

GATEWAY = MemberId("gateway")


@dataclass
class Service:
    log: AuditLog
    port: int
    fed_dir: object
    channels: list[grpc.aio.Channel]
    subjects: list[str]

    def stub(self, member: str) -> audit_service_pb2_grpc.AuditServiceStub:
        creds = MemberCredentials.load(self.fed_dir, MemberId(member))  # type: ignore[arg-type]
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", channel_credentials(creds), options=channel_options(GATEWAY)
        )
        self.channels.append(channel)
        return audit_service_pb2_grpc.AuditServiceStub(channel)


async def _serve(
    logs: LogFactory, decider_fn: Callable[[], PolicyDecider] | None, *, sealed: bool = False
) -> AsyncIterator[Service]:
    fed = logs.fed
    log = await logs.open(witnessed=True)
    if sealed:
        write_kek_file(logs.tmp / "kek")
        wrapper = FileKeyWrapper.load(logs.tmp / "kek")
        log._vault = BodyVault.open_sqlite(logs.db, wrapper=wrapper, origin=log.origin)
    subjects = []
    for _ in range(3):
        request = fed.request()
        subjects += list(request.subjects)
        receipt = await log.append(request)
        await log.append(fed.response(request, receipt.index))
    await log.append(
        EventEntry(kind="console_login", actor="staff-7", member="bank.ccb", at=datetime.now(UTC))
    )
    await logs.cosigned(log)
    server = grpc.aio.server()
    registry = Registry.load_dir(fed.dir)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(log, lambda: registry, decider_fn), server
    )
    creds = MemberCredentials.load(fed.dir, GATEWAY)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    await server.start()
    service = Service(log, port, fed.dir, [], subjects)
    yield service
    for channel in service.channels:
        await channel.close()
    await server.stop(None)


@pytest_asyncio.fixture
async def service(sqlite_logs: LogFactory) -> AsyncIterator[Service]:
    async for s in _serve(sqlite_logs, None):
        yield s


@pytest_asyncio.fixture
async def sealed_service(sqlite_logs: LogFactory) -> AsyncIterator[Service]:
    async for s in _serve(sqlite_logs, None, sealed=True):
        yield s


@pytest_asyncio.fixture
async def policy_service(sqlite_logs: LogFactory) -> AsyncIterator[Service]:
    policies = default_policy_dir()
    decider = IndexedDecider.from_files(policies / "model.conf", policies / "policy.csv")
    async for s in _serve(sqlite_logs, lambda: decider):
        yield s


class TestVisibility:
    async def test_auditors_see_every_entry_with_subjects_masked(self, service: Service) -> None:
        response = await service.stub("audit.office").SearchEntries(
            audit_service_pb2.SearchEntriesRequest()
        )
        assert [e.leaf_index for e in response.entries] == list(range(7))
        first = response.entries[0]
        assert first.leg == audit_service_pb2.ENTRY_LEG_REQUEST
        assert first.subjects[0] == mask(service.subjects[0]) != service.subjects[0]

    async def test_an_agency_sees_its_own_exchanges_in_the_clear(self, service: Service) -> None:
        stub = service.stub("bank.icbc")
        response = await stub.SearchEntries(audit_service_pb2.SearchEntriesRequest())
        assert [e.leaf_index for e in response.entries] == list(range(6))
        assert response.entries[0].subjects[0] == service.subjects[0]
        entry = await stub.GetEntry(audit_service_pb2.GetEntryRequest(leaf_index=1))
        assert entry.summary.leg == audit_service_pb2.ENTRY_LEG_RESPONSE

    async def test_another_agency_sees_none_of_them(self, service: Service) -> None:
        stub = service.stub("bank.ccb")
        response = await stub.SearchEntries(audit_service_pb2.SearchEntriesRequest())
        assert [e.leaf_index for e in response.entries] == [6]  # its own console login
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetEntry(audit_service_pb2.GetEntryRequest(leaf_index=0))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExportEvidence(audit_service_pb2.ExportEvidenceRequest(leaf_index=0))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_with_the_policy_members_without_an_audit_rule_are_refused(
        self, policy_service: Service
    ) -> None:
        police = policy_service.stub("police.gd.afc")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await police.SearchEntries(audit_service_pb2.SearchEntriesRequest())
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        checkpoint = await police.GetCheckpoint(audit_service_pb2.GetCheckpointRequest())
        assert checkpoint.origin == policy_service.log.origin
        auditor = await policy_service.stub("audit.office").SearchEntries(
            audit_service_pb2.SearchEntriesRequest()
        )
        assert len(auditor.entries) == 7
        bank = await policy_service.stub("bank.icbc").SearchEntries(
            audit_service_pb2.SearchEntriesRequest()
        )
        assert len(bank.entries) == 6


class TestProofs:
    async def test_inclusion_and_consistency_proofs_verify(self, service: Service) -> None:
        stub = service.stub("bank.icbc")
        log = service.log
        cp = open_checkpoint(
            (await stub.GetCheckpoint(audit_service_pb2.GetCheckpointRequest())).checkpoint,
            log.verifier,
        )
        proof = await stub.GetInclusionProof(
            audit_service_pb2.GetInclusionProofRequest(leaf_index=2)
        )
        assert proof.tree_size == cp.size == 7
        assert proof.leaf_hash == leaf_hash(await log.get_entry(2))
        verify_inclusion(proof.leaf_hash, 2, 7, list(proof.hashes), cp.root_hash)
        old = await stub.GetInclusionProof(
            audit_service_pb2.GetInclusionProofRequest(leaf_index=2, tree_size=4)
        )
        old_cp = open_checkpoint(old.checkpoint, log.verifier)
        consistency = await stub.GetConsistencyProof(
            audit_service_pb2.GetConsistencyProofRequest(first_size=4)
        )
        verify_consistency(4, 7, list(consistency.hashes), old_cp.root_hash, cp.root_hash)

    async def test_an_exported_bundle_verifies(self, service: Service) -> None:
        response = await service.stub("audit.office").ExportEvidence(
            audit_service_pb2.ExportEvidenceRequest(leaf_index=2)
        )
        report = verify_bundle(response.bundle, Registry.load_dir(service.fed_dir))  # type: ignore[arg-type]
        assert [i for i, _ in report.entries] == [2, 3]


class TestPaging:
    async def test_pages_follow_each_other_and_tokens_belong_to_their_query(
        self, service: Service
    ) -> None:
        stub = service.stub("audit.office")
        seen: list[int] = []
        token = ""
        while True:
            page = await stub.SearchEntries(
                audit_service_pb2.SearchEntriesRequest(
                    member="bank.icbc", page=common_pb2.PageRequest(page_size=4, page_token=token)
                )
            )
            seen += [e.leaf_index for e in page.entries]
            token = page.next_page_token
            if not token:
                break
        assert seen == list(range(6))
        first = await stub.SearchEntries(
            audit_service_pb2.SearchEntriesRequest(page=common_pb2.PageRequest(page_size=2))
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchEntries(
                audit_service_pb2.SearchEntriesRequest(
                    outcome="ok",
                    page=common_pb2.PageRequest(page_size=2, page_token=first.next_page_token),
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchEntries(
                audit_service_pb2.SearchEntriesRequest(page=common_pb2.PageRequest(page_size=501))
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_entry_bytes_are_the_leaf(self, service: Service) -> None:
        response = await service.stub("bank.ccb").GetEntry(
            audit_service_pb2.GetEntryRequest(leaf_index=6)
        )
        assert response.entry == await service.log.get_entry(6)
        assert not response.masked
        assert response.summary.leg == audit_service_pb2.ENTRY_LEG_EVENT


class TestMasksAndReveal:
    """Issue 10, item 7: no identifier reaches a non-party but through an audited reveal."""

    async def test_an_auditor_gets_a_masked_entry_and_its_leaf_hash(self, service: Service) -> None:
        size = service.log.size
        response = await service.stub("audit.office").GetEntry(
            audit_service_pb2.GetEntryRequest(leaf_index=0)
        )
        assert response.masked
        assert response.entry == b""
        assert response.leaf_hash == leaf_hash(await service.log.get_entry(0))
        view = json.loads(response.masked_view)
        assert view["leg"] == "request"
        assert view["request"]["stop_payment"]["account_number"] == mask(service.subjects[0])
        assert service.subjects[0] not in response.masked_view
        leg = decode_entry(await service.log.get_entry(0))
        assert isinstance(leg, RequestLeg)
        sent = decode_request(envelope_pb2.SignedEnvelope.FromString(leg.envelope).body)
        for clear in (sent.officer.id_number, sent.officer.phone, sent.officer.name):
            assert clear
            assert clear not in response.masked_view
        assert response.summary.subjects[0] == mask(service.subjects[0])
        assert service.log.size == size  # reading a masked entry is no reveal

    async def test_a_party_gets_the_leaf_bytes(self, service: Service) -> None:
        response = await service.stub("bank.icbc").GetEntry(
            audit_service_pb2.GetEntryRequest(leaf_index=0)
        )
        assert not response.masked
        assert response.entry == await service.log.get_entry(0)

    @pytest.mark.parametrize("reason", ["", "   ", "because"])
    async def test_a_reveal_needs_a_reason(self, service: Service, reason: str) -> None:
        size = service.log.size
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub("audit.office").RevealEntry(
                audit_service_pb2.RevealEntryRequest(leaf_index=0, reason=reason)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = error_from_rpc(caught.value)
        assert isinstance(error, InvalidArgument)
        assert [v.field for v in error.violations] == ["reason"]
        assert service.log.size == size

    async def test_a_reveal_is_logged_before_the_entry_is_returned(self, service: Service) -> None:
        size = service.log.size
        reply = await service.stub("audit.office").RevealEntry(
            audit_service_pb2.RevealEntryRequest(
                leaf_index=0, reason="case 2026-0042: court asked for account 6222 0212 3456 7891"
            )
        )
        assert reply.entry == await service.log.get_entry(0)
        assert reply.summary.subjects[0] == service.subjects[0]
        assert service.log.size == size + 1
        assert reply.reveal_leaf_index == size
        event = decode_entry(await service.log.get_entry(size))
        assert isinstance(event, EventEntry)
        assert (event.kind, event.actor, event.member) == (
            "audit_reveal",
            "audit.office",
            "audit.office",
        )
        detail = dict(event.detail)
        assert detail["entry"] == "0"
        assert detail["reason"] == "case 2026-0042: court asked for account 622****7891"

    async def test_no_reveal_of_an_entry_one_may_not_see(self, service: Service) -> None:
        size = service.log.size
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub("bank.ccb").RevealEntry(
                audit_service_pb2.RevealEntryRequest(leaf_index=0, reason="just curious, really")
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert service.log.size == size

    async def test_free_text_is_masked_in_summaries(self, service: Service) -> None:
        response = replace(
            await _response_of(service, 0), detail="no account 6222-0212-3456-7891-234 here"
        )
        index = (await service.log.append(response)).index
        auditor = await service.stub("audit.office").SearchEntries(
            audit_service_pb2.SearchEntriesRequest(outcome=response.status)
        )
        (hit,) = [e for e in auditor.entries if e.leaf_index == index]
        assert hit.reason == "no account 622****1234 here"
        party = await service.stub("bank.icbc").SearchEntries(
            audit_service_pb2.SearchEntriesRequest(outcome=response.status)
        )
        (mine,) = [e for e in party.entries if e.leaf_index == index]
        assert mine.reason == "no account 6222-0212-3456-7891-234 here"
        masked = await service.stub("audit.office").GetEntry(
            audit_service_pb2.GetEntryRequest(leaf_index=index)
        )
        assert "6222" not in masked.masked_view
        assert "622****1234" in masked.masked_view

    async def test_an_export_by_a_non_party_is_logged_first(self, service: Service) -> None:
        size = service.log.size
        await service.stub("audit.office").ExportEvidence(
            audit_service_pb2.ExportEvidenceRequest(leaf_index=2, reason="annual review")
        )
        assert service.log.size == size + 1
        event = decode_entry(await service.log.get_entry(size))
        assert isinstance(event, EventEntry)
        assert event.kind == "audit_export"
        assert dict(event.detail)["reason"] == "annual review"
        await service.stub("bank.icbc").ExportEvidence(
            audit_service_pb2.ExportEvidenceRequest(leaf_index=2)
        )
        assert service.log.size == size + 1  # a party exports its own exchange unlogged


async def _response_of(service: Service, request_index: int) -> ResponseLeg:
    entry = decode_entry(await service.log.get_entry(request_index + 1))
    assert isinstance(entry, ResponseLeg)
    return entry


class TestSealedReveal:
    async def test_the_reveal_decrypts_the_body_and_after_shredding_says_when_and_why(
        self, sealed_service: Service
    ) -> None:
        service = sealed_service
        stub = service.stub("audit.office")
        why = "case 2026-0042: the court asked for this exchange"
        reply = await stub.RevealEntry(
            audit_service_pb2.RevealEntryRequest(leaf_index=0, reason=why)
        )
        stored = decode_entry(reply.entry)
        clear = decode_entry(reply.clear_entry)
        assert isinstance(stored, RequestLeg)
        assert isinstance(clear, RequestLeg)
        assert matches(stored.envelope, clear.envelope)
        assert clear.subjects == (service.subjects[0],)
        assert reply.body_deleted == ""
        event = decode_entry(await service.log.get_entry(reply.reveal_leaf_index))
        assert isinstance(event, EventEntry)
        assert event.kind == "audit_reveal"

        vault = service.log.vault
        assert vault is not None
        later = datetime.now(UTC) + timedelta(days=5000)
        policy = RetentionPolicy()
        await run_retention(service.log, vault, policy, actor="gateway", now=later)
        after = await stub.RevealEntry(
            audit_service_pb2.RevealEntryRequest(leaf_index=0, reason=why)
        )
        assert after.clear_entry == b""
        assert after.body_deleted.endswith(
            f"deleted on {later.date().isoformat()} under retention rule {policy.rule}"
        )
        assert after.reveal_leaf_index > reply.reveal_leaf_index  # logged as well
