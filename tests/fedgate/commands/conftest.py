"""Fixtures for the police CLI: the CLI run in-process, a stand-in gateway, a live federation.

``fake_gateway`` serves ``GatewayService`` over real mTLS with the gateway member's
certificate and answers with responses signed by the real keys of the federation's agencies,
countersigned by the gateway key, with a real Merkle inclusion proof and a signed (and
witness-cosigned) checkpoint: everything the client verifies is genuine, so the CLI's
verification, rendering and exit codes are tested through the public seam. Tests change
``respond`` or ``tickets`` to script refusals, forgeries and manual answers.

``live_federation`` runs the real gateway (``gateway.server``) and real agency nodes
(``adapters``) on a seeded world in a background event loop, for end-to-end CLI tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_status import rpc_status

from adapters.bank.node import BankNode
from adapters.carrier.node import CarrierNode
from adapters.config import ActionMode, NodeConfig
from adapters.node import AgencyNode
from adapters.synth import World, seed_world
from fedgate.actions import RESULT_FIELD, action_of
from fedgate.checkpoint import Checkpoint, CosignatureSigner, sign_checkpoint
from fedgate.commands import answers, order, query, risk, ticket
from fedgate.envelope import (
    Domain,
    Signer,
    countersign,
    decode_request,
    request_hash,
    sign_envelope,
)
from fedgate.errors import FedgateError, NotFound
from fedgate.keys import load_private_key
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner, add_signatures
from fedgate.pki import FederationLayout
from fedgate.status import rpc_status_of
from fedgate.testing import free_port
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import (
    envelope_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    request_pb2,
    ticket_pb2,
)
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    TicketsConfig,
)
from gateway.server import Gateway

_T = TypeVar("_T")
ORIGIN = "fedgate.test/gateway/shard-0"
WITNESS = "pboc.gz"


@dataclass
class Run:
    """One CLI invocation: exit code and captured output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedgate")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (query, order, ticket, risk, answers):
        module.register(sub)
    return parser


@pytest.fixture
def sent_dir(tmp_path: Path) -> Path:
    return tmp_path / "sent"


@pytest.fixture
def cli(
    federation_dir: Path,
    sent_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Run]:
    """Run ``fedgate <argv>`` in-process as officer 440100123 of police.gd.afc."""
    monkeypatch.setenv("FEDGATE_FEDERATION", str(federation_dir))
    monkeypatch.setenv("FEDGATE_SENT_DIR", str(sent_dir))
    monkeypatch.delenv("FEDGATE_MEMBER", raising=False)
    monkeypatch.setenv("FEDGATE_OFFICER_ID", "440100123")
    monkeypatch.setenv("FEDGATE_OFFICER_NAME", "王伟")
    monkeypatch.delenv("FEDGATE_OFFICER_ROLE", raising=False)
    monkeypatch.delenv("FEDGATE_OFFICER_PHONE", raising=False)
    monkeypatch.delenv("FEDGATE_OFFICER_ID_NUMBER", raising=False)
    parser = build_parser()

    def run(*argv: str) -> Run:
        capsys.readouterr()
        try:
            args = parser.parse_args(list(argv))
            code = int(args.func(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


# ----------------------------------------------------------------------------- answers


class AnswerSigner:
    """Makes genuine signed answers: agency signature, gateway countersignature, receipt."""

    def __init__(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        self._layout = layout
        self._keys: dict[str, Signer] = {}
        self.tree = MerkleTree()
        self.gateway = self.signer("gateway")
        self.witness = CosignatureSigner(
            name=WITNESS, private_key=load_private_key(layout.signing_key(MemberId(WITNESS)))
        )

    def signer(self, member: str) -> Signer:
        if member not in self._keys:
            key = load_private_key(self._layout.signing_key(MemberId(member)))
            self._keys[member] = Signer.from_key(key)
        return self._keys[member]

    origin = ORIGIN

    def ticket(self, body: bytes, state: ticket_pb2.TicketState.ValueType) -> ticket_pb2.Ticket:
        """The gateway's ticket for the request ``body`` in ``state``."""
        request = decode_request(body)
        result = ticket_pb2.Ticket(
            ticket_id=request.request_id, target_agency=request.target_agency, state=state
        )
        result.deadline.FromDatetime(datetime.now(UTC) + timedelta(hours=24))
        result.request_receipt.log_origin = ORIGIN
        result.request_receipt.request_leaf_index = 7
        return result

    def default_result(self, request: request_pb2.Request, response: request_pb2.Response) -> None:
        result = getattr(response, RESULT_FIELD[action_of(request)])
        action = getattr(request, action_of(request))
        for name in ("account_number", "phone_number", "id_number"):
            if (
                name in result.DESCRIPTOR.fields_by_name
                and name in action.DESCRIPTOR.fields_by_name
            ):
                setattr(result, name, getattr(action, name))
        if "subject" in result.DESCRIPTOR.fields_by_name:
            result.subject = getattr(action, "phone_number", "") or getattr(action, "sender", "")
        if "status" in result.DESCRIPTOR.fields_by_name:
            result.status = "normal"

    def answer(
        self,
        body: bytes,
        *,
        status: request_pb2.ResponseStatus.ValueType = request_pb2.RESPONSE_STATUS_OK,
        detail: str = "",
        result: Callable[[request_pb2.Response], None] | None = None,
        signed_by: str | None = None,
        responder: str | None = None,
        bound_to: bytes | None = None,
        answered_by: str = "",
    ) -> envelope_pb2.SignedResponse:
        request = decode_request(body)
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=request_hash(bound_to if bound_to is not None else body),
            responder=responder or request.target_agency,
            status=status,
            detail=detail,
            answered_by=answered_by,
        )
        response.answered_at.FromDatetime(datetime.now(UTC))
        if status == request_pb2.RESPONSE_STATUS_OK:
            (result or (lambda r: self.default_result(request, r)))(response)
        response_body = response.SerializeToString()
        signer = self.signer(signed_by or request.target_agency)
        envelope = sign_envelope(response_body, signer, Domain.RESPONSE)
        request_index = self.tree.append(leaf_hash(b"request\n" + body))
        entry_hash = leaf_hash(b"response\n" + response_body)
        index = self.tree.append(entry_hash)
        size = self.tree.size
        checkpoint = Checkpoint(ORIGIN, size, self.tree.root(size))
        note = sign_checkpoint(checkpoint, NoteSigner(name=ORIGIN, private_key=self.gateway.key))
        cosignature = self.witness.cosign(
            checkpoint.marshal(), timestamp=int(datetime.now(UTC).timestamp())
        )
        note = add_signatures(note, [cosignature])
        receipt = envelope_pb2.AuditReceipt(
            log_origin=ORIGIN,
            request_leaf_index=request_index,
            leaf_index=index,
            tree_size=size,
            inclusion_proof=self.tree.inclusion_proof(index, size),
            checkpoint=note,
            leaf_hash=entry_hash,
        )
        return envelope_pb2.SignedResponse(
            response=envelope,
            countersignature=countersign(envelope, self.gateway, leaf_index=index),
            receipt=receipt,
        )


# ----------------------------------------------------------------------------- gateway


Update = tuple[ticket_pb2.Ticket, envelope_pb2.SignedResponse | None] | FedgateError


@dataclass
class FakeGateway:
    """State and behaviour of the stand-in gateway; reset before each test."""

    endpoint: str
    signer: AnswerSigner
    received: list[request_pb2.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    respond: Callable[[bytes], gateway_service_pb2.SubmitResponse] | None = None
    tickets: dict[str, list[Update]] = field(default_factory=dict)
    """ticket id -> updates: GetTicket returns the first, WatchTicket streams them all."""

    def reset(self) -> None:
        self.received.clear()
        self.bodies.clear()
        self.respond = None
        self.tickets.clear()

    def answer_ok(self, body: bytes) -> gateway_service_pb2.SubmitResponse:
        return gateway_service_pb2.SubmitResponse(response=self.signer.answer(body))


class _Servicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, fake: FakeGateway) -> None:
        self.fake = fake

    def Submit(
        self, request: gateway_service_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> gateway_service_pb2.SubmitResponse:
        body = request.envelope.body
        self.fake.received.append(decode_request(body))
        self.fake.bodies.append(body)
        try:
            return (self.fake.respond or self.fake.answer_ok)(body)
        except FedgateError as exc:
            context.abort_with_status(rpc_status.to_status(rpc_status_of(exc)))
            raise AssertionError("unreachable") from exc

    def _updates(self, ticket_id: str, context: grpc.ServicerContext) -> list[Update]:
        updates = self.fake.tickets.get(ticket_id)
        if updates is None:
            context.abort_with_status(
                rpc_status.to_status(rpc_status_of(NotFound(f"no ticket {ticket_id!r}")))
            )
            raise AssertionError("unreachable")
        return updates

    def GetTicket(
        self, request: gateway_service_pb2.GetTicketRequest, context: grpc.ServicerContext
    ) -> gateway_service_pb2.GetTicketResponse:
        first = self._updates(request.ticket_id, context)[0]
        if isinstance(first, FedgateError):
            context.abort_with_status(rpc_status.to_status(rpc_status_of(first)))
            raise AssertionError("unreachable")
        reply = gateway_service_pb2.GetTicketResponse(ticket=first[0])
        if first[1] is not None:
            reply.response.CopyFrom(first[1])
        return reply

    def WatchTicket(
        self, request: gateway_service_pb2.WatchTicketRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_service_pb2.WatchTicketResponse]:
        for update in self._updates(request.ticket_id, context):
            if isinstance(update, FedgateError):
                context.abort_with_status(rpc_status.to_status(rpc_status_of(update)))
                return
            reply = gateway_service_pb2.WatchTicketResponse(ticket=update[0])
            if update[1] is not None:
                reply.response.CopyFrom(update[1])
            yield reply
        last = self._updates(request.ticket_id, context)[-1]
        if isinstance(last, tuple) and last[0].state in _OPEN:
            # The ticket stays open: keep the stream until the client gives up.
            done = threading.Event()
            context.add_callback(done.set)
            done.wait(timeout=10)


_OPEN = (ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_CLAIMED)


@pytest.fixture(scope="session")
def answer_signer(federation_dir: Path) -> AnswerSigner:
    """Signs answers as the federation's agencies and its gateway would."""
    return AnswerSigner(federation_dir)


@pytest.fixture(scope="session")
def _gateway_server(federation_dir: Path, answer_signer: AnswerSigner) -> Iterator[FakeGateway]:
    creds = MemberCredentials.load(federation_dir, MemberId("gateway"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
    fake = FakeGateway(endpoint=f"127.0.0.1:{port}", signer=answer_signer)
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(_Servicer(fake), server)
    server.start()
    yield fake
    server.stop(None)


@pytest.fixture
def fake_gateway(_gateway_server: FakeGateway) -> FakeGateway:
    _gateway_server.reset()
    return _gateway_server


# ----------------------------------------------------------------------------- live federation


class _LoopThread:
    """An event loop in a thread: the servers run there while the CLI runs its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class LiveFederation:
    """A real gateway with bank.icbc (transactions answered by staff) and every carrier's node
    on a seeded world, all on loopback mTLS."""

    endpoint: str
    world: World
    nodes: dict[str, Any]


@pytest.fixture(scope="module")
def live_federation(
    federation_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveFederation]:
    state = tmp_path_factory.mktemp("live")
    world = seed_world(state / "world", seed=11, customers_per_bank=30, fraud_chains=4)
    listen = f"127.0.0.1:{free_port()}"
    loop = _LoopThread()
    nodes: dict[str, AgencyNode] = {}
    gateway: Gateway | None = None

    async def start() -> Gateway:
        for member, manual in (
            ("bank.icbc", {"transactions"}),
            ("carrier.cmcc", set()),
            ("carrier.cucc", set()),
            ("carrier.ctcc", set()),  # every carrier: `query sim-count --all-carriers`
        ):
            config = NodeConfig(
                member_id=MemberId(member),
                federation_dir=federation_dir,
                state_dir=state / "nodes" / member,
                listen="127.0.0.1:0",
                staff=("icbc.zhang",) if member == "bank.icbc" else (),
                backend_path=world.database(member),
                modes=dict.fromkeys(manual, ActionMode.MANUAL),
                monitor_poll_s=3600.0,
                gateway_endpoint=listen,
            )
            kind = CarrierNode if member.startswith("carrier.") else BankNode
            node = kind.open(config)
            await node.start()
            nodes[member] = node
        config = GatewayConfig(
            federation=FederationConfig(dir=federation_dir),
            pipeline=PipelineConfig(state_dir=state / "gateway"),
            server=ServerConfig(listen=listen, grace_period_s=1.0),
            routing=RoutingConfig(
                timeout_s=5.0, endpoints={MemberId(m): n.endpoint for m, n in nodes.items()}
            ),
            tickets=TicketsConfig(poll_interval_s=0.05),
        )
        return await Gateway.start(config)

    async def stop() -> None:
        if gateway is not None:
            await gateway.stop(0.5)
        for node in nodes.values():
            await node.stop(grace=None)

    try:
        gateway = loop.run(start())
        yield LiveFederation(endpoint=gateway.endpoint, world=world, nodes=dict(nodes))
    finally:
        loop.run(stop())
        loop.close()
