"""What the gateway needs to answer an exchange itself: reports, approvals, risk list changes
and appeals stop at stage 9 and get the gateway's own signed answer, finished like any agency's
(checked, logged as the response leg, countersigned)."""

from __future__ import annotations

from typing import Any

from fedgate.envelope import request_hash
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, request_pb2
from gateway.pipeline._audit_legs import AuditLegs
from gateway.pipeline._exchange import Exchange
from gateway.pipeline._forwarding import Forwarder
from gateway.telemetry import GatewayTelemetry
from gateway.tickets import PendingRequest

__all__ = ["OwnAnswers"]


class OwnAnswers:
    """The parts every gateway-answered exchange shares; one per pipeline."""

    def __init__(
        self,
        *,
        forwarder: Forwarder,
        legs: AuditLegs,
        gateway_id: MemberId,
        origin: str,
        telemetry: GatewayTelemetry,
    ) -> None:
        self.legs = legs
        self.gateway_id = gateway_id
        self.telemetry = telemetry
        self._forwarder = forwarder
        self._origin = origin

    def pending(self, x: Exchange, target: MemberId | None = None) -> PendingRequest:
        """``x`` (its request leg durable) as a pending request to ``target`` (default: the
        request's target agency)."""
        return self.legs.pending(x, target=target or MemberId(x.req().target_agency))

    def reference(self, x: Exchange) -> str:
        """Where ``x``'s request leg is in the log: ``<origin>#<leaf index>``."""
        assert x.request_receipt is not None, "the request leg is durable before stage 9"
        return f"{self._origin}#{x.request_receipt.index}"

    def response(self, x: Exchange, **fields: Any) -> request_pb2.Response:
        """The gateway's answer to ``x``, bound to its signed request, with ``fields`` (status,
        detail, the result)."""
        assert x.envelope is not None, "the envelope is decoded at stage 2"
        return request_pb2.Response(
            request_id=x.req().request_id,
            request_hash=request_hash(x.envelope.body),
            responder=self.gateway_id,
            **fields,
        )

    async def finish(
        self, pending: PendingRequest, answer: request_pb2.Response
    ) -> gateway_service_pb2.SubmitResponse:
        """Stamp, sign, check, log and countersign ``answer`` (``Forwarder.answer_itself``)."""
        reply = gateway_service_pb2.SubmitResponse()
        await self._forwarder.answer_itself(pending, answer, into=reply.response)
        return reply
