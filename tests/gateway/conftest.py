"""Gateway fixtures: a session PKI, a real gateway on loopback mTLS with a real SQLite audit
log (or a PostgreSQL shard, with ``start_harness(audit=...)``), and a small test agency node
(``StubNode``) that can be told to misbehave.

``GatewayHarness`` plays the police side: it builds valid requests, submits them through the
``FedgateClient`` or as raw envelopes (to tamper with them), and reads the audit log back.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from opentelemetry import trace

from fedgate.actions import RESULT_FIELD
from fedgate.audit_entry import AuditEntry, decode_entry
from fedgate.client import FedgateClient
from fedgate.disclosure import is_hits
from fedgate.envelope import Domain, Signer, decode_request, request_hash, sign_envelope
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.otel import server_interceptors
from fedgate.pki import init_federation, revoke_member
from fedgate.registry import Registry
from fedgate.status import error_from_rpc
from fedgate.testing import free_port, valid_request
from fedgate.tls import (
    MemberCredentials,
    channel_credentials,
    channel_options,
    peer_member_id,
    server_credentials,
)
from fedgate.types import MemberId
from fedgate.v1 import (
    agency_service_pb2,
    agency_service_pb2_grpc,
    envelope_pb2,
    gateway_service_pb2,
    request_pb2,
    ticket_pb2,
)
from gateway.audit.pg_store import open_pg_store
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore, CommitBatch, IndexedRow, SearchQuery, StoredLog
from gateway.config import (
    AuditConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    SharedConfig,
    TicketsConfig,
)
from gateway.server import Gateway

POLICE = MemberId("police.gd.afc")
POLICE_GZ = MemberId("police.gz.unit")
BANK = MemberId("bank.icbc")
DOWN_BANK = MemberId("bank.ccb")
REVOKED = MemberId("carrier.ctcc")


@pytest.fixture(scope="session")
def gw_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default federation, issued a day ago (so keys were valid before "now"), with
    ``carrier.ctcc`` revoked. Read-only: harnesses copy it."""
    fed = init_federation(
        tmp_path_factory.mktemp("gw-federation") / "fed",
        now=datetime.now(UTC) - timedelta(days=1),
    )
    revoke_member(fed, REVOKED, reason="left the federation")
    return fed


@pytest.fixture(scope="session")
def other_ca_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unrelated federation with its own CA (for foreign certificates)."""
    members = ()
    from fedgate.federation import DEFAULT_MEMBERS

    members = tuple(m for m in DEFAULT_MEMBERS if m.id in ("gateway", "police.gd.afc"))
    return init_federation(tmp_path_factory.mktemp("other-ca") / "fed", members=members)


# -- the test agency node --------------------------------------------------------------------


@dataclass
class QueuedItem:
    request_body: bytes
    state: int = ticket_pb2.TICKET_STATE_WAITING
    answer: envelope_pb2.SignedEnvelope | None = None


class StubNode:
    """A minimal AgencyService for one member: checks that the caller is the gateway and the
    envelope verifies, then answers as told by ``mode``:

    ``ok`` signed OK answer · ``bad_signature`` a flipped signature bit · ``other_hash`` bound
    to another request · ``queue`` queued for staff (answer with ``answer``/``expire``) ·
    ``slow`` sleeps ``delay_s`` first · ``refuse`` fails the call with PERMISSION_DENIED ·
    ``bad_deadline`` queued with a deadline that is not a valid time · ``other_request_id`` an
    answer naming another request · ``wrong_result`` a result of another action ·
    ``not_an_answer`` status PENDING · ``unsigned`` no signature · ``garbage_answer`` a signed
    body that is no Response · ``empty_reply`` neither an answer nor a queue receipt.
    """

    def __init__(
        self,
        federation: Path,
        member: MemberId = BANK,
        *,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.member = member
        self.registry = Registry.load_dir(federation)
        self.credentials = MemberCredentials.load(federation, member)
        self.signer = Signer.from_key(self.credentials.signing_key)
        self.mode = "ok"
        self.modes: dict[str, str] = {}
        """Per request id, a mode other than ``mode`` (one item of a batch misbehaving)."""
        self.delay_s = 0.0
        self.received: list[request_pb2.Request] = []
        self.metadata: list[dict[str, str]] = []
        self.queued: dict[str, QueuedItem] = {}
        self.arrived = asyncio.Event()
        """Set whenever a request arrives (clear it before waiting)."""
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("tests.stub-node")
        self._tracer_provider = tracer_provider
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        server = grpc.aio.server(interceptors=server_interceptors(self._tracer_provider))
        agency_service_pb2_grpc.add_AgencyServiceServicer_to_server(_StubServicer(self), server)
        self.port = server.add_secure_port(
            f"127.0.0.1:{port}", server_credentials(self.credentials)
        )
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sign_answer(
        self,
        body: bytes,
        *,
        status: int = request_pb2.RESPONSE_STATUS_OK,
        detail: str = "",
        answered_by: str = "",
    ) -> envelope_pb2.SignedEnvelope:
        request = decode_request(body)
        action = request.WhichOneof("action") or ""
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=request_hash(body),
            responder=self.member,
            status=status,  # type: ignore[arg-type]
            detail=detail,
            answered_by=answered_by,
        )
        response.answered_at.FromDatetime(datetime.now(UTC))
        if status == request_pb2.RESPONSE_STATUS_OK and is_hits(request):
            response.hit.hit = True  # a stage-1 request is answered hit / no hit only
        elif status == request_pb2.RESPONSE_STATUS_OK and action in RESULT_FIELD:
            getattr(response, RESULT_FIELD[action]).SetInParent()
        return sign_envelope(response.SerializeToString(), self.signer, Domain.RESPONSE)

    def answer(self, request_id: str) -> None:
        """Staff answer a queued request."""
        item = self.queued[request_id]
        item.answer = self.sign_answer(item.request_body, answered_by="staff-007")
        item.state = ticket_pb2.TICKET_STATE_ANSWERED

    def claim(self, request_id: str) -> None:
        self.queued[request_id].state = ticket_pb2.TICKET_STATE_CLAIMED

    def expire(self, request_id: str) -> None:
        """The deadline passed: a signed EXPIRED answer."""
        item = self.queued[request_id]
        item.answer = self.sign_answer(
            item.request_body,
            status=request_pb2.RESPONSE_STATUS_EXPIRED,
            detail=f"{self.member}'s staff did not answer before the deadline",
        )
        item.state = ticket_pb2.TICKET_STATE_EXPIRED


class _StubServicer(agency_service_pb2_grpc.AgencyServiceServicer):
    def __init__(self, node: StubNode) -> None:
        self.node = node

    def _check(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        peer, _ = peer_member_id(context)
        if peer != "gateway":
            raise PermissionError(f"{peer} is not the gateway")

    async def Handle(
        self,
        request: agency_service_pb2.HandleRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agency_service_pb2.HandleResponse:
        node = self.node
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        with node.tracer.start_as_current_span("node.Handle"):  # under the interceptor's span
            self._check(context)
            envelope = request.envelope
            body = envelope.body
            decoded = decode_request(body)
            key_owner, key = node.registry.signing_key(
                envelope.key_id,  # type: ignore[arg-type]
                at=decoded.issued_at.ToDatetime(tzinfo=UTC),
            )
            assert key_owner.id == decoded.requesting_agency
            from fedgate.envelope import verify_envelope

            verify_envelope(envelope, key, Domain.REQUEST)
            node.received.append(decoded)
            node.metadata.append(metadata)
            node.arrived.set()
            mode = node.modes.get(decoded.request_id, node.mode)
            if mode == "refuse":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "the node refuses")
            if mode == "slow":
                await asyncio.sleep(node.delay_s)
            if mode == "queue":
                node.queued[decoded.request_id] = QueuedItem(request_body=body)
                queued = agency_service_pb2.Queued(request_id=decoded.request_id)
                queued.deadline.FromDatetime(datetime.now(UTC) + timedelta(hours=24))
                return agency_service_pb2.HandleResponse(queued=queued)
            if mode == "bad_deadline":
                queued = agency_service_pb2.Queued(request_id=decoded.request_id)
                queued.deadline.seconds = 2**62
                return agency_service_pb2.HandleResponse(queued=queued)
            if mode == "empty_reply":
                return agency_service_pb2.HandleResponse()
            if mode == "garbage_answer":
                garbage = sign_envelope(b"\xff\xfe\xfd", node.signer, Domain.RESPONSE)
                return agency_service_pb2.HandleResponse(response=garbage)
            answer = node.sign_answer(body)
            if mode in ("other_request_id", "wrong_result", "not_an_answer"):
                response = request_pb2.Response.FromString(answer.body)
                if mode == "other_request_id":
                    response.request_id = "01890a5d-ac96-774b-bcce-b302099a8057"
                elif mode == "wrong_result":
                    response.subscriber.SetInParent()
                else:
                    response.status = request_pb2.RESPONSE_STATUS_PENDING
                answer = sign_envelope(response.SerializeToString(), node.signer, Domain.RESPONSE)
            elif mode == "unsigned":
                answer.signature = b""
            elif mode == "bad_signature":
                sig = bytearray(answer.signature)
                sig[0] ^= 1
                answer.signature = bytes(sig)
            elif mode == "other_hash":
                response = request_pb2.Response.FromString(answer.body)
                response.request_hash = hashlib.sha256(b"another request").digest()
                answer = sign_envelope(response.SerializeToString(), node.signer, Domain.RESPONSE)
            return agency_service_pb2.HandleResponse(response=answer)

    async def GetResult(
        self,
        request: agency_service_pb2.GetResultRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agency_service_pb2.GetResultResponse:
        self._check(context)
        item = self.node.queued.get(request.request_id)
        if item is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such request")
        reply = agency_service_pb2.GetResultResponse(state=item.state)  # type: ignore[arg-type]
        if item.answer is not None:
            reply.response.CopyFrom(item.answer)
        return reply


# -- an audit store that can be made to fail -------------------------------------------------


class FlakyStore:
    """An ``AuditStore`` around the real SQLite one whose commits fail while ``failing``, and
    whose next commit waits ``stall_next_s`` first (once; a slow disk)."""

    def __init__(self, inner: AuditStore) -> None:
        self.inner = inner
        self.failing = False
        self.stall_next_s = 0.0

    @property
    def origin(self) -> str:
        return self.inner.origin

    @property
    def state_path(self) -> Path | None:
        return self.inner.state_path

    async def load(self) -> StoredLog:
        return await self.inner.load()

    async def commit(self, batch: CommitBatch) -> None:
        if self.failing:
            raise AuditUnavailable("the audit database is failing (test)")
        stall, self.stall_next_s = self.stall_next_s, 0.0
        if stall:
            await asyncio.sleep(stall)
        await self.inner.commit(batch)

    async def add_cosigned(self, size: int, note: str) -> None:
        await self.inner.add_cosigned(size, note)

    async def leaves(self, start: int, stop: int) -> list[bytes]:
        return await self.inner.leaves(start, stop)

    async def shard_leaf(self, origin: str, index: int) -> bytes | None:
        return await self.inner.shard_leaf(origin, index)

    async def checkpoint(self, size: int) -> str | None:
        return await self.inner.checkpoint(size)

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        return await self.inner.search(query)

    def catch_up_soon(self) -> None:
        self.inner.catch_up_soon()

    def read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return self.inner.read_tiles(level, start, stop)

    async def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return await self.inner.tiles(level, start, stop)

    async def close(self) -> None:
        await self.inner.close()


# -- the harness ---------------------------------------------------------------------------------


@dataclass
class Refusal:
    """How a call failed: the status code on the wire and the rebuilt fedgate error."""

    code: grpc.StatusCode
    error: FedgateError


@dataclass
class GatewayHarness:
    federation: Path
    state_dir: Path
    node: StubNode
    gateway: Gateway
    store: FlakyStore
    down_port: int
    quotas: dict[str, Any]
    tracer_provider: trace.TracerProvider | None = None
    meter_provider: Any = None
    clients: dict[str, FedgateClient] = field(default_factory=dict)
    serial: int = 0
    audit: AuditConfig = field(default_factory=AuditConfig)
    """The ``[audit]`` section: SQLite by default."""
    replay_store: str = "memory"
    """``[pipeline] replay_store`` (empty: what ``shared`` implies)."""
    shared: SharedConfig = field(default_factory=SharedConfig)
    """The ``[shared]`` section: local by default."""

    def config(self, *, listen: str = "127.0.0.1:0") -> GatewayConfig:
        return GatewayConfig(
            federation=FederationConfig(dir=self.federation, reload_interval_s=0.1),
            pipeline=PipelineConfig(state_dir=self.state_dir, replay_store=self.replay_store),
            server=ServerConfig(listen=listen, grace_period_s=2.0),
            audit=self.audit,
            routing=RoutingConfig(
                timeout_s=5.0,
                breaker_failures=1000,
                endpoints={BANK: self.node.endpoint, DOWN_BANK: f"127.0.0.1:{self.down_port}"},
            ),
            quotas=self.quotas,
            tickets=TicketsConfig(poll_interval_s=0.05),
            shared=self.shared,
        )

    @property
    def endpoint(self) -> str:
        return self.gateway.endpoint

    async def open_store(self) -> FlakyStore:
        """The store ``[audit]`` names (SQLite or PostgreSQL), made able to fail."""
        config = self.config()
        audit = config.audit
        if audit.store == "postgres":
            state_path = config.audit_state_path
            assert state_path is not None
            return FlakyStore(
                await open_pg_store(
                    audit.dsn, origin=audit.origin, schema=audit.schema, state_path=state_path
                )
            )
        return FlakyStore(await open_sqlite_store(config.audit_path, origin=audit.origin))

    def client(self, member: str = POLICE) -> FedgateClient:
        client = self.clients.get(member)
        if client is None:
            client = FedgateClient.from_federation(
                self.federation, MemberId(member), endpoint=self.endpoint
            )
            self.clients[member] = client
        return client

    def request(self, action: str = "account_holder", **kw: Any) -> request_pb2.Request:
        """A valid request with fresh identifiers and officer (so quotas do not interfere)."""
        self.serial += 1
        kw.setdefault("serial", self.serial)
        return valid_request(action, now=datetime.now(UTC), **kw)

    def sign(
        self, request: request_pb2.Request, member: str = POLICE
    ) -> envelope_pb2.SignedEnvelope:
        return self.client(member).sign(request)

    async def refusal(
        self,
        envelope: envelope_pb2.SignedEnvelope | bytes,
        *,
        member: str = POLICE,
        timeout: float = 5.0,
    ) -> Refusal:
        """Submit raw and expect a failure."""
        raw = (
            envelope
            if isinstance(envelope, bytes)
            else gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString()
        )
        creds = MemberCredentials.load(self.federation, MemberId(member))
        async with grpc.aio.secure_channel(
            self.endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
        ) as channel:
            call = channel.unary_unary(
                "/fedgate.v1.GatewayService/Submit",
                request_serializer=None,
                response_deserializer=gateway_service_pb2.SubmitResponse.FromString,
            )
            try:
                await call(raw, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                return Refusal(exc.code(), error_from_rpc(exc))
        raise AssertionError("the gateway accepted the request")

    async def entries(self, start: int = 0) -> list[AuditEntry]:
        log = self.gateway.audit
        return [decode_entry(await log.get_entry(i)) for i in range(start, log.size)]

    async def last_entry(self) -> AuditEntry:
        log = self.gateway.audit
        return decode_entry(await log.get_entry(log.size - 1))

    async def restart(self) -> None:
        """Stop the gateway and start a new one on the same state (a new port)."""
        for client in self.clients.values():
            await client.close()
        self.clients.clear()
        await self.gateway.stop()
        self.store = await self.open_store()
        self.gateway = await Gateway.start(
            self.config(),
            audit_store=self.store,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await self.gateway.stop(0.5)
        await self.node.stop()


async def start_harness(
    federation: Path,
    tmp: Path,
    *,
    quotas: dict[str, Any] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: Any = None,
    audit: AuditConfig | None = None,
    replay_store: str = "memory",
    shared: SharedConfig | None = None,
) -> GatewayHarness:
    """A private copy of ``federation``, a stub bank node and a gateway in front of it
    (``audit``: another ``[audit]`` section, e.g. a PostgreSQL shard; ``shared``: another
    ``[shared]`` section, whose ``"postgres"`` needs ``replay_store=""``)."""
    fed = tmp / "fed"
    shutil.copytree(federation, fed)
    node = StubNode(fed, tracer_provider=tracer_provider)
    await node.start()
    state = tmp / "state"
    harness = GatewayHarness(
        federation=fed,
        state_dir=state,
        node=node,
        gateway=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        down_port=free_port(),
        quotas=quotas or {"officer_per_minute": 60, "officer_burst": 5},
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        audit=audit or AuditConfig(),
        replay_store=replay_store,
        shared=shared or SharedConfig(),
    )
    config = harness.config()
    harness.store = await harness.open_store()
    harness.gateway = await Gateway.start(
        config,
        audit_store=harness.store,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    return harness


@pytest.fixture(scope="session")
def harness_factory() -> Callable[..., Any]:
    """``start_harness`` itself, for modules that need their own gateway (e.g. traced)."""
    return start_harness


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness(
    gw_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayHarness]:
    """One gateway and one stub node for a whole test module."""
    h = await start_harness(gw_federation, tmp_path_factory.mktemp("gateway"))
    try:
        yield h
    finally:
        await h.close()


def reasons(entries: Sequence[AuditEntry]) -> list[str]:
    return [getattr(e, "rule", getattr(e, "status", "")) for e in entries]


Mutator = Callable[[request_pb2.Request], None]
