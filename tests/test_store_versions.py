"""Every store checks its schema version on open (``fedgate.storage``): a store written by a newer
fedgate, or another store's file, is refused with a message naming the file and the versions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psycopg
import pytest
from psycopg import sql

from adapters.bank.holds import TransferGuard
from adapters.bank.monitor import MonitorLedger
from adapters.bank.reference import ReferenceBank
from adapters.carrier.intercept import Interceptor
from adapters.carrier.reference import ReferenceCarrier
from adapters.queue import RequestStore
from adapters.risklist.replica import Replica, ReplicaKeys
from fedgate.dissuasion import TaskStore
from fedgate.errors import StoreVersionError
from fedgate.keys import generate_signing_key
from fedgate.note import NoteSigner
from fedgate.risklist import RiskIndex
from fedgate.storage import VERSION_TABLE
from fedgate.web.auth import UserStore
from gateway.alerts import AlertHub
from gateway.audit.pg_store import AUDIT_SCHEMA as PG_AUDIT_SCHEMA
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import AUDIT_SCHEMA, SqliteDatabase
from gateway.replay import ReplayCache
from gateway.risklist import CentreStats, RiskListLog
from gateway.rules import BusinessRules
from gateway.tickets import SqliteTickets

if TYPE_CHECKING:
    from conftest import PgTarget


class _Closable(Protocol):
    def close(self) -> None: ...


_NO_KEYS = ReplicaKeys(origin="test/risklist", log_verifiers=())


class _SyncClosing:
    """An object with an async ``close`` closed synchronously (a fresh loop)."""

    def __init__(self, inner: RiskListLog) -> None:
        self._inner = inner

    def close(self) -> None:
        asyncio.run(self._inner.close())


def _risklist_log(path: Path) -> _Closable:
    signer = NoteSigner(name="test/risklist", private_key=generate_signing_key())
    return _SyncClosing(RiskListLog.open(path, origin=signer.name, signer=signer))


def _interceptor(path: Path) -> _Closable:
    return Interceptor(index=RiskIndex(), is_subscriber=bool, name_of=str, counts_path=path)


STORES: dict[str, tuple[str, Callable[[Path], _Closable]]] = {
    "replay": ("replay cache", ReplayCache.open),
    "rules": ("business-rules state", BusinessRules.open),
    "tickets": ("ticket store", SqliteTickets.open),
    "alerts": ("alert store", AlertHub.open),
    "users": ("console user store", UserStore),
    "node-queue": ("node request store", RequestStore),
    "monitors": ("bank monitor ledger", MonitorLedger),
    "bank": ("reference bank database", lambda p: ReferenceBank(path=p, bank_id="bank.icbc")),
    "carrier": (
        "reference carrier database",
        lambda p: ReferenceCarrier(path=p, carrier_id="carrier.cmcc"),
    ),
    "audit": ("audit log", lambda p: SqliteDatabase(p, origin="test/log", writer=True)),
    "risklist": ("risk list log", _risklist_log),
    "risklist-stats": ("countermeasure statistics", lambda p: CentreStats(p, member_kind=str)),
    "replica": ("risk list replica", lambda p: Replica.open(p, keys=_NO_KEYS)),
    "interceptions": ("interception counts", _interceptor),
    "holds": ("transfer holds", lambda p: TransferGuard(index=RiskIndex(), path=p)),
    "dissuasion": ("dissuasion task store", TaskStore),
}


# The schema version each store writes now (1 unless a migration step was added).
VERSIONS = {"audit": AUDIT_SCHEMA.version, "tickets": 2}


def _stored_version(path: Path, store: str) -> int:
    con = sqlite3.connect(path)
    try:
        (version,) = con.execute(
            f"SELECT version FROM {VERSION_TABLE} WHERE store = ?", (store,)
        ).fetchone()
    finally:
        con.close()
    return int(version)


@pytest.mark.parametrize("name", sorted(STORES))
class TestEverySqliteStore:
    def test_records_its_version_and_reopens(self, tmp_path: Path, name: str) -> None:
        store, open_ = STORES[name]
        path = tmp_path / f"{name}.sqlite"
        open_(path).close()
        assert _stored_version(path, store) == VERSIONS.get(name, 1)
        open_(path).close()

    def test_refuses_a_newer_version_naming_file_and_versions(
        self, tmp_path: Path, name: str
    ) -> None:
        store, open_ = STORES[name]
        path = tmp_path / f"{name}.sqlite"
        open_(path).close()
        con = sqlite3.connect(path)
        with con:
            con.execute(f"UPDATE {VERSION_TABLE} SET version = 99 WHERE store = ?", (store,))
        con.close()
        with pytest.raises(
            StoreVersionError,
            match=rf"{path}: {store} schema version 99 is newer than this fedgate supports "
            rf"\(version {VERSIONS.get(name, 1)}\)",
        ):
            open_(path)
        assert _stored_version(path, store) == 99

    def test_refuses_another_stores_file(self, tmp_path: Path, name: str) -> None:
        _store, open_ = STORES[name]
        other_name = "tickets" if name != "tickets" else "rules"
        other_store, open_other = STORES[other_name]
        path = tmp_path / "other.sqlite"
        open_other(path).close()
        with pytest.raises(StoreVersionError, match=rf"holds the {other_store}, not a fedgate"):
            open_(path)


@pytest.mark.postgres
def test_postgres_audit_store_refuses_a_newer_version(pg: PgTarget) -> None:
    dsn, schema = pg.dsn, pg.schema
    PgDatabase(dsn, origin="test/log", schema=schema, writer=True).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.{} SET version = 9").format(
                sql.Identifier(schema), sql.Identifier(VERSION_TABLE)
            )
        )
    for writer in (True, False):
        with pytest.raises(
            StoreVersionError,
            match=rf"PostgreSQL schema '{schema}': audit log schema version 9 is newer than "
            rf"this fedgate supports \(version {PG_AUDIT_SCHEMA.version}\)",
        ):
            PgDatabase(dsn, origin="test/log", schema=schema, writer=writer)
