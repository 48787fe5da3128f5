"""What the audit log checks at open, and the state file it keeps as a rollback tripwire.

``rebuild_tree`` rebuilds the Merkle tree from the store's leaf hashes and checks it against the
store's latest checkpoint; ``check_state_file`` checks that tree against the last checkpoint the
log recorded in its state file. ``StateFile`` rewrites that file in the background after
commits, at most once an interval: it is a rollback detector, not the durability mechanism (the
store's commit is), so it only has to never lead the database and lag it by little.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from fedgate.checkpoint import parse_checkpoint
from fedgate.errors import AuditUnavailable, LogInconsistent, VerificationError
from fedgate.files import write_atomically
from fedgate.merkle import MerkleTree
from fedgate.note import parse_note

__all__ = ["StateFile", "check_state_file", "rebuild_tree"]

# The log's own logger: operators configure it by that name.
logger = logging.getLogger("gateway.audit.log")


def rebuild_tree(
    stored_origin: str,
    origin: str,
    hashes: list[bytes],
    count: int,
    next_index: int,
    checkpoint: str | None,
    checkpoint_size: int,
) -> MerkleTree:
    """The tree of the stored leaf hashes, checked against the stored latest checkpoint."""
    if stored_origin != origin:
        raise AuditUnavailable(f"the audit store holds shard {stored_origin!r}, not {origin!r}")
    if count != next_index:
        raise LogInconsistent(
            f"the audit store holds {count} leaves but its highest index is {next_index - 1}: "
            "rows were deleted; run `fedgate audit verify`. Refusing to sign"
        )
    try:
        tree = MerkleTree.from_leaf_hashes(hashes)
    except ValueError as exc:
        raise LogInconsistent(f"the audit store holds a damaged leaf hash: {exc}") from exc
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
    if tree.root() != cp.root_hash:
        raise LogInconsistent(
            f"the stored leaves do not hash to the root of the latest stored checkpoint (size "
            f"{cp.size}): the database was altered; run `fedgate audit verify`. Refusing to sign"
        )
    return tree


def check_state_file(path: Path, origin: str, tree: MerkleTree) -> None:
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
    if tree.root(cp.size) != cp.root_hash:
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
