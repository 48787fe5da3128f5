"""``StaffService``: the node's own stationed staff list, claim, answer and reject queries.

A call is accepted only when it is made with this agency's member certificate (the console and
``fedgate staff`` run with the agency's credentials) AND names, in the ``x-fedgate-staff``
metadata, a staff id listed in the node's configuration. Staff of another agency hold another
member's certificate and are refused; and a node's queue holds only its own requests.

Per-staff passwords come with the web console (a later issue); until then the staff id in the
metadata is trusted as far as the agency's certificate is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

import grpc

from adapters.answers import bind_response, check_result, check_staff_status, refusal
from adapters.queue import OPEN_STATES, Entry, RequestStore
from fedgate.errors import AuthenticationError, FedgateError, PermissionRefused
from fedgate.registry import Registry
from fedgate.status import abort_with
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, request_pb2, staff_service_pb2, staff_service_pb2_grpc

__all__ = ["STAFF_METADATA", "QueueHost", "StaffServicer", "answer_claimed", "require_peer"]

STAFF_METADATA = "x-fedgate-staff"
"""The call metadata key that carries the staff member's id."""

_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]


class QueueHost(Protocol):
    """What the staff service needs from the node that hosts the queue."""

    @property
    def member_id(self) -> MemberId: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def staff(self) -> frozenset[str]: ...

    @property
    def store(self) -> RequestStore: ...

    def now(self) -> datetime: ...

    def sign(self, response: request_pb2.Response) -> bytes:
        """Serialize and sign a bound response with the agency key."""
        ...

    async def expire_due(self) -> tuple[Entry, ...]: ...

    async def run_blocking(self, fn: Callable[[], _T]) -> _T: ...


def require_peer(context: Context, registry: Registry, expected: MemberId) -> None:
    """Refuse the call unless its TLS client certificate is ``expected``'s registered one.

    Raises ``AuthenticationError`` (no certificate, not TLS 1.3), ``PermissionRefused`` (another
    member) or ``MemberRefused`` (certificate not the registered one, member revoked).
    """
    member, cert_der = peer_member_id(context)
    if member != expected:
        raise PermissionRefused(f"{member} may not call this service: only {expected} may")
    registry.check_certificate(member, cert_der)


async def answer_claimed(
    host: QueueHost,
    request_id: str,
    staff_id: str,
    decide: Callable[[Entry], request_pb2.Response],
) -> Entry:
    """Answer a query ``staff_id`` holds: inside the store's answer transaction (after the claim
    is checked) ``decide(entry)`` gives the answer, which is checked against the action, bound to
    the request and signed with the agency key. The answered entry, its signed response set.

    Raises what ``RequestStore.answer`` raises (``NotFound``, ``RuleViolated``), and
    ``InvalidArgument`` for an answer that does not fit the action.
    """

    def sign(entry: Entry) -> bytes:
        answer = decide(entry)
        check_result(entry.action, answer)
        assert entry.answered_at is not None
        bound = bind_response(
            answer,
            request_id=entry.request_id,
            request_body=entry.request_envelope.body,
            responder=host.member_id,
            answered_at=entry.answered_at,
            answered_by=staff_id,
        )
        return host.sign(bound)

    now = host.now()
    return await host.run_blocking(lambda: host.store.answer(request_id, staff_id, sign, now))


class StaffServicer(staff_service_pb2_grpc.StaffServiceServicer):
    """The staff queue over gRPC; every error is mapped by ``fedgate.status.abort_with``."""

    def __init__(self, host: QueueHost) -> None:
        self._host = host

    def _staff_id(self, context: Context) -> str:
        require_peer(context, self._host.registry, self._host.member_id)
        values = [v for k, v in context.invocation_metadata() or () if k == STAFF_METADATA]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
            raise AuthenticationError(f"name the staff member in the {STAFF_METADATA} metadata")
        staff_id = values[0]
        if staff_id not in self._host.staff:
            raise PermissionRefused(f"{staff_id} is not stationed staff of {self._host.member_id}")
        return staff_id

    async def _call(self, context: Context, work: Callable[[str], Awaitable[_T]]) -> _T:
        """``work(staff_id)`` for an authorised staff member after expiring overdue items;
        any error aborts the call with its status."""
        try:
            staff_id = self._staff_id(context)
            await self._host.expire_due()
            return await work(staff_id)
        except FedgateError as exc:
            await abort_with(context, exc)
        # Anything else is a bug, mapped once by the server's ErrorInterceptor.

    async def ListQueue(
        self, request: staff_service_pb2.ListQueueRequest, context: Context
    ) -> staff_service_pb2.ListQueueResponse:
        async def work(_: str) -> staff_service_pb2.ListQueueResponse:
            states = (request.state,) if request.state else OPEN_STATES
            entries, token = await self._host.run_blocking(
                lambda: self._host.store.list(
                    states, page_size=request.page.page_size, page_token=request.page.page_token
                )
            )
            return staff_service_pb2.ListQueueResponse(
                items=[e.queue_item() for e in entries], next_page_token=token
            )

        return await self._call(context, work)

    async def ClaimQueueItem(
        self, request: staff_service_pb2.ClaimQueueItemRequest, context: Context
    ) -> staff_service_pb2.ClaimQueueItemResponse:
        async def work(staff_id: str) -> staff_service_pb2.ClaimQueueItemResponse:
            entry = await self._host.run_blocking(
                lambda: self._host.store.claim(request.request_id, staff_id)
            )
            return staff_service_pb2.ClaimQueueItemResponse(item=entry.queue_item())

        return await self._call(context, work)

    async def ReleaseQueueItem(
        self, request: staff_service_pb2.ReleaseQueueItemRequest, context: Context
    ) -> staff_service_pb2.ReleaseQueueItemResponse:
        async def work(staff_id: str) -> staff_service_pb2.ReleaseQueueItemResponse:
            entry = await self._host.run_blocking(
                lambda: self._host.store.release(request.request_id, staff_id)
            )
            return staff_service_pb2.ReleaseQueueItemResponse(item=entry.queue_item())

        return await self._call(context, work)

    async def AnswerQueueItem(
        self, request: staff_service_pb2.AnswerQueueItemRequest, context: Context
    ) -> staff_service_pb2.AnswerQueueItemResponse:
        async def work(staff_id: str) -> staff_service_pb2.AnswerQueueItemResponse:
            check_staff_status(request.answer)
            signed = await self._answer(request.request_id, staff_id, request.answer)
            return staff_service_pb2.AnswerQueueItemResponse(response=signed)

        return await self._call(context, work)

    async def RejectQueueItem(
        self, request: staff_service_pb2.RejectQueueItemRequest, context: Context
    ) -> staff_service_pb2.RejectQueueItemResponse:
        async def work(staff_id: str) -> staff_service_pb2.RejectQueueItemResponse:
            signed = await self._answer(request.request_id, staff_id, refusal(request.reason))
            return staff_service_pb2.RejectQueueItemResponse(response=signed)

        return await self._call(context, work)

    async def _answer(
        self, request_id: str, staff_id: str, answer: request_pb2.Response
    ) -> envelope_pb2.SignedEnvelope:
        entry = await answer_claimed(self._host, request_id, staff_id, lambda _: answer)
        assert entry.signed_response is not None
        return entry.signed_response
