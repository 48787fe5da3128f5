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
- only then is the report stored here (numbered) and streamed to the target member's
  ``SubscribeAlerts`` subscribers, who can resume from a sequence number after a reconnect.

Subscribers see only alerts addressed to their own member (taken from their certificate).

Two stores (``Alerts``): ``AlertHub``, one SQLite file of one process (the default), and
``PgAlertHub`` with ``[shared] store = "postgres"``: one table every gateway instance shares,
numbered by one identity sequence, so a subscriber on any instance sees the alerts stored
through every instance and resumes from its sequence number on any instance. Publishers commit
in sequence order (a transaction-level advisory lock), so a subscriber that has read up to
``n`` never misses a smaller number committed later. A stored alert wakes the subscribers of
every instance at once through PostgreSQL ``LISTEN``/``NOTIFY``; a subscriber also looks again
every ``fallback_poll_s`` (default 2 s) in case a notification was lost with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
import grpc.aio
import psycopg
from psycopg import sql as psql

from fedgate.audit_entry import micros_to_time, time_to_micros
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.registry import Member
from fedgate.status import abort_with
from fedgate.storage import Schema, open_store
from fedgate.tls import peer_member_id
from fedgate.types import MemberId
from fedgate.v1 import alert_service_pb2, envelope_pb2
from gateway.shared import PgPool

__all__ = ["SERVICE_NAME", "Alert", "AlertHub", "AlertServicer", "Alerts", "PgAlertHub"]

_log = logging.getLogger("gateway.alerts")

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


def _messages(
    rows: Sequence[Sequence[Any]], kinds: Sequence[str]
) -> list[alert_service_pb2.SubscribeAlertsResponse]:
    """Stream messages of rows ``(sequence, source, kind, received_us, report, receipt)``; an
    alert of a kind not asked for is a bare sequence number (the cursor moves past it)."""
    out = []
    for sequence, source, kind, received_us, report, receipt in rows:
        if kinds and kind not in kinds:
            out.append(alert_service_pb2.SubscribeAlertsResponse(sequence=sequence))
            continue
        message = alert_service_pb2.SubscribeAlertsResponse(
            sequence=sequence,
            source_agency=source,
            kind=kind,
            report=envelope_pb2.SignedEnvelope.FromString(bytes(report)),
            receipt=envelope_pb2.AuditReceipt.FromString(bytes(receipt)),
        )
        message.received_at.FromDatetime(micros_to_time(received_us).astimezone(UTC))
        out.append(message)
    return out


class Alerts(Protocol):
    """Where alerts are stored and streamed from: ``AlertHub`` or ``PgAlertHub``."""

    async def publish(self, alert: Alert) -> int:
        """Store ``alert`` durably and wake its subscribers; returns its sequence number.
        Raises ``AuditUnavailable``."""
        ...

    def subscribe(
        self, member: MemberId, *, kinds: Sequence[str] = (), after_sequence: int = 0
    ) -> AsyncIterator[alert_service_pb2.SubscribeAlertsResponse]:
        """Alerts for ``member`` after ``after_sequence``: the stored ones, then live ones."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Alert:
    """One report addressed to a police member."""

    target: MemberId
    source: MemberId
    kind: str
    received_at: datetime
    report: envelope_pb2.SignedEnvelope
    receipt: envelope_pb2.AuditReceipt


def _row(alert: Alert) -> tuple[str, str, str, int, bytes, bytes]:
    """The stored columns of ``alert`` (target, source, kind, received_us, report, receipt)."""
    return (
        alert.target,
        alert.source,
        alert.kind,
        time_to_micros(alert.received_at),
        alert.report.SerializeToString(),
        alert.receipt.SerializeToString(),
    )


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

    async def aclose(self) -> None:
        self.close()

    async def publish(self, alert: Alert) -> int:
        """Store ``alert`` durably, wake its subscribers; returns its sequence number."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO alerts (target, source, kind, received_us, report, receipt) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                _row(alert),
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
        return _messages(rows, kinds)

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


_PG_STORE = Schema(
    store="shared alert store",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS alerts (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_us BIGINT NOT NULL,
    report BYTEA NOT NULL,
    receipt BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_target ON alerts (target, sequence);
""",
)
_PG_LOCK: Final = 0x66656467_616C7274  # "fedg" "alrt": publishers commit in sequence order
_PG_PUBLISH: Final = (
    "INSERT INTO alerts (target, source, kind, received_us, report, receipt)"
    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING sequence"
)
_PG_AFTER: Final = (
    "SELECT sequence, source, kind, received_us, report, receipt FROM alerts"
    " WHERE target = %s AND sequence > %s ORDER BY sequence LIMIT %s"
)
_PG_PRUNE: Final = "DELETE FROM alerts WHERE sequence <= %s"
_RELISTEN_MAX_S: Final = 5.0


class PgAlertHub:
    """Alerts shared by every gateway instance on one PostgreSQL database (schema
    ``<shared schema>_alerts``): see the module docstring. Database failures raise
    ``AuditUnavailable`` to publishers (fail closed: a report is acknowledged only once it is
    stored for delivery) and end a subscriber's stream with it."""

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        keep: int = 100_000,
        fallback_poll_s: float = 2.0,
        connections: int = 4,
    ) -> None:
        if fallback_poll_s <= 0:
            raise ValueError("fallback_poll_s must be positive")
        self._pool = PgPool(
            dsn=dsn, schema=schema, store=_PG_STORE, what="shared alerts", connections=connections
        )
        self._dsn = dsn
        self._channel = f"fedgate_alerts_{schema}"[:63]
        self._keep = keep
        self._fallback_s = fallback_poll_s
        self._generation = 0
        self._changed: asyncio.Condition | None = None
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, alert: Alert) -> int:
        """As ``Alerts.publish``: stored, then ``NOTIFY`` at commit wakes every instance."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            cursor = await conn.execute(
                _PG_PUBLISH,
                _row(alert),
            )
            row = await cursor.fetchone()
            assert row is not None, "INSERT … RETURNING returns the row"
            sequence = int(row[0])
            if sequence % 1000 == 0:
                await conn.execute(_PG_PRUNE, (sequence - self._keep,))
            await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, alert.target))
        await self._wake()
        return sequence

    async def _after(
        self, target: MemberId, after: int, kinds: Sequence[str]
    ) -> list[alert_service_pb2.SubscribeAlertsResponse]:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(_PG_AFTER, (target, after, _PAGE))).fetchall()
        return _messages(rows, kinds)

    async def subscribe(
        self, member: MemberId, *, kinds: Sequence[str] = (), after_sequence: int = 0
    ) -> AsyncIterator[alert_service_pb2.SubscribeAlertsResponse]:
        """As ``Alerts.subscribe``."""
        changed = self._condition()
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="alerts-listen")
        last = after_sequence
        while True:
            generation = self._generation
            batch = await self._after(member, last, tuple(kinds))
            for message in batch:
                last = message.sequence
                if message.kind:
                    yield message
            if batch:
                continue
            async with changed:
                # Bounded: a notification lost with the listening connection delays an alert
                # by at most this long.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        changed.wait_for(partial(self._moved_on, generation)), self._fallback_s
                    )

    def _moved_on(self, generation: int) -> bool:
        return self._generation != generation

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _wake(self) -> None:
        changed = self._condition()
        async with changed:
            self._generation += 1
            changed.notify_all()

    async def _listen(self) -> None:
        """One ``LISTEN`` connection of this instance, reopened (with a growing pause) when it
        fails; each notification wakes this instance's subscribers."""
        pause = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                async with conn:
                    await conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(self._channel)))
                    await self._wake()  # whatever was stored while nobody listened
                    pause = 0.1
                    async for _ in conn.notifies():
                        await self._wake()
            except psycopg.Error as exc:
                _log.warning("alert notifications interrupted: %s", type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RELISTEN_MAX_S)

    async def aclose(self) -> None:
        """Stop listening and close the connections."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self.close()

    def close(self) -> None:
        """Close the idle connections (the listener, if any, is ``aclose``'s)."""
        self._pool.close()


class AlertServicer:
    """``AlertService.SubscribeAlerts``: the caller's own alerts, from its certificate."""

    def __init__(
        self,
        *,
        hub: Alerts,
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
        try:
            async for alert in self._hub.subscribe(
                member.id, kinds=tuple(request.kinds), after_sequence=request.after_sequence
            ):
                yield alert
        except FedgateError as error:  # the store failed (AuditUnavailable): say so
            await abort_with(context, error)
