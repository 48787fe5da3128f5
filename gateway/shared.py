"""The connections of the state gateway instances share on PostgreSQL (``[shared]``).

One store per schema (``fedgate.storage``: a schema holds one store's version row): each
shared store opens a ``PgPool`` on its own schema, which creates the schema and the store's
tables once (under an advisory lock, so that instances starting together do not race) and then
lends autocommit connections to callers on the event loop, a bounded number at a time.

Failures of the database are translated here, once: ``AuditUnavailable`` (fail closed: an
instance that cannot reach the shared state refuses work rather than decide alone). A
connection that failed is closed, not lent again; the next caller opens a new one, so an
instance recovers by itself when the database is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import psycopg
from psycopg import sql as psql

from fedgate.errors import AuditUnavailable
from fedgate.storage import Schema, prepare_postgres

__all__ = ["PgPool"]

_LOCK: Final = 0x66656467_73686172  # "fedg" "shar": serialises schema set-up between openers


class PgPool:
    """Up to ``connections`` autocommit connections to ``dsn`` with ``search_path`` set to
    ``schema``, whose store ``store`` is created (or checked and migrated) when the pool opens.

    ``connection()`` MUST be used on one event loop (the one serving the gateway). Raises
    ``AuditUnavailable`` naming ``what`` when the database fails.
    """

    def __init__(
        self, *, dsn: str, schema: str, store: Schema, what: str, connections: int = 4
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self._dsn = dsn
        self._schema = schema
        self._what = what
        self._size = connections
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._opened = 0
        self._freed: asyncio.Condition | None = None
        self._prepare(store)

    @property
    def schema(self) -> str:
        return self._schema

    def _prepare(self, store: Schema) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn, conn.transaction():
                # The schema too is made under the lock: two instances starting together would
                # otherwise both try to create it (CREATE SCHEMA IF NOT EXISTS can still race).
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                conn.execute(
                    psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(self._schema))
                )
                conn.execute(
                    psql.SQL("SET search_path TO {}").format(psql.Identifier(self._schema))
                )
                prepare_postgres(conn, store, where=f"PostgreSQL schema {self._schema!r}")
        except psycopg.Error as exc:
            raise AuditUnavailable(f"{self._what} unavailable: {exc}") from exc

    def connect_sync(self) -> psycopg.Connection[Any]:
        """A blocking autocommit connection on the store's schema, for start-up work and
        tools (the caller closes it). Raises ``AuditUnavailable``."""
        try:
            conn = psycopg.connect(self._dsn, autocommit=True)
            conn.execute(psql.SQL("SET search_path TO {}").format(psql.Identifier(self._schema)))
        except psycopg.Error as exc:
            raise AuditUnavailable(f"{self._what} unavailable: {exc}") from exc
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Lend one connection; ``psycopg.Error`` inside becomes ``AuditUnavailable`` and the
        connection is dropped."""
        conn = await self._take()
        try:
            yield conn
        except psycopg.Error as exc:
            await self._drop(conn)
            raise AuditUnavailable(f"{self._what} unavailable: {exc}") from exc
        except BaseException:
            await self._drop(conn)  # a cancelled query may leave the connection mid-command
            raise
        self._idle.append(conn)
        await self._notify()

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            while not self._idle and self._opened >= self._size:
                await self._freed.wait()
            if self._idle:
                return self._idle.pop()
            self._opened += 1
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            await conn.execute(
                psql.SQL("SET search_path TO {}").format(psql.Identifier(self._schema))
            )
        except psycopg.Error as exc:
            self._opened -= 1
            await self._notify()
            raise AuditUnavailable(f"{self._what} unavailable: {exc}") from exc
        return conn

    async def _drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._opened -= 1
        try:
            await conn.close()
        finally:
            await self._notify()

    async def _notify(self) -> None:
        if self._freed is not None:
            async with self._freed:
                self._freed.notify()

    def close(self) -> None:
        """Close the idle connections (their sockets: the loop that opened them may be gone)."""
        for conn in self._idle:
            conn.pgconn.finish()
        self._idle.clear()
