"""Moving an existing PostgreSQL audit schema's leaves into monthly partitions, and retiring
whole months past retention.

**Migration** (``fedgate audit migrate --pg``, gateways stopped, after the log verified):
``partition_leaves`` renames the unpartitioned ``leaves`` to ``leaves_unpartitioned``, creates
the partitioned ``leaves`` and copies every shard's leaves into it in index order, one
transaction per ``CHUNK`` leaves (each leaf's month computed in the database, never before the
month of the leaf before it), recording the range map as it goes. It resumes where it stopped:
the writer refuses to open while ``leaves_unpartitioned`` exists. Once the log verifies from the
partitions, ``finish`` drops the old table.

**Retention** (``due_months``, ``retire_month``): a month's partition is detached from
``leaves`` only when everything in it is past the retention period: the month ended before
``cutoff`` (the last activity a case may have had and still be due), it holds no shard's
newest leaf (a shard's next index is read in the month of its last leaf: an idle shard keeps
that month, and the months after it wait with it), its entries are all below the log's full
tiles (the open tile's leaves are the log's right edge, read at start-up), no data key that
could seal one of its entries is still live (every key created before the month ended is
destroyed), and no case with an entry in it was active at or after ``cutoff``. The
detached table keeps its rows (archive it, then drop it), ``retired_months`` records which leaf
indices left the log, and the tiles, checkpoints and search projection stay: proofs for later
entries still work, and ``fedgate audit verify`` starts past the retired entries, requiring a
logged ``leaves_retired`` event to name each retired range (``fedgate.auditverify``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from fedgate.errors import AuditUnavailable
from gateway.audit import _months, _rows
from gateway.audit._bodies import _INDEX_REF as INDEX_REF

__all__ = [
    "CHUNK",
    "PartitionReport",
    "RetiredMonth",
    "due_months",
    "finish",
    "partition_leaves",
    "retire_month",
]

CHUNK = 65_536
"""Leaves per copy transaction."""

_OLD = "leaves_unpartitioned"

_log = logging.getLogger(__name__)


_COPY_CHUNK = (
    f"INSERT INTO leaves ({_rows.LEAF_COLUMNS}, origin, month)"  # noqa: S608 - constant columns
    f" SELECT {_rows.LEAF_COLUMNS}, origin,"
    " GREATEST(%(floor)s, MAX(fedgate_audit_month(time_us)) OVER (ORDER BY idx))"
    " FROM leaves_unpartitioned WHERE origin = %(o)s AND idx >= %(a)s AND idx < %(b)s"
    " ORDER BY idx"
)
_CHUNK_MONTHS = (
    "SELECT MIN(fedgate_audit_month(time_us)), MAX(fedgate_audit_month(time_us)), count(*)"
    " FROM leaves_unpartitioned WHERE origin = %(o)s AND idx >= %(a)s AND idx < %(b)s"
)
_RANGE_MAP = (
    "INSERT INTO leaf_months (origin, month, first_idx)"
    " SELECT origin, month, MIN(idx) FROM leaves"
    " WHERE origin = %(o)s AND month >= %(lo)s AND month <= %(hi)s"
    " AND idx >= %(a)s AND idx < %(b)s GROUP BY origin, month"
    " ON CONFLICT (origin, month) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class PartitionReport:
    entries: int  # leaves copied by this run
    months: int  # partitions of leaves after it


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None


def _relkind(conn: psycopg.Connection[Any], table: str) -> str | None:
    row = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (table,)
    ).fetchone()
    return None if row is None else str(row[0])


def _lock_shards(conn: psycopg.Connection[Any], schema: str) -> None:
    """Take every shard's writer lock (session): no gateway may write during the move."""
    for (origin,) in conn.execute("SELECT origin FROM shards ORDER BY origin").fetchall():
        if not _months.take_writer_lock(conn, schema, origin):
            raise AuditUnavailable(
                f"a gateway is writing the audit shard {origin!r}: stop it before migrating"
            )


def partition_leaves(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    create: str,
    ddl_lock: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> PartitionReport:
    """Move ``leaves`` into monthly partitions (see the module); ``create`` is the audit
    schema's DDL, ``progress(origin, done, total)`` is called after each chunk. ``conn`` is an
    autocommit connection whose search path is the schema. Returns what it did; nothing when
    the leaves are partitioned already. Raises ``AuditUnavailable`` when a gateway writes."""
    _lock_shards(conn, schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ddl_lock,))
        if _relkind(conn, "leaves") == "r":
            conn.execute("ALTER TABLE leaves RENAME TO leaves_unpartitioned")
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                " AND tablename = %s",
                (_OLD,),
            ).fetchall():
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(name), sql.Identifier(f"unpartitioned_{name}")
                    )
                )
            conn.execute("DROP TABLE leaf_months")  # its month-0 rows described the old table
            conn.execute(create.encode())
    if not _exists(conn, _OLD):
        return PartitionReport(0, len(_months.partitions(conn)))
    copied = 0
    origins = [str(r[0]) for r in conn.execute("SELECT origin FROM shards ORDER BY origin")]
    for origin in origins:
        copied += _copy_shard(conn, origin, progress)
    return PartitionReport(copied, len(_months.partitions(conn)))


def _copy_shard(
    conn: psycopg.Connection[Any],
    origin: str,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves_unpartitioned WHERE origin = %s", (origin,)
    ).fetchone()
    total = 0 if row is None else int(row[0])
    last = conn.execute(_months.LAST_MONTH, (origin,)).fetchone()
    done = 0
    if last is not None:
        got = conn.execute(_months.NEXT_IN_MONTH, (origin, last[0])).fetchone()
        done = 0 if got is None else int(got[0])
    copied = 0
    floor = -1 if last is None else int(last[0])
    for start in range(done, total, CHUNK):
        stop = min(start + CHUNK, total)
        p = {"o": origin, "a": start, "b": stop, "floor": floor}
        with conn.transaction():
            lo, hi, count = conn.execute(_CHUNK_MONTHS, p).fetchone() or (None, None, 0)
            if count != stop - start or lo is None or hi is None:
                raise AuditUnavailable(
                    f"audit shard {origin!r}: entries {start}..{stop - 1} are not all in "
                    "the old table: run `fedgate audit verify`"
                )
            first, high = max(floor, int(lo)), max(floor, int(hi))
            _months.create_partitions(conn, set(range(first, high + 1)))
            conn.execute(_COPY_CHUNK, p)
            conn.execute(_RANGE_MAP, {**p, "lo": first, "hi": high})
        floor = high
        copied += stop - start
        if progress is not None:
            progress(origin, stop, total)
    return copied


def finish(conn: psycopg.Connection[Any]) -> bool:
    """Drop the old table once every shard's leaves are in the partitions (the caller has
    verified the log from them); returns whether there was one. Raises ``AuditUnavailable``
    when a shard's copy is incomplete."""
    if not _exists(conn, _OLD):
        return False
    with conn.transaction():
        for origin, old_count in conn.execute(
            "SELECT origin, count(*) FROM leaves_unpartitioned GROUP BY origin"
        ).fetchall():
            row = conn.execute(
                "SELECT count(*) FROM leaves WHERE origin = %s", (origin,)
            ).fetchone()
            if row is None or int(row[0]) != int(old_count):
                raise AuditUnavailable(
                    f"audit shard {origin!r}: {old_count} entries in the old table but "
                    f"{0 if row is None else row[0]} in the partitions: run the migration again"
                )
        conn.execute("DROP TABLE leaves_unpartitioned")
    return True


# -- retention -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetiredMonth:
    month: int
    ranges: tuple[tuple[str, int, int], ...]  # (origin, first index, stop) of each shard
    through: tuple[tuple[str, int, int], ...] = ()
    """Each shard's whole retired range once this month is retired: (origin, 0, stop), for
    every shard with a retired entry (the event names it, so the newest event alone accounts
    for every retired entry once older events are retired with their months)."""

    @property
    def name(self) -> str:
        return _months.month_name(self.month)


def _ranges(conn: psycopg.Connection[Any], month: int) -> tuple[tuple[str, int, int], ...]:
    """Each shard's leaf indices in ``month``: from the range map."""
    out: list[tuple[str, int, int]] = []
    for origin, first in conn.execute(
        "SELECT origin, first_idx FROM leaf_months WHERE month = %s ORDER BY origin", (month,)
    ).fetchall():
        nxt = conn.execute(
            "SELECT first_idx FROM leaf_months WHERE origin = %s AND first_idx > %s"
            " ORDER BY first_idx LIMIT 1",
            (origin, first),
        ).fetchone()
        if nxt is None:
            got = conn.execute(
                "SELECT MAX(idx) + 1 FROM leaves WHERE origin = %s AND month = %s", (origin, month)
            ).fetchone()
            stop = int(first) if got is None or got[0] is None else int(got[0])
        else:
            stop = int(nxt[0])
        out.append((str(origin), int(first), stop))
    return tuple(out)


def _past_retention(
    conn: psycopg.Connection[Any],
    month: int,
    ranges: tuple[tuple[str, int, int], ...],
    cutoff_us: int,
    *,
    keyed: bool,
) -> bool:
    """Whether every entry of ``month`` is past retention at ``cutoff_us``; ``keyed``: the
    schema has the bodies' key table (a sealed log)."""
    if _months.month_start_us(month + 1) > cutoff_us:
        return False
    if keyed:
        live = conn.execute(
            "SELECT 1 FROM body_keys WHERE wrapped IS NOT NULL AND ref <> %s"
            " AND created_us < %s LIMIT 1",
            (INDEX_REF, _months.month_start_us(month + 1)),
        ).fetchone()
        if live is not None:
            return False
    for origin, first, stop in ranges:
        last = conn.execute(_months.LAST_MONTH, (origin,)).fetchone()
        if last is None or int(last[0]) == month:
            # The month of the shard's newest leaf: its next index is read there (and its
            # writer's check), so retiring it would refuse every later commit to the shard.
            _log.info(
                "retention stops at month %s: it holds the newest entries of audit shard %r, "
                "so it and every later month are kept while that shard is idle",
                _months.month_name(month),
                origin,
            )
            return False
        tiled = conn.execute(
            "SELECT COALESCE(MAX(idx) + 1, 0) * 256 FROM tiles WHERE origin = %s AND level = 0",
            (origin,),
        ).fetchone()
        if tiled is None or stop > int(tiled[0]):
            return False  # the right edge (the open tile) is read from the leaves: keep it
        active = conn.execute(
            "SELECT 1 FROM search_rows AS q WHERE q.origin = %(o)s AND q.idx >= %(a)s"
            " AND q.idx < %(b)s AND q.case_number <> '' AND EXISTS (SELECT 1 FROM search_rows"
            " AS n WHERE n.origin = q.origin AND n.case_number = q.case_number"
            " AND n.case_number <> '' AND n.idx >= %(b)s AND n.time_us >= %(c)s) LIMIT 1",
            {"o": origin, "a": first, "b": stop, "c": cutoff_us},
        ).fetchone()
        if active is not None:
            return False
    return True


def due_months(conn: psycopg.Connection[Any], cutoff_us: int) -> list[RetiredMonth]:
    """The oldest partitions whose every entry is past retention at ``cutoff_us``, oldest
    first, stopping at the first that is not (the log's retired part is always a prefix).
    Each carries every shard's whole retired range once it is retired (``through``: from
    ``retired_months`` and the months due before it), for its ``leaves_retired`` event."""
    ends = {
        str(origin): int(stop)
        for origin, stop in conn.execute(
            "SELECT origin, MAX(stop_idx) FROM retired_months GROUP BY origin"
        ).fetchall()
    }
    due: list[RetiredMonth] = []
    keyed = _exists(conn, "body_keys")  # once: a key created now seals no month that ended
    for month in sorted(_months.partitions(conn)):
        ranges = _ranges(conn, month)
        if not _past_retention(conn, month, ranges, cutoff_us, keyed=keyed):
            break
        for origin, _, stop in ranges:
            ends[origin] = max(ends.get(origin, 0), stop)
        through = tuple((o, 0, ends[o]) for o in sorted(ends) if ends[o] > 0)
        due.append(RetiredMonth(month, ranges, through))
    return due


def retire_month(
    conn: psycopg.Connection[Any],
    month: RetiredMonth,
    *,
    rule: str,
    now_us: int,
    ddl_lock: int,
) -> str:
    """Detach ``month``'s partition from ``leaves`` and record its ranges in
    ``retired_months``. Returns the table's name: kept, detached (archive it, then drop it).
    The caller has logged the retirement first."""
    name = _months.partition_name(month.month)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ddl_lock,))
        conn.execute(sql.SQL("ALTER TABLE leaves DETACH PARTITION {}").format(sql.Identifier(name)))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO retired_months (origin, month, first_idx, stop_idx, retired_us, rule)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(o, month.month, a, b, now_us, rule) for o, a, b in month.ranges],
            )
    return name
