"""The shared audit store: PostgreSQL, for several gateway instances, one shard each.

All shards live in one schema (default ``fedgate_audit``) in tables keyed by origin, so an
auditor verifies every shard from one database. Append-only is enforced by row triggers that
raise on UPDATE and DELETE, statement triggers that raise on TRUNCATE, and by revoking UPDATE,
DELETE and TRUNCATE from PUBLIC. Run the gateway as a role that is not the tables' owner and
holds only ``INSERT, SELECT`` (plus ``UPDATE`` on ``heads``, whose rows a trigger lets only move
forward, and ``USAGE`` on the ``cosigned`` id sequence): an owner or
superuser can still disable triggers, which ``fedgate audit verify`` then catches.

A writer holds a session advisory lock on its shard, so a second instance configured with the
same origin is refused instead of interleaving leaves.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from fedgate.audit_entry import EntryKind
from fedgate.auditverify import RetiredRange
from fedgate.errors import AuditUnavailable
from fedgate.storage import Schema, prepare_postgres
from gateway.audit import _months, _partition, _rollups, _rows, _search
from gateway.audit._notes import NoteStatements, StoredNotes
from gateway.audit.store import (
    CommitBatch,
    IndexedRow,
    NewLeaf,
    SearchQuery,
    StoredLog,
    StoredRow,
    ThreadedStore,
    kept_checkpoint,
)

__all__ = [
    "AUDIT_SCHEMA",
    "DEFAULT_SCHEMA",
    "MIGRATION_3_KEPT_CHECKPOINTS",
    "MIGRATION_4_MONTHS",
    "MIGRATION_5_TIME_REACH",
    "SCHEMA_VERSION",
    "PgDatabase",
    "PgMonthRetention",
    "connect_reader",
    "finish_partitioning",
    "list_origins",
    "open_pg_store",
    "partition_pending",
    "partition_schema",
]

DEFAULT_SCHEMA = "fedgate_audit"
SCHEMA_VERSION = "5"
_CATCH_UP_CHUNK = 50_000
"""Leaves per catch-up transaction when a writer closes far behind."""
_DDL_LOCK = 0x66656467  # "fedg": serializes schema creation across instances

# A time block's running bounds, from the block before it, when its insert leaves them out: the
# store's own insert does, and so does a gateway of schema version 4 still running while
# another has taken the schema to 5 (a rolling upgrade). NOT NULL is checked after this.
_TIME_BLOCK_BOUNDS = """
CREATE OR REPLACE FUNCTION fedgate_audit_time_block_bounds() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    before_reach BIGINT;
    before_lag BIGINT;
BEGIN
    IF NEW.reach_us IS NULL OR NEW.lag_us IS NULL THEN
        SELECT reach_us, lag_us INTO before_reach, before_lag FROM time_blocks
            WHERE origin = NEW.origin AND block = NEW.block - 1;
        NEW.reach_us := GREATEST(NEW.max_us, before_reach);
        NEW.lag_us := GREATEST(before_lag, before_reach - NEW.min_us, 0);
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER time_blocks_bounds BEFORE INSERT ON time_blocks
    FOR EACH ROW EXECUTE FUNCTION fedgate_audit_time_block_bounds();
"""
# The time block of each complete block of 256 leaves (``_search.time_bounds``): its least and
# greatest time, and the running bounds that make a time window two index seeks.
_TIME_BLOCKS = """
CREATE TABLE IF NOT EXISTS time_blocks (
    origin TEXT NOT NULL,
    block BIGINT NOT NULL,
    min_us BIGINT NOT NULL,
    max_us BIGINT NOT NULL,
    reach_us BIGINT NOT NULL,
    lag_us BIGINT NOT NULL CHECK (lag_us >= 0),
    PRIMARY KEY (origin, block)
);
"""
_DDL = """
CREATE TABLE IF NOT EXISTS shards (
    origin TEXT PRIMARY KEY,
    schema_version TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS leaves (
    origin TEXT NOT NULL,
    idx BIGINT NOT NULL CHECK (idx >= 0),
    leaf BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL,
    leg SMALLINT NOT NULL,
    request_id TEXT NOT NULL,
    time_us BIGINT NOT NULL,
    requesting_agency TEXT NOT NULL,
    officer_id TEXT NOT NULL,
    case_number TEXT NOT NULL,
    action TEXT NOT NULL,
    target_agency TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_leaf_index BIGINT NOT NULL,
    subjects TEXT NOT NULL DEFAULT '[]',
    month INT NOT NULL,
    PRIMARY KEY (origin, month, idx)
) PARTITION BY RANGE (month);
CREATE TABLE IF NOT EXISTS leaf_months (
    origin TEXT NOT NULL,
    month INT NOT NULL,
    first_idx BIGINT NOT NULL CHECK (first_idx >= 0),
    PRIMARY KEY (origin, month)
);
CREATE INDEX IF NOT EXISTS leaf_months_first ON leaf_months (origin, first_idx, month);
CREATE TABLE IF NOT EXISTS retired_months (
    origin TEXT NOT NULL,
    month INT NOT NULL,
    first_idx BIGINT NOT NULL,
    stop_idx BIGINT NOT NULL,
    retired_us BIGINT NOT NULL,
    rule TEXT NOT NULL,
    PRIMARY KEY (origin, month)
);
CREATE TABLE IF NOT EXISTS subjects (
    origin TEXT NOT NULL,
    subject TEXT NOT NULL,
    idx BIGINT NOT NULL,
    PRIMARY KEY (origin, subject, idx)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    origin TEXT NOT NULL,
    size BIGINT NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (origin, size)
);
CREATE TABLE IF NOT EXISTS cosigned (
    id BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    size BIGINT NOT NULL,
    note TEXT NOT NULL
);
DROP INDEX IF EXISTS leaves_request_id;
DROP INDEX IF EXISTS leaves_officer;
DROP INDEX IF EXISTS leaves_case;
DROP INDEX IF EXISTS leaves_requesting;
DROP INDEX IF EXISTS leaves_target;
DO $$ BEGIN
    -- Months: BRIN on time (measured as fast as a B-tree, 1/50 of its size: docs/audit.md).
    -- The legacy unpartitioned table keeps its B-tree (a BRIN would be built at every open).
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('leaves')) = 'p' THEN
        CREATE INDEX IF NOT EXISTS leaves_time_brin ON leaves USING brin (time_us)
            WITH (pages_per_range = 16);
    ELSE
        CREATE INDEX IF NOT EXISTS leaves_time ON leaves (origin, time_us);
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS tiles (
    origin TEXT NOT NULL,
    level SMALLINT NOT NULL CHECK (level >= 0),
    idx BIGINT NOT NULL CHECK (idx >= 0),
    data BYTEA NOT NULL CHECK (length(data) = 8192),
    PRIMARY KEY (origin, level, idx)
);
CREATE INDEX IF NOT EXISTS time_blocks_reach ON time_blocks (origin, reach_us, block);
CREATE INDEX IF NOT EXISTS subjects_idx ON subjects (origin, idx);
CREATE INDEX IF NOT EXISTS cosigned_origin ON cosigned (origin, id);
CREATE INDEX IF NOT EXISTS cosigned_size ON cosigned (origin, size);
CREATE TABLE IF NOT EXISTS heads (
    origin TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('signed', 'cosigned')),
    size BIGINT NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL,
    PRIMARY KEY (origin, kind)
);
CREATE OR REPLACE FUNCTION fedgate_audit_head_forward() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.origin <> OLD.origin OR NEW.kind <> OLD.kind
            OR NEW.size < OLD.size THEN
        RAISE EXCEPTION 'the audit log head only moves forward: % on % refused',
            TG_OP, TG_TABLE_NAME;
    END IF;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER heads_forward_only BEFORE UPDATE OR DELETE ON heads
    FOR EACH ROW EXECUTE FUNCTION fedgate_audit_head_forward();
CREATE OR REPLACE TRIGGER heads_no_truncate BEFORE TRUNCATE ON heads
    FOR EACH STATEMENT EXECUTE FUNCTION fedgate_audit_head_forward();
REVOKE DELETE, TRUNCATE ON heads FROM PUBLIC;
CREATE OR REPLACE FUNCTION fedgate_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$;
"""
_TABLES = (
    "shards",
    "leaves",
    "leaf_months",
    "retired_months",
    "search_rows",
    "subjects",
    "checkpoints",
    "cosigned",
    "time_blocks",
    "tiles",
)
# Fixed text: table names come from the constant tuple above, never from input.
_TRIGGERS = (
    "".join(
        f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}"
        " FOR EACH ROW EXECUTE FUNCTION fedgate_audit_append_only();\n"
        f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}"
        " FOR EACH STATEMENT EXECUTE FUNCTION fedgate_audit_append_only();\n"
        for t in _TABLES
    )
    + f"REVOKE UPDATE, DELETE, TRUNCATE ON {', '.join(_TABLES)} FROM PUBLIC;\n"
)
# The search projection (``_search``): the searchable columns and their indexes, kept behind
# the leaves by ``catch_up``.
_PROJECTION = """
CREATE TABLE IF NOT EXISTS search_rows (
    origin TEXT NOT NULL,
    idx BIGINT NOT NULL CHECK (idx >= 0),
    leg SMALLINT NOT NULL,
    request_id TEXT NOT NULL,
    time_us BIGINT NOT NULL,
    requesting_agency TEXT NOT NULL,
    officer_id TEXT NOT NULL,
    case_number TEXT NOT NULL,
    action TEXT NOT NULL,
    target_agency TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_leaf_index BIGINT NOT NULL,
    PRIMARY KEY (origin, idx)
);
CREATE INDEX IF NOT EXISTS search_request_id_idx ON search_rows (origin, request_id, idx)
    WHERE request_id <> '';
CREATE INDEX IF NOT EXISTS search_officer_idx ON search_rows (origin, officer_id, idx)
    WHERE officer_id <> '';
CREATE INDEX IF NOT EXISTS search_case_idx ON search_rows (origin, case_number, idx)
    WHERE case_number <> '';
CREATE INDEX IF NOT EXISTS search_requesting_idx ON search_rows (origin, requesting_agency, idx);
CREATE INDEX IF NOT EXISTS search_target_idx ON search_rows (origin, target_agency, idx);
CREATE INDEX IF NOT EXISTS search_action_idx ON search_rows (origin, action, idx);
CREATE INDEX IF NOT EXISTS search_outcome_idx ON search_rows (origin, outcome, idx);
CREATE INDEX IF NOT EXISTS search_time ON search_rows (origin, time_us);
"""
_COPY_ALL = (
    f"INSERT INTO search_rows (origin, {_rows.PROJECTED_COLUMNS})"  # noqa: S608 - constant columns
    f" SELECT origin, {_rows.PROJECTED_COLUMNS} FROM leaves ORDER BY origin, idx;"
)
_PROJECTION_DONE = """
DROP INDEX IF EXISTS leaves_request_id_idx, leaves_officer_idx, leaves_case_idx,
    leaves_requesting_idx, leaves_target_idx, leaves_action_idx, leaves_outcome_idx;
CREATE TABLE IF NOT EXISTS projection_state (
    origin TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (origin, name)
);
INSERT INTO projection_state (origin, name, value)
    SELECT origin, 'projected_to', MAX(idx) + 1 FROM leaves GROUP BY origin
    ON CONFLICT (origin, name) DO NOTHING;
"""
# Audit schema step 1 -> 2 (issue 13): the search columns become a projection behind the leaves.
# Leaf rows keep their columns and gain their subjects (JSON), the secondary indexes move from
# the leaves to ``search_rows``, which starts as a copy of every existing leaf's columns.
_STEP_SEARCH_PROJECTION = "".join(
    (
        "ALTER TABLE leaves ADD COLUMN IF NOT EXISTS subjects TEXT NOT NULL DEFAULT '[]';",
        _PROJECTION,
        _COPY_ALL,
        _PROJECTION_DONE,
    )
)
MIGRATION_3_KEPT_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS heads (
    origin TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('signed', 'cosigned')),
    size BIGINT NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL,
    PRIMARY KEY (origin, kind)
);
INSERT INTO heads (origin, kind, size, note)
    SELECT DISTINCT ON (origin) origin, 'signed', size, note FROM checkpoints
    ORDER BY origin, size DESC;
INSERT INTO heads (origin, kind, size, note)
    SELECT DISTINCT ON (origin) origin, 'cosigned', size, note FROM cosigned
    ORDER BY origin, id DESC;
"""
"""Schema step 2 -> 3, checkpoints kept at an interval: each shard's newest signed and cosigned
checkpoints become its heads; the notes already stored stay (the log is append-only), new
commits keep only what ``kept_checkpoint`` keeps."""

MIGRATION_4_MONTHS = """
ALTER TABLE leaves ADD COLUMN IF NOT EXISTS month INT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS leaf_months (
    origin TEXT NOT NULL,
    month INT NOT NULL,
    first_idx BIGINT NOT NULL CHECK (first_idx >= 0),
    PRIMARY KEY (origin, month)
);
INSERT INTO leaf_months (origin, month, first_idx)
    SELECT s.origin, 0, 0 FROM shards AS s
    WHERE EXISTS (SELECT 1 FROM leaves AS l WHERE l.origin = s.origin AND l.month = 0)
    ON CONFLICT (origin, month) DO NOTHING;
"""
"""Schema step 3 -> 4, leaves by month: an existing (unpartitioned) ``leaves`` gains the
``month`` column, 0 for all its rows (a catalog change, no rewrite), and one range-map row per
shard: the store reads and writes it as its one month (the legacy layout) until ``fedgate audit
migrate`` copies it into monthly partitions (``_partition``)."""

# A log older than time blocks has none: the step starts from an empty table of version 4's.
_TIME_BLOCKS_ASIDE = """
CREATE TABLE IF NOT EXISTS time_blocks (
    origin TEXT NOT NULL,
    block BIGINT NOT NULL,
    min_us BIGINT NOT NULL,
    max_us BIGINT NOT NULL,
    PRIMARY KEY (origin, block)
);
DROP INDEX IF EXISTS time_blocks_min;
DROP INDEX IF EXISTS time_blocks_max;
ALTER TABLE time_blocks RENAME TO time_blocks_v4;
ALTER INDEX time_blocks_pkey RENAME TO time_blocks_v4_pkey;
"""
_TIME_BLOCKS_COPY = """
INSERT INTO time_blocks (origin, block, min_us, max_us, reach_us, lag_us)
    SELECT origin, block, min_us, max_us, reach_us,
        MAX(late) OVER (PARTITION BY origin ORDER BY block ROWS UNBOUNDED PRECEDING)
    FROM (
        SELECT origin, block, min_us, max_us, reach_us,
            GREATEST(0, COALESCE(
                LAG(reach_us) OVER (PARTITION BY origin ORDER BY block), min_us) - min_us
            ) AS late
        FROM (
            SELECT origin, block, min_us, max_us,
                MAX(max_us) OVER (PARTITION BY origin ORDER BY block ROWS UNBOUNDED PRECEDING)
                    AS reach_us
            FROM time_blocks_v4
        ) AS reached
    ) AS lagged;
DROP TABLE time_blocks_v4;
"""
MIGRATION_5_TIME_REACH = _TIME_BLOCKS_ASIDE + _TIME_BLOCKS + _TIME_BLOCKS_COPY
"""Schema step 4 -> 5, time windows in two seeks (issue 18): each shard's time blocks gain
their running bounds ``reach_us`` and ``lag_us`` (``_search.time_bounds``), computed for the
existing blocks by window functions; the min and max indexes give way to one on the reach."""

AUDIT_SCHEMA = Schema(
    store="audit log",
    version=int(SCHEMA_VERSION),
    create=_TIME_BLOCKS
    + _TIME_BLOCK_BOUNDS
    + _DDL
    + _months.MONTH_FUNCTION
    + _PROJECTION
    + _rollups.DDL_PG
    + _TRIGGERS,
    migrations={
        1: _STEP_SEARCH_PROJECTION,
        2: MIGRATION_3_KEPT_CHECKPOINTS,
        3: MIGRATION_4_MONTHS,
        4: MIGRATION_5_TIME_REACH,
    },
    legacy_table="shards",
)

# The origin goes last: each row is the shared ``_rows.leaf_values`` tuple plus ``(origin,)``.
_COPY_LEAVES = f"COPY leaves ({_rows.LEAF_COLUMNS}, origin, month) FROM STDIN"
# Every read of leaves by index range names its months (``_months.SPAN``): the planner then
# reads only those partitions. Parameters: origin, first and last month, start, stop.
_RANGE = "origin = %s AND month >= %s AND month <= %s AND idx >= %s AND idx < %s"
_SELECT_ROWS = (
    f"SELECT {_rows.LEAF_COLUMNS} FROM leaves"  # noqa: S608 - constant columns
    f" WHERE {_RANGE} ORDER BY idx"
)
# The catch-up of the search projection over the leaves [%s, %s) (``catch_up``).
_PROJECT_ROWS = (
    f"INSERT INTO search_rows (origin, {_rows.PROJECTED_COLUMNS})"  # noqa: S608 - constant columns
    f" SELECT origin, {_rows.PROJECTED_COLUMNS} FROM leaves"
    f" WHERE {_RANGE} ORDER BY idx"
)
_PROJECT_SUBJECTS = (
    "INSERT INTO subjects (origin, subject, idx) SELECT origin, j.value, idx"  # noqa: S608
    " FROM leaves, jsonb_array_elements_text(subjects::jsonb) AS j(value)"
    f" WHERE {_RANGE} AND subjects <> '[]'"
)
# Found through the BRIN index on time (``leaves_time_brin``) in the months from the window's on
# (a leaf's month is never before its time's): only the window's block ranges are read.
_REQUEST_LEGS_SINCE = (
    "SELECT leaf FROM leaves WHERE origin = %s AND month >= %s AND time_us >= %s AND leg = %s"
    " AND request_id <> ''"
)
# The time block of each complete block of 256 leaves (``_search.time_bounds``); its running
# bounds are the trigger's (``_TIME_BLOCK_BOUNDS``).
_INSERT_TIME_BLOCK = (
    "INSERT INTO time_blocks (origin, block, min_us, max_us)"  # noqa: S608 - constant
    f" SELECT %s, %s, MIN(time_us), MAX(time_us) FROM leaves WHERE {_RANGE}"
)


# Checkpoint look-ups: the history (kept at an interval) and the head, each by its key.
_HEAD = "SELECT size, note FROM heads WHERE origin = %s AND kind = %s"
_SET_HEAD = (
    "INSERT INTO heads (origin, kind, size, note) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (origin, kind) DO UPDATE SET size = EXCLUDED.size, note = EXCLUDED.note"
)
_CHECKPOINT_AT = (
    "SELECT size, note FROM checkpoints WHERE origin = %(o)s AND size = %(p0)s UNION"
    " SELECT size, note FROM heads WHERE origin = %(o)s AND kind = 'signed' AND size = %(p1)s"
    " LIMIT 1"
)
_CHECKPOINTS_IN = (
    "SELECT size, note FROM checkpoints WHERE origin = %(o)s AND size > %(p0)s"
    " AND size <= %(p1)s UNION SELECT size, note FROM heads WHERE origin = %(o)s"
    " AND kind = 'signed' AND size > %(p2)s AND size <= %(p3)s ORDER BY size"
)
_CHECKPOINT_AT_OR_BEFORE = (
    "(SELECT size, note FROM checkpoints WHERE origin = %(o)s AND size <= %(p0)s"
    " ORDER BY size DESC LIMIT 1) UNION SELECT size, note FROM heads WHERE origin = %(o)s"
    " AND kind = 'signed' AND size <= %(p1)s ORDER BY size DESC LIMIT 1"
)
_COSIGNED_IN = (
    "SELECT size, note FROM cosigned WHERE origin = %(o)s AND size > %(p0)s"
    " AND size <= %(p1)s UNION SELECT size, note FROM heads WHERE origin = %(o)s"
    " AND kind = 'cosigned' AND size > %(p2)s AND size <= %(p3)s ORDER BY size"
)
_COSIGNED_COVERING = (
    "SELECT size, note FROM heads WHERE origin = %(o)s AND kind = 'cosigned' AND size > %(p0)s"
)
_NOTES = NoteStatements(
    at=_CHECKPOINT_AT,
    signed_in=_CHECKPOINTS_IN,
    at_or_before=_CHECKPOINT_AT_OR_BEFORE,
    cosigned_in=_COSIGNED_IN,
    cosigned_covering=_COSIGNED_COVERING,
)

_ROLLUP_DAY, _ROLLUP_OFFICER = _rollups.upserts(pg=True)
_ROLLUP_COLUMNS = (
    f"SELECT idx, {_rows.COLUMNS} FROM leaves"  # noqa: S608 - constant columns
    f" WHERE {_RANGE} ORDER BY idx"
)
_LEAF_BYTES = f"SELECT leaf FROM leaves WHERE {_RANGE} ORDER BY idx"  # noqa: S608 - constant
_LEAF_HASHES = f"SELECT leaf_hash FROM leaves WHERE {_RANGE} ORDER BY idx"  # noqa: S608 - constant
_LEAF_ROWS = f"SELECT idx, leaf, leaf_hash FROM leaves WHERE {_RANGE} ORDER BY idx"  # noqa: S608
_NEXT_AFTER = (
    f"SELECT ({_months.NEXT_IN_MONTH}),"  # noqa: S608 - constant text
    " EXISTS (SELECT 1 FROM leaf_months WHERE origin = %s AND month > %s)"
)
"""A commit's check, given the shard and the month of its last leaf as its writer knows it (-1:
none), each twice: one past the greatest index in that month's partition, and whether a later
month has leaves (months rise with indices, and a month's first leaf comes with its
``leaf_months`` row, in one transaction); a last month retired with the shard's newest leaf
in it gives its retired range's end (``_months.NEXT_IN_MONTH``). It detects another writer's
leaves written in turn, committed before this commit's statement ran (a writer that lost its
lock and a successor that took it). It takes no row lock, so it does not exclude a writer
committing at the same moment: the guarantee against concurrent writers is the session
advisory writer lock (``_months.take_writer_lock``), held by the one writer of a shard from its
open to its close."""
_MONTHS_AHEAD = 2
"""Partitions created ahead when a writer opens: the current month and the next."""


def _connect(dsn: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with conn.transaction():  # instances starting together: one creates the schema
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    except BaseException:
        conn.close()
        raise
    return conn


def connect_reader(
    dsn: str, *, origin: str, schema: str = DEFAULT_SCHEMA
) -> psycopg.Connection[Any]:
    """An autocommit connection to shard ``origin`` of ``schema`` whose every transaction is
    READ ONLY (it creates nothing, not even the schema). Raises ``psycopg.Error``, and
    ``AuditUnavailable`` when there is no such shard."""
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        prepare_postgres(conn, AUDIT_SCHEMA, where=_where(schema), writable=False)
        if conn.execute("SELECT 1 FROM shards WHERE origin = %s", (origin,)).fetchone() is None:
            raise AuditUnavailable(f"no audit shard {origin!r} in schema {schema!r}")
    except BaseException:
        conn.close()
        raise
    return conn


def _is_partitioned(conn: psycopg.Connection[Any], *, writer: bool = True) -> bool:
    """Whether ``leaves`` is partitioned by month; raises ``AuditUnavailable`` for a writer
    while a migration into partitions is unfinished (its source table is still there)."""
    moving = conn.execute("SELECT to_regclass('leaves_unpartitioned')").fetchone()
    if writer and moving is not None and moving[0] is not None:
        raise AuditUnavailable(
            "the audit leaves are being moved into monthly partitions: finish with "
            "`fedgate audit migrate --pg DSN` (gateways stopped)"
        )
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('leaves')").fetchone()
    return row is not None and row[0] == "p"


_DEADLOCK_ATTEMPTS = 4


def _again_after_deadlock(transaction: Callable[[], None]) -> None:
    """Run ``transaction`` (one whole transaction), again when PostgreSQL aborted it to break
    a deadlock (at most ``_DEADLOCK_ATTEMPTS`` times in all): an aborted transaction changed
    nothing, so running it again is safe. Instances sharing a schema deadlock when one's schema
    transaction (DDL, at start-up) and another's commit take the same tables in other orders;
    without this the commit failed and its gateway stopped (seen with two gateways started
    together). Raises what the last attempt raised."""
    for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
        try:
            transaction()
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == _DEADLOCK_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)


def _where(schema: str) -> str:
    """A store's name in messages (never the DSN: it may hold a password)."""
    return f"PostgreSQL schema {schema!r}"


class PgDatabase(StoredNotes):
    """One shard in PostgreSQL (``LogDatabase``). Not thread-safe: one thread per instance.
    Raises ``AuditUnavailable`` for every database failure; a broken connection is reopened
    on the next call (a writer retakes its shard lock)."""

    NOTES = _NOTES

    def __init__(
        self, dsn: str, *, origin: str, schema: str = DEFAULT_SCHEMA, writer: bool
    ) -> None:
        self._dsn = dsn
        self._origin = origin
        self._schema = schema
        self._writer = writer
        self._where = _where(schema)
        self._conn: psycopg.Connection[Any] | None = None
        self._partitioned = True  # set by ``_open``: False for the legacy layout (month 0)
        self._have_months: set[int] = set()  # partitions known to exist (a writer's cache)
        self._last_month: int | None = None
        """The month of the shard's last leaf (-1: none) as this writer's last commit left it,
        so that a commit does not read it; ``None``: unknown (opened, reconnected, or the last
        commit failed), read by the next commit."""
        try:
            self._conn = self._open()
        except psycopg.Error as exc:
            raise self._error("open the store", exc) from exc

    def _open(self) -> psycopg.Connection[Any]:
        self._last_month = None  # another writer may have written while this one was away
        conn = _connect(self._dsn, self._schema)
        try:
            if self._writer:
                _again_after_deadlock(lambda: self._prepare(conn))
                if not _months.take_writer_lock(conn, self._schema, self._origin):
                    raise AuditUnavailable(
                        f"another gateway instance is writing the audit shard {self._origin!r}: "
                        "each instance needs its own origin"
                    )
                conn.execute(
                    "INSERT INTO shards (origin, schema_version) VALUES (%s, %s)"
                    " ON CONFLICT (origin) DO NOTHING",
                    (self._origin, SCHEMA_VERSION),
                )
                # Rollups cover every entry committed from now on; older ones: ``migrate``.
                conn.execute(
                    "INSERT INTO projection_state (origin, name, value) SELECT %s, 'rollups_from',"
                    " COALESCE(MAX(idx) + 1, 0) FROM leaves WHERE origin = %s"
                    " UNION ALL SELECT %s, 'rollups_backfilled', 0"
                    " UNION ALL SELECT %s, 'projected_to', COALESCE(MAX(idx) + 1, 0)"
                    " FROM leaves WHERE origin = %s"
                    " ON CONFLICT (origin, name) DO NOTHING",
                    (self._origin,) * 5,
                )
            else:
                # A reader never writes: the database holds it to that too.
                conn.execute("SET default_transaction_read_only = on")
                prepare_postgres(conn, AUDIT_SCHEMA, where=self._where, writable=False)
                self._partitioned = _is_partitioned(conn, writer=False)
                row = conn.execute(
                    "SELECT 1 FROM shards WHERE origin = %s", (self._origin,)
                ).fetchone()
                if row is None:
                    raise AuditUnavailable(
                        f"no audit shard {self._origin!r} in schema {self._schema!r}"
                    )
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """A writer's schema transaction: tables, triggers and steps, this month's partitions.

        Its DDL locks the tables one by one in the schema's order while another instance's
        commit may hold ``leaves`` and wait for ``heads``: PostgreSQL then aborts one of the
        two, and the caller runs this again (``_again_after_deadlock``)."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            prepare_postgres(conn, AUDIT_SCHEMA, where=self._where)
            self._partitioned = _is_partitioned(conn)
            if self._partitioned:
                now = _months.month_of(time.time_ns() // 1000)
                ahead = set(range(now, now + _MONTHS_AHEAD))
                self._have_months = _months.create_partitions(conn, ahead)

    def _c(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._open()
        return self._conn

    @property
    def origin(self) -> str:
        return self._origin

    def _error(self, what: str, exc: psycopg.Error) -> AuditUnavailable:
        return AuditUnavailable(f"audit shard {self._origin!r} (PostgreSQL): cannot {what}: {exc}")

    def load(self) -> StoredLog:
        o = (self._origin,)
        try:
            conn = self._c()
            next_index = self.next_index()
            edge = next_index - next_index % _search.BLOCK
            hashes = self.leaf_hashes(edge, next_index)
            row = conn.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM tiles WHERE origin = %s AND level = 0", o
            ).fetchone()
            tile_count = 0 if row is None else int(row[0])
            cp = conn.execute(_HEAD, (self._origin, "signed")).fetchone()
            co = conn.execute(_HEAD, (self._origin, "cosigned")).fetchone()
        except psycopg.Error as exc:
            raise self._error("load the log", exc) from exc
        return _rows.stored_log(self._origin, hashes, tile_count, next_index, cp, co)

    def _months_of(self, leaves: Sequence[_rows.LeafValues], last: int) -> list[int]:
        """Each leaf's month: its time's, but never before the month of the leaf before it
        (``last`` for the first; -1 when there is none)."""
        if not self._partitioned:
            return [_months.LEGACY_MONTH] * len(leaves)
        out: list[int] = []
        floor = last
        for leaf in leaves:
            floor = max(floor, _months.month_of(leaf[5]))
            out.append(floor)
        return out

    def _ensure_months(self, months: set[int]) -> None:
        """Create the partitions of ``months`` the writer has not seen, in a transaction of
        their own under the schema lock: never inside a commit's, where the lock on ``leaves``
        it takes would wait for (and make wait) the other shards' commits."""
        missing = months - self._have_months
        if not missing:
            return
        conn = self._c()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            self._have_months = _months.create_partitions(conn, missing)

    def commit(self, batch: CommitBatch) -> None:
        o = self._origin
        key = (o,)
        leaves = _rows.leaf_values(batch.leaves)
        start = batch.leaves[0].index if batch.leaves else batch.size

        def once() -> None:
            conn = self._c()
            # Taken while the commit runs: one that fails leaves it unknown, to be read again.
            last, self._last_month = self._last_month, None
            if last is None:
                row = conn.execute(_months.LAST_MONTH, key).fetchone()
                last = -1 if row is None else int(row[0])
            months = self._months_of(leaves, last)
            if self._partitioned:
                self._ensure_months(set(months))
            with conn.transaction(), conn.cursor() as cur:
                row = cur.execute(_NEXT_AFTER, (o, last, o, last)).fetchone()
                if row is None:  # fail closed: no answer is not "no other writer"
                    raise AuditUnavailable(
                        f"audit shard {o!r}: the database gave no next index to check the "
                        "batch against"
                    )
                found, later = row
                if later:
                    raise AuditUnavailable(f"audit shard {o!r}: another writer appended meanwhile")
                if found != start:
                    raise AuditUnavailable(
                        f"audit shard {o!r}: the batch starts at index {start} but the "
                        f"database's next index is {found}"
                    )
                # COPY: about twice as fast as a pipelined executemany for a batch.
                if leaves:
                    with cur.copy(_COPY_LEAVES) as copy:
                        for leaf, month in zip(leaves, months, strict=True):
                            copy.write_row((*leaf, o, month))
                    firsts: dict[int, int] = {}
                    for leaf, month in zip(leaves, months, strict=True):
                        if month > last:
                            firsts.setdefault(month, leaf[0])
                    if firsts:  # a month's first leaf only: not a round trip per commit
                        cur.executemany(
                            "INSERT INTO leaf_months (origin, month, first_idx)"
                            " VALUES (%s, %s, %s)",
                            [(o, m, first) for m, first in firsts.items()],
                        )
                if batch.tiles:
                    with cur.copy("COPY tiles (origin, level, idx, data) FROM STDIN") as copy:
                        for tile in batch.tiles:
                            copy.write_row(key + tile)
                for block in range(start // _search.BLOCK, batch.size // _search.BLOCK):
                    lo = block * _search.BLOCK
                    self._insert_time_block(cur, block, lo)
                if kept_checkpoint(start, batch.size):
                    cur.execute(
                        "INSERT INTO checkpoints (origin, size, note) VALUES (%s, %s, %s)",
                        (o, batch.size, batch.checkpoint),
                    )
                cur.execute(_SET_HEAD, (o, "signed", batch.size, batch.checkpoint))
                for statement, rows in batch.beside:  # the bodies' tables (``_bodies``)
                    cur.executemany(statement, rows)
            self._last_month = months[-1] if months else last  # committed

        try:
            _again_after_deadlock(once)
        except psycopg.Error as exc:
            raise self._error("commit a batch", exc) from exc

    def add_cosigned(self, size: int, note: str) -> None:
        o = self._origin
        try:
            conn = self._c()
            with conn.transaction():
                head = conn.execute(_HEAD + " FOR UPDATE", (o, "cosigned")).fetchone()
                if head is None or kept_checkpoint(int(head[0]), size):
                    conn.execute(
                        "INSERT INTO cosigned (origin, size, note) VALUES (%s, %s, %s)",
                        (o, size, note),
                    )
                conn.execute(_SET_HEAD, (o, "cosigned", size, note))
        except psycopg.Error as exc:
            raise self._error("store a cosigned checkpoint", exc) from exc

    def _span(
        self, cur: Any, start: int, stop: int, *, origin: str | None = None
    ) -> tuple[str, int, int, int, int] | None:
        """The ``_RANGE`` parameters of the leaves ``[start, stop)`` of this shard (or of shard
        ``origin``): their months from the range map. ``None`` when the shard holds none."""
        if stop <= start:
            return None
        o = self._origin if origin is None else origin
        row = cur.execute(_months.SPAN, {"o": o, "a": start, "b": stop}).fetchone()
        if row is None or row[1] is None:
            return None
        first = int(row[1]) if row[0] is None else int(row[0])
        return (o, first, int(row[1]), start, stop)

    def _in_range(self, statement: str, start: int, stop: int) -> list[tuple[Any, ...]]:
        """The rows of ``statement`` (``... WHERE {_RANGE} ...``) over ``[start, stop)``."""
        conn = self._c()
        span = self._span(conn, start, stop)
        return [] if span is None else conn.execute(statement, span).fetchall()

    def _insert_time_block(self, cur: Any, block: int, lo: int) -> None:
        span = self._span(cur, lo, lo + _search.BLOCK)
        if span is not None:
            cur.execute(_INSERT_TIME_BLOCK, (self._origin, block, *span))

    def _blobs(self, what: str, statement: str, start: int, stop: int) -> list[bytes]:
        try:
            return [bytes(r[0]) for r in self._in_range(statement, start, stop)]
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def leaves(self, start: int, stop: int) -> list[bytes]:
        return self._blobs("read entries", _LEAF_BYTES, start, stop)

    def shard_leaf(self, origin: str, index: int) -> bytes | None:
        try:
            conn = self._c()
            span = self._span(conn, index, index + 1, origin=origin)
            row = None if span is None else conn.execute(_LEAF_BYTES, span).fetchone()
        except psycopg.Error as exc:
            raise self._error(f"read entry {index} of shard {origin!r}", exc) from exc
        return None if row is None else bytes(row[0])

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        return self._blobs(
            "read leaf hashes",
            _LEAF_HASHES,
            start,
            stop,
        )

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        """The stored full tiles ``(index, data)`` of ``level`` in ``[start, stop)``, in order."""
        try:
            return [
                (int(r[0]), bytes(r[1]))
                for r in self._c().execute(
                    "SELECT idx, data FROM tiles WHERE origin = %s AND level = %s AND idx >= %s"
                    " AND idx < %s ORDER BY idx",
                    (self._origin, level, start, stop),
                )
            ]
        except psycopg.Error as exc:
            raise self._error("read tiles", exc) from exc

    def retired(self) -> list[RetiredRange]:
        """The entries of this shard the retention job retired (``retired_months``), oldest
        first; verification starts past them and checks the log names each."""
        try:
            conn = self._c()
            found = conn.execute("SELECT to_regclass('retired_months')").fetchone()
            if found is None or found[0] is None:
                return []
            return [
                RetiredRange(_months.month_name(int(m)), int(a), int(b))
                for m, a, b in conn.execute(
                    "SELECT month, first_idx, stop_idx FROM retired_months WHERE origin = %s"
                    " ORDER BY first_idx, month",
                    (self._origin,),
                )
            ]
        except psycopg.Error as exc:
            raise self._error("read the retired months", exc) from exc

    def leaf_rows(self, start: int, stop: int) -> list[tuple[int, bytes, bytes]]:
        try:
            return [
                (int(r[0]), bytes(r[1]), bytes(r[2]))
                for r in self._in_range(
                    _LEAF_ROWS,
                    start,
                    stop,
                )
            ]
        except psycopg.Error as exc:
            raise self._error("read entries", exc) from exc

    def rows(self, start: int, stop: int) -> list[StoredRow]:
        try:
            conn = self._c()
            projected = self._projected_to()
            subjects = _rows.group_subjects(
                conn.execute(
                    "SELECT idx, subject FROM subjects WHERE origin = %s AND idx >= %s"
                    ' AND idx < %s ORDER BY idx, subject COLLATE "C"',
                    (self._origin, start, min(stop, projected)),
                )
            )
            # psycopg reads bytea as ``bytes``: the rows need no conversion.
            return _rows.stored_rows(self._in_range(_SELECT_ROWS, start, stop), subjects, projected)
        except psycopg.Error as exc:
            raise self._error("read rows", exc) from exc

    def next_index(self) -> int:
        try:
            row = self._c().execute(_months.NEXT_INDEX, (self._origin, self._origin)).fetchone()
        except psycopg.Error as exc:
            raise self._error("count entries", exc) from exc
        return 0 if row is None else int(row[0])

    def _notes(self, what: str, statement: str, params: tuple[int, ...]) -> list[tuple[int, str]]:
        """Rows ``(size, note)`` of ``statement``, whose every ``%(o)s`` is the origin."""
        o = self._origin
        values: dict[str, Any] = {"o": o, **{f"p{i}": v for i, v in enumerate(params)}}
        try:
            return [(int(r[0]), str(r[1])) for r in self._c().execute(statement, values)]
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def _rollup_leaves(self, span: range) -> list[NewLeaf]:
        """The entries of ``span`` with only what the rollups read (no leaf bytes)."""
        rows = self._in_range(_ROLLUP_COLUMNS, span.start, span.stop)
        return [NewLeaf(r[0], b"", b"", (*r[1:], (), -1)) for r in rows]

    def _projected_to(self) -> int:
        row = (
            self._c()
            .execute(
                "SELECT value FROM projection_state WHERE origin = %s AND name = 'projected_to'",
                (self._origin,),
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def projection_lag(self) -> int:
        """How many committed leaves the search projection does not hold yet."""
        try:
            return self.next_index() - self._projected_to()
        except psycopg.Error as exc:
            raise self._error("read the projection state", exc) from exc

    def catch_up(self, limit: int) -> int:
        """Copy the next at most ``limit`` committed leaves into the search projection (their
        columns, subjects and rollups) in one transaction; returns the leaves still behind.

        The transaction does not wait for its WAL flush (``synchronous_commit = off``): the
        projection is rebuilt from the leaves, and what a crash loses of it is lost with its
        ``projected_to``. Raises ``AuditUnavailable``.
        """
        o = self._origin
        key = (o,)
        try:
            conn = self._c()
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL synchronous_commit = off")
                row = cur.execute(
                    "SELECT value FROM projection_state WHERE origin = %s"
                    " AND name = 'projected_to' FOR UPDATE",
                    key,
                ).fetchone()
                start = 0 if row is None else int(row[0])
                end = self.next_index()
                stop = min(end, start + limit)
                span = self._span(cur, start, stop)
                if span is not None:
                    cur.execute(_PROJECT_ROWS, span)
                    cur.execute(_PROJECT_SUBJECTS, span)
                    rows = self._rollup_leaves(range(start, stop))
                    cur.executemany(_ROLLUP_DAY, [key + r for r in _rollups.day_rows(rows)])
                    cur.executemany(_ROLLUP_OFFICER, [key + r for r in _rollups.officer_rows(rows)])
                    cur.execute(
                        "UPDATE projection_state SET value = %s"
                        " WHERE origin = %s AND name = 'projected_to'",
                        (stop, o),
                    )
        except psycopg.Error as exc:
            raise self._error("update the search projection", exc) from exc
        return end - stop

    def migration_state(self) -> tuple[int, int, int, int]:
        """``(full level-0 tiles, time blocks, rollups_from, rollups_backfilled)``: what the
        tiled layout and the projections already cover (``migrate``). Raises
        ``AuditUnavailable``."""
        o = (self._origin,)
        try:
            conn = self._c()
            tiles = conn.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM tiles WHERE origin = %s AND level = 0", o
            ).fetchone()
            blocks = conn.execute(
                "SELECT COALESCE(MAX(block) + 1, 0) FROM time_blocks WHERE origin = %s", o
            ).fetchone()
            state = dict(
                conn.execute(
                    "SELECT name, value FROM projection_state WHERE origin = %s", o
                ).fetchall()
            )
        except psycopg.Error as exc:
            raise self._error("read the migration state", exc) from exc
        assert tiles is not None
        assert blocks is not None
        return (
            int(tiles[0]),
            int(blocks[0]),
            int(state["rollups_from"]),
            int(state["rollups_backfilled"]),
        )

    def migrate_chunk(
        self,
        tiles: Sequence[tuple[int, int, bytes]],
        blocks: range,
        rollups: range,
    ) -> None:
        """In one transaction: add ``tiles``, the time blocks ``blocks``, and the rollups of the
        entries ``rollups`` (then recorded as backfilled up to its stop). For ``migrate``."""
        o = self._origin
        key = (o,)
        try:
            conn = self._c()
            with conn.transaction(), conn.cursor() as cur:
                if tiles:
                    with cur.copy("COPY tiles (origin, level, idx, data) FROM STDIN") as copy:
                        for tile in tiles:
                            copy.write_row(key + tile)
                for block in blocks:
                    self._insert_time_block(cur, block, block * _search.BLOCK)
                if rollups:
                    rows = self._rollup_leaves(rollups)
                    cur.executemany(_ROLLUP_DAY, [key + r for r in _rollups.day_rows(rows)])
                    cur.executemany(_ROLLUP_OFFICER, [key + r for r in _rollups.officer_rows(rows)])
                    cur.execute(
                        "UPDATE projection_state SET value = %s"
                        " WHERE origin = %s AND name = 'rollups_backfilled'",
                        (rollups.stop, o),
                    )
        except psycopg.Error as exc:
            raise self._error("migrate", exc) from exc

    def _fetch(self, statement: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return self._c().execute(statement.encode(), params).fetchall()

    def search(self, query: SearchQuery) -> list[IndexedRow]:
        try:
            return _search.search(self._fetch, _search.PG, (self._origin,), query)
        except psycopg.Error as exc:
            raise self._error("search", exc) from exc

    def request_legs_since(self, since_us: int) -> Iterator[bytes]:
        """The leaves of the request legs received at or after ``since_us`` (microseconds since
        the epoch), in no particular order, streamed in chunks through a server-side cursor
        on the time index, in the months from the window's on (only the window is read, however
        long the log). Raises
        ``AuditUnavailable``."""
        month = _months.month_of(since_us) if self._partitioned else _months.LEGACY_MONTH
        params = (self._origin, month, since_us, int(EntryKind.REQUEST))
        try:
            conn = self._c()
            with conn.transaction(), conn.cursor(name="request_legs_since") as cur:
                cur.itersize = 512
                cur.execute(_REQUEST_LEGS_SINCE, params)
                for (leaf,) in cur:
                    yield bytes(leaf)
        except psycopg.Error as exc:
            raise self._error("read the recent request legs", exc) from exc

    def close(self) -> None:
        """Close; a writer first brings the search projection up to date (best effort)."""
        if self._writer and self._conn is not None and not self._conn.broken:
            with contextlib.suppress(AuditUnavailable):
                while self.catch_up(_CATCH_UP_CHUNK):
                    pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def list_origins(dsn: str, *, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """The origins of every shard in ``schema``; raises ``AuditUnavailable``."""
    try:
        with _connect(dsn, schema) as conn:
            return [str(r[0]) for r in conn.execute("SELECT origin FROM shards ORDER BY origin")]
    except psycopg.Error as exc:
        raise AuditUnavailable(f"cannot list audit shards in PostgreSQL: {exc}") from exc


async def open_pg_store(
    dsn: str, *, origin: str, state_path: Path, schema: str = DEFAULT_SCHEMA
) -> ThreadedStore:
    """The PostgreSQL ``AuditStore`` for shard ``origin``.

    ``state_path`` is the local file where this instance's log records the last checkpoint it
    signed (rollback tripwire). Raises ``AuditUnavailable`` when the database cannot be
    reached or another instance holds the shard.
    """
    return await ThreadedStore.open(
        lambda: PgDatabase(dsn, origin=origin, schema=schema, writer=True),
        lambda: PgDatabase(dsn, origin=origin, schema=schema, writer=False),
        name="audit-pg",
        state_path=state_path,
    )


def partition_schema(
    dsn: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    progress: Callable[[str, int, int], None] | None = None,
) -> _partition.PartitionReport:
    """Move the leaves of every shard of ``schema`` into monthly partitions (``_partition``),
    gateways stopped; a schema already partitioned is left as it is. Open each shard once
    as its writer first (that brings the schema to this version). Raises ``AuditUnavailable``."""
    try:
        with _connect(dsn, schema) as conn:
            return _partition.partition_leaves(
                conn,
                schema=schema,
                create=AUDIT_SCHEMA.create,
                ddl_lock=_DDL_LOCK,
                progress=progress,
            )
    except psycopg.Error as exc:
        raise AuditUnavailable(
            f"cannot partition the audit leaves in {_where(schema)}: {exc}"
        ) from exc


class PgMonthRetention:
    """The months of a schema's partitioned leaves for the retention job (``MonthRetirer``):
    which are due, and detaching one (``_partition``). Each call is one short connection.
    Detached tables are kept: archive, then drop them."""

    def __init__(self, dsn: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        self._dsn = dsn
        self._schema = schema

    def due(self, cutoff_us: int) -> list[_partition.RetiredMonth]:
        try:
            with _connect(self._dsn, self._schema) as conn:
                if not _is_partitioned(conn, writer=False):
                    return []
                return _partition.due_months(conn, cutoff_us)
        except psycopg.Error as exc:
            raise AuditUnavailable(
                f"cannot read the months of {_where(self._schema)}: {exc}"
            ) from exc

    def retire(self, month: _partition.RetiredMonth, *, rule: str, now_us: int) -> str:
        try:
            with _connect(self._dsn, self._schema) as conn:
                return _partition.retire_month(
                    conn, month, rule=rule, now_us=now_us, ddl_lock=_DDL_LOCK
                )
        except psycopg.Error as exc:
            raise AuditUnavailable(
                f"cannot retire {month.name} in {_where(self._schema)}: {exc}"
            ) from exc


def partition_pending(dsn: str, *, schema: str = DEFAULT_SCHEMA) -> tuple[bool, bool]:
    """``(pending, resuming)``: whether the leaves of ``schema`` still need moving into monthly
    partitions, and whether an earlier move stopped half-way. Raises ``AuditUnavailable``."""
    try:
        with _connect(dsn, schema) as conn:
            old = conn.execute("SELECT to_regclass('leaves_unpartitioned')").fetchone()
            if old is not None and old[0] is not None:
                return True, True
            return not _is_partitioned(conn), False
    except psycopg.Error as exc:
        raise AuditUnavailable(f"cannot read {_where(schema)}: {exc}") from exc


def finish_partitioning(dsn: str, *, schema: str = DEFAULT_SCHEMA) -> bool:
    """Drop the unpartitioned leaves once the log verified from the partitions; returns
    whether there were any. Raises ``AuditUnavailable``."""
    try:
        with _connect(dsn, schema) as conn:
            return _partition.finish(conn)
    except psycopg.Error as exc:
        raise AuditUnavailable(f"cannot finish partitioning in {_where(schema)}: {exc}") from exc
