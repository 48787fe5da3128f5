"""The audit store seam: what the log needs from a database, and the threaded adapter.

A store keeps one log shard (one origin): the leaves with their hashes and searchable columns,
every checkpoint the log signed, and checkpoints with witness cosignatures. Two databases
implement ``LogDatabase`` (``sqlite_store``, ``pg_store``); ``ThreadedStore`` turns one into the
``AuditStore`` the log uses, running the blocking calls on dedicated threads (one writer
connection, one reader connection) so the event loop never waits on disk.

Contract for every ``LogDatabase``:

- ``commit`` MUST write every leaf of the batch (its bytes, hash, searchable columns and
  subjects, in the leaf's own row), the checkpoint and the rows ``beside`` it (sealed bodies,
  data keys) in ONE durable transaction: when it
  returns, all of it survives a crash; when it raises, none of it is visible.
- The search projection (the indexed ``search_rows``, the ``subjects`` table, the rollups) is
  kept BEHIND the leaves by ``catch_up``, in its own transactions, which need not be durable:
  it is derived from the leaf rows, and ``projected_to`` moves with it atomically. Searches
  MUST still see every committed leaf (``_search.search`` reads the leaf rows past
  ``projected_to``). ``ThreadedStore`` runs the catch-up after commits (when, and
  its bounds: ``gateway.audit._catch_up``); bulk writers call ``checkpoint_wal``.
- Leaves, checkpoints and cosigned checkpoints MUST be append-only in the database itself
  (triggers; on PostgreSQL also privileges), not only in this code.
- Foreign errors are translated once, here at the boundary, into ``AuditUnavailable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fedgate.audit_entry import IndexColumns
from fedgate.auditverify import StoredRow, normalized_subjects
from gateway.audit import _catch_up
from gateway.audit._writer_thread import WriterThread

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

logger = logging.getLogger("gateway.audit.log")

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
    C2SP tiles ``(level, index, 8192 bytes)`` those leaves completed.

    ``beside`` are rows of the tables kept beside the log (the encrypted bodies of sealed
    entries and new case keys, ``_bodies``): ``(statement, parameter rows)`` for this database,
    written in the same transaction so a leaf is never committed without its body."""

    leaves: Sequence[NewLeaf]
    size: int
    checkpoint: str
    tiles: Sequence[tuple[int, int, bytes]] = ()
    beside: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = ()


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

    def catch_up(self, limit: int) -> int:
        """Project the next at most ``limit`` leaves; returns how many are still behind."""
        ...

    def projection_lag(self) -> int: ...

    def leaves(self, start: int, stop: int) -> list[bytes]: ...

    def shard_leaf(self, origin: str, index: int) -> bytes | None:
        """The leaf at ``index`` of the shard ``origin`` of the same database (a ticket
        answer's request leg, logged by another instance); ``None`` when the database holds
        no such leaf, or holds this shard only (SQLite)."""
        ...

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]: ...

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    def leaf_rows(self, start: int, stop: int) -> Iterable[tuple[int, bytes, bytes]]: ...

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

    async def shard_leaf(self, origin: str, index: int) -> bytes | None:
        """``LogDatabase.shard_leaf``."""
        ...

    async def checkpoint(self, size: int) -> str | None: ...

    async def search(self, query: SearchQuery) -> list[IndexedRow]: ...

    def catch_up_soon(self) -> None:
        """Bring the search projection and the rollups level with the log now rather than at
        the next scheduled catch-up (``ThreadedStore.catch_up_soon``)."""
        ...

    def read_tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        """The stored full tiles ``(index, data)`` of ``level`` in ``[start, stop)``. Blocking:
        the log's tree calls it from the event loop for the few tiles a proof needs that its
        cache does not hold (one indexed read on its own connection)."""
        ...

    async def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    async def close(self) -> None: ...


class ThreadedStore:
    """An ``AuditStore`` over two connections of a ``LogDatabase``, each on its own thread.

    The writer connection (loads, commits, cosigned checkpoints, the projection's catch-up, run
    in the order asked on a ``WriterThread``), the reader connection (entries, checkpoints,
    search) and the tile connection (the tiles a proof needs) are opened on their threads by
    ``open``; reads never queue behind a commit, proofs never behind a search.

    The search projection is caught up on the writer's thread after the commits, never inside
    one, never two catch-ups at once, when ``_catch_up`` says (its docstring: the rule and the
    bounds). Searches see every committed leaf regardless.
    """

    def __init__(
        self,
        writer: LogDatabase,
        reader: LogDatabase,
        tiler: LogDatabase,
        pools: tuple[WriterThread, concurrent.futures.Executor, concurrent.futures.Executor],
        *,
        state_path: Path | None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._tiler = tiler
        # The writer's is a ``WriterThread``: one thread, and a lighter hop than a pool's.
        self._writer_pool, self._reader_pool, self._tile_pool = pools
        self._state_path = state_path
        self._lag = 0
        self._behind_since: float | None = None
        """Loop time of the first commit the next catch-up will cover (``None``: none yet)."""
        self._last_started: float | None = None
        self._soon = False
        """A reader asked for a catch-up while one ran and leaves were counted after it started:
        start the next as soon as it ends."""
        self._settled = False
        self._failures = 0
        """Catch-ups failed in a row (0: the last one succeeded, or none ran yet)."""
        self._retry_at: float | None = None
        """After a failure: the loop time before which no catch-up starts but the retry
        timer's (``_catch_up.retry_after``)."""
        self._timer: asyncio.TimerHandle | None = None
        self._catching_up: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        open_writer: Callable[[], LogDatabase],
        open_reader: Callable[[], LogDatabase],
        *,
        name: str,
        state_path: Path | None,
    ) -> ThreadedStore:
        """Open the writer first (it creates the schema), then the readers. When one fails,
        those opened are closed (their own errors ignored), every thread is stopped, and the
        opening error is raised."""
        loop = asyncio.get_running_loop()
        pools = (
            WriterThread(f"{name}-w"),
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-r"),
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-t"),
        )

        def on(pool: concurrent.futures.Executor) -> Callable[[Callable[[], T]], Awaitable[T]]:
            return lambda fn: loop.run_in_executor(pool, fn)

        runs = (pools[0].call, on(pools[1]), on(pools[2]))
        opened: list[LogDatabase] = []
        try:
            for run, opener in zip(runs, (open_writer, open_reader, open_reader), strict=True):
                opened.append(await run(opener))
        except BaseException:
            # The opening error is the one to report, and no thread may outlive the store.
            try:
                for db, run in reversed(list(zip(opened, runs, strict=False))):
                    with contextlib.suppress(Exception):
                        await run(db.close)
            finally:
                for pool in pools:
                    pool.shutdown(wait=False)
            raise
        writer, reader, tiler = opened
        return cls(writer, reader, tiler, pools, state_path=state_path)

    @property
    def origin(self) -> str:
        return self._writer.origin

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    async def _w(self, fn: Callable[[], T]) -> T:
        return await self._writer_pool.call(fn)

    async def _r(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn)

    async def load(self) -> StoredLog:
        stored = await self._w(self._writer.load)
        self._lag = await self._w(self._writer.projection_lag)
        self._schedule()
        return stored

    async def commit(self, batch: CommitBatch) -> None:
        await self._w(lambda: self._writer.commit(batch))
        self._lag += len(batch.leaves)
        self._schedule()

    def catch_up_soon(self) -> None:
        """Start a catch-up now if the projection is behind, or as soon as the running one
        ends: a reader of the rollups (the console's charts and flags) about to wait for them
        calls it, so a chart shows what was committed when it was asked even between the
        spaced catch-ups of a busy log. Call it from the event loop.

        While one runs, the next follows it only if leaves were counted after it started
        (``_behind_since``): the running one covers every leaf counted before, and a reader
        polling while it runs must not buy a second one it does not need.

        After a failure it starts none before the retry timer fires (``_retry_at``)."""
        if self._lag <= 0 or self._settled or self._retrying():
            return
        if self._catching_up is None:
            self._start_catch_up()
        elif self._behind_since is not None:
            self._soon = True

    def _schedule(self) -> None:
        """After a commit (or a catch-up, or the load): start or time the next catch-up."""
        if self._lag <= 0 or self._settled:
            self._soon = False  # nothing behind: no request outlives it
            return
        loop = asyncio.get_running_loop()
        if self._behind_since is None:
            self._behind_since = loop.time()
        if self._catching_up is not None or self._retrying():
            return  # the running one, or the retry timer, comes first
        if self._lag >= _catch_up.CATCH_UP_ENTRIES or self._soon:
            self._start_catch_up()
        elif self._timer is None:
            at = _catch_up.catch_up_at(self._behind_since, self._last_started)
            self._timer = loop.call_at(at, self._start_catch_up)

    def _retrying(self) -> bool:
        """Whether a failed catch-up's retry is still to come (its timer then starts it)."""
        return self._retry_at is not None and asyncio.get_running_loop().time() < self._retry_at

    def _start_catch_up(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._catching_up is None and not self._settled:
            loop = asyncio.get_running_loop()
            self._last_started = loop.time()
            self._behind_since = None  # the leaves behind now are this catch-up's
            self._soon = False
            self._catching_up = loop.create_task(self._catch_up(), name="audit-projection")

    async def _catch_up(self) -> None:
        """Project the leaves that were behind when it started, a chunk per transaction; what
        was committed meanwhile waits for the next catch-up (``_schedule``).

        It MUST NOT chase the commits that land while it runs: under steady appends one
        always does (its transaction runs in the writer's queue behind a commit the loop has
        not counted yet), and chasing it turned one large catch-up into one small catch-up
        after every commit, each paying a transaction's fixed cost (most of all on a big
        log: the index pages it dirties) and holding the next commit back.

        A failure is retried ``_catch_up.retry_after`` later (``CATCH_UP_RETRY_S``, doubled
        for each failure in a row, at most ``CATCH_UP_RETRY_MAX_S``), and no sooner: neither a
        reader asking nor the entries bound starts one meanwhile. The first failure in a row is
        logged as a warning, the repeats at debug level. Searches and the log do not depend on
        it (only how much of the leaf rows a search reads does)."""
        try:
            target = self._lag
            while target > 0 and self._lag > 0:
                # At most CATCH_UP_ENTRIES per transaction (a log far behind takes several),
                # read now: a test that changes it in ``_catch_up`` changes it here too.
                step = min(target, _catch_up.CATCH_UP_ENTRIES)
                self._lag = await self._w(functools.partial(self._writer.catch_up, step))
                target -= step
        except Exception as exc:  # the log goes on; the timer retries
            self._catching_up = None
            self._soon = False  # the retry covers what a reader asked for
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            logger.log(
                level,
                "audit store: the search projection could not catch up (%d in a row): %s",
                self._failures,
                exc,
            )
            loop = asyncio.get_running_loop()
            self._retry_at = loop.time() + _catch_up.retry_after(self._failures)
            if not self._settled:
                # Not left to the next commit: a log that has gone quiet would never retry.
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(self._retry_at, self._start_catch_up)
            return
        self._catching_up = None
        self._failures = 0
        self._retry_at = None
        self._schedule()  # commits that landed meanwhile

    async def _settle(self) -> None:
        """Stop scheduling catch-ups and wait for the one running (at close)."""
        self._settled = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._catching_up
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def add_cosigned(self, size: int, note: str) -> None:
        await self._w(lambda: self._writer.add_cosigned(size, note))

    async def leaves(self, start: int, stop: int) -> list[bytes]:
        return await self._r(lambda: self._reader.leaves(start, stop))

    async def shard_leaf(self, origin: str, index: int) -> bytes | None:
        return await self._r(lambda: self._reader.shard_leaf(origin, index))

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
        await self._settle()
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
