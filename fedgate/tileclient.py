"""A client of C2SP tiled logs: proofs computed from fetched tiles, checked against a checkpoint.

Nothing fetched is trusted: ``TileReader`` builds the tree at a checkpoint's size from the tiles
a server returns (exactly the widths that size calls for) and refuses them unless they hash to
the checkpoint's signed root; every proof it computes is then verified as any RFC 9162 proof
is. ``fetch(path)`` returns the bytes at ``<prefix>/<path>`` and raises ``NotFound`` for a 404;
``http_fetcher`` is one over plain HTTP(S) with the standard library.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from fedgate.checkpoint import Checkpoint
from fedgate.errors import NotFound, VerificationError
from fedgate.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from fedgate.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TiledTree,
    decode_bundle,
    entries_path,
    partial_width,
    tile_path,
)

__all__ = ["Fetch", "TileReader", "http_fetcher"]

Fetch = Callable[[str], bytes]

_TIMEOUT_S = 10.0
_MAX_BYTES = 1 << 24


def http_fetcher(prefix: str, *, timeout_s: float = _TIMEOUT_S) -> Fetch:
    """``fetch`` over HTTP(S) under ``prefix`` (e.g. ``http://host:port``); raises ``NotFound``
    for a 404 and ``VerificationError`` for any other failure or an oversized answer."""
    base = prefix.rstrip("/")

    def fetch(path: str) -> bytes:
        url = f"{base}/{path}"
        if not url.startswith(("http://", "https://")):
            raise VerificationError(f"{url} is not an http(s) URL")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 - checked above
                data: bytes = answer.read(_MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(f"{url}: not found") from exc
            raise VerificationError(f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise VerificationError(f"cannot fetch {url}: {exc}") from exc
        if len(data) > _MAX_BYTES:
            raise VerificationError(f"{url}: the answer is larger than {_MAX_BYTES} bytes")
        return data

    return fetch


class TileReader:
    """The tree of a checkpoint, read from a tiled log's tiles and checked against its root.

    Raises ``VerificationError`` at construction when a tile has the wrong length or the tiles
    do not hash to ``checkpoint.root_hash``.
    """

    def __init__(self, fetch: Fetch, checkpoint: Checkpoint) -> None:
        self._fetch = fetch
        self.checkpoint = checkpoint
        size = checkpoint.size
        edge: list[bytes] = []
        level = 0
        while not edge or size >> (TILE_HEIGHT * level):
            width = partial_width(level, size)
            index = (size >> (TILE_HEIGHT * level)) // TILE_WIDTH
            edge.append(self._tile(level, index, width) if width else b"")
            level += 1
        try:
            self.tree = TiledTree(size=size, edge=edge, read=self._read)
            root = self.tree.root()
        except (ValueError, LookupError) as exc:
            raise VerificationError(f"the log's tiles at size {size} are unusable: {exc}") from exc
        if root != checkpoint.root_hash:
            raise VerificationError(
                f"the tiles served for size {size} do not hash to the checkpoint's root: the "
                "server altered them"
            )

    def _tile(self, level: int, index: int, width: int) -> bytes:
        data = self._fetch(tile_path(level, index, width))
        if len(data) != width * HASH_SIZE:
            raise VerificationError(
                f"{tile_path(level, index, width)} is {len(data)} bytes, not {width * HASH_SIZE}"
            )
        return data

    def _read(self, level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return [(i, self._tile(level, i, TILE_WIDTH)) for i in range(start, stop)]

    def _proof(self, compute: Callable[[], list[bytes]]) -> list[bytes]:
        try:
            return compute()
        except LookupError as exc:
            raise VerificationError(f"a tile is missing: {exc}") from exc

    def inclusion_proof(self, index: int, leaf: bytes) -> list[bytes]:
        """The proof that ``leaf`` (a leaf hash) is entry ``index``, verified (else
        ``VerificationError``)."""
        size = self.checkpoint.size
        proof = self._proof(lambda: self.tree.inclusion_proof(index, size))
        verify_inclusion(leaf, index, size, proof, self.checkpoint.root_hash)
        return proof

    def consistency_proof(self, old_size: int, old_root: bytes) -> list[bytes]:
        """The proof that this checkpoint extends the tree (``old_size``, ``old_root``),
        verified; else ``VerificationError``."""
        cp = self.checkpoint
        if not 0 <= old_size <= cp.size:
            raise VerificationError(f"old size {old_size} is beyond the checkpoint's {cp.size}")
        proof = self._proof(lambda: self.tree.consistency_proof(old_size, cp.size))
        verify_consistency(old_size, cp.size, proof, old_root, cp.root_hash)
        return proof

    def entry(self, index: int) -> bytes:
        """Entry ``index`` from its entry bundle, checked against the level-0 tile."""
        size = self.checkpoint.size
        if not 0 <= index < size:
            raise NotFound(f"no entry {index} in a tree of size {size}")
        bundle = index // TILE_WIDTH
        width = min(TILE_WIDTH, size - bundle * TILE_WIDTH)
        entries = decode_bundle(self._fetch(entries_path(bundle, width)))
        if len(entries) != width:
            raise VerificationError(f"entry bundle {bundle} holds {len(entries)}, not {width}")
        data = entries[index % TILE_WIDTH]
        self.inclusion_proof(index, leaf_hash(data))
        return data
