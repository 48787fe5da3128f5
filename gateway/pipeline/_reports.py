"""Agency reports: the gateway acknowledges them itself, logs them and streams them on.

A report (target: a police member) stops at stage 9: ``Reports.deliver`` signs the gateway's
own acknowledgement, finishes it like any answer (response leg, countersignature) and then
publishes the report to the police member's alert stream (``gateway.alerts``).
"""

from __future__ import annotations

from fedgate.envelope import request_hash
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, report_pb2, request_pb2
from gateway.alerts import Alert, AlertHub
from gateway.pipeline._audit_legs import AuditLegs
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._forwarding import Forwarder
from gateway.telemetry import GatewayTelemetry

__all__ = ["Reports"]


class Reports:
    """Delivers agency reports to the police member they are for."""

    def __init__(
        self,
        *,
        forwarder: Forwarder,
        alerts: AlertHub,
        legs: AuditLegs,
        gateway_id: MemberId,
        origin: str,
        telemetry: GatewayTelemetry,
    ) -> None:
        self._forwarder = forwarder
        self._alerts = alerts
        self._legs = legs
        self._gateway_id = gateway_id
        self._origin = origin
        self._telemetry = telemetry

    async def deliver(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Acknowledge, log and publish the report in ``x`` (its request leg is durable)."""
        request, receipt, envelope = x.req(), x.request_receipt, x.envelope
        assert receipt is not None
        assert envelope is not None
        pending = self._legs.pending(x, target=MemberId(request.target_agency))
        with stage(x, self._telemetry, "route"):
            ack = request_pb2.Response(
                request_id=request.request_id,
                request_hash=request_hash(envelope.body),
                responder=self._gateway_id,
                status=request_pb2.RESPONSE_STATUS_OK,
                report_ack=report_pb2.ReportAck(reference=f"{self._origin}#{receipt.index}"),
            )
        signed = await self._forwarder.answer_itself(pending, ack)
        await self._alerts.publish(
            Alert(
                target=pending.target,
                source=pending.requester,
                kind=x.action,
                received_at=x.received_at,
                report=envelope,
                receipt=pending.request_receipt,
            )
        )
        return gateway_service_pb2.SubmitResponse(response=signed)
