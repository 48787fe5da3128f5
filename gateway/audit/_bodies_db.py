"""The tables of the audit bodies (``_bodies``) on SQLite and PostgreSQL: their schema (the
store ``audit bodies``, version 1, kept in the audit log's own database) and the few
statements the vault runs, each written once per database.

``bodies`` MUST be append-only (triggers); ``body_keys`` rows MUST NOT be deleted, only their
wrapped key erased. Statements take named parameters (``:name``; PostgreSQL's ``%(name)s`` is
derived) and every call passes ``origin`` too: PostgreSQL rows are keyed by the shard's origin
like the log's own, an SQLite file holds one shard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from fedgate.storage import Schema, immediate, open_sqlite, prepare_postgres, prepare_sqlite

__all__ = [
    "BODIES_SCHEMA_PG",
    "BODIES_SCHEMA_SQLITE",
    "DESTROY_KEY",
    "DUE_KEYS",
    "INSERT_BODY",
    "INSERT_KEY",
    "SELECT_BODY",
    "SELECT_CASE_KEY",
    "SELECT_KEY",
    "SELECT_KEYS",
    "TOUCH_KEY",
    "BodiesDb",
    "Params",
    "PgBodiesDb",
    "SqliteBodiesDb",
]

Params = dict[str, Any]

_DDL_SQLITE = """
CREATE TABLE IF NOT EXISTS body_keys (
    ref TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped BLOB,
    created_us INTEGER NOT NULL, last_us INTEGER NOT NULL,
    destroyed_us INTEGER, rule TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE TABLE IF NOT EXISTS bodies (
    leaf_hash BLOB NOT NULL, idx INTEGER NOT NULL, ref TEXT NOT NULL, sealed BLOB NOT NULL,
    PRIMARY KEY (leaf_hash, idx)
) STRICT;
CREATE INDEX IF NOT EXISTS body_keys_live ON body_keys (last_us) WHERE wrapped IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS bodies_no_update BEFORE UPDATE ON bodies BEGIN
    SELECT RAISE(ABORT, 'audit bodies are append-only: UPDATE on bodies refused'); END;
CREATE TRIGGER IF NOT EXISTS bodies_no_delete BEFORE DELETE ON bodies BEGIN
    SELECT RAISE(ABORT, 'audit bodies are append-only: DELETE on bodies refused'); END;
CREATE TRIGGER IF NOT EXISTS body_keys_no_delete BEFORE DELETE ON body_keys BEGIN
    SELECT RAISE(ABORT, 'body keys are destroyed by erasing the key, never deleted'); END;
"""

_DDL_PG = """
CREATE TABLE IF NOT EXISTS body_keys (
    origin TEXT NOT NULL, ref TEXT NOT NULL, kek_id TEXT NOT NULL, wrapped BYTEA,
    created_us BIGINT NOT NULL, last_us BIGINT NOT NULL,
    destroyed_us BIGINT, rule TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (origin, ref)
);
CREATE TABLE IF NOT EXISTS bodies (
    origin TEXT NOT NULL, leaf_hash BYTEA NOT NULL, idx BIGINT NOT NULL, ref TEXT NOT NULL,
    sealed BYTEA NOT NULL, PRIMARY KEY (origin, leaf_hash, idx)
);
CREATE INDEX IF NOT EXISTS body_keys_live ON body_keys (origin, last_us)
    WHERE wrapped IS NOT NULL;
CREATE OR REPLACE FUNCTION fedgate_bodies_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit bodies are append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END $$;
DROP TRIGGER IF EXISTS bodies_append_only ON bodies;
CREATE TRIGGER bodies_append_only BEFORE UPDATE OR DELETE ON bodies
    FOR EACH ROW EXECUTE FUNCTION fedgate_bodies_refuse();
DROP TRIGGER IF EXISTS body_keys_no_delete ON body_keys;
CREATE TRIGGER body_keys_no_delete BEFORE DELETE ON body_keys
    FOR EACH ROW EXECUTE FUNCTION fedgate_bodies_refuse();
"""

BODIES_SCHEMA_SQLITE = Schema(
    store="audit bodies", version=1, create=_DDL_SQLITE, lives_in="audit log"
)
BODIES_SCHEMA_PG = Schema(store="audit bodies", version=1, create=_DDL_PG, lives_in="audit log")


class BodiesDb(Protocol):
    """The few statements the vault runs, on one connection, serialised by the vault."""

    def fetch(self, statement: str, params: Params) -> list[tuple[Any, ...]]: ...

    def transaction(self, steps: Sequence[tuple[str, Sequence[Params]]]) -> None: ...

    def close(self) -> None: ...


class SqliteBodiesDb:
    def __init__(self, path: Path) -> None:
        self._con = open_sqlite(path)
        try:
            prepare_sqlite(self._con, BODIES_SCHEMA_SQLITE, where=path)
            self._con.execute("PRAGMA secure_delete = ON")  # erased keys leave no free page
        except BaseException:
            self._con.close()
            raise

    def fetch(self, statement: str, params: Params) -> list[tuple[Any, ...]]:
        return self._con.execute(statement, params).fetchall()

    def transaction(self, steps: Sequence[tuple[str, Sequence[Params]]]) -> None:
        con = self._con
        with immediate(con):
            for statement, rows in steps:
                con.executemany(statement, rows)

    def close(self) -> None:
        self._con.close()


class PgBodiesDb:
    """The vault's tables in the shard's PostgreSQL schema, rows keyed by ``origin``."""

    _LOCK = 0x62646B73  # "bdks": serialises schema creation across instances

    def __init__(self, dsn: str, *, schema: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True)
        try:
            conn = self._conn
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._LOCK,))
                prepare_postgres(conn, BODIES_SCHEMA_PG, where=f"PostgreSQL schema {schema!r}")
        except BaseException:
            self._conn.close()
            raise

    def fetch(self, statement: str, params: Params) -> list[tuple[Any, ...]]:
        return self._conn.execute(statement, params).fetchall()

    def transaction(self, steps: Sequence[tuple[str, Sequence[Params]]]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            for statement, rows in steps:
                cur.executemany(statement, rows)

    def close(self) -> None:
        self._conn.close()


# Each statement exists twice: for SQLite (no origin column) and PostgreSQL (rows keyed by the
# shard's origin, like the log's own tables). Parameters are named (``:name``; PostgreSQL's
# ``%(name)s`` is derived), and every call passes ``origin`` too.
def _both(sqlite_sql: str, pg_sql: str) -> tuple[str, str]:
    return sqlite_sql, re.sub(r":(\w+)", r"%(\1)s", pg_sql)


SELECT_KEY = _both(
    "SELECT kek_id, wrapped, destroyed_us, rule FROM body_keys WHERE ref = :ref",
    "SELECT kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = :ref",
)
SELECT_KEYS = _both(
    "SELECT ref, kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE ref IN (SELECT value FROM json_each(:refs))",
    "SELECT ref, kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = ANY(:refs)",
)
INSERT_KEY = _both(
    "INSERT INTO body_keys (ref, kek_id, wrapped, created_us, last_us)"
    " VALUES (:ref, :kek_id, :wrapped, :us, :us) ON CONFLICT (ref) DO NOTHING",
    "INSERT INTO body_keys (origin, ref, kek_id, wrapped, created_us, last_us)"
    " VALUES (:origin, :ref, :kek_id, :wrapped, :us, :us) ON CONFLICT (origin, ref) DO NOTHING",
)
TOUCH_KEY = _both(
    "UPDATE body_keys SET last_us = MAX(last_us, :us) WHERE ref = :ref",
    "UPDATE body_keys SET last_us = GREATEST(last_us, :us) WHERE origin = :origin AND ref = :ref",
)
INSERT_BODY = _both(
    "INSERT INTO bodies (idx, leaf_hash, ref, sealed) VALUES (:idx, :leaf_hash, :ref, :sealed)"
    " ON CONFLICT DO NOTHING",
    "INSERT INTO bodies (origin, idx, leaf_hash, ref, sealed)"
    " VALUES (:origin, :idx, :leaf_hash, :ref, :sealed) ON CONFLICT DO NOTHING",
)
SELECT_BODY = _both(
    "SELECT idx, ref, sealed FROM bodies WHERE leaf_hash = :leaf_hash",
    "SELECT idx, ref, sealed FROM bodies WHERE origin = :origin AND leaf_hash = :leaf_hash",
)
DUE_KEYS = _both(
    "SELECT ref FROM body_keys WHERE wrapped IS NOT NULL AND last_us < :us AND ref <> :ref"
    " ORDER BY last_us",
    "SELECT ref FROM body_keys WHERE origin = :origin AND wrapped IS NOT NULL"
    " AND last_us < :us AND ref <> :ref ORDER BY last_us",
)
DESTROY_KEY = _both(
    "UPDATE body_keys SET wrapped = NULL, destroyed_us = :us, rule = :rule"
    " WHERE ref = :ref AND wrapped IS NOT NULL",
    "UPDATE body_keys SET wrapped = NULL, destroyed_us = :us, rule = :rule"
    " WHERE origin = :origin AND ref = :ref AND wrapped IS NOT NULL",
)
SELECT_CASE_KEY = _both(
    "SELECT ref, created_us, last_us, destroyed_us, rule FROM body_keys WHERE ref = :ref",
    "SELECT ref, created_us, last_us, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = :ref",
)
