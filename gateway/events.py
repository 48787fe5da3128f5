"""EventService: agencies record their own audited events in the gateway's log.

A staff console on an agency node audits every login, failed login, claim, answer and reveal.
The node signs each event with the agency's key and sends it here; the gateway checks it and
appends it as an ``EventEntry`` before answering with a receipt. Contract:

- the caller MUST be a registered member in good standing (TLS certificate checked against the
  registry), the event MUST be signed by a key of that same member valid at the event's time,
  under the ``fedgate/v1/event`` domain, and name that member;
- the event's time MUST be a valid timestamp (else ``INVALID_ARGUMENT`` naming ``at``) within
  the gateway's clock skew; its fields are bounded;
- the same event (same member, kind, actor, time and details) MUST NOT be logged twice: a
  duplicate is refused ``REPLAYED``. Events seen are kept for the clock skew (an older copy is
  ``STALE`` anyway) and reloaded from the log on a member's first event after a restart;
- a refusal of an authenticated caller's event MUST itself be logged, as an ``event_refused``
  entry (reason, masked message, the refused event's kind and time) before the error is
  returned; if that cannot be logged the caller gets ``AUDIT_UNAVAILABLE``;
- the entry MUST be durable before the receipt is returned; if the log cannot be written the
  call fails with ``AUDIT_UNAVAILABLE`` (the console then refuses the action it was auditing).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import EntryKind, EventEntry, decode_entry, encode_entry, time_to_micros
from fedgate.envelope import Domain, verify_envelope
from fedgate.errors import (
    AuditUnavailable,
    DecodeError,
    FedgateError,
    FieldViolation,
    InvalidArgument,
    PeerMismatch,
    Replayed,
    Stale,
)
from fedgate.logs import mask_identifiers
from fedgate.merkle import leaf_hash
from fedgate.registry import Member, Registry
from fedgate.status import abort_with
from fedgate.tls import peer_member_id
from fedgate.types import KeyId
from fedgate.v1 import event_service_pb2, event_service_pb2_grpc
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery

__all__ = ["REFUSED_KIND", "EventServicer", "check_event", "event_time"]

_log = logging.getLogger("gateway.events")

REFUSED_KIND = "event_refused"
"""The kind of the entry that records a refused event."""

_KIND = re.compile(r"[a-z0-9_]{1,64}")
MAX_DETAILS = 32
MAX_TEXT = 256


def event_time(event: event_service_pb2.AuditEvent) -> datetime:
    """The event's ``at``; ``InvalidArgument`` naming ``at`` if it is not a valid time."""
    try:
        return event.at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument.for_fields(
            [FieldViolation("at", "not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)")]
        ) from exc


def _event_key(entry: EventEntry) -> bytes:
    return hashlib.sha256(encode_entry(entry)).digest()


class _SeenEvents:
    """The events logged within the clock skew, per member, to refuse duplicates."""

    def __init__(self, log: AuditLog, skew: timedelta) -> None:
        self._log = log
        self._skew = skew
        self._until: dict[bytes, datetime] = {}
        self._loaded: set[str] = set()
        self._lock = asyncio.Lock()

    async def _load(self, member: str, now: datetime) -> None:
        """Remember ``member``'s events of the last clock skew from the log (once)."""
        if member in self._loaded:
            return
        after = -1
        while True:
            hits = await self._log.search(
                SearchQuery(
                    member=member,
                    since_us=time_to_micros(now - self._skew),
                    after_index=after,
                    limit=500,
                )
            )
            for hit in hits:
                if hit.columns[0] != EntryKind.EVENT:
                    continue
                entry = decode_entry(await self._log.open_entry(hit.index))
                if isinstance(entry, EventEntry) and entry.member == member:
                    self._until[_event_key(entry)] = entry.at + self._skew
            if len(hits) < 500:
                break
            after = hits[-1].index
        self._loaded.add(member)

    async def claim(self, entry: EventEntry, now: datetime) -> bytes:
        """Remember ``entry``; ``Replayed`` if it was seen. Returns the key (to ``release``)."""
        async with self._lock:
            await self._load(entry.member, now)
            for key in [k for k, until in self._until.items() if until < now]:
                del self._until[key]
            key = _event_key(entry)
            if key in self._until:
                raise Replayed(
                    f"this {entry.kind} event of {entry.member} at {entry.at.isoformat()} is "
                    "already in the log"
                )
            self._until[key] = entry.at + self._skew
            return key

    def release(self, key: bytes) -> None:
        """Forget a claimed event that could not be logged (so a retry is not a replay)."""
        self._until.pop(key, None)


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
    at = event_time(event)
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
        self._seen = _SeenEvents(log, skew)

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
        except FedgateError as exc:
            await abort_with(context, exc)
        event = event_service_pb2.AuditEvent()
        now = self._clock()
        try:
            envelope = request.event
            try:
                event = event_service_pb2.AuditEvent.FromString(envelope.body)
            except ProtobufDecodeError as exc:
                raise DecodeError("the event is not a well-formed fedgate.v1.AuditEvent") from exc
            at = event_time(event) if event.HasField("at") else now
            signer, key = self._registry().signing_key(KeyId(envelope.key_id), at=at)
            if signer.id != caller.id:
                raise PeerMismatch(f"the event is signed by {signer.id}, the caller is {caller.id}")
            verify_envelope(envelope, key, Domain.EVENT)
            entry = check_event(event, member=caller.id, now=now, skew=self._skew)
            claimed = await self._seen.claim(entry, now)
            try:
                receipt = await self._log.append(entry)
            except BaseException:
                self._seen.release(claimed)
                raise
        except FedgateError as exc:
            await abort_with(context, await self._refused(caller, event, now, exc))
        proto = receipt.to_proto(request_leaf_index=receipt.index)
        if not proto.leaf_hash:
            proto.leaf_hash = leaf_hash(encode_entry(entry))
        return event_service_pb2.RecordEventResponse(receipt=proto)

    async def _refused(
        self,
        caller: Member,
        event: event_service_pb2.AuditEvent,
        now: datetime,
        error: FedgateError,
    ) -> FedgateError:
        """Log the refusal of ``caller``'s event; the error to return (``AuditUnavailable`` when
        the refusal itself cannot be logged, or when the log was what failed)."""
        if error.reason == "AUDIT_UNAVAILABLE":
            return error
        detail = [
            ("reason", error.reason),
            ("message", _bounded(mask_identifiers(error.message))),
            ("event_kind", _bounded(event.kind)),
        ]
        if event.HasField("at"):
            detail.append(("event_at", f"{event.at.seconds}.{event.at.nanos:09d}"))
        entry = EventEntry(
            kind=REFUSED_KIND,
            actor=_bounded(mask_identifiers(event.actor)) or "-",
            member=caller.id,
            at=now,
            detail=tuple(detail),
        )
        try:
            await self._log.append(entry)
        except FedgateError as exc:
            return exc
        except Exception:  # the log failing in another way: still fail closed
            _log.exception("the refusal of an event could not be logged")
            return AuditUnavailable("the refusal of the event could not be logged")
        return error


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
