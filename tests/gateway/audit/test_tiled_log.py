"""The log's tree in C2SP tiles in both stores: what the stores hold is what the spec says, a
reopened log proves from tiles, a tampered tile is refused (at open, by ``verify``, by
``prove``), and ``verify --from N`` starts from the tiles checked against a signed checkpoint."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
from typing import TYPE_CHECKING

import pytest

from fedgate.auditverify import VerifyOptions, VerifyReport, _chunk_size, _spans, verify_log
from fedgate.checkpoint import parse_checkpoint
from fedgate.errors import LogInconsistent, VerificationError
from fedgate.evidence import log_verifiers
from fedgate.merkle import root_of, verify_consistency, verify_inclusion
from fedgate.note import parse_note
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CHECKPOINT_INTERVAL
from tests.gateway.audit.test_tamper import Attacker, flip, run_audit

if TYPE_CHECKING:
    from conftest import LogFactory

ORIGIN = "fedgate.test/gateway/shard-0"
SIZE = 700  # two full level-0 tiles and a partial one of 188; a partial level-1 tile of 2


async def _fill(logs: LogFactory, count: int = SIZE) -> None:
    log = await logs.open(max_batch=64)
    fed = logs.fed
    await asyncio.gather(*(log.append(fed.request()) for _ in range(count)))
    await log.close()


def _reader(logs: LogFactory) -> SqliteDatabase | PgDatabase:
    if logs.kind == "sqlite":
        return SqliteDatabase(logs.db, origin=None, writer=False)
    assert logs.pg is not None
    return PgDatabase(logs.pg.dsn, origin=ORIGIN, schema=logs.pg.schema, writer=False)


def _root(note: str) -> bytes:
    return parse_checkpoint(parse_note(note).text).root_hash


class TestStoredTiles:
    async def test_the_store_holds_the_full_tiles_the_spec_defines(self, logs: LogFactory) -> None:
        await _fill(logs)
        db = _reader(logs)
        try:
            hashes = db.leaf_hashes(0, SIZE)
            tiles = db.tiles(0, 0, 100)
            assert [i for i, _ in tiles] == [0, 1]
            for n, data in tiles:
                # tile n at level 0: MTH(D[n*256 + i : n*256 + i + 1]) = the leaf hashes
                assert data == b"".join(
                    root_of(hashes[n * 256 + i : n * 256 + i + 1]) for i in range(256)
                )
            assert db.tiles(1, 0, 10) == []  # the level-1 tile is partial: never stored
            stored = db.load()
            assert stored.tile_count == 2
            assert stored.edge_hashes == hashes[512:]
        finally:
            db.close()

    async def test_a_reopened_log_proves_from_its_tiles(self, logs: LogFactory) -> None:
        await _fill(logs)
        log = await logs.open()
        root = _root(log.latest_checkpoint())
        db = _reader(logs)
        try:
            hashes = db.leaf_hashes(0, SIZE)
        finally:
            db.close()
        assert root == root_of(hashes)
        for size in (255, 256, 257, 511, 512, 513, SIZE):
            at = root_of(hashes[:size])
            for index in {0, 255 % size, 256 % size, size - 1}:
                proof = log.inclusion_proof(index, size)
                verify_inclusion(hashes[index], index, size, proof, at)
            for old in (1, 255, 256, 300):
                if old <= size:
                    proof = log.consistency_proof(old, size)
                    verify_consistency(old, size, proof, root_of(hashes[:old]), at)
        receipt = await log.append(logs.fed.request())
        verify_inclusion(
            log.leaf_hash(receipt.index),
            receipt.index,
            receipt.tree_size,
            list(receipt.inclusion_proof),
            _root(receipt.checkpoint),
        )


class TestATamperedTile:
    @pytest.fixture
    async def tampered(self, logs: LogFactory) -> LogFactory:
        await _fill(logs)
        attacker = Attacker(logs)
        try:
            data = bytes(attacker.run("SELECT data FROM tiles WHERE level = 0 AND idx = 0")[0][0])
            attacker.run(
                "UPDATE tiles SET data = ? WHERE level = 0 AND idx = 0", (flip(data, 100),)
            )
        finally:
            attacker.close()
        return logs

    async def test_the_log_refuses_to_open(self, tampered: LogFactory) -> None:
        store = await tampered.store()
        try:
            with pytest.raises(LogInconsistent, match="do not hash to the root"):
                await AuditLog.open(store=store, origin=ORIGIN, signer=tampered.fed.log_signer())
        finally:
            await store.close()

    async def test_verify_names_the_tile(
        self, tampered: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out = run_audit(
            ["verify", *tampered.source_args(), "--federation", str(tampered.fed.dir),
             "--no-signatures"],
            capsys,
        )  # fmt: skip
        assert code == 1, out
        assert "the stored tile tile/0/000 does not match the entries" in out

    async def test_prove_refuses(
        self, tampered: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(VerificationError, match="stored tiles do not match the checkpoint"):
            run_audit(["prove", *tampered.source_args(), "3"], capsys)


class TestVerifyFrom:
    async def test_from_n_checks_only_what_follows_the_checkpoint_before_n(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _fill(logs)
        attacker = Attacker(logs)
        try:
            leaf = flip(bytes(attacker.run("SELECT leaf FROM leaves WHERE idx = 100")[0][0]), 50)
            attacker.run(
                "UPDATE leaves SET leaf = ?, leaf_hash = ? WHERE idx = 100",
                (leaf, hashlib.sha256(b"\x00" + leaf).digest()),
            )
        finally:
            attacker.close()
        args = ["verify", *logs.source_args(), "--federation", str(logs.fed.dir), "--no-signatures"]
        code, out = run_audit(args, capsys)
        assert code == 1
        assert "do not match (one of them is the first bad entry) the checkpoint" in out
        code, out = run_audit([*args, "--from", "600"], capsys)
        assert code == 0, out
        verified = int(out.split("entries")[1].split()[0])
        # From the newest kept checkpoint at or before 600 on (kept once per 256 entries).
        assert 0 < verified <= SIZE - 600 + CHECKPOINT_INTERVAL

    async def test_from_n_fails_on_what_follows(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _fill(logs)
        attacker = Attacker(logs)
        try:
            leaf = flip(bytes(attacker.run("SELECT leaf FROM leaves WHERE idx = 650")[0][0]), 50)
            attacker.run("UPDATE leaves SET leaf = ? WHERE idx = 650", (leaf,))
        finally:
            attacker.close()
        args = ["verify", *logs.source_args(), "--federation", str(logs.fed.dir), "--no-signatures"]
        code, out = run_audit([*args, "--from", "600"], capsys)
        assert code == 1
        assert "entry 650 was altered" in out


class TestVerifyChunks:
    """Workers return the roots of the tiles inside their chunk; whatever the chunk size (or
    where ``--from`` starts), the verification reads the same tree and the same tiles."""

    @staticmethod
    def _verify(logs: LogFactory, chunk: int, jobs: int = 1, start: int = 0) -> VerifyReport:
        registry = logs.fed.registry
        return verify_log(
            functools.partial(SqliteDatabase, logs.db, origin=None, writer=False),
            log_keys=log_verifiers(registry, ORIGIN),
            options=VerifyOptions(check_index=False, jobs=jobs, chunk=chunk),
            start=start,
        )

    async def test_any_chunk_size_verifies_the_same_log(self, sqlite_logs: LogFactory) -> None:
        await _fill(sqlite_logs)
        reports = [self._verify(sqlite_logs, chunk) for chunk in (1, 255, 256, 300, 513, 10_000)]
        reports.append(self._verify(sqlite_logs, 300, jobs=2))
        assert all(r.ok for r in reports), [r.failure for r in reports]
        assert {(r.entries, r.checkpoints) for r in reports} == {(SIZE, reports[0].checkpoints)}
        for start in (1, 255, 256, 257, 600):
            report = self._verify(sqlite_logs, 256, start=start)
            assert report.ok, (start, report.failure)

    def test_a_short_log_is_split_over_every_worker(self) -> None:
        def spans(count: int, jobs: int, chunk: int = 20_000) -> list[tuple[int, int]]:
            options = VerifyOptions(jobs=jobs, chunk=chunk)
            return _spans(0, count, _chunk_size(count, options))

        assert spans(10_000, 2) == [(0, 5120), (5120, 10_000)]
        assert spans(10_000, 1) == [(0, 10_000)]
        assert spans(700, 2) == [(0, 512), (512, 700)]
        assert spans(100, 2) == [(0, 100)]
        assert spans(200_000, 2) == _spans(0, 200_000, 20_000)  # long logs: the chunk asked for

    @pytest.mark.parametrize("threaded", [False, True], ids=["fork", "forkserver"])
    async def test_an_entry_altered_in_the_second_workers_chunk_is_found(
        self, sqlite_logs: LogFactory, threaded: bool
    ) -> None:
        """700 entries and 2 workers: entries 512.. are the second worker's, started by fork,
        or (another thread alive, as in a server) by the forkserver."""
        await _fill(sqlite_logs)
        assert self._verify(sqlite_logs, 20_000, jobs=2).ok
        attacker = Attacker(sqlite_logs)
        try:
            leaf = flip(bytes(attacker.run("SELECT leaf FROM leaves WHERE idx = 650")[0][0]), 50)
            attacker.run("UPDATE leaves SET leaf = ? WHERE idx = 650", (leaf,))
        finally:
            attacker.close()
        stop = threading.Event()
        other = threading.Thread(target=stop.wait) if threaded else None
        if other is not None:
            other.start()
        try:
            report = self._verify(sqlite_logs, 20_000, jobs=2)
        finally:
            stop.set()
            if other is not None:
                other.join()
        assert report.failure is not None
        assert "entry 650 was altered" in report.failure.message

    async def test_a_tampered_tile_is_found_whatever_the_chunk(
        self, sqlite_logs: LogFactory
    ) -> None:
        await _fill(sqlite_logs)
        attacker = Attacker(sqlite_logs)
        try:
            data = bytes(attacker.run("SELECT data FROM tiles WHERE level = 0 AND idx = 1")[0][0])
            attacker.run("UPDATE tiles SET data = ? WHERE level = 0 AND idx = 1", (flip(data, 33),))
        finally:
            attacker.close()
        for chunk in (1, 300, 10_000):
            report = self._verify(sqlite_logs, chunk)
            assert report.failure is not None
            assert "the stored tile tile/0/001 does not match the entries" in report.failure.message
