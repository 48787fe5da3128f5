"""Sealed envelopes: how a leaf refers to a signed envelope kept encrypted beside the log.

A gateway with a key-encryption key stores each signed envelope (request or response) outside
the leaf, encrypted under its case's data key, and puts in the leaf only a reference::

    b"fedgate-sealed/v1:" || SHA-256(envelope bytes)

so the Merkle tree, checkpoints and receipts commit to the envelope without holding it. Anyone
holding the envelope bytes (an auditor after a reveal, an evidence bundle) checks them against
the reference with ``matches``; a verifier without them knows the leaf is sealed and says so.
"""

from __future__ import annotations

import hashlib

__all__ = ["SEALED_MAGIC", "matches", "seal_reference", "sealed_digest"]

SEALED_MAGIC = b"fedgate-sealed/v1:"
_DIGEST_SIZE = 32


def seal_reference(envelope: bytes) -> bytes:
    """The reference a sealed leaf holds in place of ``envelope``."""
    return SEALED_MAGIC + hashlib.sha256(envelope).digest()


def sealed_digest(field: bytes) -> bytes | None:
    """The SHA-256 in a sealed reference, or ``None`` when ``field`` is not one (a leaf written
    without sealing holds the envelope itself)."""
    if len(field) == len(SEALED_MAGIC) + _DIGEST_SIZE and field.startswith(SEALED_MAGIC):
        return field[len(SEALED_MAGIC) :]
    return None


def matches(field: bytes, envelope: bytes) -> bool:
    """True when ``field`` is the sealed reference of ``envelope``."""
    return sealed_digest(field) == hashlib.sha256(envelope).digest()
