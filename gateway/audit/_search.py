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
- officer, case and subject on SQLite: those keys arrive in random order, so their indexes are
  keyed by the leaf's key block first (``(idx >> KEY_BLOCK_BITS, key)``, ``subjects``' primary
  key ``(block, subject, idx)``): the catch-up's inserts then land in the newest block's pages,
  which stay cached and few, instead of on a random page of an index as long as the log (the
  append rate fell with the log's size, issue 18). A search names the blocks to seek
  (``block IN (list)``): the key tiers (``_key_tiers``) name the blocks of its range that may
  hold its key, a batch at a time in the page's order, and the search stops asking once the page
  is full. Officer and case order by ``(block, idx)``, which is ``idx`` order: SQLite seeks each
  block in turn, in the page's order, and stops when the page is full; a subject's hits (an
  account or a number: few) are collected block by block and read by primary key. An absent key
  costs one seek per tier and per block no tier covers (``docs/benchmarks.md``). A
  key's hits are spread over the log, so each is read from its leaf row (columns and subjects
  in one page) rather than from the projection and again from ``subjects``. The request id
  stays keyed by itself: UUIDv7 ids arrive in time order. PostgreSQL keeps its plain indexes.
- ``member`` (requesting OR target) and ``visible_to`` (the same): one branch per column, each a
  page read in index order, merged with ``UNION`` and cut to the page: an ``OR`` would make the
  database collect every hit of a large member and sort them.
- a time window: ``time_bounds`` turns it into a leaf-index range through ``time_blocks``
  (the times of each complete block of 256 leaves, written as the block completes) in a few
  index seeks, so the window is read by primary key from its first block, not from the log's
  start. The time terms stay in the statement: the range is a superset, never a cut.

The searchable columns are a projection maintained behind the leaves (``search_rows``, with
the indexes above, and ``subjects``): a leaf is durable with its columns in its own row, and
the store's catch-up copies the columns into the projection within a bound
(``docs/audit.md``), recording how far in ``projection_state`` (``projected_to``). ``search``
reads the projection below ``projected_to`` and the leaf rows from there on (at most the
catch-up bound, by primary key), so a search sees every committed entry, however far the
projection lags.

SQL text is fixed fragments chosen by which fields are set; every value is a parameter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from gateway.audit import _key_tiers
from gateway.audit._key_tiers import KEY_BLOCK_BITS, KEY_BLOCK_EXPR
from gateway.audit._months import NEXT_INDEX
from gateway.audit.store import IndexedRow, SearchQuery

__all__ = [
    "BLOCK",
    "HIT_COLUMNS",
    "KEY_BLOCK_BITS",
    "KEY_BLOCK_EXPR",
    "PG",
    "PROJECTION",
    "SQLITE",
    "Dialect",
    "next_index",
    "projected_to",
    "search",
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

PROJECTION: Final = "search_rows"
"""The projection's table; ``LEAVES`` is the durable record (its rows past ``projected_to``)."""
LEAVES: Final = "leaves"

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
    def blocked(self) -> bool:
        """Whether the officer, case and subject indexes are keyed by key block first (SQLite)."""
        return not self.pg

    @property
    def scope(self) -> str:
        return "origin = ? AND " if self.pg else ""

    def listed(self, values: Sequence[int]) -> object:
        """A list of indices as one parameter of ``idx{in_list}``."""
        return list(values) if self.pg else json.dumps(list(values))

    @property
    def in_list(self) -> str:
        return " = ANY(?)" if self.pg else " IN (SELECT value FROM json_each(?))"

    @property
    def collate(self) -> str:
        """Text ordered byte-wise, as SQLite orders it."""
        return ' COLLATE "C"' if self.pg else ""

    def month_floor(self, fetch: Fetch, scope: tuple[Any, ...], index: int) -> tuple[Any, ...]:
        """PostgreSQL: ``(month,)``, the month of leaf ``index`` (``leaves`` is partitioned by
        month and months rise with indices, so ``month >= it`` reads only the partitions of
        the leaves from ``index`` on); SQLite: ``()``."""
        if not self.pg:
            return ()
        rows = fetch(
            "SELECT month FROM leaf_months WHERE origin = %s AND first_idx <= %s"
            " ORDER BY first_idx DESC, month DESC LIMIT 1",
            (*scope, index),
        )
        return (int(rows[0][0]) if rows else 0,)

    @property
    def has_subject(self) -> str:
        """The filter on a leaf row's JSON ``subjects`` column (the projection's tail)."""
        if self.pg:
            return "jsonb_exists(subjects::jsonb, ?)"
        return "EXISTS (SELECT 1 FROM json_each(subjects) WHERE value = ?)"


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
_KEY_BLOCK: Final = f"({KEY_BLOCK_EXPR})"


def key_field(query: SearchQuery) -> tuple[int, str] | None:
    """``(kind, key)`` of the key that narrows ``query``'s key blocks (``_key_tiers.KINDS``):
    the rarest it has (a subject, then a case, then an officer); None: it has none."""
    for name in ("subject", "case_number", "officer_id"):
        value = getattr(query, name)
        if value:
            return _key_tiers.KINDS[name], str(value)
    return None


def key_block_range(query: SearchQuery, lo: int, before: int) -> tuple[int, int]:
    """The first and last key block of the leaves ``query`` reads below ``before``, from
    ``lo`` (``time_bounds``) and its keyset bounds (``last < first``: none)."""
    if query.before_index is not None:
        before = min(before, query.before_index)
    first = max(query.after_index + 1, lo, 0)
    if before <= first:
        return 0, -1
    return first >> KEY_BLOCK_BITS, (before - 1) >> KEY_BLOCK_BITS


_MAX_US: Final = (1 << 63) - 1
"""The greatest time a bound can be (an SQL integer)."""


def time_bounds(
    fetch: Fetch,
    dialect: Dialect,
    scope: tuple[Any, ...],
    since_us: int | None,
    until_us: int | None,
) -> tuple[int, int | None]:
    """``(lo, hi)``: every leaf with ``since_us <= time_us < until_us`` has ``lo <= idx`` and,
    when ``hi`` is not ``None``, ``idx < hi``. A few index seeks, whatever the log's length:
    the last time block, one seek on ``reach_us`` per bound, and the open block's (at most 255)
    leaves (and on PostgreSQL the month of that block).

    Each complete block of 256 leaves has its least and greatest time and two running bounds,
    written as the block completes: ``reach_us``, the greatest time of it and every block
    before it, which never falls with the block, and ``lag_us``, how far any block so far
    began before the reach of the blocks before it (0 while times only rise; a clock set back
    or a leg stamped late raises it for good). So:

    - the first block holding a time ``>= since_us`` is the first whose reach is ``>= since_us``;
    - a block holding a time ``< until_us`` began at most ``lag_us`` (the newest block's)
      before the reach of the blocks before it, so it is no later than the first block whose
      reach is ``>= until_us + lag_us``.

    A time range on ``min_us`` or ``max_us`` would read every block before or after the
    window, a few hundred pages at 10 M entries, each a read from disk when cold. The price: a
    lag is kept for good, so after one leg stamped an hour early every later window's upper
    bound reaches about an hour further (``docs/audit.md``)."""
    s = dialect.scope
    rows = fetch(
        dialect.text(
            f"SELECT block, lag_us FROM time_blocks WHERE {s}block ="  # noqa: S608
            f" (SELECT MAX(block) FROM time_blocks WHERE {s}1 = 1)"
        ),
        (*scope, *scope),
    )
    edge, lag = (0, 0) if not rows else ((int(rows[0][0]) + 1) * BLOCK, int(rows[0][1]))
    # ``edge``: the first leaf of the open (incomplete) block.

    def first_reaching(time_us: int) -> tuple[int, int] | None:
        """``(block, min_us)`` of the first block whose reach is ``>= time_us`` (None: none)."""
        found = fetch(
            dialect.text(
                f"SELECT block, min_us FROM time_blocks WHERE {s}reach_us >= ?"  # noqa: S608
                " ORDER BY reach_us, block LIMIT 1"
            ),
            (*scope, time_us),
        )
        return None if not found else (int(found[0][0]), int(found[0][1]))

    lo = 0
    if since_us is not None:
        first = first_reaching(since_us)
        lo = edge if first is None else first[0] * BLOCK
    if until_us is None:
        return lo, None
    month = dialect.month_floor(fetch, scope, edge)
    late = fetch(
        dialect.text(
            # ``+time_us``: read the open block by primary key (at most 255 rows), never
            # the time index from the log's start.
            f"SELECT 1 FROM leaves WHERE {s}{'month >= ? AND ' if month else ''}idx >= ?"  # noqa: S608
            " AND +time_us < ? LIMIT 1"
        ),
        (*scope, *month, edge, until_us),
    )
    if late:
        return lo, None
    last = first_reaching(min(until_us + lag, _MAX_US))
    if last is None:
        return lo, edge
    # Every block with a time before ``until_us`` is at or before ``last``; ``last`` itself
    # only if it has one.
    block, earliest = last
    return lo, (block + (earliest < until_us)) * BLOCK


def next_index(fetch: Fetch, dialect: Dialect, scope: tuple[Any, ...]) -> int:
    """One past the last leaf. PostgreSQL reads only the last month's partition (found in the
    range map ``leaf_months``: ``_months.NEXT_INDEX``), or the end of that month's retired
    range when it was retired."""
    if dialect.pg:
        rows = fetch(NEXT_INDEX, (*scope, *scope))
    else:
        rows = fetch("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves", ())
    return int(rows[0][0])


def projected_to(fetch: Fetch, dialect: Dialect, scope: tuple[Any, ...]) -> int:
    """One past the last leaf the search projection holds (0 when it holds none)."""
    rows = fetch(
        dialect.text(
            f"SELECT value FROM projection_state WHERE {dialect.scope}name = 'projected_to'"  # noqa: S608
        ),
        scope,
    )
    return int(rows[0][0]) if rows else 0


def search(
    fetch: Fetch, dialect: Dialect, scope: tuple[Any, ...], query: SearchQuery
) -> list[IndexedRow]:
    """``query``'s page: the projection's hits below ``projected_to`` and the leaf rows' hits
    from there on, in the query's order. Raises what ``fetch`` raises."""
    lo, hi = 0, None
    if query.since_us is not None or query.until_us is not None:
        lo, hi = time_bounds(fetch, dialect, scope, query.since_us, query.until_us)
    # Read first: the projection may move on meanwhile, but every leaf below this point is in
    # it, and every leaf from it on is in the leaves table.
    edge = projected_to(fetch, dialect, scope)
    head = replace(
        query, before_index=edge if query.before_index is None else min(query.before_index, edge)
    )
    tail = replace(query, after_index=max(query.after_index, edge - 1))

    def page(q: SearchQuery, table: str, limit: int) -> list[Sequence[Any]]:
        if limit <= 0 or (q.before_index is not None and q.before_index <= q.after_index + 1):
            return []
        month = ()
        if table == LEAVES:
            month = dialect.month_floor(fetch, scope, max(q.after_index + 1, lo))
        key = key_field(q)
        if table == LEAVES or not dialect.blocked or key is None:
            sql, params = search_statement(
                replace(q, limit=limit), dialect, scope, lo=lo, hi=hi, table=table, month=month
            )
            return list(fetch(sql, params))
        # SQLite's key-blocked indexes: the blocks that may hold the key, a batch at a time in
        # the page's order, until the page is full (``_key_tiers``).
        first, last = key_block_range(q, lo, edge if hi is None else min(hi, edge))
        found: list[Sequence[Any]] = []
        for batch in _key_tiers.block_batches(
            fetch, _key_tiers.built(fetch), *key, first, last, newest_first=q.newest_first
        ):
            sql, params = search_statement(
                replace(q, limit=limit - len(found)), dialect, scope, lo=lo, hi=hi,
                table=table, key_blocks=batch,
            )  # fmt: skip
            found += fetch(sql, params)
            if len(found) >= limit:
                break
        return found

    first, second = (tail, LEAVES), (head, PROJECTION)
    if not query.newest_first:
        first, second = second, first
    hits = page(*first, query.limit)
    hits += page(*second, query.limit - len(hits))
    # A hit read from the projection has 12 columns; from a leaf row, its subjects too (JSON),
    # except a leaf written before leaves kept their subjects (schema 1): its row says ``[]``
    # and its subjects are in ``subjects`` (a leaf that has none costs one look there).
    looked_up = {h[0] for h in hits if len(h) == 12 or (h[0] < edge and h[12] == "[]")}
    projected = sorted(looked_up)
    found: dict[int, list[str]] = {}
    if projected:
        for idx, subject in fetch(
            dialect.text(
                f"SELECT idx, subject FROM subjects WHERE {dialect.scope}idx{dialect.in_list}"  # noqa: S608
                f" ORDER BY idx, subject{dialect.collate}"
            ),
            (*scope, dialect.listed(projected)),
        ):
            found.setdefault(int(idx), []).append(str(subject))
    return [
        IndexedRow(
            h[0],
            (
                h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10],
                tuple(found.get(h[0], ())) if h[0] in looked_up else tuple(json.loads(h[12])),
                h[11],
            ),
        )
        for h in hits
    ]  # fmt: skip


def search_statement(
    query: SearchQuery,
    dialect: Dialect,
    scope: tuple[Any, ...],
    *,
    lo: int = 0,
    hi: int | None = None,
    table: str = PROJECTION,
    month: tuple[Any, ...] = (),
    key_blocks: Sequence[int] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of ``query``'s page, in ``dialect``, its index range narrowed
    to ``[lo, hi)`` (from ``time_bounds``), over the projection or (``table="leaves"``) the leaf
    rows, which read by primary key only. It selects ``HIT_COLUMNS`` (and, from the leaf rows,
    their JSON ``subjects``). ``month`` (PostgreSQL, the leaf rows): ``(m,)`` to read only the
    partitions from month ``m`` on (``Dialect.month_floor``). ``key_blocks`` (SQLite, the
    projection, a search by officer, case or subject): the key blocks to seek, in the page's
    order (``_key_tiers.block_batches``); required there."""
    if table not in (PROJECTION, LEAVES):
        raise ValueError(f"search_statement: unknown table {table!r}")
    tail = table == LEAVES
    source = f"{table} NOT INDEXED" if tail and not dialect.pg else table
    selected = f"{HIT_COLUMNS}, subjects" if tail else HIT_COLUMNS
    where: list[str] = []
    params: list[Any] = []
    if month and tail:
        where.append("month >= ?")
        params.extend(month)
    # Always bounded below: the primary key range is then the plan of last resort, never a scan.
    where.append("idx > ?")
    params.append(max(query.after_index, lo - 1))
    before = hi
    if query.before_index is not None:
        before = query.before_index if before is None else min(before, query.before_index)
    if before is not None:
        where.append("idx < ?")
        params.append(before)
    # SQLite's officer, case and subject indexes: one seek per key block of the range.
    blocks_params: tuple[Any, ...]
    blocks, blocks_params = "", ()
    if dialect.blocked and not tail and key_field(query) is not None:
        if key_blocks is None:
            raise ValueError("search_statement: a key search of the projection names its blocks")
        blocks, blocks_params = "(SELECT value FROM json_each(?))", (json.dumps(list(key_blocks)),)
    by_block = bool(blocks) and bool(query.officer_id or query.case_number)
    if by_block:
        where.append(f"{_KEY_BLOCK} IN {blocks}")
        params.extend(blocks_params)
    for name, fragment in _FIELDS:
        value = getattr(query, name)
        if value:
            where.append(fragment)
            params.append(value)
    if query.leg:
        where.append("leg = ?")
        params.append(query.leg)
    if query.subject and tail:
        where.append(dialect.has_subject)
        params.append(query.subject)
    elif query.subject and blocks:
        where.append(f"idx IN (SELECT idx FROM subjects WHERE block IN {blocks} AND subject = ?)")  # noqa: S608
        params += [*blocks_params, query.subject]
    elif query.subject:
        where.append(f"idx IN (SELECT idx FROM subjects WHERE {dialect.scope}subject = ?)")  # noqa: S608
        params += [*scope, query.subject]
    if query.since_us is not None:
        where.append("time_us >= ?")
        params.append(query.since_us)
    if query.until_us is not None:
        where.append("time_us < ?")
        params.append(query.until_us)
    order = "DESC" if query.newest_first else "ASC"
    # ``(block, idx)`` is ``idx`` order, and the order of a blocked index: no sort, and the read
    # stops when the page is full.
    order_by = f"{_KEY_BLOCK} {order}, idx {order}" if by_block else f"idx {order}"
    ors = [m for m in (query.member, query.visible_to) if m]
    hits_from = table
    if blocks:
        # A key's hits are spread over the log, a page read apiece: the index (covering when it
        # is the only filter) names the page's leaves, and each hit is read once, from its leaf
        # row (columns and subjects), instead of from the projection and again from
        # ``subjects`` (242 -> 189 cold page reads for an officer's first page at 10 M entries).
        selected, hits_from = f"{HIT_COLUMNS}, subjects", LEAVES
        if not ors:
            statement = (
                f"SELECT {selected} FROM {hits_from} WHERE idx IN ("  # noqa: S608 - fixed fragments
                f"SELECT idx FROM {source} WHERE {' AND '.join(where)} ORDER BY {order_by} LIMIT ?)"
                f" ORDER BY idx {order} LIMIT ?"
            )
            return dialect.text(statement), (*params, query.limit, query.limit)
    if not ors:
        conditions = " AND ".join([*(["origin = ?"] if dialect.pg else []), *where]) or "1 = 1"
        statement = (
            f"SELECT {selected} FROM {source} WHERE {conditions}"  # noqa: S608 - fixed fragments
            f" ORDER BY {order_by} LIMIT ?"
        )
        return dialect.text(statement), (*scope, *params, query.limit)
    # One branch per (column of member) x (column of visible_to): each reads its page in index
    # order; the union holds at most branches x limit indices.
    # A narrow filter (officer, case, request id, subject) beats a member's index: ``+column``
    # tells SQLite's planner not to use the member index then (PostgreSQL's planner weighs
    # the indexes by its statistics).
    narrow = query.officer_id or query.case_number or query.request_id or query.subject
    columns_of: tuple[str, ...] = _MEMBER_COLUMNS
    if narrow and not dialect.pg and not tail:
        columns_of = tuple(f"+{c}" for c in _MEMBER_COLUMNS)
    branches: list[tuple[str, ...]] = [()]
    for _ in ors:
        branches = [(*b, c) for b in branches for c in columns_of]
    parts: list[str] = []
    all_params: list[Any] = []
    for n, columns in enumerate(branches):
        terms = [*(["origin = ?"] if dialect.pg else []), *where, *columns]
        parts.append(
            f"SELECT idx FROM (SELECT idx FROM {source} WHERE {' AND '.join(terms)}"  # noqa: S608
            f" ORDER BY {order_by} LIMIT ?) AS b{n}"
        )
        all_params += [*scope, *params, *ors, query.limit]
    outer = dialect.scope + ("month >= ? AND " if month and tail else "")
    statement = (
        f"SELECT {selected} FROM {hits_from} WHERE {outer}idx IN ("  # noqa: S608
        f"{' UNION '.join(parts)}) ORDER BY idx {order} LIMIT ?"
    )
    outer_params = (*scope, *(month if tail else ()))
    return dialect.text(statement), (*outer_params, *all_params, query.limit)
