"""EventService: agencies record their own audited events in the gateway's log.

A staff console on an agency node audits every login, failed login, claim, answer and reveal.
The node signs each event with the agency's key and sends it here; the gateway checks it and
appends it as an ``EventEntry`` before answering with a receipt. Contract:

- the caller MUST be a registered member in good standing (TLS certificate checked against the
  registry), the event MUST be signed by a key of that same member valid at the event's time,
  under the ``fedgate/v1/event`` domain, and name that member;
- the event's time MUST be within the gateway's clock skew; its fields are bounded;
- the entry MUST be durable before the receipt is returned; if the log cannot be written the
  call fails with ``AUDIT_UNAVAILABLE`` (the console then refuses the action it was auditing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import EventEntry, encode_entry
from fedgate.envelope import Domain, verify_envelope
from fedgate.errors import (
    DecodeError,
    FedgateError,
    FieldViolation,
    InvalidArgument,
    PeerMismatch,
    Stale,
)
from fedgate.merkle import leaf_hash
from fedgate.registry import Member, Registry
from fedgate.status import abort_with
from fedgate.tls import peer_member_id
from fedgate.types import KeyId
from fedgate.v1 import event_service_pb2, event_service_pb2_grpc
from gateway.audit.log import AuditLog

__all__ = ["EventServicer", "check_event"]

_KIND = re.compile(r"[a-z0-9_]{1,64}")
MAX_DETAILS = 32
MAX_TEXT = 256


def check_event(
    event: event_service_pb2.AuditEvent, *, member: str, now: datetime, skew: timedelta
) -> EventEntry:
    """The entry for a decoded event from ``member``; raises ``InvalidArgument`` naming each bad
    field, ``PeerMismatch`` for an event of another member, ``Stale`` out of the clock skew."""
    violations: list[FieldViolation] = []
    if not _KIND.fullmatch(event.kind):
        violations.append(FieldViolation("kind", "1 to 64 characters of a-z, 0-9 and _"))
    if not event.actor or len(event.actor) > MAX_TEXT:
        violations.append(FieldViolation("actor", f"required, at most {MAX_TEXT} characters"))
    if not event.HasField("at"):
        violations.append(FieldViolation("at", "required"))
    if len(event.detail) > MAX_DETAILS:
        violations.append(FieldViolation("detail", f"at most {MAX_DETAILS} pairs"))
    for i, pair in enumerate(event.detail):
        if not pair.key or len(pair.key) > MAX_TEXT or len(pair.value) > MAX_TEXT:
            violations.append(
                FieldViolation(
                    f"detail[{i}]", f"a key and a value of at most {MAX_TEXT} characters"
                )
            )
    if violations:
        raise InvalidArgument.for_fields(violations)
    if event.member != member:
        raise PeerMismatch(f"an event of {event.member!r} sent by {member}")
    at = event.at.ToDatetime(tzinfo=UTC)
    if abs(at - now) > skew:
        raise Stale(f"event time {at.isoformat()} is outside the allowed clock skew of {skew}")
    return EventEntry(
        kind=event.kind,
        actor=event.actor,
        member=member,
        at=at,
        detail=tuple((pair.key, pair.value) for pair in event.detail),
    )


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    """``EventService`` over the gateway's audit log."""

    def __init__(
        self,
        *,
        log: AuditLog,
        registry: Callable[[], Registry],
        skew: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._log = log
        self._registry = registry
        self._skew = skew
        self._clock = clock

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Member:
        member_id, cert_der = peer_member_id(context)
        return self._registry().check_certificate(member_id, cert_der)

    async def RecordEvent(
        self,
        request: event_service_pb2.RecordEventRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> event_service_pb2.RecordEventResponse:
        try:
            caller = self._caller(context)
            envelope = request.event
            try:
                event = event_service_pb2.AuditEvent.FromString(envelope.body)
            except ProtobufDecodeError as exc:
                raise DecodeError("the event is not a well-formed fedgate.v1.AuditEvent") from exc
            now = self._clock()
            at = event.at.ToDatetime(tzinfo=UTC) if event.HasField("at") else now
            signer, key = self._registry().signing_key(KeyId(envelope.key_id), at=at)
            if signer.id != caller.id:
                raise PeerMismatch(f"the event is signed by {signer.id}, the caller is {caller.id}")
            verify_envelope(envelope, key, Domain.EVENT)
            entry = check_event(event, member=caller.id, now=now, skew=self._skew)
            receipt = await self._log.append(entry)
        except FedgateError as exc:
            await abort_with(context, exc)
        proto = receipt.to_proto(request_leaf_index=receipt.index)
        if not proto.leaf_hash:
            proto.leaf_hash = leaf_hash(encode_entry(entry))
        return event_service_pb2.RecordEventResponse(receipt=proto)
