"""Witness cosignatures for the audit log's checkpoints, gathered in the background.

After each commit the log wakes ``Witnessing``; each witness, followed on its own, is asked to
cosign the latest checkpoint (with a consistency proof from the size that witness last
cosigned), and the cosigned note is published as soon as it answers, then stored. Appends never
wait for it; a failing witness is logged and remembered in ``errors``, and a witness that
already cosigned a larger size than the log's reveals a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from fedgate.checkpoint import cosignatures_in, parse_checkpoint
from fedgate.cosigned import compare_log
from fedgate.errors import FedgateError, LogInconsistent, VerificationError
from fedgate.merkle import MerkleProofs
from fedgate.note import NoteSignature, add_signatures, parse_note
from fedgate.witness import WitnessClient, WitnessConflict

__all__ = ["CosignedStore", "Witnessing", "check_witness_views"]

# The log's own logger: operators configure it by that name.
logger = logging.getLogger("gateway.audit.log")

_WITNESS_TIMEOUT_S = 10.0
_VIEW_TIMEOUT_S = 5.0


async def check_witness_views(
    witnesses: Sequence[WitnessClient], origin: str, tree: MerkleProofs
) -> dict[str, int]:
    """Compare the stored tree with each witness's latest cosigned checkpoint (at open).

    A witness that cosigned a larger size, or another root at its size, proves the store was
    rolled back or rewritten even when the state file was restored with it: raises
    ``LogInconsistent``. A witness that cannot be asked now is logged and skipped (the
    witnesses catch a rollback anyway when they are next asked to cosign). Returns the size
    each answering witness had cosigned.
    """

    async def ask(w: WitnessClient) -> tuple[str, str | BaseException | None]:
        try:
            return w.verifier.name, await asyncio.wait_for(
                w.latest_checkpoint(origin), _VIEW_TIMEOUT_S
            )
        except (FedgateError, TimeoutError, OSError) as exc:
            return w.verifier.name, exc

    views: dict[str, int] = {}
    for name, view in await asyncio.gather(*(ask(w) for w in witnesses)):
        if isinstance(view, BaseException):
            logger.warning(
                "audit log %s: cannot ask witness %s for its latest checkpoint: %s",
                origin,
                name,
                view,
            )
            continue
        if view is None:
            continue
        try:
            # The witness's cosignature was checked by its client, and a witness cosigns only
            # checkpoints signed by the log: no log key is needed (it may have been rotated).
            cp = parse_checkpoint(parse_note(view).text)
            if cp.origin != origin:
                raise VerificationError(f"witness {name} answered for the log {cp.origin!r}")
            # Off the loop: the root at an older size may be read from the stored tiles.
            await asyncio.to_thread(
                compare_log, cp, size=tree.size, root_at=tree.root, source=f"witness {name}"
            )
        except VerificationError as exc:
            raise LogInconsistent(f"{exc.message}. Refusing to sign") from exc
        views[name] = cp.size
    return views


class CosignedStore(Protocol):
    """Where cosigned checkpoints are kept (an ``AuditStore``, or the risk list's store)."""

    async def add_cosigned(self, size: int, note: str) -> None: ...


class _Wake:
    """``set()`` wakes every follower of a ``Witnessing`` (one event each)."""

    def __init__(self) -> None:
        self.events: list[asyncio.Event] = []

    def set(self) -> None:
        for event in self.events:
            event.set()


class Witnessing:
    """The witnesses of one log, what each last cosigned, and the latest cosigned checkpoint.

    ``tree`` returns the log's current tree (it is replaced when the log recovers from a failed
    commit); ``published`` / ``published_size`` are the newest cosigned checkpoint and its size.

    Each witness is followed by its own task: when woken it asks that witness to cosign the
    latest checkpoint, and publishes the checkpoint with every cosignature gathered for its
    size as soon as the witness answers. A slow or failing witness therefore never delays the
    others' cosignatures, and no round waits for the slowest witness (the latency of a
    cosigned checkpoint is the commit plus the fastest witness, not the slowest). Cosigned
    notes are stored by a separate task, newest first, so storing (a commit of its own) never
    delays the next request to a witness.
    """

    def __init__(
        self,
        *,
        origin: str,
        store: CosignedStore,
        witnesses: Sequence[WitnessClient],
        tree: Callable[[], MerkleProofs],
        published: str | None,
        published_size: int,
    ) -> None:
        self.witnesses = tuple(witnesses)
        self.sizes: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.published = published
        self.published_size = published_size
        self.wake = _Wake()
        self.published_changed = asyncio.Condition()
        """Notified whenever ``published`` changes."""
        self._origin = origin
        self._store = store
        self._tree = tree
        self._signed: dict[str, tuple[int, NoteSignature]] = {}
        """Each witness's cosignature gathered by this process, with its size."""
        self._published_lines = 0
        self._unstored: tuple[int, str] | None = None
        self._store_wake = asyncio.Event()

    def seed(self, cosigned: str, size: int) -> None:
        """Record ``size`` for each witness whose cosignature ``cosigned`` carries."""
        for w in self.witnesses:
            with contextlib.suppress(VerificationError):
                if w.verifier.name in cosignatures_in(cosigned, [w.verifier]):
                    self.sizes[w.verifier.name] = size

    async def run(self, latest: Callable[[], tuple[int, str]]) -> None:
        """Follow every witness, asking each to cosign ``latest()`` (size, note) whenever
        woken, and store what they cosign; runs until cancelled."""
        if not self.witnesses:
            return
        events = [asyncio.Event() for _ in self.witnesses]
        self.wake.events[:] = events
        for event in events:
            event.set()  # a round at start: the latest checkpoint may not be cosigned yet
        tasks = [
            asyncio.create_task(self._follow(w, event, latest), name=f"witness-{w.verifier.name}")
            for w, event in zip(self.witnesses, events, strict=True)
        ]
        tasks.append(asyncio.create_task(self._store_cosigned(), name="witness-store"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._unstored is not None:  # at close: keep the newest cosigned note
                size, cosigned = self._unstored
                self._unstored = None
                with contextlib.suppress(FedgateError):
                    await self._store.add_cosigned(size, cosigned)

    async def _follow(
        self,
        witness: WitnessClient,
        event: asyncio.Event,
        latest: Callable[[], tuple[int, str]],
    ) -> None:
        name = witness.verifier.name
        while True:
            await event.wait()
            event.clear()
            size, note = latest()
            signed = self._signed.get(name)
            if signed is not None and signed[0] >= size:
                continue
            try:
                sig = await self._ask(witness, size, note)
                if sig is not None:
                    self._signed[name] = (size, sig)
                    await self._publish(size, note)
            except Exception:  # keep witnessing; one bad round must not end the task
                logger.exception(
                    "audit log %s: witness %s round for size %d failed", self._origin, name, size
                )

    async def _publish(self, size: int, note: str) -> None:
        """Publish ``note`` with every cosignature gathered at ``size``, if that is news: a
        larger size, or more cosignatures for the published size."""
        lines = [sig for s, sig in self._signed.values() if s == size]
        if size < self.published_size or (
            size == self.published_size and len(lines) <= self._published_lines
        ):
            return
        cosigned = add_signatures(note, lines)
        # Published before it is stored: the cosignatures are valid whether or not the store
        # keeps them, and callers waiting for a cosigned checkpoint need not wait for an fsync.
        self.published, self.published_size = cosigned, size
        self._published_lines = len(lines)
        self._unstored = (size, cosigned)
        self._store_wake.set()
        async with self.published_changed:
            self.published_changed.notify_all()

    async def _store_cosigned(self) -> None:
        """Store the newest published cosigned note whenever there is one (older ones that
        were replaced before their turn are skipped: the newest covers them)."""
        while True:
            await self._store_wake.wait()
            self._store_wake.clear()
            if self._unstored is None:
                continue
            size, cosigned = self._unstored
            self._unstored = None
            try:
                await self._store.add_cosigned(size, cosigned)
            except asyncio.CancelledError:
                # Closing while it is stored: hand it back so the close stores it (after the
                # interrupted write, on the same writer thread) instead of losing the newest.
                if self._unstored is None:
                    self._unstored = (size, cosigned)
                raise
            except FedgateError as exc:
                logger.error(
                    "audit log %s: cannot store a cosigned checkpoint: %s",
                    self._origin,
                    exc.message,
                )

    async def _ask(self, witness: WitnessClient, size: int, note: str) -> NoteSignature | None:
        name = witness.verifier.name
        old = self.sizes.get(name, 0)
        body = parse_note(note).text
        for _ in range(2):
            if old > size:
                self.errors[name] = (
                    f"witness {name} has cosigned size {old}, more than this log's {size}: the "
                    "log was rolled back"
                )
                logger.error("audit log %s: %s", self._origin, self.errors[name])
                return None
            try:
                proof = self._tree().consistency_proof(old, size)
                sig = await asyncio.wait_for(
                    witness.add_checkpoint(old, proof, note), _WITNESS_TIMEOUT_S
                )
                witness.verifier.verify(body, sig)
            except WitnessConflict as exc:
                old = exc.size
                continue
            except (FedgateError, TimeoutError, OSError) as exc:
                message = exc.message if isinstance(exc, FedgateError) else repr(exc)
                self.errors[name] = message
                logger.warning(
                    "audit log %s: witness %s did not cosign size %d: %s",
                    self._origin,
                    name,
                    size,
                    message,
                )
                return None
            self.sizes[name] = size
            self.errors.pop(name, None)
            return sig
        return None
