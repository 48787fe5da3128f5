"""AuditService over real gRPC with mutual TLS: who sees what, proofs, paging, evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from fedgate.audit_entry import EventEntry
from fedgate.checkpoint import open_checkpoint
from fedgate.evidence import verify_bundle
from fedgate.logs import mask
from fedgate.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials, channel_credentials, channel_options, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc, common_pb2
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
    logs: LogFactory, decider_fn: Callable[[], PolicyDecider] | None
) -> AsyncIterator[Service]:
    fed = logs.fed
    log = await logs.open(witnessed=True)
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
        response = await service.stub("audit.office").GetEntry(
            audit_service_pb2.GetEntryRequest(leaf_index=6)
        )
        assert response.entry == await service.log.get_entry(6)
        assert response.summary.leg == audit_service_pb2.ENTRY_LEG_EVENT
