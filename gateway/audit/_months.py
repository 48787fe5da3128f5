"""PostgreSQL leaves partitioned by month: the month numbers, the partitions and the range map.

``leaves`` is partitioned by ``RANGE (month)``, one partition per calendar month (UTC), so that
retention and backups work on whole months (``docs/audit.md``, "Leaves partitioned by month").
A leaf's ``month`` is the month of its time, except that it never goes back: a leaf logged
after a later month has begun (its time a little in the past, e.g. a leg written just after
midnight on the 1st for a request received before it) goes to that later month. So months rise
with leaf indices, and ``leaf_months``, one row per shard and month with the month's first leaf
index, maps any range of leaf indices to the one or two months that hold it: reads by index
pick their partitions through it instead of probing every month's index. A leaf's month is
never before its own time's month, so a time window starting at T reads no month before T's.

Months are numbered ``year * 12 + month - 1`` (January 2026 is 24312); month 0 is the legacy
layout's single month, an unpartitioned table written before partitions
(``fedgate audit migrate`` moves it into months).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = [
    "LAST_MONTH",
    "LEGACY_MONTH",
    "MONTH_FUNCTION",
    "NEXT_INDEX",
    "NEXT_IN_MONTH",
    "SPAN",
    "create_partitions",
    "month_of",
    "month_start_us",
    "partition_name",
    "partitions",
    "take_writer_lock",
]

LEGACY_MONTH: Final = 0
"""The month of every leaf of a schema whose ``leaves`` is not partitioned yet."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

MONTH_FUNCTION: Final = """
CREATE OR REPLACE FUNCTION fedgate_audit_month(us BIGINT) RETURNS INT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (extract(year FROM t) * 12 + extract(month FROM t) - 1)::int
    FROM (SELECT timestamp '1970-01-01' + us * interval '1 microsecond') AS x(t)
$$;
"""
"""``month_of`` in SQL (the migration computes months in the database); exact: integer
microseconds on a timestamp without time zone, i.e. UTC."""

SPAN: Final = (
    "SELECT (SELECT month FROM leaf_months WHERE origin = %(o)s AND first_idx <= %(a)s"
    " ORDER BY first_idx DESC, month DESC LIMIT 1),"
    " (SELECT month FROM leaf_months WHERE origin = %(o)s AND first_idx < %(b)s"
    " ORDER BY first_idx DESC, month DESC LIMIT 1)"
)
"""The months of the leaves ``a`` and ``b - 1`` of shard ``o``: every leaf of ``[a, b)`` is in
a month between them (both ``NULL`` when the range holds no leaf). Two lookups in the
primary key of a table of one row per month."""

LAST_MONTH: Final = (
    "SELECT month FROM leaf_months WHERE origin = %s ORDER BY first_idx DESC, month DESC LIMIT 1"
)
"""The month of shard ``%s``'s last leaf (no row when it has none): the only partition that
holds its greatest index, and the earliest its next leaf may go to. A query, or a subquery."""

_NEXT_IN = (
    "SELECT COALESCE((SELECT MAX(idx) + 1 FROM leaves WHERE origin = s.o AND month = s.m),"
    " (SELECT stop_idx FROM retired_months AS r WHERE r.origin = s.o AND r.month = s.m), 0)"
    " FROM (SELECT %s::text, "
)
NEXT_IN_MONTH: Final = _NEXT_IN + "%s::int) AS s(o, m)"
"""One past the greatest index of shard ``%s`` in month ``%s``: the shard's next index when
the month is its last (``LAST_MONTH``). Read in that one partition: the partitions' key
``(origin, month, idx)`` gives no order on ``idx`` across months, and ``MAX(idx)`` over all
of them reads every month's index. When the month's partition was retired (detached) with the
shard's newest leaf in it, which retention did before it kept a shard's last month, it is the
retired range's end in ``retired_months``: the shard appends on from there, never from 0. 0
when the shard has no leaf in the month, kept or retired (a retired month without its record
is then refused by the commit's and the log's checks against the signed head)."""
NEXT_INDEX: Final = _NEXT_IN + f"({LAST_MONTH})) AS s(o, m)"
"""Shard ``%s``'s next index (0 when it has no leaf): ``NEXT_IN_MONTH`` in its last month, in
one statement. Parameters: the origin, twice."""


def month_of(time_us: int) -> int:
    """The month number of a time in microseconds since the epoch (UTC)."""
    t = _EPOCH + timedelta(microseconds=time_us)
    return t.year * 12 + t.month - 1


def month_start_us(month: int) -> int:
    """The first microsecond of ``month``."""
    start = datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return (start - _EPOCH) // timedelta(microseconds=1)


def month_name(month: int) -> str:
    """``2026-01`` for January 2026."""
    return f"{month // 12:04d}-{month % 12 + 1:02d}"


def partition_name(month: int) -> str:
    """``leaves_y2026m01`` for January 2026."""
    return f"leaves_y{month // 12:04d}m{month % 12 + 1:02d}"


def partitions(conn: psycopg.Connection[Any]) -> set[int]:
    """The months that have a partition of ``leaves`` in the connection's schema."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('leaves')"
    ).fetchall()
    found: set[int] = set()
    for (name,) in rows:
        text = str(name)
        year, m, month = text[8:12], text[12:13], text[13:15]
        named = text.startswith("leaves_y") and len(text) == 15 and m == "m"
        if named and (year + month).isdigit():  # not another table that looks like one
            found.add(int(year) * 12 + int(month) - 1)
    return found


def create_partitions(conn: psycopg.Connection[Any], months: set[int]) -> set[int]:
    """Create the partitions of ``months`` that do not exist; returns every month that has a
    partition then. The caller holds a transaction and the schema lock (creating a partition
    locks ``leaves`` against every reader and writer of every shard for a moment, so it is done
    ahead, and never inside a commit's transaction). Each partition gets the append-only
    TRUNCATE trigger itself: a statement trigger on the parent does not fire for a partition
    truncated by name (row triggers are inherited)."""
    existing = partitions(conn)
    for month in sorted(months - existing):
        name = sql.Identifier(partition_name(month))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF leaves FOR VALUES FROM ({}) TO ({})"
            ).format(name, sql.Literal(month), sql.Literal(month + 1))
        )
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER leaves_no_truncate BEFORE TRUNCATE ON {}"
                " FOR EACH STATEMENT EXECUTE FUNCTION fedgate_audit_append_only()"
            ).format(name)
        )
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM PUBLIC").format(name))
    return existing | months


def take_writer_lock(conn: psycopg.Connection[Any], schema: str, origin: str) -> bool:
    """Try the session lock that one writer of shard ``origin`` holds (the gateway writing it,
    or a migration): ``False`` when somebody else holds it."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"{schema}/{origin}",)
    ).fetchone()
    return row is not None and bool(row[0])
