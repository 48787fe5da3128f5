"""Tickets: requests an agency's staff answer by hand, followed by the police side.

When a node queues a request (``HandleResponse.queued``) the gateway keeps a ticket (SQLite,
so tickets survive a restart) and answers ``Submit`` with it at once. ``GetTicket`` asks the
node (``AgencyService.GetResult``) for news; ``WatchTicket`` does so every poll interval and
streams each change.

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
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from fedgate.audit_entry import micros_to_time, time_to_micros
from fedgate.envelope import decode_response
from fedgate.errors import AgencyUnavailable, AuditUnavailable, Expired, NotFound
from fedgate.render import format_time
from fedgate.storage import Schema, open_store
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, ticket_pb2
from gateway.routing import NodeRouter

__all__ = [
    "AnswerFinisher",
    "PendingRequest",
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
    updated_us INTEGER NOT NULL
)
"""
_STORE = Schema(store="ticket store", version=1, create=_SCHEMA, legacy_table="tickets")
_COLUMNS = (
    "ticket_id, requester, target, action, request_body, request_leaf_index, request_receipt, "
    "deadline_us, state, signed_response, detail"
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


class TicketStore:
    """Tickets in one SQLite file (WAL, synchronous=FULL); safe to call from any thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> TicketStore:
        """Open or create the store; raises ``AuditUnavailable`` if the file is unusable."""
        return cls(open_store(path, _STORE, error=AuditUnavailable))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, record: TicketRecord) -> None:
        p = record.pending
        with self._lock, self._db:
            self._db.execute(
                f"INSERT OR IGNORE INTO tickets ({_COLUMNS}, updated_us) "  # noqa: S608 - constant
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '', ?)",
                (
                    p.request_id,
                    p.requester,
                    p.target,
                    p.action,
                    p.request_body,
                    p.request_leaf_index,
                    p.request_receipt.SerializeToString(),
                    time_to_micros(p.deadline),
                    int(record.state),
                    _now_us(),
                ),
            )

    def get(self, ticket_id: str) -> TicketRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM tickets WHERE ticket_id = ?",  # noqa: S608 - constant
                (ticket_id,),
            ).fetchone()
        if row is None:
            return None
        receipt = envelope_pb2.AuditReceipt.FromString(row[6])
        signed = envelope_pb2.SignedResponse.FromString(row[9]) if row[9] is not None else None
        return TicketRecord(
            pending=PendingRequest(
                request_id=row[0],
                requester=MemberId(row[1]),
                target=MemberId(row[2]),
                action=row[3],
                request_body=row[4],
                request_leaf_index=row[5],
                request_receipt=receipt,
                deadline=micros_to_time(row[7]),
            ),
            state=row[8],
            signed_response=signed,
            detail=row[10],
        )

    def update(self, record: TicketRecord) -> None:
        signed = (
            record.signed_response.SerializeToString()
            if record.signed_response is not None
            else None
        )
        with self._lock, self._db:
            self._db.execute(
                "UPDATE tickets SET state = ?, signed_response = ?, detail = ?, updated_us = ? "
                "WHERE ticket_id = ?",
                (int(record.state), signed, record.detail, _now_us(), record.pending.request_id),
            )


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

    def open(self, pending: PendingRequest) -> ticket_pb2.Ticket:
        """Persist a new ticket in state WAITING and return it."""
        record = TicketRecord(pending=pending, state=ticket_pb2.TICKET_STATE_WAITING)
        self._store.create(record)
        return record.ticket()

    def _owned(self, ticket_id: str, caller: MemberId) -> TicketRecord:
        record = self._store.get(ticket_id)
        if record is None or record.pending.requester != caller:
            raise NotFound(f"{caller} has no ticket {ticket_id!r}")
        return record

    async def _owned_logged(self, ticket_id: str, caller: MemberId) -> TicketRecord:
        """``_owned``, logging a refusal (a probe of another member's ticket) first."""
        record = self._store.get(ticket_id)
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
                expired = self._owned(ticket_id, caller)
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
        if record.state == ticket_pb2.TICKET_STATE_EXPIRED:
            raise Expired(record.detail or f"ticket {record.pending.request_id} expired")
        if record.state == ticket_pb2.TICKET_STATE_ANSWERED:
            return record
        pending = record.pending
        lock, users = self._locks.get(pending.request_id, (asyncio.Lock(), 0))
        self._locks[pending.request_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._poll(record, pending)
        finally:
            lock, users = self._locks[pending.request_id]
            if users == 1:
                del self._locks[pending.request_id]
            else:
                self._locks[pending.request_id] = (lock, users - 1)

    async def _poll(self, record: TicketRecord, pending: PendingRequest) -> TicketRecord:
        # Another caller may have fetched the answer while this one waited for the lock.
        current = self._store.get(pending.request_id) or record
        if current.state in _FINAL:
            return await self._refresh(current)
        result = await self._router.get_result(
            pending.target, pending.request_id, timeout=self._node_timeout_s
        )
        finisher = self._require_finisher()
        if result.HasField("response") and result.response.body:
            signed, status = await finisher.finish(pending, result.response)
            if status == "expired":
                detail = _expired_detail(pending, signed)
                self._store.update(
                    replace(current, state=ticket_pb2.TICKET_STATE_EXPIRED, detail=detail)
                )
                raise Expired(detail)
            answered = replace(
                current, state=ticket_pb2.TICKET_STATE_ANSWERED, signed_response=signed
            )
            self._store.update(answered)
            return answered
        if result.state == ticket_pb2.TICKET_STATE_EXPIRED:
            deadline = format_time(pending.deadline)
            detail = f"{pending.target} did not answer before the deadline {deadline}"
            await finisher.record_expiry(pending, detail=detail)
            self._store.update(
                replace(current, state=ticket_pb2.TICKET_STATE_EXPIRED, detail=detail)
            )
            raise Expired(detail)
        if (
            result.state in (ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_CLAIMED)
            and result.state != current.state
        ):
            current = replace(current, state=result.state)
            self._store.update(current)
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
