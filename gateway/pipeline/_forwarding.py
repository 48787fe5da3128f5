"""Stages 9–12 of an exchange: forward to the target's node, check, log and countersign.

``Forwarder.forward`` sends an allowed request (its request leg already durable) to the target's
node; a node that cannot answer now queues it and the requester gets a ticket. ``finish`` checks
an answer (now or later, by ticket), logs its response leg and countersigns it. A node that is
unreachable or misbehaves is logged as a response leg before the error is returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from fedgate.actions import ORDER_ACTIONS
from fedgate.audit_entry import ResponseLeg
from fedgate.disclosure import hit_detail, hit_of
from fedgate.envelope import Domain, Signer, countersign, decode_request, sign_envelope
from fedgate.errors import AgencyFault, AgencyUnavailable
from fedgate.render import format_time
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from fedgate.v1 import agency_service_pb2, envelope_pb2, gateway_service_pb2, request_pb2
from gateway.pipeline._audit_legs import RECONCILED, AuditLegs
from gateway.pipeline._exchange import Exchange, stage
from gateway.routing import NodeRouter, check_response
from gateway.rules import BusinessRules
from gateway.telemetry import GatewayTelemetry
from gateway.tickets import PendingRequest, Tickets

__all__ = ["Forwarder"]

_STATUS_NAMES: dict[int, str] = {
    request_pb2.RESPONSE_STATUS_OK: "ok",
    request_pb2.RESPONSE_STATUS_REFUSED: "refused",
    request_pb2.RESPONSE_STATUS_NOT_FOUND: "not_found",
    request_pb2.RESPONSE_STATUS_PENDING: "pending",
    request_pb2.RESPONSE_STATUS_EXPIRED: "expired",
    request_pb2.RESPONSE_STATUS_INVALID: "invalid",
}


class Forwarder:
    """Stages 9–12 for requests to agency nodes, and 10–12 for answers fetched by ticket."""

    def __init__(
        self,
        *,
        trust: TrustHolder,
        router: NodeRouter,
        tickets: Tickets,
        rules: BusinessRules,
        legs: AuditLegs,
        signer: Signer,
        origin: str,
        telemetry: GatewayTelemetry,
        now: Callable[[], datetime],
    ) -> None:
        self._trust = trust
        self._router = router
        self._tickets = tickets
        self._rules = rules
        self._legs = legs
        self._signer = signer
        self._origin = origin
        self._telemetry = telemetry
        self._now = now

    async def forward(
        self, x: Exchange, remaining_s: float | None
    ) -> gateway_service_pb2.SubmitResponse:
        """Stage 9 onwards for ``x``, whose request leg is durable: the checked, logged and
        countersigned answer, or a ticket. Raises ``AgencyUnavailable``/``AgencyFault`` (logged
        as response legs first) or ``AuditUnavailable``."""
        request, receipt = x.req(), x.request_receipt
        assert receipt is not None
        assert x.envelope is not None
        target = MemberId(request.target_agency)
        # The request leg's receipt is made only if the request is queued (see below).
        pending = self._legs.pending(x, target=target, with_receipt=False)
        handle = agency_service_pb2.HandleRequest(
            envelope=x.envelope, log_origin=self._origin, leaf_index=receipt.index
        )
        try:
            with stage(x, self._telemetry, "route"):
                reply = await self._router.handle(
                    target,
                    handle,
                    action=x.action,
                    timeout=self._router.timeout_for(remaining_s),
                )
                if reply.WhichOneof("outcome") is None:
                    raise AgencyFault(f"{target} sent neither an answer nor a queue receipt")
                if reply.HasField("queued"):
                    deadline = _queued_deadline(target, reply.queued, pending.deadline)
        except AgencyUnavailable as error:
            raise await self._legs.no_answer(pending, "unavailable", error, x.stage) from None
        except AgencyFault as error:
            raise await self._legs.no_answer(pending, "node_fault", error, x.stage) from None
        if reply.HasField("queued"):
            return await self._open_ticket(x, replace(pending, deadline=deadline))
        # Countersigned straight into the reply: ``SubmitResponse(response=signed)`` would
        # copy the whole signed answer and its receipt once more.
        out = gateway_service_pb2.SubmitResponse()
        await self.finish(pending, reply.response, responder=target, into=out.response)
        return out

    def node_timeout(self, remaining_s: float | None) -> float:
        """How long a node is waited for, given the caller's remaining time."""
        return self._router.timeout_for(remaining_s)

    async def _open_ticket(
        self, x: Exchange, pending: PendingRequest
    ) -> gateway_service_pb2.SubmitResponse:
        pending = replace(pending, request_receipt=self._legs.request_receipt(x))
        with stage(x, self._telemetry, "audit_response"):
            leg = ResponseLeg(
                request_id=pending.request_id,
                request_leaf_index=pending.request_leaf_index,
                responder=pending.target,
                received_at=self._now(),
                status="pending",
                response_hash=b"",
                responder_signature=b"",
                detail=f"queued for staff; due {format_time(pending.deadline)}",
            )
            await self._legs.append(leg, "response")
        ticket = await self._tickets.open(pending)
        return gateway_service_pb2.SubmitResponse(ticket=ticket)

    async def answer_itself(
        self,
        pending: PendingRequest,
        answer: request_pb2.Response,
        *,
        into: envelope_pb2.SignedResponse | None = None,
    ) -> envelope_pb2.SignedResponse:
        """Finish an exchange the gateway answers itself (reports, approvals, risk list
        changes): ``answer`` is stamped now, signed with the gateway's key as its responder and
        finished like any agency's answer (checked, logged, countersigned; into ``into`` when
        given, as ``finish``)."""
        answer.answered_at.FromDatetime(self._now())
        signed = sign_envelope(answer.SerializeToString(), self._signer, Domain.RESPONSE)
        response, _ = await self.finish(
            pending, signed, responder=MemberId(answer.responder), into=into
        )
        return response

    async def finish(
        self,
        pending: PendingRequest,
        answer: envelope_pb2.SignedEnvelope,
        *,
        responder: MemberId,
        reconciled: bool = False,
        into: envelope_pb2.SignedResponse | None = None,
    ) -> tuple[envelope_pb2.SignedResponse, str]:
        """Stages 10–12: check ``answer`` from ``responder``, log it, countersign it; returns it
        (filled into ``into`` when given: a reply's field) with its audit status.
        ``reconciled`` marks the response leg as written by reconciliation. Raises
        ``AgencyFault`` (logged) or ``AuditUnavailable``."""
        received_at = self._now()
        try:
            with self._telemetry.stage("response_check"):
                response = check_response(
                    answer,
                    registry=self._trust.registry,
                    request_body=pending.request_body,
                    request_id=pending.request_id,
                    target=responder,
                    action=pending.action,
                    now=received_at,
                )
        except AgencyFault as error:
            self._telemetry.record_refusal(reason=error.reason, stage="response_check")
            leg = self._legs.answer_leg(
                pending, answer, responder, received_at, "node_fault", error, reconciled=reconciled
            )
            await self._legs.append(leg, "response")
            raise
        status = _STATUS_NAMES.get(response.status, "invalid")
        with self._telemetry.stage("audit_response"):
            leg = self._legs.answer_leg(
                pending, answer, responder, received_at, status, response, reconciled=reconciled
            )
            hit = hit_of(response)
            if hit is not None:  # a checked stage-1 answer: the hit a stage 2 may cite
                prefix = RECONCILED if reconciled else ""
                leg = replace(leg, detail=prefix + hit_detail(hit))
            receipt = await self._legs.append(leg, "response")
        with self._telemetry.stage("countersign"):
            signed = envelope_pb2.SignedResponse() if into is None else into
            signed.response.CopyFrom(answer)
            signed.countersignature.CopyFrom(
                countersign(answer, self._signer, leaf_index=receipt.index)
            )
            signed.receipt.CopyFrom(
                self._legs.receipt_proto(receipt, leg, pending.request_leaf_index)
            )
        if pending.action in ORDER_ACTIONS:
            # Durable (fsync) before the answer is returned: off the event loop. If it cannot be
            # written the caller gets AuditUnavailable: the gateway fails closed rather than let
            # a later order pass a limit this one counts towards. Every answer goes there: an
            # executed order is recorded, and any answer releases a shared state's reservation.
            await asyncio.to_thread(
                self._rules.record_outcome,
                decode_request(pending.request_body),
                action=pending.action,
                status=response.status,
                now=received_at,
                repeat_of=_repeat_of(response),
            )
        return signed, status


def _repeat_of(response: request_pb2.Response) -> str:
    """The order in force an answer says this order repeated (nothing executed), else ''."""
    result = response.WhichOneof("result")
    if result in ("stop_payment", "freeze"):
        return str(getattr(response, result).repeat_of)
    return ""


def _queued_deadline(
    target: MemberId, queued: agency_service_pb2.Queued, default: datetime
) -> datetime:
    """The deadline a node queued a request with (``default`` if it gave none); raises
    ``AgencyFault`` for one that is not a valid time."""
    if not queued.HasField("deadline"):
        return default
    try:
        return queued.deadline.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise AgencyFault(f"{target} queued the request with an invalid deadline") from exc
