"""Encrypted bodies beside the leaves: per-case data keys, blind indexes, crypto-shredding.

With a key-encryption key configured, the log seals every entry that holds personal data
before it is hashed into the tree (``seal_entry``): the signed envelopes are replaced by their
sealed references (``fedgate.sealed``), subject identifiers by keyed blind indexes
(HMAC-SHA-256 under an index key), free text is masked. The entry as it was (the "clear leaf",
its canonical encoding) is stored beside the leaf, encrypted with AES-256-GCM under the data key
of its case, the associated data binding the ciphertext to the shard, the leaf index and the
sealed leaf's hash. Data keys and the index key are stored only wrapped by the KEK
(``_keys.KeyWrapper``).

Tables (``_bodies_db``: one migration step, the store ``audit bodies`` version 1, beside the
log's own tables in the same SQLite file or PostgreSQL schema): ``body_keys`` (one wrapped key
per case, per month for entries outside a case, and the index key; its last activity; when
and under which rule it was destroyed) and ``bodies`` (leaf index, leaf hash, key reference,
ciphertext).

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
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
from gateway.audit._bodies_db import (
    DESTROY_KEY,
    DUE_KEYS,
    INSERT_BODY,
    INSERT_KEY,
    SELECT_BODY,
    SELECT_CASE_KEY,
    SELECT_KEY,
    SELECT_KEYS,
    TOUCH_KEY,
    BodiesDb,
    Params,
    PgBodiesDb,
    SqliteBodiesDb,
)
from gateway.audit._keys import KeyWrapper

__all__ = [
    "BLIND_PREFIX",
    "BodyDeleted",
    "BodyVault",
    "CaseKey",
    "OpenedReader",
    "PreparedBodies",
    "case_ref",
    "holds_sealed_bodies",
    "seal_entry",
]

BLIND_PREFIX = "blind:"
"""Subjects in a sealed leaf are ``blind:`` and 32 hex digits (HMAC-SHA-256, 128 bits)."""

_INDEX_REF = "#blind-index"
_KEY_SIZE = 32
_NONCE_SIZE = 12
_KEYS_KEPT = 4_096
"""Unwrapped case keys kept in memory (a few hundred bytes each). Past that the cache is
emptied at the start of the next ``prepare``, when every key made before is committed or
discarded, and keys are read back (one query per batch, ``_prefetch``) as cases come back.
Without a bound it held a key for every case the process had ever written."""


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

    steps: tuple[tuple[str, Sequence[Params]], ...]
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


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


class BodyVault:
    """Seals, stores, opens and shreds the bodies of one log shard. Thread-safe: every database
    call holds the vault's lock (the log's writer, the reveal and the retention job share it).
    Raises ``AuditUnavailable`` when the database fails, ``KeyUnavailable`` for a wrong KEK."""

    def __init__(self, *, db: BodiesDb, pg: bool, wrapper: KeyWrapper, origin: str) -> None:
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
            db = SqliteBodiesDb(path)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailable(f"cannot open the audit bodies in {path}: {exc}") from exc
        return cls._opened(db, pg=False, wrapper=wrapper, origin=origin)

    @classmethod
    def open_pg(cls, dsn: str, *, schema: str, wrapper: KeyWrapper, origin: str) -> BodyVault:
        """The vault of shard ``origin`` in PostgreSQL ``schema``."""
        try:
            db = PgBodiesDb(dsn, schema=schema)
        except psycopg.Error as exc:
            raise AuditUnavailable(f"cannot open the audit bodies in {schema!r}: {exc}") from exc
        return cls._opened(db, pg=True, wrapper=wrapper, origin=origin)

    @classmethod
    def _opened(cls, db: BodiesDb, *, pg: bool, wrapper: KeyWrapper, origin: str) -> BodyVault:
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

    def _write(self, steps: Sequence[tuple[tuple[str, str], Sequence[Params]]]) -> None:
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
            found = self._fetch(SELECT_KEY, ref=ref)
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

    def _new_key(self, ref: str, now: datetime) -> tuple[bytes, Params]:
        """A fresh key for ``ref`` and the ``body_keys`` row that stores it wrapped."""
        key = secrets.token_bytes(_KEY_SIZE)
        wrapped = self._wrapper.wrap(key, context=self._context(ref))
        return key, {"ref": ref, "kek_id": self._wrapper.key_id, "wrapped": wrapped, "us": _us(now)}

    def _load_or_create(self, ref: str, now: datetime) -> bytes:
        """The unwrapped key ``ref``, created and durably stored if it does not exist."""
        key = self._load(ref)
        if key is None:
            _, row = self._new_key(ref, now)
            self._write([(INSERT_KEY, [row])])
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
        found = {str(r[0]): tuple(r[1:]) for r in self._fetch(SELECT_KEYS, refs=wanted)}
        return {ref: found.get(ref) for ref in missing}

    def _live_ref(
        self,
        ref: str,
        now: datetime,
        created: list[Params],
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
        if len(self._keys) > _KEYS_KEPT:  # the writer commits one batch at a time: all stored
            self._keys.clear()
        rows: list[Params] = []
        created: list[Params] = []
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
        steps: list[tuple[str, Sequence[Params]]] = [
            (self._sql(INSERT_KEY), [o | r for r in created]),
            (self._sql(INSERT_BODY), [o | r for r in rows]),
            (self._sql(TOUCH_KEY), [o | {"us": us, "ref": ref} for ref, us in touched.items()]),
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
        found = self._fetch(SELECT_BODY, leaf_hash=digest)
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
        return [str(r[0]) for r in self._fetch(DUE_KEYS, us=_us(before), ref=_INDEX_REF)]

    def case_key(self, ref: str) -> CaseKey | None:
        """The state of case key ``ref``, if it exists."""
        found = self._fetch(SELECT_CASE_KEY, ref=ref)
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
        self._write([(DESTROY_KEY, [{"us": _us(now), "rule": rule, "ref": ref}])])


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

    def shard_leaf(self, origin: str, index: int) -> bytes | None:
        leaf = self._reader.shard_leaf(origin, index)
        return None if leaf is None else self._vault.open_or_stored(leaf)

    def request_legs_since(self, since_us: int) -> Iterator[bytes]:
        for leaf in self._reader.request_legs_since(since_us):
            yield self._vault.open_or_stored(leaf)
