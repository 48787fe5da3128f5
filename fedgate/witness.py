"""Witnessing: a witness cosigns a log's checkpoints only if they extend what it saw before.

``Witness`` is what the central bank's node and the audit office run: for each log origin it
knows the log's key and the last checkpoint it cosigned. Contract:

- ``add_checkpoint`` MUST verify the log's signature, and the consistency proof from the last
  cosigned checkpoint, before cosigning; it MUST refuse a smaller (rolled-back) or forked
  checkpoint with ``LogInconsistent``.
- The new state MUST be on disk (temp file, fsync, rename, fsync of the directory) before the
  cosignature is returned, so that a restarted witness never cosigns a fork of what it signed.

``WitnessServicer`` serves a ``Witness`` as ``WitnessService``; ``GrpcWitnessClient`` is the
gateway's side (a ``WitnessClient``). When the caller's idea of the witness's last size is
wrong the witness answers ``WitnessConflict`` carrying its size, and the caller retries with a
proof from there (the C2SP tlog-witness protocol does the same with HTTP 409).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.checkpoint import (
    CosignatureSigner,
    CosignatureVerifier,
    open_checkpoint,
    parse_checkpoint,
    verify_cosignatures,
)
from fedgate.errors import (
    FedgateError,
    InvalidArgument,
    LogInconsistent,
    NotFound,
    SignatureInvalid,
    VerificationError,
)
from fedgate.files import write_atomically
from fedgate.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from fedgate.note import NoteSignature, NoteVerifier, add_signatures, parse_note
from fedgate.status import abort_with, error_from_rpc
from fedgate.tileclient import Fetch, TileReader
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc

__all__ = [
    "STATE_FORMAT",
    "GrpcWitnessClient",
    "Witness",
    "WitnessClient",
    "WitnessConflict",
    "WitnessServicer",
]

STATE_FORMAT = "fedgate-witness-state/v1"
_CONFLICT_SIZE = re.compile(r"last cosigned size (\d+)")


class WitnessConflict(LogInconsistent):
    """The caller's ``old_size`` is not the size the witness last cosigned (``size``)."""

    reason = "WITNESS_CONFLICT"

    def __init__(self, message: str, *, size: int | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        if size is None:
            # Rebuilt from a gRPC status (fedgate.status.error_from_rpc): the size is in the text.
            found = _CONFLICT_SIZE.search(message)
            size = int(found.group(1)) if found else 0
        self.size = size


class WitnessClient(Protocol):
    """How the log reaches one witness. ``verifier`` is the witness's cosignature key."""

    @property
    def verifier(self) -> CosignatureVerifier: ...

    async def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: str
    ) -> NoteSignature: ...

    async def latest_checkpoint(self, origin: str) -> str | None:
        """The latest checkpoint the witness cosigned for ``origin``, with its cosignature
        checked (``None`` if it never cosigned one). Raises ``VerificationError`` for an
        answer that is not cosigned by this witness's key, ``FedgateError`` otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    root: bytes
    checkpoint: str


class Witness:
    """A witness's state for every log it watches, and its cosigning key.

    ``logs`` maps each origin to the log's checkpoint key. Raises ``LogInconsistent`` at
    construction if the state file exists but cannot be read (never start from scratch
    silently: that would let a log fork past this witness).
    """

    def __init__(
        self,
        *,
        name: str,
        private_key: Ed25519PrivateKey,
        state_path: Path,
        logs: Mapping[str, NoteVerifier],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cosigner = CosignatureSigner(name=name, private_key=private_key)
        self.name = name
        self._state_path = Path(state_path)
        self._logs = dict(logs)
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = self._read_state()

    @property
    def verifier(self) -> CosignatureVerifier:
        return self._cosigner.verifier()

    def last_cosigned(self, origin: str) -> tuple[int, bytes]:
        """The size and root of the last checkpoint cosigned for ``origin`` (0 and the empty
        root if none)."""
        seen = self._seen.get(origin)
        return (0, EMPTY_ROOT) if seen is None else (seen.size, seen.root)

    def _read_state(self) -> dict[str, _Seen]:
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LogInconsistent(
                f"witness {self.name}: cannot read {self._state_path}: {exc}"
            ) from exc
        try:
            doc = json.loads(raw)
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"format is not {STATE_FORMAT}")
            seen: dict[str, _Seen] = {}
            for origin, entry in doc["logs"].items():
                root = base64.b64decode(entry["root"], validate=True)
                if len(root) != HASH_SIZE or int(entry["size"]) < 0:
                    raise ValueError(f"bad state for {origin}")
                seen[str(origin)] = _Seen(int(entry["size"]), root, str(entry["checkpoint"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LogInconsistent(
                f"witness {self.name}: state file {self._state_path} is damaged ({exc}); "
                "restore it from a backup rather than starting afresh"
            ) from exc
        return seen

    def _write_state(self, seen: Mapping[str, _Seen]) -> None:
        doc = {
            "format": STATE_FORMAT,
            "logs": {
                origin: {
                    "size": s.size,
                    "root": base64.b64encode(s.root).decode("ascii"),
                    "checkpoint": s.checkpoint,
                }
                for origin, s in sorted(seen.items())
            },
        }
        write_atomically(self._state_path, json.dumps(doc, indent=1).encode() + b"\n")

    def add_checkpoint_sync(
        self, old_size: int, proof: Sequence[bytes], note: str
    ) -> NoteSignature:
        """Check and cosign ``note`` (blocking: it fsyncs the state file).

        Raises ``InvalidArgument`` for a note that is not a checkpoint, ``NotFound`` for a log
        this witness does not watch, ``SignatureInvalid`` without the log's signature,
        ``WitnessConflict`` when ``old_size`` is not the last cosigned size, and
        ``LogInconsistent`` for a rolled-back or forked checkpoint.
        """
        try:
            text = parse_note(note).text
            cp = parse_checkpoint(text)
        except VerificationError as exc:
            raise InvalidArgument(f"not a checkpoint note: {exc.message}") from exc
        verifier = self._logs.get(cp.origin)
        if verifier is None:
            raise NotFound(f"witness {self.name} does not witness the log {cp.origin!r}")
        try:
            open_checkpoint(note, verifier, origin=cp.origin)
        except VerificationError as exc:
            raise SignatureInvalid(
                f"checkpoint of {cp.origin} is not signed by the log's key: {exc.message}"
            ) from exc
        with self._lock:
            last_size, last_root = self.last_cosigned(cp.origin)
            if old_size != last_size:
                raise WitnessConflict(
                    f"witness {self.name}: old size {old_size} is not the last cosigned size "
                    f"{last_size} of {cp.origin}; retry with a proof from last cosigned size "
                    f"{last_size}",
                    size=last_size,
                )
            if cp.size < last_size:
                raise LogInconsistent(
                    f"witness {self.name} refuses checkpoint of size {cp.size} for {cp.origin}: "
                    f"it already cosigned size {last_size}, so the log was rolled back"
                )
            try:
                verify_consistency(last_size, cp.size, proof, last_root, cp.root_hash)
            except VerificationError as exc:
                raise LogInconsistent(
                    f"witness {self.name} refuses checkpoint of size {cp.size} for {cp.origin}: "
                    f"it is not consistent with size {last_size} cosigned before "
                    f"({exc.message}); the log forked or rewrote its history"
                ) from exc
            seen = dict(self._seen)
            seen[cp.origin] = _Seen(cp.size, cp.root_hash, note)
            self._write_state(seen)
            self._seen = seen
            return self._cosigner.cosign(text, timestamp=int(self._clock()))

    def add_checkpoint_from_tiles_sync(self, note: str, fetch: Fetch) -> NoteSignature:
        """Check and cosign ``note`` with a consistency proof this witness computes itself from
        the log's C2SP tiles (``fetch``), from the last size it cosigned: it trusts no proof
        the log sends. Raises as ``add_checkpoint_sync``, and ``VerificationError`` when the
        tiles served do not hash to the checkpoint's root (a bad server, not a fork)."""
        try:
            cp = parse_checkpoint(parse_note(note).text)
        except VerificationError as exc:
            raise InvalidArgument(f"not a checkpoint note: {exc.message}") from exc
        verifier = self._logs.get(cp.origin)
        if verifier is None:
            raise NotFound(f"witness {self.name} does not witness the log {cp.origin!r}")
        try:
            open_checkpoint(note, verifier, origin=cp.origin)
        except VerificationError as exc:
            raise SignatureInvalid(
                f"checkpoint of {cp.origin} is not signed by the log's key: {exc.message}"
            ) from exc
        last_size, _ = self.last_cosigned(cp.origin)
        proof: list[bytes] = []
        if 0 < last_size <= cp.size:
            # The tree at the new size, checked against its signed root; the proof is then
            # checked against the root this witness cosigned before, in add_checkpoint_sync.
            reader = TileReader(fetch, cp)
            proof = reader.tree.consistency_proof(last_size, cp.size)
        return self.add_checkpoint_sync(last_size, proof, note)

    async def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: str
    ) -> NoteSignature:
        """``add_checkpoint_sync`` on a worker thread; the witness is also a ``WitnessClient``."""
        return await asyncio.to_thread(self.add_checkpoint_sync, old_size, list(proof), note)

    def latest_note(self, origin: str) -> str | None:
        """The last checkpoint cosigned for ``origin`` as a note with this witness's
        cosignature (made now, over the same checkpoint), or ``None``."""
        seen = self._seen.get(origin)
        if seen is None:
            return None
        text = parse_note(seen.checkpoint).text
        return add_signatures(
            seen.checkpoint, [self._cosigner.cosign(text, timestamp=int(self._clock()))]
        )

    async def latest_checkpoint(self, origin: str) -> str | None:
        """``latest_note``; the witness is also a ``WitnessClient``."""
        return self.latest_note(origin)


class WitnessServicer(audit_service_pb2_grpc.WitnessServiceServicer):
    """``WitnessService`` over a ``Witness``. Errors go out as rich statuses."""

    def __init__(self, witness: Witness) -> None:
        self._witness = witness

    async def AddCheckpoint(
        self,
        request: audit_service_pb2.AddCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.AddCheckpointResponse:
        try:
            sig = await self._witness.add_checkpoint(
                request.old_size, list(request.consistency_proof), request.checkpoint
            )
        except FedgateError as exc:
            await abort_with(context, exc)
        return audit_service_pb2.AddCheckpointResponse(cosignature=sig.line().rstrip("\n"))

    async def GetLatestCheckpoint(
        self,
        request: audit_service_pb2.GetLatestCheckpointRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> audit_service_pb2.GetLatestCheckpointResponse:
        note = self._witness.latest_note(request.origin)
        if note is None:
            await abort_with(
                context,
                NotFound(f"witness {self._witness.name} never cosigned {request.origin!r}"),
            )
        return audit_service_pb2.GetLatestCheckpointResponse(checkpoint=note)


class GrpcWitnessClient:
    """A ``WitnessClient`` calling a remote ``WitnessService``.

    Raises the witness's errors as fedgate errors (``WitnessConflict`` with its size,
    ``LogInconsistent``, ...), and ``VerificationError`` when the answer is not a
    cosignature line from ``verifier``'s key.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        verifier: CosignatureVerifier,
        timeout_s: float = 10.0,
    ) -> None:
        self._stub = audit_service_pb2_grpc.WitnessServiceStub(channel)
        self._verifier = verifier
        self._timeout_s = timeout_s

    @property
    def verifier(self) -> CosignatureVerifier:
        return self._verifier

    async def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: str
    ) -> NoteSignature:
        request = audit_service_pb2.AddCheckpointRequest(
            old_size=old_size, consistency_proof=list(proof), checkpoint=note
        )
        try:
            response = await self._stub.AddCheckpoint(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        text = parse_note(note).text
        try:
            sig = parse_note(text + "\n" + response.cosignature + "\n").signatures[0]
        except VerificationError as exc:
            raise VerificationError(
                f"witness {self._verifier.name} answered a malformed cosignature: {exc.message}"
            ) from exc
        self._verifier.verify(text, sig)
        return sig

    async def latest_checkpoint(self, origin: str) -> str | None:
        request = audit_service_pb2.GetLatestCheckpointRequest(origin=origin)
        try:
            response = await self._stub.GetLatestCheckpoint(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_rpc(exc) from exc
        name = self._verifier.name
        if name not in verify_cosignatures(response.checkpoint, [self._verifier]):
            raise VerificationError(f"witness {name} answered a checkpoint it did not cosign")
        return response.checkpoint
