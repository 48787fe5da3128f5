"""The centre's countermeasure statistics: daily counts, never a person.

A projection of the two logs, kept incrementally in its own small SQLite file (the audit log's
stores are not touched): ``catch_up`` reads the audit entries and the risk list changes
appended since its cursors and adds them up per day (China Standard Time, as the console):

- ``intercepted`` (keys ``voice``, ``sms``): the blocked calls and SMS that carriers (and only
  carriers) report as
  audited ``interception_counts`` events (absolute per carrier, day and kind: the latest
  report of each wins, so a repeated report never counts twice);
- ``listed`` (keys: the categories): risk list additions;
- ``warnings`` (key: the reporting member): early warnings the gateway delivered to police;
- ``dissuasion`` (keys ``contacted_in_time``, ``persuaded``, ``already_paid``): from police
  members' ``dissuasion_contact`` events (any member may record events; only these count).

It is rebuilt from the logs when its file is lost (the cursors start again at 0).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from fedgate.audit_entry import EventEntry, RequestLeg, decode_entry
from fedgate.errors import AuditUnavailable, VerificationError
from fedgate.risklist import CATEGORY_NAMES, decode_change
from fedgate.storage import Schema, open_store
from fedgate.v1 import risklist_pb2
from gateway.audit.insights import DayCount, day_of
from gateway.audit.log import AuditLog
from gateway.risklist._log import RiskListLog

__all__ = ["METRICS", "STORE", "CentreStats"]

METRICS: Final = ("intercepted", "listed", "warnings", "dissuasion")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daily (
    day TEXT NOT NULL, metric TEXT NOT NULL, key TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, metric, key)
);
CREATE TABLE IF NOT EXISTS reported (
    member TEXT NOT NULL, day TEXT NOT NULL, kind TEXT NOT NULL, blocked INTEGER NOT NULL,
    PRIMARY KEY (member, day, kind)
);
"""

STORE = Schema(store="countermeasure statistics", version=1, create=_SCHEMA)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


class CentreStats:
    """Daily countermeasure counts (see the module). Thread-safe."""

    def __init__(self, path: Path, *, member_kind: Callable[[str], str]) -> None:
        """``member_kind`` gives a member's kind from the registry (``""`` if unknown): only
        carriers' interception counts and police members' dissuasion events are counted."""
        self._kind = member_kind
        # A projection, rebuilt from the logs if lost: NORMAL durability is enough.
        self._db = open_store(path, STORE, error=AuditUnavailable, synchronous="NORMAL")
        self._lock = threading.Lock()
        self._catching_up = asyncio.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _cursor(self, name: str) -> int:
        row = self._db.execute("SELECT position FROM cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    async def catch_up(self, audit: AuditLog, risklist: RiskListLog) -> None:
        """Count what both logs gained since the last call."""
        async with self._catching_up:
            with self._lock:
                audit_at, list_at = self._cursor("audit"), self._cursor("risklist")
            while audit_at < audit.size:
                stop = min(audit.size, audit_at + _BATCH)
                entries = [await audit.open_entry(i) for i in range(audit_at, stop)]
                await asyncio.to_thread(self._count_audit, entries, stop)
                audit_at = stop
            while list_at < risklist.size:
                stop = min(risklist.size, list_at + _BATCH)
                leaves, _ = await asyncio.to_thread(risklist.read, list_at, stop)
                await asyncio.to_thread(self._count_list, leaves, stop)
                list_at = stop

    def _add(self, counts: Counter[tuple[str, str, str]]) -> None:
        for (day, metric, key), n in counts.items():
            self._db.execute(
                "INSERT INTO daily (day, metric, key, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, metric, key) DO UPDATE SET count = count + excluded.count",
                (day, metric, key, n),
            )

    def _count_audit(self, leaves: list[bytes], stop: int) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        reports: dict[tuple[str, str, str], int] = {}
        for leaf in leaves:
            try:
                entry = decode_entry(leaf)
            except VerificationError:
                continue  # the auditors' verify reports it; statistics skip it
            if isinstance(entry, RequestLeg):
                if entry.action == "early_warning" and entry.decision == "allowed":
                    day = day_of(_us(entry.received_at)).isoformat()
                    counts[(day, "warnings", entry.requesting_agency)] += 1
            elif isinstance(entry, EventEntry):
                detail = dict(entry.detail)
                if entry.kind == "dissuasion_contact" and self._kind(entry.member) == "police":
                    day = day_of(_us(entry.at)).isoformat()
                    outcome = detail.get("outcome", "")
                    if detail.get("within_deadline") == "yes" and outcome != "not_reached":
                        counts[(day, "dissuasion", "contacted_in_time")] += 1
                    if outcome in ("persuaded", "already_paid"):
                        counts[(day, "dissuasion", outcome)] += 1
                elif entry.kind == "interception_counts" and self._kind(entry.member) == "carrier":
                    kind, day_text = detail.get("kind", ""), detail.get("day", "")
                    if kind in ("voice", "sms") and detail.get("blocked", "").isdigit():
                        reports[(entry.member, day_text, kind)] = int(detail["blocked"])
        with self._lock, self._db:
            self._add(counts)
            for (member, day_text, kind), blocked in reports.items():
                self._db.execute(
                    "INSERT INTO reported (member, day, kind, blocked) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (member, day, kind) DO UPDATE SET blocked = excluded.blocked",
                    (member, day_text, kind, blocked),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO cursors (name, position) VALUES ('audit', ?)", (stop,)
            )

    def _count_list(self, leaves: list[bytes], stop: int) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        for leaf in leaves:
            change = decode_change(leaf)
            if change.kind == risklist_pb2.RISK_CHANGE_KIND_ADD:
                day = day_of(_us(change.changed_at.ToDatetime(tzinfo=UTC))).isoformat()
                counts[(day, "listed", CATEGORY_NAMES[change.entry.category])] += 1
        with self._lock, self._db:
            self._add(counts)
            self._db.execute(
                "INSERT OR REPLACE INTO cursors (name, position) VALUES ('risklist', ?)", (stop,)
            )

    def per_day(self, metric: str, first: date, days: int) -> list[DayCount]:
        """``metric``'s counts per day and key for ``days`` days from ``first``."""
        last = first + timedelta(days=days - 1)
        with self._lock:
            if metric == "intercepted":
                rows = self._db.execute(
                    "SELECT day, kind, sum(blocked) FROM reported WHERE day >= ? AND day <= ? "
                    "GROUP BY day, kind",
                    (first.isoformat(), last.isoformat()),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT day, key, count FROM daily WHERE metric = ? AND day >= ? AND day <= ?",
                    (metric, first.isoformat(), last.isoformat()),
                ).fetchall()
        return [DayCount(date.fromisoformat(d), str(k), int(n)) for d, k, n in rows]
