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
    "AuditStore",
    "CommitBatch",
    "IndexedRow",
    "LogDatabase",
    "NewLeaf",
    "SearchQuery",
    "StoredLog",
    "StoredRow",
    "ThreadedStore",
    "normalized_subjects",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewLeaf:
    """One leaf to write: its index, canonical bytes, leaf hash and searchable columns."""

    index: int
    data: bytes
    leaf_hash: bytes
    columns: IndexColumns


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Leaves ``[start, start + len(leaves))`` and the checkpoint signed for the new size."""

    leaves: Sequence[NewLeaf]
    size: int
    checkpoint: str


@dataclass(frozen=True, slots=True)
class StoredLog:
    """What a log needs to resume: every leaf hash in order and the latest checkpoints.

    ``leaf_count`` counts the stored leaves and ``next_index`` is one past the highest index;
    they differ when rows were deleted behind the database's back.
    """

    origin: str
    leaf_hashes: list[bytes]
    leaf_count: int
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

    async def close(self) -> None: ...


class ThreadedStore:
    """An ``AuditStore`` over two connections of a ``LogDatabase``, each on its own thread.

    The writer connection (loads, commits, cosigned checkpoints) and the reader connection
    (entries, checkpoints, search) are opened on their threads by ``open``; reads never queue
    behind a commit.
    """

    def __init__(
        self,
        writer: LogDatabase,
        reader: LogDatabase,
        writer_pool: concurrent.futures.ThreadPoolExecutor,
        reader_pool: concurrent.futures.ThreadPoolExecutor,
        *,
        state_path: Path | None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._writer_pool = writer_pool
        self._reader_pool = reader_pool
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
        """Open the writer first (it creates the schema), then the reader."""
        loop = asyncio.get_running_loop()
        writer_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-w")
        reader_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-r")
        try:
            writer = await loop.run_in_executor(writer_pool, open_writer)
            try:
                reader = await loop.run_in_executor(reader_pool, open_reader)
            except BaseException:
                await loop.run_in_executor(writer_pool, writer.close)
                raise
        except BaseException:
            writer_pool.shutdown(wait=False)
            reader_pool.shutdown(wait=False)
            raise
        return cls(writer, reader, writer_pool, reader_pool, state_path=state_path)

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

    async def close(self) -> None:
        try:
            try:
                await self._r(self._reader.close)
            finally:
                await self._w(self._writer.close)
        finally:
            self._reader_pool.shutdown(wait=True)
            self._writer_pool.shutdown(wait=True)
