"""The local replica of the risk list: SQLite on disk, a ``RiskIndex`` in memory.

Contract:

- ``apply`` MUST NOT change anything (disk or memory) unless the batch passes
  ``fedgate.risklist.verify_batch`` against the state held: a forged batch raises
  ``VerificationError``, a rolled-back or forked list ``LogInconsistent``;
- a verified batch is committed in ONE transaction (changes, entries and the new state with the
  checkpoint it was verified against; WAL, ``synchronous=FULL``) before the in-memory index sees
  it, so a crash leaves the replica at the old or the new size, never between;
- at open, the stored changes MUST hash to the stored state's root, or ``LogInconsistent``; the
  in-memory index is rebuilt from those changes (the ``entries`` table is for SQL readers only).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedgate.checkpoint import CosignatureVerifier
from fedgate.errors import AgencyUnavailable, LogInconsistent
from fedgate.evidence import log_verifiers, witness_verifiers
from fedgate.merkle import leaf_hash
from fedgate.note import NoteVerifier
from fedgate.registry import Registry
from fedgate.risklist import (
    CompactRange,
    ListState,
    RiskIndex,
    VerifiedBatch,
    decode_change,
    micros,
    verify_batch,
)
from fedgate.storage import Schema, open_store
from fedgate.v1 import risklist_pb2

__all__ = ["STORE", "Replica", "ReplicaKeys"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    category   INTEGER NOT NULL,
    value      TEXT NOT NULL,
    expires_us INTEGER NOT NULL,
    PRIMARY KEY (category, value)
);
CREATE TABLE IF NOT EXISTS state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    size       INTEGER NOT NULL,
    edge       BLOB NOT NULL,
    root       BLOB NOT NULL,
    checkpoint TEXT NOT NULL
);
"""

STORE = Schema(store="risk list replica", version=1, create=_SCHEMA)


@dataclass(frozen=True, slots=True)
class ReplicaKeys:
    """What a replica checks batches with: the list's origin, the gateway's checkpoint keys,
    the witnesses' cosignature keys and how many cosignatures a checkpoint needs."""

    origin: str
    log_verifiers: tuple[NoteVerifier, ...]
    witness_verifiers: tuple[CosignatureVerifier, ...] = ()
    min_cosignatures: int = 0

    @classmethod
    def from_registry(
        cls, registry: Registry, *, origin: str, min_cosignatures: int = 0
    ) -> ReplicaKeys:
        """The gateway members' keys under ``origin`` and the witnesses' keys, from the
        member registry (as auditors check the audit log)."""
        return cls(
            origin=origin,
            log_verifiers=tuple(log_verifiers(registry, origin)),
            witness_verifiers=tuple(witness_verifiers(registry)),
            min_cosignatures=min_cosignatures,
        )


class Replica:
    """A member's verified copy of the risk list. Thread-safe; lookups never take the lock."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        keys: ReplicaKeys,
        state: ListState,
        index: RiskIndex,
    ) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.keys = keys
        self._state = state
        self.index = index
        self._listeners: list[Callable[[VerifiedBatch], None]] = []

    @classmethod
    def open(cls, path: Path, *, keys: ReplicaKeys) -> Replica:
        """Open or create the replica at ``path``; raises ``AgencyUnavailable`` when the file is
        unusable and ``LogInconsistent`` when its changes do not match its state."""
        db = open_store(path, STORE, error=AgencyUnavailable)
        try:
            row = db.execute("SELECT size, edge, root, checkpoint FROM state").fetchone()
            leaves = [bytes(r[0]) for r in db.execute("SELECT data FROM changes ORDER BY idx")]
        except sqlite3.Error as exc:
            db.close()
            raise AgencyUnavailable(f"cannot read the risk list replica {path}: {exc}") from exc
        if row is None:
            state = ListState.empty()
        else:
            size, edge, root, note = row
            hashes = tuple(bytes(edge[i : i + 32]) for i in range(0, len(edge), 32))
            state = ListState(size=size, hashes=hashes, root=bytes(root), checkpoint=note)
        tree = CompactRange()
        for leaf in leaves:
            tree.append(leaf_hash(leaf))
        if tree.size != state.size or tree.root() != state.root:
            db.close()
            raise LogInconsistent(
                f"risk list replica {path}: {tree.size} stored changes do not match its state of "
                f"size {state.size}; restore it or delete it to copy the list afresh"
            )
        # The index is rebuilt from the verified changes, never read from the ``entries`` table
        # (kept for SQL readers): a row changed behind the replica's back cannot list or unlist.
        index = RiskIndex()
        for leaf in leaves:
            index.apply(decode_change(leaf))
        return cls(db, keys=keys, state=state, index=index)

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def state(self) -> ListState:
        return self._state

    def on_applied(self, listener: Callable[[VerifiedBatch], None]) -> None:
        """Call ``listener`` after each applied batch (on the applying thread)."""
        self._listeners.append(listener)

    def listed(self, category: int, value: str, at: datetime | None = None) -> bool:
        """True if ``value`` (canonical form) is on the list under ``category`` at ``at``."""
        return self.index.listed(category, value, micros(at or datetime.now(UTC)))

    def apply(
        self,
        *,
        first_index: int,
        leaves: Sequence[bytes],
        checkpoint: str,
        consistency_proof: Sequence[bytes],
    ) -> VerifiedBatch:
        """Verify and apply one batch (see the contract); returns it verified."""
        with self._lock:
            k = self.keys
            batch = verify_batch(
                self._state,
                first_index=first_index,
                leaves=leaves,
                checkpoint=checkpoint,
                consistency_proof=consistency_proof,
                origin=k.origin,
                log_verifiers=k.log_verifiers,
                witness_verifiers=k.witness_verifiers,
                min_cosignatures=k.min_cosignatures,
            )
            self._commit(batch, leaves)
            for change in batch.changes:
                self.index.apply(change)
            self._state = batch.state
        for listener in self._listeners:
            listener(batch)
        return batch

    def _commit(self, batch: VerifiedBatch, leaves: Sequence[bytes]) -> None:
        s = batch.state
        start = s.size - len(leaves)
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO changes (idx, data) VALUES (?, ?)",
                    [(start + i, leaf) for i, leaf in enumerate(leaves)],
                )
                for change in batch.changes:
                    e = change.entry
                    if change.kind == risklist_pb2.RISK_CHANGE_KIND_REMOVE:
                        self._db.execute(
                            "DELETE FROM entries WHERE category = ? AND value = ?",
                            (e.category, e.value),
                        )
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO entries (category, value, expires_us) "
                            "VALUES (?, ?, ?)",
                            (e.category, e.value, micros(e.expires_at.ToDatetime(tzinfo=UTC))),
                        )
                self._db.execute(
                    "INSERT OR REPLACE INTO state (id, size, edge, root, checkpoint) "
                    "VALUES (1, ?, ?, ?, ?)",
                    (s.size, b"".join(s.hashes), s.root, s.checkpoint),
                )
        except sqlite3.Error as exc:
            raise AgencyUnavailable(f"cannot store a risk list batch: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
