"""The benchmarks' bulk-built log holds exactly what the gateway's store would: the same rows,
projection, rollups, tiles, kept checkpoints and head as the same leaves committed through the
store and caught up, and ``fedgate audit verify``'s code accepts it (index included)."""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import _biglog
from bench._biglog import bench_signer, build_record, write_log
from fedgate.auditverify import LogSource, VerifyOptions, verify_log
from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.tiles import TILE_WIDTH, TiledTree
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import SqliteDatabase, default_state_path, open_sqlite_store
from gateway.audit.store import CommitBatch, NewLeaf

_TABLES = {
    "leaves": "idx",
    "search_rows": "idx",
    "subjects": "block, subject, idx",
    "tiles": "level, idx",
    "time_blocks": "block",
    "checkpoints": "size",
    "heads": "kind",
    "rollup_day": "day, dim, key",
    "rollup_officer": "day, member, officer, hour, action, leg, outcome",
    "projection_state": "name",
}


def _through_the_store(built: Path, copy: Path) -> None:
    """Commit ``built``'s leaves to a new log through the store, in batches of one block (the
    checkpoints the store keeps fall on the same sizes), and let its catch-up project them."""
    source = SqliteDatabase(built, origin=None, writer=False)
    db = SqliteDatabase(copy, origin=source.origin, writer=True)
    signer = bench_signer()
    try:
        tree = TiledTree(size=0, edge=[b""], read=db.tiles)
        note = sign_checkpoint(Checkpoint(signer.name, 0, tree.root()), signer)
        db.commit(CommitBatch((), 0, note))
        size = source.next_index()
        for lo in range(0, size, TILE_WIDTH):
            rows = source.rows(lo, min(lo + TILE_WIDTH, size))
            leaves = [NewLeaf(i, data, h, columns) for i, data, h, columns in rows]
            tiles = tree.extend(n.leaf_hash for n in leaves)
            note = sign_checkpoint(Checkpoint(signer.name, tree.size, tree.root()), signer)
            db.commit(CommitBatch(leaves, tree.size, note, tiles))
        db.checkpoint_wal()
    finally:
        db.close()
        source.close()


def _contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            table: con.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in _TABLES.items()
        }
    finally:
        con.close()


async def _gateway_log(path: Path) -> AuditLog:
    """The built log at ``path`` opened as the gateway opens its log."""
    signer = bench_signer()
    store = await open_sqlite_store(path, origin=signer.name)
    return await AuditLog.open(store=store, origin=signer.name, signer=signer)


def verifies(path: Path) -> None:
    """``fedgate audit verify``'s code, index check included, accepts the built log at ``path``
    and covers every entry in it."""
    opener: Callable[[], LogSource] = functools.partial(
        SqliteDatabase, path, origin=None, writer=False
    )
    report = verify_log(
        opener,
        log_keys=[bench_signer().verifier()],
        options=VerifyOptions(check_index=True, jobs=1, chunk=1_000),
    )
    assert report.ok, report.failure
    db = opener()
    try:
        assert report.entries == db.next_index()
    finally:
        db.close()


class _Stop(Exception):
    pass


def _interrupted(monkeypatch: pytest.MonkeyPatch, path: Path, entries: int, after: int) -> int:
    """Start building ``path`` to ``entries`` and stop it after ``after`` bulk transactions, as
    a killed build stops; returns the size it reached."""
    bulk = _biglog._bulk
    done: list[int] = []

    def stopping(*args: object) -> None:
        if len(done) == after:
            raise _Stop
        bulk(*args)  # type: ignore[arg-type]
        done.append(1)

    with monkeypatch.context() as m:
        m.setattr(_biglog, "_bulk", stopping)
        with pytest.raises(_Stop):
            write_log(path, entries, batch=256, workers=1)
    db = SqliteDatabase(path, origin=None, writer=False)
    try:
        return db.next_index()
    finally:
        db.close()


def _same_as_the_store(tmp_path: Path, built: Path, entries: int) -> None:
    verifies(built)
    _through_the_store(built, tmp_path / "copy.sqlite")
    got, want = _contents(built), _contents(tmp_path / "copy.sqlite")
    assert len(got["leaves"]) == entries
    for table in _TABLES:
        assert got[table] == want[table], table


class TestWriteLog:
    def test_a_bulk_built_log_is_what_the_store_would_hold(self, tmp_path: Path) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 3_001, batch=512, workers=2)
        verifies(built)
        _through_the_store(built, tmp_path / "copy.sqlite")
        got, want = _contents(built), _contents(tmp_path / "copy.sqlite")
        assert len(got["leaves"]) == 3_001
        assert len(got["subjects"]) > 2_900  # a subject a leaf
        assert len(got["rollup_officer"]) > 0
        for table in _TABLES:
            assert got[table] == want[table], table
        state = default_state_path(built).read_text(encoding="utf-8")
        assert state == next(note for kind, _, note in got["heads"] if kind == "signed")

    def test_the_bulk_load_leaves_no_staging_and_every_index(self, tmp_path: Path) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 1_000, batch=256, workers=1)
        fresh = tmp_path / "fresh.sqlite"
        SqliteDatabase(fresh, origin=bench_signer().name, writer=True).close()

        def schema(path: Path) -> set[tuple[str, str]]:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                statement = "SELECT type, name, tbl_name, sql FROM sqlite_master"
                return set(con.execute(statement).fetchall())
            finally:
                con.close()

        assert schema(built) == schema(fresh)
        assert built.with_name(built.name + "-wal").stat().st_size == 0

    def test_an_extended_log_is_what_the_store_would_hold(self, tmp_path: Path) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 1_000, batch=512, workers=1)  # ends inside a block
        write_log(built, 2_600, batch=512, workers=1)
        _same_as_the_store(tmp_path, built, 2_600)
        assert build_record(built).entries == 2_600
        assert build_record(built).seconds > 0

    def test_an_interrupted_build_resumes_where_it_stopped(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 700, workers=1)
        reached = _interrupted(monkeypatch, built, 3_000, after=3)
        assert reached == 768 + 3 * 256
        assert build_record(built).entries == reached
        write_log(built, 3_000, batch=512, workers=1)
        _same_as_the_store(tmp_path, built, 3_000)
        assert build_record(built).entries == 3_000

    def test_an_unfinished_build_of_an_older_schema_version_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Its tables are laid out for other key blocks: the rows this builder adds would not
        # fit, and only a finished log is what the store's writer migrates.
        built = tmp_path / "built.sqlite"
        _interrupted(monkeypatch, built, 3_000, after=2)
        con = sqlite3.connect(built, isolation_level=None)
        try:
            con.execute("UPDATE fedgate_schema SET version = version - 1 WHERE store = 'audit log'")
        finally:
            con.close()
        with pytest.raises(RuntimeError, match="unfinished build of audit log schema version"):
            write_log(built, 3_000, batch=512, workers=1)
        assert build_record(built).entries == 2 * 256

    def test_an_interrupted_build_finishes_at_the_size_it_reached(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        built = tmp_path / "built.sqlite"
        reached = _interrupted(monkeypatch, built, 3_000, after=4)
        assert reached == 4 * 256
        write_log(built, reached, workers=1)  # what ``BENCH_SCALE_ENTRIES`` does
        _same_as_the_store(tmp_path, built, reached)
        state = default_state_path(built).read_text(encoding="utf-8")
        heads = _contents(built)["heads"]
        assert state == next(note for kind, size, note in heads if kind == "signed")
        assert ("signed", reached) in {(kind, size) for kind, size, _ in heads}

    async def test_the_gateway_opens_a_bulk_built_log_and_appends_to_it(
        self, tmp_path: Path
    ) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 1_500, batch=512, workers=1)
        log = await _gateway_log(built)
        assert log.size == 1_500
        make = _biglog._Exchanges(7, datetime.now(UTC), timedelta(seconds=1))
        request = make.request(1_500)
        receipt = await log.append(request)
        await log.append(make.response(request, receipt.index))
        await log.close()
        _same_as_the_store(tmp_path, built, 1_502)

    async def test_an_extended_log_continues_after_entries_later_than_its_plan(
        self, tmp_path: Path
    ) -> None:
        # The 10 M cache's fault: a measuring run appended exchanges at the real time to a log
        # built part of the way, and the resumed build went back to its planned times.
        built = tmp_path / "built.sqlite"
        write_log(built, 1_000, batch=512, workers=1)
        log = await _gateway_log(built)
        step = timedelta(milliseconds=1)  # entry ``i`` at the real time: now + (i - 1_000) ms
        make = _biglog._Exchanges(7, datetime.now(UTC) - step * 1_000, step)
        for k in range(3):
            request = make.request(1_000 + 2 * k)
            receipt = await log.append(request)
            await log.append(make.response(request, receipt.index))
        await log.close()
        appended = _times(built)[-1]
        assert appended > _times(built)[999]
        write_log(built, 4_000, batch=512, workers=2)  # bulk-loaded blocks and a store commit
        times = _times(built)
        assert len(times) == 4_000
        assert all(a <= b for a, b in itertools.pairwise(times))
        assert times[1_006] >= appended
        assert times[-1] <= int(datetime.now(UTC).timestamp() * 1_000_000)
        _same_as_the_store(tmp_path, built, 4_000)

    def test_a_log_extended_to_a_larger_size_keeps_time_in_log_order(self, tmp_path: Path) -> None:
        built = tmp_path / "built.sqlite"
        write_log(built, 1_000, batch=512, workers=1)  # its last entry is now: past 2_600's plan
        write_log(built, 2_600, batch=512, workers=1)
        times = _times(built)
        assert all(a <= b for a, b in itertools.pairwise(times))


def _times(path: Path) -> list[int]:
    """The time (µs) of every leaf, in log order."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [t for (t,) in con.execute("SELECT time_us FROM leaves ORDER BY idx")]
    finally:
        con.close()
