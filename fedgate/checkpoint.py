"""C2SP checkpoints (c2sp.org/tlog-checkpoint) and Ed25519 cosignatures (c2sp.org/tlog-cosignature).

A checkpoint is the note text ``origin\\nsize\\nbase64(root)\\n`` plus optional extension lines,
signed by the log as a signed note. A witness cosignature is a note signature of type 0x04: key
id ``SHA-256(name || 0x0A || 0x04 || pubkey)[:4]``, signature ``8-byte big-endian timestamp ||
Ed25519(b"cosignature/v1\\ntime <T>\\n" + checkpoint body)``.

Malformed or unverifiable input raises :class:`fedgate.errors.VerificationError`; invalid values
given to constructors raise ``ValueError``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedgate.errors import VerificationError
from fedgate.keys import sign_bytes, verify_bytes
from fedgate.merkle import HASH_SIZE, MAX_TREE_SIZE
from fedgate.note import (
    SIGNATURE_PREFIX,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    SignerKey,
    VerifierKey,
    b64decode_strict,
    parse_note,
    sign_note,
    verify_note,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "MAX_TIMESTAMP",
    "Checkpoint",
    "CheckpointSigner",
    "CosignatureSigner",
    "CosignatureVerifier",
    "cosignature_message",
    "cosignatures_in",
    "open_checkpoint",
    "parse_checkpoint",
    "sign_checkpoint",
    "verify_cosignatures",
]

ALG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = (1 << 63) - 1
_TIMESTAMP_SIZE = 8
_COSIGNATURE_SIZE = _TIMESTAMP_SIZE + 64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _check_line(value: str, what: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(c < " " for c in value):
        raise ValueError(f"{what} must not contain newlines or control characters")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError(f"checkpoint size {self.size} is not a uint64")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        for ext in self.extensions:
            _check_line(ext, "checkpoint extension line")

    def marshal(self) -> str:
        """The note text: ``origin\\n<size>\\n<base64 root>\\n`` then one line per extension."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        head = f"{self.origin}\n{self.size}\n{root}\n"
        return head + "".join(ext + "\n" for ext in self.extensions)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (no signatures); strict, raises ``VerificationError``."""
    if not text.endswith("\n"):
        raise VerificationError("malformed checkpoint: text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise VerificationError("malformed checkpoint: fewer than three lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise VerificationError("malformed checkpoint: empty origin")
    if not _DECIMAL.fullmatch(size_text):
        raise VerificationError(
            f"malformed checkpoint: size {size_text!r} is not a decimal without leading zeroes"
        )
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise VerificationError(f"malformed checkpoint: size {size} does not fit in 64 bits")
    try:
        root = b64decode_strict(root_text)
    except ValueError as exc:
        raise VerificationError(f"malformed checkpoint: root hash: {exc}") from exc
    if len(root) != HASH_SIZE:
        raise VerificationError(
            f"malformed checkpoint: root hash is {len(root)} bytes, not {HASH_SIZE}"
        )
    if any(not ext for ext in extensions):
        raise VerificationError("malformed checkpoint: empty extension line")
    try:
        return Checkpoint(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))
    except ValueError as exc:  # control characters
        raise VerificationError(f"malformed checkpoint: {exc}") from exc


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """The checkpoint as a note signed by the log's key."""
    return sign_note(cp.marshal(), [signer])


class CheckpointSigner:
    """Signs the checkpoints of one origin with one key: ``sign(size, root)`` is byte for byte
    ``sign_checkpoint(Checkpoint(origin, size, root), signer)``.

    For a log that signs a checkpoint at every group commit: the signature line's prefix is
    built once here, and the origin checked once (the key's name was checked by the
    ``NoteSigner``), so each checkpoint is its text, one Ed25519 signature and one line
    (``sign_checkpoint`` re-checks them every time, ~13 µs of ~38 per checkpoint). The
    constructor signs one checkpoint both ways and raises ``ValueError`` unless the notes are
    the same, so a drift between the two writers fails at start-up, not in a receipt. Raises
    ``ValueError`` (or ``VerificationError``, from ``sign_checkpoint``) for a bad origin, size
    or root.
    """

    __slots__ = ("_head", "_origin", "_sign")

    def __init__(self, origin: str, signer: NoteSigner) -> None:
        self._origin = origin
        self._sign = signer.sign
        self._head = (f"{SIGNATURE_PREFIX}{signer.name} ", signer.key_hash)
        zero = bytes(HASH_SIZE)
        # ``Checkpoint`` checks the origin (before ``sign`` could encode a bad one).
        expected = sign_checkpoint(Checkpoint(origin, 0, zero), signer)
        if self.sign(0, zero) != expected:
            raise ValueError(
                f"checkpoint signer for {origin!r}: its note differs from sign_checkpoint's"
            )

    def sign(self, size: int, root: bytes) -> str:
        """The signed note of the checkpoint ``(origin, size, root)``."""
        if not 0 <= size <= MAX_TREE_SIZE or len(root) != HASH_SIZE:
            raise ValueError(f"no checkpoint of size {size} with a {len(root)}-byte root")
        text = f"{self._origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"
        prefix, key_hash = self._head
        signature = base64.b64encode(key_hash + self._sign(text.encode())).decode("ascii")
        return f"{text}\n{prefix}{signature}\n"


def open_checkpoint(
    note: str, log_verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify the log's signature on a checkpoint note and parse its text.

    Other signatures (witness cosignatures, rotated keys) are ignored. With ``origin``, the
    checkpoint MUST carry that origin. Raises ``VerificationError``.
    """
    parsed, _ = verify_note(note, [log_verifier])
    cp = parse_checkpoint(parsed.text)
    if origin is not None and cp.origin != origin:
        raise VerificationError(
            f"checkpoint origin {cp.origin!r} is not the expected origin {origin!r}"
        )
    return cp


def cosignature_message(checkpoint_body: str, timestamp: int) -> bytes:
    """The bytes an Ed25519 cosigner signs: ``cosignature/v1\\ntime <T>\\n`` + body."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_body}".encode()


class CosignatureSigner(SignerKey):
    """A witness key producing timestamped Ed25519 cosignatures (signature type 0x04)."""

    __slots__ = ()
    ALG = ALG_COSIGNATURE_V1

    def cosign(self, checkpoint_body: str, *, timestamp: int) -> NoteSignature:
        """Cosign a checkpoint body (the note text) at ``timestamp`` (POSIX seconds).

        The caller MUST have checked the checkpoint's consistency with the last one it cosigned
        for this origin. Raises ``VerificationError`` if the body is not a checkpoint and
        ``ValueError`` if the timestamp is outside ``[0, 2^63 - 1]``.
        """
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise ValueError(f"cosignature timestamp {timestamp} is outside [0, 2^63 - 1]")
        parse_checkpoint(checkpoint_body)
        signature = sign_bytes(self._private_key, cosignature_message(checkpoint_body, timestamp))
        return NoteSignature(
            name=self.name,
            key_hash=self.key_hash,
            signature=timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature,
        )

    def verifier(self) -> CosignatureVerifier:
        """The verifier for this cosigner's key."""
        return CosignatureVerifier(name=self.name, public_key=self._private_key.public_key())


class CosignatureVerifier(VerifierKey):
    """Verifies one witness's timestamped Ed25519 cosignatures (signature type 0x04)."""

    __slots__ = ()
    ALG = ALG_COSIGNATURE_V1

    def verify(self, checkpoint_body: str, sig: NoteSignature) -> int:
        """Verify ``sig`` over ``checkpoint_body`` and return its timestamp.

        Raises ``VerificationError`` if the signature is not from this key, is malformed, does
        not verify, or if the body is not a checkpoint.
        """
        if (sig.name, sig.key_hash) != (self.name, self.key_hash):
            raise VerificationError(
                f"cosignature by {sig.name}+{sig.key_hash.hex()} is not from "
                f"{self.name}+{self.key_hash.hex()}"
            )
        if len(sig.signature) != _COSIGNATURE_SIZE:
            raise VerificationError(
                f"cosignature of {self.name} is {len(sig.signature)} bytes, not {_COSIGNATURE_SIZE}"
            )
        timestamp = int.from_bytes(sig.signature[:_TIMESTAMP_SIZE], "big")
        if timestamp > MAX_TIMESTAMP:
            raise VerificationError(f"cosignature of {self.name} has timestamp above 2^63 - 1")
        parse_checkpoint(checkpoint_body)
        message = cosignature_message(checkpoint_body, timestamp)
        if not verify_bytes(self._public_key, sig.signature[_TIMESTAMP_SIZE:], message):
            raise VerificationError(f"invalid cosignature by {self.name}")
        return timestamp


def cosignatures_in(note: str, verifiers: Sequence[CosignatureVerifier]) -> dict[str, int]:
    """Witness name -> timestamp for each valid cosignature in ``note`` from ``verifiers``.

    Nothing else in the note is verified (open the checkpoint with the log's key for that).
    Lines from other keys are ignored; a cosignature from a known key that fails to verify
    counts for nothing (so it cannot help reach a quorum). When a witness appears more than once
    the latest valid timestamp wins. Raises ``VerificationError`` if the note is malformed or
    its text is not a checkpoint.
    """
    parsed = parse_note(note)
    parse_checkpoint(parsed.text)
    by_key = {(v.name, v.key_hash): v for v in verifiers}
    found: dict[str, int] = {}
    for sig in parsed.signatures:
        verifier = by_key.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        try:
            timestamp = verifier.verify(parsed.text, sig)
        except VerificationError:
            continue
        if timestamp > found.get(sig.name, -1):
            found[sig.name] = timestamp
    return found


def verify_cosignatures(note: str, verifiers: Sequence[CosignatureVerifier]) -> dict[str, int]:
    """Witness name -> timestamp of each cosignature in ``note`` from ``verifiers``, with
    signed-note semantics: a signature by a known key (name and key hash of a verifier) that
    does not verify is an error, never "counts for nothing".

    Lines from unknown keys are ignored (the log's own signature among them). Raises
    ``VerificationError`` if the note is malformed, its text is not a checkpoint, or a known
    witness's cosignature fails.
    """
    parsed = parse_note(note)
    parse_checkpoint(parsed.text)
    by_key = {(v.name, v.key_hash): v for v in verifiers}
    found: dict[str, int] = {}
    for sig in parsed.signatures:
        verifier = by_key.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        try:
            timestamp = verifier.verify(parsed.text, sig)
        except VerificationError as exc:
            raise VerificationError(
                f"the cosignature of witness {sig.name} does not verify: {exc.message}"
            ) from exc
        found[sig.name] = max(timestamp, found.get(sig.name, -1))
    return found
