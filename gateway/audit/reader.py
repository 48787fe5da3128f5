"""Reading an audit shard that another gateway instance writes, read-only.

With several instances on one PostgreSQL database each instance writes its own shard (its own
origin); an auditor's tools read all of them. ``LogView`` is what a reader of one shard needs of
it: its entries, the latest signed and cosigned checkpoints, proofs, and search. The writing
instance's ``AuditLog`` is one; ``ShardReader`` is another, for a shard this process does not
write: it reads the store's right edge and checkpoints (as ``AuditLog.open`` does, through
``rebuild_tree``'s checks) on a connection of its own, refreshed at most every
``refresh_s``, and proves from the stored tiles.

Contract:

- A ``ShardReader`` MUST NOT write: its database is opened as a reader (``writer=False``),
  whose PostgreSQL session is READ ONLY.
- What it serves MUST be consistent with one signed checkpoint: the tree it proves from is the
  one the stored latest checkpoint covers (``rebuild_tree``), never leaves committed after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Protocol, TypeVar

from fedgate.errors import AuditUnavailable, LogInconsistent, NotFound
from fedgate.tiles import TiledTree
from gateway.audit._state import rebuild_tree
from gateway.audit.pg_store import PgDatabase
from gateway.audit.store import IndexedRow, SearchQuery, StoredLog

__all__ = ["REFRESH_S", "LogView", "ShardReader"]

T = TypeVar("T")

REFRESH_S = 1.0
"""How stale a ``ShardReader``'s view of its shard may be."""
_LOAD_ATTEMPTS = 3
"""A load can race the writer's next commit (its reads are separate statements): retried."""


class LogView(Protocol):
    """One audit shard as a reader sees it (``AuditLog`` and ``ShardReader``)."""

    @property
    def origin(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def witness_errors(self) -> dict[str, str]: ...

    def latest_checkpoint(self) -> str: ...

    def latest_cosigned_checkpoint(self) -> str | None: ...

    def latest_cosigned_size(self) -> int: ...

    def leaf_hash(self, index: int) -> bytes: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    async def get_entry(self, index: int) -> bytes: ...

    async def open_entry(self, index: int) -> bytes: ...

    async def search(self, query: SearchQuery) -> list[IndexedRow]: ...


class ShardReader:
    """A ``LogView`` of a PostgreSQL shard written by another instance (see the module doc).

    Build with ``await ShardReader.open(...)``; ``await refresh()`` before reading (cheap when
    fresh); ``close`` when done."""

    def __init__(
        self,
        db: PgDatabase,
        pool: concurrent.futures.ThreadPoolExecutor,
        *,
        refresh_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._pool = pool
        self._refresh_s = refresh_s
        self._clock = clock
        self._loaded_at = float("-inf")
        self._tree: TiledTree | None = None
        self._checkpoint = ""
        self._cosigned: str | None = None
        self._cosigned_size = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, *, origin: str, schema: str, refresh_s: float = REFRESH_S
    ) -> ShardReader:
        """Open shard ``origin`` read-only and load it. Raises ``AuditUnavailable`` (no such
        shard, unreachable), ``LogInconsistent`` (its tiles and checkpoint disagree)."""
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-shard")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(
                pool, lambda: PgDatabase(dsn, origin=origin, schema=schema, writer=False)
            )
        except BaseException:
            pool.shutdown(wait=False)
            raise
        reader = cls(db, pool, refresh_s=refresh_s, clock=loop.time)
        try:
            await reader.refresh()
        except BaseException:
            await reader.close()
            raise
        return reader

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        # Blocking, from the event loop or a worker thread, like ``ThreadedStore.read_tiles``:
        # a proof reads the few tiles its cache lacks.
        return self._pool.submit(self._db.tiles, level, start, stop).result()

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the shard's right edge and checkpoints if older than ``refresh_s``."""
        async with self._lock:
            if not force and self._clock() - self._loaded_at < self._refresh_s:
                return
            origin = self._db.origin
            for attempt in range(_LOAD_ATTEMPTS):
                stored: StoredLog = await self._run(self._db.load)
                try:
                    # Not on the database thread: the tree reads its tiles through it.
                    tree = await asyncio.to_thread(rebuild_tree, stored, origin, self._read_tiles)
                except LogInconsistent:
                    if attempt + 1 == _LOAD_ATTEMPTS:
                        raise
                    continue
                break
            self._tree = tree
            self._checkpoint = stored.checkpoint or ""
            self._cosigned, self._cosigned_size = stored.cosigned, stored.cosigned_size
            self._loaded_at = self._clock()

    def _t(self) -> TiledTree:
        if self._tree is None:
            raise AuditUnavailable(f"the audit shard {self.origin!r} is closed")
        return self._tree

    @property
    def origin(self) -> str:
        return self._db.origin

    @property
    def size(self) -> int:
        return self._tree.size if self._tree is not None else 0

    @property
    def witness_errors(self) -> dict[str, str]:
        """Only the writing instance knows its witnesses' errors: none here."""
        return {}

    def latest_checkpoint(self) -> str:
        """The stored latest signed checkpoint (with the cosignatures stored on it, if any)."""
        if self._cosigned is not None and self._cosigned_size == self.size:
            return self._cosigned
        return self._checkpoint

    def latest_cosigned_checkpoint(self) -> str | None:
        return self._cosigned

    def latest_cosigned_size(self) -> int:
        return self._cosigned_size if self._cosigned is not None else 0

    def _proved(self, compute: Callable[[TiledTree], T]) -> T:
        try:
            return compute(self._t())
        except LookupError as exc:
            raise AuditUnavailable(f"the audit store cannot give a proof: {exc}") from exc

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise NotFound(f"no entry {index}: the log has {self.size} entries")
        return self._proved(lambda tree: tree.leaf_hash_at(index))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        if not 0 <= index < size <= self.size:
            raise NotFound(f"no entry {index} in a tree of size {size} (log size {self.size})")
        return self._proved(lambda tree: tree.inclusion_proof(index, size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if not 0 <= old_size <= new_size <= self.size:
            raise NotFound(
                f"no consistency proof from {old_size} to {new_size} (log size {self.size})"
            )
        return self._proved(lambda tree: tree.consistency_proof(old_size, new_size))

    async def get_entry(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise NotFound(f"no entry {index}: the log has {self.size} entries")
        found = await self._run(lambda: self._db.leaves(index, index + 1))
        if not found:
            raise AuditUnavailable(f"entry {index} is missing from the audit store")
        return found[0]

    async def open_entry(self, index: int) -> bytes:
        """The stored leaf: sealed bodies are opened only by the instance that holds their
        keys (``AuditLog.open_entry``)."""
        return await self.get_entry(index)

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        size = self.size
        hits = await self._run(lambda: self._db.search(query))
        return [hit for hit in hits if hit.index < size]  # what the checkpoint covers

    async def close(self) -> None:
        self._tree = None
        try:
            await self._run(self._db.close)
        finally:
            self._pool.shutdown(wait=True)
