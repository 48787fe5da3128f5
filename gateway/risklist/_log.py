"""The risk list's transparency log: its own origin, its own small SQLite store, witnessed.

Each change is one leaf (a serialized ``RiskListChange``). ``RiskListLog.change`` appends it and
a checkpoint for the new size in one transaction; witnesses cosign in the background (the audit
log's ``Witnessing``); followers are woken after every commit. The current list (the entries in
force or lapsed but not removed) is a projection rebuilt from the leaves at open.

Contract:

- ``change`` MUST NOT return before the leaf and a checkpoint covering it are durably committed
  (SQLite WAL, ``synchronous=FULL``); a failed commit raises ``AuditUnavailable`` and changes
  nothing, in the store or in memory.
- Changes are serialized: each sees the list as every earlier change left it.
- At open, the stored leaves MUST hash to the root of the latest stored checkpoint, signed by this
  log's key; otherwise ``LogInconsistent`` (the log never signs a checkpoint that does not extend
  the one it signed before).
- Leaves and checkpoints are append-only (triggers refuse UPDATE and DELETE).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from fedgate.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from fedgate.errors import AuditUnavailable, LogInconsistent, VerificationError
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner
from fedgate.risklist import CompactRange, decode_change
from fedgate.storage import Schema, open_store
from fedgate.v1 import risklist_pb2
from fedgate.witness import WitnessClient
from gateway.audit._witnessing import Witnessing

__all__ = ["STORE", "EntryKey", "RiskListLog"]

EntryKey = tuple[int, str]
"""(category, canonical value): how the list names an entry."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cosigned (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS leaves_no_update BEFORE UPDATE ON leaves
  BEGIN SELECT RAISE(ABORT, 'risk list leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS leaves_no_delete BEFORE DELETE ON leaves
  BEGIN SELECT RAISE(ABORT, 'risk list leaves are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'risk list checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
  BEGIN SELECT RAISE(ABORT, 'risk list checkpoints are append-only'); END;
"""

STORE = Schema(store="risk list log", version=1, create=_SCHEMA)

Builder = Callable[[dict[EntryKey, risklist_pb2.RiskListChange]], risklist_pb2.RiskListChange]


class _Store:
    """The risk list's SQLite file; one connection, used from worker threads under a lock."""

    def __init__(self, path: Path) -> None:
        self._db = open_store(path, STORE, error=AuditUnavailable)
        self._lock = threading.Lock()

    def load(self) -> tuple[list[bytes], str | None, str | None]:
        with self._lock:
            leaves = [bytes(r[0]) for r in self._db.execute("SELECT data FROM leaves ORDER BY idx")]
            cp = self._db.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
            co = self._db.execute("SELECT note FROM cosigned ORDER BY size DESC LIMIT 1")
            row, corow = cp.fetchone(), co.fetchone()
        return leaves, (row[0] if row else None), (corow[0] if corow else None)

    def commit(self, index: int, leaf: bytes, size: int, note: str) -> None:
        try:
            with self._lock, self._db:
                self._db.execute("INSERT INTO leaves (idx, data) VALUES (?, ?)", (index, leaf))
                self._db.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (size, note))
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"cannot commit a risk list change: {exc}") from exc

    def add_cosigned_sync(self, size: int, note: str) -> None:
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO cosigned (size, note) VALUES (?, ?)", (size, note)
                )
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"cannot store a cosigned risk list checkpoint: {exc}") from exc

    async def add_cosigned(self, size: int, note: str) -> None:
        await asyncio.to_thread(self.add_cosigned_sync, size, note)

    def leaves(self, start: int, stop: int) -> list[bytes]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def checkpoint(self, size: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT note FROM cosigned WHERE size = ?", (size,)).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT note FROM checkpoints WHERE size = ?", (size,)
                ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RiskListLog:
    """The risk list log of one gateway. Open with ``open``; ``start`` the witnessing task."""

    def __init__(
        self,
        *,
        store: _Store,
        origin: str,
        signer: NoteSigner,
        leaves: Sequence[bytes],
        tree: MerkleTree,
        checkpoint: str,
        witnesses: Sequence[WitnessClient],
        cosigned: str | None,
    ) -> None:
        self._store = store
        self.origin = origin
        self._signer = signer
        self._tree = tree
        self._edge = CompactRange()
        for i in range(self._tree.size):
            self._edge.append(self._tree.leaf_hash_at(i))
        self._checkpoint = checkpoint
        self._entries: dict[EntryKey, risklist_pb2.RiskListChange] = {}
        for leaf in leaves:
            self._fold(decode_change(leaf))
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._witnessing = Witnessing(
            origin=origin,
            store=store,
            witnesses=witnesses,
            tree=lambda: self._tree,
            published=cosigned,
            published_size=self._tree.size if cosigned else 0,
        )
        if cosigned:
            self._witnessing.seed(cosigned, self._tree.size)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        origin: str,
        signer: NoteSigner,
        witnesses: Sequence[WitnessClient] = (),
    ) -> RiskListLog:
        """Open (or create) the log at ``path``; raises ``AuditUnavailable`` when the store is
        unusable and ``LogInconsistent`` when its leaves do not match its last checkpoint."""
        store = _Store(path)
        try:
            return cls._open(store, origin=origin, signer=signer, witnesses=witnesses)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _open(
        cls,
        store: _Store,
        *,
        origin: str,
        signer: NoteSigner,
        witnesses: Sequence[WitnessClient],
    ) -> RiskListLog:
        try:
            leaves, note, cosigned = store.load()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"cannot read the risk list store: {exc}") from exc
        tree = MerkleTree.from_leaf_hashes(leaf_hash(x) for x in leaves)
        if note is None:
            if leaves:
                raise LogInconsistent(f"risk list {origin}: leaves stored without a checkpoint")
            note = sign_checkpoint(Checkpoint(origin, 0, tree.root()), signer)
        else:
            try:
                cp = open_checkpoint(note, signer.verifier(), origin=origin)
            except VerificationError as exc:
                raise LogInconsistent(
                    f"risk list {origin}: the stored checkpoint does not verify: {exc.message}"
                ) from exc
            if cp.size != tree.size or cp.root_hash != tree.root():
                raise LogInconsistent(
                    f"risk list {origin}: {tree.size} stored leaves do not match the last signed "
                    f"checkpoint of size {cp.size}; refusing to sign over them"
                )
        if cosigned is not None and not cosigned.startswith(note.split("\n\n", 1)[0] + "\n\n"):
            cosigned = None  # cosigned at an older size: witnesses will cosign the latest
        return cls(
            store=store,
            origin=origin,
            signer=signer,
            leaves=leaves,
            tree=tree,
            checkpoint=note,
            witnesses=witnesses,
            cosigned=cosigned,
        )

    def start(self) -> None:
        """Start gathering witness cosignatures in the background."""
        if self._task is None and self._witnessing.witnesses:
            self._task = asyncio.create_task(
                self._witnessing.run(lambda: (self._tree.size, self._checkpoint))
            )
            self._witnessing.wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._store.close()

    @property
    def size(self) -> int:
        return self._tree.size

    @property
    def witness_errors(self) -> dict[str, str]:
        return dict(self._witnessing.errors)

    def latest_checkpoint(self) -> str:
        """The latest signed checkpoint note, cosigned when the witnesses have cosigned it."""
        published = self._witnessing.published
        if published is not None and self._witnessing.published_size == self._tree.size:
            return published
        return self._checkpoint

    def entry(self, key: EntryKey) -> risklist_pb2.RiskListChange | None:
        """The last change of the entry ``key`` (None if never listed)."""
        return self._entries.get(key)

    def entries(self) -> list[risklist_pb2.RiskListChange]:
        """The last change of every entry ever listed."""
        return list(self._entries.values())

    def _fold(self, change: risklist_pb2.RiskListChange) -> None:
        self._entries[(change.entry.category, change.entry.value)] = change

    async def change(self, build: Builder) -> tuple[int, risklist_pb2.RiskListChange]:
        """Append the change ``build`` makes from the current entries; returns its leaf index
        once it is durable. ``build`` may raise (nothing is appended then)."""
        async with self._lock:
            change = build(self._entries)
            leaf = change.SerializeToString()
            index = self._tree.size
            edge = self._edge.copy()
            edge.append(leaf_hash(leaf))
            candidate_root = edge.root()
            note = sign_checkpoint(Checkpoint(self.origin, index + 1, candidate_root), self._signer)
            await asyncio.to_thread(self._store.commit, index, leaf, index + 1, note)
            self._tree.append(leaf_hash(leaf))
            self._edge = edge
            self._checkpoint = note
            self._fold(change)
        async with self._changed:
            self._changed.notify_all()
        self._witnessing.wake.set()
        return index, change

    async def wait_beyond(self, size: int) -> None:
        """Return once the log holds more than ``size`` leaves."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._tree.size > size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The RFC 9162 consistency proof between two sizes (call on the event loop)."""
        return self._tree.consistency_proof(old_size, new_size)

    def read(self, start: int, stop: int) -> tuple[list[bytes], str]:
        """Leaves ``start``..``stop`` and the checkpoint note of size ``stop`` (cosigned when
        the witnesses cosigned it). Blocking: run it on a worker thread."""
        leaves = self._store.leaves(start, stop) if stop > start else []
        note = self._store.checkpoint(stop)
        if note is None and stop == 0:
            note = self._checkpoint  # the empty list's checkpoint is signed, never stored
        if note is None or len(leaves) != stop - start:
            raise AuditUnavailable(f"risk list {self.origin}: changes {start}..{stop} unreadable")
        return leaves, note
