"""Risk list changes: the gateway answers them itself, after appending them to the list's log.

A risk list action (target: the gateway) stops at stage 9 like an agency report: the change is
built against the list as it stands and appended durably to the risk list log
(``gateway.risklist``); then the gateway signs its own answer (the change and its leaf index, or
why it was refused) and finishes it like any answer (response leg, countersignature, receipt).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from fedgate.envelope import request_hash
from fedgate.errors import FedgateError
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, request_pb2, risklist_pb2
from gateway.pipeline._audit_legs import AuditLegs
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._forwarding import Forwarder
from gateway.risklist import ChangeRefused, RiskListLog, build_change
from gateway.telemetry import GatewayTelemetry

__all__ = ["RiskListChanges"]


class RiskListChanges:
    """Applies risk list requests to the list's log and answers them."""

    def __init__(
        self,
        *,
        log: RiskListLog,
        forwarder: Forwarder,
        legs: AuditLegs,
        gateway_id: MemberId,
        telemetry: GatewayTelemetry,
        now: Callable[[], datetime],
    ) -> None:
        self._log = log
        self._forwarder = forwarder
        self._legs = legs
        self._gateway_id = gateway_id
        self._telemetry = telemetry
        self._now = now

    async def apply(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Append the change asked for in ``x`` (its request leg is durable) and answer."""
        request, receipt, envelope = x.req(), x.request_receipt, x.envelope
        assert receipt is not None
        assert envelope is not None
        pending = self._legs.pending(x, target=MemberId(request.target_agency))
        digest = request_hash(envelope.body)
        answer = request_pb2.Response(
            request_id=request.request_id,
            request_hash=digest,
            responder=self._gateway_id,
        )
        with stage(x, self._telemetry, "route"):
            try:
                index, change = await self._log.change(
                    partial(build_change, request, now=self._now(), request_hash=digest)
                )
            except ChangeRefused as refused:
                answer.status = refused.status
                answer.detail = refused.message
            except FedgateError as error:
                # The list's log could not take the change: nothing was listed. Say so in the
                # audit log (a response leg without an answer) and fail closed.
                raise await self._legs.no_answer(pending, "unavailable", error, x.stage) from None
            else:
                answer.status = request_pb2.RESPONSE_STATUS_OK
                answer.risk_list_change.CopyFrom(
                    risklist_pb2.RiskListChangeResult(
                        list_origin=self._log.origin, list_index=index, change=change
                    )
                )
        reply = await self._forwarder.answer_itself(pending, answer)
        return gateway_service_pb2.SubmitResponse(response=reply)
