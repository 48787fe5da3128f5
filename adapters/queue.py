"""The node's durable ledger of requests: every signed answer, and the stationed-staff queue.

One SQLite file (``node.sqlite`` in the node's state directory; WAL, ``synchronous=FULL``) holds
one row per request id the node has accepted. An automatic answer is stored answered; a manual
request waits in the queue until a staff member claims and answers or rejects it, or its
deadline passes and the node answers ``EXPIRED``.

Contract:

- A row MUST be durable before the node acknowledges the request (answer or queue ack), so a
  repeated delivery returns the same signed bytes and nothing acknowledged is lost to a crash.
- A stored answer MUST NOT change (a trigger refuses it): the first signed answer is the answer.
- Only the staff member holding a claim may answer, reject or release it.
- Staff of another agency never see this queue: a node's store holds only its own requests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from adapters._sqlite import Database, decode_page_token, encode_page_token, from_us, to_us
from fedgate.envelope import decode_request
from fedgate.errors import FieldViolation, InvalidArgument, NotFound, RuleViolated
from fedgate.storage import Schema
from fedgate.types import RequestId
from fedgate.v1 import envelope_pb2, staff_service_pb2, ticket_pb2

__all__ = [
    "ANSWERED",
    "CLAIMED",
    "EXPIRED",
    "OPEN_STATES",
    "STORE_FILE",
    "WAITING",
    "Entry",
    "RequestStore",
    "SignAnswer",
]

STORE_FILE = "node.sqlite"
WAITING = ticket_pb2.TICKET_STATE_WAITING
CLAIMED = ticket_pb2.TICKET_STATE_CLAIMED
ANSWERED = ticket_pb2.TICKET_STATE_ANSWERED
EXPIRED = ticket_pb2.TICKET_STATE_EXPIRED
OPEN_STATES: tuple[int, ...] = (WAITING, CLAIMED)
_MAX_PAGE = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    request_hash BLOB NOT NULL,
    envelope BLOB NOT NULL,
    action TEXT NOT NULL,
    manual INTEGER NOT NULL,
    state INTEGER NOT NULL,
    received_us INTEGER NOT NULL,
    deadline_us INTEGER NOT NULL DEFAULT 0,
    remind_us INTEGER NOT NULL DEFAULT 0,
    reminded INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT NOT NULL DEFAULT '',
    answered_by TEXT NOT NULL DEFAULT '',
    answered_us INTEGER NOT NULL DEFAULT 0,
    response BLOB,
    log_origin TEXT NOT NULL DEFAULT '',
    leaf_index INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(state, deadline_us, seq);
CREATE TRIGGER IF NOT EXISTS requests_answer_immutable
BEFORE UPDATE OF response, request_hash, envelope ON requests
WHEN OLD.response IS NOT NULL OR NEW.request_hash IS NOT OLD.request_hash
    OR NEW.envelope IS NOT OLD.envelope
BEGIN
    SELECT RAISE(ABORT, 'a stored request or answer never changes');
END;
CREATE TRIGGER IF NOT EXISTS requests_no_delete BEFORE DELETE ON requests
BEGIN
    SELECT RAISE(ABORT, 'requests are never deleted');
END;
"""

_STORE = Schema(store="node request store", version=1, create=_SCHEMA, legacy_table="requests")

_COLUMNS = (
    "request_id, request_hash, envelope, action, manual, state, received_us, deadline_us,"
    " remind_us, claimed_by, answered_by, answered_us, response, log_origin, leaf_index, seq"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One request the node accepted, with its answer once there is one."""

    request_id: RequestId
    request_hash: bytes
    envelope: bytes
    action: str
    manual: bool
    state: int
    received_at: datetime
    deadline: datetime | None
    remind_at: datetime | None
    claimed_by: str
    answered_by: str
    answered_at: datetime | None
    response: bytes | None
    log_origin: str
    leaf_index: int
    seq: int = 0

    @property
    def signed_response(self) -> envelope_pb2.SignedEnvelope | None:
        """The stored signed answer, parsed from the bytes exactly as stored."""
        if self.response is None:
            return None
        return envelope_pb2.SignedEnvelope.FromString(self.response)

    @property
    def request_envelope(self) -> envelope_pb2.SignedEnvelope:
        return envelope_pb2.SignedEnvelope.FromString(self.envelope)

    def queue_item(self) -> staff_service_pb2.QueueItem:
        """The entry as staff see it (request details decoded from the stored envelope)."""
        envelope = self.request_envelope
        request = decode_request(envelope.body)
        item = staff_service_pb2.QueueItem(
            request_id=self.request_id,
            request=envelope,
            requesting_agency=request.requesting_agency,
            officer=request.officer,
            case=request.case,
            legal_document=request.legal_document,
            action=self.action,
            urgency=request.urgency,
            state=self.state,  # type: ignore[arg-type]
            claimed_by=self.claimed_by,
            answered_by=self.answered_by,
        )
        item.received_at.FromDatetime(self.received_at)
        if self.deadline is not None:
            item.deadline.FromDatetime(self.deadline)
        if self.remind_at is not None:
            item.remind_at.FromDatetime(self.remind_at)
        return item


SignAnswer = Callable[[Entry], bytes]
"""Builds and signs the answer for an entry; returns the serialized ``SignedEnvelope``."""


def _entry(row: Sequence[object]) -> Entry:
    (rid, rhash, env, action, manual, state, received, deadline, remind, claimed_by,
     answered_by, answered, response, origin, leaf, seq) = row  # fmt: skip
    return Entry(
        request_id=RequestId(str(rid)),
        request_hash=bytes(rhash),  # type: ignore[call-overload]
        envelope=bytes(env),  # type: ignore[call-overload]
        action=str(action),
        manual=bool(manual),
        state=int(state),  # type: ignore[call-overload]
        received_at=from_us(int(received)),  # type: ignore[call-overload]
        deadline=from_us(int(deadline)) if manual else None,  # type: ignore[call-overload]
        remind_at=from_us(int(remind)) if manual else None,  # type: ignore[call-overload]
        claimed_by=str(claimed_by),
        answered_by=str(answered_by),
        answered_at=from_us(int(answered)) if answered else None,  # type: ignore[call-overload]
        response=None if response is None else bytes(response),  # type: ignore[call-overload]
        log_origin=str(origin),
        leaf_index=int(leaf),  # type: ignore[call-overload]
        seq=int(seq),  # type: ignore[call-overload]
    )


class RequestStore:
    """The durable request ledger and staff queue of one node. Methods block (run them in a
    worker thread from async code) and raise ``AgencyUnavailable`` on a database error."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(path, schema=_STORE)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> RequestStore:
        return cls(Path(state_dir) / STORE_FILE)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reads

    def get(self, request_id: str) -> Entry | None:
        with self._db.read() as conn:
            return self._get(conn, request_id)

    @staticmethod
    def _get(conn: sqlite3.Connection, request_id: str) -> Entry | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM requests WHERE request_id = ?",  # noqa: S608 - constant
            (request_id,),
        ).fetchone()
        return None if row is None else _entry(row)

    def _must_get(self, conn: sqlite3.Connection, request_id: str) -> Entry:
        entry = self._get(conn, request_id)
        if entry is None or not entry.manual:
            raise NotFound(f"no queued request {request_id} at this agency")
        return entry

    def list(
        self, states: Sequence[int], *, page_size: int = 100, page_token: str = ""
    ) -> tuple[tuple[Entry, ...], str]:
        """Manual entries in ``states``, earliest deadline first, one page at a time."""
        if not 0 <= page_size <= _MAX_PAGE:
            raise InvalidArgument.for_fields(
                [FieldViolation("page.page_size", f"must be 0..{_MAX_PAGE}")]
            )
        size = page_size or 100
        wanted = sorted(set(states))
        after = decode_page_token(page_token, "queue", *wanted)
        after_deadline, after_seq = after if after is not None else (-(1 << 62), 0)
        marks = ",".join("?" * len(wanted))
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE manual = 1"  # noqa: S608 - placeholders
                f" AND state IN ({marks}) AND (deadline_us, seq) > (?, ?)"
                " ORDER BY deadline_us, seq LIMIT ?",
                (*wanted, after_deadline, after_seq, size + 1),
            ).fetchall()
        entries = tuple(_entry(r) for r in rows[:size])
        token = ""
        if len(rows) > size:
            last = entries[-1]
            assert last.deadline is not None
            token = encode_page_token(to_us(last.deadline), last.seq, "queue", *wanted)
        return entries, token

    def depth(self) -> int:
        """Manual requests still open (waiting or claimed)."""
        with self._db.read() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM requests WHERE manual = 1 AND state IN (?, ?)", OPEN_STATES
            ).fetchone()
        return int(n)

    # ------------------------------------------------------------------ writes

    def record_answer(self, entry: Entry) -> Entry:
        """Store an automatic answer; if the request id is already stored, return that entry
        unchanged (the first answer wins)."""
        assert entry.response is not None
        assert not entry.manual
        return self._insert(entry)

    def enqueue(self, entry: Entry) -> Entry:
        """Put a manual request in the queue (waiting); an existing entry is returned as is."""
        assert entry.manual
        assert entry.deadline is not None
        assert entry.remind_at is not None
        return self._insert(replace(entry, state=WAITING, response=None))

    def _insert(self, e: Entry) -> Entry:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO requests(request_id, request_hash, envelope, action, manual, state,"
                " received_us, deadline_us, remind_us, answered_by, answered_us, response,"
                " log_origin, leaf_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(request_id) DO NOTHING",
                (e.request_id, e.request_hash, e.envelope, e.action, int(e.manual), e.state,
                 to_us(e.received_at), to_us(e.deadline) if e.deadline else 0,
                 to_us(e.remind_at) if e.remind_at else 0, e.answered_by,
                 to_us(e.answered_at) if e.answered_at else 0, e.response, e.log_origin,
                 e.leaf_index),
            )  # fmt: skip
            stored = self._get(conn, e.request_id)
        assert stored is not None
        return stored

    def claim(self, request_id: str, staff_id: str) -> Entry:
        """Claim a waiting item for ``staff_id`` (claiming one's own claim again is a no-op)."""
        with self._db.write() as conn:
            entry = self._must_get(conn, request_id)
            if entry.state == CLAIMED and entry.claimed_by == staff_id:
                return entry
            self._require_state(entry, WAITING, "claimed")
            conn.execute(
                "UPDATE requests SET state = ?, claimed_by = ? WHERE request_id = ?",
                (CLAIMED, staff_id, request_id),
            )
            return replace(entry, state=CLAIMED, claimed_by=staff_id)

    def release(self, request_id: str, staff_id: str) -> Entry:
        """Give a claimed item back to the queue; only its claimant may."""
        with self._db.write() as conn:
            entry = self._must_get(conn, request_id)
            self._require_claimant(entry, staff_id)
            conn.execute(
                "UPDATE requests SET state = ?, claimed_by = '' WHERE request_id = ?",
                (WAITING, request_id),
            )
            return replace(entry, state=WAITING, claimed_by="")

    def answer(self, request_id: str, staff_id: str, sign: SignAnswer, now: datetime) -> Entry:
        """Answer (or reject) a claimed item: ``sign`` makes the signed response, stored in the
        same transaction. Only the claimant may answer."""
        with self._db.write() as conn:
            entry = self._must_get(conn, request_id)
            self._require_claimant(entry, staff_id)
            answered = replace(entry, state=ANSWERED, answered_by=staff_id, answered_at=now)
            response = sign(answered)
            conn.execute(
                "UPDATE requests SET state = ?, answered_by = ?, answered_us = ?, response = ?"
                " WHERE request_id = ?",
                (ANSWERED, staff_id, to_us(now), response, request_id),
            )
            return replace(answered, response=response)

    def expire_due(self, now: datetime, sign: SignAnswer) -> tuple[Entry, ...]:
        """Answer ``EXPIRED`` (via ``sign``) for every open item whose deadline has passed."""
        now_us = to_us(now)
        expired: list[Entry] = []
        if not self._any_open("deadline_us <= ?", now_us):  # common: skip the write lock
            return ()
        with self._db.write() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM requests"  # noqa: S608 - constant columns
                " WHERE state IN (?, ?) AND manual = 1 AND deadline_us <= ? ORDER BY seq",
                (*OPEN_STATES, now_us),
            ).fetchall()
            for row in rows:
                entry = replace(_entry(row), state=EXPIRED, answered_at=now)
                response = sign(entry)
                conn.execute(
                    "UPDATE requests SET state = ?, answered_us = ?, response = ?"
                    " WHERE request_id = ?",
                    (EXPIRED, now_us, response, entry.request_id),
                )
                expired.append(replace(entry, response=response))
        return tuple(expired)

    def due_reminders(self, now: datetime) -> tuple[Entry, ...]:
        """Open items whose reminder time has come, each returned once."""
        now_us = to_us(now)
        if not self._any_open("reminded = 0 AND remind_us <= ?", now_us):
            return ()
        with self._db.write() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM requests"  # noqa: S608 - constant columns
                " WHERE state IN (?, ?) AND manual = 1 AND reminded = 0 AND remind_us <= ?"
                " ORDER BY deadline_us, seq",
                (*OPEN_STATES, now_us),
            ).fetchall()
            conn.executemany(
                "UPDATE requests SET reminded = 1 WHERE request_id = ?", [(r[0],) for r in rows]
            )
        return tuple(_entry(r) for r in rows)

    def _any_open(self, condition: str, value: int) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM requests WHERE state IN (?, ?) AND manual = 1"  # noqa: S608
                f" AND {condition} LIMIT 1",  # callers pass constant conditions
                (*OPEN_STATES, value),
            ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ rules

    @staticmethod
    def _require_state(entry: Entry, state: int, verb: str) -> None:
        if entry.state == state:
            return
        if entry.state == CLAIMED:
            raise RuleViolated(
                f"request {entry.request_id} is claimed by {entry.claimed_by}: it cannot be"
                f" {verb} by anyone else"
            )
        name = ticket_pb2.TicketState.Name(entry.state).removeprefix("TICKET_STATE_").lower()  # type: ignore[arg-type]
        raise RuleViolated(f"request {entry.request_id} is {name}: it can no longer be {verb}")

    def _require_claimant(self, entry: Entry, staff_id: str) -> None:
        if entry.state == WAITING:
            raise RuleViolated(f"request {entry.request_id} is waiting: claim it first")
        self._require_state(entry, CLAIMED, "answered or released")
        if entry.claimed_by != staff_id:
            raise RuleViolated(
                f"request {entry.request_id} is claimed by {entry.claimed_by}, not {staff_id}"
            )
