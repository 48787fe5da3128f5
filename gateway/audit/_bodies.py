"""Encrypted bodies beside the leaves: per-case data keys, blind indexes, crypto-shredding.

With a key-encryption key configured, the log seals every entry that holds personal data
before it is hashed into the tree (``seal_entry``): the signed envelopes are replaced by their
sealed references (``fedgate.sealed``), subject identifiers by keyed blind indexes
(HMAC-SHA-256 under an index key), free text is masked. The entry as it was (the "clear leaf",
its canonical encoding) is stored beside the leaf, encrypted with AES-256-GCM under the data key
of its case, the associated data binding the ciphertext to the shard, the leaf index and the
sealed leaf's hash. Data keys and the index key are stored only wrapped by the KEK
(``_keys.KeyWrapper``).

Tables (one migration step, the store ``audit bodies`` version 1, beside the log's own tables
in the same SQLite file or PostgreSQL schema): ``body_keys`` (one wrapped key per case, per
month for entries outside a case, and the index key; its last activity; when and under which
rule it was destroyed) and ``bodies`` (leaf index, leaf hash, key reference, ciphertext).

Contract:

- Bodies MUST be committed in the same transaction as the leaves that refer to them (the log
  passes ``prepare``'s rows to the store's commit, ``CommitBatch.beside``), so no leaf exists
  without its body and no body without its leaf.
- ``bodies`` MUST be append-only in the database (triggers); ``body_keys`` rows MUST NOT be
  deleted, only their wrapped key erased (``destroy``), which keeps the date and the rule.
- ``open`` MUST return the clear leaf only when it decrypts under its case key AND seals back
  to exactly the stored leaf; a destroyed key raises ``BodyDeleted`` with its date and rule.
- Opening a log that holds wrapped keys with another KEK MUST fail (``KeyUnavailable``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from fedgate.audit_entry import (
    AuditEntry,
    RequestLeg,
    ResponseLeg,
    decode_entry,
    encode_entry,
    micros_to_time,
)
from fedgate.errors import AuditUnavailable, FedgateError, KeyUnavailable, NotFound
from fedgate.logs import mask_identifiers
from fedgate.merkle import leaf_hash
from fedgate.sealed import seal_reference
from fedgate.storage import Schema, open_sqlite, prepare_postgres, prepare_sqlite
from gateway.audit._keys import KeyWrapper

__all__ = [
    "BLIND_PREFIX",
    "BODIES_SCHEMA_PG",
    "BODIES_SCHEMA_SQLITE",
    "BodyDeleted",
    "BodyVault",
    "CaseKey",
    "OpenedReader",
    "PreparedBodies",
    "case_ref",
    "holds_sealed_bodies",
    "seal_entry",
]

_Params = dict[str, Any]

BLIND_PREFIX = "blind:"
"""Subjects in a sealed leaf are ``blind:`` and 32 hex digits (HMAC-SHA-256, 128 bits)."""

_INDEX_REF = "#blind-index"
_KEY_SIZE = 32
_NONCE_SIZE = 12

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


class BodyDeleted(NotFound):
    """The body of an entry was crypto-shredded: its case key was destroyed under a rule."""

    reason = "BODY_DELETED"

    def __init__(self, index: int, destroyed: datetime, rule: str) -> None:
        self.index = index
        self.destroyed = destroyed
        self.rule = rule
        super().__init__(
            f"the personal data of entry {index} was deleted on {destroyed.date().isoformat()} "
            f"under retention rule {rule}"
        )


@dataclass(frozen=True, slots=True)
class PreparedBodies:
    """Encrypted bodies and new case keys, as ``(statement, rows)`` for the log's commit."""

    steps: tuple[tuple[str, Sequence[_Params]], ...]
    new_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CaseKey:
    """One row of ``body_keys``: a case's key, when it was last used, whether it is destroyed."""

    ref: str
    created: datetime
    last_used: datetime
    destroyed: datetime | None
    rule: str


def case_ref(case_number: str, at: datetime) -> str:
    """The data key an entry is sealed under: its case, or for entries outside any case (an
    event, a request refused before its case could be read) the month it was written in."""
    return case_number if case_number else f"~{at.astimezone(UTC):%Y-%m}"


def seal_entry(entry: AuditEntry, blind: Callable[[str], str]) -> AuditEntry:
    """``entry`` with its envelopes replaced by sealed references, its subjects by blind
    indexes and its free text masked. Deterministic: ``open`` re-seals to check a body."""
    if isinstance(entry, RequestLeg):
        return replace(
            entry,
            envelope=seal_reference(entry.envelope),
            rule=mask_identifiers(entry.rule),
            subjects=tuple(blind(s) for s in entry.subjects),
        )
    if isinstance(entry, ResponseLeg):
        envelope = entry.response_envelope
        return replace(
            entry,
            response_envelope=seal_reference(envelope) if envelope else b"",
            detail=mask_identifiers(entry.detail),
        )
    return replace(entry, detail=tuple((k, mask_identifiers(v)) for k, v in entry.detail))


class _Db(Protocol):
    """The few statements the vault runs, on one connection, serialised by the vault."""

    def fetch(self, statement: str, params: _Params) -> list[tuple[Any, ...]]: ...

    def transaction(self, steps: Sequence[tuple[str, Sequence[_Params]]]) -> None: ...

    def close(self) -> None: ...


class _SqliteDb:
    def __init__(self, path: Path) -> None:
        self._con = open_sqlite(path)
        try:
            prepare_sqlite(self._con, BODIES_SCHEMA_SQLITE, where=path)
            self._con.execute("PRAGMA secure_delete = ON")  # erased keys leave no free page
        except BaseException:
            self._con.close()
            raise

    def fetch(self, statement: str, params: _Params) -> list[tuple[Any, ...]]:
        return self._con.execute(statement, params).fetchall()

    def transaction(self, steps: Sequence[tuple[str, Sequence[_Params]]]) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement, rows in steps:
                con.executemany(statement, rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._con.close()


class _PgDb:
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

    def fetch(self, statement: str, params: _Params) -> list[tuple[Any, ...]]:
        return self._conn.execute(statement, params).fetchall()

    def transaction(self, steps: Sequence[tuple[str, Sequence[_Params]]]) -> None:
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


_SELECT_KEY = _both(
    "SELECT kek_id, wrapped, destroyed_us, rule FROM body_keys WHERE ref = :ref",
    "SELECT kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = :ref",
)
_SELECT_KEYS = _both(
    "SELECT ref, kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE ref IN (SELECT value FROM json_each(:refs))",
    "SELECT ref, kek_id, wrapped, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = ANY(:refs)",
)
_INSERT_KEY = _both(
    "INSERT INTO body_keys (ref, kek_id, wrapped, created_us, last_us)"
    " VALUES (:ref, :kek_id, :wrapped, :us, :us) ON CONFLICT (ref) DO NOTHING",
    "INSERT INTO body_keys (origin, ref, kek_id, wrapped, created_us, last_us)"
    " VALUES (:origin, :ref, :kek_id, :wrapped, :us, :us) ON CONFLICT (origin, ref) DO NOTHING",
)
_TOUCH_KEY = _both(
    "UPDATE body_keys SET last_us = MAX(last_us, :us) WHERE ref = :ref",
    "UPDATE body_keys SET last_us = GREATEST(last_us, :us) WHERE origin = :origin AND ref = :ref",
)
_INSERT_BODY = _both(
    "INSERT INTO bodies (idx, leaf_hash, ref, sealed) VALUES (:idx, :leaf_hash, :ref, :sealed)"
    " ON CONFLICT DO NOTHING",
    "INSERT INTO bodies (origin, idx, leaf_hash, ref, sealed)"
    " VALUES (:origin, :idx, :leaf_hash, :ref, :sealed) ON CONFLICT DO NOTHING",
)
_SELECT_BODY = _both(
    "SELECT idx, ref, sealed FROM bodies WHERE leaf_hash = :leaf_hash",
    "SELECT idx, ref, sealed FROM bodies WHERE origin = :origin AND leaf_hash = :leaf_hash",
)
_DUE_KEYS = _both(
    "SELECT ref FROM body_keys WHERE wrapped IS NOT NULL AND last_us < :us AND ref <> :ref"
    " ORDER BY last_us",
    "SELECT ref FROM body_keys WHERE origin = :origin AND wrapped IS NOT NULL"
    " AND last_us < :us AND ref <> :ref ORDER BY last_us",
)
_DESTROY_KEY = _both(
    "UPDATE body_keys SET wrapped = NULL, destroyed_us = :us, rule = :rule"
    " WHERE ref = :ref AND wrapped IS NOT NULL",
    "UPDATE body_keys SET wrapped = NULL, destroyed_us = :us, rule = :rule"
    " WHERE origin = :origin AND ref = :ref AND wrapped IS NOT NULL",
)
_SELECT_CASE_KEY = _both(
    "SELECT ref, created_us, last_us, destroyed_us, rule FROM body_keys WHERE ref = :ref",
    "SELECT ref, created_us, last_us, destroyed_us, rule FROM body_keys"
    " WHERE origin = :origin AND ref = :ref",
)


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


class BodyVault:
    """Seals, stores, opens and shreds the bodies of one log shard. Thread-safe: every database
    call holds the vault's lock (the log's writer, the reveal and the retention job share it).
    Raises ``AuditUnavailable`` when the database fails, ``KeyUnavailable`` for a wrong KEK."""

    def __init__(self, *, db: _Db, pg: bool, wrapper: KeyWrapper, origin: str) -> None:
        self._db = db
        self._pg = pg
        self._wrapper = wrapper
        self._origin = origin
        self._lock = threading.Lock()
        self._keys: dict[str, AESGCM] = {}
        self._index_key = self._load_or_create(_INDEX_REF, datetime.now(UTC))

    @classmethod
    def open_sqlite(cls, path: Path, *, wrapper: KeyWrapper, origin: str) -> BodyVault:
        """The vault of the SQLite log at ``path`` (its tables created if needed)."""
        try:
            db = _SqliteDb(path)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open the audit bodies in {path}: {exc}") from exc
        return cls._opened(db, pg=False, wrapper=wrapper, origin=origin)

    @classmethod
    def open_pg(cls, dsn: str, *, schema: str, wrapper: KeyWrapper, origin: str) -> BodyVault:
        """The vault of shard ``origin`` in PostgreSQL ``schema``."""
        try:
            db = _PgDb(dsn, schema=schema)
        except psycopg.Error as exc:
            raise AuditUnavailable(f"cannot open the audit bodies in {schema!r}: {exc}") from exc
        return cls._opened(db, pg=True, wrapper=wrapper, origin=origin)

    @classmethod
    def _opened(cls, db: _Db, *, pg: bool, wrapper: KeyWrapper, origin: str) -> BodyVault:
        try:
            return cls(db=db, pg=pg, wrapper=wrapper, origin=origin)
        except BaseException:
            db.close()
            raise

    # -- database access ---------------------------------------------------------------------

    def _sql(self, pair: tuple[str, str]) -> str:
        return pair[1] if self._pg else pair[0]

    def _fetch(self, pair: tuple[str, str], **params: Any) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.fetch(self._sql(pair), {"origin": self._origin, **params})
        except (sqlite3.Error, psycopg.Error) as exc:
            raise AuditUnavailable(f"the audit bodies cannot be read: {exc}") from exc

    def _write(self, steps: Sequence[tuple[tuple[str, str], Sequence[_Params]]]) -> None:
        o = {"origin": self._origin}
        try:
            with self._lock:
                self._db.transaction(
                    [(self._sql(p), [o | r for r in rows]) for p, rows in steps if rows]
                )
        except (sqlite3.Error, psycopg.Error) as exc:
            raise AuditUnavailable(f"the audit bodies cannot be written: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._keys.clear()

    # -- keys --------------------------------------------------------------------------------

    def _context(self, ref: str) -> bytes:
        return f"fedgate-body-key/v1\n{self._origin}\n{ref}".encode()

    def _load(self, ref: str, row: tuple[Any, ...] | None = None) -> bytes | None:
        """The unwrapped key ``ref`` (from its ``body_keys`` row when the caller read it),
        ``None`` if it does not exist; ``BodyDeleted`` if it was destroyed,
        ``KeyUnavailable`` if it was wrapped under another KEK."""
        if row is None:
            found = self._fetch(_SELECT_KEY, ref=ref)
            if not found:
                return None
            row = found[0]
        kek_id, wrapped, destroyed_us, rule = row
        if wrapped is None:
            raise BodyDeleted(-1, micros_to_time(int(destroyed_us)), str(rule))
        if kek_id != self._wrapper.key_id:
            raise KeyUnavailable(
                f"the audit bodies of {self._origin!r} are sealed under key-encryption key "
                f"{kek_id}, not the configured {self._wrapper.key_id}"
            )
        return self._wrapper.unwrap(bytes(wrapped), context=self._context(ref))

    def _new_key(self, ref: str, now: datetime) -> tuple[bytes, _Params]:
        """A fresh key for ``ref`` and the ``body_keys`` row that stores it wrapped."""
        key = secrets.token_bytes(_KEY_SIZE)
        wrapped = self._wrapper.wrap(key, context=self._context(ref))
        return key, {"ref": ref, "kek_id": self._wrapper.key_id, "wrapped": wrapped, "us": _us(now)}

    def _load_or_create(self, ref: str, now: datetime) -> bytes:
        """The unwrapped key ``ref``, created and durably stored if it does not exist."""
        key = self._load(ref)
        if key is None:
            _, row = self._new_key(ref, now)
            self._write([(_INSERT_KEY, [row])])
            key = self._load(ref)  # another process opening the same log may have won
            if key is None:
                raise AuditUnavailable(f"the key {ref!r} was not stored")
        return key

    def _data_key(self, ref: str) -> AESGCM:
        """The cached or stored key ``ref``; ``AuditUnavailable`` when there is none."""
        aead = self._keys.get(ref)
        if aead is None:
            key = self._load(ref)
            if key is None:
                raise AuditUnavailable(f"the data key {ref!r} of a stored body is missing")
            aead = self._keys[ref] = AESGCM(key)
        return aead

    def _prefetch(self, refs: set[str]) -> dict[str, tuple[Any, ...] | None]:
        """The ``body_keys`` rows of the uncached ``refs`` in one query (``None``: absent)."""
        missing = sorted(r for r in refs if r not in self._keys)
        if not missing:
            return {}
        wanted: Any = missing if self._pg else json.dumps(missing)
        found = {str(r[0]): tuple(r[1:]) for r in self._fetch(_SELECT_KEYS, refs=wanted)}
        return {ref: found.get(ref) for ref in missing}

    def _live_ref(
        self,
        ref: str,
        now: datetime,
        created: list[_Params],
        known: dict[str, tuple[Any, ...] | None],
    ) -> tuple[str, AESGCM]:
        """The key a new body of case ``ref`` is sealed under: the case's key, or after it was
        destroyed (the case came back after its retention ended) the next generation's
        (``CASE#2``, ``CASE#3`` ...), so shredded bodies stay shredded. A key that does not
        exist yet is made, and its row added to ``created`` (stored with the bodies). ``known``
        holds rows already read (``_prefetch``)."""
        generation = 1
        while True:
            current = ref if generation == 1 else f"{ref}#{generation}"
            aead = self._keys.get(current)
            if aead is not None:
                return current, aead
            try:
                if current in known:
                    stored = known[current]
                    key = None if stored is None else self._load(current, stored)
                else:
                    key = self._load(current)
            except BodyDeleted:
                generation += 1
                continue
            if key is None:
                key, new_row = self._new_key(current, now)
                created.append(new_row)
            aead = self._keys[current] = AESGCM(key)
            return current, aead

    def blind(self, subject: str) -> str:
        """The blind index of a subject identifier (what sealed leaves and searches hold)."""
        if subject.startswith(BLIND_PREFIX):
            return subject
        mac = hmac.new(self._index_key, subject.encode(), hashlib.sha256).hexdigest()
        return BLIND_PREFIX + mac[:32]

    # -- bodies ------------------------------------------------------------------------------

    def _aad(self, index: int, leaf_hash: bytes) -> bytes:
        return f"fedgate-body/v1\n{self._origin}\n{index}\n".encode() + leaf_hash

    def prepare(
        self, bodies: Sequence[tuple[int, bytes, str, bytes]], *, now: datetime
    ) -> PreparedBodies:
        """Encrypt ``(leaf index, sealed leaf hash, case ref, clear leaf)`` under their cases'
        keys (made for cases seen for the first time): the rows the log commits with the
        leaves (``CommitBatch.beside``), recording each key's use at ``now``. If that commit
        fails, ``discard`` the result."""
        rows: list[_Params] = []
        created: list[_Params] = []
        touched: dict[str, int] = {}
        known = self._prefetch({b[2] for b in bodies})
        for index, digest, case, clear in bodies:
            ref, aead = self._live_ref(case, now, created, known)
            nonce = secrets.token_bytes(_NONCE_SIZE)
            sealed = nonce + aead.encrypt(nonce, clear, self._aad(index, digest))
            rows.append({"idx": index, "leaf_hash": digest, "ref": ref, "sealed": sealed})
            touched[ref] = _us(now)
        for row in created:  # made now: their last use is already ``now``
            touched.pop(str(row["ref"]), None)
        o = {"origin": self._origin}
        steps: list[tuple[str, Sequence[_Params]]] = [
            (self._sql(_INSERT_KEY), [o | r for r in created]),
            (self._sql(_INSERT_BODY), [o | r for r in rows]),
            (self._sql(_TOUCH_KEY), [o | {"us": us, "ref": ref} for ref, us in touched.items()]),
        ]
        return PreparedBodies(
            tuple(step for step in steps if step[1]), tuple(str(r["ref"]) for r in created)
        )

    def discard(self, prepared: PreparedBodies) -> None:
        """Forget the keys ``prepared`` made: its commit failed, so they were never stored."""
        with self._lock:
            for ref in prepared.new_keys:
                self._keys.pop(ref, None)

    def open(self, stored_leaf: bytes) -> bytes:
        """The clear leaf of the entry whose stored, sealed leaf is ``stored_leaf``.

        Raises ``NotFound`` when the entry has no body (it held no personal data),
        ``BodyDeleted`` when its key was destroyed, ``AuditUnavailable`` when the body does
        not decrypt or does not seal back to the stored leaf (tampering)."""
        digest = leaf_hash(stored_leaf)
        found = self._fetch(_SELECT_BODY, leaf_hash=digest)
        if not found:
            raise NotFound("the entry has no sealed body")
        # Normally one row; a batch whose leaves failed to commit and were appended again at
        # the same indices leaves an identical twin, which decrypts the same.
        index, ref, sealed = int(found[0][0]), str(found[0][1]), bytes(found[0][2])
        try:
            aead = self._data_key(ref)
        except BodyDeleted as exc:
            raise BodyDeleted(index, exc.destroyed, exc.rule) from None
        try:
            clear = aead.decrypt(
                sealed[:_NONCE_SIZE], sealed[_NONCE_SIZE:], self._aad(index, digest)
            )
            resealed = encode_entry(seal_entry(decode_entry(clear), self.blind))
        except (InvalidTag, FedgateError) as exc:
            raise AuditUnavailable(f"the body of entry {index} does not decrypt") from exc
        if resealed != stored_leaf:
            raise AuditUnavailable(f"the body of entry {index} is not the body of its leaf")
        return clear

    def open_or_stored(self, stored_leaf: bytes) -> bytes:
        """The clear leaf when the entry has a readable body, else the stored leaf itself (an
        entry without personal data, or one whose body was shredded)."""
        try:
            return self.open(stored_leaf)
        except NotFound:  # BodyDeleted included
            return stored_leaf

    # -- retention ---------------------------------------------------------------------------

    def keys_idle_since(self, before: datetime) -> list[str]:
        """The refs of live case keys last used before ``before`` (oldest first)."""
        return [str(r[0]) for r in self._fetch(_DUE_KEYS, us=_us(before), ref=_INDEX_REF)]

    def case_key(self, ref: str) -> CaseKey | None:
        """The state of case key ``ref``, if it exists."""
        found = self._fetch(_SELECT_CASE_KEY, ref=ref)
        if not found:
            return None
        r, created, last, destroyed, rule = found[0]
        return CaseKey(
            str(r),
            micros_to_time(int(created)),
            micros_to_time(int(last)),
            None if destroyed is None else micros_to_time(int(destroyed)),
            str(rule),
        )

    def destroy(self, ref: str, *, rule: str, now: datetime) -> None:
        """Erase case key ``ref`` (its bodies become unreadable for ever), recording ``now``
        and ``rule``. Refuses the index key (the blind indexes are not personal data)."""
        if ref == _INDEX_REF:
            raise ValueError("the blind-index key is not a case key")
        with self._lock:
            self._keys.pop(ref, None)
        self._write([(_DESTROY_KEY, [{"us": _us(now), "rule": rule, "ref": ref}])])


def holds_sealed_bodies(connect: Callable[[], Any], *, origin: str, pg: bool) -> bool:
    """Whether log shard ``origin`` already holds wrapped keys (it was sealed): a gateway
    without a KEK must then refuse to start rather than write clear leaves into it."""
    con = connect()
    try:
        if pg:
            row = con.execute("SELECT to_regclass('body_keys')").fetchone()
            if row is None or row[0] is None:
                return False
            found = con.execute("SELECT 1 FROM body_keys WHERE origin = %s LIMIT 1", (origin,))
            return found.fetchone() is not None
        row = con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'body_keys'"
        ).fetchone()
        if row is None:
            return False
        return con.execute("SELECT 1 FROM body_keys LIMIT 1").fetchone() is not None
    finally:
        con.close()


class OpenedReader:
    """A blocking shard reader (``SqliteDatabase``, ``PgDatabase``) whose leaves come back as
    appended: sealed ones opened through ``vault``. For the gateway's start-up projections
    (replay cache, business rules), which need the orders' fields; nothing displays them."""

    def __init__(self, reader: Any, vault: BodyVault) -> None:
        self._reader = reader
        self._vault = vault

    def search(self, query: Any) -> Any:
        return self._reader.search(query)

    def leaves(self, start: int, stop: int) -> list[bytes]:
        return [self._vault.open_or_stored(leaf) for leaf in self._reader.leaves(start, stop)]

    def request_legs_since(self, since_us: int) -> Iterator[bytes]:
        for leaf in self._reader.request_legs_since(since_us):
            yield self._vault.open_or_stored(leaf)
