"""Both audit stores: what goes in comes back, search filters, one writer per shard."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest

from fedgate.audit_entry import EventEntry, encode_entry, entry_columns, time_to_micros
from fedgate.errors import AuditUnavailable
from fedgate.merkle import leaf_hash
from gateway.audit import _rows
from gateway.audit.pg_store import PgDatabase, list_origins, open_pg_store
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CommitBatch, NewLeaf, SearchQuery, kept_checkpoint

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Fed, LogFactory, PgTarget

ORIGIN = "fedgate.test/gateway/shard-0"


class TestSearch:
    async def test_each_filter(self, logs: LogFactory) -> None:
        fed = logs.fed
        log = await logs.open()
        first = fed.request()
        r = await log.append(first)
        await log.append(fed.response(first, r.index, status="not_found"))
        fed.now += timedelta(minutes=5)
        second = fed.request(decision="refused")
        await log.append(second)
        await log.append(
            EventEntry(kind="console_login", actor="staff-1", member="bank.ccb", at=fed.now)
        )

        async def hits(**kw: object) -> list[int]:
            return [h.index for h in await log.search(SearchQuery(**kw))]  # type: ignore[arg-type]

        assert await hits() == [0, 1, 2, 3]
        assert await hits(officer_id=first.officer_id) == [0, 1]
        assert await hits(case_number=second.case_number) == [2]
        assert await hits(subject=first.subjects[0]) == [0, 1]
        assert await hits(outcome="refused") == [2]
        assert await hits(outcome="not_found") == [1]
        assert await hits(action="console_login") == [3]
        assert await hits(member="bank.ccb") == [3]
        assert await hits(member="bank.icbc") == [0, 1, 2]
        assert await hits(request_id=first.request_id) == [0, 1]
        assert await hits(visible_to="bank.ccb") == [3]
        assert await hits(since_us=time_to_micros(fed.now)) == [2, 3]
        assert await hits(until_us=time_to_micros(fed.now)) == [0, 1]
        assert await hits(after_index=1, limit=1) == [2]
        response = (await log.search(SearchQuery(after_index=0, limit=1)))[0]
        assert response.columns[11] == 0
        assert response.columns[10] == first.subjects
        every = await log.search(SearchQuery())
        assert [h.columns[10] for h in every] == [
            first.subjects,
            first.subjects,
            second.subjects,
            (),
        ]


class TestPostgres:
    async def test_tables_live_in_the_shard_schema(
        self, pg: PgTarget, pg_dsn: str, tmp_path: Path
    ) -> None:
        store = await open_pg_store(
            pg.dsn, origin=ORIGIN, schema=pg.schema, state_path=tmp_path / "s"
        )
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                tables = {
                    r[0]
                    for r in conn.execute(
                        "SELECT table_name FROM information_schema.tables"
                        " WHERE table_schema = current_schema()"
                    )
                }
            assert {"leaves", "subjects", "checkpoints", "cosigned", "shards"} <= tables
            assert list_origins(pg.dsn, schema=pg.schema) == [ORIGIN]
        finally:
            await store.close()

    async def test_shards_are_independent_and_readers_need_an_existing_shard(
        self, pg: PgTarget, tmp_path: Path
    ) -> None:
        a = await open_pg_store(pg.dsn, origin="o/a", schema=pg.schema, state_path=tmp_path / "a")
        b = await open_pg_store(pg.dsn, origin="o/b", schema=pg.schema, state_path=tmp_path / "b")
        await a.close()
        await b.close()
        assert list_origins(pg.dsn, schema=pg.schema) == ["o/a", "o/b"]
        with pytest.raises(AuditUnavailable, match="no audit shard"):
            PgDatabase(pg.dsn, origin="o/c", schema=pg.schema, writer=False)

    async def test_an_unreachable_server_is_audit_unavailable(self, tmp_path: Path) -> None:
        with pytest.raises(AuditUnavailable, match="PostgreSQL"):
            await open_pg_store(
                "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1",
                origin=ORIGIN,
                state_path=tmp_path / "s",
            )


class TestSqlitePages:
    def test_a_new_database_has_2_kib_pages_and_every_index(self, tmp_path: Path) -> None:
        path = tmp_path / "new.sqlite"
        SqliteDatabase(path, origin="o", writer=True).close()
        with contextlib.closing(sqlite3.connect(path)) as con:
            assert con.execute("PRAGMA page_size").fetchone()[0] == 2048
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"leaves_time", "search_request_id", "subjects_idx"} <= names
        assert "leaves_request_id" not in names  # the leaf table carries no search index

    def test_the_writer_caches_64_mib_of_pages_and_a_reader_8(self, tmp_path: Path) -> None:
        path = tmp_path / "log.sqlite"
        writer = SqliteDatabase(path, origin="o", writer=True)
        reader = SqliteDatabase(path, origin="o", writer=False)
        try:
            for db, kib in ((writer, 65_536), (reader, 8192)):
                assert db._con.execute("PRAGMA cache_size").fetchone()[0] == -kib
                assert db._con.execute("PRAGMA mmap_size").fetchone()[0] == 0
        finally:
            reader.close()
            writer.close()

    def test_an_existing_database_keeps_its_page_size(self, tmp_path: Path) -> None:
        path = tmp_path / "old.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as con:
            con.execute("PRAGMA page_size = 4096")
            con.execute("CREATE TABLE older (x INTEGER)")
            con.commit()
        SqliteDatabase(path, origin="o", writer=True).close()
        with contextlib.closing(sqlite3.connect(path)) as con:
            assert con.execute("PRAGMA page_size").fetchone()[0] == 4096


class TestSqliteCommit:
    def test_every_value_of_every_leaf_lands_in_its_column_whatever_the_batch_size(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        """Leaves go in with one multi-row INSERT per 64 (and per power of two of the rest):
        batches around those sizes read back exactly the values the commit was given."""
        db = SqliteDatabase(tmp_path / "log.sqlite", origin=ORIGIN, writer=True)
        written: list[_rows.LeafValues] = []
        try:
            size = 0
            for count in (1, 63, 64, 65, 200, 3):
                leaves = _new_leaves(fed, size, count)
                size += count
                db.commit(CommitBatch(leaves, size, f"checkpoint {size}"))
                written += _rows.leaf_values(leaves)
            stored = db._con.execute(
                f"SELECT {_rows.LEAF_COLUMNS} FROM leaves ORDER BY idx"
            ).fetchall()
        finally:
            db.close()
        assert stored == written
        assert [r[0] for r in stored] == list(range(396))

    def test_the_rows_written_are_those_of_one_statement_per_row(
        self, fed: Fed, tmp_path: Path
    ) -> None:
        """The commit groups its rows into few statements (``SqliteDatabase.commit``): for the
        same batches (a few leaves, blocks of 64 and the rest, tiles, time blocks, kept and
        dropped checkpoints, rows beside the leaves) every table holds exactly what one plain
        statement per row writes, and each batch is committed when ``commit`` returns."""
        batches = _batches(fed)
        db = SqliteDatabase(tmp_path / "new.sqlite", origin=ORIGIN, writer=True)
        reader = SqliteDatabase(tmp_path / "new.sqlite", origin=None, writer=False)
        try:
            for batch in batches:
                db.commit(batch)
                assert reader.next_index() == batch.size  # committed when commit returns
            written = _tables(db._con)
        finally:
            reader.close()
            db.close()
        plain = SqliteDatabase(tmp_path / "plain.sqlite", origin=ORIGIN, writer=True)
        try:
            for batch in batches:
                _commit_row_by_row(plain._con, batch)
            expected = _tables(plain._con)
        finally:
            plain.close()
        assert written == expected
        assert len(written["leaves"]) == batches[-1].size
        assert len(written["tiles"]) == 2
        assert len(written["time_blocks"]) == 2
        assert written["heads"] == [("signed", batches[-1].size, batches[-1].checkpoint)]
        assert {("k1", "vk1"), ("k2", "wk2"), ("k3:value", "x")} <= set(written["meta"])

    def test_a_commit_that_fails_midway_writes_nothing(self, fed: Fed, tmp_path: Path) -> None:
        """A row beside the leaves that the database refuses (after the head, leaves, tile,
        time block and checkpoint are written in the transaction) rolls all of them back; the
        same batch without it commits after."""
        first, second = _batches(fed)[:2]
        db = SqliteDatabase(tmp_path / "log.sqlite", origin=ORIGIN, writer=True)
        try:
            db.commit(first)
            before = _tables(db._con)
            refused = ("INSERT INTO meta (key, value) VALUES (:key, :value)", [_ORIGIN_AGAIN])
            failing = CommitBatch(second.leaves, second.size, second.checkpoint, _TILES, (refused,))
            with pytest.raises(AuditUnavailable, match="commit a batch"):
                db.commit(failing)
            assert not db._con.in_transaction
            assert _tables(db._con) == before
            db.commit(second)
            assert db.next_index() == second.size
        finally:
            db.close()


_ORIGIN_AGAIN = {"key": "origin", "value": "another"}
_TILES = [(0, 0, bytes(range(256)) * 32)]


# Rows beside the leaves: a parameter named twice, an unused key, quoted text with a colon.
_BESIDE = [
    (
        "INSERT INTO meta (key, value) VALUES (:key, :value || :key)",
        [{"key": "k1", "value": "v"}, {"key": "k2", "value": "w", "unused": 0}],
    ),
    (
        "INSERT INTO meta (key, value) VALUES (:key || ':value', :value)",
        [{"key": "k3", "value": "x"}],
    ),
]


def _new_leaves(fed: Fed, start: int, count: int) -> list[NewLeaf]:
    """``count`` leaves from index ``start``: a request at each even index, at each odd one the
    response to the request before it."""
    leaves = []
    request = fed.request()
    for index in range(start, start + count):
        entry = request if index % 2 == 0 else fed.response(request, index - 1)
        data = encode_entry(entry)
        leaves.append(NewLeaf(index, data, leaf_hash(data), entry_columns(entry)))
        if index % 2 == 1:
            request = fed.request()
    return leaves


def _batches(fed: Fed) -> list[CommitBatch]:
    """Commit batches of the shapes a log writes: the empty tree's checkpoint, a few leaves, a
    block of 64 and more, one crossing two time blocks with a tile of each of two levels, and
    one with rows beside the leaves."""
    batches = [CommitBatch((), 0, "checkpoint 0")]
    size = 0
    for count in (3, 5, 64, 70, 400, 1):
        leaves = _new_leaves(fed, size, count)
        size += count
        tiles = [(0, 0, bytes(32) * 256), (1, 7, bytes(range(32)) * 256)] if count == 400 else []
        beside = _BESIDE if count == 1 else []
        batches.append(CommitBatch(leaves, size, f"checkpoint {size}", tiles, beside))
    return batches


def _tables(con: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a fixed order."""
    names = [
        r[0]
        for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]
    return {
        name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names
    }


def _commit_row_by_row(con: sqlite3.Connection, batch: CommitBatch) -> None:
    """``batch`` written the plain way: one statement per row, each table in its own call."""
    columns = _rows.LEAF_COLUMNS
    row = ", ".join(["?"] * len(_rows.leaf_values(batch.leaves[:1])[0])) if batch.leaves else ""
    start = batch.leaves[0].index if batch.leaves else batch.size
    con.execute("BEGIN IMMEDIATE")
    for values in _rows.leaf_values(batch.leaves):
        con.execute(f"INSERT INTO leaves ({columns}) VALUES ({row})", values)
    for tile in batch.tiles:
        con.execute("INSERT INTO tiles (level, idx, data) VALUES (?, ?, ?)", tile)
    for block in range(start // 256, batch.size // 256):
        low, high = con.execute(
            "SELECT MIN(time_us), MAX(time_us) FROM leaves WHERE idx >= ? AND idx < ?",
            (block * 256, block * 256 + 256),
        ).fetchone()
        before = con.execute(
            "SELECT reach_us, lag_us FROM time_blocks WHERE block = ?", (block - 1,)
        ).fetchone()
        reach, lag = (high, 0) if before is None else (max(before[0], high), before[1])
        if before is not None:
            lag = max(lag, before[0] - low)
        con.execute(
            "INSERT INTO time_blocks (block, min_us, max_us, reach_us, lag_us)"
            " VALUES (?, ?, ?, ?, ?)",
            (block, low, high, reach, lag),
        )
    if kept_checkpoint(start, batch.size):
        con.execute(
            "INSERT INTO checkpoints (size, note) VALUES (?, ?)", (batch.size, batch.checkpoint)
        )
    con.execute(
        "INSERT INTO heads (kind, size, note) VALUES ('signed', ?, ?)"
        " ON CONFLICT (kind) DO UPDATE SET size = excluded.size, note = excluded.note",
        (batch.size, batch.checkpoint),
    )
    for statement, rows in batch.beside:
        for params in rows:
            con.execute(statement, params)
    con.execute("COMMIT")
