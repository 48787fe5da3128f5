"""The node runtime: only the gateway may call, envelopes are verified again, answers are
executed once and returned byte-identical, trace context is continued, health is served."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.bank.node import BankNode
from adapters.bank.reference import ReferenceBank
from adapters.config import NodeConfig
from fedgate.envelope import Domain, sign_envelope
from fedgate.errors import AgencyUnavailable
from fedgate.pki import revoke_member
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2

OK = request_pb2.RESPONSE_STATUS_OK


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


class TestCallerIsTheGateway:
    @pytest.mark.parametrize("caller", ["police.gd.afc", "bank.ccb"])
    async def test_members_other_than_the_gateway_are_refused(
        self, kit: Any, bank_node: Any, caller: str
    ) -> None:
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.request("account_holder"))
        link = kit.link(node, as_member=caller)
        error = await refused(link.handle(envelope))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"{caller} may not call" in (error.details() or "")
        error = await refused(link.get_result("0190d7a2-0000-7000-8000-000000000000"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_the_gateway_is_accepted(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.request("account_holder"))
        reply = await kit.link(node).handle(envelope)
        assert reply.HasField("response")


class TestEnvelopeVerification:
    async def test_a_forged_signature_is_refused(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.request("account_holder"))
        envelope.signature = bytes([envelope.signature[0] ^ 1]) + envelope.signature[1:]
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signature" in (error.details() or "")

    async def test_a_changed_body_is_refused(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("account_holder")
        envelope = kit.sign(request)
        request.purpose = "changed after signing"
        envelope.body = request.SerializeToString()
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    @pytest.mark.parametrize("resigner", ["police.gz.unit", "gateway"])
    async def test_a_request_re_signed_by_another_member_is_refused(
        self, kit: Any, bank_node: Any, resigner: str
    ) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("stop_payment")  # names police.gd.afc as the requester
        envelope = kit.sign(request, member=resigner)
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"signed by {resigner}" in (error.details() or "")

    async def test_a_request_for_another_member_is_refused(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.request("account_holder", target="bank.ccb"))
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "this node is bank.icbc" in (error.details() or "")

    async def test_a_fan_out_is_answered_only_by_its_members(
        self, kit: Any, bank_node: Any
    ) -> None:
        """A fan-out (``target_set``) reaches a node only if the node is in the signed set."""
        node = await bank_node("bank.icbc")
        request = kit.request("accounts_by_id", target="bank.icbc")
        request.target_agency = ""
        request.target_set.members.extend(["bank.ccb", "bank.abc"])
        error = await refused(kit.link(node).handle(kit.sign(request)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        request.target_set.members.append("bank.icbc")
        reply = await kit.link(node).handle(kit.sign(request))
        assert reply.HasField("response")

    async def test_an_unknown_key_is_refused(self, kit: Any, bank_node: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from fedgate.envelope import Signer

        node = await bank_node("bank.icbc")
        stranger = Signer.from_key(Ed25519PrivateKey.generate())
        body = kit.request("account_holder").SerializeToString()
        envelope = sign_envelope(body, stranger, Domain.REQUEST)
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not in the member registry" in (error.details() or "")

    async def test_a_response_domain_signature_is_refused(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        body = kit.request("account_holder").SerializeToString()
        envelope = sign_envelope(body, kit.signer("police.gd.afc"), Domain.RESPONSE)
        error = await refused(kit.link(node).handle(envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


class TestIdempotency:
    async def test_a_repeated_stop_payment_executes_once_with_identical_answers(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.stop_request(hop))
        link = kit.link(node)
        first = await link.handle(envelope)
        second = await link.handle(envelope)
        assert first.response.SerializeToString() == second.response.SerializeToString()
        assert kit.verify(envelope, first).stop_payment.stop_count == 1
        again = await link.handle(kit.sign(kit.stop_request(hop)))
        assert kit.verify(envelope, first).status == OK
        assert request_pb2.Response.FromString(again.response.body).stop_payment.stop_count == 2

    @pytest.mark.parametrize("action", ["stop_payment", "freeze"])
    async def test_an_order_repeating_one_in_force_is_answered_with_it(
        self, kit: Any, bank_node: Any, action: str
    ) -> None:
        """Same account, same case, same document: the order in force, not a second one."""
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")

        def order() -> request_pb2.Request:
            if action == "stop_payment":
                return kit.stop_request(hop)
            r = kit.request("freeze", account_number=hop.to_account)
            r.freeze.account_name = hop.to_name
            r.freeze.amount.minor_units = 100
            return r

        first_request = order()
        first = await kit.ask(node, first_request)
        again = order()
        again.legal_document.number = first_request.legal_document.number
        repeat = await kit.ask(node, again)
        result = getattr(first, action)
        repeated = getattr(repeat, action)
        assert first.status == repeat.status == OK
        assert result.repeat_of == ""
        assert repeated.repeat_of == first_request.request_id
        assert repeated.end == result.end
        if action == "stop_payment":
            assert repeated.stop_count == 1
        else:
            assert repeated.amount_frozen == result.amount_frozen
            assert repeated.available_balance == result.available_balance
            assert len(repeated.prior_freezes) == 0  # nothing was frozen a second time

    async def test_concurrent_deliveries_execute_once(self, kit: Any, bank_node: Any) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.stop_request(hop))
        links = [kit.link(node) for _ in range(3)]
        replies = await asyncio.gather(*(links[i % 3].handle(envelope) for i in range(8)))
        answers = {r.response.SerializeToString() for r in replies}
        assert len(answers) == 1
        assert kit.verify(envelope, replies[0]).stop_payment.stop_count == 1
        # the account has been stopped exactly once: one more stop is its second
        second = await kit.link(node).handle(kit.sign(kit.stop_request(hop)))
        assert request_pb2.Response.FromString(second.response.body).stop_payment.stop_count == 2

    async def test_answers_survive_a_restart(
        self, kit: Any, bank_node: Any, fed_dir: Any, world: Any, tmp_path: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        envelope = kit.sign(kit.stop_request(hop))
        first = await kit.link(node).handle(envelope)
        await node.stop(grace=None)
        again = await bank_node("bank.icbc")
        second = await kit.link(again).handle(envelope)
        assert first.response.SerializeToString() == second.response.SerializeToString()
        result = await kit.link(again).get_result(
            request_pb2.Request.FromString(envelope.body).request_id
        )
        assert result.response.SerializeToString() == first.response.SerializeToString()

    async def test_the_same_id_with_another_body_is_refused(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        request = kit.request("account_holder")
        await kit.link(node).handle(kit.sign(request))
        request.purpose = "a different request under the same id"
        error = await refused(kit.link(node).handle(kit.sign(request)))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    async def test_two_nodes_cannot_share_a_state_directory(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        config: NodeConfig = node.config
        twin = BankNode.open(config)
        with pytest.raises(AgencyUnavailable, match="another node process"):
            await twin.start()
        await twin.stop()


class TestTelemetryAndHealth:
    async def test_the_trace_context_from_the_gateway_is_continued(
        self, kit: Any, bank_node: Any
    ) -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        node = await bank_node("bank.icbc", tracer_provider=provider)
        trace_id, parent_id = "4bf92f3577b34da6a3ce929e0e4736ac", "00f067aa0ba902b7"
        metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
        envelope = kit.sign(kit.request("account_holder"))
        await kit.link(node).handle(envelope, metadata=metadata)
        spans = exporter.get_finished_spans()
        (span,) = [s for s in spans if s.name == "AgencyService/Handle"]
        assert format(span.context.trace_id, "032x") == trace_id
        # under the gRPC instrumentation's server span, whose parent is the caller's span
        (server,) = [s for s in spans if s.name == "/fedgate.v1.AgencyService/Handle"]
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert server.parent is not None
        assert format(server.parent.span_id, "016x") == parent_id
        assert span.attributes is not None
        assert span.attributes["fedgate.action"] == "account_holder"

    async def test_health_is_serving(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        stub = health_pb2_grpc.HealthStub(kit.link(node).channel)
        for service in ("", "fedgate.v1.AgencyService", "fedgate.v1.StaffService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def test_logs_mask_identifiers(
        self, kit: Any, bank_node: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        caplog.set_level("INFO", logger="fedgate.adapters")
        await kit.link(node).handle(kit.sign(kit.stop_request(hop)))
        (record,) = [r for r in caplog.records if r.getMessage() == "request handled"]
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["outcome"] == "ok"
        assert fields["subject"] == hop.to_account[:3] + "****" + hop.to_account[-4:]
        assert hop.to_account not in str(fields)


class TestRegistryReload:
    async def test_a_revoked_member_is_refused_without_a_restart(
        self, kit: Any, fed_dir: Path, world: Any, tmp_path: Path
    ) -> None:
        fed = tmp_path / "fed"
        shutil.copytree(fed_dir, fed)
        config = NodeConfig(
            member_id=MemberId("bank.icbc"),
            federation_dir=fed,
            state_dir=tmp_path / "state",
            listen="127.0.0.1:0",
            backend_path=world.database("bank.icbc"),
        )
        node = BankNode.open(config)
        await node.start()
        try:
            request = kit.request("account_holder", requesting_agency="police.gz.unit")
            envelope = kit.sign(request, member="police.gz.unit")
            assert (await kit.link(node).handle(envelope)).HasField("response")
            assert not node.reload_registry()
            sender = node.report_sender()  # made before the reload: must see the new registry
            revoke_member(fed, MemberId("police.gz.unit"), reason="compromised")
            assert node.reload_registry()
            assert sender.client.registry is node.registry
            assert sender.client.registry.revocation_of("police.gz.unit") is not None
            again = kit.request("account_holder", requesting_agency="police.gz.unit")
            error = await refused(kit.link(node).handle(kit.sign(again, member="police.gz.unit")))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in (error.details() or "")
        finally:
            await node.stop(grace=None)

    async def test_an_older_registry_is_refused(
        self, fed_dir: Path, world: Any, tmp_path: Path
    ) -> None:
        fed = tmp_path / "fed"
        shutil.copytree(fed_dir, fed)
        before = (fed / "registry.json").read_bytes()
        revoke_member(fed, MemberId("police.gz.unit"), reason="compromised")
        config = NodeConfig(
            member_id=MemberId("bank.icbc"),
            federation_dir=fed,
            state_dir=tmp_path / "state",
            listen="127.0.0.1:0",
            backend_path=world.database("bank.icbc"),
        )
        node = BankNode.open(config)
        try:
            assert not node.reload_registry()
            # Restoring the older, validly signed registry would un-revoke the member.
            (fed / "registry.json").write_bytes(before)
            os.utime(fed / "registry.json", ns=(1, 1))  # surely a different stamp
            assert not node.reload_registry()
            assert node.registry.revocation_of("police.gz.unit") is not None
        finally:
            await node.stop(grace=None)


class _FailingCore:
    """The reference core banking system, except that ``account_holder`` breaks (a bug)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def account_holder(self, account_number: str) -> Any:
        raise RuntimeError(f"core db /srv/core.sqlite is locked while reading {account_number}")


class TestUnexpectedErrors:
    """Issue 10, item 8: a bug in a node leaves as INTERNAL with a trace id, nothing more."""

    async def test_a_failing_backend_is_internal_without_its_text(
        self, kit: Any, bank_node: Any, world: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        core = _FailingCore(ReferenceBank(path=world.database("bank.icbc"), bank_id="bank.icbc"))
        node = await bank_node("bank.icbc", core=core)
        request = kit.request("account_holder")
        error = await refused(kit.link(node).handle(kit.sign(request)))
        assert error.code() == grpc.StatusCode.INTERNAL
        details = error.details() or ""
        match = re.fullmatch(r"internal error; trace id ([0-9a-f]{32})", details)
        assert match is not None, details
        for leaked in ("RuntimeError", "sqlite", "locked", request.account_holder.account_number):
            assert leaked not in details
        logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
        assert logged, "the error is logged with the same trace id"


class TestDocumentKind:
    async def test_an_order_on_the_wrong_document_is_refused_and_not_executed(
        self, kit: Any, bank_node: Any
    ) -> None:
        _, hop = kit.hop_into("bank.icbc")
        node = await bank_node("bank.icbc")
        wrong = kit.stop_request(hop)
        wrong.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE
        answer = await kit.ask(node, wrong)
        assert answer.status == request_pb2.RESPONSE_STATUS_REFUSED
        assert answer.detail == (
            "RULE legal_document.accepted_kind: stop_payment must cite 紧急止付通知书 "
            "(stop_payment_notice), not 协助查询财产通知书 (query_notice)"
        )
        # nothing was stopped: the right order is the account's first stop-payment
        right = await kit.ask(node, kit.stop_request(hop))
        assert right.stop_payment.stop_count == 1
