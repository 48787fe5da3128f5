"""What a witness-cosigned checkpoint proves, and the checks built on it.

A checkpoint the witnesses cosigned is the log's history as outsiders saw it: a log (or a copy
of it) that is smaller than it, or whose first entries do not hash to its root, was rolled back,
truncated or rewritten. Three users:

- ``fedgate audit verify`` compares the log with the newest cosigned checkpoint, fetched from
  the witnesses or given as a file (``check_log_against``);
- the gateway does the same at start-up with its witnesses' latest views, so restoring both its
  database and its state file is still caught;
- a police system upgrades a receipt with a cosigned checkpoint and a consistency proof from the
  receipt's checkpoint (``verify_cosigned_receipt``; ``FedgateClient.cosign_receipt`` fetches
  them).

Every function raises ``VerificationError`` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedgate import merkle
from fedgate.checkpoint import Checkpoint, parse_checkpoint
from fedgate.errors import VerificationError
from fedgate.evidence import check_witness_policy, log_verifiers
from fedgate.note import NoteVerifier, verify_note
from fedgate.registry import Registry
from fedgate.v1 import envelope_pb2

__all__ = [
    "CosignedReceipt",
    "check_log_against",
    "compare_log",
    "open_log_checkpoint",
    "verify_cosigned_receipt",
]


def open_log_checkpoint(note: str, *, origin: str, log_keys: Sequence[NoteVerifier]) -> Checkpoint:
    """The checkpoint in ``note`` if the log signed it (one of ``log_keys``) for ``origin``."""
    try:
        parsed, _ = verify_note(note, log_keys)
        cp = parse_checkpoint(parsed.text)
    except VerificationError as exc:
        raise VerificationError(f"not a checkpoint signed by the log: {exc.message}") from exc
    if cp.origin != origin:
        raise VerificationError(f"the checkpoint is for the log {cp.origin!r}, not {origin!r}")
    return cp


def check_log_against(
    note: str,
    *,
    origin: str,
    log_keys: Sequence[NoteVerifier],
    size: int,
    root_at: Callable[[int], bytes],
    source: str,
) -> Checkpoint:
    """Check a log of ``size`` entries (``root_at(n)``: the root of its first ``n``) against a
    checkpoint the witnesses cosigned (``source`` names where it came from, for messages).

    The log MUST be at least as large as the checkpoint and its first ``cp.size`` entries MUST
    hash to the checkpoint's root. Witness signatures are checked by the caller (policy or the
    one witness asked). Returns the checkpoint.
    """
    return compare_log(
        open_log_checkpoint(note, origin=origin, log_keys=log_keys),
        size=size,
        root_at=root_at,
        source=source,
    )


def compare_log(
    cp: Checkpoint, *, size: int, root_at: Callable[[int], bytes], source: str
) -> Checkpoint:
    """``check_log_against`` for a checkpoint whose signatures the caller already trusts (e.g.
    a witness's latest view, whose cosignature was checked): size and root only."""
    if cp.size > size:
        raise VerificationError(
            f"the log holds {size} entries but {source} cosigned a checkpoint of size {cp.size}: "
            "the log was rolled back or truncated"
        )
    if root_at(cp.size) != cp.root_hash:
        raise VerificationError(
            f"the log's first {cp.size} entries do not hash to the checkpoint {source} cosigned "
            "at that size: the log was rewritten or forked"
        )
    return cp


@dataclass(frozen=True, slots=True)
class CosignedReceipt:
    """What ``verify_cosigned_receipt`` established."""

    checkpoint: Checkpoint
    """The cosigned checkpoint the receipt's checkpoint is consistent with."""
    witnesses: tuple[str, ...]


def verify_cosigned_receipt(
    receipt: envelope_pb2.AuditReceipt, registry: Registry
) -> CosignedReceipt:
    """Check an upgraded receipt offline with the federation's public keys.

    The receipt's own checkpoint MUST be signed by the log and prove the entry's inclusion;
    ``cosigned_checkpoint`` MUST be signed by the log, meet the registry's witness policy
    (a bad cosignature by a known witness is an error), cover the receipt's tree size, and
    ``cosigned_consistency_proof`` MUST prove that the receipt's checkpoint is a prefix of it.
    """
    origin = receipt.log_origin
    keys = log_verifiers(registry, origin)
    if not keys:
        raise VerificationError("the registry lists no gateway key for the log")
    own = open_log_checkpoint(receipt.checkpoint, origin=origin, log_keys=keys)
    if own.size != receipt.tree_size:
        raise VerificationError("the receipt's checkpoint is not for its tree size")
    merkle.verify_inclusion(
        receipt.leaf_hash,
        receipt.leaf_index,
        receipt.tree_size,
        list(receipt.inclusion_proof),
        own.root_hash,
    )
    if not receipt.cosigned_checkpoint:
        raise VerificationError("the receipt carries no cosigned checkpoint: upgrade it first")
    cosigned = open_log_checkpoint(receipt.cosigned_checkpoint, origin=origin, log_keys=keys)
    witnesses = check_witness_policy(receipt.cosigned_checkpoint, registry)
    if cosigned.size < own.size:
        raise VerificationError(
            f"the cosigned checkpoint (size {cosigned.size}) does not cover the receipt's "
            f"tree size {own.size}"
        )
    try:
        merkle.verify_consistency(
            own.size,
            cosigned.size,
            list(receipt.cosigned_consistency_proof),
            own.root_hash,
            cosigned.root_hash,
        )
    except VerificationError as exc:
        raise VerificationError(
            f"the receipt's checkpoint is not consistent with the cosigned one: {exc.message}"
        ) from exc
    return CosignedReceipt(checkpoint=cosigned, witnesses=tuple(sorted(witnesses)))
