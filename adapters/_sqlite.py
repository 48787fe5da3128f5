"""SQLite plumbing shared by the reference backends: per-thread connections, time, page tokens.

Times are stored as integer microseconds since the Unix epoch (UTC), so that
range scans compare integers and the stored content does not depend on the
process's time zone. ``sqlite3`` errors are translated once, here, into
:class:`fedgate.errors.AgencyUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fedgate.errors import AgencyUnavailable, FieldViolation, InvalidArgument
from fedgate.storage import Schema, immediate, open_sqlite, prepare_sqlite

__all__ = [
    "Database",
    "decode_page_token",
    "encode_page_token",
    "from_us",
    "to_us",
    "utc_now",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (the default clock of the backends)."""
    return datetime.now(UTC)


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch of an aware datetime; ``ValueError`` if it is naive."""
    if dt.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the epoch."""
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def encode_page_token(ts_us: int, row_id: int, *binding: object) -> str:
    """An opaque token resuming a ``(ts, id)``-ordered scan after the given row.

    ``binding`` (the query's parameters) is hashed into the token so that a token
    is refused by any other query.
    """
    raw = f"{ts_us}.{row_id}.{_bind(binding)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, *binding: object) -> tuple[int, int] | None:
    """The ``(ts_us, id)`` a token resumes after, ``None`` for the empty token.

    Raises ``InvalidArgument`` (field ``page_token``) for a malformed token or one
    issued for another query.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        ts_s, id_s, bound = raw.split(".")
        ts_us, row_id = int(ts_s), int(id_s)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument.for_fields(
            [FieldViolation("page_token", "malformed page token")]
        ) from exc
    if bound != _bind(binding):
        raise InvalidArgument.for_fields(
            [FieldViolation("page_token", "page token belongs to another query")]
        )
    return ts_us, row_id


def _bind(binding: tuple[object, ...]) -> str:
    return hashlib.sha256(repr(binding).encode()).hexdigest()[:12]


@dataclass(slots=True)
class _Held:
    """One thread's connection and the lock held while it is in use."""

    conn: sqlite3.Connection
    lock: threading.RLock = field(default_factory=threading.RLock)


class Database:
    """One SQLite file opened with one connection per thread (``fedgate.storage.open_sqlite``),
    holding ``schema``: created, checked or migrated on construction (a store of a newer or
    unknown version raises ``StoreVersionError``).

    Use :meth:`read` for queries and :meth:`write` for a transaction that takes
    the write lock up front (``BEGIN IMMEDIATE``), so read-check-write sequences
    of concurrent callers are serialised. Both raise ``AgencyUnavailable`` for
    any ``sqlite3`` error, and once the database is closed.

    :meth:`close` MUST NOT close a connection while its thread is using it
    (closing under a running statement crashes the interpreter), so each
    connection is held under its own lock while in use and ``close`` waits for it.
    """

    def __init__(self, path: Path, *, schema: Schema) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[_Held] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            with self._use() as conn:
                prepare_sqlite(conn, schema, where=path)
        except sqlite3.Error as exc:
            self.close()
            raise AgencyUnavailable(f"cannot open {schema.store} {path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    def _held(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            return held
        with self._lock:
            if self._closed:
                raise AgencyUnavailable("backend database is closed")
            try:
                conn = open_sqlite(self._path)
            except (OSError, sqlite3.Error) as exc:
                raise AgencyUnavailable(f"backend database {self._path}: {exc}") from exc
            held = _Held(conn)
            self._all.append(held)
        self._local.held = held
        return held

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        held = self._held()
        with held.lock:
            if self._closed:
                raise AgencyUnavailable("backend database is closed")
            yield held.conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for queries; ``sqlite3`` errors become ``AgencyUnavailable``."""
        try:
            with self._use() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise AgencyUnavailable(f"backend database error: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``; commits on success, rolls back on any error."""
        try:
            with self._use() as conn, immediate(conn):
                yield conn
        except sqlite3.Error as exc:
            raise AgencyUnavailable(f"backend database error: {exc}") from exc

    def close(self) -> None:
        """Close every thread's connection once it is not in use; later use raises
        ``AgencyUnavailable``."""
        with self._lock:
            self._closed = True
            held, self._all = self._all, []
        for h in held:
            with h.lock:
                h.conn.close()
