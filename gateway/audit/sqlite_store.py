"""The embedded audit store: one SQLite file per log shard.

WAL journal with ``synchronous=FULL`` (a commit is on disk when it returns), append-only
enforced by triggers that abort any UPDATE or DELETE of leaves, subjects and checkpoints, and a
lock file so that only one process writes a shard. Readers (the AuditService, ``fedgate audit``)
may read while the gateway writes.

New databases use 2 KiB pages (``_PAGE_SIZE``): a commit of a few ~1 KiB leaves touches the same
number of b-tree pages at half the size, so it writes about 40% less WAL and spends about 10%
less CPU than with 4 KiB pages. The page size is fixed when the first table is created; an
existing database keeps its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from fedgate.audit_entry import EntryKind
from fedgate.auditverify import RetiredRange
from fedgate.errors import AuditUnavailable
from fedgate.storage import Schema, immediate, open_sqlite, prepare_sqlite, sql_statements
from gateway.audit import _key_tiers, _rekey, _rollups, _rows, _search
from gateway.audit._notes import NoteStatements, StoredNotes
from gateway.audit.store import (
    CommitBatch,
    IndexedRow,
    SearchQuery,
    StoredLog,
    StoredRow,
    ThreadedStore,
    kept_checkpoint,
)

__all__ = [
    "AUDIT_SCHEMA",
    "INSERT_LEAF",
    "INSERT_TIME_BLOCK",
    "MIGRATION_3_KEPT_CHECKPOINTS",
    "MIGRATION_4_KEY_BLOCKS",
    "MIGRATION_5_SMALLER_KEY_BLOCKS",
    "MIGRATION_6_TIME_REACH",
    "REKEY_SUBJECTS",
    "SCHEMA_VERSION",
    "SET_HEAD",
    "SqliteDatabase",
    "default_state_path",
    "open_sqlite_store",
]

SCHEMA_VERSION = "7"

# The newest signed and the newest cosigned checkpoint: one row each, replaced by every commit
# (or cosigning) and only ever forward; the history tables keep what ``kept_checkpoint`` keeps.
_HEADS = """
CREATE TABLE IF NOT EXISTS heads (
    kind TEXT PRIMARY KEY CHECK (kind IN ('signed', 'cosigned')),
    size INTEGER NOT NULL CHECK (size >= 0),
    note TEXT NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS heads_forward_only BEFORE UPDATE ON heads
WHEN NEW.kind <> OLD.kind OR NEW.size < OLD.size BEGIN
SELECT RAISE(ABORT, 'the audit log head only moves forward: UPDATE on heads refused'); END;
CREATE TRIGGER IF NOT EXISTS heads_no_delete BEFORE DELETE ON heads BEGIN
SELECT RAISE(ABORT, 'the audit log is append-only: DELETE on heads refused'); END;
"""

MIGRATION_3_KEPT_CHECKPOINTS = (
    _HEADS  # noqa: S608 - constant text
    + """
INSERT INTO heads (kind, size, note)
    SELECT 'signed', size, note FROM checkpoints ORDER BY size DESC LIMIT 1;
INSERT INTO heads (kind, size, note)
    SELECT 'cosigned', size, note FROM cosigned ORDER BY id DESC LIMIT 1;
"""
)
"""Schema step 2 -> 3, checkpoints kept at an interval: the newest signed and cosigned
checkpoints become the heads; the notes already stored stay (the log is append-only), new
commits keep only what ``kept_checkpoint`` keeps."""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS leaves (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    leaf BLOB NOT NULL,
    leaf_hash BLOB NOT NULL,
    leg INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    requesting_agency TEXT NOT NULL,
    officer_id TEXT NOT NULL,
    case_number TEXT NOT NULL,
    action TEXT NOT NULL,
    target_agency TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_leaf_index INTEGER NOT NULL,
    subjects TEXT NOT NULL DEFAULT '[]'
) STRICT;
{subjects}
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS cosigned (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    note TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS leaves_time ON leaves (time_us);
CREATE INDEX IF NOT EXISTS subjects_idx ON subjects (idx);
CREATE INDEX IF NOT EXISTS cosigned_size ON cosigned (size);
{projection}{time_blocks}CREATE TABLE IF NOT EXISTS tiles (
    level INTEGER NOT NULL CHECK (level >= 0),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    data BLOB NOT NULL CHECK (length(data) = 8192),
    PRIMARY KEY (level, idx)
) STRICT;
CREATE INDEX IF NOT EXISTS time_blocks_reach ON time_blocks (reach_us);
"""
    + _HEADS
)

# The search projection (``_search``): the searchable columns and their indexes, kept behind
# the leaves by ``catch_up``.
_PROJECTION = """
CREATE TABLE IF NOT EXISTS search_rows (
    idx INTEGER PRIMARY KEY CHECK (idx >= 0),
    leg INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    requesting_agency TEXT NOT NULL,
    officer_id TEXT NOT NULL,
    case_number TEXT NOT NULL,
    action TEXT NOT NULL,
    target_agency TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    request_leaf_index INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS search_request_id ON search_rows (request_id) WHERE request_id <> '';
{blocked_indexes}CREATE INDEX IF NOT EXISTS search_requesting ON search_rows (requesting_agency);
CREATE INDEX IF NOT EXISTS search_target ON search_rows (target_agency);
CREATE INDEX IF NOT EXISTS search_action ON search_rows (action);
CREATE INDEX IF NOT EXISTS search_outcome ON search_rows (outcome);
CREATE INDEX IF NOT EXISTS search_time ON search_rows (time_us);
"""
# The indexes whose keys arrive in random order, keyed by the leaf's key block first
# (``_search.KEY_BLOCK_BITS``): the catch-up's inserts land in the newest block's pages.
_KEY_BLOCK = _search.KEY_BLOCK_EXPR
_BLOCKED_INDEXES = f"""
CREATE INDEX IF NOT EXISTS search_officer ON search_rows ({_KEY_BLOCK}, officer_id)
    WHERE officer_id <> '';
CREATE INDEX IF NOT EXISTS search_case ON search_rows ({_KEY_BLOCK}, case_number)
    WHERE case_number <> '';
"""


def _subjects_table(key_block: str) -> str:
    """The subjects table keyed by the leaf's key block ``key_block`` first."""
    return f"""
CREATE TABLE IF NOT EXISTS subjects (
    block INTEGER NOT NULL,
    subject TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (block, subject, idx),
    CHECK (block = {key_block})
) STRICT, WITHOUT ROWID;
"""


def _rekey_subjects(old: str, key_block: str) -> str:
    """A schema step's text: drop the officer and case indexes, move ``subjects`` aside as
    ``old``, make it again keyed by ``key_block`` first, copy its rows in the new key order and
    drop the old table. The schema's ``CREATE`` statements, which follow the steps, make the
    indexes and the append-only triggers again."""
    return "".join(
        (
            f"""
DROP INDEX IF EXISTS search_officer;
DROP INDEX IF EXISTS search_case;
ALTER TABLE subjects RENAME TO {old};
DROP INDEX IF EXISTS subjects_idx;
DROP TRIGGER IF EXISTS subjects_no_update;
DROP TRIGGER IF EXISTS subjects_no_delete;
""",
            _subjects_table(key_block),
            f"INSERT INTO subjects (block, subject, idx) SELECT {key_block}, subject, idx"  # noqa: S608 - constant text
            f" FROM {old} ORDER BY 1, 2, 3;",
            f"\nDROP TABLE {old};\n",
        )
    )


_SUBJECTS = _subjects_table(_KEY_BLOCK)
_PROJECTION = _PROJECTION.format(blocked_indexes=_BLOCKED_INDEXES)
# The time block of each complete block of 256 leaves (``_search.time_bounds``): its least and
# greatest time, and the running bounds that make a time window two index seeks.
_TIME_BLOCKS = """
CREATE TABLE IF NOT EXISTS time_blocks (
    block INTEGER PRIMARY KEY,
    min_us INTEGER NOT NULL,
    max_us INTEGER NOT NULL,
    reach_us INTEGER NOT NULL,
    lag_us INTEGER NOT NULL CHECK (lag_us >= 0)
) STRICT;
"""
_SCHEMA = (
    _SCHEMA.format(projection=_PROJECTION, subjects=_SUBJECTS, time_blocks=_TIME_BLOCKS)
    + _key_tiers.DDL
)

MIGRATION_4_KEY_BLOCKS = _rekey_subjects("subjects_by_subject", "idx >> 16")
"""Schema step 3 -> 4, key blocks (issue 18): the officer and case indexes and the subjects
table are keyed by the leaf's key block first; the subjects are copied in the new key order
and the indexes rebuilt (the schema's ``CREATE`` statements, which follow the step, make the
indexes and the append-only triggers again). Leaf rows are not touched.

Its blocks are version 4's, 65,536 leaves (``idx >> 16``), written out here, not taken from
``_search.KEY_BLOCK_BITS``: the step means what it meant when version 4 was written, and step
4 -> 5 re-keys from there. A version 1 or 2 log thus copies its subjects twice on its way to
version 5 (the officer and case indexes are built once, after the last step); a writer takes a
version 3 log straight to 5 in bounded transactions instead (``REKEY_SUBJECTS``)."""

MIGRATION_5_SMALLER_KEY_BLOCKS = _rekey_subjects("subjects_v4", _KEY_BLOCK)
"""Schema step 4 -> 5, smaller key blocks (issue 18): blocks of 16,384 leaves instead of 65,536
(``_search.KEY_BLOCK_BITS``, which says why): the subjects are copied in the new key order and
the officer and case indexes rebuilt, as step 3 -> 4 did. Leaf rows are not touched.

Only a version 1 or 2 log takes it, in ``prepare_sqlite``'s one transaction with its other
steps (this step alone, measured: 8.7 s and a 247 MB WAL at 2 M entries, warm page cache; at
10 M a few minutes and ~1.2 GB of WAL, ``docs/benchmarks.md``). A writer opening a version 3 or
4 log never runs it: ``REKEY_SUBJECTS`` (``_rekey``) takes that log to version 5 first, in
bounded transactions (copy chunks, the swap, one per index), so ``prepare_sqlite`` runs only
the steps after it."""

# A log older than time blocks has none: the step starts from an empty table of version 5's.
_TIME_BLOCKS_ASIDE = """
CREATE TABLE IF NOT EXISTS time_blocks (
    block INTEGER PRIMARY KEY,
    min_us INTEGER NOT NULL,
    max_us INTEGER NOT NULL
) STRICT;
DROP INDEX IF EXISTS time_blocks_min;
DROP INDEX IF EXISTS time_blocks_max;
ALTER TABLE time_blocks RENAME TO time_blocks_v5;
"""
_TIME_BLOCKS_COPY = """
INSERT INTO time_blocks (block, min_us, max_us, reach_us, lag_us)
    SELECT block, min_us, max_us, reach_us,
        MAX(late) OVER (ORDER BY block ROWS UNBOUNDED PRECEDING)
    FROM (
        SELECT block, min_us, max_us, reach_us,
            MAX(0, COALESCE(LAG(reach_us) OVER (ORDER BY block), min_us) - min_us) AS late
        FROM (
            SELECT block, min_us, max_us,
                MAX(max_us) OVER (ORDER BY block ROWS UNBOUNDED PRECEDING) AS reach_us
            FROM time_blocks_v5
        )
    )
    ORDER BY block;
DROP TABLE time_blocks_v5;
"""
MIGRATION_6_TIME_REACH = _TIME_BLOCKS_ASIDE + _TIME_BLOCKS + _TIME_BLOCKS_COPY
"""Schema step 5 -> 6, time windows in two seeks (issue 18): each time block gains its running
bounds, ``reach_us`` (the greatest time of it and every block before it) and ``lag_us`` (the
furthest any block so far began before the reach of the blocks before it), computed for the
existing blocks by window functions; the min and max indexes give way to one on ``reach_us``
(``_search.time_bounds`` says how a window uses them). One row per 256 leaves: ~41,000 rows at
10 M entries, copied in the step's one transaction."""

MIGRATION_7_KEY_TIERS = _key_tiers.DDL
"""Schema step 6 -> 7, key tiers (issue 18): the empty ``key_tiers`` table; the writer's
``_key_tiers.Builder`` fills it behind the projection, in the background (searches seek the
blocks no built tier covers meanwhile, as version 6 sought them all)."""

_COPY_ALL = (
    f"INSERT INTO search_rows ({_rows.PROJECTED_COLUMNS})"  # noqa: S608 - constant columns
    f" SELECT {_rows.PROJECTED_COLUMNS} FROM leaves ORDER BY idx;"
)
# Audit schema step 1 -> 2 (issue 13): the search columns become a projection behind the leaves.
# Leaf rows keep their columns and gain their subjects (JSON), the secondary indexes move from
# the leaves to ``search_rows``, which starts as a copy of every existing leaf's columns.
_PROJECTION_DONE = """
DROP INDEX IF EXISTS leaves_request_id;
DROP INDEX IF EXISTS leaves_officer;
DROP INDEX IF EXISTS leaves_case;
DROP INDEX IF EXISTS leaves_requesting;
DROP INDEX IF EXISTS leaves_target;
DROP INDEX IF EXISTS leaves_action;
DROP INDEX IF EXISTS leaves_outcome;
CREATE TABLE IF NOT EXISTS projection_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT INTO projection_state (name, value)
    SELECT 'projected_to', COALESCE(MAX(idx) + 1, 0) FROM leaves WHERE 1 = 1
    ON CONFLICT (name) DO NOTHING;
"""
_STEP_SEARCH_PROJECTION = "".join(
    (
        "ALTER TABLE leaves ADD COLUMN subjects TEXT NOT NULL DEFAULT '[]';",
        _PROJECTION,
        _COPY_ALL,
        _PROJECTION_DONE,
    )
)

_APPEND_ONLY_TABLES = (
    "meta",
    "leaves",
    "search_rows",
    "subjects",
    "checkpoints",
    "cosigned",
    "time_blocks",
    "tiles",
    "key_tiers",
)
# Trigger text is fixed: table names come from the constant tuple above, never from input.
_TRIGGERS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} BEGIN "
    f"SELECT RAISE(ABORT, 'the audit log is append-only: {op} on {t} refused'); END;\n"
    for t in _APPEND_ONLY_TABLES
    for op in ("UPDATE", "DELETE")
)
AUDIT_SCHEMA = Schema(
    store="audit log",
    version=int(SCHEMA_VERSION),
    create=_SCHEMA + _rollups.DDL_SQLITE + _TRIGGERS,
    migrations={
        1: _STEP_SEARCH_PROJECTION,
        2: MIGRATION_3_KEPT_CHECKPOINTS,
        3: MIGRATION_4_KEY_BLOCKS,
        4: MIGRATION_5_SMALLER_KEY_BLOCKS,
        5: MIGRATION_6_TIME_REACH,
        6: MIGRATION_7_KEY_TIERS,
    },
    legacy_table="leaves",
)


def _schema_statements(*prefixes: str) -> list[str]:
    """The statements of the schema's ``create`` that start with one of ``prefixes``, in the
    schema's order (the same text, so ``sqlite_master`` reads as a new log's)."""
    return [s for s in sql_statements(AUDIT_SCHEMA.create) if s.startswith(prefixes)]


_REKEYED_INDEXES = ("subjects_idx", "search_officer", "search_case")
REKEY_SUBJECTS = _rekey.Rekey(
    store=AUDIT_SCHEMA.store,
    from_versions=(3, 4),
    to_version=5,
    table=_subjects_table(_KEY_BLOCK).replace(" subjects (", f" {_rekey.REKEYED} (", 1),
    key_block=_KEY_BLOCK,
    dropped_indexes=("search_officer", "search_case"),
    triggers=_schema_statements(
        "CREATE TRIGGER IF NOT EXISTS subjects_no_update ",
        "CREATE TRIGGER IF NOT EXISTS subjects_no_delete ",
    ),
    indexes=[
        (name, statement)
        for name in _REKEYED_INDEXES
        for statement in _schema_statements(f"CREATE INDEX IF NOT EXISTS {name} ")
    ],
)
"""Schema steps 3 -> 4 -> 5 in bounded transactions (``_rekey``): what a writer runs before
``prepare_sqlite`` on a version 3 or 4 log; ``prepare_sqlite`` then takes it on from version 5
(step 5 -> 6 is one small table)."""

_LEAF_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LEAVES_PER_INSERT = 64
"""Leaves per INSERT statement of a commit (a multiple of each smaller power of two)."""
# One statement per power of two of rows up to ``_LEAVES_PER_INSERT``: a batch is inserted in
# a few statement runs (one ``sqlite3_step``, one release of the GIL each) instead of one per
# leaf, ~0.7 us less CPU per leaf; the texts are fixed, so they stay in the connection's
# statement cache.
INSERT_LEAF = f"INSERT INTO leaves ({_rows.LEAF_COLUMNS}) VALUES {_LEAF_ROW}"  # noqa: S608
"""The INSERT of one leaf row (``_rows.LEAF_COLUMNS``): the store's statements of ``n`` rows
extend it; a tool that writes a log the way the store does uses it (``bench/_biglog.py``)."""
_INSERT_LEAVES = {
    n: INSERT_LEAF + f", {_LEAF_ROW}" * (n - 1)
    for n in (1 << k for k in range(_LEAVES_PER_INSERT.bit_length()))
}
# The catch-up of the search projection over the leaves [?, ?) (``catch_up``).
_PROJECT_ROWS = (
    f"INSERT INTO search_rows ({_rows.PROJECTED_COLUMNS})"  # noqa: S608 - constant columns
    f" SELECT {_rows.PROJECTED_COLUMNS} FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx"
)
_PROJECT_SUBJECTS = (
    f"INSERT INTO subjects (block, subject, idx) SELECT l.{_KEY_BLOCK}, j.value, l.idx"  # noqa: S608 - constant text
    " FROM leaves AS l, json_each(l.subjects) AS j"
    " WHERE l.idx >= ? AND l.idx < ? AND l.subjects <> '[]'"
)
_SELECT_ROWS = (
    f"SELECT {_rows.LEAF_COLUMNS} FROM leaves"  # noqa: S608 - constant columns
    " WHERE idx >= ? AND idx < ? ORDER BY idx"
)
INSERT_TIME_BLOCK = (
    "INSERT INTO time_blocks (block, min_us, max_us, reach_us, lag_us)"
    " SELECT ?1, t.lo, t.hi, MAX(t.hi, COALESCE(p.reach_us, t.hi)),"
    " MAX(COALESCE(p.lag_us, 0), COALESCE(p.reach_us, t.lo) - t.lo)"
    " FROM (SELECT MIN(time_us) AS lo, MAX(time_us) AS hi FROM leaves WHERE idx >= ?2 AND idx < ?3)"
    " AS t LEFT JOIN time_blocks AS p ON p.block = ?1 - 1"
)
"""The time block of a complete block of 256 leaves (``_search.time_bounds``); parameters: the
block, its first leaf and one past its last. The store's, and a log builder's."""


# The rollups of a range of entries, counted by SQLite: from the projection's rows the
# catch-up has just written (narrow rows), or from the leaves (a migration's backfill).
_ROLLUPS_PROJECTED = _rollups.sqlite_range_upserts("search_rows")
_ROLLUPS_FROM_LEAVES = _rollups.sqlite_range_upserts("leaves")

# Checkpoint look-ups: the history (kept at an interval) and the head, each by its key.
_HEAD = "SELECT size, note FROM heads WHERE kind = ?"
SET_HEAD = (
    "INSERT INTO heads (kind, size, note) VALUES (?, ?, ?)"
    " ON CONFLICT (kind) DO UPDATE SET size = excluded.size, note = excluded.note"
)
"""The upsert of a head (``kind``, ``size``, ``note``): the store's, and a log builder's."""
_CHECKPOINT_AT = (
    "SELECT size, note FROM checkpoints WHERE size = ?"
    " UNION SELECT size, note FROM heads WHERE kind = 'signed' AND size = ? LIMIT 1"
)
_CHECKPOINTS_IN = (
    "SELECT size, note FROM checkpoints WHERE size > ? AND size <= ?"
    " UNION SELECT size, note FROM heads WHERE kind = 'signed' AND size > ? AND size <= ?"
    " ORDER BY size"
)
_CHECKPOINT_AT_OR_BEFORE = (
    "SELECT * FROM (SELECT size, note FROM checkpoints WHERE size <= ? ORDER BY size DESC LIMIT 1)"
    " UNION SELECT size, note FROM heads WHERE kind = 'signed' AND size <= ?"
    " ORDER BY size DESC LIMIT 1"
)
_COSIGNED_IN = (
    "SELECT size, note FROM cosigned WHERE size > ? AND size <= ?"
    " UNION SELECT size, note FROM heads WHERE kind = 'cosigned' AND size > ? AND size <= ?"
    " ORDER BY size"
)
_COSIGNED_COVERING = "SELECT size, note FROM heads WHERE kind = 'cosigned' AND size > ?"
_NOTES = NoteStatements(
    at=_CHECKPOINT_AT,
    signed_in=_CHECKPOINTS_IN,
    at_or_before=_CHECKPOINT_AT_OR_BEFORE,
    cosigned_in=_COSIGNED_IN,
    cosigned_covering=_COSIGNED_COVERING,
)

_PAGE_SIZE = 2048
"""Page size of databases this module creates (applies only before the first table exists)."""
_WRITER_CACHE_KIB = 65_536
"""The writer's page cache: the index pages a commit touches stay in memory on a big log."""
_READER_CACHE_KIB = 8192
"""A reader's page cache (the store's reader and tiler, the shard reader): reads go to the
right edge of the tree and of the time and request indexes, a few thousand pages."""
_CHECKPOINTER_CACHE_KIB = 256
"""The WAL checkpointer's: a checkpoint copies frames from the WAL file, not through the cache."""
_SCAN_MMAP_BYTES = 1 << 31
"""How much of the file a reader maps for ``leaf_rows`` (SQLite's usual ceiling, 2 GiB less 64
KiB, applies: pages past it are read as usual)."""

# The time index finds the window without reading older rows (see ``request_legs_since``).
_REQUEST_LEGS_SINCE = (
    "SELECT leaf FROM leaves INDEXED BY leaves_time"
    " WHERE time_us >= ? AND leg = ? AND request_id <> ''"
)
_CATCH_UP_CHUNK = 50_000
"""Leaves per catch-up transaction when a bulk writer brings the projection up to date."""
_CHECKPOINT_EVERY_BYTES = 8 << 20
"""Wake the WAL checkpointer (on a background thread) after about this much leaf data was
committed; it also wakes every ``_CHECKPOINT_EVERY_S`` on its own."""
_CHECKPOINT_EVERY_S = 1.0
"""The WAL checkpointer's period: while commits arrive, the WAL is copied about this often."""
_WAL_RESTART_BYTES = 16 << 20
"""Start the WAL over once it holds about this much (a RESTART checkpoint, see
``_WalCheckpointer``): what bounds the WAL file and its index."""
_RESTART_WAIT_MS = 50
"""How long a RESTART checkpoint waits for the writer's transaction and for readers of an older
snapshot, holding off new commits meanwhile; busy after that, it is tried again next period."""
_WAL_LIMIT_BYTES = 2 * _WAL_RESTART_BYTES
"""``journal_size_limit`` of the writer: when SQLite starts the WAL over, a longer file left by
a burst is truncated to this."""


class _WalCheckpointer:
    """Copies the WAL into the main database on its own thread and connection, so commits never
    pay for it (the writer's automatic checkpoints are off): every ``_CHECKPOINT_EVERY_S`` and
    when the writer asks, a PASSIVE checkpoint, which never blocks the writer.

    Copying is not enough. SQLite writes the WAL from its beginning again only when a commit
    begins with every frame copied and no reader on a snapshot that uses the WAL; under a steady
    load a reader nearly always is, so the WAL file and its index (the ``-shm`` file, mapped
    into memory by every connection) grew without bound (issue 13: 450 MB of WAL in 75 s). So
    once the WAL holds ``_WAL_RESTART_BYTES``, a RESTART checkpoint follows: it waits up to
    ``_RESTART_WAIT_MS`` for the writer's transaction and for those readers, holding off new
    commits while it copies the few frames the PASSIVE one left, and then the next commit
    starts the WAL over. Checkpoints never drop a committed frame (SQLite copies and syncs the
    database before it reuses the WAL), so durability is the WAL's, as before.
    """

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="audit-wal-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        con = sqlite3.connect(self._uri, uri=True, isolation_level=None, timeout=10.0)
        try:
            con.execute(f"PRAGMA cache_size = {-_CHECKPOINTER_CACHE_KIB}")
            con.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
            (page_size,) = con.execute("PRAGMA page_size").fetchone()
            restart_frames = _WAL_RESTART_BYTES // int(page_size)
            while True:
                self._wake.wait(_CHECKPOINT_EVERY_S)
                self._wake.clear()
                if self._stop:
                    return
                with contextlib.suppress(sqlite3.Error):
                    _checkpoint_wal_round(con, restart_frames)
        finally:
            con.close()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


def _checkpoint_wal_round(con: sqlite3.Connection, restart_frames: int) -> bool:
    """One round of the WAL checkpointer on its connection ``con``: copy the WAL (PASSIVE),
    then, once it holds ``restart_frames`` frames or more, RESTART (see ``_WalCheckpointer``).
    Returns whether a RESTART completed, after which the next commit starts the WAL over.
    Raises ``sqlite3.Error``."""
    _busy, logged, _copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if logged < restart_frames:
        return False
    (busy, _logged, _copied) = con.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    return not busy


def _insert_leaves(con: sqlite3.Connection, leaves: Sequence[_rows.LeafValues]) -> None:
    """Insert the leaf rows ``leaves`` with one ``_INSERT_LEAVES`` statement per block of
    ``_LEAVES_PER_INSERT`` leaves and per power of two of the remainder."""
    at, left = 0, len(leaves)
    while left:
        n = min(_LEAVES_PER_INSERT, 1 << (left.bit_length() - 1))
        con.execute(_INSERT_LEAVES[n], [v for row in leaves[at : at + n] for v in row])
        at, left = at + n, left - n


def default_state_path(path: Path) -> Path:
    """Where the log keeps its last-signed-checkpoint file for the database at ``path``."""
    return path.with_name(path.name + ".state")


class SqliteDatabase(StoredNotes):
    """One shard in one SQLite file (``LogDatabase``). Not thread-safe: use it on the thread
    that opened it. Raises ``AuditUnavailable`` for every database failure."""

    NOTES = _NOTES

    def __init__(self, path: Path, *, origin: str | None, writer: bool) -> None:
        """Open ``path``. A writer creates the file and schema if needed, takes the shard's
        lock file and checks (or records) ``origin``; a reader needs an existing log and
        ``origin=None`` accepts whatever origin it holds."""
        self.path = Path(path)
        self._lock: IO[bytes] | None = None
        self._checkpointer: _WalCheckpointer | None = None
        self._tiers: _key_tiers.Builder | None = None
        self._unflushed = 0
        self._mapped = False
        try:
            if writer:
                self._lock = _take_lock(self.path)
            elif not self.path.exists():
                raise AuditUnavailable(f"no audit log database at {self.path}")
            self._con = open_sqlite(
                self.path,
                read_only=not writer,
                page_size=_PAGE_SIZE,
                cache_kib=_WRITER_CACHE_KIB if writer else _READER_CACHE_KIB,
            )
            con = self._con
            if writer:
                _rekey.rekey_subjects(con, REKEY_SUBJECTS, where=self.path)
            prepare_sqlite(con, AUDIT_SCHEMA, where=self.path, writable=writer)
            if writer:
                con.execute("PRAGMA wal_autocheckpoint = 0")
                con.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
                uri = f"{self.path.resolve().as_uri()}?mode=rw"
                self._checkpointer = _WalCheckpointer(uri)
                self._tiers = _key_tiers.Builder(uri)
                self._tiers.request()  # a log of an earlier version gains its tiers
            self._origin = self._check_origin(origin, create=writer)
            if writer:
                # Rollups cover every entry committed from now on; older ones: ``migrate``.
                con.execute(
                    "INSERT INTO projection_state (name, value) VALUES ('rollups_from', ?),"
                    " ('rollups_backfilled', 0), ('projected_to', ?) ON CONFLICT (name) DO NOTHING",
                    (self.next_index(), self.next_index()),
                )
        except sqlite3.Error as exc:
            self._release()
            raise AuditUnavailable(f"cannot open the audit log {self.path}: {exc}") from exc
        except BaseException:
            self._release()
            raise

    def _check_origin(self, origin: str | None, *, create: bool) -> str:
        con = self._con
        rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
        stored = rows.get("origin")
        if stored is None:
            if not create or origin is None:
                raise AuditUnavailable(f"{self.path} is not a fedgate audit log (no origin)")
            with immediate(con):
                con.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("origin", origin), ("schema_version", SCHEMA_VERSION)],
                )
            return origin
        if origin is not None and stored != origin:
            raise AuditUnavailable(
                f"{self.path} holds the log shard {stored!r}, not {origin!r}: each shard has "
                "its own database"
            )
        return str(stored)

    def _release(self) -> None:
        writer = self._checkpointer is not None
        if self._tiers is not None:
            self._tiers.stop()
            self._tiers = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        con = getattr(self, "_con", None)
        if con is not None:
            if writer:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            con.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def origin(self) -> str:
        return self._origin

    def _error(self, what: str, exc: sqlite3.Error) -> AuditUnavailable:
        return AuditUnavailable(f"audit log {self.path}: cannot {what}: {exc}")

    def load(self) -> StoredLog:
        try:
            con = self._con
            next_index = self.next_index()
            edge = next_index - next_index % _search.BLOCK
            hashes = self.leaf_hashes(edge, next_index)
            (tile_count,) = con.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM tiles WHERE level = 0"
            ).fetchone()
            cp = con.execute(_HEAD, ("signed",)).fetchone()
            co = con.execute(_HEAD, ("cosigned",)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("load the log", exc) from exc
        return _rows.stored_log(self._origin, hashes, int(tile_count), next_index, cp, co)

    def commit(self, batch: CommitBatch) -> None:
        leaves = _rows.leaf_values(batch.leaves)
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                start = batch.leaves[0].index if batch.leaves else batch.size
                (next_index,) = con.execute(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves"
                ).fetchone()
                if next_index != start:
                    raise AuditUnavailable(
                        f"audit log {self.path}: the batch starts at index {start} but the "
                        f"database's next index is {next_index}; another process wrote to it"
                    )
                _insert_leaves(con, leaves)
                if batch.tiles:
                    con.executemany(
                        "INSERT INTO tiles (level, idx, data) VALUES (?, ?, ?)", batch.tiles
                    )
                for block in range(start // _search.BLOCK, batch.size // _search.BLOCK):
                    lo = block * _search.BLOCK
                    con.execute(INSERT_TIME_BLOCK, (block, lo, lo + _search.BLOCK))
                if kept_checkpoint(start, batch.size):
                    con.execute(
                        "INSERT INTO checkpoints (size, note) VALUES (?, ?)",
                        (batch.size, batch.checkpoint),
                    )
                con.execute(SET_HEAD, ("signed", batch.size, batch.checkpoint))
                for statement, rows in batch.beside:  # the bodies' tables (``_bodies``)
                    con.executemany(statement, rows)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error("commit a batch", exc) from exc
        self._unflushed += sum(len(n.data) for n in batch.leaves) + len(batch.checkpoint)
        if self._unflushed >= _CHECKPOINT_EVERY_BYTES and self._checkpointer is not None:
            self._unflushed = 0
            self._checkpointer.request()

    def projection_lag(self) -> int:
        """How many committed leaves the search projection does not hold yet."""
        try:
            return self.next_index() - self._projected_to()
        except sqlite3.Error as exc:
            raise self._error("read the projection state", exc) from exc

    def _projected_to(self) -> int:
        row = self._con.execute(
            "SELECT value FROM projection_state WHERE name = 'projected_to'"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def catch_up(self, limit: int) -> int:
        """Copy the next at most ``limit`` committed leaves into the search projection (their
        columns, subjects and rollups) in one transaction; returns the leaves still behind.

        The transaction is not fsynced on its own (``synchronous=NORMAL``): the projection is
        rebuilt from the leaves, and what a crash loses of it is lost with its
        ``projected_to``, so the next catch-up does it again. Raises ``AuditUnavailable``.
        """
        con = self._con
        try:
            con.execute("PRAGMA synchronous = NORMAL")
            try:
                with immediate(con):
                    start = self._projected_to()
                    end = self.next_index()
                    stop = min(end, start + limit)
                    if stop > start:
                        con.execute(_PROJECT_ROWS, (start, stop))
                        con.execute(_PROJECT_SUBJECTS, (start, stop))
                        for statement in _ROLLUPS_PROJECTED:
                            con.execute(statement, (start, stop))
                        con.execute(
                            "UPDATE projection_state SET value = ? WHERE name = 'projected_to'",
                            (stop,),
                        )
            finally:
                con.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._error("update the search projection", exc) from exc
        if (
            self._tiers is not None
            and stop >> _search.KEY_BLOCK_BITS > start >> _search.KEY_BLOCK_BITS
        ):
            self._tiers.request()  # a key block is complete: a tier may be
        return end - stop

    def settle_key_tiers(self) -> tuple[int, ...]:
        """A writer: build every key tier the projection completes (on the builder's thread,
        waiting for it) and return how many of each level are built (``_key_tiers.built``).
        For ``fedgate audit migrate`` and the benchmarks; the gateway never waits for them.
        Raises ``AuditUnavailable``, also when the build failed."""
        tiers = self._tiers
        if tiers is not None and (not tiers.settle() or tiers.failure is not None):
            raise AuditUnavailable(
                f"audit log {self.path}: cannot build the key tiers: "
                f"{tiers.failure or 'the builder has stopped'}"
            )
        try:
            return _key_tiers.built(self._fetch)
        except sqlite3.Error as exc:
            raise self._error("read the key tiers' state", exc) from exc

    def check_key_tiers(self) -> tuple[int, str | None]:
        """Each built key tier against the search index it summarises (``_key_tiers.check``):
        ``(tiers checked, what differs or None)``. Raises ``AuditUnavailable``."""
        try:
            return _key_tiers.check(self._con)
        except sqlite3.Error as exc:
            raise self._error("check the key tiers", exc) from exc

    def migration_state(self) -> tuple[int, int, int, int]:
        """``(full level-0 tiles, time blocks, rollups_from, rollups_backfilled)``: what the
        tiled layout and the projections already cover (``migrate``). Raises
        ``AuditUnavailable``."""
        try:
            con = self._con
            (tiles,) = con.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM tiles WHERE level = 0"
            ).fetchone()
            (blocks,) = con.execute(
                "SELECT COALESCE(MAX(block) + 1, 0) FROM time_blocks"
            ).fetchone()
            state = dict(con.execute("SELECT name, value FROM projection_state").fetchall())
        except sqlite3.Error as exc:
            raise self._error("read the migration state", exc) from exc
        return int(tiles), int(blocks), int(state["rollups_from"]), int(state["rollups_backfilled"])

    def migrate_chunk(
        self,
        tiles: Sequence[tuple[int, int, bytes]],
        blocks: range,
        rollups: range,
    ) -> None:
        """In one transaction: add ``tiles``, the time blocks ``blocks``, and the rollups of the
        entries ``rollups`` (then recorded as backfilled up to its stop). For ``migrate``."""
        con = self._con
        try:
            with immediate(con):
                con.executemany("INSERT INTO tiles (level, idx, data) VALUES (?, ?, ?)", tiles)
                for block in blocks:
                    lo = block * _search.BLOCK
                    con.execute(INSERT_TIME_BLOCK, (block, lo, lo + _search.BLOCK))
                if rollups:
                    for statement in _ROLLUPS_FROM_LEAVES:
                        con.execute(statement, (rollups.start, rollups.stop))
                    con.execute(
                        "UPDATE projection_state SET value = ? WHERE name = 'rollups_backfilled'",
                        (rollups.stop,),
                    )
        except sqlite3.Error as exc:
            raise self._error("migrate", exc) from exc

    def checkpoint_wal(self) -> None:
        """Bring the search projection up to date, then copy the WAL into the database and
        truncate it, waiting for readers: bulk writers (migration, imports) that commit
        straight to the database call it as they go, so the WAL and the projection's lag stay
        bounded. Raises ``AuditUnavailable``."""
        while self.catch_up(_CATCH_UP_CHUNK):
            pass
        try:
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise self._error("checkpoint the WAL", exc) from exc

    def add_cosigned(self, size: int, note: str) -> None:
        try:
            con = self._con
            with immediate(con):
                head = con.execute(_HEAD, ("cosigned",)).fetchone()
                if head is None or kept_checkpoint(int(head[0]), size):
                    con.execute("INSERT INTO cosigned (size, note) VALUES (?, ?)", (size, note))
                con.execute(SET_HEAD, ("cosigned", size, note))
        except sqlite3.Error as exc:
            raise self._error("store a cosigned checkpoint", exc) from exc

    def _blobs(self, what: str, sql: str, start: int, stop: int) -> list[bytes]:
        try:
            return [r[0] for r in self._con.execute(sql, (start, stop))]
        except sqlite3.Error as exc:
            raise self._error(what, exc) from exc

    def leaves(self, start: int, stop: int) -> list[bytes]:
        return self._blobs(
            "read entries",
            "SELECT leaf FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
            start,
            stop,
        )

    def shard_leaf(self, origin: str, index: int) -> bytes | None:
        """One shard per file: another shard's leaves are in another database."""
        if origin == self._origin:
            found = self.leaves(index, index + 1)
            return found[0] if found else None
        return None

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        return self._blobs(
            "read leaf hashes",
            "SELECT leaf_hash FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
            start,
            stop,
        )

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        """The stored full tiles ``(index, data)`` of ``level`` in ``[start, stop)``, in order."""
        try:
            return self._con.execute(
                "SELECT idx, data FROM tiles WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (level, start, stop),
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error("read tiles", exc) from exc

    def retired(self) -> list[RetiredRange]:
        """Nothing: SQLite keeps every entry (only PostgreSQL retires months of leaves)."""
        return []

    def leaf_rows(self, start: int, stop: int) -> Iterator[tuple[int, bytes, bytes]]:
        """Entries ``[start, stop)`` with their stored leaf hashes, in order, streamed (one pass
        of verification: each row is checked while its bytes are still in the CPU's cache).

        A reader maps the file for it (``_SCAN_MMAP_BYTES``): a pass reads every page once, and
        through a map each page costs neither a system call nor a copy into the page cache
        (about 40 % of reading a row, measured on a 200,000-entry log). The mapping is the OS's
        file cache, which it can reclaim, not memory of this process; a writer never maps (the
        gateway's memory stays as stated)."""
        con = self._con
        try:
            if self._checkpointer is None and not self._mapped:
                con.execute(f"PRAGMA mmap_size = {_SCAN_MMAP_BYTES}")
                self._mapped = True
            yield from con.execute(
                "SELECT idx, leaf, leaf_hash FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, stop),
            )
        except sqlite3.Error as exc:
            raise self._error("read entries", exc) from exc

    def rows(self, start: int, stop: int) -> list[StoredRow]:
        try:
            con = self._con
            projected = self._projected_to()
            subjects = _rows.group_subjects(
                con.execute(
                    "SELECT idx, subject FROM subjects WHERE idx >= ? AND idx < ?"
                    " ORDER BY idx, subject",
                    (start, min(stop, projected)),
                )
            )
            rows = con.execute(_SELECT_ROWS, (start, stop))
            return _rows.stored_rows(rows, subjects, projected)
        except sqlite3.Error as exc:
            raise self._error("read rows", exc) from exc

    def next_index(self) -> int:
        try:
            (n,) = self._con.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()
        except sqlite3.Error as exc:
            raise self._error("count entries", exc) from exc
        return int(n)

    def _notes(self, what: str, sql: str, params: tuple[int, ...]) -> list[tuple[int, str]]:
        try:
            return [(int(r[0]), str(r[1])) for r in self._con.execute(sql, params)]
        except sqlite3.Error as exc:
            raise self._error(what, exc) from exc

    def _fetch(self, statement: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        return self._con.execute(statement, params).fetchall()

    def search(self, query: SearchQuery) -> list[IndexedRow]:
        try:
            return _search.search(self._fetch, _search.SQLITE, (), query)
        except sqlite3.Error as exc:
            raise self._error("search", exc) from exc

    def request_legs_since(self, since_us: int) -> Iterator[bytes]:
        """The leaves of the request legs received at or after ``since_us`` (microseconds since
        the epoch), in no particular order.

        The rows are found through the ``leaves_time`` index: only the entries of the window
        are read, however long the log. Raises ``AuditUnavailable``.
        """
        try:
            cursor = self._con.execute(_REQUEST_LEGS_SINCE, (since_us, int(EntryKind.REQUEST)))
            while rows := cursor.fetchmany(512):
                for (leaf,) in rows:
                    yield leaf
        except sqlite3.Error as exc:
            raise self._error("read the recent request legs", exc) from exc

    def close(self) -> None:
        """Close; a writer first brings the search projection up to date (best effort: what
        it leaves behind, the next writer's catch-up does)."""
        if self._checkpointer is not None:
            with contextlib.suppress(AuditUnavailable):
                while self.catch_up(_CATCH_UP_CHUNK):
                    pass
        self._release()


def _take_lock(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    f = open(lock_path, "ab")  # noqa: SIM115 - held until close
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        raise AuditUnavailable(
            f"the audit log {path} is open for writing in another process (lock {lock_path})"
        ) from exc
    with contextlib.suppress(OSError):
        os.chmod(lock_path, 0o600)
    return f


async def open_sqlite_store(
    path: Path, *, origin: str, state_path: Path | None = None
) -> ThreadedStore:
    """The SQLite ``AuditStore`` for ``path`` (created if missing) and log shard ``origin``.

    The log's state file defaults to ``<path>.state`` beside the database. Raises
    ``AuditUnavailable`` if the file cannot be opened, holds another origin or is being
    written by another process.
    """
    path = Path(path)
    return await ThreadedStore.open(
        lambda: SqliteDatabase(path, origin=origin, writer=True),
        lambda: SqliteDatabase(path, origin=origin, writer=False),
        name="audit-sqlite",
        state_path=state_path if state_path is not None else default_state_path(path),
    )
