"""The one SQLite opener and the schema-version rule every store uses (``fedgate.storage``)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from fedgate.errors import StoreVersionError
from fedgate.storage import (
    DEFAULT_CACHE_KIB,
    VERSION_TABLE,
    Schema,
    immediate,
    open_sqlite,
    open_store,
    prepare_postgres,
    prepare_sqlite,
    sql_statements,
)

if TYPE_CHECKING:
    from conftest import PgTarget

V1 = Schema(
    store="widget store",
    version=1,
    create="CREATE TABLE IF NOT EXISTS widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
    legacy_table="widgets",
)
V2 = Schema(
    store="widget store",
    version=2,
    create=(
        "CREATE TABLE IF NOT EXISTS widgets "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, colour TEXT NOT NULL DEFAULT 'red');"
    ),
    migrations={1: "ALTER TABLE widgets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';"},
    legacy_table="widgets",
)
OTHER = Schema(store="gadget store", version=1, create="CREATE TABLE gadgets (id INTEGER);")


def _version(path: Path, store: str = "widget store") -> int | None:
    with sqlite3.connect(path) as con:
        row = con.execute(
            f"SELECT version FROM {VERSION_TABLE} WHERE store = ?",
            (store,),
        ).fetchone()
    con.close()
    return None if row is None else int(row[0])


def _set_version(path: Path, version: int, store: str = "widget store") -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute(
            f"UPDATE {VERSION_TABLE} SET version = ? WHERE store = ?",
            (version, store),
        )
    con.close()


def _open(path: Path, schema: Schema, **kw: Any) -> int:
    con = open_sqlite(path)
    try:
        return prepare_sqlite(con, schema, where=path, **kw)
    finally:
        con.close()


class TestOpenSqlite:
    def test_wal_full_sync_busy_timeout_foreign_keys(self, tmp_path: Path) -> None:
        con = open_sqlite(tmp_path / "sub" / "a.sqlite")
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
            assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert con.isolation_level is None
        finally:
            con.close()

    def test_a_new_store_and_its_wal_are_owner_only(self, tmp_path: Path) -> None:
        old = os.umask(0o022)
        try:
            con = open_sqlite(tmp_path / "store.sqlite")
            con.execute("CREATE TABLE t (x)")
            con.execute("INSERT INTO t VALUES ('440106198805170013')")
            files = sorted(tmp_path.glob("store.sqlite*"))
            assert {f.name for f in files} >= {"store.sqlite", "store.sqlite-wal"}
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
            con.close()
        finally:
            os.umask(old)

    def test_a_second_connection_keeps_the_first_ones_locks(self, tmp_path: Path) -> None:
        """Opening a database this process already has open must not drop its POSIX locks:
        otherwise another process closing its connection takes itself for the last one,
        checkpoints and deletes the WAL the first connection still writes (issue 13)."""
        path = tmp_path / "store.sqlite"
        writer = open_sqlite(path)
        second = None
        try:
            writer.execute("PRAGMA wal_autocheckpoint = 0")  # the audit writer's setting
            writer.execute("CREATE TABLE t (x TEXT NOT NULL)")
            writer.execute("INSERT INTO t VALUES ('before')")
            second = open_sqlite(path)  # e.g. the audit log's body vault beside its writer
            other = (
                "import sqlite3, sys\n"
                "con = sqlite3.connect(sys.argv[1])\n"
                "con.execute('SELECT count(*) FROM t').fetchone()\n"
                "con.close()\n"
            )
            subprocess.run([sys.executable, "-c", other, str(path)], check=True)
            assert path.with_name("store.sqlite-wal").exists()
            writer.execute("INSERT INTO t VALUES ('after')")
        finally:
            if second is not None:
                second.close()
            writer.close()
        con = open_sqlite(path, read_only=True)
        try:
            assert [r[0] for r in con.execute("SELECT x FROM t ORDER BY rowid")] == [
                "before",
                "after",
            ]
        finally:
            con.close()

    def test_normal_sync_on_request(self, tmp_path: Path) -> None:
        con = open_sqlite(tmp_path / "a.sqlite", synchronous="NORMAL")
        try:
            assert con.execute("PRAGMA synchronous").fetchone()[0] == 1
        finally:
            con.close()

    def test_other_synchronous_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="synchronous must be FULL or NORMAL"):
            open_sqlite(tmp_path / "a.sqlite", synchronous="OFF")  # type: ignore[arg-type]

    def test_read_only_needs_the_file_and_writes_nothing(self, tmp_path: Path) -> None:
        with pytest.raises(sqlite3.OperationalError):
            open_sqlite(tmp_path / "missing.sqlite", read_only=True)
        assert not (tmp_path / "missing.sqlite").exists()
        _open(tmp_path / "a.sqlite", V1)
        con = open_sqlite(tmp_path / "a.sqlite", read_only=True)
        try:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                con.execute("INSERT INTO widgets (name) VALUES ('x')")
        finally:
            con.close()

    def test_every_connection_has_a_bounded_page_cache_and_no_mmap(self, tmp_path: Path) -> None:
        _open(tmp_path / "a.sqlite", V1)
        for con in (
            open_sqlite(tmp_path / "a.sqlite"),
            open_sqlite(tmp_path / "a.sqlite", read_only=True),
        ):
            try:
                assert con.execute("PRAGMA cache_size").fetchone()[0] == -DEFAULT_CACHE_KIB
                assert con.execute("PRAGMA mmap_size").fetchone()[0] == 0
            finally:
                con.close()
        con = open_sqlite(tmp_path / "a.sqlite", read_only=True, cache_kib=512)
        try:
            assert con.execute("PRAGMA cache_size").fetchone()[0] == -512
        finally:
            con.close()

    def test_open_store_translates_failures_to_the_stores_error(self, tmp_path: Path) -> None:
        (tmp_path / "dir.sqlite").mkdir()

        class Broken(Exception):
            def __init__(self, message: str) -> None:
                super().__init__(message)

        with pytest.raises(Exception, match=r"cannot open the widget store .*dir\.sqlite"):
            open_store(tmp_path / "dir.sqlite", V1, error=Broken)  # type: ignore[arg-type]


class TestSqliteVersions:
    def test_new_store_gets_the_newest_schema_and_version(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        assert _open(path, V2) == 2
        assert _version(path) == 2
        assert _open(path, V2) == 2  # reopening changes nothing

    def test_older_store_is_migrated_keeping_its_rows(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        _open(path, V1)
        con = sqlite3.connect(path)
        with con:
            con.execute("INSERT INTO widgets (name) VALUES ('kept')")
        con.close()
        assert _open(path, V2) == 1
        assert _version(path) == 2
        con = sqlite3.connect(path)
        assert con.execute("SELECT name, colour FROM widgets").fetchall() == [("kept", "red")]
        con.close()

    def test_store_from_before_versioning_counts_as_version_1(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        con.close()
        assert _open(path, V2) == 1
        assert _version(path) == 2

    def test_newer_store_is_refused_naming_file_and_versions(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        _open(path, V2)
        with pytest.raises(
            StoreVersionError,
            match=rf"{path}: widget store schema version 2 is newer than this fedgate supports "
            r"\(version 1\)",
        ):
            _open(path, V1)
        assert _version(path) == 2  # untouched

    @pytest.mark.parametrize("version", [0, -3])
    def test_unknown_version_is_refused(self, tmp_path: Path, version: int) -> None:
        path = tmp_path / "w.sqlite"
        _open(path, V1)
        _set_version(path, version)
        with pytest.raises(StoreVersionError, match=rf"schema version {version} is unknown"):
            _open(path, V2)
        assert _version(path) == version

    def test_another_stores_database_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "g.sqlite"
        _open(path, OTHER)
        with pytest.raises(StoreVersionError, match="holds the gadget store, not a fedgate widget"):
            _open(path, V1)
        con = sqlite3.connect(path)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        con.close()
        assert "widgets" not in tables

    def test_failed_migration_changes_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        _open(path, V1)
        bad = Schema(
            store="widget store",
            version=2,
            create=V2.create,
            migrations={1: "ALTER TABLE widgets ADD COLUMN colour TEXT; ALTER TABLE nope ADD x;"},
        )
        with pytest.raises(sqlite3.OperationalError, match="nope"):
            _open(path, bad)
        assert _version(path) == 1
        con = sqlite3.connect(path)
        columns = [r[1] for r in con.execute("PRAGMA table_info(widgets)")]
        con.close()
        assert columns == ["id", "name"]

    def test_reader_checks_but_never_migrates(self, tmp_path: Path) -> None:
        path = tmp_path / "w.sqlite"
        _open(path, V1)
        con = open_sqlite(path, read_only=True)
        try:
            assert prepare_sqlite(con, V1, where=path, writable=False) == 1
            with pytest.raises(StoreVersionError, match="older than this fedgate's"):
                prepare_sqlite(con, V2, where=path, writable=False)
        finally:
            con.close()
        empty = tmp_path / "empty.sqlite"
        sqlite3.connect(empty).close()
        con = open_sqlite(empty, read_only=True)
        try:
            with pytest.raises(StoreVersionError, match="is not a fedgate widget store"):
                prepare_sqlite(con, V1, where=empty, writable=False)
        finally:
            con.close()

    def test_a_schema_must_have_every_migration(self) -> None:
        with pytest.raises(ValueError, match=r"no migration from version\(s\) \[2\]"):
            Schema(store="s", version=3, create="", migrations={1: ""})


class TestSqlStatements:
    def test_triggers_stay_whole(self) -> None:
        script = (
            "CREATE TABLE t (a);\nCREATE TRIGGER t_x BEFORE DELETE ON t BEGIN "
            "SELECT RAISE(ABORT, 'no; never'); END;\nCREATE INDEX i ON t (a)"
        )
        assert list(sql_statements(script)) == [
            "CREATE TABLE t (a);",
            "CREATE TRIGGER t_x BEFORE DELETE ON t BEGIN SELECT RAISE(ABORT, 'no; never'); END;",
            "CREATE INDEX i ON t (a);",
        ]

    def test_incomplete_statement_refused(self) -> None:
        with pytest.raises(ValueError, match="incomplete SQL statement"):
            list(sql_statements("CREATE TRIGGER x BEFORE DELETE ON t BEGIN SELECT 1;"))


@pytest.fixture
def pg_conn(pg: PgTarget) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose search_path is ``pg``'s fresh schema (dropped by ``pg``)."""
    conn = psycopg.connect(pg.dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
    try:
        yield conn
    finally:
        conn.close()


PG_V1 = Schema(
    store="widget store",
    version=1,
    create="CREATE TABLE IF NOT EXISTS widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
    legacy_table="widgets",
)
PG_V2 = Schema(
    store="widget store",
    version=2,
    create=(
        "CREATE TABLE IF NOT EXISTS widgets "
        "(id BIGINT PRIMARY KEY, name TEXT NOT NULL, colour TEXT NOT NULL DEFAULT 'red');"
    ),
    migrations={1: "ALTER TABLE widgets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red';"},
    legacy_table="widgets",
)


@pytest.mark.postgres
class TestPostgresVersions:
    def _prepare(self, conn: psycopg.Connection[Any], schema: Schema, **kw: Any) -> int:
        with conn.transaction():
            return prepare_postgres(conn, schema, where="PostgreSQL schema 'x'", **kw)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        assert row is not None
        return int(row[0])

    def test_create_migrate_refuse(self, pg_conn: psycopg.Connection[Any]) -> None:
        assert self._prepare(pg_conn, PG_V1) == 1
        pg_conn.execute("INSERT INTO widgets (id, name) VALUES (1, 'kept')")
        assert self._prepare(pg_conn, PG_V2) == 1
        assert self._version(pg_conn) == 2
        assert pg_conn.execute("SELECT name, colour FROM widgets").fetchall() == [("kept", "red")]
        with pytest.raises(
            StoreVersionError,
            match=r"PostgreSQL schema 'x': widget store schema version 2 is newer than this "
            r"fedgate supports \(version 1\)",
        ):
            self._prepare(pg_conn, PG_V1)
        v3 = dataclasses.replace(PG_V2, version=3, migrations={1: "", 2: ""})
        with pytest.raises(StoreVersionError, match="older than this fedgate's"):
            self._prepare(pg_conn, v3, writable=False)
        assert self._version(pg_conn) == 2

    def test_unversioned_store_counts_as_version_1(self, pg_conn: psycopg.Connection[Any]) -> None:
        pg_conn.execute("CREATE TABLE widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
        assert self._prepare(pg_conn, PG_V2) == 1
        assert self._version(pg_conn) == 2


class TestImmediate:
    """``immediate``: the one write-transaction envelope the SQLite stores use."""

    @pytest.fixture
    def con(self, tmp_path: Path) -> Iterator[sqlite3.Connection]:
        con = open_sqlite(tmp_path / "t.sqlite")
        con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY ON CONFLICT ROLLBACK, v TEXT)")
        yield con
        con.close()

    def test_commits_when_the_block_ends(self, con: sqlite3.Connection) -> None:
        with immediate(con):
            assert con.in_transaction
            con.execute("INSERT INTO t VALUES (1, 'a')")
        assert not con.in_transaction
        assert con.execute("SELECT v FROM t").fetchall() == [("a",)]

    def test_rolls_back_when_the_block_raises(self, con: sqlite3.Connection) -> None:
        def insert_then_fail() -> None:
            with immediate(con):
                con.execute("INSERT INTO t VALUES (1, 'a')")
                raise KeyError("boom")

        with pytest.raises(KeyError):
            insert_then_fail()
        assert not con.in_transaction
        assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)

    def test_a_statement_that_ended_the_transaction_keeps_its_own_error(
        self, con: sqlite3.Connection
    ) -> None:
        # ON CONFLICT ROLLBACK ends the transaction inside the failing statement: a second
        # ROLLBACK would raise "no transaction is active" and hide the constraint error.
        def insert_twice() -> None:
            with immediate(con):
                con.execute("INSERT INTO t VALUES (1, 'a')")
                con.execute("INSERT INTO t VALUES (1, 'b')")

        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            insert_twice()
        assert not con.in_transaction
        assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
        with immediate(con):
            con.execute("INSERT INTO t VALUES (2, 'c')")
        assert con.execute("SELECT k FROM t").fetchall() == [(2,)]

    def test_the_write_lock_is_taken_at_the_start(
        self, con: sqlite3.Connection, tmp_path: Path
    ) -> None:
        other = open_sqlite(tmp_path / "t.sqlite")
        other.execute("PRAGMA busy_timeout = 0")
        try:
            with immediate(con), pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()
