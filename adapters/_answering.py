"""Answering a forwarded request, at most once: the part of an agency node between a verified
envelope and a durable, signed answer (or a queue acknowledgement for staff).

Contract (the rest of the node's is in ``adapters.node``):

- A request id MUST be executed at most once: concurrent and repeated deliveries wait for the
  first and get the same signed answer bytes (or the same queue acknowledgement); the answer is
  durable (``adapters.queue``) before it is returned. The same id with another body is refused
  (``REPLAYED``).
- Every answer MUST be signed with the agency's key and bound to the request by its hash;
  backend refusals (``NotFound``, ``RuleViolated``, ``InvalidArgument``) are signed answers
  (``NOT_FOUND``, ``REFUSED``, ``INVALID``), not gRPC errors.
- A request citing a kind of legal document that cannot authorise its action
  (``fedgate.actions.ACCEPTED_DOCUMENTS``) MUST get a signed ``REFUSED`` answer naming the kinds
  accepted, and MUST NOT reach the backend or the staff queue.
- Manual actions are queued for staff with a deadline (the request's, else the configured
  default) and a reminder; an item not answered by its deadline gets a signed ``EXPIRED`` answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from adapters import telemetry
from adapters.answers import bind_response, outcome_of_error, sign_response
from adapters.config import ActionMode, NodeConfig
from adapters.queue import ANSWERED, Entry, RequestStore
from fedgate.actions import action_of, document_problem
from fedgate.disclosure import is_hits
from fedgate.envelope import Domain, Signer, decode_request, request_hash, verify_envelope
from fedgate.errors import (
    AgencyUnavailable,
    InvalidArgument,
    NotFound,
    PeerMismatch,
    PermissionRefused,
    Replayed,
    RuleViolated,
)
from fedgate.fanout import addressed_to
from fedgate.orders import UNDOES, undo_problem
from fedgate.registry import Registry
from fedgate.render import format_time
from fedgate.trust import TrustHolder
from fedgate.types import KeyId, MemberId, RequestId
from fedgate.v1 import agency_service_pb2, common_pb2, envelope_pb2, request_pb2

__all__ = ["AgencyBackend", "AnsweringNode", "ask_backend"]

_T = TypeVar("_T")


class AgencyBackend(Protocol):
    """One agency kind's answers. ``answer`` blocks (it runs in a worker thread) and returns a
    ``Response`` with ``status`` and the result set; the runtime binds and signs it. It raises
    ``NotFound``, ``RuleViolated`` or ``InvalidArgument`` for answers the agency gives as
    refusals, ``AgencyUnavailable`` when it cannot answer now."""

    @property
    def actions(self) -> frozenset[str]: ...

    def answer(self, request: request_pb2.Request, *, now: datetime) -> request_pb2.Response: ...


def ask_backend(
    backend: AgencyBackend, request: request_pb2.Request, *, now: datetime
) -> request_pb2.Response:
    """``backend``'s answer, its refusals (``NotFound``, ``RuleViolated``, ``InvalidArgument``)
    turned into the unsigned ``Response`` that says so; anything else propagates."""
    try:
        return backend.answer(request, now=now)
    except (NotFound, RuleViolated, InvalidArgument) as exc:
        status, detail = outcome_of_error(exc)
        return request_pb2.Response(status=status, detail=detail)


class AnsweringNode:
    """Handling of forwarded requests and upkeep of the staff queue; a base of
    ``adapters.node.AgencyNode`` only, which sets every attribute declared here. Implements
    ``adapters.staff.QueueHost``."""

    config: NodeConfig
    backend: AgencyBackend
    _trust: TrustHolder
    _clock: Callable[[], datetime]
    _signer: Signer
    _store: RequestStore | None
    _locks: dict[str, tuple[asyncio.Lock, int]]

    # ------------------------------------------------------------------ QueueHost

    @property
    def member_id(self) -> MemberId:
        return self.config.member_id

    @property
    def registry(self) -> Registry:
        """The registry in force now (the node's one ``TrustHolder``)."""
        return self._trust.registry

    @property
    def staff(self) -> frozenset[str]:
        return frozenset(self.config.staff)

    @property
    def store(self) -> RequestStore:
        if self._store is None:
            raise AgencyUnavailable(f"the node of {self.member_id} is not started")
        return self._store

    @property
    def signer(self) -> Signer:
        return self._signer

    def now(self) -> datetime:
        return self._clock()

    def sign(self, response: request_pb2.Response) -> bytes:
        return sign_response(response, self._signer)

    async def run_blocking(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.to_thread(fn)

    # ------------------------------------------------------------------ AgencyService

    async def handle(
        self, envelope: envelope_pb2.SignedEnvelope, *, log_origin: str = "", leaf_index: int = 0
    ) -> agency_service_pb2.HandleResponse:
        """Answer or queue one forwarded request (see the module contract). Raises
        ``FedgateError`` when the request is not acceptable or the backend is unavailable."""
        request = self.verify_request(envelope)
        action = action_of(request)
        rid = RequestId(request.request_id)
        rhash = request_hash(envelope.body)
        async with self._exclusive(rid):
            existing = await self.run_blocking(lambda: self.store.get(rid))
            if existing is not None:
                if existing.request_hash != rhash:
                    raise Replayed(f"request id {rid} was already used for another request")
                return _handle_response(existing)
            received = self.now()
            base = Entry(
                request_id=rid,
                request_hash=rhash,
                envelope=envelope.SerializeToString(),
                action=action,
                manual=False,
                state=ANSWERED,
                received_at=received,
                deadline=None,
                remind_at=None,
                claimed_by="",
                answered_by="",
                answered_at=None,
                response=None,
                log_origin=log_origin,
                leaf_index=leaf_index,
            )
            # The node checks the document kind itself (the gateway does too): a request on the
            # wrong kind of document is refused before staff or the backend ever see it.
            wrong_document = document_problem(action, request.legal_document.kind)
            refused = (
                request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_REFUSED,
                    detail=f"RULE legal_document.accepted_kind: {wrong_document}",
                )
                if wrong_document is not None
                else await self.run_blocking(lambda: self._undo_refusal(request, action))
            )
            chase = bool(request.chase_id) and request.urgency == common_pb2.URGENCY_EMERGENCY
            # Stage 1 of a staged disclosure (hit / no hit) is answered from the agency's
            # systems at once: there is nothing for staff to judge, and no detail to release.
            manual = self.config.mode_of(action, chase=chase) is ActionMode.MANUAL and not is_hits(
                request
            )
            if refused is None and action in self.backend.actions and manual:
                deadline = self._deadline(request, received)
                remind = max(received, deadline - self.config.reminder)
                entry = await self.run_blocking(
                    lambda: self.store.enqueue(
                        replace(base, manual=True, deadline=deadline, remind_at=remind)
                    )
                )
                return _handle_response(entry)
            response = (
                refused
                if refused is not None
                else await self.run_blocking(lambda: self._automatic(request, action, envelope))
            )
            answered_at = self.now()
            signed = self.sign(
                bind_response(
                    response,
                    request_id=rid,
                    request_body=envelope.body,
                    responder=self.member_id,
                    answered_at=answered_at,
                )
            )
            entry = await self.run_blocking(
                lambda: self.store.record_answer(
                    replace(base, answered_at=answered_at, response=signed)
                )
            )
            return _handle_response(entry)

    def _undo_refusal(
        self, request: request_pb2.Request, action: str
    ) -> request_pb2.Response | None:
        """A REFUSED answer for an undo (release, extension, renewal, stop, restore) that does
        not cite an order this node executed, or whose sender is neither the member that gave
        the order nor one above it (``fedgate.orders``); ``None`` otherwise. The gateway checks
        the same in its log; this is the agency's own check of what it executed, and by whom."""
        if action == "refund":
            return self._refund_refusal(request)
        if action not in UNDOES:
            return None
        cited = self.store.get(RequestId(request.original_request_id))
        original: request_pb2.Request | None = None
        if cited is not None:
            answer = cited.signed_response
            if answer is not None and _executed(answer):
                original = decode_request(cited.request_envelope.body)
        problem = undo_problem(request, original, self.registry)
        if problem is None:
            return None
        message = problem.message
        if original is None:
            message = f"{request.original_request_id} is not an order {self.member_id} executed"
        telemetry.log_event("undo refused", logging.WARNING, rule=problem.rule, action=action)
        return request_pb2.Response(
            status=request_pb2.RESPONSE_STATUS_REFUSED, detail=f"RULE {problem.rule}: {message}"
        )

    def _refund_refusal(self, request: request_pb2.Request) -> request_pb2.Response | None:
        """A REFUSED answer for a refund whose cited freeze this node did not execute, or whose
        sender neither gave that freeze nor is above the unit that did; ``None`` otherwise.
        The amounts are the backend's to check (``CoreBanking.refund``)."""
        cited = self.store.get(RequestId(request.original_request_id))
        freeze: request_pb2.Request | None = None
        answer = None if cited is None else cited.signed_response
        if cited is not None and answer is not None and _executed(answer):
            freeze = decode_request(cited.request_envelope.body)
        if freeze is None or freeze.WhichOneof("action") != "freeze":
            detail = (
                f"RULE refund.cites_freeze_in_force: {request.original_request_id} is not a "
                f"freeze {self.member_id} executed"
            )
        elif not self.registry.is_same_or_above(
            request.requesting_agency, freeze.requesting_agency
        ):
            detail = (
                f"RULE refund.by_ordering_unit_or_above: the freeze was ordered by "
                f"{freeze.requesting_agency}, not {request.requesting_agency} or a unit below it"
            )
        else:
            return None
        telemetry.log_event("refund refused", logging.WARNING, action="refund")
        return request_pb2.Response(status=request_pb2.RESPONSE_STATUS_REFUSED, detail=detail)

    def _automatic(
        self, request: request_pb2.Request, action: str, envelope: envelope_pb2.SignedEnvelope
    ) -> request_pb2.Response:
        if action not in self.backend.actions:
            return request_pb2.Response(
                status=request_pb2.RESPONSE_STATUS_INVALID,
                detail=f"{self.member_id} does not serve the action {action}",
            )
        return ask_backend(self.backend, request, now=self.now())

    def _deadline(self, request: request_pb2.Request, received: datetime) -> datetime:
        if request.HasField("answer_deadline"):
            return request.answer_deadline.ToDatetime(tzinfo=UTC)
        return received + self.config.queue_deadline

    def verify_request(self, envelope: envelope_pb2.SignedEnvelope) -> request_pb2.Request:
        """Decode and verify a forwarded envelope; raises the ``FedgateError`` naming what fails."""
        request = decode_request(envelope.body)
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        if not request.HasField("issued_at"):
            raise InvalidArgument("issued_at is missing")
        signer, key = self.registry.signing_key(
            KeyId(envelope.key_id), at=request.issued_at.ToDatetime(tzinfo=UTC)
        )
        verify_envelope(envelope, key, Domain.REQUEST)
        if signer.id != request.requesting_agency:
            raise PeerMismatch(
                f"the request names {request.requesting_agency!r} but is signed by {signer.id}"
            )
        if not addressed_to(request, self.member_id, self.registry):
            raise PermissionRefused(
                f"the request is for {request.target_agency!r}; this node is {self.member_id}"
            )
        return request

    async def get_result(self, request_id: str) -> agency_service_pb2.GetResultResponse:
        """The state and answer of a request; ``NotFound`` if this node never accepted it."""
        await self.expire_due()
        entry = await self.run_blocking(lambda: self.store.get(request_id))
        if entry is None:
            raise NotFound(f"{self.member_id} has no request {request_id}")
        reply = agency_service_pb2.GetResultResponse(state=entry.state)  # type: ignore[arg-type]
        if entry.deadline is not None:
            reply.deadline.FromDatetime(entry.deadline)
        signed = entry.signed_response
        if signed is not None:
            reply.response.CopyFrom(signed)
        return reply

    # ------------------------------------------------------------------ queue upkeep

    async def expire_due(self) -> tuple[Entry, ...]:
        """Answer EXPIRED, signed, for every queued item past its deadline (by the clock)."""
        now = self.now()

        def sign(entry: Entry) -> bytes:
            body = entry.request_envelope.body
            assert entry.deadline is not None
            expired = request_pb2.Response(
                status=request_pb2.RESPONSE_STATUS_EXPIRED,
                detail=f"{self.member_id}'s staff did not answer before the deadline "
                f"{format_time(entry.deadline)}",
            )
            return self.sign(
                bind_response(
                    expired,
                    request_id=entry.request_id,
                    request_body=body,
                    responder=self.member_id,
                    answered_at=now,
                )
            )

        expired = await self.run_blocking(lambda: self.store.expire_due(now, sign))
        for entry in expired:
            telemetry.log_event(
                "queued request expired",
                member=self.member_id,
                request_id=entry.request_id,
                action=entry.action,
            )
        return expired

    async def send_reminders(self) -> tuple[Entry, ...]:
        """Log a reminder, once, for each open item whose reminder time has come."""
        due = await self.run_blocking(lambda: self.store.due_reminders(self.now()))
        for entry in due:
            assert entry.deadline is not None
            telemetry.log_event(
                "queued request due soon",
                logging.WARNING,
                member=self.member_id,
                request_id=entry.request_id,
                action=entry.action,
                claimed_by=entry.claimed_by,
                deadline=format_time(entry.deadline),
            )
        return due

    @contextlib.asynccontextmanager
    async def _exclusive(self, request_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(request_id, (asyncio.Lock(), 0))
        self._locks[request_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[request_id]
            if users == 1:
                del self._locks[request_id]
            else:
                self._locks[request_id] = (lock, users - 1)


def _handle_response(entry: Entry) -> agency_service_pb2.HandleResponse:
    signed = entry.signed_response
    if signed is not None:
        return agency_service_pb2.HandleResponse(response=signed)
    queued = agency_service_pb2.Queued(request_id=entry.request_id)
    assert entry.deadline is not None
    queued.deadline.FromDatetime(entry.deadline)
    return agency_service_pb2.HandleResponse(queued=queued)


def _executed(answer: envelope_pb2.SignedEnvelope) -> bool:
    """Whether this node's own stored answer said the order was done (``RESPONSE_STATUS_OK``)."""
    return request_pb2.Response.FromString(answer.body).status == request_pb2.RESPONSE_STATUS_OK
