"""A reference carrier subscriber system on SQLite, filled by ``adapters.synth``.

It implements :class:`adapters.carrier.backend.SubscriberSystem`. Safe to call
from several threads (one connection each; orders run under ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from adapters._sqlite import Database, decode_page_token, encode_page_token, from_us, to_us, utc_now
from adapters.carrier._schema import SCHEMA
from adapters.carrier.backend import (
    LOCATION_MAX_AGE,
    CallDirection,
    CallRecord,
    CallRecordPage,
    CellLocation,
    NumberState,
    NumberStatus,
    RecordKind,
    RegistrationChannel,
    SmsBlock,
    Subscriber,
)
from fedgate.errors import NotFound, RuleViolated
from fedgate.validate import (
    CARRIER_PREFIXES,
    FieldChecker,
    carrier_of_mobile,
    mobile_valid,
    resident_id_valid,
    window_valid,
)

__all__ = ["MAX_PAGE_SIZE", "ReferenceCarrier"]

MAX_PAGE_SIZE = 1000
"""The largest page of call records."""

_SENDER = re.compile(r"\+?\d{3,20}")
_MAX_AGE_US = int(LOCATION_MAX_AGE.total_seconds()) * 1_000_000

# The states an order may move a number from, and the state it moves it to.
_TRANSITIONS: dict[str, tuple[frozenset[NumberState], NumberState]] = {
    "suspend": (frozenset({NumberState.ACTIVE}), NumberState.SUSPENDED),
    "block": (frozenset({NumberState.ACTIVE, NumberState.SUSPENDED}), NumberState.BLOCKED),
    "restore": (frozenset({NumberState.SUSPENDED, NumberState.BLOCKED}), NumberState.ACTIVE),
}


def _record(row: tuple[Any, ...]) -> CallRecord:
    rid, number, ts, kind, direction, other, duration, cell = row
    return CallRecord(
        id=rid,
        number=number,
        ts=from_us(ts),
        kind=RecordKind(kind),
        direction=CallDirection(direction),
        other_number=other,
        duration_s=duration,
        cell_id=cell,
    )


class ReferenceCarrier:
    """One carrier's subscriber system on one SQLite file (created empty if missing).

    ``clock`` is kept for answers that depend on the time without an explicit
    ``now``; every current method takes its time as an argument. Raises
    ``ValueError`` if ``carrier_id`` is not a federation carrier or the file
    belongs to another carrier.
    """

    def __init__(
        self, *, path: Path, carrier_id: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        if carrier_id not in CARRIER_PREFIXES:
            raise ValueError(f"carrier_id {carrier_id!r} is not one of {sorted(CARRIER_PREFIXES)}")
        self._carrier_id = carrier_id
        self._clock = clock
        self._db = Database(path, schema=SCHEMA)
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('carrier_id', ?)", (carrier_id,)
            )
            (stored,) = conn.execute("SELECT value FROM meta WHERE key = 'carrier_id'").fetchone()
        if stored != carrier_id:
            self._db.close()
            raise ValueError(f"carrier_id {carrier_id!r} does not match the database's {stored!r}")

    @property
    def carrier_id(self) -> str:
        return self._carrier_id

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReferenceCarrier:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ checks

    def _check_number(self, checker: FieldChecker, number: str) -> None:
        if not mobile_valid(number):
            checker.check("phone_number", False, "not a mobile number")
        else:
            checker.check(
                "phone_number",
                carrier_of_mobile(number) == self._carrier_id,
                f"not in {self._carrier_id}'s number ranges",
            )

    def _valid_number(self, number: str) -> None:
        c = FieldChecker()
        self._check_number(c, number)
        c.raise_if_any()

    def _row(self, conn: sqlite3.Connection, number: str) -> tuple[Any, ...]:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT number, name, id_number, registered_ts, channel, state, state_ts,"
            " state_reason, state_order_ref FROM subscribers WHERE number = ?",
            (number,),
        ).fetchone()
        if row is None:
            raise NotFound(f"number {number} is not assigned at {self._carrier_id}")
        return row

    def _status(self, row: tuple[Any, ...]) -> NumberStatus:
        number, _, _, _, _, state, state_ts, reason, ref = row
        return NumberStatus(
            number=number,
            carrier_id=self._carrier_id,
            state=NumberState(state),
            since=from_us(state_ts),
            reason=reason,
            order_ref=ref,
        )

    # ------------------------------------------------------------------ queries

    def subscriber(self, number: str) -> Subscriber:
        """The registered owner of a number."""
        self._valid_number(number)
        with self._db.read() as conn:
            number, name, idn, registered, channel, state, *_ = self._row(conn, number)
        return Subscriber(
            number=number,
            carrier_id=self._carrier_id,
            name=name,
            id_number=idn,
            registered_at=from_us(registered),
            channel=RegistrationChannel(channel),
            status=NumberState(state),
        )

    def number_status(self, number: str) -> NumberStatus:
        """A number's state and the order that set it."""
        self._valid_number(number)
        with self._db.read() as conn:
            return self._status(self._row(conn, number))

    def sim_count(self, id_number: str) -> int:
        """Live (not cancelled) numbers registered under an ID number; 0 if none."""
        c = FieldChecker()
        c.check("id_number", resident_id_valid(id_number), "not a resident ID number")
        c.raise_if_any()
        with self._db.read() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM subscribers WHERE id_number = ? AND state != ?",
                (id_number, NumberState.CANCELLED.value),
            ).fetchone()
        return int(n)

    def call_records(
        self,
        number: str,
        start: datetime,
        end: datetime,
        *,
        page_size: int,
        page_token: str,
        include_sms: bool,
    ) -> CallRecordPage:
        """Calls (and SMS if asked) with ``start <= ts < end`` by (time, id), a page at a time."""
        c = FieldChecker()
        self._check_number(c, number)
        c.check("start", window_valid(start, end), "window must be time-zone aware, start < end")
        c.check("page_size", 1 <= page_size <= MAX_PAGE_SIZE, f"must be 1..{MAX_PAGE_SIZE}")
        c.raise_if_any()
        start_us, end_us = to_us(start), to_us(end)
        binding = ("records", number, start_us, end_us, include_sms)
        after = decode_page_token(page_token, *binding)
        after_ts, after_id = after if after is not None else (start_us - 1, 0)
        kinds = ("voice", "sms") if include_sms else ("voice", "voice")
        with self._db.read() as conn:
            self._row(conn, number)
            rows = conn.execute(
                "SELECT id, number, ts, kind, direction, other_number, duration_s, cell_id"
                " FROM records WHERE number = ? AND ts >= ? AND ts < ? AND (ts, id) > (?, ?)"
                " AND kind IN (?, ?) ORDER BY ts, id LIMIT ?",
                (number, start_us, end_us, after_ts, after_id, *kinds, page_size + 1),
            ).fetchall()
        token = ""
        if len(rows) > page_size:
            last = rows[page_size - 1]
            token = encode_page_token(last[2], last[0], *binding)
        return CallRecordPage(
            records=tuple(_record(r) for r in rows[:page_size]), next_page_token=token
        )

    def location(self, number: str, at: datetime) -> CellLocation:
        """The cell last seen for the number at or before ``at`` (within 24 hours)."""
        c = FieldChecker()
        self._check_number(c, number)
        c.check("at", at.utcoffset() is not None, "must carry a time zone")
        c.raise_if_any()
        at_us = to_us(at)
        with self._db.read() as conn:
            self._row(conn, number)
            row = conn.execute(
                "SELECT l.ts, l.cell_id, c.lat, c.lon, c.radius_m"
                " FROM locations l JOIN cells c ON c.cell_id = l.cell_id"
                " WHERE l.number = ? AND l.ts <= ? AND l.ts > ? ORDER BY l.ts DESC, l.id DESC"
                " LIMIT 1",
                (number, at_us, at_us - _MAX_AGE_US),
            ).fetchone()
        if row is None:
            raise NotFound("no location of phone_number within 24 hours before that time")
        ts, cell, lat, lon, radius = row
        return CellLocation(
            number=number,
            cell_id=cell,
            lat=round(lat, 2),
            lon=round(lon, 2),
            radius_m=radius,
            observed_at=from_us(ts),
        )

    # ------------------------------------------------------------------ orders

    def suspend(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Suspend (停机) an active number."""
        return self._order("suspend", number, order_ref, reason, now)

    def block(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Block (封停) an active or suspended number as fraud-linked."""
        return self._order("block", number, order_ref, reason, now)

    def restore(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Restore (复机) a suspended or blocked number to service."""
        return self._order("restore", number, order_ref, reason, now)

    def _order(
        self, action: str, number: str, order_ref: str, reason: str, now: datetime
    ) -> NumberStatus:
        c = FieldChecker()
        self._check_number(c, number)
        self._check_order(c, order_ref, reason)
        c.raise_if_any()
        allowed, target = _TRANSITIONS[action]
        now_us = to_us(now)
        with self._db.write() as conn:
            row = self._row(conn, number)
            state = NumberState(row[5])
            if state not in allowed:
                raise RuleViolated(f"cannot {action} phone_number: it is {state}")
            self._claim_ref(conn, order_ref, number, action, reason, now_us)
            conn.execute(
                "UPDATE subscribers SET state = ?, state_ts = ?, state_reason = ?,"
                " state_order_ref = ? WHERE number = ?",
                (target.value, now_us, reason, order_ref, number),
            )
            return self._status(self._row(conn, number))

    def block_sms_sender(
        self, sender: str, *, order_ref: str, reason: str, now: datetime
    ) -> SmsBlock:
        """Stop delivering SMS from ``sender`` (any number or service code) on this network."""
        c = FieldChecker()
        c.check("sender", _SENDER.fullmatch(sender) is not None, "must be 3..20 digits")
        self._check_order(c, order_ref, reason)
        c.raise_if_any()
        now_us = to_us(now)
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM sms_blocks WHERE sender = ?", (sender,)).fetchone():
                raise RuleViolated("sender is already blocked")
            self._claim_ref(conn, order_ref, sender, "block_sms", reason, now_us)
            conn.execute(
                "INSERT INTO sms_blocks(sender, order_ref, reason, since_ts) VALUES (?, ?, ?, ?)",
                (sender, order_ref, reason, now_us),
            )
        return SmsBlock(sender=sender, order_ref=order_ref, reason=reason, since=from_us(now_us))

    @staticmethod
    def _check_order(checker: FieldChecker, order_ref: str, reason: str) -> None:
        checker.check(
            "order_ref",
            0 < len(order_ref) <= 64 and order_ref.isprintable(),
            "must be 1..64 characters",
        )
        checker.check("reason", bool(reason.strip()), "must not be empty")

    @staticmethod
    def _claim_ref(
        conn: sqlite3.Connection, ref: str, target: str, action: str, reason: str, now_us: int
    ) -> None:
        if conn.execute("SELECT 1 FROM number_orders WHERE order_ref = ?", (ref,)).fetchone():
            raise RuleViolated("order_ref has already been executed")
        conn.execute(
            "INSERT INTO number_orders(order_ref, number, action, reason, ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (ref, target, action, reason, now_us),
        )
