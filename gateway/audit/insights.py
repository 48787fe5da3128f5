"""Read-only queries over the SQLite audit store for the auditor console.

``AuditLog.search`` pages oldest first; an auditor's list wants the newest first, and the
console's charts and pattern flags need counts per day, per officer and per refusal reason.
``LogInsights`` answers those from the searchable columns only (through the store's indexes on
officer, case, request id, members, time and subjects), aggregating in SQL with ``GROUP BY``:
it never reads or decodes a leaf. Days are China Standard Time days (UTC+8).

It opens its own read-only connection to the shard's database on its own thread, so the
gateway's writer and the log's reader never wait for the console.

Contract:

- It MUST NOT write: the connection is opened ``mode=ro``.
- SQL text is fixed; every value is a parameter (lists go in as one JSON parameter read with
  ``json_each``). Database errors raise ``AuditUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from fedgate.errors import AuditUnavailable, InvalidArgument
from gateway.audit._rows import COLUMNS, SearchSql, add_filters, group_subjects, indexed_row
from gateway.audit.store import IndexedRow, SearchQuery

__all__ = [
    "CST_OFFSET_US",
    "GROUPINGS",
    "US_PER_DAY",
    "CaseWithoutOrder",
    "DayCount",
    "LogInsights",
    "OfficerDay",
    "ReasonCount",
    "TimeWindow",
    "day_of",
    "day_start_us",
]

T = TypeVar("T")

US_PER_HOUR: Final = 3_600_000_000
US_PER_DAY: Final = 24 * US_PER_HOUR
CST_OFFSET_US: Final = 8 * US_PER_HOUR
"""China Standard Time is UTC+8 all year."""
_EPOCH_DAY: Final = date(1970, 1, 1)
_MAX_ROWS: Final = 500


def day_of(time_us: int) -> date:
    """The China Standard Time date of a time in microseconds since the epoch."""
    return _EPOCH_DAY + timedelta(days=(time_us + CST_OFFSET_US) // US_PER_DAY)


def day_start_us(day: date) -> int:
    """Midnight China Standard Time at the start of ``day``, in microseconds."""
    return (day - _EPOCH_DAY).days * US_PER_DAY - CST_OFFSET_US


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """``[since_us, until_us)`` in microseconds since the epoch."""

    since_us: int
    until_us: int


@dataclass(frozen=True, slots=True)
class DayCount:
    """Request legs on one day (China time) for one value of the grouping column."""

    day: date
    key: str
    count: int


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """Refusals with one stable reason (``AGENCY_REFUSED`` for an agency's refusal)."""

    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class OfficerDay:
    """Matching entries of one officer of one member on one day; ``first_index`` is the
    oldest of them (a place to start reading)."""

    member: str
    officer_id: str
    day: date
    count: int
    first_index: int


@dataclass(frozen=True, slots=True)
class CaseWithoutOrder:
    """Personal-data queries of one officer in one case that no order in the case followed."""

    case_number: str
    member: str
    officer_id: str
    queries: int
    first_index: int
    first_us: int
    last_us: int


GROUPINGS: Final = ("requester", "target", "action")
"""What ``per_day`` can group request legs by: requesting member, target member, action."""

_ROW = f"idx, {COLUMNS}, request_leaf_index"
# Search filters: fixed fragments chosen by which fields are set; values are parameters. The
# ``<> ''`` terms let SQLite use the store's partial indexes (``WHERE officer_id <> ''`` ...):
# it cannot tell that a bound parameter is not empty.
_SEARCH: Final = SearchSql(
    fields=(
        ("officer_id", "officer_id = ? AND officer_id <> ''"),
        ("case_number", "case_number = ? AND case_number <> ''"),
        ("action", "action = ?"),
        ("outcome", "outcome = ?"),
        ("request_id", "request_id = ? AND request_id <> ''"),
    ),
    member="(requesting_agency = ? OR target_agency = ?)",
    subject="idx IN (SELECT idx FROM subjects WHERE subject = ?)",
    since="time_us >= ?",
    until="time_us < ?",
)
_DAY = f"((time_us + {CST_OFFSET_US}) / {US_PER_DAY})"
_HOUR = f"(((time_us + {CST_OFFSET_US}) / {US_PER_HOUR}) % 24)"
_PER_DAY_SQL: Final = {
    name: (
        f"SELECT {_DAY} AS d, {column}, count(*) FROM leaves"  # noqa: S608 - constant columns
        " WHERE leg = 1 AND time_us >= ? AND time_us < ?"
        f" GROUP BY d, {column} ORDER BY d, {column}"
    )
    for name, column in (
        ("requester", "requesting_agency"),
        ("target", "target_agency"),
        ("action", "action"),
    )
}
_REFUSALS_SQL: Final = (
    "SELECT CASE leg WHEN 1 THEN substr(reason, 1, instr(reason || ':', ':') - 1)"
    " ELSE 'AGENCY_REFUSED' END AS code, count(*) AS n FROM leaves"
    " WHERE outcome = 'refused' AND leg IN (1, 2) AND time_us >= ? AND time_us < ?"
    " GROUP BY code ORDER BY n DESC, code"
)
_OFFICER_DAYS_SQL: Final = (
    f"SELECT requesting_agency, officer_id, {_DAY} AS d, count(*), min(idx) FROM leaves"  # noqa: S608 - constant
    " WHERE leg = 1 AND officer_id <> '' AND time_us >= ? AND time_us < ?"
    " AND action IN (SELECT value FROM json_each(?))"
    " GROUP BY requesting_agency, officer_id, d ORDER BY d, requesting_agency, officer_id"
)
_OFF_HOURS_SQL: Final = (
    f"SELECT requesting_agency, officer_id, {_DAY} AS d, count(*), min(idx) FROM leaves"  # noqa: S608 - constant
    " WHERE leg = 1 AND officer_id <> '' AND time_us >= ? AND time_us < ?"
    " AND action IN (SELECT value FROM json_each(?))"
    f" AND ({_HOUR} < ? OR {_HOUR} >= ?)"
    " GROUP BY requesting_agency, officer_id, d ORDER BY d DESC, requesting_agency, officer_id"
    " LIMIT ?"
)
_REFUSAL_DAYS_SQL: Final = (
    f"SELECT requesting_agency, officer_id, {_DAY} AS d, count(*), min(idx) FROM leaves"  # noqa: S608 - constant
    " WHERE outcome = 'refused' AND leg IN (1, 2) AND officer_id <> ''"
    " AND time_us >= ? AND time_us < ?"
    " GROUP BY requesting_agency, officer_id, d HAVING count(*) >= ?"
    " ORDER BY d DESC, requesting_agency, officer_id LIMIT ?"
)
_WITHOUT_ORDER_SQL: Final = (
    "SELECT q.case_number, q.requesting_agency, q.officer_id, count(*), min(q.idx),"
    " min(q.time_us), max(q.time_us) FROM leaves AS q"
    " WHERE q.leg = 1 AND q.outcome = 'allowed' AND q.case_number <> ''"
    " AND q.time_us >= ? AND q.time_us < ?"
    " AND q.action IN (SELECT value FROM json_each(?))"
    " AND NOT EXISTS (SELECT 1 FROM leaves AS o WHERE o.case_number = q.case_number"
    " AND o.case_number <> '' AND o.leg = 1 AND o.outcome = 'allowed'"
    " AND o.action IN (SELECT value FROM json_each(?))"
    " AND o.time_us > q.time_us AND o.time_us <= q.time_us + ?)"
    " GROUP BY q.case_number, q.requesting_agency, q.officer_id"
    " ORDER BY min(q.time_us) DESC LIMIT ?"
)


def _json(values: Collection[str]) -> str:
    return json.dumps(sorted(values))


class LogInsights:
    """Newest-first pages and aggregates over one SQLite audit shard (see the module doc).

    Build with ``await LogInsights.open(path)``; ``close`` when done.
    """

    def __init__(self, path: Path, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self.path = path
        self._pool = pool
        self._con: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> LogInsights:
        """Open ``path`` read-only. Raises ``AuditUnavailable`` when it is not an audit log."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-insights")
        insights = cls(Path(path), pool)
        try:
            await insights._run(insights._connect)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return insights

    def _connect(self) -> None:
        if not self.path.exists():
            raise AuditUnavailable(f"no audit log database at {self.path}")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
            con.execute("PRAGMA busy_timeout = 10000")
            con.execute("SELECT 1 FROM leaves LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"cannot read the audit log {self.path}: {exc}") from exc
        self._con = con

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise AuditUnavailable("the audit log insights are closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _rows(self, what: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            if self._con is None:
                raise AuditUnavailable("the audit log insights are closed")
            try:
                return self._con.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditUnavailable(f"audit log {self.path}: cannot {what}: {exc}") from exc

        return await self._run(run)

    async def close(self) -> None:
        def shut() -> None:
            if self._con is not None:
                self._con.close()
                self._con = None

        if self._closed:
            return
        try:
            await self._run(shut)
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)

    # -- the list ------------------------------------------------------------------------------

    async def newest(
        self, query: SearchQuery, *, before_index: int | None = None, leg: int = 0
    ) -> list[IndexedRow]:
        """Entries matching ``query``'s filters (its ``after_index`` ignored), newest first, below
        ``before_index`` when given, at most ``query.limit``; ``leg`` (1, 2, 3) keeps one kind."""
        if not 1 <= query.limit <= _MAX_ROWS + 1:
            raise InvalidArgument(f"limit must be 1 to {_MAX_ROWS + 1}, got {query.limit}")
        where: list[str] = []
        params: list[object] = []
        if before_index is not None:
            where.append("idx < ?")
            params.append(before_index)
        if leg:
            where.append("leg = ?")
            params.append(leg)
        add_filters(query, _SEARCH, where, params)
        params.append(query.limit)
        sql = (
            f"SELECT {_ROW} FROM leaves"  # noqa: S608 - fixed fragments
            f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY idx DESC LIMIT ?"
        )
        hits = await self._rows("search", sql, tuple(params))
        if not hits:
            return []
        found = group_subjects(
            await self._rows(
                "read subjects",
                "SELECT idx, subject FROM subjects WHERE idx IN (SELECT value FROM json_each(?))"
                " ORDER BY idx, subject",
                (json.dumps([h[0] for h in hits]),),
            )
        )
        return [indexed_row(h, tuple(found.get(h[0], ()))) for h in hits]

    async def checkpoint_before(self, size: int) -> tuple[int, str] | None:
        """The signed checkpoint stored just before size ``size`` (size and note), if any."""
        rows = await self._rows(
            "read checkpoints",
            "SELECT size, note FROM checkpoints WHERE size < ? ORDER BY size DESC LIMIT 1",
            (size,),
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    # -- charts --------------------------------------------------------------------------------

    async def per_day(self, window: TimeWindow, by: str) -> list[DayCount]:
        """Request legs per China-time day grouped ``by`` one of ``GROUPINGS``."""
        sql = _PER_DAY_SQL.get(by)
        if sql is None:
            raise InvalidArgument(f"group by one of {', '.join(GROUPINGS)}, not {by!r}")
        rows = await self._rows("count per day", sql, (window.since_us, window.until_us))
        return [DayCount(_EPOCH_DAY + timedelta(days=d), key, n) for d, key, n in rows]

    async def refusals(self, window: TimeWindow) -> list[ReasonCount]:
        """Refusals by stable reason: the gateway's (request legs, the code before the colon of
        the rule) and the agencies' (response legs with status ``refused``)."""
        rows = await self._rows("count refusals", _REFUSALS_SQL, (window.since_us, window.until_us))
        return [ReasonCount(code or "UNKNOWN", n) for code, n in rows]

    # -- pattern flags -------------------------------------------------------------------------

    async def officer_days(self, window: TimeWindow, actions: Collection[str]) -> list[OfficerDay]:
        """Request legs of ``actions`` per officer per day."""
        rows = await self._rows(
            "count per officer",
            _OFFICER_DAYS_SQL,
            (window.since_us, window.until_us, _json(actions)),
        )
        return [_officer_day(r) for r in rows]

    async def off_hours(
        self, window: TimeWindow, actions: Collection[str], *, start_hour: int, end_hour: int
    ) -> list[OfficerDay]:
        """Request legs of ``actions`` before ``start_hour`` or from ``end_hour`` on (China
        time), per officer per day, latest day first."""
        rows = await self._rows(
            "count off-hours requests",
            _OFF_HOURS_SQL,
            (window.since_us, window.until_us, _json(actions), start_hour, end_hour, _MAX_ROWS),
        )
        return [_officer_day(r) for r in rows]

    async def refusal_days(self, window: TimeWindow, *, minimum: int) -> list[OfficerDay]:
        """Officer-days with at least ``minimum`` refusals (by the gateway or the agency)."""
        rows = await self._rows(
            "count refusals per officer",
            _REFUSAL_DAYS_SQL,
            (window.since_us, window.until_us, minimum, _MAX_ROWS),
        )
        return [_officer_day(r) for r in rows]

    async def without_order(
        self,
        window: TimeWindow,
        *,
        queries: Collection[str],
        orders: Collection[str],
        within_us: int,
    ) -> list[CaseWithoutOrder]:
        """Allowed ``queries`` in ``window`` after which no allowed order of ``orders`` in the
        same case came within ``within_us``, per case and officer, latest first."""
        rows = await self._rows(
            "find queries without orders",
            _WITHOUT_ORDER_SQL,
            (
                window.since_us,
                window.until_us,
                _json(queries),
                _json(orders),
                within_us,
                _MAX_ROWS,
            ),
        )
        return [CaseWithoutOrder(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


def _officer_day(row: tuple[Any, ...]) -> OfficerDay:
    member, officer, d, count, first = row
    return OfficerDay(member, officer, _EPOCH_DAY + timedelta(days=d), count, first)
