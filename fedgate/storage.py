"""How every store opens: one SQLite opener, and one schema-version rule for SQLite and PostgreSQL.

:func:`open_sqlite` is the only place a fedgate process opens an SQLite file: WAL journal,
``synchronous`` FULL unless the caller names NORMAL, a busy timeout, foreign keys enforced, no
implicit transactions (``isolation_level=None``; stores say ``BEGIN`` themselves). A new file
MUST be created readable by its owner only (0600): stores hold personal data (request
envelopes, answers, identifiers), and SQLite gives the ``-wal`` and ``-shm`` files the mode of
the database file.

:func:`prepare_sqlite` and :func:`prepare_postgres` check a store's schema version on open. Each
store declares a :class:`Schema`: its name, the version this code writes, the DDL creating that
version, and one migration per older version. The version lives in a table ``fedgate_schema``
(``store``, ``version``), one row per store, in the store's own database (SQLite file or
PostgreSQL schema), so a store is self-describing and a wrong file is recognised:

- a new, empty database gets the newest schema and its version row;
- a database of an older version is migrated in one transaction, one step at a time;
- a writer then runs ``create`` on every open: it MUST be idempotent (``IF NOT EXISTS``), so an
  added index or table needs no migration; changing an existing table does (and a new version);
- a database from before versioning (no ``fedgate_schema`` table, but the store's
  ``legacy_table``) counts as version 1;
- a database of a newer version, of a version with no migration, or holding another store MUST
  be refused with :class:`~fedgate.errors.StoreVersionError`, naming the file and the versions;
  nothing in it is changed.

Stdlib only (the PostgreSQL half takes any DB-API connection with ``execute``), so the SDK
carries no database driver.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from fedgate.errors import FedgateError, StoreVersionError

__all__ = [
    "DEFAULT_CACHE_KIB",
    "VERSION_TABLE",
    "Schema",
    "Transactional",
    "immediate",
    "open_sqlite",
    "open_store",
    "prepare_postgres",
    "prepare_sqlite",
    "sql_statements",
]

VERSION_TABLE = "fedgate_schema"

DEFAULT_CACHE_KIB = 2048
"""A connection's page cache unless its opener says otherwise (SQLite's own default is about
the same): the small stores (tickets, alerts, rules, risk list, replay) fit in it."""

_VERSION_DDL = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    " store TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)


def open_sqlite(
    path: Path,
    *,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    read_only: bool = False,
    busy_timeout: timedelta = timedelta(seconds=10),
    page_size: int | None = None,
    cache_kib: int = DEFAULT_CACHE_KIB,
) -> sqlite3.Connection:
    """Open ``path`` the fedgate way and return the connection (usable from any thread; the
    caller serialises its use).

    Writable: creates the parent directory and the file, switches to WAL and sets
    ``synchronous``; ``page_size`` applies to a new file only. Read-only: the file MUST exist
    (``sqlite3.OperationalError`` otherwise) and nothing is written. Raises ``ValueError`` for
    another ``synchronous``, ``OSError`` or ``sqlite3.Error`` if the file cannot be opened or
    put in WAL mode.

    The connection's page cache is bounded to ``cache_kib`` KiB and memory mapping is off
    (``mmap_size = 0``), so the memory a connection can hold is stated by its opener: a page
    cache fills as the file grows and is never given back while the connection is open.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    path = Path(path)
    if read_only:
        uri = f"{path.resolve().as_uri()}?mode=ro"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_owner_only(path)
        uri = f"{path.resolve().as_uri()}?mode=rwc"
    seconds = busy_timeout.total_seconds()
    con = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=seconds
    )
    try:
        con.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        con.execute(f"PRAGMA cache_size = {-int(cache_kib)}")
        con.execute("PRAGMA mmap_size = 0")
        con.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            if page_size is not None:  # before WAL mode writes the file's first page
                con.execute(f"PRAGMA page_size = {int(page_size)}")
            mode = str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            if mode != "wal":
                raise sqlite3.OperationalError(f"{path}: cannot switch to WAL (got {mode})")
            con.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        con.close()
        raise
    return con


def _create_owner_only(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (SQLite gives its ``-wal`` and ``-shm`` the same) if
    it does not exist yet; an existing file MUST NOT be opened here.

    Closing any descriptor of a file drops every POSIX lock this process holds on it, SQLite's
    included: opening a second connection to a database this process already uses (the audit
    log's body vault beside its writer) would leave the first without its locks, so another
    process closing its own connection would take itself for the last one, checkpoint and
    delete the WAL the writer still appends to (issue 13)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def open_store(
    path: Path,
    schema: Schema,
    *,
    error: Callable[[str], FedgateError],
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
) -> sqlite3.Connection:
    """:func:`open_sqlite` then :func:`prepare_sqlite`: a store's connection, ready. Failures to
    open become ``error("cannot open the <store> <path>: …")`` (the store's own error class);
    ``StoreVersionError`` passes through. Nothing stays open on failure."""
    try:
        con = open_sqlite(path, synchronous=synchronous)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open the {schema.store} {path}: {exc}") from exc
    try:
        prepare_sqlite(con, schema, where=path)
    except sqlite3.Error as exc:
        con.close()
        raise error(f"cannot open the {schema.store} {path}: {exc}") from exc
    except BaseException:
        con.close()
        raise
    return con


@dataclass(frozen=True, slots=True)
class Schema:
    """One store's schema: ``create`` builds version ``version`` from nothing (idempotent
    ``IF NOT EXISTS`` statements); ``migrations[n]`` takes version ``n`` to ``n + 1``."""

    store: str
    """What the store is, in words, e.g. ``"ticket store"``; MUST be unique per store."""
    version: int
    create: str
    migrations: Mapping[int, str] = field(default_factory=dict)
    legacy_table: str | None = None
    """A table every unversioned (pre-versioning, version 1) database of this store has."""
    lives_in: str | None = None
    """The store whose database this one is kept in, beside its tables (e.g. the audit bodies
    in the audit log's file): that store's version row is expected, not a wrong file."""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("Schema.version starts at 1")
        missing = [n for n in range(1, self.version) if n not in self.migrations]
        if missing:
            raise ValueError(f"{self.store}: no migration from version(s) {missing}")


def sql_statements(script: str) -> Iterator[str]:
    """The complete statements of an SQLite script (triggers kept whole), for running a script
    inside a transaction (``executescript`` would commit it first)."""
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                yield buf.strip()
            buf = ""
    if buf.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement at the end of the script: {buf.strip()!r}")


class _Db(Protocol):
    def execute(self, statement: Any, params: Any = ..., /) -> Any: ...


def _plan(
    schema: Schema, *, where: str, found: dict[str, int], legacy: bool, writable: bool
) -> tuple[int | None, list[int]]:
    """From what the database holds: (the version found or ``None`` for a new store, the
    migrations to run). Raises ``StoreVersionError`` for a database it must refuse."""
    version = found.get(schema.store)
    if version is None:
        others = sorted(s for s in found if s not in (schema.store, schema.lives_in))
        if others:
            raise StoreVersionError(
                f"{where} holds the {', '.join(others)}, not a fedgate {schema.store}; "
                "point the configuration at the right file"
            )
        if not legacy:
            if not writable:
                raise StoreVersionError(
                    f"{where} is not a fedgate {schema.store} (it has no schema version)"
                )
            return None, []
        version = 1
    if version > schema.version:
        raise StoreVersionError(
            f"{where}: {schema.store} schema version {version} is newer than this fedgate "
            f"supports (version {schema.version}); upgrade fedgate to open it"
        )
    steps = list(range(version, schema.version))
    if version < 1 or any(n not in schema.migrations for n in steps):
        raise StoreVersionError(
            f"{where}: {schema.store} schema version {version} is unknown to this fedgate "
            f"(it knows versions 1 to {schema.version}); refusing to open it"
        )
    if steps and not writable:
        raise StoreVersionError(
            f"{where}: {schema.store} schema version {version} is older than this fedgate's "
            f"({schema.version}); open it once with the process that writes it to migrate it"
        )
    return version, steps


class Transactional(Protocol):
    """What ``immediate`` needs of a connection: an ``sqlite3.Connection``, or a view of
    another database that takes SQLite's transaction statements (``gateway.rules_pg``)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, /) -> object: ...


@contextlib.contextmanager
def immediate(con: Transactional) -> Iterator[None]:
    """One write transaction (``BEGIN IMMEDIATE``, the write lock taken at once) around the
    block: committed when the block ends, rolled back if it raises (a statement in it may
    already have ended the transaction, then there is nothing to roll back)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def prepare_sqlite(
    con: sqlite3.Connection, schema: Schema, *, where: Path | str, writable: bool = True
) -> int:
    """Create, check or migrate ``schema`` in ``con`` (from :func:`open_sqlite`); returns the
    version found (``schema.version`` for a new store). A writer does it all in one
    ``BEGIN IMMEDIATE`` transaction; a reader only checks. Raises ``StoreVersionError`` (see
    the module docstring) or ``sqlite3.Error``."""

    def tables() -> set[str]:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(r[0]) for r in rows}

    def versions() -> dict[str, int]:
        if VERSION_TABLE not in tables():
            return {}
        rows = con.execute(f"SELECT store, version FROM {VERSION_TABLE}").fetchall()  # noqa: S608
        return {str(s): int(v) for s, v in rows}

    if not writable:
        found = versions()
        legacy = schema.legacy_table is not None and schema.legacy_table in tables()
        version, _ = _plan(schema, where=str(where), found=found, legacy=legacy, writable=False)
        return schema.version if version is None else version
    with immediate(con):
        found = versions()
        legacy = schema.legacy_table is not None and schema.legacy_table in tables()
        version, steps = _plan(schema, where=str(where), found=found, legacy=legacy, writable=True)
        con.execute(_VERSION_DDL)
        script = "".join(schema.migrations[n] for n in steps) + schema.create
        for statement in sql_statements(script):
            con.execute(statement)
        if version is None or steps or schema.store not in found:
            con.execute(
                f"INSERT OR REPLACE INTO {VERSION_TABLE} (store, version) VALUES (?, ?)",  # noqa: S608
                (schema.store, schema.version),
            )
    return schema.version if version is None else version


def prepare_postgres(con: _Db, schema: Schema, *, where: str, writable: bool = True) -> int:
    """:func:`prepare_sqlite` for a PostgreSQL connection whose ``search_path`` is the store's
    schema. The caller MUST hold a transaction (and, for a writer, a lock serialising concurrent
    openers, e.g. an advisory lock); returns the version found."""

    def exists(table: str) -> bool:
        row = con.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        return row is not None and row[0] is not None

    found: dict[str, int] = {}
    if exists(VERSION_TABLE):
        rows = con.execute(f"SELECT store, version FROM {VERSION_TABLE}").fetchall()  # noqa: S608
        found = {str(s): int(v) for s, v in rows}
    legacy = schema.legacy_table is not None and exists(schema.legacy_table)
    version, steps = _plan(schema, where=where, found=found, legacy=legacy, writable=writable)
    if not writable:
        return schema.version if version is None else version
    con.execute(_VERSION_DDL)
    for n in steps:
        con.execute(schema.migrations[n])
    con.execute(schema.create)
    if version is None or steps or schema.store not in found:
        con.execute(
            f"INSERT INTO {VERSION_TABLE} (store, version) VALUES (%s, %s)"  # noqa: S608
            " ON CONFLICT (store) DO UPDATE SET version = EXCLUDED.version",
            (schema.store, schema.version),
        )
    return schema.version if version is None else version
