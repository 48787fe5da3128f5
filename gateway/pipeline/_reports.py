"""Agency reports: the gateway acknowledges them itself, logs them and streams them on.

A report (target: a police member) stops at stage 9: ``Reports.deliver`` signs the gateway's
own acknowledgement, finishes it like any answer (response leg, countersignature) and then
publishes the report to the police member's alert stream (``gateway.alerts``).
"""

from __future__ import annotations

from fedgate.v1 import gateway_service_pb2, report_pb2, request_pb2
from gateway.alerts import Alert, Alerts
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._own import OwnAnswers

__all__ = ["Reports"]


class Reports:
    """Delivers agency reports to the police member they are for."""

    def __init__(self, own: OwnAnswers, alerts: Alerts) -> None:
        self._own = own
        self._alerts = alerts

    async def deliver(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Acknowledge, log and publish the report in ``x`` (its request leg is durable)."""
        own, envelope = self._own, x.envelope
        assert envelope is not None
        pending = own.pending(x)
        with stage(x, own.telemetry, "route"):
            ack = own.response(
                x,
                status=request_pb2.RESPONSE_STATUS_OK,
                report_ack=report_pb2.ReportAck(reference=own.reference(x)),
            )
        reply = await own.finish(pending, ack)
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
        return reply
