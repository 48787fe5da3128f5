"""C2SP transparency-log proofs (c2sp.org/tlog-proof@v1), the ``.tlog-proof`` text format.

::

    c2sp.org/tlog-proof@v1
    extra <base64 opaque data>          (optional, at most one line)
    index <decimal leaf index>
    <base64 inclusion proof hash>       (zero or more, leaf's sibling first)

    <signed checkpoint note, verbatim, with any cosignatures>

The extra data is not authenticated: applications MUST NOT trust it. Parsing is strict and
raises :class:`fedgate.errors.VerificationError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedgate.checkpoint import Checkpoint, open_checkpoint
from fedgate.errors import VerificationError
from fedgate.merkle import HASH_SIZE, MAX_TREE_SIZE, leaf_hash, verify_inclusion
from fedgate.note import NoteVerifier, b64decode_strict, parse_note

__all__ = [
    "HEADER",
    "TlogProof",
    "marshal_tlog_proof",
    "parse_tlog_proof",
    "verify_tlog_proof",
    "verify_tlog_proof_hash",
]

HEADER = "c2sp.org/tlog-proof@v1"
_MAX_PROOF_HASHES = 64  # a tree of at most 2^64 leaves needs at most 64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A leaf index, its inclusion proof, and the signed checkpoint note it leads to.

    ``extra`` holds the base64 text of the optional ``extra`` line as written (at most one
    element, per the spec); :attr:`extra_data` decodes it. Construction raises ``ValueError``
    on values the format cannot carry.
    """

    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: str
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.index <= MAX_TREE_SIZE:
            raise ValueError(f"index {self.index} is not a uint64")
        if len(self.proof) > _MAX_PROOF_HASHES:
            raise ValueError(f"an inclusion proof has at most {_MAX_PROOF_HASHES} hashes")
        for i, h in enumerate(self.proof):
            if len(h) != HASH_SIZE:
                raise ValueError(f"proof hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
        if len(self.extra) > 1:
            raise ValueError("a tlog-proof carries at most one extra line")
        for e in self.extra:
            b64decode_strict(e)
        if not self.checkpoint_note:
            raise ValueError("checkpoint note must not be empty")

    @classmethod
    def with_extra_data(
        cls, index: int, proof: Sequence[bytes], checkpoint_note: str, extra_data: bytes
    ) -> TlogProof:
        """A proof whose ``extra`` line carries ``extra_data``."""
        encoded = base64.b64encode(extra_data).decode("ascii")
        return cls(
            index=index, proof=tuple(proof), checkpoint_note=checkpoint_note, extra=(encoded,)
        )

    @property
    def extra_data(self) -> bytes | None:
        """The decoded extra data, or ``None`` without an extra line. Not authenticated."""
        return b64decode_strict(self.extra[0]) if self.extra else None

    def marshal(self) -> str:
        """The ``.tlog-proof`` text."""
        return marshal_tlog_proof(self.index, self.proof, self.checkpoint_note, self.extra)


def marshal_tlog_proof(
    index: int, proof: Sequence[bytes], checkpoint_note: str, extra: Sequence[str] = ()
) -> str:
    """The ``.tlog-proof`` text of values already valid (``TlogProof`` checks them; a log
    writing the proofs of its own tree needs no check, and skips the object)."""
    parts = [HEADER + "\n"]
    parts.extend(f"extra {e}\n" for e in extra)
    parts.append(f"index {index}\n")
    parts.extend(base64.b64encode(h).decode("ascii") + "\n" for h in proof)
    parts.append("\n")
    parts.append(checkpoint_note)
    return "".join(parts)


def parse_tlog_proof(text: str) -> TlogProof:
    """Parse a ``.tlog-proof`` text; the checkpoint note is checked for form, not signatures.

    Raises ``VerificationError`` on any deviation from the format.
    """
    pos = 0

    def next_line() -> str:
        nonlocal pos
        end = text.find("\n", pos)
        if end < 0:
            raise VerificationError("malformed tlog-proof: truncated before the checkpoint")
        line = text[pos:end]
        pos = end + 1
        return line

    if next_line() != HEADER:
        raise VerificationError(f"malformed tlog-proof: first line is not {HEADER!r}")
    line = next_line()
    extra: tuple[str, ...] = ()
    if line.startswith("extra "):
        encoded = line[len("extra ") :]
        try:
            b64decode_strict(encoded)
        except ValueError as exc:
            raise VerificationError(f"malformed tlog-proof: extra data: {exc}") from exc
        extra = (encoded,)
        line = next_line()
    index_text = line.removeprefix("index ")
    if index_text == line:
        raise VerificationError("malformed tlog-proof: missing the index line")
    if not _DECIMAL.fullmatch(index_text):
        raise VerificationError(
            f"malformed tlog-proof: index {index_text!r} is not a decimal without leading zeroes"
        )
    index = int(index_text)
    if index > MAX_TREE_SIZE:
        raise VerificationError(f"malformed tlog-proof: index {index} does not fit in 64 bits")
    hashes: list[bytes] = []
    while line := next_line():
        if len(hashes) == _MAX_PROOF_HASHES:
            raise VerificationError(
                f"malformed tlog-proof: more than {_MAX_PROOF_HASHES} proof hashes"
            )
        try:
            h = b64decode_strict(line)
        except ValueError as exc:
            raise VerificationError(f"malformed tlog-proof: proof hash: {exc}") from exc
        if len(h) != HASH_SIZE:
            raise VerificationError(
                f"malformed tlog-proof: proof hash is {len(h)} bytes, not {HASH_SIZE}"
            )
        hashes.append(h)
    checkpoint_note = text[pos:]
    parse_note(checkpoint_note)
    return TlogProof(index=index, proof=tuple(hashes), checkpoint_note=checkpoint_note, extra=extra)


def verify_tlog_proof_hash(
    p: TlogProof, leaf: bytes, log_verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Like :func:`verify_tlog_proof` for a leaf given by its leaf hash."""
    cp = open_checkpoint(p.checkpoint_note, log_verifier, origin=origin)
    verify_inclusion(leaf, p.index, cp.size, p.proof, cp.root_hash)
    return cp


def verify_tlog_proof(
    p: TlogProof, leaf_data: bytes, log_verifier: NoteVerifier, *, origin: str | None = None
) -> Checkpoint:
    """Verify the log's signature on the checkpoint and the inclusion of ``leaf_data``.

    Returns the verified checkpoint. Witness cosignatures are not checked here (use
    :func:`fedgate.checkpoint.cosignatures_in` on ``p.checkpoint_note``); with ``origin`` the
    checkpoint MUST carry that origin. Raises ``VerificationError``.
    """
    return verify_tlog_proof_hash(p, leaf_hash(leaf_data), log_verifier, origin=origin)
