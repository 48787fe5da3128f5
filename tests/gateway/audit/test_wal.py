"""The audit log's WAL stays bounded (issue 13): the checkpointer's rounds copy the WAL and,
once it is long, start it over, waiting for readers of an older snapshot."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit import sqlite_store
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CommitBatch, NewLeaf
from tests.gateway.audit.test_search import ORIGIN, _leaves


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteDatabase]:
    """A writer whose own checkpointer wakes only when asked (the tests run the rounds)."""
    monkeypatch.setattr(sqlite_store, "_CHECKPOINT_EVERY_S", 3600.0)
    writer = SqliteDatabase(tmp_path / "audit.sqlite", origin=ORIGIN, writer=True)
    yield writer
    writer.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A connection like the checkpointer's, waiting up to 10 s for readers (not 50 ms)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)


def _commit(db: SqliteDatabase, leaves: list[NewLeaf]) -> None:
    size = leaves[-1].index + 1
    db.commit(CommitBatch(leaves, size, f"checkpoint {size}"))


def _frames(con: sqlite3.Connection) -> int:
    """The frames in the WAL now (a PASSIVE checkpoint reports them; it copies, never resets)."""
    return int(con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


class TestWalCheckpointRound:
    def test_a_long_wal_starts_over_once_an_older_reader_is_done(self, db: SqliteDatabase) -> None:
        """A reader whose snapshot uses the WAL keeps SQLite from starting the WAL over at the
        next commit; the round's RESTART waits for it, so the next commit does."""
        leaves = _leaves(220)
        _commit(db, leaves[:200])
        con = _connect(db.path)
        reader = _connect(db.path)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM leaves").fetchone() == (200,)
            long_wal = _frames(con)
            done: list[bool] = []
            round_ = threading.Thread(
                target=lambda: done.append(sqlite_store._checkpoint_wal_round(con, long_wal))
            )
            round_.start()
            reader.execute("COMMIT")  # the reader finishes while the round waits (or before)
            round_.join()
            assert done == [True]
            _commit(db, leaves[200:])
            assert 0 < _frames(con) < long_wal
        finally:
            reader.close()
            con.close()

    def test_the_wal_stays_bounded_with_a_reader_open_over_every_commit(
        self, db: SqliteDatabase
    ) -> None:
        """A reader holds a snapshot over every commit, so no commit can start the WAL over on
        its own; the rounds (between which the reader takes a new snapshot) bound it."""
        wal = db.path.with_name(db.path.name + "-wal")
        shm = db.path.with_name(db.path.name + "-shm")
        leaves = _leaves(3000)
        con = _connect(db.path)
        reader = _connect(db.path)
        try:
            restarts = 0
            held: list[int] = []  # frames in the WAL at each round
            for n, start in enumerate(range(0, len(leaves), 25)):
                reader.execute("BEGIN")
                reader.execute("SELECT max(idx) FROM leaves").fetchone()
                _commit(db, leaves[start : start + 25])
                reader.execute("COMMIT")
                if n % 10 == 9:
                    held.append(_frames(con))
                    restarts += sqlite_store._checkpoint_wal_round(con, 32)
            assert restarts == len(held) == 12
            # Without the restarts the WAL would hold every frame written since the first.
            assert max(held) * 4 < sum(held)
            page = int(con.execute("PRAGMA page_size").fetchone()[0])
            assert wal.stat().st_size <= 32 + max(held) * (24 + page)
            assert shm.stat().st_size <= 32 * 1024  # the WAL index: one block of 4,096 frames
        finally:
            reader.close()
            con.close()
