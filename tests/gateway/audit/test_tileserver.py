"""The log served as a C2SP tiled log over real HTTP, read back with the project's own client
(``fedgate.tileclient``) and checked against an independent reading of the spec; a witness
cosigns from the tiles and refuses tampered ones."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from fedgate.checkpoint import Checkpoint, parse_checkpoint
from fedgate.errors import NotFound, VerificationError
from fedgate.merkle import leaf_hash, root_of
from fedgate.note import parse_note
from fedgate.pki import init_federation
from fedgate.tileclient import Fetch, TileReader, http_fetcher
from fedgate.tiles import decode_bundle
from fedgate.web.serve import EmbeddedServer
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore, CommitBatch
from gateway.audit.tileserver import tile_app
from gateway.config import (
    AuditConfig,
    ConfigError,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
)
from gateway.server import Gateway

if TYPE_CHECKING:
    from conftest import LogFactory

from tests.gateway.audit.conftest import WITNESSES, Fed
from tests.gateway.audit.test_log import ORIGIN, _Seam


class Served:
    def __init__(self, log: AuditLog, server: EmbeddedServer) -> None:
        self.log = log
        self.server = server
        self.fetch = http_fetcher(server.url)

    # The client is blocking (urllib) and the server runs in this loop: clients run on threads.
    async def get(self, path: str) -> bytes:
        return await asyncio.to_thread(self.fetch, path)

    async def checkpoint(self) -> Checkpoint:
        return parse_checkpoint(parse_note((await self.get("checkpoint")).decode()).text)

    async def status(self, path: str) -> int:
        def status() -> int:
            try:
                with urllib.request.urlopen(f"{self.server.url}/{path}", timeout=5) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        return await asyncio.to_thread(status)

    async def headers(self, path: str) -> dict[str, str]:
        def headers() -> dict[str, str]:
            with urllib.request.urlopen(f"{self.server.url}/{path}", timeout=5) as answer:
                return {k.lower(): v for k, v in answer.headers.items()}

        return await asyncio.to_thread(headers)


async def _append(log: AuditLog, logs: LogFactory, count: int) -> None:
    await asyncio.gather(*(log.append(logs.fed.request()) for _ in range(count)))


@pytest.fixture
async def served(sqlite_logs: LogFactory) -> AsyncIterator[Served]:
    log = await sqlite_logs.open(max_batch=50)
    await _append(log, sqlite_logs, 700)
    server = EmbeddedServer(tile_app(log))
    await server.start()
    try:
        yield Served(log, server)
    finally:
        await server.stop()


async def _bundles(fetch: Fetch, size: int) -> list[bytes]:
    return await asyncio.to_thread(_bundles_sync, fetch, size)


def _bundles_sync(fetch: Fetch, size: int) -> list[bytes]:
    paths = [f"tile/entries/{n:03d}" for n in range(size // 256)]
    if size % 256:
        paths.append(f"tile/entries/{size // 256:03d}.p/{size % 256}")
    return [entry for p in paths for entry in decode_bundle(fetch(p))]


class TestTheProjectsClient:
    async def test_tiles_verify_and_prove(self, served: Served) -> None:
        cp = await served.checkpoint()
        assert cp.size == 700
        reader = await asyncio.to_thread(TileReader, served.fetch, cp)
        for index in (0, 255, 256, 511, 512, 699):
            entry = await asyncio.to_thread(reader.entry, index)
            assert entry == await served.log.get_entry(index)
        old = root_of([leaf_hash(e) for e in await _bundles(served.fetch, 256)])
        await asyncio.to_thread(reader.consistency_proof, 256, old)

    async def test_an_altered_tile_is_refused(self, served: Served) -> None:
        def altered(target: str) -> Fetch:
            def fetch(path: str) -> bytes:
                data = served.fetch(path)
                return data[:40] + bytes([data[40] ^ 1]) + data[41:] if path == target else data

            return fetch

        cp = await served.checkpoint()
        # A tile the root is made of: refused on sight.
        with pytest.raises(VerificationError, match="do not hash to the checkpoint's root"):
            await asyncio.to_thread(TileReader, altered("tile/1/000.p/2"), cp)
        # A full tile the root only holds the hash of: the proofs through it fail.
        reader = await asyncio.to_thread(TileReader, altered("tile/0/001"), cp)
        with pytest.raises(VerificationError):
            await asyncio.to_thread(reader.entry, 300)
        await asyncio.to_thread(reader.entry, 600)  # the other tiles still serve

    async def test_a_short_tile_is_refused(self, served: Served) -> None:
        def short(path: str) -> bytes:
            data = served.fetch(path)
            return data[:-32] if path.startswith("tile/0/002.p/") else data

        cp = await served.checkpoint()
        with pytest.raises(VerificationError, match="bytes, not"):
            await asyncio.to_thread(TileReader, short, cp)


class TestAnIndependentReadingOfTheSpec:
    """Everything recomputed here from the spec's text, not from ``fedgate.tiles``."""

    async def test_paths_widths_and_contents(self, served: Served) -> None:
        fetch = served.get
        entries = await _bundles(served.fetch, 700)
        assert len(entries) == 700
        hashes = [leaf_hash(e) for e in entries]  # RFC 6962: SHA-256(0x00 || entry)

        def mth(level: int, n: int, i: int) -> bytes:
            span = 256**level
            return root_of(hashes[(n * 256 + i) * span : (n * 256 + i + 1) * span])

        # 700 = 2 full level-0 tiles + a partial one of 188 (700 mod 256), and a partial
        # level-1 tile of floor(700 / 256) mod 256 = 2; nothing at level 2.
        expected = {
            "tile/0/000": b"".join(mth(0, 0, i) for i in range(256)),
            "tile/0/001": b"".join(mth(0, 1, i) for i in range(256)),
            "tile/0/002.p/188": b"".join(mth(0, 2, i) for i in range(188)),
            "tile/1/000.p/2": mth(1, 0, 0) + mth(1, 0, 1),
        }
        for path, data in expected.items():
            assert await fetch(path) == data, path
        assert root_of(hashes) == (await served.checkpoint()).root_hash
        # A smaller partial tile (an older checkpoint's) is a prefix; tiles not yet there and
        # malformed paths are 404.
        assert await fetch("tile/0/002.p/5") == expected["tile/0/002.p/188"][: 5 * 32]
        assert await fetch("tile/0/001.p/17") == expected["tile/0/001"][: 17 * 32]
        for missing in (
            "tile/0/002",
            "tile/0/003.p/1",
            "tile/1/000",
            "tile/2/000.p/1",
            "tile/0/002.p/189",
            "tile/entries/002",
            "tile/0/2",
            "tile/0/x000/002",
            "tile/0/000.p/256",
            "tile/00/000",
            "nothing",
        ):
            assert await served.status(missing) == 404, missing
        with pytest.raises(NotFound):
            await fetch("tile/0/003")

    async def test_the_x_prefixed_index_path_of_a_big_index(self, served: Served) -> None:
        # Index 1000 has its own path element (x001/000): beyond this log, so 404, not 400.
        assert await served.status("tile/0/x001/000") == 404
        assert await served.status("tile/0/001") == 200

    async def test_caching_headers(self, served: Served) -> None:
        tile = await served.headers("tile/0/000")
        assert "immutable" in tile["cache-control"]
        assert tile["content-type"] == "application/octet-stream"
        checkpoint = await served.headers("checkpoint")
        assert checkpoint["content-type"].startswith("text/plain")
        assert "immutable" not in checkpoint["cache-control"]


class TestAWitnessFromTiles:
    async def test_cosigns_from_tiles_and_refuses_tampered_ones(
        self, sqlite_logs: LogFactory, served: Served
    ) -> None:
        witness = sqlite_logs.fed.witness(WITNESSES[0], sqlite_logs.tmp / "w.json")
        note = served.log.latest_checkpoint()
        await asyncio.to_thread(witness.add_checkpoint_from_tiles_sync, note, served.fetch)
        assert witness.last_cosigned(served.log.origin)[0] == 700
        await _append(served.log, sqlite_logs, 300)
        note = served.log.latest_checkpoint()

        def altered(path: str) -> bytes:
            data = served.fetch(path)
            return bytes(32) + data[32:] if path == "tile/1/000.p/3" else data

        with pytest.raises(VerificationError, match="do not hash"):
            await asyncio.to_thread(witness.add_checkpoint_from_tiles_sync, note, altered)
        assert witness.last_cosigned(served.log.origin)[0] == 700
        line = await asyncio.to_thread(witness.add_checkpoint_from_tiles_sync, note, served.fetch)
        assert line.name == WITNESSES[0]
        assert witness.last_cosigned(served.log.origin)[0] == 1000


class TestTheGatewayServesItsTiles:
    async def test_with_audit_tiles_listen(self, tmp_path: Path) -> None:
        federation = init_federation(tmp_path / "fed")
        config = GatewayConfig(
            federation=FederationConfig(dir=federation, reload_interval_s=0),
            pipeline=PipelineConfig(state_dir=tmp_path / "state"),
            server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
            audit=AuditConfig(tiles_listen="127.0.0.1:0"),
        )
        gateway = await Gateway.start(config)
        try:
            assert gateway.tiles is not None
            async with httpx.AsyncClient(base_url=gateway.tiles.url) as client:
                answer = await client.get("/checkpoint")
                assert answer.status_code == 200
                assert answer.text == gateway.audit.latest_checkpoint()
                assert (await client.get("/tile/0/000")).status_code == 404  # no full tile yet
        finally:
            await gateway.stop(0)
        assert gateway.tiles is None

    def test_it_must_listen_on_loopback(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"audit\.tiles_listen must be a loopback address"):
            GatewayConfig(
                federation=FederationConfig(dir=tmp_path),
                pipeline=PipelineConfig(state_dir=tmp_path),
                audit=AuditConfig(tiles_listen="0.0.0.0:8090"),
            ).validate()


class _Held(_Seam):
    """Says when a commit reached the store (the log's tree already holds its batch)."""

    def __init__(self, inner: AuditStore) -> None:
        super().__init__(inner)
        self.entered = asyncio.Event()

    async def commit(self, batch: CommitBatch) -> None:
        self.entered.set()
        await super().commit(batch)


class TestOnlyCommittedTiles:
    async def test_a_batch_in_flight_is_not_served(self, fed: Fed, tmp_path: Path) -> None:
        seam = _Held(await open_sqlite_store(tmp_path / "a.sqlite", origin=ORIGIN))
        log = await AuditLog.open(store=seam, origin=ORIGIN, signer=fed.log_signer())
        try:
            await asyncio.gather(*(log.append(fed.request()) for _ in range(10)))
            committed = await log.tile(0, 0, 10)
            assert committed is not None
            seam.gate = asyncio.Event()
            seam.entered.clear()
            pending = asyncio.gather(*(log.append(fed.request()) for _ in range(5)))
            await seam.entered.wait()
            assert log._tree.size == 15  # extended, its commit held
            assert await log.tile(0, 0, 11) is None
            assert await log.entry_bundle(0, 11) is None
            assert await log.tile(0, 0, 10) == committed
            seam.gate.set()
            await pending
            assert await log.tile(0, 0, 15) is not None
        finally:
            if seam.gate is not None:
                seam.gate.set()
            await log.close()
