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
from gateway.audit.store import CommitBatch, NewLeaf, SearchQuery

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
                leaves = []
                for _ in range(count):
                    request = fed.request()
                    entry = request if size % 2 == 0 else fed.response(request, size - 1)
                    data = encode_entry(entry)
                    leaves.append(NewLeaf(size, data, leaf_hash(data), entry_columns(entry)))
                    size += 1
                db.commit(CommitBatch(leaves, size, f"checkpoint {size}"))
                written += _rows.leaf_values(leaves)
            stored = db._con.execute(
                f"SELECT {_rows.LEAF_COLUMNS} FROM leaves ORDER BY idx"
            ).fetchall()
        finally:
            db.close()
        assert stored == written
        assert [r[0] for r in stored] == list(range(396))
