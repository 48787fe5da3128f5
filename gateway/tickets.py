"""Tickets: requests an agency's staff answer by hand, followed by the police side.

When a node queues a request (``HandleResponse.queued``) the gateway keeps a ticket (SQLite,
so tickets survive a restart; or, with ``[shared] store = "postgres"``, one PostgreSQL table
every gateway instance shares, ``PgTickets``) and answers ``Submit`` with it at once.
``GetTicket`` asks the node (``AgencyService.GetResult``) for news; ``WatchTicket`` does so
every poll interval and streams each change.

Contract:

- Only the member that submitted the request MAY read its ticket; anyone else gets
  ``NotFound`` (the ticket's existence is not revealed to the caller). Every such refusal MUST
  be in the audit log first (``AnswerFinisher.record_refused_read``, an event naming the caller,
  the ticket id and its owner if it exists), or the caller gets ``AuditUnavailable``.
- An answer fetched from the node MUST go through the same checks as a direct answer before it
  is returned (``AnswerFinisher.finish``: response check, durable response leg, countersignature
  and receipt); a ticket is marked answered only after that.
- A query the node reports expired is recorded (response leg ``expired``) and every later read
  raises ``Expired`` (``DEADLINE_EXCEEDED``) with the reason.
- An answer MUST be finished (checked and logged) exactly once, whichever instances poll the
  node at the same moment: only the holder of the ticket (``TicketStore.hold``: a row lock when
  shared) asks the node and finishes, after reading the ticket again under the hold.
- The answer's response leg is written in the shard of the instance that finishes it; when
  that is not the shard of the request leg (a ticket opened through another instance), the leg
  names the request leg by its shard's origin (``ResponseLeg.request_origin``, kept in the
  ticket) and its index there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg

from fedgate.audit_entry import micros_to_time, time_to_micros
from fedgate.envelope import decode_response
from fedgate.errors import AgencyUnavailable, AuditUnavailable, Expired, FedgateError, NotFound
from fedgate.render import format_time
from fedgate.storage import Schema, open_store
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, ticket_pb2
from gateway.routing import NodeRouter
from gateway.shared import PgPool

__all__ = [
    "AnswerFinisher",
    "PendingRequest",
    "PgTickets",
    "SqliteTickets",
    "TicketHold",
    "TicketRecord",
    "TicketStore",
    "Tickets",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    request_body BLOB NOT NULL,
    request_leaf_index INTEGER NOT NULL,
    request_receipt BLOB NOT NULL,
    deadline_us INTEGER NOT NULL,
    state INTEGER NOT NULL,
    signed_response BLOB,
    detail TEXT NOT NULL DEFAULT '',
    updated_us INTEGER NOT NULL,
    request_origin TEXT NOT NULL DEFAULT ''
)
"""
_STORE = Schema(
    store="ticket store",
    version=2,
    create=_SCHEMA,
    # Version 2 names the shard of each ticket's request leg ('' for tickets of version 1:
    # this instance's own shard).
    migrations={1: "ALTER TABLE tickets ADD COLUMN request_origin TEXT NOT NULL DEFAULT '';"},
    legacy_table="tickets",
)
_COLUMNS = (
    "ticket_id, requester, target, action, request_body, request_leaf_index, request_receipt, "
    "deadline_us, state, signed_response, detail, request_origin"
)
_NEW = (
    f"INSERT INTO tickets ({_COLUMNS}, updated_us)"  # noqa: S608 - constant
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '', ?, ?)"
)
_INSERT_SQLITE = _NEW.replace("INSERT", "INSERT OR IGNORE", 1)
_INSERT_PG = _NEW.replace("?", "%s") + " ON CONFLICT DO NOTHING"
_SELECT_SQLITE = f"SELECT {_COLUMNS} FROM tickets WHERE ticket_id = ?"  # noqa: S608 - constant
_UPDATE_SQLITE = (
    "UPDATE tickets SET state = ?, signed_response = ?, detail = ?, updated_us = ? "
    "WHERE ticket_id = ?"
)


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """What the gateway must remember of a queued request to check and log its answer later."""

    request_id: str
    requester: MemberId
    target: MemberId
    action: str
    request_body: bytes
    request_leaf_index: int
    request_receipt: envelope_pb2.AuditReceipt
    deadline: datetime
    request_origin: str = ""
    """The origin of the audit shard holding the request leg; empty: this instance's own."""


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """A stored ticket: the pending request, its state and, once answered, the signed answer."""

    pending: PendingRequest
    state: ticket_pb2.TicketState.ValueType
    signed_response: envelope_pb2.SignedResponse | None = None
    detail: str = ""

    def ticket(self) -> ticket_pb2.Ticket:
        t = ticket_pb2.Ticket(
            ticket_id=self.pending.request_id,
            target_agency=self.pending.target,
            state=self.state,
            request_receipt=self.pending.request_receipt,
        )
        t.deadline.FromDatetime(self.pending.deadline)
        return t


class AnswerFinisher(Protocol):
    """Stages 10–12 for an answer that arrives later (implemented by the pipeline)."""

    async def finish(
        self, pending: PendingRequest, answer: envelope_pb2.SignedEnvelope
    ) -> tuple[envelope_pb2.SignedResponse, str]:
        """Check, log and countersign ``answer``; returns it with its audit status (``ok``,
        ``expired``, ...). Raises ``AgencyFault`` (logged as a node fault) or
        ``AuditUnavailable``."""
        ...

    async def record_expiry(self, pending: PendingRequest, *, detail: str) -> None:
        """Log a response leg ``expired`` without an answer; raises ``AuditUnavailable``."""
        ...

    async def record_refused_read(
        self, *, ticket_id: str, caller: MemberId, owner: MemberId | None
    ) -> None:
        """Log that ``caller`` asked for a ticket that is not its own (``owner``: whose it is,
        ``None`` if there is no such ticket); raises ``AuditUnavailable``."""
        ...


class TicketHold(Protocol):
    """A ticket held by one caller across every instance sharing the store (``hold``)."""

    @property
    def record(self) -> TicketRecord | None:
        """The ticket as stored when the hold was taken (``None``: there is no such ticket)."""
        ...

    async def update(self, record: TicketRecord) -> None:
        """Store ``record``'s state, answer and detail (durable when the hold ends)."""
        ...


class TicketStore(Protocol):
    """Where tickets are kept: ``SqliteTickets`` (one process) or ``PgTickets`` (every gateway
    instance on one PostgreSQL database). Failures raise ``AuditUnavailable``."""

    async def create(self, record: TicketRecord) -> None:
        """Persist a new ticket (a second create of one id keeps the first)."""
        ...

    async def get(self, ticket_id: str) -> TicketRecord | None: ...

    def hold(self, ticket_id: str) -> AbstractAsyncContextManager[TicketHold]:
        """Hold ``ticket_id``: while held, no other holder (on any instance sharing the store)
        gets it; a second holder waits and then reads what the first stored. This is what
        makes an answer fetched from the node checked and logged exactly once."""
        ...

    def close(self) -> None: ...


def _record(row: Sequence[Any]) -> TicketRecord:
    """A ticket from a row of ``_COLUMNS``."""
    receipt = envelope_pb2.AuditReceipt.FromString(bytes(row[6]))
    signed = envelope_pb2.SignedResponse.FromString(bytes(row[9])) if row[9] is not None else None
    return TicketRecord(
        pending=PendingRequest(
            request_id=row[0],
            requester=MemberId(row[1]),
            target=MemberId(row[2]),
            action=row[3],
            request_body=bytes(row[4]),
            request_leaf_index=row[5],
            request_receipt=receipt,
            deadline=micros_to_time(row[7]),
            request_origin=row[11],
        ),
        state=row[8],
        signed_response=signed,
        detail=row[10],
    )


def _row(record: TicketRecord, origin: str) -> tuple[Any, ...]:
    """The values of a new ticket's row, in ``_COLUMNS`` order (state then ``updated_us``)."""
    p = record.pending
    return (
        p.request_id,
        p.requester,
        p.target,
        p.action,
        p.request_body,
        p.request_leaf_index,
        p.request_receipt.SerializeToString(),
        time_to_micros(p.deadline),
        int(record.state),
        p.request_origin or origin,
        _now_us(),
    )


def _changes(record: TicketRecord) -> tuple[Any, ...]:
    """state, signed_response, detail, updated_us, ticket_id: the values of ``_UPDATE``."""
    signed = (
        record.signed_response.SerializeToString() if record.signed_response is not None else None
    )
    return (int(record.state), signed, record.detail, _now_us(), record.pending.request_id)


class _SqliteHold:
    def __init__(self, store: SqliteTickets, record: TicketRecord | None) -> None:
        self._store = store
        self.record = record

    async def update(self, record: TicketRecord) -> None:
        self._store.update(record)


class SqliteTickets:
    """Tickets in one SQLite file (WAL, synchronous=FULL); safe to call from any thread. A
    hold is exclusive within this process only (``Tickets`` serialises its holders)."""

    def __init__(self, connection: sqlite3.Connection, *, origin: str = "") -> None:
        self._db = connection
        self._lock = threading.Lock()
        self._origin = origin

    @classmethod
    def open(cls, path: Path, *, origin: str = "") -> SqliteTickets:
        """Open or create the store; raises ``AuditUnavailable`` if the file is unusable."""
        return cls(open_store(path, _STORE, error=AuditUnavailable), origin=origin)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def create(self, record: TicketRecord) -> None:
        with self._lock, self._db:
            self._db.execute(_INSERT_SQLITE, _row(record, self._origin))

    async def get(self, ticket_id: str) -> TicketRecord | None:
        return self.read(ticket_id)

    def read(self, ticket_id: str) -> TicketRecord | None:
        with self._lock:
            row = self._db.execute(_SELECT_SQLITE, (ticket_id,)).fetchone()
        return None if row is None else _record(row)

    @asynccontextmanager
    async def hold(self, ticket_id: str) -> AsyncIterator[TicketHold]:
        yield _SqliteHold(self, self.read(ticket_id))

    def update(self, record: TicketRecord) -> None:
        with self._lock, self._db:
            self._db.execute(_UPDATE_SQLITE, _changes(record))


_PG_STORE = Schema(
    store="shared ticket store",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    target TEXT NOT NULL,
    action TEXT NOT NULL,
    request_body BYTEA NOT NULL,
    request_leaf_index BIGINT NOT NULL,
    request_receipt BYTEA NOT NULL,
    deadline_us BIGINT NOT NULL,
    state INTEGER NOT NULL,
    signed_response BYTEA,
    detail TEXT NOT NULL DEFAULT '',
    request_origin TEXT NOT NULL,
    updated_us BIGINT NOT NULL
);
""",
)
_SELECT_PG = f"SELECT {_COLUMNS} FROM tickets WHERE ticket_id = %s"  # noqa: S608 - constant


class _PgHold:
    def __init__(self, conn: psycopg.AsyncConnection[Any], record: TicketRecord | None) -> None:
        self._conn = conn
        self.record = record

    async def update(self, record: TicketRecord) -> None:
        await self._conn.execute(_UPDATE_SQLITE.replace("?", "%s"), _changes(record))


class PgTickets:
    """Tickets shared by every gateway instance on one PostgreSQL database (schema
    ``<shared schema>_tickets``): a ticket opened through one instance is read, watched and
    finished through any. A hold is a transaction holding the ticket's row lock (``SELECT …
    FOR UPDATE``), committed when the hold ends; an instance that dies while holding loses its
    connection and with it the lock, so nothing stays held. Database failures raise
    ``AuditUnavailable``."""

    def __init__(self, *, dsn: str, schema: str, origin: str, connections: int = 8) -> None:
        self._pool = PgPool(
            dsn=dsn, schema=schema, store=_PG_STORE, what="shared tickets", connections=connections
        )
        self._origin = origin

    async def create(self, record: TicketRecord) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(_INSERT_PG, _row(record, self._origin))

    async def get(self, ticket_id: str) -> TicketRecord | None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(_SELECT_PG, (ticket_id,))).fetchone()
        return None if row is None else _record(row)

    @asynccontextmanager
    async def hold(self, ticket_id: str) -> AsyncIterator[TicketHold]:
        failure: FedgateError | None = None
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(_SELECT_PG + " FOR UPDATE", (ticket_id,))
            row = await cursor.fetchone()
            try:
                yield _PgHold(conn, None if row is None else _record(row))
            except FedgateError as exc:
                # The holder's own failure (the node unreachable, a bad answer): nothing is
                # stored, and the connection, rolled back, stays usable for the next one.
                failure = exc
                raise psycopg.Rollback() from None
        if failure is not None:
            raise failure

    def close(self) -> None:
        self._pool.close()


def _now_us() -> int:
    return time_to_micros(datetime.now(UTC))


_FINAL = frozenset({ticket_pb2.TICKET_STATE_ANSWERED, ticket_pb2.TICKET_STATE_EXPIRED})


class Tickets:
    """Opens tickets, and answers GetTicket and WatchTicket by asking the node."""

    def __init__(
        self,
        *,
        store: TicketStore,
        router: NodeRouter,
        poll_interval_s: float,
        node_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._router = router
        self._poll_s = poll_interval_s
        self._node_timeout_s = node_timeout_s
        self._clock = clock
        self._finisher: AnswerFinisher | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def bind(self, finisher: AnswerFinisher) -> None:
        """Set the pipeline that checks and logs answers (it is built after this object)."""
        self._finisher = finisher

    async def open(self, pending: PendingRequest) -> ticket_pb2.Ticket:
        """Persist a new ticket in state WAITING and return it."""
        record = TicketRecord(pending=pending, state=ticket_pb2.TICKET_STATE_WAITING)
        await self._store.create(record)
        return record.ticket()

    async def _owned(self, ticket_id: str, caller: MemberId) -> TicketRecord:
        record = await self._store.get(ticket_id)
        if record is None or record.pending.requester != caller:
            raise NotFound(f"{caller} has no ticket {ticket_id!r}")
        return record

    async def _owned_logged(self, ticket_id: str, caller: MemberId) -> TicketRecord:
        """``_owned``, logging a refusal (a probe of another member's ticket) first."""
        record = await self._store.get(ticket_id)
        if record is None or record.pending.requester != caller:
            await self._require_finisher().record_refused_read(
                ticket_id=ticket_id,
                caller=caller,
                owner=record.pending.requester if record is not None else None,
            )
            raise NotFound(f"{caller} has no ticket {ticket_id[:80]!r}")
        return record

    async def get(
        self, ticket_id: str, *, caller: MemberId
    ) -> tuple[ticket_pb2.Ticket, envelope_pb2.SignedResponse | None]:
        """The ticket and its answer if there is one. Raises ``NotFound``, ``Expired``,
        ``AgencyUnavailable``, ``AgencyFault`` or ``AuditUnavailable``."""
        record = await self._refresh(await self._owned_logged(ticket_id, caller))
        return record.ticket(), record.signed_response

    async def watch(
        self, ticket_id: str, *, caller: MemberId
    ) -> AsyncIterator[tuple[ticket_pb2.Ticket, envelope_pb2.SignedResponse | None]]:
        """The ticket now and at each change, until answered; raises ``Expired`` after yielding
        the expired ticket. A node that cannot be reached for a while is asked again later."""
        record = await self._owned_logged(ticket_id, caller)
        last_state: int | None = None
        while True:
            try:
                record = await self._refresh(record)
            except AgencyUnavailable:
                pass  # keep following: the node may come back before the deadline
            except Expired:
                expired = await self._owned(ticket_id, caller)
                yield expired.ticket(), None
                raise
            if record.state != last_state:
                last_state = record.state
                yield record.ticket(), record.signed_response
            if record.state in _FINAL:
                return
            await asyncio.sleep(self._poll_s)

    async def _refresh(self, record: TicketRecord) -> TicketRecord:
        """Ask the node for news unless the ticket is final; log and store what changed."""
        if record.state not in _FINAL:
            pending = record.pending
            # One holder per ticket in this process (the store's hold, which may be a database
            # connection, is then taken once however many watchers follow the ticket here).
            lock, users = self._locks.get(pending.request_id, (asyncio.Lock(), 0))
            self._locks[pending.request_id] = (lock, users + 1)
            try:
                async with lock, self._store.hold(pending.request_id) as held:
                    record = await self._poll(held, held.record or record)
            finally:
                lock, users = self._locks[pending.request_id]
                if users == 1:
                    del self._locks[pending.request_id]
                else:
                    self._locks[pending.request_id] = (lock, users - 1)
        if record.state == ticket_pb2.TICKET_STATE_EXPIRED:
            raise Expired(record.detail or f"ticket {record.pending.request_id} expired")
        return record

    async def _poll(self, held: TicketHold, current: TicketRecord) -> TicketRecord:
        """Under the hold: the node's news, checked, logged and stored. ``current`` was read
        under the hold, so an answer another holder (here or on another instance) fetched
        meanwhile is seen and never finished twice."""
        if current.state in _FINAL:
            return current
        pending = current.pending
        result = await self._router.get_result(
            pending.target, pending.request_id, timeout=self._node_timeout_s
        )
        finisher = self._require_finisher()
        if result.HasField("response") and result.response.body:
            signed, status = await finisher.finish(pending, result.response)
            if status == "expired":
                current = replace(
                    current,
                    state=ticket_pb2.TICKET_STATE_EXPIRED,
                    detail=_expired_detail(pending, signed),
                )
            else:
                current = replace(
                    current, state=ticket_pb2.TICKET_STATE_ANSWERED, signed_response=signed
                )
            await held.update(current)
            return current
        if result.state == ticket_pb2.TICKET_STATE_EXPIRED:
            deadline = format_time(pending.deadline)
            detail = f"{pending.target} did not answer before the deadline {deadline}"
            await finisher.record_expiry(pending, detail=detail)
            current = replace(current, state=ticket_pb2.TICKET_STATE_EXPIRED, detail=detail)
            await held.update(current)
            return current
        if (
            result.state in (ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_CLAIMED)
            and result.state != current.state
        ):
            current = replace(current, state=result.state)
            await held.update(current)
        return current

    def _require_finisher(self) -> AnswerFinisher:
        if self._finisher is None:
            raise AuditUnavailable("tickets are not bound to a pipeline: cannot log answers")
        return self._finisher

    def close(self) -> None:
        self._store.close()


def _expired_detail(pending: PendingRequest, signed: envelope_pb2.SignedResponse) -> str:
    detail = decode_response(signed.response.body).detail
    return detail or f"{pending.target} did not answer before the deadline"
