"""Agency reports and early warnings, delivered to police as a stream (``AlertService``).

Agencies send reports (``case_report``, ``early_warning``, ...) as signed requests through
``GatewayService.Submit`` with a police member as the target. They pass the whole pipeline
(transport, signature, freshness, validation, policy, quotas, durable request leg). There is no
police node to forward to, so the gateway itself answers:

- the acknowledgement is a ``Response`` with ``responder = "gateway"`` and a ``ReportAck``
  whose reference names the request leg (``<log origin>#<leaf index>``), signed with the
  gateway's own key. The gateway never signs in an agency's name: this answer says only that
  the centre received and logged the report; it is logged as a response leg like any other
  answer, countersigned and given a receipt;
- only then is the report stored here (SQLite, numbered) and streamed to the target member's
  ``SubscribeAlerts`` subscribers, who can resume from a sequence number after a reconnect.

Subscribers see only alerts addressed to their own member (taken from their certificate).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from fedgate.audit_entry import micros_to_time, time_to_micros
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.registry import Member
from fedgate.status import abort_with
from fedgate.storage import Schema, open_store
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import alert_service_pb2, envelope_pb2

__all__ = ["SERVICE_NAME", "Alert", "AlertHub", "AlertServicer"]

SERVICE_NAME = alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_us INTEGER NOT NULL,
    report BLOB NOT NULL,
    receipt BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_target ON alerts (target, sequence);
"""
_STORE = Schema(store="alert store", version=1, create=_SCHEMA, legacy_table="alerts")
_PAGE = 100


@dataclass(frozen=True, slots=True)
class Alert:
    """One report addressed to a police member."""

    target: MemberId
    source: MemberId
    kind: str
    received_at: datetime
    report: envelope_pb2.SignedEnvelope
    receipt: envelope_pb2.AuditReceipt


class AlertHub:
    """Stores alerts and wakes the subscribers of their target."""

    def __init__(self, connection: sqlite3.Connection, *, keep: int) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self._keep = keep
        self._generation = 0
        self._changed = asyncio.Condition()

    @classmethod
    def open(cls, path: Path, *, keep: int = 100_000) -> AlertHub:
        """Open or create the alert store; raises ``AuditUnavailable`` if it is unusable."""
        return cls(open_store(path, _STORE, error=AuditUnavailable), keep=keep)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def publish(self, alert: Alert) -> int:
        """Store ``alert`` durably, wake its subscribers; returns its sequence number."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO alerts (target, source, kind, received_us, report, receipt) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    alert.target,
                    alert.source,
                    alert.kind,
                    time_to_micros(alert.received_at),
                    alert.report.SerializeToString(),
                    alert.receipt.SerializeToString(),
                ),
            )
            sequence = int(cursor.lastrowid or 0)
            if sequence % 1000 == 0:
                self._db.execute("DELETE FROM alerts WHERE sequence <= ?", (sequence - self._keep,))
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
        return sequence

    def _after(
        self, target: MemberId, after: int, kinds: Sequence[str]
    ) -> list[alert_service_pb2.SubscribeAlertsResponse]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, source, kind, received_us, report, receipt FROM alerts "
                "WHERE target = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (target, after, _PAGE),
            ).fetchall()
        out = []
        for sequence, source, kind, received_us, report, receipt in rows:
            message = alert_service_pb2.SubscribeAlertsResponse(
                sequence=sequence,
                source_agency=source,
                kind=kind,
                report=envelope_pb2.SignedEnvelope.FromString(report),
                receipt=envelope_pb2.AuditReceipt.FromString(receipt),
            )
            message.received_at.FromDatetime(micros_to_time(received_us).astimezone(UTC))
            if not kinds or kind in kinds:
                out.append(message)
            else:
                # Keep the cursor moving past alerts of other kinds.
                out.append(alert_service_pb2.SubscribeAlertsResponse(sequence=sequence))
        return out

    def _moved_on(self, generation: int) -> bool:
        return self._generation != generation

    async def subscribe(
        self, member: MemberId, *, kinds: Sequence[str] = (), after_sequence: int = 0
    ) -> AsyncIterator[alert_service_pb2.SubscribeAlertsResponse]:
        """Alerts for ``member`` after ``after_sequence``: the stored ones, then live ones."""
        last = after_sequence
        while True:
            generation = self._generation
            batch = self._after(member, last, tuple(kinds))
            for message in batch:
                last = message.sequence
                if message.kind:
                    yield message
            if batch:
                continue
            async with self._changed:
                await self._changed.wait_for(partial(self._moved_on, generation))


class AlertServicer:
    """``AlertService.SubscribeAlerts``: the caller's own alerts, from its certificate."""

    def __init__(
        self,
        *,
        hub: AlertHub,
        authenticate: Callable[[Callable[[], tuple[MemberId, bytes]]], Member],
    ) -> None:
        self._hub = hub
        self._authenticate = authenticate

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "SubscribeAlerts": grpc.unary_stream_rpc_method_handler(
                    self.SubscribeAlerts,
                    request_deserializer=alert_service_pb2.SubscribeAlertsRequest.FromString,
                    response_serializer=alert_service_pb2.SubscribeAlertsResponse.SerializeToString,
                )
            },
        )

    async def SubscribeAlerts(
        self,
        request: alert_service_pb2.SubscribeAlertsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[alert_service_pb2.SubscribeAlertsResponse]:
        try:
            member = self._authenticate(lambda: peer_member_id(context))
        except FedgateError as error:
            await abort_with(context, error)
        async for alert in self._hub.subscribe(
            member.id, kinds=tuple(request.kinds), after_sequence=request.after_sequence
        ):
            yield alert
