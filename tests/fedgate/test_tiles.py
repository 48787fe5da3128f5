"""C2SP tlog-tiles: paths, the tiled tree against the in-memory tree, and an independent
reading of the spec (tiles recomputed from its MTH formula with the reference recursion)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.errors import VerificationError
from fedgate.merkle import MerkleTree, leaf_hash, root_of, verify_consistency, verify_inclusion
from fedgate.tiles import (
    ENTRIES,
    TiledTree,
    TileId,
    decode_bundle,
    encode_bundle,
    entries_path,
    parse_tile_path,
    partial_width,
    tile_path,
)


def _hashes(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(8, "big")) for i in range(n)]


class _Store:
    """Full tiles in a dict, as a store keeps them; counts reads."""

    def __init__(self) -> None:
        self.tiles: dict[tuple[int, int], bytes] = {}
        self.reads = 0

    def put(self, done: list[tuple[int, int, bytes]]) -> None:
        for level, index, data in done:
            assert (level, index) not in self.tiles, "a full tile is written once"
            self.tiles[(level, index)] = data

    def read(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        self.reads += 1
        return [(i, self.tiles[(level, i)]) for i in range(start, stop) if (level, i) in self.tiles]


def _tiled(hashes: list[bytes], batch: int = 97) -> tuple[TiledTree, _Store]:
    store = _Store()
    tree = TiledTree(size=0, edge=[b""], read=store.read)
    for i in range(0, len(hashes), batch):
        store.put(tree.extend(hashes[i : i + batch]))
    return tree, store


def _spec_tile(hashes: list[bytes], level: int, n: int, width: int) -> bytes:
    """The spec's formula: MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l]) for i < width."""
    span = 256**level
    return b"".join(
        root_of(hashes[(n * 256 + i) * span : (n * 256 + i + 1) * span]) for i in range(width)
    )


class TestPaths:
    @pytest.mark.parametrize(
        ("level", "index", "width", "path"),
        [
            (0, 0, 256, "tile/0/000"),
            (0, 1234067, 256, "tile/0/x001/x234/067"),
            (1, 1000, 17, "tile/1/x001/000.p/17"),
            (2, 999, 1, "tile/2/999.p/1"),
            (63, 5, 255, "tile/63/005.p/255"),
            (ENTRIES, 1234067, 256, "tile/entries/x001/x234/067"),
            (ENTRIES, 0, 112, "tile/entries/000.p/112"),
        ],
    )
    def test_round_trip(self, level: int, index: int, width: int, path: str) -> None:
        tile = TileId(level, index, width)
        assert tile.path == path
        assert parse_tile_path(path) == tile
        if level != ENTRIES:
            assert tile_path(level, index, width) == path
        else:
            assert entries_path(index, width) == path

    @pytest.mark.parametrize(
        "path",
        [
            "tile/0/1234067",  # not in groups of three
            "tile/0/001/234",  # a group without its x
            "tile/0/x001/x234",  # the last group with an x
            "tile/00/000",  # leading zero in the level
            "tile/64/000",  # level out of range
            "tile/0/000.p/256",  # a partial tile as wide as a full one
            "tile/0/000.p/0",  # an empty tile
            "tile/0/000.p/07",  # leading zero in the width
            "tile/0/x000/123",  # a leading zero group
            "tile/0/-01",
            "tile/0/1٢3",  # non-ASCII digits
            "tiles/0/000",
            "tile/0",
            "tile/entries/x1/000",
        ],
    )
    def test_malformed_paths_are_refused(self, path: str) -> None:
        with pytest.raises(ValueError):
            parse_tile_path(path)

    def test_partial_widths_follow_the_spec_example(self) -> None:
        # "a tree of size 70,000 ... partial level 0 tile of width 112, ... partial level 1
        # tile of width 17, and one partial level 2 tile of width 1"
        assert [partial_width(level, 70_000) for level in range(3)] == [112, 17, 1]
        assert [partial_width(level, 256) for level in range(2)] == [0, 1]


class TestBundles:
    def test_round_trip_and_truncation(self) -> None:
        entries = [b"", b"a", bytes(300), bytes(65535)]
        data = encode_bundle(entries)
        assert data[:2] == b"\x00\x00"
        assert data[2:5] == b"\x00\x01a"
        assert decode_bundle(data) == entries
        with pytest.raises(VerificationError, match="truncated"):
            decode_bundle(data[:-1])
        with pytest.raises(ValueError, match="65,535"):
            encode_bundle([bytes(65536)])


class TestTiledTree:
    @pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 511, 512, 65535, 65536, 65537, 70_000])
    def test_tiles_match_the_spec_formula(self, size: int) -> None:
        hashes = _hashes(size)
        tree, store = _tiled(hashes, batch=1000)
        for (level, n), data in store.tiles.items():
            if level == 0 or n < 3:
                assert data == _spec_tile(hashes, level, n, 256), (level, n)
        level = 0
        while size >> (8 * level):
            width = partial_width(level, size)
            n = (size >> (8 * level)) // 256
            if width:
                assert tree.tile(level, n, width) == _spec_tile(hashes, level, n, width)
            level += 1
        assert tree.root() == MerkleTree.from_leaf_hashes(hashes).root()

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 70_000), st.data())
    def test_proofs_equal_the_in_memory_tree(self, size: int, data: st.DataObject) -> None:
        hashes = _hashes(size, b"p")
        batch = data.draw(st.sampled_from([1, 255, 256, 1000, 5000]))
        tree, _ = _tiled(hashes, batch=batch)
        memory = MerkleTree.from_leaf_hashes(hashes)
        at = data.draw(st.integers(1, size))
        index = data.draw(st.integers(0, at - 1))
        old = data.draw(st.integers(0, at))
        assert tree.root(at) == memory.root(at)
        assert tree.inclusion_proof(index, at) == memory.inclusion_proof(index, at)
        assert tree.consistency_proof(old, at) == memory.consistency_proof(old, at)
        assert tree.leaf_hash_at(index) == hashes[index]

    @pytest.mark.parametrize("around", [256, 65536])
    def test_proofs_at_sizes_around_tile_boundaries(self, around: int) -> None:
        hashes = _hashes(around + 2)
        tree, _ = _tiled(hashes, batch=100)
        for size in (around - 1, around, around + 1):
            root = root_of(hashes[:size])
            for index in (0, around // 2, size - 2, size - 1):
                proof = tree.inclusion_proof(index, size)
                verify_inclusion(hashes[index], index, size, proof, root)
            for old in (1, around - 1, around, size):
                if old <= size:
                    proof = tree.consistency_proof(old, size)
                    verify_consistency(old, size, proof, root_of(hashes[:old]), root)

    @pytest.mark.parametrize("kept", [16_384, 8])
    def test_roots_asked_while_growing_equal_the_in_memory_tree(
        self, kept: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As the gateway uses it: a root, the last signed root and a receipt's proof after
        every small batch. Subtree hashes are kept between calls (and dropped when too many):
        none may go stale as the right edge grows."""
        monkeypatch.setattr("fedgate.tiles._ROOTS_KEPT", kept)
        hashes = _hashes(1300, b"g")
        store = _Store()
        tree = TiledTree(size=0, edge=[b""], read=store.read)
        memory = MerkleTree()
        signed = 0
        for start in range(0, len(hashes), 7):
            batch = hashes[start : start + 7]
            store.put(tree.extend(batch))
            memory.extend(batch)
            size = tree.size
            assert tree.root() == memory.root()
            assert tree.root(signed) == memory.root(signed)
            assert tree.inclusion_proof(size - 1) == memory.inclusion_proof(size - 1)
            assert tree.inclusion_proof(start // 2, size) == memory.inclusion_proof(start // 2)
            signed = size

    def test_reopened_from_tiles_and_edge_continues_the_same_tree(self) -> None:
        hashes = _hashes(70_000)
        tree, store = _tiled(hashes[:66_000], batch=777)
        again = TiledTree.open(size=66_000, leaf_hashes=hashes[65_792:66_000], read=store.read)
        assert again.root() == tree.root()
        store.put(again.extend(hashes[66_000:]))
        assert again.root() == root_of(hashes)

    def test_a_proof_reads_a_few_tiles(self) -> None:
        hashes = _hashes(70_000)
        _tree, store = _tiled(hashes, batch=5000)
        cold = TiledTree.open(
            size=70_000, leaf_hashes=hashes[-112:], read=store.read
        )  # fresh cache
        store.reads = 0
        cold.inclusion_proof(1234, 70_000)
        cold.consistency_proof(3000, 70_000)
        assert store.reads <= 6

    def test_a_missing_tile_is_an_error_not_a_wrong_root(self) -> None:
        hashes = _hashes(70_000)
        _, store = _tiled(hashes)
        del store.tiles[(0, 200)]
        cold = TiledTree.open(size=70_000, leaf_hashes=hashes[-112:], read=store.read)
        with pytest.raises(LookupError, match="tile/0/200"):
            cold.inclusion_proof(200 * 256, 70_000)
        del store.tiles[(0, 272)]
        with pytest.raises(ValueError, match="missing"):
            TiledTree.open(size=70_000, leaf_hashes=hashes[-112:], read=store.read)

    def test_an_edge_that_does_not_fit_the_size_is_refused(self) -> None:
        with pytest.raises(ValueError, match="ends with 3 leaves"):
            TiledTree.open(size=3, leaf_hashes=_hashes(2), read=_Store().read)

    def test_a_tampered_tile_gives_a_proof_that_fails(self) -> None:
        hashes = _hashes(1000)
        _, store = _tiled(hashes)
        root = root_of(hashes)
        data = bytearray(store.tiles[(0, 1)])
        data[40] ^= 1
        store.tiles[(0, 1)] = bytes(data)
        cold = TiledTree.open(size=1000, leaf_hashes=hashes[768:], read=store.read)
        proof = cold.inclusion_proof(10, 1000)
        with pytest.raises(VerificationError):
            verify_inclusion(hashes[10], 10, 1000, proof, root)
        assert (
            hashlib.sha256(bytes(data)).digest()
            != hashlib.sha256(_spec_tile(hashes, 0, 1, 256)).digest()
        )
