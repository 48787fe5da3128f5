"""Key tiers: which key blocks hold a key, so a search for a rare or absent key reads only those
(SQLite, schema version 7, issue 18).

SQLite's officer, case and subject indexes are keyed by the leaf's key block first
(``KEY_BLOCK_BITS``, 16,384 leaves), so the catch-up's inserts stay in the newest
block's pages; the price was on the search side, one seek per key block of the searched range,
whether the block holds the key or not. An account or a number (a subject) has a few hits, an
absent key none, so their searches sought every block: ~1,300 cold page reads at 10 M entries,
~24,000 at the 200 M a centre keeps for three years.

A tier summarises ``1 << FANOUT_BITS`` (16) parts for each key found in them: at level 1 a tier
is 16 key blocks (262,144 leaves), at level 2 it is 16 level-1 tiers (4,194,304 leaves). Its
rows, in ``key_tiers``, are ``(level, tier, kind, key) -> mask``, the mask's bit ``i`` set when
part ``i`` of the tier holds the key. A search resolves the blocks of its range that may hold
its key: a level-2 tier's row names the level-1 tiers to look at, their rows name the key
blocks, and a block past the last built tier is taken as it is. An absent key then costs one
seek per level-2 tier, plus at most 15 level-1 tiers and 15 blocks: ~30 seeks at 10 M entries,
~80 at 200 M, instead of 611 and 12,208. Exact, never approximate: a mask is computed from the
projection's own rows, and a block not covered by a built tier is always sought.

Tiers are built behind the projection, never inside a commit or a catch-up: the ``Builder``
thread (one per writer, its own connection) builds the next tier once the projection holds all
of its leaves. It groups the tier's keys into a temporary table of its own connection (a read
of the main database: the writer's commits go on meanwhile), then copies them into
``key_tiers`` in key order, ``COPY_ROWS`` rows per short write transaction (appends at the
table's right edge; a commit waits at most for one of them), the last one recording the tier
as built (``projection_state``: ``key_tiers_1``, ``key_tiers_2``, how many tiers of each level
are built, in order). Measured in ``docs/benchmarks.md``. A crash or a close in the middle
leaves rows of an unrecorded tier: the next build of it writes the same rows, ``OR IGNORE``
keeps those already there, and no search reads a tier before it is recorded. A log of an
earlier version gains its tiers the same way, in the background, after its first writer opens
it; a search meanwhile seeks the blocks no built tier covers, as before.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

__all__ = [
    "COPY_ROWS",
    "DDL",
    "FANOUT_BITS",
    "KEY_BLOCK_BITS",
    "KEY_BLOCK_EXPR",
    "KINDS",
    "LEVELS",
    "Builder",
    "block_batches",
    "build_next",
    "built",
]

KEY_BLOCK_BITS: Final = 14
"""Leaf indexes per key block (``idx >> KEY_BLOCK_BITS``) of the SQLite officer, case and
subject indexes: 16,384 (schema version 5; 65,536 in version 4).

The trade (measured in ``docs/benchmarks.md``, issue 18). A catch-up's random keys dirty about
every page of the newest block's part of the three trees, so the pages written per append grow
with how full that block already is: with 65,536 leaves a block, the append rate on a big log
swung with where the log stood in its block (CPU ratio to an empty log 0.93-0.98 near a
block's start, 0.80 near its end), while the empty log's bench rounds only ever saw a block's
first 20,000 leaves. With 16,384 both cycle through whole blocks, and the catch-up's CPU above
the empty log's fell from +2.4 to +1.4 us per append on 0.3 M logs, from +5.9 to +1.7 us on
2 M logs (process CPU ratio ~0.90 -> ~0.95). The cost was on the search side, one seek per
block of the searched range, whatever it holds: 611 blocks at 10 M entries, 12,208 at 200 M,
which the tiers (this module) cut to the blocks that hold the key."""

KEY_BLOCK_EXPR: Final = f"idx >> {KEY_BLOCK_BITS}"
"""A leaf's key block, as the SQLite indexes keyed by it are defined (``sqlite_store``): the
searches write the same expression, or SQLite would not use those indexes."""

FANOUT_BITS: Final = 4
"""Parts per tier: 16 (a mask fits an SQL integer; level 1 is 16 key blocks)."""
LEVELS: Final = 2
"""Tier levels: 16 key blocks, then 16 level-1 tiers (4,194,304 leaves)."""
KINDS: Final = {"officer_id": 0, "case_number": 1, "subject": 2}
"""The searched keys a tier summarises, by the ``SearchQuery`` field, and their ``kind``."""
COPY_ROWS: Final = 20_000
"""Rows per write transaction of a tier's copy into ``key_tiers``."""
_STOP_CHECK_STEPS: Final = 10_000
"""The builder's statements check for a stop every this many SQLite VM steps (well under a
millisecond), so a close never waits for a tier's grouping."""

_log = logging.getLogger(__name__)

DDL: Final = """
CREATE TABLE IF NOT EXISTS key_tiers (
    level INTEGER NOT NULL CHECK (level >= 1),
    tier INTEGER NOT NULL CHECK (tier >= 0),
    kind INTEGER NOT NULL,
    key TEXT NOT NULL,
    mask INTEGER NOT NULL CHECK (mask > 0),
    PRIMARY KEY (level, tier, kind, key)
) STRICT, WITHOUT ROWID;
"""
"""The tiers' table: keyed by tier first, so a tier's rows are appended at the right edge."""

_STATE: Final = tuple(f"key_tiers_{level}" for level in range(1, LEVELS + 1))

Fetch = Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]]


def _span(level: int) -> int:
    """Key blocks per tier of ``level``."""
    return 1 << (FANOUT_BITS * level)


def built(fetch: Fetch) -> tuple[int, ...]:
    """How many tiers of each level (1, 2, ...) are built: tiers ``[0, n)`` of that level."""
    rows = fetch(
        "SELECT name, value FROM projection_state WHERE name IN"  # noqa: S608 - constant text
        f" ({', '.join('?' * len(_STATE))})",
        _STATE,
    )
    values = {str(name): int(value) for name, value in rows}
    return tuple(values.get(name, 0) for name in _STATE)


# A tier's keys, each with the mask of the parts holding it (each part's bit summed once per
# key: an OR), in key order, grouped from the rows below it.
_BIT: Final = f"1 << (part & {(1 << FANOUT_BITS) - 1})"


def _level_1(kind: int, key: str, part: str, rows: str) -> str:
    """Level 1 from the projection: the distinct ``(part, key)`` of ``rows`` (table and range
    terms) read in its index's order (key block first: no sort), then summed per key.
    Constant text. Grouping by the index's order first took a level-1 tier of the 10 M log from
    0.43 to 0.26 s of CPU (``SUM(DISTINCT ...)`` over the rows sorted twice)."""
    return (
        f"INSERT INTO temp.key_tier_rows (kind, key, mask) SELECT {kind}, key, SUM({_BIT})"  # noqa: S608
        f" FROM (SELECT {part} AS part, {key} AS key FROM {rows} GROUP BY part, key)"
        " GROUP BY key ORDER BY key"
    )


_BLOCK_RANGE: Final = f"({KEY_BLOCK_EXPR}) >= ? AND ({KEY_BLOCK_EXPR}) < ?"
_GROUP_LEVEL_1: Final = (
    _level_1(
        0, "officer_id", KEY_BLOCK_EXPR, f"search_rows WHERE {_BLOCK_RANGE} AND officer_id <> ''"
    ),
    _level_1(
        1, "case_number", KEY_BLOCK_EXPR, f"search_rows WHERE {_BLOCK_RANGE} AND case_number <> ''"
    ),
    _level_1(2, "subject", "block", "subjects WHERE block >= ? AND block < ?"),
)
# Level 2 on, from the level below: one row per (tier, kind, key) already.
_GROUP_UPPER: Final = (
    "INSERT INTO temp.key_tier_rows (kind, key, mask)"  # noqa: S608 - constant text
    f" SELECT kind, key, SUM(1 << (tier & {(1 << FANOUT_BITS) - 1})) FROM key_tiers"
    " WHERE level = ? AND tier >= ? AND tier < ? GROUP BY kind, key ORDER BY kind, key"
)
_COPY: Final = (
    "INSERT OR IGNORE INTO key_tiers (level, tier, kind, key, mask)"
    " SELECT ?, ?, kind, key, mask FROM temp.key_tier_rows WHERE rowid > ? AND rowid <= ?"
    " ORDER BY rowid"
)
_RECORD: Final = (
    "INSERT INTO projection_state (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


def _fetch(con: sqlite3.Connection) -> Fetch:
    return lambda statement, params: con.execute(statement, params).fetchall()


def build_next(con: sqlite3.Connection, stopping: Callable[[], bool] = lambda: False) -> bool:
    """Build the next tier whose parts are all complete (the lowest level first, so a level-2
    tier follows its sixteenth level-1 tier); returns whether one was built. ``con`` is a
    writable connection in autocommit mode, used by this thread alone; ``stopping`` is asked
    between copy transactions. Raises ``sqlite3.Error``."""
    counts = built(_fetch(con))
    (projected,) = con.execute(
        "SELECT COALESCE(MAX(value), 0) FROM projection_state WHERE name = 'projected_to'"
    ).fetchone()
    complete = int(projected) >> KEY_BLOCK_BITS  # key blocks the projection holds whole
    for level in range(1, LEVELS + 1):
        below = complete if level == 1 else counts[level - 2]
        tier = counts[level - 1]
        if (tier + 1) << FANOUT_BITS <= below:
            _build(con, level, tier, stopping)
            return True
    return False


def _group(con: sqlite3.Connection, level: int, tier: int) -> int:
    """Group the keys of tier ``tier`` of ``level`` into ``temp.key_tier_rows`` (made anew),
    in key order; returns how many rows it holds. Reads the main database only."""
    con.execute("DROP TABLE IF EXISTS temp.key_tier_rows")
    con.execute("CREATE TEMP TABLE key_tier_rows (kind INTEGER, key TEXT, mask INTEGER)")
    first = tier << FANOUT_BITS  # its first part, in the level below's units
    if level == 1:
        for statement in _GROUP_LEVEL_1:  # each over the key blocks [first, first + 16)
            con.execute(statement, (first, first + (1 << FANOUT_BITS)))
    else:
        con.execute(_GROUP_UPPER, (level - 1, first, first + (1 << FANOUT_BITS)))
    (rows,) = con.execute("SELECT COALESCE(MAX(rowid), 0) FROM temp.key_tier_rows").fetchone()
    return int(rows)


_DIFFERENCE: Final = (
    "SELECT * FROM (SELECT kind, key, mask FROM temp.key_tier_rows"
    " EXCEPT SELECT kind, key, mask FROM key_tiers WHERE level = ?1 AND tier = ?2)"
    " UNION ALL SELECT * FROM (SELECT kind, key, mask FROM key_tiers WHERE level = ?1"
    " AND tier = ?2 EXCEPT SELECT kind, key, mask FROM temp.key_tier_rows) LIMIT 1"
)


def check(con: sqlite3.Connection) -> tuple[int, str | None]:
    """Each built tier against the rows it summarises (the projection, or the level below,
    itself checked first): ``(tiers checked, what differs or None)``. A tier that names a block
    without the key only costs a seek; one that leaves a block out hides hits from searches,
    so ``fedgate audit verify`` checks the tiers with the search index. ``con`` may be
    read-only (the grouping goes to its temporary database). Raises ``sqlite3.Error``."""
    checked = 0
    names = {v: k for k, v in KINDS.items()}
    for level, count in enumerate(built(_fetch(con)), start=1):
        for tier in range(count):
            _group(con, level, tier)
            differs = con.execute(_DIFFERENCE, (level, tier)).fetchone()
            if differs is not None:
                return checked, (
                    f"key tier {tier} of level {level} does not match the search index"
                    f" (a {names.get(int(differs[0]), 'key')} in it differs): the search"
                    " index or the tier was altered"
                )
            checked += 1
    con.execute("DROP TABLE IF EXISTS temp.key_tier_rows")
    return checked, None


def _build(con: sqlite3.Connection, level: int, tier: int, stopping: Callable[[], bool]) -> None:
    rows = _group(con, level, tier)
    at = 0
    while True:
        if stopping():
            return
        upto = min(at + COPY_ROWS, rows)
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(_COPY, (level, tier, at, upto))
            if upto == rows:
                con.execute(_RECORD, (_STATE[level - 1], tier + 1))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        if upto == rows:
            con.execute("DROP TABLE temp.key_tier_rows")
            return
        at = upto


def block_batches(
    fetch: Fetch,
    counts: Sequence[int],
    kind: int,
    key: str,
    first: int,
    last: int,
    *,
    newest_first: bool,
) -> Iterator[list[int]]:
    """The key blocks ``[first, last]`` that may hold ``key`` of ``kind``, in batches in the
    search's order (each batch in that order too): the blocks past the last built level-1
    tier as they are, then, level by level downward, each built tier's blocks named by its
    row; a batch is resolved only when the search asks for it, so a key found in the newest
    blocks costs no tier look-up at all. ``counts``: ``built``'s."""
    if last < first:
        return
    # Regions of blocks, ascending: [covered by level L, ...], then the blocks past level 1.
    regions: list[tuple[int, int, int]] = []  # (level, first block, one past its last)
    start = 0
    for level in range(LEVELS, 0, -1):
        end = max(start, counts[level - 1] * _span(level))
        regions.append((level, start, end))
        start = end
    regions.append((0, start, last + 1))
    if newest_first:
        regions.reverse()
    wanted = range(first, last + 1)
    for level, lo, hi in regions:
        lo, hi = max(lo, first), min(hi, last + 1)
        if lo >= hi:
            continue
        if level == 0:
            yield list(range(hi - 1, lo - 1, -1) if newest_first else range(lo, hi))
            continue
        tiers = range(lo // _span(level), (hi - 1) // _span(level) + 1)
        yield from _resolve(fetch, level, tiers, kind, key, wanted, newest_first=newest_first)


def _resolve(
    fetch: Fetch,
    level: int,
    tiers: Sequence[int],
    kind: int,
    key: str,
    wanted: range,
    *,
    newest_first: bool,
) -> Iterator[list[int]]:
    """The blocks of ``tiers`` (of ``level``) that may hold the key and are ``wanted`` (the
    search's blocks), one batch per level-1 tier, in the search's order, each tier of a higher
    level resolved through the level below."""
    ordered = sorted(tiers, reverse=newest_first)
    for tier, mask in _lazily(fetch, level, ordered, kind, key):
        parts = [(tier << FANOUT_BITS) + bit for bit in range(1 << FANOUT_BITS) if mask >> bit & 1]
        if level > 1:
            # Only the tiers below that reach into the wanted blocks: one beside them would be
            # read for nothing.
            span = _span(level - 1)
            parts = [p for p in parts if p * span <= wanted[-1] and (p + 1) * span > wanted[0]]
            yield from _resolve(
                fetch, level - 1, parts, kind, key, wanted, newest_first=newest_first
            )
        elif blocks := [b for b in parts if b in wanted]:
            yield blocks[::-1] if newest_first else blocks


def _lazily(
    fetch: Fetch, level: int, tiers: Sequence[int], kind: int, key: str
) -> Iterator[tuple[int, int]]:
    """``(tier, mask)`` of the ``tiers`` of ``level`` that hold the key, in their order, read
    1, 2, 4, ... tiers at a time: a key found in the first tiers (a common one, whose page
    fills there) reads no more of them, and a rare or absent one, which needs them all, reads
    them in a few statements (one seek per tier either way)."""
    at, n = 0, 1
    while at < len(tiers):
        chunk = tiers[at : at + n]
        masks = _masks(fetch, level, chunk, kind, key)
        for tier in chunk:
            if tier in masks:
                yield tier, masks[tier]
        at, n = at + n, n * 2


def _masks(fetch: Fetch, level: int, tiers: Sequence[int], kind: int, key: str) -> dict[int, int]:
    """``{tier: mask}`` of the ``tiers`` of ``level`` holding the key (one seek per tier)."""
    rows = fetch(
        "SELECT tier, mask FROM key_tiers WHERE level = ?"
        " AND tier IN (SELECT value FROM json_each(?)) AND kind = ? AND key = ?",
        (level, json.dumps(list(tiers)), kind, key),
    )
    return {int(tier): int(mask) for tier, mask in rows}


class Builder:
    """Builds the tiers on its own thread and connection (``build_next``) whenever the writer
    asks (``request``: after a catch-up, and once on open), until none is left to build.

    A round that fails is logged (a warning the first time, then at debug level until one
    succeeds) and tried again at the next request; ``failure`` says what failed last.
    ``settle`` waits for a round that started after it was called. ``stop`` ends a grouping
    in progress at once (SQLite's progress handler aborts it) and waits for the thread."""

    def __init__(self, uri: str) -> None:
        # Made here, used by the thread alone (``stop`` only sets a flag its progress handler
        # reads, from any thread).
        self._con = sqlite3.connect(
            uri, uri=True, isolation_level=None, timeout=10.0, check_same_thread=False
        )
        self._con.execute("PRAGMA cache_size = -8192")
        self._con.execute("PRAGMA temp_store = FILE")
        self._con.set_progress_handler(self._stopping, _STOP_CHECK_STEPS)
        self._cond = threading.Condition()
        self._asked = 0  # requests made
        self._done = 0  # the requests the last finished round covered
        self._stop = False
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="audit-key-tiers", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._asked += 1
            self._cond.notify_all()

    def settle(self, timeout: float | None = None) -> bool:
        """Ask for a round and wait until it has built every tier it can, or failed (see
        ``failure``). False: not in ``timeout`` seconds, or the thread has ended."""
        with self._cond:
            self._asked += 1
            asked = self._asked
            self._cond.notify_all()
            return (
                self._cond.wait_for(
                    lambda: self._done >= asked or not self._thread.is_alive(), timeout
                )
                and self._done >= asked
            )

    def _stopping(self) -> bool:
        return self._stop

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stop or self._asked > self._done)
                    if self._stop:
                        return
                    asked = self._asked
                failure = self._round()
                with self._cond:
                    self.failure = failure
                    self._done = asked
                    self._cond.notify_all()
        finally:
            self._con.close()
            with self._cond:
                self._cond.notify_all()  # a ``settle`` waiting sees the thread end

    def _round(self) -> str | None:
        """Build every tier that can be built; what failed, if anything."""
        try:
            while not self._stop and build_next(self._con, self._stopping):
                pass
        except Exception as exc:  # any failure: logged, the next request tries again
            if self._stop:
                return None  # the stop's abort
            failure = f"{type(exc).__name__}: {exc}"
            level = logging.DEBUG if self.failure is not None else logging.WARNING
            _log.log(level, "audit key tiers: a build failed (tried again later): %s", failure)
            return failure
        return None

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
