"""C2SP ``tlog-tiles``: tile paths, a Merkle tree read from tiles, and its right edge.

A tiled log stores its tree as *tiles*: the tile ``N`` at level ``L`` is the sequence of the
Merkle tree hashes of the 256 subtrees of ``256**L`` leaves starting at leaf
``N * 256**(L+1)`` (the hashes at height ``8L``); the levels in between are rehashed on use.
Full tiles never change; the rightmost tile of each level is *partial* (fewer than 256 hashes)
and grows as the log does. ``TiledTree`` keeps only that right edge in memory and reads full
tiles through a callable, so its memory and start-up do not grow with the log, and a root or a
proof costs ``O(log n)`` tile reads (a few per level of 256).

Paths follow https://c2sp.org/tlog-tiles: ``tile/<L>/<N>[.p/<W>]`` and
``tile/entries/<N>[.p/<W>]``, ``<N>`` in zero-padded groups of three digits, all but the last
prefixed with ``x``. Entry bundles are big-endian uint16 length-prefixed entries.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from fedgate.errors import VerificationError
from fedgate.merkle import HASH_SIZE, MerkleProofs

__all__ = [
    "ENTRIES",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileId",
    "TileRead",
    "TiledTree",
    "decode_bundle",
    "edge_of",
    "encode_bundle",
    "entries_path",
    "parse_tile_path",
    "partial_width",
    "tile_path",
    "tile_root",
]

TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT
ENTRIES: Final = -1
"""The ``level`` of a ``TileId`` naming an entry bundle."""
_MAX_LEVEL: Final = 63
_NODE: Final = b"\x01"
_sha256 = hashlib.sha256
_NODE_HASH: Final = hashlib.sha256(_NODE)
"""A hash fed the node prefix, copied per node: OpenSSL 3 looks the digest up on every
``hashlib.sha256()`` call, a copy skips that (about 15 % of a node hash)."""

TileRead = Callable[[int, int, int], list[tuple[int, bytes]]]
"""``read(level, start, stop)``: the stored full tiles ``(index, 8192 bytes)`` of ``level`` with
``start <= index < stop``, in order (missing ones left out)."""


@dataclass(frozen=True, slots=True)
class TileId:
    """A tile (``level`` >= 0) or an entry bundle (``level == ENTRIES``) and its width."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def path(self) -> str:
        if self.level == ENTRIES:
            return entries_path(self.index, self.width)
        return tile_path(self.level, self.index, self.width)


def _encode_index(index: int) -> str:
    if index < 0:
        raise ValueError(f"a tile index is not negative, got {index}")
    groups = []
    while True:
        index, group = divmod(index, 1000)
        groups.append(f"{group:03d}")
        if not index:
            break
    groups.reverse()
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def _suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"a tile width is 1 to {TILE_WIDTH}, got {width}")
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``; raises ``ValueError`` for a level, index or width out of range."""
    if not 0 <= level <= _MAX_LEVEL:
        raise ValueError(f"a tile level is 0 to {_MAX_LEVEL}, got {level}")
    return f"tile/{level}/{_encode_index(index)}{_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``; raises ``ValueError`` for an index or width out of range."""
    return f"tile/entries/{_encode_index(index)}{_suffix(width)}"


def _decimal(text: str, what: str) -> int:
    # No sign, no spaces, no leading zeros: exactly one spelling per number.
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{what} {text!r} is not a decimal number without leading zeros")
    return int(text)


def parse_tile_path(path: str) -> TileId:
    """The tile or bundle a C2SP path names (without the URL prefix); ``ValueError`` saying what
    is wrong for anything that is not exactly such a path."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise ValueError(f"{path!r} is not tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>]")
    if parts[1] == "entries":
        level = ENTRIES
    else:
        level = _decimal(parts[1], "level")
        if level > _MAX_LEVEL:
            raise ValueError(f"level {level} is above {_MAX_LEVEL}")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width = _decimal(rest[-1], "width")
        if not 1 <= width < TILE_WIDTH:
            raise ValueError(f"a partial tile's width is 1 to {TILE_WIDTH - 1}, got {width}")
        rest = [*rest[:-2], rest[-2][:-2]]
    index = 0
    for i, group in enumerate(rest):
        last = i == len(rest) - 1
        digits = group if last else group[1:]
        if (not last and not group.startswith("x")) or len(digits) != 3 or not digits.isdigit():
            raise ValueError(f"{path!r}: index element {group!r} is not x<ddd> (or <ddd> last)")
        if not digits.isascii():
            raise ValueError(f"{path!r}: index element {group!r} is not ASCII digits")
        index = index * 1000 + int(digits)
    if len(rest) > 1 and rest[0] == "x000":
        raise ValueError(f"{path!r}: the index has a leading x000 element")
    return TileId(level, index, width)


def partial_width(level: int, size: int) -> int:
    """The width of the partial tile of ``level`` in a tree of ``size`` (0: none)."""
    return (size >> (TILE_HEIGHT * level)) % TILE_WIDTH


def tile_root(
    hashes: bytes | bytearray | memoryview, start: int = 0, count: int = TILE_WIDTH
) -> bytes:
    """The Merkle tree hash of ``count`` (a power of two) hashes of a tile from ``start``."""
    # Each level is one bytes object: the two children of a node are 64 adjacent bytes.
    level = bytes(hashes[start * HASH_SIZE : (start + count) * HASH_SIZE])
    node = _NODE_HASH.copy  # no digest look-up per hash (see ``_NODE_HASH``)
    while len(level) > HASH_SIZE:
        parts = []
        for i in range(0, len(level), 2 * HASH_SIZE):
            h = node()
            h.update(level[i : i + 2 * HASH_SIZE])
            parts.append(h.digest())
        level = b"".join(parts)
    return level


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """An entry bundle; raises ``ValueError`` for an entry longer than 65,535 bytes."""
    out = bytearray()
    for i, entry in enumerate(entries):
        if len(entry) > 0xFFFF:
            raise ValueError(f"entry {i} of the bundle is {len(entry)} bytes, above 65,535")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; raises ``VerificationError`` for a truncated one."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise VerificationError("entry bundle is truncated inside a length prefix")
        n = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + n > len(data):
            raise VerificationError(f"entry bundle is truncated inside entry {len(out)}")
        out.append(data[at + 2 : at + 2 + n])
        at += 2 + n
    return out


class TiledTree(MerkleProofs):
    """A tree of ``size`` leaves whose full tiles live elsewhere (read through ``read``) and
    whose right edge (the partial tile of each level) is held here.

    ``extend`` appends leaf hashes and returns the tiles they completed, which the caller MUST
    store (in the same transaction as the leaves) before reading them back. Recently written
    and read full tiles are kept in a small cache (``cache_tiles``, 8 KiB each), and the hashes
    of complete subtrees inside a tile once computed (they never change): without them every root
    and inclusion proof re-hashed up to 255 leaves of the right edge, ~0.5 ms per request at the
    gateway (``python -m bench profile``).

    Thread safety: one thread at a time (the log's event loop). Full tiles never change, so a
    proof at a past size reads the same hashes whenever it is computed.
    """

    __slots__ = ("_cache", "_cache_tiles", "_edge", "_read", "_roots", "_size")

    def __init__(
        self, *, size: int, edge: Sequence[bytes], read: TileRead, cache_tiles: int = 512
    ) -> None:
        """A tree of ``size`` leaves with ``edge[L]`` the partial tile of level ``L`` (from
        ``edge_of``). Raises ``ValueError`` when the edge does not fit ``size``."""
        levels = _levels(size)
        if len(edge) != levels:
            raise ValueError(f"a tree of {size} leaves has {levels} tile levels, got {len(edge)}")
        for level, tile in enumerate(edge):
            if len(tile) != partial_width(level, size) * HASH_SIZE:
                raise ValueError(
                    f"the partial tile of level {level} holds {len(tile) // HASH_SIZE} hashes; a "
                    f"tree of {size} leaves has {partial_width(level, size)}"
                )
        self._size = size
        self._edge = [bytearray(t) for t in edge]
        self._read = read
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_tiles = cache_tiles
        self._roots: dict[tuple[int, int], bytes] = {}

    @classmethod
    def open(cls, *, size: int, leaf_hashes: Sequence[bytes], read: TileRead) -> TiledTree:
        """The tree of ``size`` leaves from its stored full tiles and the hashes of its last
        ``size % 256`` leaves (the level-0 edge); reads at most 255 full tiles per level.

        Raises ``ValueError`` when a tile the edge needs is missing or has the wrong length.
        """
        return cls(size=size, edge=edge_of(size, leaf_hashes, read), read=read)

    @property
    def size(self) -> int:
        return self._size

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaf hashes; return the tiles completed, ``(level, index, data)``.

        Raises ``ValueError`` on a hash that is not 32 bytes (the tree is then unchanged).
        """
        hashes = list(leaf_hashes)
        for i, h in enumerate(hashes):
            if len(h) != HASH_SIZE:
                raise ValueError(f"leaf hash {i} must be {HASH_SIZE} bytes, got {len(h)}")
        done: list[tuple[int, int, bytes]] = []
        size = self._size
        edge = self._edge
        pending: list[bytes] = hashes
        level = 0
        while pending:
            if level == len(edge):
                edge.append(bytearray())
            tile = edge[level]
            count = size >> (TILE_HEIGHT * level)  # nodes of this level before ``pending``
            ups: list[bytes] = []
            for h in pending:
                tile += h
                count += 1
                if len(tile) == TILE_WIDTH * HASH_SIZE:
                    data = bytes(tile)
                    index = count // TILE_WIDTH - 1
                    done.append((level, index, data))
                    self._remember(level, index, data)
                    ups.append(tile_root(data))
                    tile.clear()
            pending = ups
            level += 1
        self._size = size + len(hashes)
        while len(edge) < _levels(self._size):
            edge.append(bytearray())
        return done

    def leaf_hash_at(self, index: int) -> bytes:
        """The hash of leaf ``index``; raises ``ValueError`` if out of range."""
        if not 0 <= index < self._size:
            raise ValueError(f"leaf index {index} out of range for tree size {self._size}")
        return self._node(0, index)

    def tile(self, level: int, index: int, width: int = TILE_WIDTH) -> bytes | None:
        """The first ``width`` hashes of tile ``(level, index)`` as this tree holds it now;
        ``None`` when the tree does not (yet) have that many."""
        full = self._size >> (TILE_HEIGHT * level)
        if (index + 1) * TILE_WIDTH <= full:
            data = self._full(level, index)
        elif index == full // TILE_WIDTH:
            data = bytes(self._edge[level]) if level < len(self._edge) else b""
        else:
            return None
        return data[: width * HASH_SIZE] if len(data) >= width * HASH_SIZE else None

    def _remember(self, level: int, index: int, data: bytes) -> None:
        cache = self._cache
        cache[(level, index)] = data
        cache.move_to_end((level, index))
        while len(cache) > self._cache_tiles:
            cache.popitem(last=False)

    def _full(self, level: int, index: int) -> bytes:
        data = self._cache.get((level, index))
        if data is not None:
            self._cache.move_to_end((level, index))
            return data
        found = self._read(level, index, index + 1)
        if not found or found[0][0] != index or len(found[0][1]) != TILE_WIDTH * HASH_SIZE:
            raise LookupError(f"the full tile {tile_path(level, index)} is missing or damaged")
        data = found[0][1]
        self._remember(level, index, data)
        return data

    def _node(self, level: int, index: int) -> bytes:
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height  # its first hash at tile_level
        tile_index, offset = divmod(first, TILE_WIDTH)
        full = self._size >> (TILE_HEIGHT * tile_level)
        if (tile_index + 1) * TILE_WIDTH <= full:
            data: bytes | bytearray = self._full(tile_level, tile_index)
        else:
            data = self._edge[tile_level]
        if height == 0:
            return bytes(data[offset * HASH_SIZE : (offset + 1) * HASH_SIZE])
        # Asked only for complete subtrees, whose hashes never change: computed once each.
        # Plain dict operations, so a reader on another thread sees a hash or none.
        roots = self._roots
        node = roots.get((level, index))
        if node is None:
            node = tile_root(data, offset, 1 << height)
            if len(roots) >= _ROOTS_KEPT:
                roots.clear()
            roots[(level, index)] = node
        return node


_ROOTS_KEPT = 16_384
"""Subtree hashes a ``TiledTree`` keeps (~2 MiB); the recent right edge is re-made at once."""


def _levels(size: int) -> int:
    """Tile levels a tree of ``size`` leaves has (full or partial tiles), at least one."""
    levels = 1
    while size >> (TILE_HEIGHT * levels):
        levels += 1
    return levels


def edge_of(size: int, leaf_hashes: Sequence[bytes], read: TileRead) -> list[bytes]:
    """The partial tile of every level of a tree of ``size`` leaves: level 0 from the hashes of
    its last ``size % 256`` leaves, level ``L`` from the roots of the full tiles of level
    ``L - 1`` after the last full tile of level ``L``. Raises ``ValueError`` when a needed tile
    is missing or has the wrong length."""
    width0 = partial_width(0, size)
    if len(leaf_hashes) != width0:
        raise ValueError(
            f"a tree of {size} leaves ends with {width0} leaves, got {len(leaf_hashes)}"
        )
    edge = [b"".join(leaf_hashes)]
    for level in range(1, _levels(size)):
        width = partial_width(level, size)
        start = (size >> (TILE_HEIGHT * level)) - width  # first full tile of level - 1 to fold
        tiles = read(level - 1, start, start + width) if width else []
        if [t[0] for t in tiles] != list(range(start, start + width)):
            raise ValueError(
                f"tiles of level {level - 1} from {start} to {start + width - 1} are missing"
            )
        roots = []
        for index, data in tiles:
            if len(data) != TILE_WIDTH * HASH_SIZE:
                raise ValueError(f"the tile {tile_path(level - 1, index)} is {len(data)} bytes")
            roots.append(tile_root(data))
        edge.append(b"".join(roots))
    return edge
