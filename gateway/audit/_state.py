"""What the audit log checks at open, and the state file it keeps as a rollback tripwire.

``rebuild_tree`` opens the tiled Merkle tree from the store's tiles and right edge and checks it
against the store's latest checkpoint; ``check_state_file`` checks that tree against the last
checkpoint the log recorded in its state file. ``StateFile`` rewrites that file in the
background after commits, at most once an interval: it is a rollback detector, not the
durability mechanism (the store's commit is), so it only has to never lead the database and lag
it by little.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from fedgate.checkpoint import parse_checkpoint
from fedgate.errors import AuditUnavailable, LogInconsistent, VerificationError
from fedgate.files import write_atomically
from fedgate.note import parse_note
from fedgate.tiles import TILE_WIDTH, TiledTree, TileRead
from gateway.audit.store import StoredLog

__all__ = ["StateFile", "check_state_file", "rebuild_tree"]

# The log's own logger: operators configure it by that name.
logger = logging.getLogger("gateway.audit.log")


def rebuild_tree(stored: StoredLog, origin: str, read: TileRead) -> TiledTree:
    """The tree of the stored tiles and right edge, checked against the stored latest checkpoint.

    Reads the edge (at most 255 tiles per level) whatever the log's length; the full check of
    every leaf against the tiles is ``fedgate audit verify``'s.
    """
    if stored.origin != origin:
        raise AuditUnavailable(f"the audit store holds shard {stored.origin!r}, not {origin!r}")
    next_index = stored.next_index
    full = next_index // TILE_WIDTH
    if stored.tile_count < full:
        raise AuditUnavailable(
            f"the audit store holds {next_index} entries but tiles for only "
            f"{stored.tile_count * TILE_WIDTH}: it was written before tiles. Run `fedgate audit "
            "migrate` on it (the gateway stopped), then start again"
        )
    if stored.tile_count > full or len(stored.edge_hashes) != next_index % TILE_WIDTH:
        raise LogInconsistent(
            f"the audit store's tiles and leaves disagree on its size (highest index "
            f"{next_index - 1}, {stored.tile_count} full tiles, {len(stored.edge_hashes)} of the "
            f"last {next_index % TILE_WIDTH} leaves): rows were deleted; run `fedgate audit "
            "verify`. Refusing to sign"
        )
    try:
        tree = TiledTree.open(size=next_index, leaf_hashes=stored.edge_hashes, read=read)
    except ValueError as exc:
        raise LogInconsistent(f"the audit store holds damaged tiles: {exc}") from exc
    checkpoint, checkpoint_size = stored.checkpoint, stored.checkpoint_size
    if checkpoint is None:
        if tree.size:
            raise LogInconsistent(
                f"the audit store holds {tree.size} leaves but no checkpoint. Refusing to sign"
            )
        return tree
    try:
        cp = parse_checkpoint(parse_note(checkpoint).text)
    except VerificationError as exc:
        raise LogInconsistent(f"the stored latest checkpoint is malformed: {exc.message}") from exc
    if cp.origin != origin or cp.size != checkpoint_size:
        raise LogInconsistent(
            f"the stored checkpoint at size {checkpoint_size} is for {cp.origin!r} size "
            f"{cp.size}, not {origin!r} size {checkpoint_size}. Refusing to sign"
        )
    if cp.size != tree.size:
        raise LogInconsistent(
            f"the audit store holds {tree.size} leaves but its latest checkpoint covers "
            f"{cp.size}. Refusing to sign"
        )
    if _root(tree) != cp.root_hash:
        raise LogInconsistent(
            f"the stored leaves do not hash to the root of the latest stored checkpoint (size "
            f"{cp.size}): the database was altered; run `fedgate audit verify`. Refusing to sign"
        )
    return tree


def _root(tree: TiledTree, size: int | None = None) -> bytes:
    try:
        return tree.root(size)
    except LookupError as exc:
        raise LogInconsistent(f"the audit store lacks a tile: {exc}. Refusing to sign") from exc


def check_state_file(path: Path, origin: str, tree: TiledTree) -> None:
    """Refuse (``LogInconsistent``) a store behind or forked from the last signed checkpoint."""
    try:
        note = path.read_text("utf-8")
    except FileNotFoundError:
        if tree.size:
            raise LogInconsistent(
                f"the audit log state file {path} is missing but the store holds {tree.size} "
                "entries: cannot tell whether the database was rolled back. Copy the state "
                "file with the database, or write the latest witness-cosigned checkpoint note "
                "into it. Refusing to sign"
            ) from None
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise LogInconsistent(f"cannot read the audit log state file {path}: {exc}") from exc
    try:
        cp = parse_checkpoint(parse_note(note).text)
    except VerificationError as exc:
        raise LogInconsistent(
            f"the audit log state file {path} is not a checkpoint note: {exc.message}"
        ) from exc
    if cp.origin != origin:
        raise LogInconsistent(f"the state file {path} is for log {cp.origin!r}, not {origin!r}")
    if cp.size > tree.size:
        raise LogInconsistent(
            f"the audit store holds {tree.size} entries but this log already signed a checkpoint "
            f"of size {cp.size} (state file {path}): the database was restored from an older "
            "copy or truncated. Refusing to sign"
        )
    if _root(tree, cp.size) != cp.root_hash:
        raise LogInconsistent(
            f"the audit store's first {cp.size} entries do not match the checkpoint this log "
            f"signed at that size (state file {path}): the database was replaced or altered. "
            "Refusing to sign"
        )


class StateFile:
    """The log's state file: the last signed checkpoint note, replaced atomically.

    ``run`` rewrites it with ``latest()`` each time ``wake`` is set, at most once every
    ``interval_s``; ``write`` writes one note now. A note MUST be written only after the commit
    of the checkpoint it holds, so the file never leads the database.
    """

    def __init__(self, path: Path, *, origin: str, interval_s: float) -> None:
        self.path = path
        self.wake = asyncio.Event()
        self._origin = origin
        self._interval = interval_s
        self._written: str | None = None
        self._inflight: asyncio.Future[None] | None = None

    async def write(self, note: str) -> None:
        """Replace the file with ``note`` unless it already holds it; raises ``OSError``."""
        if note == self._written:
            return
        write = asyncio.get_running_loop().run_in_executor(
            None, write_atomically, self.path, note.encode("utf-8")
        )
        self._inflight = write
        # Shielded: a write cut off by close() still finishes on its thread, and close() waits
        # for it, so an older note can never replace the newer one close() writes.
        await asyncio.shield(write)
        self._written = note

    async def drain(self) -> None:
        """Wait for a write cut off by cancellation to finish on its thread."""
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)

    async def run(self, latest: Callable[[], str]) -> None:
        """Write ``latest()`` whenever woken, coalescing wake-ups within the interval."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.write(latest())
            except OSError as exc:
                logger.error(
                    "audit log %s: cannot write the state file %s: %s",
                    self._origin,
                    self.path,
                    exc,
                )
            # Coalesce: the batches committed meanwhile are recorded by the next write.
            await asyncio.sleep(self._interval)
