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

from fedgate.errors import FedgateError
from fedgate.v1 import gateway_service_pb2, request_pb2, risklist_pb2
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._own import OwnAnswers
from gateway.risklist import ChangeRefused, RiskListLog, build_change

__all__ = ["RiskListChanges"]


class RiskListChanges:
    """Applies risk list requests to the list's log and answers them."""

    def __init__(self, own: OwnAnswers, log: RiskListLog, now: Callable[[], datetime]) -> None:
        self._own = own
        self._log = log
        self._now = now

    async def apply(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Append the change asked for in ``x`` (its request leg is durable) and answer."""
        own, request = self._own, x.req()
        pending = own.pending(x)
        answer = own.response(x)
        digest = answer.request_hash
        with stage(x, own.telemetry, "route"):
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
                raise await own.legs.no_answer(pending, "unavailable", error, x.stage) from None
            else:
                answer.status = request_pb2.RESPONSE_STATUS_OK
                answer.risk_list_change.CopyFrom(
                    risklist_pb2.RiskListChangeResult(
                        list_origin=self._log.origin, list_index=index, change=change
                    )
                )
        return await own.finish(pending, answer)
