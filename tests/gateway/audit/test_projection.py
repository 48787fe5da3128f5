"""The search projection behind the leaves: a committed leaf is found before the projection
holds it, the catch-up brings the projection level, and schema step 1 -> 2 migrates a log
written with the indexes on the leaves."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from gateway.audit import _catch_up as catch_up_module
from gateway.audit._catch_up import (
    CATCH_UP_DELAY_S,
    CATCH_UP_ENTRIES,
    CATCH_UP_SPACING_S,
    catch_up_at,
)
from gateway.audit.pg_store import AUDIT_SCHEMA as PG_AUDIT_SCHEMA
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import AUDIT_SCHEMA, SqliteDatabase
from gateway.audit.store import CommitBatch, IndexedRow, NewLeaf, SearchQuery, ThreadedStore
from tests.gateway.audit.test_search import ORIGIN, _leaves

if TYPE_CHECKING:
    from conftest import LogFactory, PgTarget


def _normalized(leaf: NewLeaf) -> tuple[object, ...]:
    c = leaf.columns
    return (*c[:10], tuple(sorted(set(c[10]))), c[11])


def _indices(db: SqliteDatabase | PgDatabase, q: SearchQuery) -> list[int]:
    return [h.index for h in db.search(q)]


def _commit(db: SqliteDatabase | PgDatabase, leaves: list[NewLeaf]) -> None:
    start = leaves[0].index
    db.commit(CommitBatch(leaves, start + len(leaves), f"checkpoint {start + len(leaves)}"))


def _queries(leaf: NewLeaf) -> list[SearchQuery]:
    """Searches of every kind that find ``leaf`` on their first page."""
    c = leaf.columns
    at = leaf.index - 1
    queries = [
        SearchQuery(member=c[3], after_index=at, limit=3),
        SearchQuery(action=c[6], newest_first=True, before_index=leaf.index + 1, limit=3),
        SearchQuery(since_us=c[2], until_us=c[2] + 1),
        SearchQuery(outcome=c[8], after_index=at, limit=1),
    ]
    for name, value in (
        ("officer_id", c[4]),
        ("case_number", c[5]),
        ("request_id", c[1]),
        ("subject", c[10][0] if c[10] else ""),
    ):
        if value:
            queries.append(SearchQuery(after_index=at, limit=3, **{name: value}))
    return queries


class _ProjectionCases:
    """The same cases on both stores (``db`` is an empty writer)."""

    def check_a_leaf_is_found_before_and_after_it_is_projected(
        self, db: SqliteDatabase | PgDatabase
    ) -> None:
        leaves = _leaves(300)
        _commit(db, leaves[:200])
        assert db.catch_up(10_000) == 0
        _commit(db, leaves[200:])
        assert db.projection_lag() == 100
        before = {q: _indices(db, q) for leaf in leaves[195:205] for q in _queries(leaf)}
        for leaf in leaves[200:205]:
            for q in _queries(leaf):
                assert leaf.index in before[q], q
        assert db.catch_up(10_000) == 0
        assert db.projection_lag() == 0
        after = {q: _indices(db, q) for q in before}
        assert after == before
        # The hits carry the same columns from the leaf rows as from the projection.
        found = db.search(SearchQuery(after_index=199, limit=5))
        assert [h.columns for h in found] == [leaf.columns for leaf in leaves[200:205]]

    def check_the_catch_up_goes_a_chunk_at_a_time(self, db: SqliteDatabase | PgDatabase) -> None:
        leaves = _leaves(300)
        _commit(db, leaves)
        assert db.catch_up(120) == 180
        assert db.catch_up(120) == 60
        assert db.catch_up(120) == 0
        assert db.catch_up(120) == 0
        assert _indices(db, SearchQuery(limit=1000)) == list(range(300))

    def check_verify_reads_the_projected_subjects(self, db: SqliteDatabase | PgDatabase) -> None:
        leaves = _leaves(50)
        _commit(db, leaves[:30])
        db.catch_up(10_000)
        _commit(db, leaves[30:])
        assert [r[3] for r in db.rows(0, 50)] == [_normalized(leaf) for leaf in leaves]


class TestSqliteProjection(_ProjectionCases):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[SqliteDatabase]:
        db = SqliteDatabase(tmp_path / "a.sqlite", origin=ORIGIN, writer=True)
        yield db
        db.close()

    def test_a_leaf_is_found_before_and_after_it_is_projected(self, db: SqliteDatabase) -> None:
        self.check_a_leaf_is_found_before_and_after_it_is_projected(db)

    def test_the_catch_up_goes_a_chunk_at_a_time(self, db: SqliteDatabase) -> None:
        self.check_the_catch_up_goes_a_chunk_at_a_time(db)

    def test_verify_reads_the_projected_subjects(self, db: SqliteDatabase) -> None:
        self.check_verify_reads_the_projected_subjects(db)

    def test_a_writer_closes_with_the_projection_level(self, tmp_path: Path) -> None:
        db = SqliteDatabase(tmp_path / "a.sqlite", origin=ORIGIN, writer=True)
        _commit(db, _leaves(40))
        assert db.projection_lag() == 40
        db.close()
        reader = SqliteDatabase(tmp_path / "a.sqlite", origin=None, writer=False)
        try:
            assert reader.projection_lag() == 0
        finally:
            reader.close()

    def test_the_projection_is_append_only(self, db: SqliteDatabase) -> None:
        _commit(db, _leaves(10))
        db.catch_up(100)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db._con.execute("UPDATE search_rows SET officer_id = 'x' WHERE idx = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db._con.execute("DELETE FROM search_rows WHERE idx = 1")


def _downgrade_sqlite(path: Path, *, time_blocks: bool = True) -> None:
    """Turn a version 2 log into what version 1 wrote: indexes on the leaves, no projection
    (and, ``time_blocks=False``, no time blocks either, as before tiles)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        if not time_blocks:
            con.execute("DROP TABLE time_blocks")
        for statement in (
            "DROP TABLE search_rows",
            "DROP INDEX leaves_time",
            "ALTER TABLE leaves DROP COLUMN subjects",
            "CREATE INDEX leaves_time ON leaves (time_us)",
            "CREATE INDEX leaves_officer ON leaves (officer_id) WHERE officer_id <> ''",
            "CREATE INDEX leaves_case ON leaves (case_number) WHERE case_number <> ''",
            "CREATE INDEX leaves_target ON leaves (target_agency)",
            "DELETE FROM projection_state WHERE name = 'projected_to'",
            # Nor had version 1 the heads of kept checkpoints (schema step 2 -> 3).
            "INSERT OR IGNORE INTO checkpoints SELECT size, note FROM heads WHERE kind = 'signed'",
            "DROP TABLE heads",
            "UPDATE fedgate_schema SET version = 1",
        ):
            con.execute(statement)
    finally:
        con.close()


class TestSqliteMigration:
    @pytest.mark.parametrize("time_blocks", [True, False], ids=["with-time-blocks", "before-them"])
    def test_step_1_to_2_moves_the_indexes_to_the_projection(
        self, tmp_path: Path, time_blocks: bool
    ) -> None:
        path = tmp_path / "a.sqlite"
        leaves = _leaves(400)
        db = SqliteDatabase(path, origin=ORIGIN, writer=True)
        _commit(db, leaves)
        db.close()
        expected = {q: _hits_of(path, q) for leaf in leaves[::37] for q in _queries(leaf)}
        _downgrade_sqlite(path, time_blocks=time_blocks)

        db = SqliteDatabase(path, origin=ORIGIN, writer=True)
        try:
            con = db._con
            assert con.execute("SELECT version FROM fedgate_schema").fetchone() == (
                AUDIT_SCHEMA.version,
            )
            assert db.projection_lag() == 0
            assert con.execute("SELECT count(*) FROM search_rows").fetchone() == (400,)
            indexes = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
            assert "leaves_officer" not in indexes
            assert {"search_officer", "search_case", "leaves_time"} <= indexes
            # The whole hits, subjects included: a legacy leaf's are in ``subjects`` only.
            assert {q: db.search(q) for q in expected} == expected
            # Legacy rows have no subjects of their own: verification (``rows``) reads theirs
            # from the projection's table.
            assert [r[3] for r in db.rows(0, 400)] == [_normalized(leaf) for leaf in leaves]
        finally:
            db.close()


def _hits_of(path: Path, q: SearchQuery) -> list[IndexedRow]:
    reader = SqliteDatabase(path, origin=None, writer=False)
    try:
        return reader.search(q)
    finally:
        reader.close()


class TestPostgresProjection(_ProjectionCases):
    @pytest.fixture
    def db(self, pg: PgTarget) -> Iterator[PgDatabase]:
        db = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        yield db
        db.close()

    def test_a_leaf_is_found_before_and_after_it_is_projected(self, db: PgDatabase) -> None:
        self.check_a_leaf_is_found_before_and_after_it_is_projected(db)

    def test_the_catch_up_goes_a_chunk_at_a_time(self, db: PgDatabase) -> None:
        self.check_the_catch_up_goes_a_chunk_at_a_time(db)

    def test_verify_reads_the_projected_subjects(self, db: PgDatabase) -> None:
        self.check_verify_reads_the_projected_subjects(db)

    def test_step_1_to_2_migrates(self, pg: PgTarget) -> None:
        leaves = _leaves(300)
        db = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        _commit(db, leaves)
        db.close()
        reader = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=False)
        expected = {q: reader.search(q) for leaf in leaves[::29] for q in _queries(leaf)}
        reader.close()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            for statement in (
                "DROP TABLE search_rows",
                "DROP TABLE time_blocks",  # as before tiles
                "ALTER TABLE leaves DROP COLUMN subjects",
                "CREATE INDEX leaves_officer_idx ON leaves (origin, officer_id, idx)"
                " WHERE officer_id <> ''",
                "DELETE FROM projection_state WHERE name = 'projected_to'",
                # Nor had version 1 the heads of kept checkpoints (schema step 2 -> 3).
                "INSERT INTO checkpoints (origin, size, note) SELECT origin, size, note"
                " FROM heads WHERE kind = 'signed' ON CONFLICT DO NOTHING",
                "DROP TABLE heads",
                "UPDATE fedgate_schema SET version = 1",
            ):
                conn.execute(statement.encode())
        db = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            assert db.projection_lag() == 0
            # The whole hits, subjects included: a legacy leaf's are in ``subjects`` only.
            assert {q: db.search(q) for q in expected} == expected
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
                assert conn.execute("SELECT version FROM fedgate_schema").fetchone() == (
                    PG_AUDIT_SCHEMA.version,
                )
                found = conn.execute(
                    "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                    (pg.schema, "leaves_officer_idx"),
                ).fetchone()
                assert found is None
        finally:
            db.close()


class TestThreadedCatchUp:
    async def test_appends_are_searchable_at_once_and_projected_soon(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        requests = [logs.fed.request() for _ in range(CATCH_UP_ENTRIES // 64)]
        receipts = [await log.append(r) for r in requests]
        # Right after the append: found, whether or not the projection holds it yet.
        for request, receipt in zip(requests[-3:], receipts[-3:], strict=True):
            hits = await log.search(SearchQuery(request_id=request.request_id))
            assert [h.index for h in hits] == [receipt.index]
        # Within the bound the projection holds everything (polled; the slack is for a
        # loaded machine: the bound is the spacing plus two catch-ups).
        store = log._store
        deadline = asyncio.get_running_loop().time() + CATCH_UP_SPACING_S + 8.0
        while True:
            lag = await store._r(store._reader.projection_lag)  # type: ignore[attr-defined]
            if lag == 0:
                break
            assert asyncio.get_running_loop().time() < deadline, f"still {lag} behind"
            await asyncio.sleep(0.02)

    async def test_a_catch_up_does_not_chase_the_commits_that_land_while_it_runs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under steady appends a commit the loop has not counted yet always runs just before a
        catch-up's transaction: the catch-up projects what was behind when it started, and
        leaves the rest to the next one (it once went on with one small catch-up per commit)."""
        bound = 2048  # the entries bound, smaller than the store's to keep the test short
        monkeypatch.setattr(catch_up_module, "CATCH_UP_ENTRIES", bound)
        path = tmp_path / "log.sqlite"
        leaves = _leaves(bound + 3 * 64)
        first = leaves[:bound]
        later = [leaves[i : i + 64] for i in range(bound, len(leaves), 64)]
        writer = _CommitsBeforeEachCatchUp(SqliteDatabase(path, origin=ORIGIN, writer=True), later)
        store = await ThreadedStore.open(
            lambda: writer,
            lambda: SqliteDatabase(path, origin=ORIGIN, writer=False),
            name="test-audit",
            state_path=None,
        )
        await store.commit(CommitBatch(first, len(first), f"checkpoint {len(first)}"))
        await store.close()  # waits for the catch-up the commit started
        assert writer.catch_ups == [bound]
        assert len(later) == 2  # one batch landed before it; it did not chase it
        reader = SqliteDatabase(path, origin=ORIGIN, writer=False)
        try:
            assert reader.projection_lag() == 0  # closing brought it level
        finally:
            reader.close()


SPACED = 2.0
"""A spacing longer than the quiet delay, for the rule's tests."""


class TestCatchUpAt:
    """When the next catch-up starts if fewer than ``CATCH_UP_ENTRIES`` leaves are behind: the
    rule, with a spacing longer than the quiet delay (the store sets them equal, which the rule
    must also give)."""

    @pytest.mark.parametrize(
        ("behind_since", "last_started", "at"),
        [
            (100.0, None, 100.0 + CATCH_UP_DELAY_S),  # the first ever: the quiet delay
            (100.0, 90.0, 100.0 + CATCH_UP_DELAY_S),  # after a quiet spell: the same
            (100.0, 100.0 - SPACED + CATCH_UP_DELAY_S, 100.0 + CATCH_UP_DELAY_S),
            (100.0, 99.0, 99.0 + SPACED),  # appends go on: spaced from the last
            (100.0, 100.0, 100.0 + SPACED),  # committed as one started
        ],
    )
    def test_quiet_then_spaced(
        self,
        behind_since: float,
        last_started: float | None,
        at: float,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(catch_up_module, "CATCH_UP_SPACING_S", SPACED)
        assert catch_up_at(behind_since, last_started) == pytest.approx(at)

    def test_the_bounds_are_what_the_store_states(self) -> None:
        assert (CATCH_UP_DELAY_S, CATCH_UP_SPACING_S, CATCH_UP_ENTRIES) == (0.5, 0.5, 8192)
        assert catch_up_module.CATCH_UP_RETRY_S == 2.0

    def test_with_the_spacing_equal_to_the_delay_a_lag_waits_the_delay(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(catch_up_module, "CATCH_UP_SPACING_S", CATCH_UP_DELAY_S)
        for last_started in (None, 90.0, 99.8, 100.0):
            assert catch_up_at(100.0, last_started) == pytest.approx(100.0 + CATCH_UP_DELAY_S)

    @given(
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
    )
    def test_never_later_than_the_spacing_after_the_commit(
        self, last_started: float, gap: float
    ) -> None:
        """The previous catch-up started before the first commit the next covers."""
        behind_since = last_started + gap
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(catch_up_module, "CATCH_UP_SPACING_S", SPACED)
            at = catch_up_at(behind_since, last_started)
        assert behind_since + CATCH_UP_DELAY_S <= at <= behind_since + SPACED


class TestThreadedSchedule:
    """``ThreadedStore`` times its catch-ups by ``catch_up_at`` on a real SQLite store (the
    deadlines it sets are read, not waited for)."""

    @staticmethod
    async def _store(
        path: Path, writer: _HeldCatchUp | _FailingCatchUp | None = None
    ) -> ThreadedStore:
        def open_writer() -> SqliteDatabase | _HeldCatchUp | _FailingCatchUp:
            return writer or SqliteDatabase(path, origin=ORIGIN, writer=True)

        return await ThreadedStore.open(
            open_writer,
            lambda: SqliteDatabase(path, origin=ORIGIN, writer=False),
            name="test-audit",
            state_path=None,
        )

    @staticmethod
    def _batch(leaves: list[NewLeaf]) -> CommitBatch:
        size = leaves[-1].index + 1
        return CommitBatch(leaves, size, f"checkpoint {size}")

    async def test_quiet_then_spaced_then_at_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A spacing no catch-up and commit outlast, however loaded the machine.
        monkeypatch.setattr(catch_up_module, "CATCH_UP_SPACING_S", 600.0)
        store = await self._store(tmp_path / "log.sqlite")
        leaves = _leaves(300)
        loop = asyncio.get_running_loop()
        try:
            # Quiet: the catch-up is timed half a second after the commit that left the lag.
            before = loop.time()
            await store.commit(self._batch(leaves[:100]))
            timer = store._timer
            assert timer is not None
            assert store._catching_up is None
            assert before + CATCH_UP_DELAY_S <= timer.when() <= loop.time() + CATCH_UP_DELAY_S
            # Asked for (a console about to read the rollups): at once, the timer dropped.
            store.catch_up_soon()
            running = store._catching_up
            assert running is not None
            assert store._timer is None
            started = store._last_started
            await running
            assert store._lag == 0
            # Appends go on: the next one is spaced from the one that just ran.
            await store.commit(self._batch(leaves[100:200]))
            timer = store._timer
            assert timer is not None
            assert started is not None
            assert timer.when() == pytest.approx(started + catch_up_module.CATCH_UP_SPACING_S)
            assert timer.when() > loop.time() + CATCH_UP_DELAY_S
            # Asked for again: at once, the spaced timer dropped.
            store.catch_up_soon()
            assert store._catching_up is not None
            assert store._timer is None
            await store._catching_up
            # Nothing behind: asking does nothing.
            store.catch_up_soon()
            assert store._catching_up is None
            assert store._timer is None
        finally:
            await store.close()

    async def test_the_entries_bound_starts_one_at_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(catch_up_module, "CATCH_UP_ENTRIES", 200)
        store = await self._store(tmp_path / "log.sqlite")
        leaves = _leaves(400)
        try:
            await store.commit(self._batch(leaves[:100]))
            assert store._catching_up is None
            assert store._timer is not None
            await store.commit(self._batch(leaves[100:200]))
            running = store._catching_up
            assert running is not None
            assert store._timer is None
            await running
            # Right after it, the bound again: not spaced either.
            await store.commit(self._batch(leaves[200:400]))
            assert store._catching_up is not None
        finally:
            await store.close()

    async def test_asked_while_one_runs_the_next_follows_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reader asking while a catch-up runs, after leaves it does not cover were counted,
        gets the next one as soon as it ends, not after the spacing; asking before any such
        leaf was counted buys none."""
        # Two steps: one to land in (the bound is also a catch-up transaction's size).
        monkeypatch.setattr(catch_up_module, "CATCH_UP_ENTRIES", 50)
        path = tmp_path / "log.sqlite"
        writer = _HeldCatchUp(SqliteDatabase(path, origin=ORIGIN, writer=True))
        store = await self._store(path, writer)
        leaves = _leaves(200)
        try:
            await store.commit(self._batch(leaves[:100]))
            store.catch_up_soon()
            first = store._catching_up
            assert first is not None
            assert await asyncio.to_thread(writer.entered.acquire, True, 10)  # step 1 holds it
            store.catch_up_soon()  # nothing counted since it started: it covers all
            assert not store._soon
            # A commit lands between its two steps (queued behind the first on the thread).
            landing = asyncio.ensure_future(store.commit(self._batch(leaves[100:])))
            writer.permits.release()
            await landing
            assert await asyncio.to_thread(writer.entered.acquire, True, 10)  # step 2 holds it
            assert store._catching_up is first
            store.catch_up_soon()
            assert store._soon
            for _ in range(3):
                writer.permits.release()
            await first
            assert store._timer is None
            following = store._catching_up
            assert following is not None  # the next, at once
            await following
            assert store._lag == 0
            assert not store._soon
            assert writer.catch_ups == [50, 50, 50, 50]
        finally:
            for _ in range(10):
                writer.permits.release()
            await store.close()

    async def test_asked_while_one_runs_that_covers_all_nothing_follows(
        self, tmp_path: Path
    ) -> None:
        """Polled while a catch-up that covers everything runs, no request is left over: a
        later commit is timed as usual, not caught up at once by a stale one."""
        path = tmp_path / "log.sqlite"
        writer = _HeldCatchUp(SqliteDatabase(path, origin=ORIGIN, writer=True))
        store = await self._store(path, writer)
        leaves = _leaves(110)
        try:
            await store.commit(self._batch(leaves[:100]))
            store.catch_up_soon()
            first = store._catching_up
            assert first is not None
            assert await asyncio.to_thread(writer.entered.acquire, True, 10)
            store.catch_up_soon()  # a chart polling again while it runs
            writer.permits.release()
            await first
            assert store._lag == 0
            assert store._catching_up is None
            await store.commit(self._batch(leaves[100:]))
            assert store._catching_up is None  # timed, not at once
            assert store._timer is not None
            assert writer.catch_ups == [100]
        finally:
            for _ in range(10):
                writer.permits.release()
            await store.close()

    async def test_a_failed_catch_up_is_retried_after_a_wait(self, tmp_path: Path) -> None:
        """Not left to the next commit, which a quiet log may never make."""
        path = tmp_path / "log.sqlite"
        writer = _FailingCatchUp(SqliteDatabase(path, origin=ORIGIN, writer=True))
        store = await self._store(path, writer)
        loop = asyncio.get_running_loop()
        try:
            await store.commit(self._batch(_leaves(10)))
            writer.fail = True
            store.catch_up_soon()
            failing = store._catching_up
            assert failing is not None
            before = loop.time()
            await failing
            timer = store._timer
            assert timer is not None  # re-armed
            wait = catch_up_module.CATCH_UP_RETRY_S
            assert before + wait <= timer.when() <= loop.time() + wait
            writer.fail = False
            store._start_catch_up()  # what the timer calls
            retry = store._catching_up
            assert retry is not None
            await retry
            assert store._lag == 0
            assert store._timer is None
        finally:
            await store.close()

    async def test_a_failing_catch_up_waits_for_its_retry_and_backs_off(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A chart polling a failing writer (``catch_up_soon`` every 20 ms) buys one attempt
        per retry, not one per poll; the retries back off, and only the first failure warns."""
        path = tmp_path / "log.sqlite"
        writer = _FailingCatchUp(SqliteDatabase(path, origin=ORIGIN, writer=True))
        store = await self._store(path, writer)
        loop = asyncio.get_running_loop()
        leaves = _leaves(41)
        monkeypatch.setattr(catch_up_module, "CATCH_UP_ENTRIES", 5)  # each commit crosses it
        caplog.set_level(logging.DEBUG, logger="gateway.audit.log")
        try:
            await store.commit(self._batch(leaves[:10]))
            writer.fail = True
            waits = []
            for failures in range(1, 4):
                if failures == 1:
                    store.catch_up_soon()
                else:
                    timer = store._timer
                    assert timer is not None
                    timer.cancel()
                    store._start_catch_up()  # what the timer calls when it fires
                attempt = store._catching_up
                assert attempt is not None
                before = loop.time()
                await attempt
                assert writer.attempts == failures
                timer = store._timer
                assert timer is not None
                waits.append((before, timer.when(), loop.time()))
                # Polled many times, and a commit past the entries bound: no attempt before the
                # timer's.
                for _ in range(50):
                    store.catch_up_soon()
                    assert store._catching_up is None
                    await asyncio.sleep(0)
                await store.commit(self._batch(leaves[10 * failures : 10 * failures + 10]))
                assert store._catching_up is None
                assert store._timer is timer
                assert writer.attempts == failures
            for (before, when, after), wait in zip(waits, (2.0, 4.0, 8.0), strict=True):
                assert before + wait <= when <= after + wait
            levels = [r.levelno for r in caplog.records if "could not catch up" in r.getMessage()]
            assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
            # It succeeds: the count starts again, and a reader's request is served at once.
            writer.fail = False
            timer = store._timer
            assert timer is not None
            timer.cancel()
            store._start_catch_up()
            assert store._catching_up is not None
            await store._catching_up
            assert store._lag == 0
            assert (store._failures, store._retry_at) == (0, None)
            attempts = writer.attempts  # one per catch-up transaction (5 leaves each here)
            await store.commit(self._batch(leaves[40:]))
            store.catch_up_soon()
            assert store._catching_up is not None
            await store._catching_up
            assert writer.attempts == attempts + 1
        finally:
            await store.close()

    @pytest.mark.parametrize(
        ("failures", "wait"), [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 60.0), (10**6, 60.0)]
    )
    def test_retries_back_off_to_a_minute(self, failures: int, wait: float) -> None:
        assert catch_up_module.retry_after(failures) == wait

    async def test_nothing_is_scheduled_after_close(self, tmp_path: Path) -> None:
        store = await self._store(tmp_path / "log.sqlite")
        await store.commit(self._batch(_leaves(10)))
        assert store._timer is not None
        await store.close()
        assert store._timer is None
        assert store._catching_up is None
        store.catch_up_soon()
        assert store._catching_up is None
        store._start_catch_up()  # a timer that fired as the store closed
        assert store._catching_up is None


class _HeldCatchUp:
    """A writer database each of whose catch-up steps waits for a permit (``permits``);
    ``entered`` is released once per step that holds the writer's thread."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self.entered = threading.Semaphore(0)
        self.permits = threading.Semaphore(0)
        self.catch_ups: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def catch_up(self, limit: int) -> int:
        self.entered.release()
        if not self.permits.acquire(timeout=30):
            raise TimeoutError("the test never let this catch-up step run")
        self.catch_ups.append(limit)
        return self.db.catch_up(limit)


class _FailingCatchUp:
    """A writer database whose catch-ups fail while ``fail`` is set."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self.fail = False
        self.attempts = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def catch_up(self, limit: int) -> int:
        self.attempts += 1
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return self.db.catch_up(limit)


class _CommitsBeforeEachCatchUp:
    """A writer database (``LogDatabase``) on which a batch of ``later`` is committed just
    before each catch-up, as the writer's queue runs them under steady appends."""

    def __init__(self, db: SqliteDatabase, later: list[list[NewLeaf]]) -> None:
        self.db = db
        self.later = later
        self.catch_ups: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)

    def catch_up(self, limit: int) -> int:
        if self.later:
            _commit(self.db, self.later.pop(0))
        self.catch_ups.append(limit)
        return self.db.catch_up(limit)
