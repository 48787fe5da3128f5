"""Witness cosignatures for the audit log's checkpoints, gathered in the background.

After each commit the log wakes ``Witnessing``; it asks every witness to cosign the latest
checkpoint (with a consistency proof from the size that witness last cosigned), stores the
cosigned note and publishes it. Appends never wait for it; a failing witness is logged and
remembered in ``errors``, and a witness that already cosigned a larger size than the log's
reveals a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from fedgate.checkpoint import cosignatures_in
from fedgate.errors import FedgateError, VerificationError
from fedgate.merkle import MerkleTree
from fedgate.note import NoteSignature, add_signatures, parse_note
from fedgate.witness import WitnessClient, WitnessConflict

__all__ = ["CosignedStore", "Witnessing"]

# The log's own logger: operators configure it by that name.
logger = logging.getLogger("gateway.audit.log")

_WITNESS_TIMEOUT_S = 10.0


class CosignedStore(Protocol):
    """Where cosigned checkpoints are kept (an ``AuditStore``, or the risk list's store)."""

    async def add_cosigned(self, size: int, note: str) -> None: ...


class Witnessing:
    """The witnesses of one log, what each last cosigned, and the latest cosigned checkpoint.

    ``tree`` returns the log's current tree (it is replaced when the log recovers from a failed
    commit); ``published`` / ``published_size`` are the newest cosigned checkpoint and its size.
    """

    def __init__(
        self,
        *,
        origin: str,
        store: CosignedStore,
        witnesses: Sequence[WitnessClient],
        tree: Callable[[], MerkleTree],
        published: str | None,
        published_size: int,
    ) -> None:
        self.witnesses = tuple(witnesses)
        self.sizes: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.published = published
        self.published_size = published_size
        self.wake = asyncio.Event()
        self._origin = origin
        self._store = store
        self._tree = tree

    def seed(self, cosigned: str, size: int) -> None:
        """Record ``size`` for each witness whose cosignature ``cosigned`` carries."""
        for w in self.witnesses:
            with contextlib.suppress(VerificationError):
                if w.verifier.name in cosignatures_in(cosigned, [w.verifier]):
                    self.sizes[w.verifier.name] = size

    async def run(self, latest: Callable[[], tuple[int, str]]) -> None:
        """Ask for cosignatures of ``latest()`` (size, note) whenever woken."""
        if not self.witnesses:
            return
        while True:
            await self.wake.wait()
            self.wake.clear()
            size, note = latest()
            if size == self.published_size and self.published is not None:
                continue
            try:
                await self._gather(size, note)
            except Exception:  # keep witnessing; one bad round must not end the task
                logger.exception(
                    "audit log %s: witness round for size %d failed", self._origin, size
                )

    async def _gather(self, size: int, note: str) -> None:
        results = await asyncio.gather(*(self._ask(w, size, note) for w in self.witnesses))
        lines = [sig for sig in results if sig is not None]
        if not lines:
            return
        cosigned = add_signatures(note, lines)
        try:
            await self._store.add_cosigned(size, cosigned)
        except FedgateError as exc:
            logger.error(
                "audit log %s: cannot store a cosigned checkpoint: %s", self._origin, exc.message
            )
        if size >= self.published_size:
            self.published, self.published_size = cosigned, size

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
