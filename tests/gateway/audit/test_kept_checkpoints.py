"""Signed notes kept at an interval: the store keeps the head and one checkpoint per 256
entries, receipts still verify, a past size's note is signed again byte for byte, and a
version-1 store migrates (schema step 2) with its newest notes as heads, on both stores."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from fedgate.checkpoint import open_checkpoint
from fedgate.merkle import verify_inclusion
from fedgate.note import parse_note
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CHECKPOINT_INTERVAL, kept_checkpoint

if TYPE_CHECKING:
    from conftest import LogFactory

ORIGIN = "fedgate.test/gateway/shard-0"


def _reader(logs: LogFactory) -> SqliteDatabase | PgDatabase:
    if logs.kind == "sqlite":
        return SqliteDatabase(logs.db, origin=None, writer=False)
    assert logs.pg is not None
    return PgDatabase(logs.pg.dsn, origin=ORIGIN, schema=logs.pg.schema, writer=False)


class TestTheRule:
    @pytest.mark.parametrize(
        ("previous", "size", "kept"),
        [
            (0, 0, True),  # the empty tree's
            (0, 1, False),
            (1, 255, False),
            (255, 256, True),  # reaches a multiple
            (250, 260, True),  # crosses one
            (256, 257, False),  # starts on one
            (256, 511, False),
            (300, 1000, True),
            (511, 512, True),
        ],
    )
    def test_kept(self, previous: int, size: int, kept: bool) -> None:
        assert kept_checkpoint(previous, size) is kept
        assert CHECKPOINT_INTERVAL == 256


class TestStores:
    async def test_history_at_the_interval_and_the_head(self, logs: LogFactory) -> None:
        log = await logs.open(max_batch=7)
        fed = logs.fed
        receipts = await asyncio.gather(*(log.append(fed.request()) for _ in range(300)))
        sizes = sorted({r.tree_size for r in receipts})
        db = _reader(logs)
        try:
            history = [size for size, _ in db.checkpoints()]
            # Size 0, the one batch reaching 256, and the head.
            grown = zip([0, *sizes[:-1]], sizes, strict=True)
            expected = [0, *(s for p, s in grown if kept_checkpoint(p, s))]
            assert history == sorted({*expected, 300})
            assert len(history) == 3
            head = db.load()
            assert (head.checkpoint_size, head.checkpoint) == (300, log.latest_checkpoint())
            assert db.checkpoint(300) == log.latest_checkpoint()
            assert db.checkpoint(sizes[0]) is None  # a batch's note, not kept
            at = db.checkpoint_at_or_before(299)
            assert at is not None
            assert at[0] == history[1]
            assert [s for s, _ in db.checkpoints_in(0, 300)] == history[1:]
        finally:
            db.close()
        # Every receipt still verifies on its own, and the log signs its size again byte
        # for byte (Ed25519 is deterministic) for the service's "checkpoint at size N".
        for r in receipts:
            cp = open_checkpoint(r.checkpoint, log.verifier)
            verify_inclusion(
                log.leaf_hash(r.index), r.index, r.tree_size, list(r.inclusion_proof), cp.root_hash
            )
            assert await log.checkpoint_at(r.tree_size) == r.checkpoint
        assert await log.checkpoint_at(301) is None

    async def test_cosigned_history_at_the_interval_and_the_head(self, logs: LogFactory) -> None:
        log = await logs.open(witnessed=True)
        fed = logs.fed
        await log.append(fed.request())
        await logs.cosigned(log)
        await log.append(fed.request())
        second = await logs.cosigned(log)
        db = _reader(logs)
        try:
            # The first note the witnesses cosigned is kept (the head had none before it);
            # later ones, none reaching 256 entries, only replace the head.
            kept, *_ = await _stored_cosigned(db, 2)
            assert await _stored_cosigned(db, 2) == [kept, (2, second)]
            await log.append(fed.request())
            third = await logs.cosigned(log)
            assert await _stored_cosigned(db, 3) == [kept, (3, third)]
            assert db.cosigned_covering(0) == (3, third)
            assert db.cosigned_covering(3) is None
            assert db.load().cosigned == third
        finally:
            db.close()


async def _stored_cosigned(db: SqliteDatabase | PgDatabase, size: int) -> list[tuple[int, str]]:
    """The stored cosigned notes once the head reached ``size`` (the log publishes a cosigned
    note before it stores it)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while (found := db.cosigned_checkpoints())[-1][0] != size:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no cosigned head of size {size} stored: {found}")
        await asyncio.sleep(0.01)
    return found


def _back_to_version_1(logs: LogFactory) -> None:
    """Make the store look as the store before kept checkpoints did (schema version 2, after
    the search projection's step): every note in the history tables (here the heads, which is
    what the migration reads), no heads table."""
    if logs.kind == "sqlite":
        con = sqlite3.connect(logs.db, isolation_level=None)
        try:
            con.execute(
                "INSERT INTO checkpoints SELECT size, note FROM heads WHERE kind = 'signed'"
            )
            con.execute(
                "INSERT INTO cosigned (size, note) SELECT size, note FROM heads"
                " WHERE kind = 'cosigned'"
            )
            con.execute("DROP TABLE heads")  # its triggers go with it
            con.execute("UPDATE fedgate_schema SET version = 2 WHERE store = 'audit log'")
        finally:
            con.close()
        return
    assert logs.pg is not None
    with psycopg.connect(logs.pg.dsn, autocommit=True) as pgcon:
        pgcon.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(logs.pg.schema)))
        for table in ("checkpoints", "cosigned"):
            pgcon.execute(
                sql.SQL(
                    "INSERT INTO {} (origin, size, note) SELECT origin, size, note FROM heads"
                    " WHERE kind = %s"
                ).format(sql.Identifier(table)),
                ("signed" if table == "checkpoints" else "cosigned",),
            )
        pgcon.execute("DROP TABLE heads")
        pgcon.execute("UPDATE fedgate_schema SET version = 2 WHERE store = 'audit log'")


class TestMigration:
    async def test_version_1_gets_its_newest_notes_as_heads(self, logs: LogFactory) -> None:
        log = await logs.open(witnessed=True)
        for _ in range(3):
            await log.append(logs.fed.request())
        cosigned = await logs.cosigned(log)
        latest = log.latest_checkpoint()
        await log.close()
        logs.opened.remove(log)
        _back_to_version_1(logs)

        with pytest.raises(Exception, match="older than this fedgate"):
            _reader(logs).close()  # a reader never migrates
        log = await logs.open()  # the writer migrates, then checks the tree against the head
        assert log.size == 3
        assert log.latest_cosigned_checkpoint() == cosigned
        assert parse_note(log.latest_checkpoint()).text == parse_note(latest).text
        await log.append(logs.fed.request())
        db = _reader(logs)
        try:
            assert db.load().checkpoint_size == 4
        finally:
            db.close()
