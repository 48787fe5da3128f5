"""The receipt of an audit entry: its index, inclusion proof and the checkpoint proving it.

``AuditLog.append`` makes receipts lazily (the proof is computed from the log's tree on first
use); ``Receipt(...)`` builds one from parts already known, e.g. read back from the wire.
"""

from __future__ import annotations

from fedgate.tiles import TiledTree
from fedgate.tlogproof import marshal_tlog_proof
from fedgate.v1 import envelope_pb2

__all__ = ["Receipt"]


class Receipt:
    """Proof that an entry is in the log: its index, the inclusion proof in the tree of
    ``tree_size`` leaves, the checkpoint signed for that size, and the same as C2SP
    ``tlog-proof`` text.

    An immutable value. Receipts made by ``AuditLog.append`` compute ``inclusion_proof`` and
    ``tlog_proof`` on first use (most request-leg receipts are never read, and the proof is
    the largest part of an append's cost); the log's tree keeps every past size, so the
    result does not depend on when it is computed.
    """

    __slots__ = ("_proof", "_prover", "_tlog", "checkpoint", "index", "origin", "tree_size")

    def __init__(
        self,
        *,
        origin: str,
        index: int,
        tree_size: int,
        inclusion_proof: tuple[bytes, ...],
        checkpoint: str,
        tlog_proof: str,
    ) -> None:
        self.origin = origin
        self.index = index
        self.tree_size = tree_size
        self.checkpoint = checkpoint
        self._proof: tuple[bytes, ...] | None = tuple(inclusion_proof)
        self._tlog: str | None = tlog_proof
        self._prover: TiledTree | None = None

    @classmethod
    def _lazy(
        cls, *, origin: str, index: int, tree_size: int, checkpoint: str, tree: TiledTree
    ) -> Receipt:
        r = cls.__new__(cls)
        r.origin = origin
        r.index = index
        r.tree_size = tree_size
        r.checkpoint = checkpoint
        r._proof = None
        r._tlog = None
        r._prover = tree
        return r

    @property
    def inclusion_proof(self) -> tuple[bytes, ...]:
        if self._proof is None:
            assert self._prover is not None
            self._proof = tuple(self._prover.inclusion_proof(self.index, self.tree_size))
        return self._proof

    @property
    def tlog_proof(self) -> str:
        if self._tlog is None:
            # Index, proof and note come from the log's own tree and key (or were given
            # whole): written straight out, without ``TlogProof``'s checks of each value.
            self._tlog = marshal_tlog_proof(self.index, self.inclusion_proof, self.checkpoint)
        return self._tlog

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Receipt):
            return NotImplemented
        return (self.origin, self.index, self.tree_size, self.checkpoint, self.inclusion_proof) == (
            other.origin,
            other.index,
            other.tree_size,
            other.checkpoint,
            other.inclusion_proof,
        )

    def __hash__(self) -> int:
        return hash((self.origin, self.index, self.tree_size, self.checkpoint))

    def __repr__(self) -> str:
        return f"Receipt(origin={self.origin!r}, index={self.index}, tree_size={self.tree_size})"

    def to_proto(self, *, request_leaf_index: int) -> envelope_pb2.AuditReceipt:
        """The wire ``AuditReceipt`` for this entry (the response leg) and its request leg.

        ``leaf_hash`` is filled in from the log's tree for receipts made by ``append`` (no need
        to encode the entry again), and left empty otherwise.
        """
        return envelope_pb2.AuditReceipt(
            log_origin=self.origin,
            request_leaf_index=request_leaf_index,
            leaf_index=self.index,
            tree_size=self.tree_size,
            inclusion_proof=list(self.inclusion_proof),
            checkpoint=self.checkpoint,
            tlog_proof=self.tlog_proof,
            leaf_hash=self._prover.leaf_hash_at(self.index) if self._prover is not None else b"",
        )
