"""RFC 6962 / RFC 9162 Merkle tree: hashes, an append-only tree, and proof verification.

Leaf hash ``SHA-256(0x00 || data)``, node hash ``SHA-256(0x01 || left || right)``, the tree of
``n`` leaves split at the largest power of two smaller than ``n``. Proof verification follows
RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency) step by step, after checking that
the proof has exactly the number of hashes the sizes call for. Every verification failure raises
:class:`fedgate.errors.VerificationError` saying why; nothing here returns ``False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from fedgate.errors import VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleProofs",
    "MerkleTree",
    "consistency_proof_size",
    "inclusion_proof_size",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_TREE_SIZE = (1 << 64) - 1  # sizes are uint64 in every transparency-log format

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = _sha256(b"").digest()


_LEAF_HASHER = _sha256(_LEAF_PREFIX)
"""Copied per leaf: OpenSSL 3 looks the digest up on every ``hashlib.sha256()`` call, a copy
does not, and the leaf's bytes are not copied behind a prefix (the log hashes every entry on
its event loop)."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    h = _LEAF_HASHER.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The reference recursive MTH over ``leaf_hashes`` (RFC 6962 section 2.1); slow but plain."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two strictly below n
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class MerkleProofs:
    """Roots and RFC 9162 proofs of a tree at any size up to ``size``, from its complete nodes.

    A subclass says where complete subtree hashes come from: ``_node(level, index)`` is the hash
    of leaves ``[index * 2^level, (index + 1) * 2^level)``, asked only for subtrees complete at
    the current size. ``MerkleTree`` keeps every node in memory; ``fedgate.tiles.TiledTree``
    reads them from C2SP tiles. Every operation takes ``O(log size)`` node lookups.
    """

    __slots__ = ()

    @property
    def size(self) -> int:
        """The number of leaves."""
        raise NotImplementedError

    def _node(self, level: int, index: int) -> bytes:
        raise NotImplementedError

    def root(self, size: int | None = None) -> bytes:
        """The root hash at ``size`` leaves (default: now); ``ValueError`` if beyond the tree."""
        m = self._check_size(size, "size")
        return self._range_hash(0, m)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The RFC 9162 inclusion proof of leaf ``index`` in the tree at ``size`` leaves.

        Raises ``ValueError`` unless ``0 <= index < size <= self.size``.
        """
        m = self._check_size(size, "size")
        if not 0 <= index < m:
            raise ValueError(f"leaf index {index} out of range for tree size {m}")
        return self._path(0, index, m)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The RFC 9162 consistency proof from ``old_size`` to ``new_size`` (default: now).

        Empty when ``old_size`` is 0 or equal to ``new_size``. Raises ``ValueError`` unless
        ``0 <= old_size <= new_size <= self.size``.
        """
        n = self._check_size(new_size, "new_size")
        if not 0 <= old_size <= n:
            raise ValueError(f"old_size {old_size} out of range for new_size {n}")
        if old_size in (0, n):
            return []
        # The old tree's rightmost complete subtree (level = trailing zeros of old_size) is the
        # seed; its path up the new tree is the rest of the proof. A power-of-two old tree is
        # its own seed, which the verifier already holds as the old root.
        shift = (old_size & -old_size).bit_length() - 1
        seed_index = (old_size >> shift) - 1
        proof = [] if seed_index == 0 else [self._node(shift, seed_index)]
        proof.extend(self._path(shift, seed_index, n))
        return proof

    def frontier(self, size: int) -> list[bytes]:
        """The complete subtrees of the tree at ``size``, largest first (``CompactRange``)."""
        m = self._check_size(size, "size")
        nodes, start = [], 0
        for h in range(m.bit_length() - 1, -1, -1):
            if m >> h & 1:
                nodes.append(self._node(h, start >> h))
                start += 1 << h
        return nodes

    def _check_size(self, size: int | None, name: str) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"{name} {size} out of range: the tree has {self.size} leaves")
        return size

    def _range_hash(self, start: int, stop: int) -> bytes:
        """MTH of leaves ``[start, stop)``, where ``start`` is aligned as in the RFC recursion.

        The range is covered left to right by maximal complete subtrees (sizes decreasing), which
        are folded right to left: exactly the RFC 6962 split at the largest power of two.
        """
        if start == stop:
            return EMPTY_ROOT
        nodes: list[bytes] = []
        while start < stop:
            width = stop - start
            level = width.bit_length() - 1
            if start:
                level = min(level, (start & -start).bit_length() - 1)
            nodes.append(self._node(level, start >> level))
            start += 1 << level
        acc = nodes.pop()
        while nodes:
            acc = _sha256(_NODE_PREFIX + nodes.pop() + acc).digest()
        return acc

    def _path(self, level: int, index: int, size: int) -> list[bytes]:
        """Sibling hashes from complete node (level, index) up to the root of the tree at size."""
        proof: list[bytes] = []
        while True:
            last = (size - 1) >> level  # index of the rightmost (maybe partial) node here
            if last == 0:
                return proof
            sibling = index ^ 1
            if sibling < index:
                proof.append(self._node(level, sibling))
            elif sibling <= last:
                # A right sibling can run past the tree's right edge: hash what exists of it.
                lo = sibling << level
                proof.append(self._range_hash(lo, min(lo + (1 << level), size)))
            # else: no right sibling; the node is promoted unchanged (RFC 6962 split).
            index >>= 1
            level += 1


class MerkleTree(MerkleProofs):
    """Append-only tree keeping every complete subtree hash, level by level.

    ``levels[k][i]`` is the hash of leaves ``[i*2^k, (i+1)*2^k)``; each level is stored as one
    ``bytearray`` of concatenated 32-byte hashes (about 64 bytes per leaf in all, no per-node
    objects). Appending hashes the right edge only (amortised one node hash per leaf);
    the root and proofs at any past size ``m <= size`` take ``O(log m)`` node lookups, because
    the tree at size ``m`` is made of complete subtrees that never change once written.

    Thread safety: appends MUST come from one thread at a time. Readers MAY run alongside that
    writer for sizes up to a ``size`` they have observed: ``size`` is published only after every
    node it depends on has been written, and written nodes are never modified.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """A tree holding ``leaf_hashes`` in order; raises ``ValueError`` on a non-32-byte hash."""
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index; raises ``ValueError`` unless 32 bytes."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash
        # Each trailing one bit of the index closes a complete subtree one level up.
        n = index
        level = 0
        while n & 1:
            src = levels[level]
            if level + 1 == len(levels):
                levels.append(bytearray())
            levels[level + 1] += _sha256(_NODE_PREFIX + src[-2 * HASH_SIZE :]).digest()
            n >>= 1
            level += 1
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes, hashing each new level in one pass (fast bulk load).

        Raises ``ValueError`` on a non-32-byte hash; the tree is then left unchanged.
        """
        hashes = list(leaf_hashes)
        for i, h in enumerate(hashes):
            if len(h) != HASH_SIZE:
                raise ValueError(f"leaf hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
        if not hashes:
            return
        levels = self._levels
        levels[0] += b"".join(hashes)
        sha = _sha256
        prefix = _NODE_PREFIX
        level = 0
        while len(levels[level]) >= 2 * HASH_SIZE:
            src = levels[level]
            if level + 1 == len(levels):
                levels.append(bytearray())
            dst = levels[level + 1]
            start = len(dst) // HASH_SIZE  # parents already computed
            stop = len(src) // (2 * HASH_SIZE)
            if start == stop:
                break  # no new complete pair here, hence none above either
            step = 2 * HASH_SIZE
            dst += b"".join(
                [
                    sha(prefix + src[off : off + step]).digest()
                    for off in range(start * step, stop * step, step)
                ]
            )
            level += 1
        self._size += len(hashes)

    def leaf_hash_at(self, index: int) -> bytes:
        """The hash of leaf ``index``; raises ``ValueError`` if out of range."""
        if not 0 <= index < self._size:
            raise ValueError(f"leaf index {index} out of range for tree size {self._size}")
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _node(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])


class CompactRange:
    """The right frontier of a tree: one hash per complete subtree of its size's binary
    decomposition (at most 64), so a root costs ``O(log n)`` memory however many leaves were
    appended. For streaming verification: append every leaf hash, ask the root at each size
    a checkpoint names.
    """

    __slots__ = ("_hashes", "_heights", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        """The range of ``size`` leaves whose complete subtrees, largest first, are ``nodes``
        (``MerkleProofs.frontier(size)``); raises ``ValueError`` when they do not fit."""
        heights = [h for h in range(size.bit_length() - 1, -1, -1) if size >> h & 1]
        if len(nodes) != len(heights) or any(len(n) != HASH_SIZE for n in nodes):
            raise ValueError(f"a range of {size} leaves has {len(heights)} 32-byte nodes")
        self.size = size
        self._heights = heights
        self._hashes = list(nodes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (32 bytes, unchecked: callers hash it themselves)."""
        heights, hashes = self._heights, self._hashes
        h, height = leaf_hash, 0
        while heights and heights[-1] == height:
            heights.pop()
            h = _sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            height += 1
        heights.append(height)
        hashes.append(h)
        self.size += 1

    def append_subtree(self, node: bytes, height: int) -> None:
        """Append the hash of a complete subtree of ``2**height`` leaves (unchecked, like
        ``append``); raises ``ValueError`` unless the size is a multiple of ``2**height``."""
        if self.size & ((1 << height) - 1):
            raise ValueError(f"a subtree of height {height} cannot start at leaf {self.size}")
        heights, hashes = self._heights, self._hashes
        leaves = 1 << height
        h = node
        while heights and heights[-1] == height:
            heights.pop()
            h = _sha256(_NODE_PREFIX + hashes.pop() + h).digest()
            height += 1
        heights.append(height)
        hashes.append(h)
        self.size += leaves

    def root(self) -> bytes:
        """The Merkle tree hash of the leaves appended so far."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        acc = hashes[-1]
        for h in reversed(hashes[:-1]):
            acc = _sha256(_NODE_PREFIX + h + acc).digest()
        return acc


def inclusion_proof_size(index: int, size: int) -> int:
    """The number of hashes in the inclusion proof of leaf ``index`` in a tree of ``size``."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_size(old_size: int, new_size: int) -> int:
    """The number of hashes in the consistency proof from ``old_size`` to ``new_size``."""
    if old_size in (0, new_size):
        return 0
    shift = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size == 1 << shift else 1
    return seed + inclusion_proof_size(old_size - 1, new_size) - shift


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], expected: int, what: str) -> None:
    got = len(proof)
    if got != expected:
        much = "too many" if got > expected else "too few"
        raise VerificationError(
            f"wrong {what} proof length: {much} hashes (got {got}, expected {expected})"
        )
    for i, h in enumerate(proof):
        _check_hash(h, f"{what} proof hash {i}")


def _check_tree_size(size: int, what: str) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise VerificationError(f"{what} {size} is not a valid tree size")


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 2.1.3.2 without the final compare).

    Raises ``VerificationError`` on an index out of range or a proof of the wrong length.
    """
    _check_tree_size(size, "tree size")
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} out of range for tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_proof(proof, inclusion_proof_size(index, size), "inclusion")
    sha = _sha256
    prefix = _NODE_PREFIX
    fn = index
    sn = size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise VerificationError("inclusion proof has too many hashes")
        if fn & 1 or fn == sn:
            r = sha(prefix + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = sha(prefix + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # unreachable after the length check; kept as the RFC states it
        raise VerificationError("inclusion proof has too few hashes")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Raises ``VerificationError`` saying why it is not.
    """
    _check_hash(root, "root hash")
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if computed != root:
        raise VerificationError(
            f"inclusion proof for leaf {index} of tree size {size} does not match the root hash"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 2.1.4.2 for ``0 < old_size < new_size``. Equal sizes need an empty proof and
    equal roots; ``old_size == 0`` needs an empty proof (and, failing closed, ``old_root`` equal
    to the empty-tree hash). Raises ``VerificationError`` saying why the proof fails.
    """
    _check_tree_size(old_size, "old size")
    _check_tree_size(new_size, "new size")
    if old_size > new_size:
        raise VerificationError(f"old size {old_size} is greater than new size {new_size}")
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise VerificationError(
                f"wrong consistency proof length: too many hashes (got {len(proof)}, expected 0)"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise VerificationError("old root hash of an empty tree is not the empty-tree hash")
        if old_size == new_size and old_root != new_root:
            raise VerificationError(f"root hashes differ at the same tree size {old_size}")
        return
    _check_proof(proof, consistency_proof_size(old_size, new_size), "consistency")

    sha = _sha256
    prefix = _NODE_PREFIX
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: a power of two is its own seed
        path.insert(0, old_root)
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # unreachable after the length check; kept as the RFC states it
            raise VerificationError("consistency proof has too many hashes")
        if fn & 1 or fn == sn:
            fr = sha(prefix + c + fr).digest()
            sr = sha(prefix + c + sr).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = sha(prefix + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise VerificationError("consistency proof has too few hashes")
    if fr != old_root:
        raise VerificationError(
            f"consistency proof {old_size}->{new_size} does not match the old root hash"
        )
    if sr != new_root:
        raise VerificationError(
            f"consistency proof {old_size}->{new_size} does not match the new root hash"
        )
