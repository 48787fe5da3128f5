"""The reference bank's SQLite schema, and the bulk loader the synthetic-data generator uses.

Times are integer microseconds since the epoch (UTC); money is integer minor
units. Secondary indexes are created after a bulk load, which is several times
faster than maintaining them row by row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import NamedTuple, TypeVar

from fedgate.storage import Schema, prepare_sqlite

__all__ = [
    "INDEXES",
    "SCHEMA",
    "TABLES",
    "AccountRow",
    "CustomerRow",
    "LoginRow",
    "TransactionRow",
    "create_bank_database",
]

TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    id_number TEXT NOT NULL,
    phone TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    account_number TEXT NOT NULL,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    account_type TEXT NOT NULL,
    opened_on TEXT NOT NULL,
    branch TEXT NOT NULL,
    status TEXT NOT NULL,
    balance INTEGER NOT NULL,
    currency TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY,
    account_number TEXT NOT NULL,
    ts INTEGER NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    counterparty_account TEXT NOT NULL,
    counterparty_name TEXT NOT NULL,
    counterparty_bank TEXT NOT NULL,
    channel TEXT NOT NULL,
    balance_after INTEGER NOT NULL,
    memo TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logins (
    id INTEGER PRIMARY KEY,
    account_number TEXT NOT NULL,
    ts INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    ip TEXT NOT NULL,
    channel TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stop_payments (
    order_ref TEXT PRIMARY KEY,
    account_number TEXT NOT NULL,
    agency TEXT NOT NULL,
    payer_account TEXT NOT NULL,
    payer_name TEXT NOT NULL,
    payer_bank TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    transfer_ts INTEGER NOT NULL,
    matched_tx INTEGER NOT NULL REFERENCES transactions(id),
    start_ts INTEGER NOT NULL,
    end_ts INTEGER NOT NULL,
    extensions INTEGER NOT NULL DEFAULT 0,
    released_ts INTEGER
);
CREATE TABLE IF NOT EXISTS stop_payment_documents (
    order_ref TEXT PRIMARY KEY REFERENCES stop_payments(order_ref),
    case_number TEXT NOT NULL,
    case_document TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS freezes (
    order_ref TEXT PRIMARY KEY,
    account_number TEXT NOT NULL,
    method TEXT NOT NULL CHECK (method IN ('fixed_amount', 'receive_only')),
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    agency TEXT NOT NULL,
    case_number TEXT NOT NULL,
    case_document TEXT NOT NULL,
    duty_phone TEXT NOT NULL,
    start_ts INTEGER NOT NULL,
    end_ts INTEGER NOT NULL,
    renewals INTEGER NOT NULL DEFAULT 0,
    released_ts INTEGER
);
CREATE TABLE IF NOT EXISTS refunds (
    order_ref TEXT PRIMARY KEY,
    freeze_ref TEXT NOT NULL REFERENCES freezes(order_ref),
    account_number TEXT NOT NULL,
    victim_account TEXT NOT NULL,
    victim_bank TEXT NOT NULL,
    case_number TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    reported_loss INTEGER NOT NULL,
    currency TEXT NOT NULL,
    movement_id INTEGER NOT NULL REFERENCES transactions(id),
    ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS monitors (
    account_number TEXT PRIMARY KEY,
    since_ts INTEGER NOT NULL,
    until_ts INTEGER NOT NULL,
    start_after_id INTEGER NOT NULL,
    stopped_ts INTEGER
) WITHOUT ROWID;
"""

INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS customers_id_number ON customers(id_number);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_number ON accounts(account_number);
CREATE INDEX IF NOT EXISTS accounts_customer ON accounts(customer_id);
CREATE INDEX IF NOT EXISTS transactions_account_ts ON transactions(account_number, ts);
CREATE INDEX IF NOT EXISTS logins_account_ts ON logins(account_number, ts);
CREATE INDEX IF NOT EXISTS stop_payments_account ON stop_payments(account_number);
CREATE INDEX IF NOT EXISTS freezes_account ON freezes(account_number);
"""

SCHEMA = Schema(
    store="reference bank database", version=1, create=TABLES + INDEXES, legacy_table="accounts"
)


class CustomerRow(NamedTuple):
    id: int
    name: str
    id_number: str
    phone: str
    address: str


class AccountRow(NamedTuple):
    account_number: str
    customer_id: int
    account_type: str
    opened_on: str  # ISO date
    branch: str
    status: str
    balance: int
    currency: str


class TransactionRow(NamedTuple):
    """One posting; rows are numbered in the order they are loaded."""

    account_number: str
    ts: int
    direction: str
    amount: int
    currency: str
    counterparty_account: str
    counterparty_name: str
    counterparty_bank: str
    channel: str
    balance_after: int
    memo: str


class LoginRow(NamedTuple):
    account_number: str
    ts: int
    device_id: str
    ip: str
    channel: str


_T = TypeVar("_T")
_CHUNK = 50_000


def _chunks(rows: Iterable[_T]) -> Iterator[list[_T]]:
    it = iter(rows)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


def create_bank_database(
    path: Path,
    *,
    bank_id: str,
    customers: Iterable[CustomerRow],
    accounts: Iterable[AccountRow],
    transactions: Iterable[TransactionRow],
    logins: Iterable[LoginRow],
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write a new bank database at ``path`` from rows, then build its indexes.

    Accounts are read last, so a generator may yield the final balances of the
    transactions it produced. Loads without a journal in one transaction (the
    file is new: a crash leaves garbage to delete, never a half-trusted
    database), then switches to WAL.
    Raises ``FileExistsError`` if ``path`` exists.
    """
    if path.exists():
        raise FileExistsError(path)
    say = progress or (lambda _msg: None)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB while loading
        conn.executescript(TABLES)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO meta(key, value) VALUES ('bank_id', ?)", (bank_id,))
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema', '1')")
        for cchunk in _chunks(customers):
            conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", cchunk)
        loaded = 0
        for chunk in _chunks(transactions):
            conn.executemany(
                "INSERT INTO transactions(account_number, ts, direction, amount, currency,"
                " counterparty_account, counterparty_name, counterparty_bank, channel,"
                " balance_after, memo) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk,
            )
            loaded += len(chunk)
            if loaded % 1_000_000 < _CHUNK:
                say(f"{bank_id}: {loaded:,} transactions loaded")
        for lchunk in _chunks(logins):
            conn.executemany(
                "INSERT INTO logins(account_number, ts, device_id, ip, channel)"
                " VALUES (?, ?, ?, ?, ?)",
                lchunk,
            )
        for achunk in _chunks(accounts):
            conn.executemany(
                "INSERT INTO accounts(account_number, customer_id, account_type, opened_on,"
                " branch, status, balance, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                achunk,
            )
        conn.execute("COMMIT")
        say(f"{bank_id}: building indexes")
        conn.executescript(INDEXES)
        conn.execute("PRAGMA journal_mode=WAL")
        prepare_sqlite(conn, SCHEMA, where=path)
    finally:
        conn.close()
