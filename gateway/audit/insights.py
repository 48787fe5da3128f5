"""Read-only queries over an audit shard (SQLite or PostgreSQL) for the auditor console.

``AuditLog.search`` pages oldest first; an auditor's list wants the newest first, and the
console's charts and pattern flags need counts per day, per officer and per refusal reason.
``LogInsights`` answers those from the searchable columns only (through the store's indexes on
officer, case, request id, members, time and subjects), aggregating in SQL with ``GROUP BY``:
it never reads or decodes a leaf. Days are China Standard Time days (UTC+8).

It opens its own read-only connection to the shard's database on its own thread, so the
gateway's writer and the log's reader never wait for the console. Both stores get the same
queries (``_statements``); on PostgreSQL they take ``%s`` placeholders, are scoped to the
shard's origin (every table there is keyed by it), compare text in byte order like SQLite
(``COLLATE "C"``) and spell two things their own way (lists, the refusal's reason code).

Contract:

- It MUST NOT write: the SQLite connection is opened ``mode=ro``; every PostgreSQL
  transaction is READ ONLY (``default_transaction_read_only``).
- SQL text is fixed; every value is a parameter (lists go in as one parameter: JSON read with
  ``json_each`` on SQLite, an array on PostgreSQL). Database errors raise ``AuditUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import psycopg

from fedgate.errors import AuditUnavailable, InvalidArgument
from fedgate.storage import open_sqlite, prepare_sqlite
from gateway.audit import _search
from gateway.audit.pg_store import DEFAULT_SCHEMA, connect_reader
from gateway.audit.sqlite_store import AUDIT_SCHEMA
from gateway.audit.store import IndexedRow, SearchQuery

__all__ = [
    "CST_OFFSET_US",
    "GROUPINGS",
    "US_PER_DAY",
    "CaseWithoutOrder",
    "DayCount",
    "LogInsights",
    "OfficerDay",
    "PgShard",
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
ROLLUP_WAIT_S: Final = 1.0
"""How long a chart or flag waits for the rollups to cover what was committed when asked, on a
shard whose writer is in this process (``LogInsights.open``'s ``catch_up``)."""


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
    origin: str = ""
    """The shard ``first_index`` is in, when rows of several shards are merged."""


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
    origin: str = ""
    """The shard ``first_index`` is in, when rows of several shards are merged."""


GROUPINGS: Final = ("requester", "target", "action")
"""What ``per_day`` can group request legs by: requesting member, target member, action."""


@dataclass(frozen=True, slots=True)
class PgShard:
    """An audit shard in PostgreSQL: ``dsn`` (libpq; left out of ``repr``, it may hold a
    password), the shard's ``origin`` and the ``schema`` holding every shard."""

    dsn: str = field(repr=False)
    origin: str
    schema: str = DEFAULT_SCHEMA


_DAY = f"((time_us + {CST_OFFSET_US}) / {US_PER_DAY})"
_HOUR = f"(((time_us + {CST_OFFSET_US}) / {US_PER_HOUR}) % 24)"
_COLUMN_OF: Final = {
    "requester": "requesting_agency",
    "target": "target_agency",
    "action": "action",
}


@dataclass(frozen=True, slots=True)
class _Statements:
    """One store's queries (see ``_statements``) and placeholder ``p``. On PostgreSQL the first
    parameter of each is the shard's origin (``where`` starts the list's filters with it)."""

    p: str
    checkpoint_before: str
    per_day: dict[str, str]
    refusals: str
    officer_days: str
    off_hours: str
    refusal_days: str
    without_order: str
    rollup_per_day: str
    rollup_refusals: str
    rollup_officer_days: str
    rollup_off_hours: str
    rollup_refusal_days: str


def _statements(*, pg: bool) -> _Statements:
    """The queries in SQLite's dialect, or in PostgreSQL's: origin-scoped, text ordered
    byte-wise as in SQLite, ``= ANY`` for lists, ``split_part`` for the reason code, and
    ``%s`` placeholders (``_pg_text``)."""
    o = "origin = ? AND " if pg else ""
    c = ' COLLATE "C"' if pg else ""
    listed = " = ANY(?)" if pg else " IN (SELECT value FROM json_each(?))"
    code = (
        "split_part(reason, ':', 1)" if pg else "substr(reason, 1, instr(reason || ':', ':') - 1)"
    )
    officer_day = (
        f"SELECT requesting_agency, officer_id, {_DAY} AS d, count(*), min(idx) FROM leaves"  # noqa: S608 - constant
        f" WHERE {o}leg = 1 AND officer_id <> '' AND time_us >= ? AND time_us < ?"
        f" AND outcome = 'allowed' AND action{listed}"
    )
    officer_sums = "SELECT member, officer, day AS d, CAST(sum(n) AS BIGINT), min(first_idx)"
    officer_rollup = (
        f"{officer_sums} FROM rollup_officer"
        f" WHERE {o}day >= ? AND day < ? AND leg = 1 AND outcome = 'allowed' AND action{listed}"
    )
    statements = _Statements(
        p="?",
        rollup_per_day=(
            f"SELECT day, key, n FROM rollup_day WHERE {o}dim = ? AND day >= ? AND day < ?"  # noqa: S608 - constant
            f" ORDER BY day, key{c}"
        ),
        rollup_refusals=(
            "SELECT key AS code, CAST(sum(n) AS BIGINT) AS n FROM rollup_day"  # noqa: S608 - constant
            f" WHERE {o}dim = 'refusal' AND day >= ? AND day < ?"
            f" GROUP BY key ORDER BY n DESC, key{c}"
        ),
        rollup_officer_days=(
            f"{officer_rollup} GROUP BY member, officer, day ORDER BY d, member{c}, officer{c}"
        ),
        rollup_off_hours=(
            f"{officer_rollup} AND (hour < ? OR hour >= ?) GROUP BY member, officer, day"
            f" ORDER BY d DESC, member{c}, officer{c} LIMIT ?"
        ),
        rollup_refusal_days=(
            f"{officer_sums} FROM rollup_officer"
            f" WHERE {o}day >= ? AND day < ? AND outcome = 'refused' AND leg IN (1, 2)"
            " GROUP BY member, officer, day HAVING sum(n) >= ?"
            f" ORDER BY d DESC, member{c}, officer{c} LIMIT ?"
        ),
        # Search filters: fixed fragments chosen by which fields are set; values are parameters.
        # The ``<> ''`` terms let the stores use their partial indexes (``WHERE officer_id <>
        # ''`` ...): SQLite cannot tell that a bound parameter is not empty.
        checkpoint_before=(
            f"SELECT size, note FROM checkpoints WHERE {o}size < ?"  # noqa: S608 - constant
            " ORDER BY size DESC LIMIT 1"
        ),
        per_day={
            name: (
                f"SELECT {_DAY} AS d, {column}, count(*) FROM leaves"  # noqa: S608 - constant columns
                f" WHERE {o}leg = 1 AND time_us >= ? AND time_us < ?"
                f" GROUP BY d, {column} ORDER BY d, {column}{c}"
            )
            for name, column in _COLUMN_OF.items()
        },
        refusals=(
            f"SELECT CASE leg WHEN 1 THEN {code}"  # noqa: S608 - constant
            f" ELSE 'AGENCY_REFUSED' END{c} AS code, count(*) AS n FROM leaves"
            f" WHERE {o}outcome = 'refused' AND leg IN (1, 2) AND time_us >= ? AND time_us < ?"
            " GROUP BY code ORDER BY n DESC, code"
        ),
        officer_days=(
            f"{officer_day} GROUP BY requesting_agency, officer_id, d"
            f" ORDER BY d, requesting_agency{c}, officer_id{c}"
        ),
        off_hours=(
            f"{officer_day} AND ({_HOUR} < ? OR {_HOUR} >= ?)"
            " GROUP BY requesting_agency, officer_id, d"
            f" ORDER BY d DESC, requesting_agency{c}, officer_id{c} LIMIT ?"
        ),
        refusal_days=(
            f"SELECT requesting_agency, officer_id, {_DAY} AS d, count(*), min(idx) FROM leaves"  # noqa: S608 - constant
            f" WHERE {o}outcome = 'refused' AND leg IN (1, 2) AND officer_id <> ''"
            " AND time_us >= ? AND time_us < ?"
            " GROUP BY requesting_agency, officer_id, d HAVING count(*) >= ?"
            f" ORDER BY d DESC, requesting_agency{c}, officer_id{c} LIMIT ?"
        ),
        without_order=(
            "SELECT q.case_number, q.requesting_agency, q.officer_id, count(*), min(q.idx),"  # noqa: S608
            " min(q.time_us), max(q.time_us) FROM leaves AS q"
            f" WHERE {'q.' if pg else ''}{o}q.leg = 1 AND q.outcome = 'allowed'"
            " AND q.case_number <> '' AND q.time_us >= ? AND q.time_us < ?"
            f" AND q.action{listed}"
            " AND NOT EXISTS (SELECT 1 FROM leaves AS o WHERE"
            f"{' o.origin = q.origin AND' if pg else ''} o.case_number = q.case_number"
            " AND o.case_number <> '' AND o.leg = 1 AND o.outcome = 'allowed'"
            f" AND o.action{listed}"
            " AND o.time_us > q.time_us AND o.time_us <= q.time_us + ?)"
            " GROUP BY q.case_number, q.requesting_agency, q.officer_id"
            " ORDER BY min(q.time_us) DESC LIMIT ?"
        ),
    )
    if not pg:
        return statements
    return _Statements(
        p="%s",
        checkpoint_before=_pg_text(statements.checkpoint_before),
        per_day={k: _pg_text(v) for k, v in statements.per_day.items()},
        refusals=_pg_text(statements.refusals),
        officer_days=_pg_text(statements.officer_days),
        off_hours=_pg_text(statements.off_hours),
        refusal_days=_pg_text(statements.refusal_days),
        without_order=_pg_text(statements.without_order),
        rollup_per_day=_pg_text(statements.rollup_per_day),
        rollup_refusals=_pg_text(statements.rollup_refusals),
        rollup_officer_days=_pg_text(statements.rollup_officer_days),
        rollup_off_hours=_pg_text(statements.rollup_off_hours),
        rollup_refusal_days=_pg_text(statements.rollup_refusal_days),
    )


def _pg_text(statement: str) -> str:
    """A constant SQLite statement (``?`` placeholders, no ``?`` anywhere else) in psycopg's
    form: ``%s`` placeholders and ``%`` (modulo) doubled."""
    return statement.replace("%", "%%").replace("?", "%s")


_SQLITE: Final = _statements(pg=False)
_PG: Final = _statements(pg=True)


class _Reader(Protocol):
    """One read-only connection, used on the insights thread only."""

    def fetch(self, what: str, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of ``statement``; raises ``AuditUnavailable`` naming ``what`` failed."""
        ...

    def listed(self, values: Iterable[object]) -> object:
        """The one parameter standing for a list of values."""
        ...

    def close(self) -> None: ...


class _SqliteReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise AuditUnavailable(f"no audit log database at {path}")
        try:
            con = open_sqlite(path, read_only=True)
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"cannot read the audit log {path}: {exc}") from exc
        try:
            prepare_sqlite(con, AUDIT_SCHEMA, where=path, writable=False)
            con.execute("SELECT 1 FROM leaves LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            con.close()
            raise AuditUnavailable(f"cannot read the audit log {path}: {exc}") from exc
        except BaseException:
            con.close()
            raise
        self._con = con

    def fetch(self, what: str, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._con.execute(statement, params).fetchall()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"audit log {self.path}: cannot {what}: {exc}") from exc

    def listed(self, values: Iterable[object]) -> object:
        return json.dumps(list(values))

    def close(self) -> None:
        self._con.close()


class _PgReader:
    """A broken connection is reopened on the next query."""

    def __init__(self, shard: PgShard) -> None:
        self._shard = shard
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._conn = self._open()
        except psycopg.Error as exc:
            raise self._error("read the audit log", exc) from exc

    def _open(self) -> psycopg.Connection[Any]:
        s = self._shard
        return connect_reader(s.dsn, origin=s.origin, schema=s.schema)

    def _error(self, what: str, exc: psycopg.Error) -> AuditUnavailable:
        return AuditUnavailable(
            f"audit shard {self._shard.origin!r} (PostgreSQL): cannot {what}: {exc}"
        )

    def fetch(self, what: str, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._open()
            return self._conn.execute(statement.encode(), params).fetchall()
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def listed(self, values: Iterable[object]) -> object:
        return list(values)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class LogInsights:
    """Newest-first pages and aggregates over one audit shard (see the module doc).

    Build with ``await LogInsights.open(source)``; ``close`` when done.
    """

    def __init__(
        self,
        source: Path | PgShard,
        pool: concurrent.futures.ThreadPoolExecutor,
        *,
        rollups: bool = True,
        catch_up: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self._rollups = rollups
        self._catch_up = catch_up
        self._pool = pool
        self._reader: _Reader | None = None
        self._closed = False
        self.rollup_lag = 0
        """Entries committed but not yet in the rollups when the last chart or flag was read."""
        self._scope: tuple[object, ...] = ()
        self._sql = _SQLITE
        if isinstance(source, PgShard):
            self._sql, self._scope = _PG, (source.origin,)

    @classmethod
    async def open(
        cls,
        source: Path | PgShard,
        *,
        rollups: bool = True,
        catch_up: Callable[[], None] | None = None,
    ) -> LogInsights:
        """Open the SQLite file ``source``, or the PostgreSQL shard, read-only. Charts and
        flags over whole China-time days read the rollups (``_rollups``) unless ``rollups``
        is false; other windows aggregate the leaves. ``catch_up``: how to ask the shard's
        writer in this process to bring the rollups level now (``AuditLog.catch_up_soon``);
        without it a chart reads the rollups as they are, at once (``rollup_lag``). Raises
        ``AuditUnavailable`` when it is not an audit log or cannot be reached."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-insights")
        path = source if isinstance(source, PgShard) else Path(source)
        insights = cls(path, pool, rollups=rollups, catch_up=catch_up)
        try:
            await insights._run(insights._connect)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return insights

    def _connect(self) -> None:
        source = self.source
        self._reader = _PgReader(source) if isinstance(source, PgShard) else _SqliteReader(source)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise AuditUnavailable("the audit log insights are closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _rows(self, what: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``; on PostgreSQL the shard's origin goes before ``params``."""

        def run() -> list[tuple[Any, ...]]:
            if self._reader is None:
                raise AuditUnavailable("the audit log insights are closed")
            return self._reader.fetch(what, sql, self._scope + params)

        return await self._run(run)

    def _listed(self, values: Iterable[object]) -> object:
        if self._reader is None:
            raise AuditUnavailable("the audit log insights are closed")
        return self._reader.listed(values)

    async def close(self) -> None:
        def shut() -> None:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

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
        query = replace(
            query, after_index=-1, before_index=before_index, leg=leg, newest_first=True
        )
        dialect = _search.PG if self._scope else _search.SQLITE

        def run() -> list[IndexedRow]:
            reader = self._reader
            if reader is None:
                raise AuditUnavailable("the audit log insights are closed")

            def fetch(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                return reader.fetch("search", statement, params)

            return _search.search(fetch, dialect, self._scope, query)

        return await self._run(run)

    async def checkpoint_before(self, size: int) -> tuple[int, str] | None:
        """The signed checkpoint stored just before size ``size`` (size and note), if any."""
        rows = await self._rows("read checkpoints", self._sql.checkpoint_before, (size,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    # -- charts --------------------------------------------------------------------------------

    def _days(self, window: TimeWindow) -> tuple[int, int] | None:
        """``[first, stop)`` day numbers when ``window`` is whole China-time days and the
        rollups are on; ``None`` otherwise (aggregate the leaves)."""
        since, until = window.since_us + CST_OFFSET_US, window.until_us + CST_OFFSET_US
        if not self._rollups or since % US_PER_DAY or until % US_PER_DAY:
            return None
        return since // US_PER_DAY, until // US_PER_DAY

    async def _rollup_days(self, window: TimeWindow) -> tuple[int, int] | None:
        """``_days``; when the rollups are to be read and the shard's writer is in this
        process (``catch_up``), first ask it for a catch-up and wait (at most
        ``ROLLUP_WAIT_S``) until they cover every entry committed now, asking again each poll
        (one may have been running): a busy log's catch-ups may be spaced beyond the wait
        (``CATCH_UP_SPACING_S``).
        Another process's shard (no ``catch_up``) is read at once, as its writer keeps it
        (within the store's bound, ``docs/audit.md``). Either way ``rollup_lag`` records how
        many entries committed when asked the rollups still miss."""
        days = self._days(window)
        if days is None:
            return None
        dialect = _search.PG if self._scope else _search.SQLITE

        def state() -> tuple[int, int]:
            reader = self._reader
            if reader is None:
                raise AuditUnavailable("the audit log insights are closed")

            def fetch(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                return reader.fetch("read the rollups' state", statement, params)

            size = _search.next_index(fetch, dialect, self._scope)
            return size, _search.projected_to(fetch, dialect, self._scope)

        target, covered = await self._run(state)
        # Without a hook (another instance's shard) nothing here can hurry its writer, whose
        # catch-ups are spaced beyond the wait under load: waiting would only delay the page.
        if self._catch_up is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ROLLUP_WAIT_S
            while covered < target and loop.time() < deadline:
                self._catch_up()
                await asyncio.sleep(0.02)
                covered = (await self._run(state))[1]
        self.rollup_lag = max(0, target - covered)
        return days

    async def per_day(self, window: TimeWindow, by: str) -> list[DayCount]:
        """Request legs per China-time day grouped ``by`` one of ``GROUPINGS``."""
        sql = self._sql.per_day.get(by)
        if sql is None:
            raise InvalidArgument(f"group by one of {', '.join(GROUPINGS)}, not {by!r}")
        days = await self._rollup_days(window)
        if days is not None:
            rows = await self._rows("count per day", self._sql.rollup_per_day, (by, *days))
        else:
            rows = await self._rows("count per day", sql, (window.since_us, window.until_us))
        return [DayCount(_EPOCH_DAY + timedelta(days=d), key, n) for d, key, n in rows]

    async def refusals(self, window: TimeWindow) -> list[ReasonCount]:
        """Refusals by stable reason: the gateway's (request legs, the code before the colon of
        the rule) and the agencies' (response legs with status ``refused``)."""
        days = await self._rollup_days(window)
        if days is not None:
            rows = await self._rows("count refusals", self._sql.rollup_refusals, days)
        else:
            rows = await self._rows(
                "count refusals", self._sql.refusals, (window.since_us, window.until_us)
            )
        return [ReasonCount(code or "UNKNOWN", n) for code, n in rows]

    # -- pattern flags -------------------------------------------------------------------------

    async def officer_days(self, window: TimeWindow, actions: Collection[str]) -> list[OfficerDay]:
        """Request legs of ``actions`` per officer per day."""
        days = await self._rollup_days(window)
        listed = self._listed(sorted(actions))
        if days is not None:
            rows = await self._rows(
                "count per officer", self._sql.rollup_officer_days, (*days, listed)
            )
        else:
            rows = await self._rows(
                "count per officer",
                self._sql.officer_days,
                (window.since_us, window.until_us, listed),
            )
        return [_officer_day(r) for r in rows]

    async def off_hours(
        self, window: TimeWindow, actions: Collection[str], *, start_hour: int, end_hour: int
    ) -> list[OfficerDay]:
        """Request legs of ``actions`` before ``start_hour`` or from ``end_hour`` on (China
        time), per officer per day, latest day first."""
        days = await self._rollup_days(window)
        listed = self._listed(sorted(actions))
        if days is not None:
            rows = await self._rows(
                "count off-hours requests",
                self._sql.rollup_off_hours,
                (*days, listed, start_hour, end_hour, _MAX_ROWS),
            )
        else:
            rows = await self._rows(
                "count off-hours requests",
                self._sql.off_hours,
                (window.since_us, window.until_us, listed, start_hour, end_hour, _MAX_ROWS),
            )
        return [_officer_day(r) for r in rows]

    async def refusal_days(self, window: TimeWindow, *, minimum: int) -> list[OfficerDay]:
        """Officer-days with at least ``minimum`` refusals (by the gateway or the agency)."""
        days = await self._rollup_days(window)
        if days is not None:
            rows = await self._rows(
                "count refusals per officer",
                self._sql.rollup_refusal_days,
                (*days, minimum, _MAX_ROWS),
            )
        else:
            rows = await self._rows(
                "count refusals per officer",
                self._sql.refusal_days,
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
            self._sql.without_order,
            (
                window.since_us,
                window.until_us,
                self._listed(sorted(queries)),
                self._listed(sorted(orders)),
                within_us,
                _MAX_ROWS,
            ),
        )
        return [CaseWithoutOrder(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


def _officer_day(row: tuple[Any, ...]) -> OfficerDay:
    member, officer, d, count, first = row
    return OfficerDay(member, officer, _EPOCH_DAY + timedelta(days=d), count, first)
