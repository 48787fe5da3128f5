"""The reference carrier's SQLite schema, and the bulk loader the synthetic-data generator uses.

Times are integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from fedgate.storage import Schema, prepare_sqlite

__all__ = [
    "INDEXES",
    "SCHEMA",
    "TABLES",
    "CellRow",
    "LocationRow",
    "RecordRow",
    "SubscriberRow",
    "create_carrier_database",
]

TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscribers (
    number TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    id_number TEXT NOT NULL,
    registered_ts INTEGER NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL,
    state_ts INTEGER NOT NULL,
    state_reason TEXT NOT NULL,
    state_order_ref TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    radius_m INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    number TEXT NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('voice', 'sms')),
    direction TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    other_number TEXT NOT NULL,
    duration_s INTEGER NOT NULL,
    cell_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS locations (
    id INTEGER PRIMARY KEY,
    number TEXT NOT NULL,
    ts INTEGER NOT NULL,
    cell_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS number_orders (
    order_ref TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sms_blocks (
    sender TEXT PRIMARY KEY,
    order_ref TEXT NOT NULL,
    reason TEXT NOT NULL,
    since_ts INTEGER NOT NULL
) WITHOUT ROWID;
"""

INDEXES = """
CREATE INDEX IF NOT EXISTS subscribers_id_number ON subscribers(id_number);
CREATE INDEX IF NOT EXISTS records_number_ts ON records(number, ts);
CREATE INDEX IF NOT EXISTS locations_number_ts ON locations(number, ts);
"""

SCHEMA = Schema(
    store="reference carrier database",
    version=1,
    create=TABLES + INDEXES,
    legacy_table="subscribers",
)


class SubscriberRow(NamedTuple):
    number: str
    name: str
    id_number: str
    registered_ts: int
    channel: str
    state: str
    state_ts: int
    state_reason: str
    state_order_ref: str


class CellRow(NamedTuple):
    cell_id: str
    lat: float
    lon: float
    radius_m: int


class RecordRow(NamedTuple):
    number: str
    ts: int
    kind: str
    direction: str
    other_number: str
    duration_s: int
    cell_id: str


class LocationRow(NamedTuple):
    number: str
    ts: int
    cell_id: str


def create_carrier_database(
    path: Path,
    *,
    carrier_id: str,
    subscribers: Iterable[SubscriberRow],
    cells: Iterable[CellRow],
    records: Iterable[RecordRow],
    locations: Iterable[LocationRow],
) -> None:
    """Write a new carrier database at ``path`` from rows, then build its indexes.

    Raises ``FileExistsError`` if ``path`` exists.
    """
    if path.exists():
        raise FileExistsError(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(TABLES)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO meta(key, value) VALUES ('carrier_id', ?)", (carrier_id,))
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema', '1')")
        conn.executemany("INSERT INTO subscribers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", subscribers)
        conn.executemany("INSERT INTO cells VALUES (?, ?, ?, ?)", cells)
        conn.executemany(
            "INSERT INTO records(number, ts, kind, direction, other_number, duration_s, cell_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            records,
        )
        conn.executemany("INSERT INTO locations(number, ts, cell_id) VALUES (?, ?, ?)", locations)
        conn.execute("COMMIT")
        conn.executescript(INDEXES)
        conn.execute("PRAGMA journal_mode=WAL")
        prepare_sqlite(conn, SCHEMA, where=path)
    finally:
        conn.close()
