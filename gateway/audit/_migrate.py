"""``fedgate audit migrate``: move a log written before tiles to the tiled layout.

With the gateway stopped (the writer's lock refuses otherwise), it streams the leaf hashes from
the start, rebuilds the C2SP tiles (storing those the log lacks and comparing with those it
has), the time blocks the searches use, and the console rollups of the entries written before
rollups existed. Each chunk is one transaction and records how far it got, so an interrupted
migration resumes; on SQLite the WAL is copied into the database after each chunk, so it stays
bounded however long the log. The log is verified before (entries against every signed
checkpoint) and after (the same, plus every tile) by ``fedgate audit verify``'s code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedgate.errors import LogInconsistent
from fedgate.tiles import TILE_WIDTH, TiledTree, tile_path

__all__ = ["MigrationReport", "Writable", "migrate"]

CHUNK = 65_536
"""Entries per transaction: a multiple of 256 (whole tiles and time blocks)."""


class Writable(Protocol):
    """What ``migrate`` needs of a writer ``LogDatabase``."""

    def next_index(self) -> int: ...

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]: ...

    def tiles(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]: ...

    def migration_state(self) -> tuple[int, int, int, int]: ...

    def migrate_chunk(
        self, tiles: Sequence[tuple[int, int, bytes]], blocks: range, rollups: range
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class MigrationReport:
    entries: int
    tiles_added: int
    blocks_added: int
    rollups_backfilled: int


def migrate(
    db: Writable,
    *,
    after_chunk: Callable[[int, int], None] | None = None,
) -> MigrationReport:
    """Add the tiles, time blocks and rollups ``db`` lacks; ``after_chunk(done, total)`` is
    called after each committed chunk (the caller checkpoints the WAL and reports progress).

    Raises ``LogInconsistent`` when a stored tile differs from the one the entries make (run
    ``fedgate audit verify``), ``AuditUnavailable`` when the database fails.
    """
    total = db.next_index()
    have_tiles, have_blocks, rollups_from, backfilled = db.migration_state()
    full = total // TILE_WIDTH
    if have_tiles == full and have_blocks == full and backfilled >= rollups_from:
        # Already tiled: nothing to add (``fedgate audit verify`` checks the tiles themselves).
        if after_chunk is not None:
            after_chunk(total, total)
        return MigrationReport(total, 0, 0, 0)
    tree = TiledTree(size=0, edge=[b""], read=_no_read)
    added_tiles = added_blocks = added_rollups = 0
    for start in range(0, total, CHUNK):
        stop = min(start + CHUNK, total)
        done = tree.extend(db.leaf_hashes(start, stop))
        if tree.size != stop:
            raise LogInconsistent(
                f"entries {start}..{stop - 1} are not all in the store: run `fedgate audit verify`"
            )
        new: list[tuple[int, int, bytes]] = []
        for level, index, data in done:
            stored = db.tiles(level, index, index + 1) if level or index < have_tiles else []
            if not stored:
                new.append((level, index, data))
            elif stored[0][1] != data:
                raise LogInconsistent(
                    f"the stored tile {tile_path(level, index)} does not match the entries: run "
                    "`fedgate audit verify`"
                )
        blocks = range(max(have_blocks, start // TILE_WIDTH), stop // TILE_WIDTH)
        rollups = range(max(backfilled, start), min(rollups_from, stop))
        if new or blocks or rollups:
            db.migrate_chunk(new, blocks, rollups)
        added_tiles += len(new)
        added_blocks += len(blocks)
        added_rollups += len(rollups)
        if after_chunk is not None:
            after_chunk(stop, total)
    return MigrationReport(total, added_tiles, added_blocks, added_rollups)


def _no_read(level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
    raise LookupError("migration builds tiles; it never reads them back")
