"""The business-rule state shared by several gateway instances, in PostgreSQL.

``BusinessRules`` (``gateway.rules``) decides over a projection of the executed orders. With
``[shared] store = "postgres"`` every instance reads and writes one projection in the schema
``<shared schema>_rules``, so that a stop-payment executed through one instance counts at every
other: two stop-payments on an account through instance A, and instance B refuses the third,
exactly as one instance would. Each instance also records again, at start-up, the executed
orders of its own audit shard (``gateway.rules_rebuild``; recording is idempotent by request
id), which covers a database restored from a backup older than the logs.

``PgStateConnection`` runs the rules' own statements (SQLite's dialect, ``?`` parameters) on
one PostgreSQL connection: each statement text is one of the rules module's constants, turned
into PostgreSQL's dialect by fixed rewrites (``?`` → ``%s``, ``INSERT OR IGNORE`` →
``ON CONFLICT DO NOTHING``, ``BEGIN IMMEDIATE`` → ``BEGIN``) and cached; values are always
bound parameters. An outcome is recorded in one transaction. Database failures raise
``AuditUnavailable`` (fail closed). Calls block: ``check`` runs a few milliseconds of queries
only for the actions that have a rule (orders), ``record_outcome`` already runs off the loop.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from typing import Any

import psycopg

from fedgate.errors import AuditUnavailable
from fedgate.storage import Schema
from gateway.rules import SCHEMA, BusinessRules
from gateway.shared import PgPool

__all__ = ["PgStateConnection", "open_shared_rules"]

_PG_STORE = Schema(
    store="shared business-rules state",
    version=1,
    create=SCHEMA.replace("INTEGER", "BIGINT"),
)
_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _postgres(statement: str) -> str:
    """One of the rules' constant statements in PostgreSQL's dialect."""
    if statement == "BEGIN IMMEDIATE":
        return "BEGIN"
    text = statement.replace("?", "%s")
    if _OR_IGNORE.match(text):
        text = _OR_IGNORE.sub("INSERT INTO", text, count=1) + " ON CONFLICT DO NOTHING"
    return text


class PgStateConnection:
    """An ``sqlite3.Connection``-shaped view of one PostgreSQL connection for
    ``BusinessRules`` (which serialises its use with its own lock). A connection the server
    dropped is replaced by a new one (``connect``) at the next statement outside a transaction,
    so an instance recovers by itself when the database is back."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._conn = connect()

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        try:
            if self._conn.broken or self._conn.closed:
                self._conn = self._connect()
            return self._conn.execute(_postgres(sql), parameters or None)
        except psycopg.Error as exc:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._rollback()
            raise AuditUnavailable(f"shared business-rules state unavailable: {exc}") from exc

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):  # broken: the next statement says so again
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


def open_shared_rules(*, dsn: str, schema: str) -> BusinessRules:
    """``BusinessRules`` over the shared projection in ``schema`` (created if needed). Raises
    ``AuditUnavailable``."""
    pool = PgPool(dsn=dsn, schema=schema, store=_PG_STORE, what="shared business-rules state")
    return BusinessRules(connection=PgStateConnection(pool.connect_sync))
