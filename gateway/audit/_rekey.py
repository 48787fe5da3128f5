"""Re-keying the SQLite audit log's subjects in bounded transactions (schema steps 3 -> 4 -> 5,
issue 18): what a writer runs before ``prepare_sqlite``, so the WAL stays bounded on a long log.

The schema steps ``MIGRATION_4_KEY_BLOCKS`` and ``MIGRATION_5_SMALLER_KEY_BLOCKS`` copy every
subject row into a table keyed by ``(block, subject, idx)`` and rebuild the officer and case
indexes in the one transaction ``prepare_sqlite`` runs, so the WAL holds the whole copy and
the three indexes at once: 247 MB at 2 M entries, ~1.2 GB at 10 M, growing with the log. A
writer opening a version 3 or 4 log runs :func:`rekey_subjects` first instead, which takes it
straight to version 5 in these transactions, each followed by a WAL checkpoint (TRUNCATE, so the
file starts over); ``prepare_sqlite`` then runs the later steps (5 -> 6 rewrites one small
table):

1. copy: the subjects of ``chunk`` leaves at a time, in leaf order, into ``Rekey.table``
   (``subjects_rekeyed``, keyed as the current version keys ``subjects``), each chunk in the
   new key order, so every insert lands on the new tree's right edge;
2. swap: drop the old officer and case indexes and the old ``subjects`` (its index and
   triggers go with it), rename the new table to ``subjects``, make its append-only triggers
   and set the version;
3. one transaction per index (``subjects_idx``, ``search_officer``, ``search_case``): a
   ``CREATE INDEX`` is one statement, so the WAL then peaks at about that one index's size, not
   at the log's changes (at 2 M entries the largest, ``subjects_idx``, is tens of MB).

Crash consistency. Until the swap commits, the old ``subjects`` is the truth and the version
stays the old one: a reader of this version refuses the log ("older than this fedgate"), a
reader of the old version reads it as before (it never looks at ``subjects_rekeyed``). Each
copy chunk commits whole, so an interrupted copy resumes after the last leaf the new table
holds (found in its last key block); rows an older writer projected meanwhile are at leaf
indexes above that (its catch-up appends in leaf order), so the resumed copy takes them too,
and the swap checks that the two tables hold as many rows, or drops the copy and refuses
(the next writer starts the copy over). After the swap, an index not yet built is built by the
next writer (here, or by ``prepare_sqlite``'s ``CREATE INDEX IF NOT EXISTS``); until a writer
has also run the later steps, a reader of this version refuses the log as before.

One visible difference from a one-shot step: SQLite's ``ALTER TABLE ... RENAME`` writes the new
name quoted into ``sqlite_master`` (``CREATE TABLE "subjects" (...)``); the table, its
columns, key and checks are the same.

Logs of version 1 or 2 still take every step, 3 -> 4 and 4 -> 5 included, in
``prepare_sqlite``'s one transaction (they predate key blocks by several releases).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fedgate.errors import AuditUnavailable
from fedgate.storage import VERSION_TABLE, immediate

__all__ = ["CHUNK", "REKEYED", "Rekey", "rekey_subjects"]

_log = logging.getLogger(__name__)

CHUNK: Final = 1 << 16
"""Leaves whose subjects one copy transaction moves (a multiple of every key block size): at a
few subjects a leaf, a few MB of WAL."""

REKEYED: Final = "subjects_rekeyed"
"""The new subjects table while it is filled; renamed to ``subjects`` by the swap."""


@dataclass(frozen=True, slots=True)
class Rekey:
    """What the re-key makes, as the schema's own statements (``sqlite_store``)."""

    store: str
    """The store's name in ``fedgate_schema``."""
    from_versions: Collection[int]
    """The versions re-keyed here; any other goes through ``prepare_sqlite`` alone."""
    to_version: int
    table: str
    """``CREATE TABLE IF NOT EXISTS`` of ``REKEYED``, keyed as the current ``subjects``."""
    key_block: str
    """The current key block expression of a leaf index ``idx``."""
    dropped_indexes: Sequence[str]
    """Indexes on other tables keyed by the old key block, dropped by the swap."""
    triggers: Sequence[str]
    """The ``subjects`` append-only triggers, made by the swap."""
    indexes: Sequence[tuple[str, str]]
    """``(name, CREATE INDEX IF NOT EXISTS ...)``: built after the swap, one a transaction."""


def rekey_subjects(
    con: sqlite3.Connection,
    rekey: Rekey,
    *,
    where: Path,
    chunk: int = CHUNK,
    after_chunk: Callable[[str, int, int], None] | None = None,
) -> bool:
    """Take the log in ``con`` (a writer's, from ``open_sqlite``, its lock held) from a version
    in ``rekey.from_versions`` to ``rekey.to_version`` in bounded transactions (module
    docstring), resuming an interrupted run; at ``to_version``, build the indexes an
    interrupted run left. Returns whether it re-keyed. Any other log is left untouched for
    ``prepare_sqlite`` to create, migrate or refuse.

    ``after_chunk(step, done, total)`` is called after each committed transaction, before the
    WAL checkpoint (the WAL then holds just that transaction): step ``"copy"`` with leaves,
    ``"swap"`` with ``(1, 1)``, ``"index"`` with indexes built. Progress is also logged.
    Raises ``sqlite3.Error``, ``AuditUnavailable`` if the copy does not match the old table
    (the copy is dropped: the next writer starts it over)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    version = _version(con, rekey.store)
    if version == rekey.to_version:
        _build_indexes(con, rekey, where, after_chunk)
        return False
    if version is None or version not in rekey.from_versions:
        return False

    con.execute(rekey.table)
    (end,) = con.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM subjects").fetchone()
    start = _copied_to(con)
    if start:
        _log.info("audit log %s: resuming the subjects' re-key at leaf %d", where, start)
    copy = (
        f"INSERT INTO {REKEYED} (block, subject, idx)"  # noqa: S608 - constant text
        f" SELECT {rekey.key_block}, subject, idx FROM subjects"
        " WHERE idx >= ? AND idx < ? ORDER BY 1, 2, 3"
    )
    lo = start
    while lo < end:
        hi = min((lo // chunk + 1) * chunk, end)
        with immediate(con):
            con.execute(copy, (lo, hi))
        _log.info("audit log %s: subjects re-keyed up to leaf %d of %d", where, hi, end)
        _committed(con, after_chunk, "copy", hi, end)
        lo = hi
    _swap(con, rekey, where, version)
    _log.info("audit log %s: subjects re-keyed, schema version %d", where, rekey.to_version)
    _committed(con, after_chunk, "swap", 1, 1)
    _build_indexes(con, rekey, where, after_chunk)
    return True


def _version(con: sqlite3.Connection, store: str) -> int | None:
    if not con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
    ).fetchone():
        return None
    row = con.execute(
        f"SELECT version FROM {VERSION_TABLE} WHERE store = ?",  # noqa: S608 - constant name
        (store,),
    ).fetchone()
    return None if row is None else int(row[0])


def _copied_to(con: sqlite3.Connection) -> int:
    """The leaf after the last one the new table holds: its rows are in whole chunks, and the
    last leaf is in its last key block (a seek, not a scan of the table)."""
    (last,) = con.execute(
        f"SELECT MAX(idx) FROM {REKEYED}"  # noqa: S608 - constant name
        f" WHERE block = (SELECT MAX(block) FROM {REKEYED})"
    ).fetchone()
    return 0 if last is None else int(last) + 1


def _committed(
    con: sqlite3.Connection,
    after_chunk: Callable[[str, int, int], None] | None,
    step: str,
    done: int,
    total: int,
) -> None:
    """After a committed transaction: report it, then start the WAL over (it held just that
    transaction)."""
    if after_chunk is not None:
        after_chunk(step, done, total)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _swap(con: sqlite3.Connection, rekey: Rekey, where: Path, version: int) -> None:
    """The last transaction of the re-key: the new table replaces the old one, at the new
    version. Fails closed when the two tables' row counts differ."""
    # The pages the swap frees hold what the new table and indexes hold (the same subjects,
    # officers and cases, in this file): zeroing them (SQLite's ``secure_delete``, on in
    # this build) would write every one to the WAL, the whole old table and both indexes.
    (secure,) = con.execute("PRAGMA secure_delete").fetchone()
    con.execute("PRAGMA secure_delete = OFF")
    try:
        _replace(con, rekey, where, version)
    finally:
        con.execute(f"PRAGMA secure_delete = {int(secure)}")


def _replace(con: sqlite3.Connection, rekey: Rekey, where: Path, version: int) -> None:
    with immediate(con):
        if _version(con, rekey.store) != version:
            raise AuditUnavailable(f"audit log {where}: its schema version changed while re-keying")
        (old,) = con.execute("SELECT COUNT(*) FROM subjects").fetchone()
        (new,) = con.execute(f"SELECT COUNT(*) FROM {REKEYED}").fetchone()  # noqa: S608
        if old != new:
            con.execute("ROLLBACK")
            con.execute(f"DROP TABLE {REKEYED}")
            raise AuditUnavailable(
                f"audit log {where}: the re-keyed subjects hold {new} rows, the subjects {old}:"
                " the copy is dropped and the next writer makes it again"
            )
        for name in rekey.dropped_indexes:
            con.execute(f"DROP INDEX IF EXISTS {name}")
        con.execute("DROP TABLE subjects")
        con.execute(f"ALTER TABLE {REKEYED} RENAME TO subjects")
        for trigger in rekey.triggers:
            con.execute(trigger)
        con.execute(
            f"UPDATE {VERSION_TABLE} SET version = ? WHERE store = ?",  # noqa: S608
            (rekey.to_version, rekey.store),
        )


def _build_indexes(
    con: sqlite3.Connection,
    rekey: Rekey,
    where: Path,
    after_chunk: Callable[[str, int, int], None] | None,
) -> None:
    """Each missing index of ``rekey.indexes`` in its own transaction, then a checkpoint."""
    total = len(rekey.indexes)
    for n, (name, statement) in enumerate(rekey.indexes, 1):
        if con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).fetchone():
            continue
        with immediate(con):
            con.execute(statement)
        _log.info("audit log %s: index %s built", where, name)
        _committed(con, after_chunk, "index", n, total)
