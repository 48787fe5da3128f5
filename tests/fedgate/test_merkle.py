"""Tests for fedgate.merkle: RFC 6962 vectors, reference implementations, corrupted proofs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.errors import VerificationError
from fedgate.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    MerkleTree,
    consistency_proof_size,
    inclusion_proof_size,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def h(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


# The 8-leaf RFC 6962 vectors of certificate-transparency-go / transparency-dev/merkle.
RFC_LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
RFC_ROOTS = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
# (leaf index, tree size, proof)
RFC_INCLUSION = [
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
# (old size, new size, proof)
RFC_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def naive_root(hashes: Sequence[bytes]) -> bytes:
    """Bottom-up RFC 6962 root: pair neighbours level by level, promote an odd last node."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    level = list(hashes)
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n]), recursively."""
    n = len(d)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), root_of(d[k:])]
    return [*ref_path(m - k, d[k:]), root_of(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b), recursively."""
    n = len(d)
    if m == n:
        return [] if complete else [root_of(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], complete), root_of(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), root_of(d[:k])]


def flip(proof: Sequence[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    b = bytearray(out[i])
    b[bit // 8] ^= 1 << (bit % 8)
    out[i] = bytes(b)
    return out


# Sizes are corrupted by doubling and halving, as in transparency-dev/merkle: a size off by one
# can be consistent with the same hashes (the verifier cannot tell a leaf hash on the right edge
# from an interior node), so that is not a corruption the proof can detect.


ALL_BITS = range(HASH_SIZE * 8)  # every single-bit flip of every proof hash is tried


def rejected(verify: Callable[..., None], *args: object) -> bool:
    try:
        verify(*args)
    except VerificationError:
        return True
    return False


InclusionProbe = tuple[str, bytes, int, int, list[bytes], bytes]
ConsistencyProbe = tuple[str, int, int, list[bytes], bytes, bytes]


def inclusion_probes(
    lh: bytes, i: int, n: int, proof: list[bytes], root: bytes
) -> list[InclusionProbe]:
    """Corrupted copies of a valid inclusion proof, as transparency-dev/merkle's verify_test."""
    probes: list[InclusionProbe] = [
        ("index-1", lh, i - 1, n, proof, root),
        ("index+1", lh, i + 1, n, proof, root),
        ("index^2", lh, i ^ 2, n, proof, root),
        ("size*2", lh, i, n * 2, proof, root),
        ("size/2", lh, i, n // 2, proof, root),
        ("wrong leaf", SOME_HASH, i, n, proof, root),
        ("short leaf", b"WrongLeaf", i, n, proof, root),
        ("empty root", lh, i, n, proof, EMPTY_ROOT),
        ("random root", lh, i, n, proof, SOME_HASH),
        ("trailing empty", lh, i, n, [*proof, b""], root),
        ("trailing root", lh, i, n, [*proof, root], root),
        ("preceding empty", lh, i, n, [b"", *proof], root),
        ("preceding root", lh, i, n, [root, *proof], root),
    ]
    if proof:
        probes.append(("truncated", lh, i, n, proof[:-1], root))
        probes.append(("dropped first", lh, i, n, proof[1:], root))
    if len(proof) > 1:
        probes.append(("inserted", lh, i, n, [proof[0], SOME_HASH, *proof[1:]], root))
        probes.append(("swapped", lh, i, n, [proof[1], proof[0], *proof[2:]], root))
    for k in range(len(proof)):
        for bit in ALL_BITS:
            probes.append((f"flip {k}/{bit}", lh, i, n, flip(proof, k, bit), root))
    return probes


def consistency_probes(
    m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes
) -> list[ConsistencyProbe]:
    """Corrupted copies of a valid consistency proof, as transparency-dev/merkle's verify_test."""
    probes: list[ConsistencyProbe] = [
        ("m-1", m - 1, n, proof, r1, r2),
        ("m+1", m + 1, n, proof, r1, r2),
        ("m^2", m ^ 2, n, proof, r1, r2),
        ("n*2", m, n * 2, proof, r1, r2),
        ("n/2", m, n // 2, proof, r1, r2),
        ("short root1", m, n, proof, b"WrongRoot", r2),
        ("short root2", m, n, proof, r1, b"WrongRoot"),
        ("wrong root1", m, n, proof, SOME_HASH, r2),
        ("wrong root2", m, n, proof, r1, SOME_HASH),
        ("swapped roots", m, n, proof, r2, r1),
        ("empty proof", m, n, [], r1, r2),
        ("trailing empty", m, n, [*proof, b""], r1, r2),
        ("trailing root1", m, n, [*proof, r1], r1, r2),
        ("trailing root2", m, n, [*proof, r2], r1, r2),
        ("preceding empty", m, n, [b"", *proof], r1, r2),
        ("preceding root1", m, n, [r1, *proof], r1, r2),
        ("preceding root2", m, n, [r2, *proof], r1, r2),
        ("preceding proof[0]", m, n, [proof[0], *proof], r1, r2),
        ("truncated", m, n, proof[:-1], r1, r2),
        ("dropped first", m, n, proof[1:], r1, r2),
    ]
    if len(proof) > 1:
        probes.append(("inserted", m, n, [proof[0], SOME_HASH, *proof[1:]], r1, r2))
        probes.append(("swapped", m, n, [proof[1], proof[0], *proof[2:]], r1, r2))
        probes.append(("last swapped", m, n, [*proof[:-2], proof[-1], proof[-2]], r1, r2))
    for k in range(len(proof)):
        for bit in ALL_BITS:
            probes.append((f"flip {k}/{bit}", m, n, flip(proof, k, bit), r1, r2))
    return probes


BIG = leaves(4096)
BIG_TREE = MerkleTree.from_leaf_hashes(BIG)


class TestHashes:
    def test_empty_root_is_sha256_of_nothing(self) -> None:
        assert EMPTY_ROOT.hex() == (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )
        assert HASH_SIZE == 32

    def test_leaf_and_node_hash_domain_separation(self) -> None:
        assert leaf_hash(b"") == RFC_ROOTS[0]
        assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
        a, b = leaf_hash(b"a"), leaf_hash(b"b")
        assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
        assert node_hash(a, b) != node_hash(b, a)

    def test_size_formulas_match_reference_proofs(self) -> None:
        d = leaves(40)
        for n in range(1, 41):
            for i in range(n):
                assert inclusion_proof_size(i, n) == len(ref_path(i, d[:n]))
            for m in range(n + 1):
                expected = 0 if m in (0, n) else len(ref_subproof(m, d[:n], True))
                assert consistency_proof_size(m, n) == expected


class TestRoots:
    def test_rfc6962_vectors(self) -> None:
        hashes = [leaf_hash(x) for x in RFC_LEAVES]
        tree = MerkleTree.from_leaf_hashes(hashes)
        for size in range(1, 9):
            assert root_of(hashes[:size]) == RFC_ROOTS[size - 1]
            assert tree.root(size) == RFC_ROOTS[size - 1]
        assert tree.root(0) == EMPTY_ROOT == root_of([])

    def test_sizes_0_to_64_match_reference_and_naive(self) -> None:
        d = leaves(64)
        appended = MerkleTree()
        for n in range(65):
            expected = naive_root(d[:n])
            assert root_of(d[:n]) == expected
            assert appended.root() == expected, n
            assert MerkleTree.from_leaf_hashes(d[:n]).root() == expected
            if n < 64:
                appended.append(d[n])
        for n in range(65):
            assert appended.root(n) == naive_root(d[:n]), n

    def test_bulk_load_matches_appends_for_many_sizes(self) -> None:
        appended = MerkleTree()
        for lh in BIG:
            appended.append(lh)
        for size in (1, 2, 3, 7, 100, 1000, 4095, 4096):
            assert MerkleTree.from_leaf_hashes(BIG[:size]).root() == appended.root(size)
        assert appended.root() == BIG_TREE.root() == root_of(BIG)
        mixed = MerkleTree()
        mixed.extend(BIG[:5])
        mixed.append(BIG[5])
        mixed.extend(BIG[6:1000])
        mixed.extend([])
        mixed.append(BIG[1000])
        assert mixed.size == 1001
        assert mixed.root() == BIG_TREE.root(1001) == naive_root(BIG[:1001])


class TestMerkleTree:
    def test_append_returns_index_and_keeps_leaves(self) -> None:
        tree = MerkleTree()
        assert tree.size == 0
        for i, lh in enumerate(BIG[:10]):
            assert tree.append(lh) == i
        assert tree.size == 10
        assert [tree.leaf_hash_at(i) for i in range(10)] == BIG[:10]
        assert isinstance(tree.leaf_hash_at(3), bytes)

    def test_append_rejects_wrong_length(self) -> None:
        tree = MerkleTree()
        with pytest.raises(ValueError, match="32 bytes"):
            tree.append(b"short")
        assert tree.size == 0

    def test_extend_rejects_wrong_length_and_leaves_tree_unchanged(self) -> None:
        tree = MerkleTree.from_leaf_hashes(BIG[:3])
        with pytest.raises(ValueError, match="leaf hash 1 must be 32 bytes"):
            tree.extend([BIG[3], b"x" * 33, BIG[4]])
        assert tree.size == 3
        assert tree.root() == root_of(BIG[:3])

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda t: t.leaf_hash_at(5), "leaf index 5 out of range"),
            (lambda t: t.leaf_hash_at(-1), "leaf index -1 out of range"),
            (lambda t: t.root(6), "size 6 out of range"),
            (lambda t: t.root(-1), "size -1 out of range"),
            (lambda t: t.inclusion_proof(5), "leaf index 5 out of range"),
            (lambda t: t.inclusion_proof(3, 3), "leaf index 3 out of range for tree size 3"),
            (lambda t: t.inclusion_proof(0, 6), "size 6 out of range"),
            (lambda t: t.inclusion_proof(0, 0), "leaf index 0 out of range"),
            (lambda t: t.consistency_proof(4, 3), "old_size 4 out of range"),
            (lambda t: t.consistency_proof(-1), "old_size -1 out of range"),
            (lambda t: t.consistency_proof(2, 6), "new_size 6 out of range"),
        ],
    )
    def test_out_of_range_arguments(
        self, call: Callable[[MerkleTree], object], message: str
    ) -> None:
        tree = MerkleTree.from_leaf_hashes(BIG[:5])
        with pytest.raises(ValueError, match=message):
            call(tree)

    def test_proofs_match_rfc_reference_for_all_sizes_to_33(self) -> None:
        d = BIG[:33]
        for n in range(1, 34):
            for i in range(n):
                assert BIG_TREE.inclusion_proof(i, n) == ref_path(i, d[:n]), (i, n)
            for m in range(1, n):
                assert BIG_TREE.consistency_proof(m, n) == ref_subproof(m, d[:n], True), (m, n)
            assert BIG_TREE.consistency_proof(0, n) == []
            assert BIG_TREE.consistency_proof(n, n) == []

    def test_rfc6962_proof_vectors(self) -> None:
        tree = MerkleTree.from_leaf_hashes([leaf_hash(x) for x in RFC_LEAVES])
        for index, size, proof in RFC_INCLUSION:
            assert tree.inclusion_proof(index, size) == proof
        for old, new, proof in RFC_CONSISTENCY:
            assert tree.consistency_proof(old, new) == proof

    def test_past_sizes_unchanged_by_later_appends(self) -> None:
        tree = MerkleTree.from_leaf_hashes(BIG[:37])
        before = [tree.inclusion_proof(i, 37) for i in range(37)]
        root_before = tree.root()
        tree.extend(BIG[37:300])
        assert tree.root(37) == root_before
        assert [tree.inclusion_proof(i, 37) for i in range(37)] == before

    def test_large_bulk_load_matches_incremental(self) -> None:
        hashes = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(100_003)]
        bulk = MerkleTree.from_leaf_hashes(hashes)
        incremental = MerkleTree()
        for lh in hashes[:50_001]:
            incremental.append(lh)
        incremental.extend(hashes[50_001:])
        assert bulk.root() == incremental.root()
        assert bulk.root(65_536) == incremental.root(65_536)
        proof = bulk.inclusion_proof(77_777)
        verify_inclusion(hashes[77_777], 77_777, bulk.size, proof, bulk.root())
        verify_consistency(
            12_345, 100_003, bulk.consistency_proof(12_345), bulk.root(12_345), bulk.root()
        )


class TestVerifyInclusion:
    def test_rfc6962_vectors(self) -> None:
        for index, size, proof in RFC_INCLUSION:
            lh = leaf_hash(RFC_LEAVES[index])
            assert root_from_inclusion_proof(lh, index, size, proof) == RFC_ROOTS[size - 1]
            verify_inclusion(lh, index, size, proof, RFC_ROOTS[size - 1])

    def test_single_entry_tree(self) -> None:
        lh = leaf_hash(b"data")
        verify_inclusion(lh, 0, 1, [], lh)
        with pytest.raises(VerificationError, match="does not match the root"):
            verify_inclusion(lh, 0, 1, [], leaf_hash(b"other"))
        with pytest.raises(VerificationError, match="root hash is 0 bytes"):
            verify_inclusion(lh, 0, 1, [], b"")
        with pytest.raises(VerificationError, match="leaf hash is 0 bytes"):
            verify_inclusion(b"", 0, 1, [], lh)

    @pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 4)])
    def test_index_out_of_range(self, index: int, size: int) -> None:
        with pytest.raises(VerificationError, match="out of range"):
            verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)

    def test_invalid_tree_size(self) -> None:
        with pytest.raises(VerificationError, match="not a valid tree size"):
            verify_inclusion(SOME_HASH, 0, 1 << 64, [], EMPTY_ROOT)

    def test_length_messages(self) -> None:
        proof = BIG_TREE.inclusion_proof(5, 20)
        root = BIG_TREE.root(20)
        with pytest.raises(VerificationError, match="too few hashes"):
            verify_inclusion(BIG[5], 5, 20, proof[:-1], root)
        with pytest.raises(VerificationError, match="too many hashes"):
            verify_inclusion(BIG[5], 5, 20, [*proof, SOME_HASH], root)
        with pytest.raises(VerificationError, match="proof hash 1 is 31 bytes"):
            verify_inclusion(BIG[5], 5, 20, [proof[0], proof[1][:31], *proof[2:]], root)

    def test_every_corruption_rejected_up_to_size_20(self) -> None:
        for n in range(1, 21):
            root = BIG_TREE.root(n)
            for i in range(n):
                proof = BIG_TREE.inclusion_proof(i, n)
                verify_inclusion(BIG[i], i, n, proof, root)
                accepted = [
                    desc
                    for desc, *args in inclusion_probes(BIG[i], i, n, proof, root)
                    if not rejected(verify_inclusion, *args)
                ]
                assert not accepted, (i, n, accepted)


class TestVerifyConsistency:
    def test_rfc6962_vectors(self) -> None:
        for old, new, proof in RFC_CONSISTENCY:
            verify_consistency(old, new, proof, RFC_ROOTS[old - 1], RFC_ROOTS[new - 1])

    def test_trivial_cases(self) -> None:
        root = BIG_TREE.root(1)
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
        verify_consistency(0, 5, [], EMPTY_ROOT, BIG_TREE.root(5))
        verify_consistency(1, 1, [], root, root)
        verify_consistency(7, 7, [], BIG_TREE.root(7), BIG_TREE.root(7))

    @pytest.mark.parametrize(
        ("old", "new", "old_root", "new_root", "proof", "message"),
        [
            (0, 0, EMPTY_ROOT, SOME_HASH, [], "root hashes differ at the same tree size 0"),
            (1, 1, SOME_HASH, EMPTY_ROOT, [], "root hashes differ at the same tree size 1"),
            (1, 0, SOME_HASH, SOME_HASH, [], "old size 1 is greater than new size 0"),
            (2, 1, SOME_HASH, SOME_HASH, [], "old size 2 is greater than new size 1"),
            (1, 2, SOME_HASH, EMPTY_ROOT, [], "too few hashes"),
            (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "too many hashes"),
            (0, 1, EMPTY_ROOT, SOME_HASH, [EMPTY_ROOT], "too many hashes"),
            (1, 1, SOME_HASH, SOME_HASH, [EMPTY_ROOT], "too many hashes"),
            (0, 3, SOME_HASH, SOME_HASH, [], "empty tree is not the empty-tree hash"),
            (1, 1, b"short", b"short", [], "old root hash is 5 bytes"),
            (1, 2, SOME_HASH, b"", [SOME_HASH], "new root hash is 0 bytes"),
            (1, 1 << 64, SOME_HASH, SOME_HASH, [], "new size .* not a valid tree size"),
            (-1, 1, SOME_HASH, SOME_HASH, [], "old size -1 is not a valid tree size"),
        ],
    )
    def test_edge_cases(
        self,
        old: int,
        new: int,
        old_root: bytes,
        new_root: bytes,
        proof: list[bytes],
        message: str,
    ) -> None:
        with pytest.raises(VerificationError, match=message):
            verify_consistency(old, new, proof, old_root, new_root)

    def test_root_mismatch_messages(self) -> None:
        proof = BIG_TREE.consistency_proof(6, 13)
        r6, r13 = BIG_TREE.root(6), BIG_TREE.root(13)
        with pytest.raises(VerificationError, match="does not match the old root"):
            verify_consistency(6, 13, proof, SOME_HASH, r13)
        with pytest.raises(VerificationError, match="does not match the new root"):
            verify_consistency(6, 13, proof, r6, SOME_HASH)
        with pytest.raises(VerificationError, match="wrong consistency proof length"):
            verify_consistency(6, 13, proof[:-1], r6, r13)

    def test_every_corruption_rejected_up_to_size_20(self) -> None:
        for n in range(1, 21):
            r2 = BIG_TREE.root(n)
            for m in range(1, n):
                r1 = BIG_TREE.root(m)
                proof = BIG_TREE.consistency_proof(m, n)
                assert proof, (m, n)
                verify_consistency(m, n, proof, r1, r2)
                accepted = [
                    desc
                    for desc, *args in consistency_probes(m, n, proof, r1, r2)
                    if not rejected(verify_consistency, *args)
                ]
                assert not accepted, (m, n, accepted)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def test_random_inclusion_proofs_verify(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(min_value=1, max_value=len(BIG)), label="n")
        i = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
        proof = BIG_TREE.inclusion_proof(i, n)
        assert len(proof) == inclusion_proof_size(i, n)
        verify_inclusion(BIG[i], i, n, proof, BIG_TREE.root(n))
        assert root_from_inclusion_proof(BIG[i], i, n, proof) == BIG_TREE.root(n)

    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def test_random_consistency_proofs_verify(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(min_value=0, max_value=len(BIG)), label="n")
        m = data.draw(st.integers(min_value=0, max_value=n), label="m")
        proof = BIG_TREE.consistency_proof(m, n)
        assert len(proof) == consistency_proof_size(m, n)
        verify_consistency(m, n, proof, BIG_TREE.root(m), BIG_TREE.root(n))

    @settings(max_examples=50, deadline=None)
    @given(
        data=st.lists(st.binary(max_size=8), min_size=1, max_size=300),
        split=st.integers(min_value=0, max_value=300),
    )
    def test_incremental_equals_reference(self, data: list[bytes], split: int) -> None:
        hashes = [leaf_hash(x) for x in data]
        tree = MerkleTree()
        for lh in hashes[:split]:
            tree.append(lh)
        tree.extend(hashes[split:])
        assert tree.root() == naive_root(hashes)
        for size in {0, 1, len(hashes) // 2, len(hashes)}:
            assert tree.root(size) == naive_root(hashes[:size])


class TestCompactRangeSubtrees:
    def test_a_subtree_appended_whole_gives_the_roots_of_its_leaves(self) -> None:
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(600)]
        tree = MerkleTree.from_leaf_hashes(leaves)
        for height in (0, 1, 3, 8):
            width = 1 << height
            by_leaf, mixed = CompactRange(), CompactRange()
            for start in range(0, 600 - width + 1, width):
                for leaf in leaves[start : start + width]:
                    by_leaf.append(leaf)
                mixed.append_subtree(
                    tree.root(start + width)
                    if start == 0
                    else _subtree(leaves[start : start + width]),
                    height,
                )
                assert mixed.size == by_leaf.size == start + width
                assert mixed.root() == by_leaf.root() == tree.root(start + width)

    def test_a_subtree_must_start_on_its_own_boundary(self) -> None:
        r = CompactRange()
        r.append(leaf_hash(b"x"))
        with pytest.raises(ValueError, match="cannot start at leaf 1"):
            r.append_subtree(b"\x00" * HASH_SIZE, 1)


def _subtree(leaves: Sequence[bytes]) -> bytes:
    return MerkleTree.from_leaf_hashes(leaves).root()
