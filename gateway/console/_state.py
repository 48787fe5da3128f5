"""The log's state as the auditor console shows it, and the console's own consistency check.

``LogWatch`` reads the log's latest checkpoint, checks its signature with the gateway's keys
from the member registry, reads the witness cosignatures on it (and on the latest cosigned
checkpoint), and checks with an RFC 9162 consistency proof that it extends the last checkpoint
the console saw. That last checkpoint is kept in a file in the console's state directory, so
the check spans restarts like a witness's; on first use it starts from the latest
witness-cosigned checkpoint, else from the checkpoint the log stored before its latest.

Contract:

- The remembered checkpoint MUST only advance after a successful consistency check: a log that
  was rolled back or forked keeps failing the check until someone looks.
- A result is computed once per checkpoint the console sees and then served from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from fedgate.checkpoint import Checkpoint, cosignatures_in, open_checkpoint
from fedgate.errors import FedgateError, VerificationError
from fedgate.evidence import log_verifiers, witness_verifiers
from fedgate.files import write_atomically
from fedgate.merkle import verify_consistency
from fedgate.registry import Registry
from gateway.audit.insights import LogInsights
from gateway.audit.reader import LogView

__all__ = [
    "SEEN_FILE",
    "Consistency",
    "LogState",
    "LogWatch",
    "WitnessState",
    "verify_checkpoint",
]

SEEN_FILE: Final = "auditor-console-checkpoint"
"""The last checkpoint the console checked, in its state directory."""

log = logging.getLogger("fedgate.gateway.console")


def verify_checkpoint(note: str, registry: Registry, origin: str) -> Checkpoint:
    """The checkpoint in ``note`` if a gateway key in ``registry`` signed it for ``origin``.
    Raises ``VerificationError``."""
    failure = "the registry lists no gateway key"
    for verifier in log_verifiers(registry, origin):
        try:
            return open_checkpoint(note, verifier, origin=origin)
        except VerificationError as exc:
            failure = exc.message
    raise VerificationError(f"the checkpoint is not signed by the log's key: {failure}")


@dataclass(frozen=True, slots=True)
class Consistency:
    """One consistency check from ``old_size`` to ``new_size`` (``old_size`` -1: nothing to
    compare with yet)."""

    old_size: int
    new_size: int
    ok: bool
    detail: str
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class WitnessState:
    """A registry witness: the largest checkpoint size its valid cosignature is on (0 if none)
    and when it cosigned, and the log's last error talking to it."""

    name: str
    size: int
    cosigned_at: datetime | None
    error: str


@dataclass(frozen=True, slots=True)
class LogState:
    origin: str
    size: int
    note: str
    checkpoint: Checkpoint | None
    signature_error: str
    witnesses: tuple[WitnessState, ...]
    cosigned_size: int
    consistency: Consistency | None


class LogWatch:
    """Reads and checks the state of one log for the console (see the module docstring);
    ``seen_file`` names its file in ``state_dir`` (one per shard the console reads)."""

    def __init__(
        self,
        *,
        log: LogView,
        insights: LogInsights,
        registry: Callable[[], Registry],
        state_dir: Path,
        clock: Callable[[], datetime] | None = None,
        seen_file: str = SEEN_FILE,
    ) -> None:
        self._log = log
        self._insights = insights
        self._registry = registry
        self._path = Path(state_dir) / seen_file
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        self._seen: Checkpoint | None = None
        self._loaded = False
        self._last: Consistency | None = None
        self._last_root = b""

    async def _load_seen(self, registry: Registry, latest: Checkpoint) -> None:
        self._loaded = True
        note: str | None = None
        try:
            note = await asyncio.to_thread(self._path.read_text, "utf-8")
        except FileNotFoundError:
            note = self._log.latest_cosigned_checkpoint()
            if note is None or self._log.latest_cosigned_size() >= latest.size:
                before = await self._insights.checkpoint_before(latest.size)
                note = before[1] if before is not None else None
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read %s: %s", self._path, exc)
        if note is None:
            return
        try:
            self._seen = verify_checkpoint(note, registry, self._log.origin)
        except VerificationError as exc:
            log.error("ignoring the remembered checkpoint %s: %s", self._path, exc.message)

    async def _check(self, cp: Checkpoint, note: str) -> Consistency:
        now = self._clock()
        seen = self._seen
        if seen is not None:
            try:
                proof = self._log.consistency_proof(seen.size, cp.size)
                verify_consistency(seen.size, cp.size, proof, seen.root_hash, cp.root_hash)
            except FedgateError as exc:
                log.error(
                    "audit log %s: checkpoint %d does not extend %d: %s",
                    cp.origin,
                    cp.size,
                    seen.size,
                    exc.message,
                )
                return Consistency(seen.size, cp.size, False, exc.message, now)
        self._seen = cp
        try:
            await asyncio.to_thread(write_atomically, self._path, note.encode("utf-8"))
        except OSError as exc:
            log.error("cannot record the checked checkpoint in %s: %s", self._path, exc)
        return Consistency(-1 if seen is None else seen.size, cp.size, True, "", now)

    def _witnesses(self, registry: Registry, note: str, size: int) -> tuple[WitnessState, ...]:
        verifiers = witness_verifiers(registry)
        seen: dict[str, tuple[int, int]] = {}
        cosigned = self._log.latest_cosigned_checkpoint()
        for text, at_size in ((cosigned, self._log.latest_cosigned_size()), (note, size)):
            if text is None:
                continue
            with contextlib.suppress(VerificationError):
                for name, stamp in cosignatures_in(text, verifiers).items():
                    if at_size >= seen.get(name, (-1, 0))[0]:
                        seen[name] = (at_size, stamp)
        errors = self._log.witness_errors
        names = sorted({v.name for v in verifiers})
        return tuple(
            WitnessState(
                name,
                seen.get(name, (0, 0))[0],
                datetime.fromtimestamp(seen[name][1], UTC) if name in seen else None,
                errors.get(name, ""),
            )
            for name in names
        )

    async def state(self) -> LogState:
        """The log's state now, with the consistency check (run once per new checkpoint)."""
        registry = self._registry()
        note = self._log.latest_checkpoint()
        origin = self._log.origin
        try:
            cp: Checkpoint | None = verify_checkpoint(note, registry, origin)
            error = ""
        except VerificationError as exc:
            cp, error = None, exc.message
        consistency: Consistency | None = None
        if cp is not None:
            async with self._lock:
                if not self._loaded:
                    await self._load_seen(registry, cp)
                last = self._last
                if last is None or last.new_size != cp.size or self._last_root != cp.root_hash:
                    last = await self._check(cp, note)
                    self._last, self._last_root = last, cp.root_hash
                consistency = last
        return LogState(
            origin=origin,
            size=cp.size if cp is not None else self._log.size,
            note=note,
            checkpoint=cp,
            signature_error=error,
            witnesses=self._witnesses(registry, note, cp.size if cp is not None else 0),
            cosigned_size=self._log.latest_cosigned_size(),
            consistency=consistency,
        )
