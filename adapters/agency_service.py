"""``AgencyService`` over gRPC: the gateway's calls into an ``AgencyNode``.

Every call must come from the gateway's registered certificate (``require_peer``); each
``Handle`` runs in a server span continuing the gateway's W3C trace context, is logged as one
JSON line with the subject's identifiers masked, and is timed in ``request_duration``. Errors
reach the caller only through ``fedgate.status``: ``abort_with`` here, the server's
``ErrorInterceptor`` for anything unexpected.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace

from adapters import telemetry
from adapters.staff import require_peer
from fedgate.envelope import decode_request
from fedgate.errors import FedgateError
from fedgate.status import abort_with
from fedgate.v1 import agency_service_pb2, agency_service_pb2_grpc, envelope_pb2, request_pb2

if TYPE_CHECKING:
    from adapters.node import AgencyNode

__all__ = ["AgencyServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


class AgencyServicer(agency_service_pb2_grpc.AgencyServiceServicer):
    """The gateway-facing service of one node."""

    def __init__(self, node: AgencyNode) -> None:
        self._node = node

    async def Handle(
        self, request: agency_service_pb2.HandleRequest, context: Context
    ) -> agency_service_pb2.HandleResponse:
        node = self._node
        started = time.perf_counter()
        outcome = "error"
        with node.span("AgencyService/Handle", context) as span:
            try:
                require_peer(context, node.registry, node.gateway_id)
                reply = await node.handle(
                    request.envelope, log_origin=request.log_origin, leaf_index=request.leaf_index
                )
                outcome = _outcome(reply)
                return reply
            except FedgateError as exc:
                outcome = exc.reason.lower()
                await abort_with(context, exc)
            # Anything else is a bug: the server's ErrorInterceptor maps it (INTERNAL, a trace
            # id, no internal text) and logs it; the outcome here stays "error".
            finally:
                _log_handled(node, request.envelope, outcome, started, span)

    async def GetResult(
        self, request: agency_service_pb2.GetResultRequest, context: Context
    ) -> agency_service_pb2.GetResultResponse:
        node = self._node
        with node.span("AgencyService/GetResult", context):
            try:
                require_peer(context, node.registry, node.gateway_id)
                return await node.get_result(request.request_id)
            except FedgateError as exc:
                await abort_with(context, exc)


def _outcome(reply: agency_service_pb2.HandleResponse) -> str:
    if reply.HasField("queued"):
        return "queued"
    status = request_pb2.Response.FromString(reply.response.body).status
    return request_pb2.ResponseStatus.Name(status).removeprefix("RESPONSE_STATUS_").lower()


def _log_handled(
    node: AgencyNode,
    envelope: envelope_pb2.SignedEnvelope,
    outcome: str,
    started: float,
    span: trace.Span,
) -> None:
    elapsed_s = time.perf_counter() - started
    fields: dict[str, object] = {"member": node.member_id, "outcome": outcome}
    try:
        request = decode_request(envelope.body)
        action = request.WhichOneof("action") or ""
        fields.update(
            request_id=request.request_id,
            action=action,
            requesting_agency=request.requesting_agency,
            officer=telemetry.mask(request.officer.id),
            subject=telemetry.mask(_subject(request, action)),
        )
        span.set_attribute(telemetry.ATTR_ACTION, action)
        span.set_attribute(telemetry.ATTR_REQUEST_ID, request.request_id)
        span.set_attribute(telemetry.ATTR_REQUESTING_AGENCY, request.requesting_agency)
    except FedgateError:
        action = ""
    span.set_attribute(telemetry.ATTR_OUTCOME, outcome)
    node.metrics.request_duration.record(
        elapsed_s, {telemetry.ATTR_ACTION: action, telemetry.ATTR_OUTCOME: outcome}
    )
    telemetry.log_event("request handled", duration_s=round(elapsed_s, 5), **fields)


def _subject(request: request_pb2.Request, action: str) -> str:
    if not action:
        return ""
    message = getattr(request, action)
    for name in ("account_number", "id_number", "phone_number", "sender", "subject"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value:
            return value
    return ""
