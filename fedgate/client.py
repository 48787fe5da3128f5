"""The client SDK: build and sign requests, call the gateway over mTLS, verify answers.

    async with FedgateClient.from_federation(fed_dir, MemberId("police.gd.afc")) as client:
        request = client.new_request(
            officer=officer, case=case, legal_document=doc, target="bank.icbc",
            purpose="紧急止付", urgency=common_pb2.URGENCY_EMERGENCY,
            action=bank_pb2.StopPaymentOrder(...),
        )
        answer = await client.submit(request)   # verified Answer, or raises FedgateError

Every answer is checked before it is returned: the agency's signature against the
registry, the binding to the request sent (request hash, id, responder), the
gateway's countersignature, and the receipt's inclusion proof against the log's
signed checkpoint. A call that times out is sent again, the same signed envelope: the gateway
answers a retry with the first attempt's recorded outcome and never runs a request twice
(``submit``; ``docs/protocol.md``, "Safe retries"). ``cosign_receipt`` upgrades a receipt with
a witness-cosigned checkpoint and a consistency proof (see ``docs/audit.md``, "Receipts").

Several gateway instances: give every address (``gateway_endpoint="a:1,b:2"`` or a list). The
channel balances calls over them with gRPC's own ``round_robin`` policy and checks each
instance's ``grpc.health.v1`` status (``healthCheckConfig``), so an instance that is down or
draining (NOT_SERVING) is left out until it serves again (``gateway_service_config``). Reads
(tickets, outcomes) are retried on another instance by gRPC's retry policy. ``submit`` is never
re-signed: when the instance it went to is lost before answering, it sends the *same signed
bytes* again, elsewhere (``SUBMIT_ATTEMPTS``); the shared replay protection makes sure that
request runs at most once, and a gateway with safe retries answers the resend with the first
outcome.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message

from fedgate import merkle
from fedgate.actions import GATEWAY_ANSWERED, new_request_id
from fedgate.checkpoint import Checkpoint, open_checkpoint
from fedgate.cosigned import verify_cosigned_receipt
from fedgate.envelope import (
    Domain,
    Signer,
    decode_request,
    decode_response,
    sign_envelope,
    verify_countersignature,
    verify_envelope,
    verify_response_binding,
)
from fedgate.errors import (
    DecodeError,
    FedgateError,
    InProgress,
    NotFound,
    SignatureInvalid,
    VerificationError,
)
from fedgate.fanout import resolve_targets
from fedgate.keys import raw_public_key
from fedgate.note import NoteVerifier
from fedgate.registry import Registry
from fedgate.status import error_from_detail, error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.trust import TrustHolder
from fedgate.types import KeyId, MemberId
from fedgate.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    appeal_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    common_pb2,
    envelope_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    request_pb2,
    risklist_pb2,
    risklist_pb2_grpc,
    ticket_pb2,
)

__all__ = [
    "GATEWAY_ID",
    "SUBMIT_ATTEMPTS",
    "Answer",
    "FanOutItem",
    "FedgateClient",
    "gateway_service_config",
    "gateway_target",
    "verify_signed_response",
]

GATEWAY_ID = MemberId("gateway")

SUBMIT_ATTEMPTS = 3
"""How many calls ``submit`` makes with one signed request by default: always the same bytes,
never re-signed."""

_GATEWAY_SERVICE = "fedgate.v1.GatewayService"
_RETRIED_READS = ("GetTicket", "GetOutcome", "WatchTicket")
"""Reads that any instance answers alike (tickets and outcomes are shared state): gRPC retries
them on another instance. Audit reads are not among them: each instance answers for its own
shard."""


def gateway_service_config() -> str:
    """The channel's service config (JSON): ``round_robin`` over the addresses, each instance's
    health watched through ``grpc.health.v1`` (the gateway serves it and turns NOT_SERVING when
    it drains), and a retry policy for the reads in ``_RETRIED_READS`` on ``UNAVAILABLE``.

    Submissions get no retry policy: an order MUST NOT be sent again by the transport on its
    own (``submit`` resends the same signed bytes itself). gRPC still replays a call that never
    left the client (its "transparent retry"), which cannot execute anything twice."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": _GATEWAY_SERVICE},
            "methodConfig": [
                {
                    "name": [{"service": _GATEWAY_SERVICE, "method": m} for m in _RETRIED_READS],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def _split_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    found = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not found:
        raise ValueError("gateway_endpoint: no address given")
    return found


def gateway_target(endpoints: str | Sequence[str]) -> str:
    """The gRPC target for one gateway address or several (``"h:p"``, ``"h:p,h:p"`` or a list).

    One address is used as given (a DNS name with several addresses is balanced too). Several
    become one ``ipv4:`` (or ``ipv6:``) target listing them, host names resolved here, once;
    raises ``ValueError`` naming an address that is malformed or does not resolve."""
    parts = _split_endpoints(endpoints)
    if len(parts) == 1:
        return parts[0]
    literal: list[tuple[int, str]] = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"gateway_endpoint: {part!r} is not HOST:PORT")
        host = host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            try:
                info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ValueError(f"gateway_endpoint: {host!r} does not resolve: {exc}") from exc
            address = ipaddress.ip_address(str(info[0][4][0]))
        literal.append(
            (
                address.version,
                f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}",
            )
        )
    versions = {v for v, _ in literal}
    if len(versions) > 1:
        raise ValueError("gateway_endpoint: mixes IPv4 and IPv6 addresses; use one family")
    return f"ipv{versions.pop()}:" + ",".join(a for _, a in literal)


_RETRYABLE = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE", InProgress.reason})
"""What ``submit`` sends again: its call timed out or reached no gateway (the gateway may or may
not have run it), or the gateway still runs the first attempt."""
_RETRY_BACKOFF_S = 0.1
_RETRY_BACKOFF_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    """A verified answer: the decoded response and the signed bundle it came in."""

    response: request_pb2.Response
    signed: envelope_pb2.SignedResponse

    @property
    def receipt(self) -> envelope_pb2.AuditReceipt:
        return self.signed.receipt


@dataclass(frozen=True, slots=True)
class FanOutItem:
    """One member's outcome in a fan-out: exactly one of ``answer`` (verified), ``ticket``,
    ``error`` or ``no_answer`` (why the member was silent by the deadline)."""

    target: MemberId
    answer: Answer | None = None
    ticket: ticket_pb2.Ticket | None = None
    error: FedgateError | None = None
    no_answer: str = ""


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` returns: an answer, or a ticket for a manual answer."""

    answer: Answer | None
    ticket: ticket_pb2.Ticket | None


def verify_signed_response(
    signed: envelope_pb2.SignedResponse,
    *,
    request_body: bytes,
    request_id: str,
    target: str,
    registry: Registry,
    gateway_id: MemberId = GATEWAY_ID,
    responder: str | None = None,
) -> Answer:
    """Check everything about a signed response; raises a ``FedgateError`` naming what failed.

    ``responder`` is who must have signed the answer: the target (the default), or the gateway
    for agency reports, which the gateway itself acknowledges (``gateway.alerts``)."""
    expected = target if responder is None else responder
    response = decode_response(signed.response.body)
    try:
        answered_at = response.answered_at.ToDatetime(tzinfo=UTC)
    except ValueError as exc:  # out-of-range seconds or nanos in an unverified body
        raise DecodeError(f"the response's answered_at is not a valid time: {exc}") from exc
    member, agency_key = registry.signing_key(KeyId(signed.response.key_id), at=answered_at)
    if member.id != expected:
        raise SignatureInvalid(
            f"the answer is signed by {member.id}, but must be signed by {expected} "
            f"(the request went to {target})"
        )
    verify_envelope(signed.response, agency_key, Domain.RESPONSE)
    verify_response_binding(
        response, request_body=request_body, request_id=request_id, responder=expected
    )
    receipt = signed.receipt
    gateway_member, gateway_key = registry.signing_key(
        KeyId(signed.countersignature.key_id), at=datetime.now(UTC)
    )
    if gateway_member.id != gateway_id:
        raise SignatureInvalid(f"the countersignature is by {gateway_member.id}, not the gateway")
    verify_countersignature(
        signed.response, signed.countersignature, gateway_key, leaf_index=receipt.leaf_index
    )
    _verify_receipt(receipt, gateway_key)
    if receipt.cosigned_checkpoint:  # an upgraded receipt: the upgrade must hold as well
        verify_cosigned_receipt(receipt, registry)
    return Answer(response=response, signed=signed)


@functools.lru_cache(maxsize=64)
def _open_checkpoint(note: str, origin: str, gateway_key: bytes) -> Checkpoint:
    """``open_checkpoint`` remembered for the exact same note, origin and key: the answers of
    one fan-out (and of one group commit) share a checkpoint, and checking the same bytes
    against the same key again can only give the same result. Raises as ``open_checkpoint``
    (failures are not remembered)."""
    return open_checkpoint(
        note,
        NoteVerifier(name=origin, public_key=Ed25519PublicKey.from_public_bytes(gateway_key)),
        origin=origin,
    )


def _verify_receipt(receipt: envelope_pb2.AuditReceipt, gateway_key: Ed25519PublicKey) -> None:
    """The receipt's checkpoint is signed by the gateway for its origin and tree size, and its
    inclusion proof leads from the leaf hash to that checkpoint's root."""
    checkpoint = _open_checkpoint(
        receipt.checkpoint, receipt.log_origin, raw_public_key(gateway_key)
    )
    if checkpoint.size != receipt.tree_size:
        raise VerificationError("the receipt's checkpoint is not for its tree size")
    merkle.verify_inclusion(
        receipt.leaf_hash,
        receipt.leaf_index,
        receipt.tree_size,
        list(receipt.inclusion_proof),
        checkpoint.root_hash,
    )


def _retry_pause(error: FedgateError, attempt: int) -> float:
    """Seconds to wait before resending after ``attempt`` failed with ``error``: what the
    gateway asked for when the request is still in progress, else a doubling back-off."""
    if isinstance(error, InProgress):
        return float(error.retry_after_s)
    return min(_RETRY_BACKOFF_MAX_S, _RETRY_BACKOFF_S * 2.0 ** (attempt - 1))


class FedgateClient:
    """A member's connection to the gateway. Use as an async context manager."""

    def __init__(
        self,
        *,
        credentials: MemberCredentials,
        registry: Registry | TrustHolder,
        gateway_endpoint: str | Sequence[str],
        gateway_id: MemberId = GATEWAY_ID,
    ) -> None:
        """``gateway_endpoint``: one ``HOST:PORT``, or several (comma list or sequence) of the
        instances of one gateway, balanced as the module docstring says. Raises ``ValueError``
        for an address that does not parse or resolve."""
        self.credentials = credentials
        # A holder (an agency node's) is read at each verification, so a reload counts at once.
        self._trust = registry if isinstance(registry, TrustHolder) else TrustHolder(registry)
        self.gateway_id = gateway_id
        self._signer = Signer.from_key(credentials.signing_key)
        self.endpoints = tuple(_split_endpoints(gateway_endpoint))
        self._channel = grpc.aio.secure_channel(
            gateway_target(self.endpoints),
            channel_credentials(credentials),
            options=[
                *channel_options(gateway_id),
                ("grpc.service_config", gateway_service_config()),
                ("grpc.enable_retries", 1),
            ],
        )
        self._stub = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)
        self._events = event_service_pb2_grpc.EventServiceStub(self._channel)
        self._audit = audit_service_pb2_grpc.AuditServiceStub(self._channel)
        self._alerts = alert_service_pb2_grpc.AlertServiceStub(self._channel)
        self._risklist = risklist_pb2_grpc.RiskListServiceStub(self._channel)
        self._sent: dict[str, tuple[bytes, str]] = {}
        self._pinned: dict[str, grpc.aio.Channel] = {}

    def _audit_stubs(self) -> list[audit_service_pb2_grpc.AuditServiceAsyncStub]:
        """Audit reads answer for the shard of the instance that takes them: with several
        addresses, one channel per address (opened on first use), so that a receipt's shard
        can be asked of the instance that writes it."""
        if len(self.endpoints) == 1:
            return [self._audit]
        for endpoint in self.endpoints:
            if endpoint not in self._pinned:
                self._pinned[endpoint] = grpc.aio.secure_channel(
                    endpoint,
                    channel_credentials(self.credentials),
                    options=channel_options(self.gateway_id),
                )
        return [audit_service_pb2_grpc.AuditServiceStub(c) for c in self._pinned.values()]

    @classmethod
    def from_federation(
        cls,
        directory: Path,
        member_id: MemberId,
        *,
        endpoint: str | Sequence[str] | None = None,
    ) -> FedgateClient:
        """Credentials and registry from a federation directory; the gateway's endpoint from
        the registry unless given (one address, or several: see the class)."""
        registry = Registry.load_dir(directory)
        credentials = MemberCredentials.load(directory, member_id)
        gateway = registry.member(GATEWAY_ID)
        return cls(
            credentials=credentials,
            registry=registry,
            gateway_endpoint=endpoint or gateway.endpoint,
        )

    @property
    def registry(self) -> Registry:
        """The registry answers are verified with, now."""
        return self._trust.registry

    async def __aenter__(self) -> FedgateClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._pinned.values():
            await channel.close(None)
        await self._channel.close(None)

    @property
    def member_id(self) -> MemberId:
        return self.credentials.member_id

    def new_request(
        self,
        *,
        action: Message,
        officer: common_pb2.Person,
        target: str,
        case: common_pb2.CaseInfo,
        legal_document: common_pb2.LegalDocument,
        purpose: str,
        urgency: common_pb2.Urgency.ValueType = common_pb2.URGENCY_ROUTINE,
        second_officer: common_pb2.Person | None = None,
        deadline: timedelta = timedelta(hours=24),
        original_request_id: str = "",
        action_name: str | None = None,
        approval_request_id: str = "",
        targets: request_pb2.TargetSet | None = None,
        chase_id: str = "",
        parent_request_id: str = "",
        disclosure: request_pb2.Disclosure | None = None,
    ) -> request_pb2.Request:
        """A fresh request (new UUIDv7 id, nonce, issued-at now) carrying ``action``.

        ``action_name`` picks the oneof field when several take the same message type.
        ``targets`` addresses a fan-out (``target`` must then be empty); ``chase_id`` and
        ``parent_request_id`` are the workflow link; ``disclosure`` the stage of a staged
        disclosure (``fedgate.staged`` runs both stages)."""
        now = datetime.now(UTC)
        request = request_pb2.Request(
            request_id=new_request_id(),
            nonce=os.urandom(16),
            requesting_agency=self.member_id,
            officer=officer,
            case=case,
            legal_document=legal_document,
            urgency=urgency,
            purpose=purpose,
            target_agency=target,
            chase_id=chase_id,
            parent_request_id=parent_request_id,
            original_request_id=original_request_id,
            approval_request_id=approval_request_id,
        )
        request.issued_at.FromDatetime(now)
        request.answer_deadline.FromDatetime(now + deadline)
        if second_officer is not None:
            request.second_officer.CopyFrom(second_officer)
        if targets is not None:
            request.target_set.CopyFrom(targets)
        if disclosure is not None:
            request.disclosure.CopyFrom(disclosure)
        field = action_name or _field_for(action)
        getattr(request, field).CopyFrom(action)
        return request

    def sign(self, request: request_pb2.Request) -> envelope_pb2.SignedEnvelope:
        """Serialize once and sign; remembers the bytes so the answer can be checked."""
        body = request.SerializeToString()
        self._sent[request.request_id] = (body, request.target_agency)
        return sign_envelope(body, self._signer, Domain.REQUEST)

    async def submit(
        self,
        request: request_pb2.Request | envelope_pb2.SignedEnvelope,
        *,
        timeout: float = 15.0,
        attempts: int = SUBMIT_ATTEMPTS,
    ) -> Submitted:
        """Send one request; returns the verified answer or a ticket. Raises ``FedgateError``.

        Safe retries: when a call times out (``DEADLINE_EXCEEDED``), reaches no gateway
        (``UNAVAILABLE`` without a gateway's reason) or is told ``IN_PROGRESS``, the same
        signed envelope is sent again, up to ``attempts`` calls of ``timeout`` each: the
        gateway (this instance or another sharing its state) answers it with the first
        attempt's recorded outcome, or ``IN_PROGRESS`` (retried after its delay), and never
        runs it twice. The last attempt's error is raised.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        envelope = self.sign(request) if isinstance(request, request_pb2.Request) else request
        submit = gateway_service_pb2.SubmitRequest(envelope=envelope)
        for attempt in range(1, attempts + 1):
            try:
                reply = await self._stub.Submit(submit, timeout=timeout)
                break
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if attempt == attempts or error.reason not in _RETRYABLE:
                    raise error from exc
                await asyncio.sleep(_retry_pause(error, attempt))
        if reply.HasField("ticket"):
            return Submitted(answer=None, ticket=reply.ticket)
        return Submitted(answer=self._verify(reply.response, envelope), ticket=None)

    async def fan_out(
        self,
        request: request_pb2.Request,
        *,
        timeout: float = 15.0,
        attempts: int = SUBMIT_ATTEMPTS,
    ) -> AsyncIterator[FanOutItem]:
        """Send one request to the members of its ``target_set``; yields each member's outcome
        as it arrives, every answer verified as for ``submit`` with that member as responder,
        and ends with a ``no_answer`` for every member the gateway never reported. Raises
        ``FedgateError`` when the gateway refuses the request as a whole, and
        ``VerificationError`` for an item naming a member outside the set or twice.

        Safe retries as for ``submit``: a call cut off (``DEADLINE_EXCEEDED``, no gateway
        reached) or told ``IN_PROGRESS`` sends the same signed envelope again, up to
        ``attempts`` calls; the gateway streams the first attempt's items again, and those
        already yielded are skipped (each MUST be byte for byte the one first received)."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        targets = resolve_targets(request, self.registry)
        envelope = self.sign(request)
        fan = gateway_service_pb2.FanOutRequest(envelope=envelope)
        seen: dict[str, bytes] = {}
        for attempt in range(1, attempts + 1):
            try:
                async for item in self._stub.FanOut(fan, timeout=timeout):
                    target = MemberId(item.target_agency)
                    data = item.SerializeToString()
                    if attempt > 1 and seen.get(target) == data:
                        continue  # the first attempt's item, streamed again for the retry
                    if target not in targets or target in seen:
                        raise VerificationError(
                            f"the gateway reported an outcome for {target!r}, which is not a "
                            "member of the fan-out still awaited"
                        )
                    seen[target] = data
                    yield self._fan_out_item(target, item, envelope, request.request_id)
                break
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if attempt == attempts or error.reason not in _RETRYABLE:
                    raise error from exc
                await asyncio.sleep(_retry_pause(error, attempt))
        for target in targets:
            if target not in seen:
                yield FanOutItem(
                    target=target, no_answer=f"no answer from {target} by the deadline"
                )

    def _fan_out_item(
        self,
        target: MemberId,
        item: gateway_service_pb2.FanOutResponse,
        envelope: envelope_pb2.SignedEnvelope,
        request_id: str,
    ) -> FanOutItem:
        kind = item.WhichOneof("outcome")
        if kind == "response":
            answer = verify_signed_response(
                item.response,
                request_body=envelope.body,
                request_id=request_id,
                target=target,
                registry=self.registry,
                gateway_id=self.gateway_id,
            )
            return FanOutItem(target=target, answer=answer)
        if kind == "ticket":
            return FanOutItem(target=target, ticket=item.ticket)
        if kind == "error":
            return FanOutItem(target=target, error=error_from_detail(item.error))
        if kind == "no_answer":
            return FanOutItem(target=target, no_answer=item.no_answer.detail)
        raise VerificationError(f"the gateway sent an empty outcome for {target}")

    async def ask(self, request: request_pb2.Request, *, timeout: float = 15.0) -> Answer:
        """Submit and insist on an immediate answer (raises if the agency queued it)."""
        submitted = await self.submit(request, timeout=timeout)
        if submitted.answer is None:
            raise FedgateError(f"{request.target_agency} queued the request for its staff")
        return submitted.answer

    async def cosign_receipt(
        self, receipt: envelope_pb2.AuditReceipt, *, wait_s: float = 2.0, timeout: float = 10.0
    ) -> envelope_pb2.AuditReceipt:
        """The receipt upgraded with a witness-cosigned checkpoint covering it and the
        consistency proof from its own checkpoint (``AuditService.GetCosignedCheckpoint``; the
        gateway waits up to ``wait_s``, at most 5 s, for its witnesses), verified against the
        registry's witness policy (``fedgate.cosigned.verify_cosigned_receipt``).

        Receipts come back from the gateway before the witnesses cosign (they work in the
        background, so answers never wait for them); a police system that must hold
        witnessed proof upgrades the receipts it keeps. Raises ``AuditUnavailable`` when the
        witnesses have not cosigned in time (ask again), ``VerificationError`` when the
        upgrade does not verify. With several instances, the one whose shard holds the receipt
        answers (``NotFound`` when none of them does).
        """
        request = audit_service_pb2.GetCosignedCheckpointRequest(
            tree_size=receipt.tree_size, wait_ms=int(wait_s * 1000)
        )
        stubs = self._audit_stubs()
        reply: audit_service_pb2.GetCosignedCheckpointResponse | None = None
        unavailable: FedgateError | None = None
        for stub in stubs:
            try:
                found = await stub.GetCosignedCheckpoint(request, timeout=timeout)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if len(stubs) == 1:
                    raise error from exc
                if error.reason == "AUDIT_UNAVAILABLE":
                    unavailable = error  # perhaps the shard's own witnesses are slow
                continue  # down, or another shard shorter than this tree size: ask the next
            if len(stubs) == 1 or found.checkpoint.split("\n", 1)[0] == receipt.log_origin:
                reply = found
                break
        if reply is None:
            if unavailable is not None:
                raise unavailable
            raise NotFound(
                f"no gateway instance at {', '.join(self.endpoints)} serves the shard "
                f"{receipt.log_origin!r} of this receipt"
            )
        upgraded = envelope_pb2.AuditReceipt()
        upgraded.CopyFrom(receipt)
        upgraded.cosigned_checkpoint = reply.checkpoint
        upgraded.cosigned_consistency_proof[:] = list(reply.consistency_proof)
        verify_cosigned_receipt(upgraded, self.registry)
        return upgraded

    async def get_ticket(
        self, ticket_id: str, *, timeout: float = 10.0
    ) -> tuple[ticket_pb2.Ticket, Answer | None]:
        """A ticket's state, and the verified answer once there is one."""
        try:
            reply = await self._stub.GetTicket(
                gateway_service_pb2.GetTicketRequest(ticket_id=ticket_id), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        answer = self._verify_ticket_answer(reply.response) if reply.HasField("response") else None
        return reply.ticket, answer

    async def watch_ticket(
        self, ticket_id: str
    ) -> AsyncIterator[tuple[ticket_pb2.Ticket, Answer | None]]:
        """Follow a ticket until it is answered or expires."""
        call = self._stub.WatchTicket(gateway_service_pb2.WatchTicketRequest(ticket_id=ticket_id))
        try:
            async for update in call:
                answer = (
                    self._verify_ticket_answer(update.response)
                    if update.HasField("response")
                    else None
                )
                yield update.ticket, answer
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    async def get_outcome(
        self, request_id: str, *, request_body: bytes | None = None, timeout: float = 10.0
    ) -> tuple[gateway_service_pb2.GetOutcomeResponse, Answer | None]:
        """The gateway's stored outcome of one of this member's requests, and the verified
        answer when there is one (checked against ``request_body``, else the copy this client
        remembers). Raises ``FedgateError`` (``NotFound`` for an id the gateway does not hold
        for this member, ``VerificationError`` when there is no copy of the request)."""
        try:
            reply = await self._stub.GetOutcome(
                gateway_service_pb2.GetOutcomeRequest(request_id=request_id), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        if not reply.HasField("response"):
            return reply, None
        if request_body is not None:
            self.remember(request_body)
        return reply, self._verify_ticket_answer(reply.response)

    async def list_appeals(
        self,
        *,
        appeal_id: str = "",
        state: appeal_pb2.AppealState.ValueType = appeal_pb2.APPEAL_STATE_UNSPECIFIED,
        overdue_only: bool = False,
        timeout: float = 10.0,
    ) -> list[appeal_pb2.AppealRecord]:
        """The appeals this member may see (police: against its orders and those of the members
        below it; a bank or carrier: those it filed), oldest first. Raises ``FedgateError``."""
        try:
            reply = await self._stub.ListAppeals(
                appeal_pb2.ListAppealsRequest(
                    appeal_id=appeal_id, state=state, overdue_only=overdue_only
                ),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return list(reply.appeals)

    def _verify_ticket_answer(self, signed: envelope_pb2.SignedResponse) -> Answer:
        response = decode_response(signed.response.body)
        sent = self._sent.get(response.request_id)
        if sent is None:
            raise VerificationError(
                f"no record of sending request {response.request_id}: cannot check its answer"
                " (fetch tickets from the process that submitted them)"
            )
        return verify_signed_response(
            signed,
            request_body=sent[0],
            request_id=response.request_id,
            target=sent[1],
            registry=self.registry,
            gateway_id=self.gateway_id,
        )

    def _verify(
        self, signed: envelope_pb2.SignedResponse, envelope: envelope_pb2.SignedEnvelope
    ) -> Answer:
        request = decode_request(envelope.body)
        is_report = request.WhichOneof("action") in GATEWAY_ANSWERED
        return verify_signed_response(
            signed,
            request_body=envelope.body,
            request_id=request.request_id,
            target=request.target_agency,
            registry=self.registry,
            gateway_id=self.gateway_id,
            responder=self.gateway_id if is_report else None,
        )

    async def record_event(
        self,
        *,
        kind: str,
        actor: str,
        at: datetime,
        detail: Sequence[tuple[str, str]] = (),
        timeout: float = 5.0,
    ) -> envelope_pb2.AuditReceipt:
        """Sign an audited event of this member (a console login, a staff answer) and append it
        to the gateway's log; returns the receipt once its inclusion proof has been checked
        against the log's signed checkpoint. Raises ``FedgateError``."""
        event = event_service_pb2.AuditEvent(
            kind=kind,
            actor=actor,
            member=self.member_id,
            detail=[event_service_pb2.EventDetail(key=k, value=v) for k, v in detail],
        )
        event.at.FromDatetime(at)
        envelope = sign_envelope(event.SerializeToString(), self._signer, Domain.EVENT)
        try:
            reply = await self._events.RecordEvent(
                event_service_pb2.RecordEventRequest(event=envelope), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        receipt = reply.receipt
        _, gateway_key = self.registry.signing_key(
            KeyId(self.registry.member(self.gateway_id).signing_keys[-1].key_id),
            at=datetime.now(UTC),
        )
        _verify_receipt(receipt, gateway_key)
        return receipt

    async def risk_checkpoint(self, *, timeout: float = 5.0) -> str:
        """The risk list's latest checkpoint note, with the witness cosignatures gathered so
        far (check it with ``fedgate.risklist``). Raises ``FedgateError``."""
        try:
            reply = await self._risklist.GetRiskCheckpoint(
                risklist_pb2.GetRiskCheckpointRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return reply.checkpoint

    async def follow_risklist(
        self, *, from_index: int = 0, max_batch: int = 0
    ) -> AsyncIterator[risklist_pb2.FollowResponse]:
        """The risk list's changes from ``from_index`` on, batch by batch, as the gateway sends
        them (verify each with ``fedgate.risklist.verify_batch``); the stream goes on until
        the caller stops. Raises ``FedgateError``."""
        call = self._risklist.Follow(
            risklist_pb2.FollowRequest(from_index=from_index, max_batch=max_batch)
        )
        try:
            async for batch in call:
                yield batch
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def alerts(
        self, *, kinds: Sequence[str] = (), after: int = 0, idle_s: float | None = None
    ) -> AsyncIterator[alert_service_pb2.SubscribeAlertsResponse]:
        """The reports addressed to this member after sequence ``after`` (``kinds``: only these
        actions), as the gateway streams them; with ``idle_s``, the stream ends once nothing
        has come for that long. The reports are yielded as received: check their signatures.
        Raises ``FedgateError``."""
        call = self._alerts.SubscribeAlerts(
            alert_service_pb2.SubscribeAlertsRequest(kinds=list(kinds), after_sequence=after)
        )
        try:
            while True:
                try:
                    alert = await asyncio.wait_for(call.read(), idle_s)
                except TimeoutError:
                    return
                if alert is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                assert isinstance(alert, alert_service_pb2.SubscribeAlertsResponse)
                yield alert
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    def remember(self, request_body: bytes) -> None:
        """Register a request sent elsewhere so its ticket answers can be verified here."""
        request = decode_request(request_body)
        self._sent[request.request_id] = (request_body, request.target_agency)


def _field_for(action: Message) -> str:
    name = type(action).DESCRIPTOR.name
    matches = [
        f.name
        for f in request_pb2.Request.DESCRIPTOR.oneofs_by_name["action"].fields
        if f.message_type is not None and f.message_type.name == name
    ]
    if len(matches) != 1:
        raise FedgateError(f"cannot tell which action a {name} is for: pass action_name")
    return matches[0]
