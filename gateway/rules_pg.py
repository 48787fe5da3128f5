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
``AuditUnavailable`` (fail closed). Calls block: ``check`` runs a few queries only for the
actions that have a rule (orders), ``record_outcome`` already runs off the loop.

Two instances cannot both allow a third stop-payment (``PgReservations``): the check of a
stop-payment or extension takes a transaction-level advisory lock on the bank and account,
counts the executed stops, extensions and other requests' reservations, and reserves, all in one
transaction; the reservation ends with the order's answer (``record_outcome``, any status) or
lapses after ``RESERVATION_LAPSES_AFTER``.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

import psycopg

from fedgate.errors import AuditUnavailable
from fedgate.storage import Schema
from gateway.rules import SCHEMA, BusinessRules
from gateway.shared import PgPool

__all__ = ["RESERVATION_LAPSES_AFTER", "PgReservations", "PgStateConnection", "open_shared_rules"]

_PG_STORE = Schema(
    store="shared business-rules state",
    version=1,
    create=SCHEMA.replace("INTEGER", "BIGINT")
    + """
CREATE TABLE IF NOT EXISTS stop_reservations (
    request_id TEXT PRIMARY KEY,
    bank       TEXT NOT NULL,
    account    TEXT NOT NULL,
    expires_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS stop_reservations_by_account ON stop_reservations (bank, account);
""",
)
RESERVATION_LAPSES_AFTER: Final = timedelta(minutes=10)
"""How long an allowed stop-payment without an answer counts on its account: longer than any
node call (``[routing] timeout_s``); a request queued for a person lapses sooner than it is
answered, and the bank's own limit then holds, as on one instance."""
_LOCK_ACCOUNT = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_HELD = (
    "SELECT COUNT(*) FROM stop_reservations"
    " WHERE bank = %s AND account = %s AND request_id <> %s AND expires_us > %s"
)
_RESERVE = (
    "INSERT INTO stop_reservations (request_id, bank, account, expires_us)"
    " VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (request_id) DO UPDATE SET expires_us = excluded.expires_us"
)
_RELEASE = "DELETE FROM stop_reservations WHERE request_id = %s"
_PRUNE = "DELETE FROM stop_reservations WHERE expires_us < %s"
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
        return self.execute_pg(_postgres(sql), parameters)

    def execute_pg(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        """A statement already in PostgreSQL's dialect (this module's own)."""
        try:
            if self._conn.broken or self._conn.closed:
                self._conn = self._connect()
            return self._conn.execute(sql, parameters or None)
        except psycopg.Error as exc:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._rollback()
            raise AuditUnavailable(f"shared business-rules state unavailable: {exc}") from exc

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (or failed and not yet rolled back) on the connection."""
        status = self._conn.info.transaction_status
        return status in (
            psycopg.pq.TransactionStatus.INTRANS,
            psycopg.pq.TransactionStatus.INERROR,
            psycopg.pq.TransactionStatus.ACTIVE,
        )

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):  # broken: the next statement says so again
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


class PgReservations:
    """``gateway.rules.Reservations`` in the shared state, on the rules' own connection (so in
    their transaction). The account lock is a transaction-level advisory lock on the bank and
    account, so two instances checking one account take turns."""

    def __init__(self, state: PgStateConnection) -> None:
        self._state = state
        self._lapse_us = RESERVATION_LAPSES_AFTER // timedelta(microseconds=1)

    def lock_account(self, bank: str, account: str) -> None:
        self._state.execute_pg(_LOCK_ACCOUNT, (f"{bank}\x1f{account}",))

    def held(self, bank: str, account: str, *, other_than: str, now_us: int) -> int:
        row = self._state.execute_pg(_HELD, (bank, account, other_than, now_us)).fetchone()
        return int(row[0]) if row else 0

    def reserve(self, request_id: str, bank: str, account: str, *, now_us: int) -> None:
        self._state.execute_pg(_PRUNE, (now_us - self._lapse_us,))
        self._state.execute_pg(_RESERVE, (request_id, bank, account, now_us + self._lapse_us))

    def release(self, request_id: str) -> None:
        self._state.execute_pg(_RELEASE, (request_id,))


def open_shared_rules(*, dsn: str, schema: str) -> BusinessRules:
    """``BusinessRules`` over the shared projection in ``schema`` (created if needed). Raises
    ``AuditUnavailable``."""
    pool = PgPool(dsn=dsn, schema=schema, store=_PG_STORE, what="shared business-rules state")
    state = PgStateConnection(pool.connect_sync)
    return BusinessRules(connection=state, reservations=PgReservations(state))
