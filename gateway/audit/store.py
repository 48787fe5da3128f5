"""The audit store seam: what the log needs from a database, and the threaded adapter.

A store keeps one log shard (one origin): the leaves with their hashes and searchable columns,
every checkpoint the log signed, and checkpoints with witness cosignatures. Two databases
implement ``LogDatabase`` (``sqlite_store``, ``pg_store``); ``ThreadedStore`` turns one into the
``AuditStore`` the log uses, running the blocking calls on dedicated threads (one writer
connection, one reader connection) so the event loop never waits on disk.

Contract for every ``LogDatabase``:

- ``commit`` MUST write every leaf of the batch, its columns, its subjects and the checkpoint
  in ONE durable transaction: when it returns, all of it survives a crash; when it raises,
  none of it is visible.
- Leaves, checkpoints and cosigned checkpoints MUST be append-only in the database itself
  (triggers; on PostgreSQL also privileges), not only in this code.
- Foreign errors are translated once, here at the boundary, into ``AuditUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from fedgate.audit_entry import IndexColumns
from fedgate.auditverify import StoredRow, normalized_subjects

__all__ = [
    "CHECKPOINT_INTERVAL",
    "AuditStore",
    "CommitBatch",
    "IndexedRow",
    "LogDatabase",
    "NewLeaf",
    "SearchQuery",
    "StoredLog",
    "StoredRow",
    "ThreadedStore",
    "kept_checkpoint",
    "normalized_subjects",
]

T = TypeVar("T")

CHECKPOINT_INTERVAL = 256
"""The store keeps in its history the checkpoint of each batch that reaches or crosses a
multiple of this many entries (``kept_checkpoint``); the newest signed and the newest cosigned
checkpoint are always kept, as the log's head."""


def kept_checkpoint(previous_size: int, size: int) -> bool:
    """Whether the checkpoint signed when the log grew from ``previous_size`` to ``size``
    entries goes into the store's history: the empty tree's, and each batch's that reaches or
    crosses a multiple of ``CHECKPOINT_INTERVAL``. At production rates a batch is a few entries,
    so keeping every note would cost ~210 bytes per entry; this keeps under one byte per entry.
    Receipts carry their own note, so nothing a receipt needs is lost."""
    return size == 0 or previous_size // CHECKPOINT_INTERVAL != size // CHECKPOINT_INTERVAL


@dataclass(frozen=True, slots=True)
class NewLeaf:
    """One leaf to write: its index, canonical bytes, leaf hash and searchable columns."""

    index: int
    data: bytes
    leaf_hash: bytes
    columns: IndexColumns


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Leaves ``[start, start + len(leaves))``, the checkpoint signed for the new size, and the
    C2SP tiles ``(level, index, 8192 bytes)`` those leaves completed."""

    leaves: Sequence[NewLeaf]
    size: int
    checkpoint: str
    tiles: Sequence[tuple[int, int, bytes]] = ()


@dataclass(frozen=True, slots=True)
class StoredLog:
    """What a log needs to resume, read in a few indexed lookups whatever the log's length:
    its right edge and the latest checkpoints.

    ``next_index`` is one past the highest stored index; ``edge_hashes`` are the stored leaf
    hashes of indices from ``next_index - next_index % 256`` on, in order (fewer than the
    ``next_index % 256`` expected when rows were deleted behind the database's back);
    ``tile_count`` is one past the highest full level-0 tile stored (less than
    ``next_index // 256`` for a log written before tiles: ``fedgate audit migrate``).
    """

    origin: str
    edge_hashes: list[bytes]
    tile_count: int
    next_index: int
    checkpoint: str | None
    checkpoint_size: int
    cosigned: str | None
    cosigned_size: int


@dataclass(frozen=True, slots=True)
class IndexedRow:
    """A search hit: the leaf index and its stored searchable columns."""

    index: int
    columns: IndexColumns


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Filters (empty matches anything), a time window in microseconds, visibility and paging.

    ``member`` matches the requesting or the target member, ``target`` the target member only;
    ``visible_to`` restricts the hits the same way as ``member``, for callers that may only see
    their own exchanges; ``leg`` (1, 2, 3; 0: any) keeps one kind of entry. Hits have indices
    above ``after_index`` and below ``before_index`` (when given), oldest first (newest first
    with ``newest_first``), at most ``limit``. Every combination is answered through an index
    (``gateway.audit._search``): keyset paging, never an offset.
    """

    officer_id: str = ""
    member: str = ""
    case_number: str = ""
    action: str = ""
    subject: str = ""
    outcome: str = ""
    request_id: str = ""
    since_us: int | None = None
    until_us: int | None = None
    visible_to: str = ""
    after_index: int = -1
    limit: int = 100
    target: str = ""
    leg: int = 0
    before_index: int | None = None
    newest_first: bool = False


class LogDatabase(Protocol):
    """One log shard in a database, blocking calls; see the module docstring's contract."""

    @property
    def origin(self) -> str: ...

    def load(self) -> StoredLog: ...

    def commit(self, batch: CommitBatch) -> None: ...

    def add_cosigned(self, size: int, note: str) -> None: ...

    def leaves(self, start: int, stop: int) -> list[bytes]: ...

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]: ...

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    def leaf_rows(self, start: int, stop: int) -> list[tuple[int, bytes, bytes]]: ...

    def rows(self, start: int, stop: int) -> list[StoredRow]: ...

    def next_index(self) -> int: ...

    def checkpoint(self, size: int) -> str | None: ...

    def checkpoints(self) -> list[tuple[int, str]]: ...

    def cosigned_checkpoints(self) -> list[tuple[int, str]]: ...

    def search(self, query: SearchQuery) -> list[IndexedRow]: ...

    def close(self) -> None: ...


class AuditStore(Protocol):
    """The async store ``AuditLog`` writes through. ``state_path`` is where the log keeps its
    last-signed-checkpoint file by default (``None``: the caller must name one)."""

    @property
    def origin(self) -> str: ...

    @property
    def state_path(self) -> Path | None: ...

    async def load(self) -> StoredLog: ...

    async def commit(self, batch: CommitBatch) -> None: ...

    async def add_cosigned(self, size: int, note: str) -> None: ...

    async def leaves(self, start: int, stop: int) -> list[bytes]: ...

    async def checkpoint(self, size: int) -> str | None: ...

    async def search(self, query: SearchQuery) -> list[IndexedRow]: ...

    def read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        """The stored full tiles ``(index, data)`` of ``level`` in ``[start, stop)``. Blocking:
        the log's tree calls it from the event loop for the few tiles a proof needs that its
        cache does not hold (one indexed read on its own connection)."""
        ...

    async def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    async def close(self) -> None: ...


class ThreadedStore:
    """An ``AuditStore`` over two connections of a ``LogDatabase``, each on its own thread.

    The writer connection (loads, commits, cosigned checkpoints), the reader connection
    (entries, checkpoints, search) and the tile connection (the tiles a proof needs) are opened
    on their threads by ``open``; reads never queue behind a commit, proofs never behind a
    search.
    """

    def __init__(
        self,
        writer: LogDatabase,
        reader: LogDatabase,
        tiler: LogDatabase,
        pools: tuple[concurrent.futures.ThreadPoolExecutor, ...],
        *,
        state_path: Path | None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._tiler = tiler
        self._writer_pool, self._reader_pool, self._tile_pool = pools
        self._state_path = state_path

    @classmethod
    async def open(
        cls,
        open_writer: Callable[[], LogDatabase],
        open_reader: Callable[[], LogDatabase],
        *,
        name: str,
        state_path: Path | None,
    ) -> ThreadedStore:
        """Open the writer first (it creates the schema), then the readers."""
        loop = asyncio.get_running_loop()
        pools = tuple(
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{role}")
            for role in ("w", "r", "t")
        )
        opened: list[tuple[LogDatabase, concurrent.futures.ThreadPoolExecutor]] = []
        try:
            for pool, opener in zip(pools, (open_writer, open_reader, open_reader), strict=True):
                opened.append((await loop.run_in_executor(pool, opener), pool))
        except BaseException:
            for db, pool in reversed(opened):
                await loop.run_in_executor(pool, db.close)
            for pool in pools:
                pool.shutdown(wait=False)
            raise
        (writer, _), (reader, _), (tiler, _) = opened
        return cls(writer, reader, tiler, pools, state_path=state_path)

    @property
    def origin(self) -> str:
        return self._writer.origin

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    async def _w(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn)

    async def _r(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn)

    async def load(self) -> StoredLog:
        return await self._w(self._writer.load)

    async def commit(self, batch: CommitBatch) -> None:
        await self._w(lambda: self._writer.commit(batch))

    async def add_cosigned(self, size: int, note: str) -> None:
        await self._w(lambda: self._writer.add_cosigned(size, note))

    async def leaves(self, start: int, stop: int) -> list[bytes]:
        return await self._r(lambda: self._reader.leaves(start, stop))

    async def checkpoint(self, size: int) -> str | None:
        return await self._r(lambda: self._reader.checkpoint(size))

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        return await self._r(lambda: self._reader.search(query))

    def read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return self._tile_pool.submit(self._tiler.tiles, level, start, stop).result()

    async def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return await asyncio.get_running_loop().run_in_executor(
            self._tile_pool, self._tiler.tiles, level, start, stop
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                await loop.run_in_executor(self._tile_pool, self._tiler.close)
                await self._r(self._reader.close)
            finally:
                await self._w(self._writer.close)
        finally:
            self._tile_pool.shutdown(wait=True)
            self._reader_pool.shutdown(wait=True)
            self._writer_pool.shutdown(wait=True)
