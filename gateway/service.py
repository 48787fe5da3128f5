"""``GatewayService``: the police-facing gRPC service, a thin shell over the pipeline.

Requests are taken as raw bytes (no deserializer in the method handlers) so that a malformed
message is refused by the pipeline's decode stage, with its reason and an audit entry, instead
of by gRPC before the application sees it. Every ``FedgateError`` leaves through
``fedgate.status.abort_with``; in streams, per-item failures are ``ErrorDetail``s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from fedgate.envelope import decode_request
from fedgate.errors import DecodeError, FedgateError
from fedgate.federation import MemberKind
from fedgate.status import abort_with, error_detail, internal_error, log_unexpected, trace_id_of
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import appeal_pb2, envelope_pb2, gateway_service_pb2
from gateway.pipeline import PeerSource, Pipeline
from gateway.tickets import Tickets

__all__ = ["MAX_BATCH", "SERVICE_NAME", "GatewayServicer"]

SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
MAX_BATCH = 64
_DEADLINE_MARGIN_S = (0.05, 0.25)
"""Time kept back from the caller's deadline (a fifth of it, within these bounds, in seconds) so
that a refusal, logged durably first, reaches the caller before it gives up even when the
machine is busy."""

_M = TypeVar("_M", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


def _parse(cls: type[_M], raw: bytes) -> _M:
    try:
        return cls.FromString(raw)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"the message is not a well-formed {cls.DESCRIPTOR.full_name}") from exc


_PEER_CACHE_SIZE = 1024
_peer_cache: dict[tuple[tuple[object, ...], tuple[object, ...]], tuple[MemberId, bytes]] = {}


def _peer_of(context: Context) -> tuple[MemberId, bytes]:
    """``peer_member_id``, remembered per (certificate, TLS version) as the auth context
    reports them: the answer depends on nothing else, and parsing the certificate on every
    call costs more than the rest of the transport stage."""
    auth = context.auth_context()
    key = (tuple(auth.get("x509_pem_cert", ())), tuple(auth.get("ssl_tls_version", ())))
    found = _peer_cache.get(key)
    if found is None:
        found = peer_member_id(context)
        if len(_peer_cache) >= _PEER_CACHE_SIZE:
            _peer_cache.clear()
        _peer_cache[key] = found
    return found


def _peer(context: Context) -> PeerSource:
    return lambda: _peer_of(context)


def _remaining(context: Context) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    low, high = _DEADLINE_MARGIN_S
    return max(0.0, remaining - min(high, max(low, remaining / 5)))


class GatewayServicer:
    """Submit, SubmitBatch, FanOut, GetTicket, WatchTicket, GetOutcome and ListAppeals over one
    ``Pipeline``."""

    def __init__(self, *, pipeline: Pipeline, tickets: Tickets) -> None:
        self._pipeline = pipeline
        self._tickets = tickets

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The method handlers, to add to a server with ``add_generic_rpc_handlers``."""
        ser: Callable[[Message], bytes] = lambda m: m.SerializeToString()  # noqa: E731
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Submit": grpc.unary_unary_rpc_method_handler(self.Submit, response_serializer=ser),
                "SubmitBatch": grpc.unary_stream_rpc_method_handler(
                    self.SubmitBatch, response_serializer=ser
                ),
                "FanOut": grpc.unary_stream_rpc_method_handler(
                    self.FanOut, response_serializer=ser
                ),
                "GetTicket": grpc.unary_unary_rpc_method_handler(
                    self.GetTicket, response_serializer=ser
                ),
                "WatchTicket": grpc.unary_stream_rpc_method_handler(
                    self.WatchTicket, response_serializer=ser
                ),
                "GetOutcome": grpc.unary_unary_rpc_method_handler(
                    self.GetOutcome, response_serializer=ser
                ),
                "ListAppeals": grpc.unary_unary_rpc_method_handler(
                    self.ListAppeals, response_serializer=ser
                ),
            },
        )

    async def Submit(self, raw: bytes, context: Context) -> gateway_service_pb2.SubmitResponse:
        try:
            return await self._pipeline.submit(
                raw, peer=_peer(context), remaining_s=_remaining(context)
            )
        except FedgateError as error:
            await abort_with(context, error)

    async def SubmitBatch(
        self, raw: bytes, context: Context
    ) -> AsyncIterator[gateway_service_pb2.SubmitBatchResponse]:
        try:
            envelopes = await self._pipeline.open_batch(
                raw, peer=_peer(context), max_envelopes=MAX_BATCH
            )
        except FedgateError as error:
            await abort_with(context, error)
        results: asyncio.Queue[gateway_service_pb2.SubmitBatchResponse] = asyncio.Queue()
        remaining = _remaining(context)

        async def one(envelope: envelope_pb2.SignedEnvelope) -> None:
            out = gateway_service_pb2.SubmitBatchResponse()
            try:
                decoded = decode_request(envelope.body)
                out.request_id, out.target_agency = decoded.request_id, decoded.target_agency
            except FedgateError:
                pass  # the pipeline refuses it below, with the reason
            try:
                reply = await self._pipeline.submit(
                    envelope, peer=_peer(context), remaining_s=remaining
                )
                if reply.HasField("ticket"):
                    out.ticket.CopyFrom(reply.ticket)
                else:
                    out.response.CopyFrom(reply.response)
            except FedgateError as error:
                out.error.CopyFrom(error_detail(error))
            except Exception:  # never leave the stream waiting for an item that died
                trace_id = trace_id_of()
                log_unexpected("SubmitBatch item", trace_id)
                out.error.CopyFrom(error_detail(internal_error(trace_id)))
            await results.put(out)

        tasks = [asyncio.create_task(one(e)) for e in envelopes]
        try:
            for _ in tasks:
                yield await results.get()
        finally:
            for task in tasks:
                task.cancel()

    async def FanOut(
        self, raw: bytes, context: Context
    ) -> AsyncIterator[gateway_service_pb2.FanOutResponse]:
        try:
            async for item in self._pipeline.fan_out(
                raw, peer=_peer(context), remaining_s=_remaining(context)
            ):
                yield item
        except FedgateError as error:
            await abort_with(context, error)

    async def GetTicket(
        self, raw: bytes, context: Context
    ) -> gateway_service_pb2.GetTicketResponse:
        try:
            member = self._pipeline.authenticate(_peer(context))
            request = _parse(gateway_service_pb2.GetTicketRequest, raw)
            ticket, signed = await self._tickets.get(request.ticket_id, caller=member.id)
        except FedgateError as error:
            await abort_with(context, error)
        reply = gateway_service_pb2.GetTicketResponse(ticket=ticket)
        if signed is not None:
            reply.response.CopyFrom(signed)
        return reply

    async def GetOutcome(
        self, raw: bytes, context: Context
    ) -> gateway_service_pb2.GetOutcomeResponse:
        try:
            member = self._pipeline.authenticate(_peer(context))
            request = _parse(gateway_service_pb2.GetOutcomeRequest, raw)
            return await self._pipeline.stored_outcome(request.request_id, caller=member.id)
        except FedgateError as error:
            await abort_with(context, error)

    async def ListAppeals(self, raw: bytes, context: Context) -> appeal_pb2.ListAppealsResponse:
        """The appeals the caller may see: a police member those against its orders and those
        of the members below it; a bank or carrier those it filed (``gateway.appeals``)."""
        try:
            member = self._pipeline.authenticate(_peer(context))
            request = _parse(appeal_pb2.ListAppealsRequest, raw)
            registry = self._pipeline.registry
            book = self._pipeline.appeals
            now = book.now()
            reply = appeal_pb2.ListAppealsResponse()
            for appeal in await book.appeals():
                mine = (
                    registry.is_same_or_above(member.id, appeal.ordering_agency)
                    if member.kind is MemberKind.POLICE
                    else appeal.filed_by == member.id
                )
                if not mine or (request.appeal_id and appeal.appeal_id != request.appeal_id):
                    continue
                if request.state and appeal.state != request.state:
                    continue
                if request.overdue_only and not appeal.overdue(now):
                    continue
                reply.appeals.append(appeal.record(now))
            return reply
        except FedgateError as error:
            await abort_with(context, error)

    async def WatchTicket(
        self, raw: bytes, context: Context
    ) -> AsyncIterator[gateway_service_pb2.WatchTicketResponse]:
        try:
            member = self._pipeline.authenticate(_peer(context))
            request = _parse(gateway_service_pb2.WatchTicketRequest, raw)
            async for ticket, signed in self._tickets.watch(request.ticket_id, caller=member.id):
                update = gateway_service_pb2.WatchTicketResponse(ticket=ticket)
                if signed is not None:
                    update.response.CopyFrom(signed)
                yield update
        except FedgateError as error:
            await abort_with(context, error)
