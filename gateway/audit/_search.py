"""The one search query of the audit stores and the auditor console, in both SQL dialects.

``SqliteDatabase.search``, ``PgDatabase.search`` and ``LogInsights.newest`` all build their
statement here, so the three cannot drift. Every filter is answered through an index, and every
index is ordered by leaf index within its key (SQLite keeps the rowid, here ``idx``, at the end of
every index; the PostgreSQL indexes end in ``idx``), so keyset paging (``idx > after`` /
``idx < before``) reads one page, not the log:

- officer, case and request id: their partial indexes (``WHERE col <> ''``). The statement
  repeats the ``col <> ''`` term: SQLite cannot tell that a bound parameter is not empty, and
  without it the partial index is not usable (the bug measured in issue 18).
- target, action, outcome, requesting member: their indexes; a subject: the subjects table.
- ``member`` (requesting OR target) and ``visible_to`` (the same): one branch per column, each a
  page read in index order, merged with ``UNION`` and cut to the page: an ``OR`` would make the
  database collect every hit of a large member and sort them.
- a time window: ``time_bounds`` turns it into a leaf-index range through ``time_blocks``
  (the least and greatest time of each complete block of 256 leaves, written as the block
  completes), so the window is read by primary key from its first block, not from the log's
  start. The time terms stay in the statement: the range is a superset, never a cut.

SQL text is fixed fragments chosen by which fields are set; every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.audit.store import SearchQuery

__all__ = [
    "BLOCK",
    "HIT_COLUMNS",
    "PG",
    "SQLITE",
    "Dialect",
    "search_statement",
    "time_bounds",
]

BLOCK: Final = 256
"""Leaves per time block: the width of a full C2SP level-0 tile."""

HIT_COLUMNS: Final = (
    "idx, leg, request_id, time_us, requesting_agency, officer_id, case_number, action,"
    " target_agency, outcome, reason, request_leaf_index"
)
"""A hit's columns: ``_rows.indexed_row`` order."""

Fetch = Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]]
"""Runs one statement with its parameters and returns its rows."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """SQLite (``?`` placeholders, one shard per file) or PostgreSQL (``%s``, every table keyed
    by ``origin``)."""

    pg: bool

    def text(self, statement: str) -> str:
        """A constant statement written with ``?`` placeholders, in this dialect."""
        return statement.replace("%", "%%").replace("?", "%s") if self.pg else statement

    @property
    def scope(self) -> str:
        return "origin = ? AND " if self.pg else ""


SQLITE: Final = Dialect(pg=False)
PG: Final = Dialect(pg=True)

# Equality filters: (field, fragment). The ``<> ''`` terms select the partial indexes.
_FIELDS: Final = (
    ("officer_id", "officer_id = ? AND officer_id <> ''"),
    ("case_number", "case_number = ? AND case_number <> ''"),
    ("request_id", "request_id = ? AND request_id <> ''"),
    ("target", "target_agency = ?"),
    ("action", "action = ?"),
    ("outcome", "outcome = ?"),
)
_MEMBER_COLUMNS: Final = ("requesting_agency = ?", "target_agency = ?")


def time_bounds(
    fetch: Fetch,
    dialect: Dialect,
    scope: tuple[Any, ...],
    since_us: int | None,
    until_us: int | None,
) -> tuple[int, int | None]:
    """``(lo, hi)``: every leaf with ``since_us <= time_us < until_us`` has ``lo <= idx`` and,
    when ``hi`` is not ``None``, ``idx < hi``. Three or four indexed lookups in ``time_blocks``
    and the open block's (at most 255) leaves."""
    s = dialect.scope
    rows = fetch(
        dialect.text(f"SELECT COALESCE(MAX(block) + 1, 0) FROM time_blocks WHERE {s}1 = 1"),  # noqa: S608
        scope,
    )
    edge = int(rows[0][0]) * BLOCK  # first leaf of the open (incomplete) block
    lo = 0
    if since_us is not None:
        rows = fetch(
            dialect.text(f"SELECT MIN(block) FROM time_blocks WHERE {s}max_us >= ?"),  # noqa: S608
            (*scope, since_us),
        )
        lo = edge if rows[0][0] is None else int(rows[0][0]) * BLOCK
    if until_us is None:
        return lo, None
    late = fetch(
        dialect.text(
            # ``+time_us``: read the open block by primary key (at most 255 rows), never
            # the time index from the log's start.
            f"SELECT 1 FROM leaves WHERE {s}idx >= ? AND +time_us < ? LIMIT 1"  # noqa: S608
        ),
        (*scope, edge, until_us),
    )
    if late:
        return lo, None
    rows = fetch(
        dialect.text(f"SELECT MAX(block) FROM time_blocks WHERE {s}min_us < ?"),  # noqa: S608
        (*scope, until_us),
    )
    return lo, 0 if rows[0][0] is None else (int(rows[0][0]) + 1) * BLOCK


def search_statement(
    query: SearchQuery,
    dialect: Dialect,
    scope: tuple[Any, ...],
    *,
    lo: int = 0,
    hi: int | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of ``query``'s page, in ``dialect``, its index range narrowed
    to ``[lo, hi)`` (from ``time_bounds``). It selects ``HIT_COLUMNS``."""
    where: list[str] = []
    params: list[Any] = []
    # Always bounded below: the primary key range is then the plan of last resort, never a scan.
    where.append("idx > ?")
    params.append(max(query.after_index, lo - 1))
    before = hi
    if query.before_index is not None:
        before = query.before_index if before is None else min(before, query.before_index)
    if before is not None:
        where.append("idx < ?")
        params.append(before)
    for name, fragment in _FIELDS:
        value = getattr(query, name)
        if value:
            where.append(fragment)
            params.append(value)
    if query.leg:
        where.append("leg = ?")
        params.append(query.leg)
    if query.subject:
        where.append(f"idx IN (SELECT idx FROM subjects WHERE {dialect.scope}subject = ?)")  # noqa: S608
        params += [*scope, query.subject]
    if query.since_us is not None:
        where.append("time_us >= ?")
        params.append(query.since_us)
    if query.until_us is not None:
        where.append("time_us < ?")
        params.append(query.until_us)
    order = "DESC" if query.newest_first else "ASC"
    ors = [m for m in (query.member, query.visible_to) if m]
    if not ors:
        conditions = " AND ".join([*(["origin = ?"] if dialect.pg else []), *where]) or "1 = 1"
        statement = (
            f"SELECT {HIT_COLUMNS} FROM leaves WHERE {conditions}"  # noqa: S608 - fixed fragments
            f" ORDER BY idx {order} LIMIT ?"
        )
        return dialect.text(statement), (*scope, *params, query.limit)
    # One branch per (column of member) x (column of visible_to): each reads its page in index
    # order; the union holds at most branches x limit indices.
    # A narrow filter (officer, case, request id, subject) beats a member's index: ``+column``
    # tells SQLite's planner not to use the member index then (PostgreSQL's planner weighs
    # the indexes by its statistics).
    narrow = query.officer_id or query.case_number or query.request_id or query.subject
    columns_of: tuple[str, ...] = _MEMBER_COLUMNS
    if narrow and not dialect.pg:
        columns_of = tuple(f"+{c}" for c in _MEMBER_COLUMNS)
    branches: list[tuple[str, ...]] = [()]
    for _ in ors:
        branches = [(*b, c) for b in branches for c in columns_of]
    parts: list[str] = []
    all_params: list[Any] = []
    for n, columns in enumerate(branches):
        terms = [*(["origin = ?"] if dialect.pg else []), *where, *columns]
        parts.append(
            f"SELECT idx FROM (SELECT idx FROM leaves WHERE {' AND '.join(terms)}"  # noqa: S608
            f" ORDER BY idx {order} LIMIT ?) AS b{n}"
        )
        all_params += [*scope, *params, *ors, query.limit]
    statement = (
        f"SELECT {HIT_COLUMNS} FROM leaves WHERE {dialect.scope}idx IN ("  # noqa: S608
        f"{' UNION '.join(parts)}) ORDER BY idx {order} LIMIT ?"
    )
    return dialect.text(statement), (*scope, *all_params, query.limit)
