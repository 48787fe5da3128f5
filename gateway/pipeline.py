"""The gateway's request pipeline: twelve stages, in DESIGN.md's order, each failing closed.

     1 transport      peer member from the TLS certificate, checked against the registry
     2 decode         size limit, well-formed SubmitRequest and Request, header fields present
     3 signature      key id → registry; key owned by the peer and valid at issued-at;
                      signature over the bytes as received; requesting_agency is the peer
     4 freshness      issued-at within the skew; request id and nonce never seen (persistent)
     5 validation     every field (BadRequest violations name them)
     6 authorization  role granted to the member in the registry; policy; business rules
     7 quotas         per officer and per member
     8 audit request  the request leg, durable before anything leaves the gateway
     9 route          to the target's node (or, for agency reports, the alert stream)
    10 response check signed by the target with a key valid now, bound to this request
    11 audit response the response leg, durable before the answer is returned
    12 countersign    the gateway's countersignature and the audit receipt

Contract:

- A refusal at stages 1–7 MUST be logged as a request leg with decision ``refused`` and rule
  ``"<REASON>: <message>"`` before the error is returned; a failure at stages 9–10 MUST be
  logged as a response leg (``unavailable`` or ``node_fault``) first. If that logging fails,
  the caller gets ``AuditUnavailable`` instead.
- The gateway MUST NOT forward a request whose request leg is not durable, and MUST NOT return
  an answer whose response leg is not durable: a failing log means ``AuditUnavailable`` and
  nothing forwarded or returned.
- Once the request leg is durable the exchange MUST run to its end (answer checked and logged,
  or its absence logged) even if the caller cancels: a node may have executed an order.
- Errors are ``FedgateError`` subclasses; the service maps them with ``fedgate.status``.

Agency reports (target: a police member) stop at stage 9: the gateway acknowledges them itself
and streams them to the police member (``gateway.alerts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry import trace

from fedgate import merkle
from fedgate.actions import ACTIONS, ORDER_ACTIONS, REPORT_ACTIONS, role_name
from fedgate.audit_entry import AuditEntry, RequestLeg, ResponseLeg, encode_entry
from fedgate.envelope import (
    MAX_BODY_BYTES,
    Domain,
    Signer,
    countersign,
    decode_request,
    request_hash,
    sign_envelope,
    verify_envelope,
)
from fedgate.errors import (
    AgencyFault,
    AgencyUnavailable,
    AuditUnavailable,
    DecodeError,
    FedgateError,
    FieldViolation,
    InvalidArgument,
    PeerMismatch,
    PolicyDenied,
)
from fedgate.registry import Member, Registry
from fedgate.types import KeyId, MemberId
from fedgate.v1 import (
    agency_service_pb2,
    envelope_pb2,
    gateway_service_pb2,
    report_pb2,
    request_pb2,
)
from gateway.alerts import Alert, AlertHub
from gateway.audit.log import AuditLog, Receipt
from gateway.policy import PolicyDecider, PolicyRequest
from gateway.quotas import Quotas
from gateway.replay import ReplayCache
from gateway.routing import NodeRouter, check_response
from gateway.rules import BusinessRules
from gateway.telemetry import ATTR_ACTION, ATTR_PEER, ATTR_TARGET, GatewayTelemetry
from gateway.tickets import PendingRequest, Tickets
from gateway.validation import subjects_of, validate_request

__all__ = ["PeerSource", "Pipeline"]

_log = logging.getLogger(__name__)

PeerSource = Callable[[], tuple[MemberId, bytes]]
"""Returns the TLS peer's member id and certificate (DER); raises ``AuthenticationError``."""

_STATUS_NAMES: dict[int, str] = {
    request_pb2.RESPONSE_STATUS_OK: "ok",
    request_pb2.RESPONSE_STATUS_REFUSED: "refused",
    request_pb2.RESPONSE_STATUS_NOT_FOUND: "not_found",
    request_pb2.RESPONSE_STATUS_PENDING: "pending",
    request_pb2.RESPONSE_STATUS_EXPIRED: "expired",
    request_pb2.RESPONSE_STATUS_INVALID: "invalid",
}
_NO_RECEIPT = envelope_pb2.AuditReceipt()
_KEEP_ENVELOPE_LIMIT = MAX_BODY_BYTES + 4096
"""Envelopes larger than this are refused at decode and not copied into the log."""


@dataclass(slots=True)
class _Exchange:
    """What the pipeline has learned about one request so far."""

    received_at: datetime
    stage: str = "transport"
    peer: str = ""
    cert_sha256: str = ""
    member: Member | None = None
    envelope_bytes: bytes = b""
    envelope: envelope_pb2.SignedEnvelope | None = None
    request: request_pb2.Request | None = None
    action: str = ""
    rule: str = ""
    request_entry: RequestLeg | None = None
    request_receipt: Receipt | None = None
    request_receipt_proto: envelope_pb2.AuditReceipt | None = None

    def request_leg(self, *, decision: str, rule: str) -> RequestLeg:
        r = self.request
        return RequestLeg(
            envelope=self.envelope_bytes,
            peer=self.peer,
            peer_cert_sha256=self.cert_sha256,
            received_at=self.received_at,
            decision=decision,
            rule=rule,
            request_id=r.request_id if r is not None else "",
            requesting_agency=r.requesting_agency if r is not None else "",
            officer_id=r.officer.id if r is not None else "",
            case_number=r.case.case_number if r is not None else "",
            action=self.action,
            target_agency=r.target_agency if r is not None else "",
            subjects=subjects_of(r) if r is not None else (),
        )


class Pipeline:
    """Runs Submit through the twelve stages; also finishes answers that arrive by ticket."""

    def __init__(
        self,
        *,
        registry: Registry,
        decider: PolicyDecider,
        replay: ReplayCache,
        rules: BusinessRules,
        quotas: Quotas,
        audit: AuditLog,
        router: NodeRouter,
        tickets: Tickets,
        alerts: AlertHub,
        signer: Signer,
        gateway_id: MemberId,
        origin: str,
        clock_skew: timedelta,
        telemetry: GatewayTelemetry,
        keep_response_bodies: bool = True,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.registry = registry
        self._decider = decider
        self._replay = replay
        self._rules = rules
        self._quotas = quotas
        self._audit = audit
        self._router = router
        self._tickets = tickets
        self._alerts = alerts
        self._signer = signer
        self._gateway_id = gateway_id
        self._origin = origin
        self._skew = clock_skew
        self._telemetry = telemetry
        self._keep_bodies = keep_response_bodies
        self._now = now
        tickets.bind(self)

    # -- the Submit path ------------------------------------------------------------------

    async def submit(
        self, raw: bytes, *, peer: PeerSource, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        """Run one serialized ``SubmitRequest`` through the pipeline. Raises ``FedgateError``."""
        x = _Exchange(received_at=self._now())
        started = time.perf_counter()
        outcome = "ok"
        with self._telemetry.span("gateway.Submit", kind=trace.SpanKind.SERVER) as span:
            try:
                reply = await self._run(x, raw, peer, remaining_s, span)
                if reply.HasField("ticket"):
                    outcome = "ticket"
                return reply
            except FedgateError as error:
                outcome = error.reason
                span.set_status(trace.StatusCode.ERROR, error.reason)
                raise
            finally:
                self._telemetry.record_request(
                    time.perf_counter() - started,
                    action=x.action if x.action in ACTIONS else "unknown",
                    target=self._metric_target(x),
                    outcome=outcome,
                )

    async def _run(
        self,
        x: _Exchange,
        raw: bytes,
        peer: PeerSource,
        remaining_s: float | None,
        span: trace.Span,
    ) -> gateway_service_pb2.SubmitResponse:
        try:
            with self._stage(x, "transport"):
                x.member = self.authenticate(peer, x)
                span.set_attribute(ATTR_PEER, x.peer)
            with self._stage(x, "decode"):
                self._decode(x, raw)
            with self._stage(x, "signature"):
                self._verify_signature(x)
            with self._stage(x, "freshness"):
                await self._check_freshness(x)
            with self._stage(x, "validation"):
                validate_request(self._req(x), now=x.received_at)
                span.set_attribute(ATTR_ACTION, x.action)
                span.set_attribute(ATTR_TARGET, self._req(x).target_agency)
            with self._stage(x, "authorization"):
                self._authorize(x)
            with self._stage(x, "quotas"):
                self._check_quotas(x)
        except FedgateError as error:
            raise await self._refuse(x, error) from None
        except Exception as exc:  # a bug must still fail closed, and be logged as a refusal
            _log.exception("unexpected error at pipeline stage %s", x.stage)
            internal = FedgateError(f"internal error at stage {x.stage}")
            raise await self._refuse(x, internal) from exc
        with self._stage(x, "audit_request"):
            x.request_entry = x.request_leg(decision="allowed", rule=x.rule)
            x.request_receipt = await self._append(x.request_entry, "request")
        # From here on the exchange runs to its end even if the caller goes away: a node that
        # executed an order must have its answer (or its silence) in the log.
        rest = asyncio.ensure_future(self._after_request_leg(x, remaining_s))
        rest.add_done_callback(_retrieve)
        return await asyncio.shield(rest)

    async def _after_request_leg(
        self, x: _Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        if x.action in REPORT_ACTIONS:
            return await self._deliver_report(x)
        return await self._forward(x, remaining_s)

    @contextmanager
    def _stage(self, x: _Exchange, name: str) -> Iterator[None]:
        x.stage = name
        with self._telemetry.stage(name):
            yield

    @staticmethod
    def _req(x: _Exchange) -> request_pb2.Request:
        assert x.request is not None, "stage order: the request is decoded at stage 2"
        return x.request

    def _metric_target(self, x: _Exchange) -> str:
        target = x.request.target_agency if x.request is not None else ""
        return target if target and self.registry.find(target) is not None else "unknown"

    # stage 1
    def authenticate(self, peer: PeerSource, x: _Exchange | None = None) -> Member:
        """The calling member from its TLS certificate, if the registry lists that certificate
        and the member is in good standing; raises ``AuthenticationError``/``MemberRefused``."""
        member_id, cert_der = peer()
        if x is not None:
            x.peer = member_id
            x.cert_sha256 = hashlib.sha256(cert_der).hexdigest()
        return self.registry.check_certificate(member_id, cert_der)

    # stage 2
    def _decode(self, x: _Exchange, raw: bytes) -> None:
        try:
            submit = gateway_service_pb2.SubmitRequest.FromString(raw)
        except ProtobufDecodeError as exc:
            # Keep what arrived (bounded) so the refusal can be examined.
            x.envelope_bytes = raw if len(raw) <= _KEEP_ENVELOPE_LIMIT else b""
            raise DecodeError("the message is not a well-formed SubmitRequest") from exc
        if not submit.HasField("envelope"):
            raise InvalidArgument.for_fields(
                [FieldViolation("envelope", "required: the signed request")]
            )
        x.envelope = submit.envelope
        size = len(submit.envelope.body)
        if size > MAX_BODY_BYTES:
            digest = hashlib.sha256(submit.envelope.body).hexdigest()
            raise DecodeError(
                f"Request body is {size} bytes; the limit is {MAX_BODY_BYTES} "
                f"(body sha256 {digest}, not kept in the log)"
            )
        x.envelope_bytes = submit.envelope.SerializeToString()
        x.request = decode_request(submit.envelope.body)
        action = x.request.WhichOneof("action")
        x.action = action or ""
        missing = [
            FieldViolation(name, "required")
            for name, present in (
                ("request_id", bool(x.request.request_id)),
                ("issued_at", x.request.HasField("issued_at")),
                ("nonce", bool(x.request.nonce)),
                ("action", action is not None),
            )
            if not present
        ]
        if missing:
            raise InvalidArgument.for_fields(missing)

    # stage 3
    def _verify_signature(self, x: _Exchange) -> None:
        request, envelope = self._req(x), x.envelope
        assert envelope is not None
        issued_at = request.issued_at.ToDatetime(tzinfo=UTC)
        owner, key = self.registry.signing_key(KeyId(envelope.key_id), at=issued_at)
        if owner.id != x.peer:
            raise PeerMismatch(
                f"the request is signed with a key of {owner.id}, but the TLS peer is {x.peer}"
            )
        verify_envelope(envelope, key, Domain.REQUEST)
        if request.requesting_agency != x.peer:
            raise PeerMismatch(
                f"requesting_agency is {request.requesting_agency!r}, but the request was "
                f"signed and sent by {x.peer}"
            )

    # stage 4
    async def _check_freshness(self, x: _Exchange) -> None:
        request = self._req(x)
        issued_at = request.issued_at.ToDatetime(tzinfo=UTC)
        self._replay.check_freshness(issued_at, now=x.received_at, skew=self._skew)
        # The cache fsyncs before it returns, off the event loop, one job per batch of requests.
        await self._replay.remember(request.request_id, request.nonce, issued_at, now=x.received_at)

    # stage 6
    def _authorize(self, x: _Exchange) -> None:
        request, member = self._req(x), x.member
        assert member is not None
        role = role_name(request.officer.role)
        if role not in member.roles:
            raise PolicyDenied(f"role {role} is not granted to member {member.id} in the registry")
        target = self.registry.find(request.target_agency)
        decision = self._decider.decide(
            PolicyRequest(
                role=role,
                member=member.id,
                member_kind=member.kind.value,
                action=x.action,
                target=MemberId(request.target_agency),
                target_kind=target.kind.value if target is not None else "",
            )
        )
        if not decision.allowed:
            raise PolicyDenied(
                f"{role} at {member.id} may not {x.action} at {request.target_agency}: "
                f"{decision.explanation}"
            )
        self.registry.member(request.target_agency)  # the target must be in good standing
        self._rules.check(request, action=x.action, now=x.received_at)
        x.rule = ", ".join(decision.rule) if decision.rule else decision.explanation

    # stage 7
    def _check_quotas(self, x: _Exchange) -> None:
        request = self._req(x)
        self._quotas.check(
            member=x.peer, officer_id=request.officer.id, action=x.action, urgency=request.urgency
        )

    async def _refuse(self, x: _Exchange, error: FedgateError) -> FedgateError:
        """Log the refusal as a request leg; returns the error to raise (``AuditUnavailable``
        if even that cannot be logged)."""
        self._telemetry.record_refusal(reason=error.reason, stage=x.stage)
        _log.info(
            "refused at %s: %s",
            x.stage,
            error.reason,
            extra={"fields": {"peer": x.peer, "reason": error.reason, "stage": x.stage}},
        )
        leg = x.request_leg(decision="refused", rule=f"{error.reason}: {error.message}")
        try:
            await self._append(leg, "request")
        except AuditUnavailable as exc:
            return exc
        return error

    # stage 9
    async def _forward(
        self, x: _Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        request, receipt = self._req(x), x.request_receipt
        assert receipt is not None
        assert x.envelope is not None
        target = MemberId(request.target_agency)
        pending = PendingRequest(
            request_id=request.request_id,
            requester=MemberId(x.peer),
            target=target,
            action=x.action,
            request_body=x.envelope.body,
            request_leaf_index=receipt.index,
            request_receipt=_NO_RECEIPT,  # made only if the request is queued (see below)
            deadline=request.answer_deadline.ToDatetime(tzinfo=UTC),
        )
        handle = agency_service_pb2.HandleRequest(
            envelope=x.envelope, log_origin=self._origin, leaf_index=receipt.index
        )
        try:
            with self._stage(x, "route"):
                reply = await self._router.handle(
                    target,
                    handle,
                    action=x.action,
                    timeout=self._router.timeout_for(remaining_s),
                    metadata=self._telemetry.outgoing_metadata(),
                )
                if reply.WhichOneof("outcome") is None:
                    raise AgencyFault(f"{target} sent neither an answer nor a queue receipt")
        except AgencyUnavailable as error:
            raise await self._no_answer(pending, "unavailable", error, x.stage) from None
        except AgencyFault as error:
            raise await self._no_answer(pending, "node_fault", error, x.stage) from None
        if reply.HasField("queued"):
            return await self._open_ticket(x, pending, reply.queued)
        signed, _ = await self._finish(pending, reply.response, responder=target)
        return gateway_service_pb2.SubmitResponse(response=signed)

    async def _open_ticket(
        self, x: _Exchange, pending: PendingRequest, queued: agency_service_pb2.Queued
    ) -> gateway_service_pb2.SubmitResponse:
        deadline = (
            queued.deadline.ToDatetime(tzinfo=UTC)
            if queued.HasField("deadline")
            else pending.deadline
        )
        pending = replace(pending, deadline=deadline, request_receipt=self._request_receipt(x))
        with self._stage(x, "audit_response"):
            leg = ResponseLeg(
                request_id=pending.request_id,
                request_leaf_index=pending.request_leaf_index,
                responder=pending.target,
                received_at=self._now(),
                status="pending",
                response_hash=b"",
                responder_signature=b"",
                detail=f"queued for staff; due {pending.deadline.isoformat(timespec='seconds')}",
            )
            await self._append(leg, "response")
        ticket = self._tickets.open(pending)
        return gateway_service_pb2.SubmitResponse(ticket=ticket)

    async def _no_answer(
        self, pending: PendingRequest, status: str, error: FedgateError, stage: str
    ) -> FedgateError:
        self._telemetry.record_refusal(reason=error.reason, stage=stage)
        leg = ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=pending.target,
            received_at=self._now(),
            status=status,
            response_hash=b"",
            responder_signature=b"",
            detail=f"{error.reason}: {error.message}",
        )
        try:
            await self._append(leg, "response")
        except AuditUnavailable as exc:
            return exc
        return error

    # stages 10–12, also for answers fetched by ticket
    async def finish(
        self, pending: PendingRequest, answer: envelope_pb2.SignedEnvelope
    ) -> tuple[envelope_pb2.SignedResponse, str]:
        """``AnswerFinisher.finish`` for tickets."""
        with self._telemetry.span("gateway.TicketAnswer", attributes={ATTR_TARGET: pending.target}):
            return await self._finish(pending, answer, responder=pending.target)

    async def record_expiry(self, pending: PendingRequest, *, detail: str) -> None:
        """``AnswerFinisher.record_expiry`` for tickets."""
        leg = ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=pending.target,
            received_at=self._now(),
            status="expired",
            response_hash=b"",
            responder_signature=b"",
            detail=detail,
        )
        await self._append(leg, "response")

    async def _finish(
        self,
        pending: PendingRequest,
        answer: envelope_pb2.SignedEnvelope,
        *,
        responder: MemberId,
    ) -> tuple[envelope_pb2.SignedResponse, str]:
        received_at = self._now()
        try:
            with self._telemetry.stage("response_check"):
                response = check_response(
                    answer,
                    registry=self.registry,
                    request_body=pending.request_body,
                    request_id=pending.request_id,
                    target=responder,
                    action=pending.action,
                    now=received_at,
                )
        except AgencyFault as error:
            self._telemetry.record_refusal(reason=error.reason, stage="response_check")
            leg = self._answer_leg(pending, answer, responder, received_at, "node_fault", error)
            await self._append(leg, "response")
            raise
        status = _STATUS_NAMES.get(response.status, "invalid")
        with self._telemetry.stage("audit_response"):
            leg = self._answer_leg(pending, answer, responder, received_at, status, response)
            receipt = await self._append(leg, "response")
        with self._telemetry.stage("countersign"):
            signed = envelope_pb2.SignedResponse(
                response=answer,
                countersignature=countersign(answer, self._signer, leaf_index=receipt.index),
                receipt=self._receipt_proto(receipt, leg, pending.request_leaf_index),
            )
        if pending.action in ORDER_ACTIONS and response.status == request_pb2.RESPONSE_STATUS_OK:
            # Durable (fsync) before the answer is returned: off the event loop. If it cannot be
            # written the caller gets AuditUnavailable: the gateway fails closed rather than let
            # a later order pass a limit this one counts towards.
            await asyncio.to_thread(
                self._rules.record_outcome,
                decode_request(pending.request_body),
                action=pending.action,
                status=response.status,
                now=received_at,
            )
        return signed, status

    def _answer_leg(
        self,
        pending: PendingRequest,
        answer: envelope_pb2.SignedEnvelope,
        responder: MemberId,
        received_at: datetime,
        status: str,
        why: request_pb2.Response | FedgateError,
    ) -> ResponseLeg:
        signature = answer.signature if len(answer.signature) == 64 else b""
        detail = why.detail if isinstance(why, request_pb2.Response) else f"{why.reason}: {why}"
        return ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=responder,
            received_at=received_at,
            status=status,
            response_hash=hashlib.sha256(answer.body).digest(),
            responder_signature=signature,
            responder_key_id=answer.key_id,
            detail=detail,
            response_envelope=answer.SerializeToString() if self._keep_bodies else b"",
        )

    # agency reports: the gateway acknowledges, logs, and streams them to the police member
    async def _deliver_report(self, x: _Exchange) -> gateway_service_pb2.SubmitResponse:
        request, receipt, envelope = self._req(x), x.request_receipt, x.envelope
        assert receipt is not None
        assert envelope is not None
        request_receipt = self._request_receipt(x)
        pending = PendingRequest(
            request_id=request.request_id,
            requester=MemberId(x.peer),
            target=MemberId(request.target_agency),
            action=x.action,
            request_body=envelope.body,
            request_leaf_index=receipt.index,
            request_receipt=request_receipt,
            deadline=request.answer_deadline.ToDatetime(tzinfo=UTC),
        )
        with self._stage(x, "route"):
            ack = request_pb2.Response(
                request_id=request.request_id,
                request_hash=request_hash(envelope.body),
                responder=self._gateway_id,
                status=request_pb2.RESPONSE_STATUS_OK,
                report_ack=report_pb2.ReportAck(reference=f"{self._origin}#{receipt.index}"),
            )
            ack.answered_at.FromDatetime(self._now())
            signed_ack = sign_envelope(ack.SerializeToString(), self._signer, Domain.RESPONSE)
        signed, _ = await self._finish(pending, signed_ack, responder=self._gateway_id)
        await self._alerts.publish(
            Alert(
                target=pending.target,
                source=pending.requester,
                kind=x.action,
                received_at=x.received_at,
                report=envelope,
                receipt=request_receipt,
            )
        )
        return gateway_service_pb2.SubmitResponse(response=signed)

    # -- the audit log ----------------------------------------------------------------------

    async def _append(self, entry: AuditEntry, leg: str) -> Receipt:
        """Append durably; any failure of the log is ``AuditUnavailable`` (fail closed)."""
        started = time.perf_counter()
        try:
            return await self._audit.append(entry)
        except AuditUnavailable:
            raise
        except Exception as exc:
            _log.exception("audit append of the %s leg failed", leg)
            raise AuditUnavailable(
                f"the audit log cannot record the {leg} leg, so the gateway refuses the work"
            ) from exc
        finally:
            self._telemetry.record_audit_append(time.perf_counter() - started, leg=leg)

    def _request_receipt(self, x: _Exchange) -> envelope_pb2.AuditReceipt:
        """The request leg's receipt on the wire, made on first need (tickets, alerts)."""
        if x.request_receipt_proto is None:
            assert x.request_receipt is not None
            assert x.request_entry is not None
            x.request_receipt_proto = self._receipt_proto(
                x.request_receipt, x.request_entry, x.request_receipt.index
            )
        return x.request_receipt_proto

    @staticmethod
    def _receipt_proto(
        receipt: Receipt, entry: AuditEntry, request_leaf_index: int
    ) -> envelope_pb2.AuditReceipt:
        proto = receipt.to_proto(request_leaf_index=request_leaf_index)
        if not proto.leaf_hash:
            proto.leaf_hash = merkle.leaf_hash(encode_entry(entry))
        return proto


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect the outcome of an exchange whose caller went away (no unretrieved errors)."""
    if not task.cancelled() and task.exception() is not None:
        _log.info("exchange finished after its caller left: %s", task.exception())
