"""Every audit shard of the federation, as the auditor console reads them.

With several gateway instances on one PostgreSQL database (``fedgate up --gateways N``) each
instance writes its own shard (its own origin); an auditor must see all of them from any
instance's console. ``Shards`` finds them the way ``fedgate audit verify --pg`` does
(``list_origins``: every shard in the schema, looked for again every ``DISCOVER_S``), reads this
instance's shard through its live ``AuditLog`` and every other one read-only
(``gateway.audit.reader.ShardReader`` for entries and proofs, ``LogInsights`` for the list and
the aggregates), and checks each one's checkpoints with its own ``LogWatch``.

A single instance on SQLite has one shard, this instance's: nothing else changes.

Each shard has a ``key`` for URLs: empty for this instance's shard (``/entries/7``), a short
hash of the origin for the others (``/shards/3f2a…/entries/7``).

- ``newest`` merges the shards' newest-first pages by entry time, with a keyset cursor per
  shard (the lowest index shown of each; ``Cursor``): each shard's rows are taken in their own
  order, so paging neither skips nor repeats a row whatever the shards hold.
- Charts sum the shards' daily rollups; flags merge the shards' per-officer-day counts before
  thresholds apply, and a query one shard holds counts as followed by an order another shard
  holds in the same case. The shards are read concurrently; only this instance's waits for its
  rollups (another's are read as its writer keeps them: ``LogInsights.open``'s ``catch_up``).

Contract: it MUST NOT write to another instance's shard (both readers are read-only), and an
unreachable shard MUST fail the page (``AuditUnavailable``), never silently drop its entries;
the other shards' reads for that page are then cancelled, not left running (``_all_or_none``).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Final, TypeVar

from fedgate.errors import FieldViolation, InvalidArgument, NotFound
from fedgate.registry import Registry
from gateway.audit.insights import (
    CaseWithoutOrder,
    DayCount,
    LogInsights,
    OfficerDay,
    PgShard,
    ReasonCount,
    TimeWindow,
)
from gateway.audit.pg_store import list_origins
from gateway.audit.reader import LogView, ShardReader
from gateway.audit.store import IndexedRow, SearchQuery
from gateway.console._state import SEEN_FILE, LogWatch

__all__ = ["DISCOVER_S", "Cursor", "Shard", "ShardHit", "Shards", "shard_key"]

T = TypeVar("T")

_logger = logging.getLogger("fedgate.gateway.console")

DISCOVER_S: Final = 10.0
"""How often the console looks for shards that appeared since (a new instance)."""
_MAX_ROWS: Final = 500
_REQUEST_LEG: Final = 1

Cursor = Mapping[str, int]
"""Per shard key, the index below which its next page starts (a shard absent: its newest)."""


def shard_key(origin: str) -> str:
    """The URL key of another instance's shard: 10 hex digits of the origin's SHA-256."""
    return hashlib.sha256(origin.encode()).hexdigest()[:10]


@dataclass(slots=True)
class Shard:
    """One shard: ``key`` (URL; empty for this instance's), its log view, aggregates and
    checkpoint watch; ``reader`` is set for another instance's shard (refreshed on use)."""

    key: str
    log: LogView
    insights: LogInsights
    watch: LogWatch
    reader: ShardReader | None = None

    @property
    def origin(self) -> str:
        return self.log.origin

    @property
    def base(self) -> str:
        """The prefix of this shard's entry URLs."""
        return f"/shards/{self.key}" if self.key else ""

    def entry_url(self, index: int) -> str:
        return self.entry_url_of(self.key, index)

    @staticmethod
    def entry_url_of(key: str, index: int) -> str:
        return f"/shards/{key}/entries/{index}" if key else f"/entries/{index}"


@dataclass(frozen=True, slots=True)
class ShardHit:
    """A search hit and the shard it is in."""

    shard: Shard
    row: IndexedRow


@dataclass(slots=True)
class Shards:
    """This instance's shard and, on PostgreSQL, every other one (see the module doc). Build
    with ``await Shards.open(...)``; ``close`` closes what it opened (never ``home``'s log)."""

    home: Shard
    source: PgShard | None
    """The shared database (``None``: this instance's shard is the only one)."""
    registry: Callable[[], Registry]
    state_dir: Path
    clock: Callable[[], datetime] | None
    others: dict[str, Shard] = field(default_factory=dict)
    _looked_at: float = float("-inf")
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def all(self) -> list[Shard]:
        """This instance's shard first, then the others by origin."""
        return [self.home, *sorted(self.others.values(), key=lambda s: s.origin)]

    @property
    def federated(self) -> bool:
        """Whether the shards are on a database other instances share (PostgreSQL)."""
        return self.source is not None

    async def discover(self, *, force: bool = False) -> None:
        """Open the shards that appeared since the last look (at most every ``DISCOVER_S``).
        Raises ``AuditUnavailable`` when the database cannot be read."""
        source = self.source
        if source is None:
            return
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not force and loop.time() - self._looked_at < DISCOVER_S:
                return
            origins = await asyncio.to_thread(list_origins, source.dsn, schema=source.schema)
            for origin in origins:
                key = shard_key(origin)
                if origin == self.home.origin or key in self.others:
                    continue
                self.others[key] = await self._open(source, origin, key)
                _logger.info("auditor console: reading audit shard %s", origin)
            self._looked_at = loop.time()

    async def _open(self, source: PgShard, origin: str, key: str) -> Shard:
        reader = await ShardReader.open(source.dsn, origin=origin, schema=source.schema)
        try:
            insights = await LogInsights.open(replace(source, origin=origin))
        except BaseException:
            await reader.close()
            raise
        watch = LogWatch(
            log=reader,
            insights=insights,
            registry=self.registry,
            state_dir=self.state_dir,
            clock=self.clock,
            seen_file=f"{SEEN_FILE}-{key}",
        )
        return Shard(key, reader, insights, watch, reader)

    async def shard(self, key: str) -> Shard:
        """The shard with URL key ``key``, refreshed. Raises ``NotFound``."""
        if not key:
            return self.home
        await self.discover()
        found = self.others.get(key)
        if found is None:
            raise NotFound(f"no audit shard {key[:20]!r}")
        if found.reader is not None:
            await found.reader.refresh()
        return found

    async def every(self) -> list[Shard]:
        """Every shard, discovered and refreshed."""
        await self.discover()
        for shard in self.others.values():
            if shard.reader is not None:
                await shard.reader.refresh()
        return self.all

    def entry_url(self, origin: str, index: int) -> str:
        """The console URL of entry ``index`` of shard ``origin`` (empty: this instance's)."""
        if not origin or origin == self.home.origin:
            return self.home.entry_url(index)
        return Shard.entry_url_of(shard_key(origin), index)

    async def close(self) -> None:
        for shard in self.others.values():
            try:
                await shard.insights.close()
            finally:
                if shard.reader is not None:
                    await shard.reader.close()
        self.others.clear()

    # -- the list ------------------------------------------------------------------------------

    def parse_cursor(self, values: Collection[str]) -> dict[str, int]:
        """``before`` values (``17`` for this instance's shard, ``17@<key>`` for another) as a
        cursor. Raises ``InvalidArgument`` naming ``before``."""
        cursor: dict[str, int] = {}
        for value in values:
            index, _, key = value.partition("@")
            if not index.isdigit() or len(key) > 20:
                raise InvalidArgument.for_fields([FieldViolation("before", "an entry number")])
            cursor[key] = int(index)
        return cursor

    @staticmethod
    def cursor_values(cursor: Cursor) -> list[str]:
        """``parse_cursor``'s inverse, in a stable order."""
        return [f"{i}@{k}" if k else str(i) for k, i in sorted(cursor.items())]

    async def newest(
        self, query: SearchQuery, *, cursor: Cursor, leg: int, page: int
    ) -> tuple[list[ShardHit], dict[str, int] | None]:
        """At most ``page`` hits of every shard, newest first by entry time, below ``cursor``;
        and the cursor of the next page (``None``: no older hit)."""
        shards = await self.every()
        fetched = await _all_or_none(
            s.insights.newest(
                replace(query, limit=page + 1), before_index=cursor.get(s.key), leg=leg
            )
            for s in shards
        )
        streams = [
            [(-row.columns[2], s.origin, -row.index, n) for row in rows]
            for n, (s, rows) in enumerate(zip(shards, fetched, strict=True))
        ]
        # Each shard's rows in their own (index) order; the merge only ever takes a head.
        taken: list[ShardHit] = []
        total = sum(len(rows) for rows in fetched)
        positions = [0] * len(shards)
        for _, _, _, n in heapq.merge(*streams):
            if len(taken) == page:
                break
            taken.append(ShardHit(shards[n], fetched[n][positions[n]]))
            positions[n] += 1
        if total <= len(taken):
            return taken, None
        following = dict(cursor)
        for hit in taken:
            key = hit.shard.key
            following[key] = min(following.get(key, hit.row.index + 1), hit.row.index)
        return taken, following

    # -- charts and flags ----------------------------------------------------------------------

    async def per_day(self, window: TimeWindow, by: str) -> list[DayCount]:
        sums: dict[tuple[date, str], int] = defaultdict(int)
        for rows in await self._each(lambda i: i.per_day(window, by)):
            for row in rows:
                sums[(row.day, row.key)] += row.count
        return [DayCount(d, k, n) for (d, k), n in sorted(sums.items())]

    async def refusals(self, window: TimeWindow) -> list[ReasonCount]:
        sums: dict[str, int] = defaultdict(int)
        for rows in await self._each(lambda i: i.refusals(window)):
            for row in rows:
                sums[row.reason] += row.count
        return [ReasonCount(r, n) for r, n in sorted(sums.items(), key=lambda p: (-p[1], p[0]))]

    async def _each(self, fetch: Callable[[LogInsights], Awaitable[list[T]]]) -> list[list[T]]:
        """``fetch`` of every shard, in the order of ``all``, read at once: each shard has its
        own reader thread, and only this instance's shard may wait for its rollups (one failing
        fails them all: ``_all_or_none``)."""
        return await _all_or_none(fetch(s.insights) for s in await self.every())

    @staticmethod
    def _sum_days(rows: list[tuple[Shard, OfficerDay]]) -> list[OfficerDay]:
        merged: dict[tuple[str, str, date], OfficerDay] = {}
        for shard, row in rows:
            key = (row.member, row.officer_id, row.day)
            held = merged.get(key)
            if held is None:
                merged[key] = replace(row, origin=shard.origin)
            else:
                merged[key] = replace(held, count=held.count + row.count)
        return list(merged.values())

    async def _days(
        self, fetch: Callable[[LogInsights], Awaitable[list[OfficerDay]]]
    ) -> list[tuple[Shard, OfficerDay]]:
        shards = await self.every()
        fetched = await _all_or_none(fetch(s.insights) for s in shards)
        return [(s, row) for s, rows in zip(shards, fetched, strict=True) for row in rows]

    async def officer_days(self, window: TimeWindow, actions: Collection[str]) -> list[OfficerDay]:
        rows = self._sum_days(await self._days(lambda i: i.officer_days(window, actions)))
        return sorted(rows, key=lambda r: (r.day, r.member, r.officer_id))

    async def off_hours(
        self, window: TimeWindow, actions: Collection[str], *, start_hour: int, end_hour: int
    ) -> list[OfficerDay]:
        rows = self._sum_days(
            await self._days(
                lambda i: i.off_hours(window, actions, start_hour=start_hour, end_hour=end_hour)
            )
        )
        rows.sort(key=lambda r: (r.member, r.officer_id))
        rows.sort(key=lambda r: r.day, reverse=True)
        return rows[:_MAX_ROWS]

    async def refusal_days(self, window: TimeWindow, *, minimum: int) -> list[OfficerDay]:
        shards = await self.every()
        if len(shards) == 1:
            return await shards[0].insights.refusal_days(window, minimum=minimum)
        # Summed before the threshold: two shards' refusals of one officer on one day count
        # together.
        rows = [
            r
            for r in self._sum_days(await self._days(lambda i: i.refusal_days(window, minimum=1)))
            if r.count >= minimum
        ]
        rows.sort(key=lambda r: (r.member, r.officer_id))
        rows.sort(key=lambda r: r.day, reverse=True)
        return rows[:_MAX_ROWS]

    async def without_order(
        self,
        window: TimeWindow,
        *,
        queries: Collection[str],
        orders: Collection[str],
        within_us: int,
    ) -> list[CaseWithoutOrder]:
        shards = await self.every()
        fetched = await _all_or_none(
            s.insights.without_order(window, queries=queries, orders=orders, within_us=within_us)
            for s in shards
        )
        found: list[CaseWithoutOrder] = []
        for shard, rows in zip(shards, fetched, strict=True):
            for row in rows:
                others = [s for s in shards if s is not shard]
                if not await _ordered_elsewhere(others, row, orders, within_us):
                    found.append(replace(row, origin=shard.origin))
        found.sort(key=lambda r: r.first_us, reverse=True)
        return found[:_MAX_ROWS]


async def _all_or_none(reads: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``reads``, run at once, in their order; or, as soon as one raises, that
    error (an ``AuditUnavailable`` as itself, not in a group) once the others are cancelled and
    have ended: a page that fails leaves no read of a sibling shard running (this instance's
    may be polling for its rollups). Cancelled itself, it cancels them all the same."""
    tasks = [asyncio.ensure_future(read) for read in reads]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on those that ended
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


async def _ordered_elsewhere(
    shards: list[Shard], row: CaseWithoutOrder, orders: Collection[str], within_us: int
) -> bool:
    """Whether another shard holds an allowed order in ``row``'s case after its first query and
    within ``within_us`` of its last."""
    query = SearchQuery(
        case_number=row.case_number,
        outcome="allowed",
        since_us=row.first_us + 1,
        until_us=row.last_us + within_us + 1,
        limit=_MAX_ROWS,
    )
    for shard in shards:
        hits = await shard.insights.newest(query, leg=_REQUEST_LEG)
        if any(hit.columns[6] in orders for hit in hits):
            return True
    return False
