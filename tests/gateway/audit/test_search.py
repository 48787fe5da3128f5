"""The one search query (``gateway.audit._search``): the same hits on both stores and the
console as a plain filter over every row, and a query plan that uses an index for every filter.

The plan tests fail on a scan: SQLite's ``EXPLAIN QUERY PLAN`` must not say ``SCAN leaves``
(a full pass over the log) and must name the index each filter is meant to use; PostgreSQL's
``EXPLAIN`` (sequential scans priced out, as a tiny test table would otherwise invite them) must
not say ``Seq Scan``.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from fedgate.merkle import leaf_hash
from fedgate.storage import sql_statements
from gateway.audit import _search
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import MIGRATION_6_TIME_REACH, SqliteDatabase
from gateway.audit.store import CommitBatch, IndexedRow, NewLeaf, SearchQuery

if TYPE_CHECKING:
    from conftest import PgTarget

ORIGIN = "fedgate.test/gateway/shard-0"
T0 = 1_790_000_000_000_000
MEMBERS = ("police.gd", "police.sh", "bank.icbc", "bank.ccb", "carrier.cm")
ACTIONS = ("query_account", "freeze_account", "query_subscriber", "console_login")
OUTCOMES = ("allowed", "refused", "ok", "not_found")


def _leaves(count: int, seed: int = 7) -> list[NewLeaf]:
    """``count`` leaves with varied columns; times rise with jitter, and a few arrive late."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        late = rnd.random() < 0.01
        time_us = T0 + i * 60_000_000 + rnd.randrange(-90_000_000, 90_000_000)
        if late:
            time_us -= 6 * 3_600_000_000
        leg = rnd.choice((1, 2, 3))
        subjects = (f"acct:{rnd.randrange(20)}",) if leg != 3 else ()
        columns = (
            leg,
            f"req-{i // 2}" if leg != 3 else "",
            time_us,
            rnd.choice(MEMBERS[:2]) if leg != 3 else rnd.choice(MEMBERS),
            f"officer-{rnd.randrange(12)}" if leg != 3 else "",
            f"case-{rnd.randrange(30)}" if rnd.random() < 0.7 else "",
            rnd.choice(ACTIONS),
            rnd.choice(MEMBERS[2:]) if leg != 3 else "",
            rnd.choice(OUTCOMES),
            "",
            subjects,
            -1,
        )
        data = f"leaf-{i}".encode()
        out.append(NewLeaf(i, data, leaf_hash(data), columns))  # type: ignore[arg-type]
    return out


def _fill(db: SqliteDatabase | PgDatabase, leaves: list[NewLeaf]) -> None:
    """Commit ``leaves`` and project two thirds of them: searches read both the projection
    and the leaf rows past it."""
    for start in range(0, len(leaves), 100):
        batch = leaves[start : start + 100]
        db.commit(CommitBatch(batch, start + len(batch), f"checkpoint {start + len(batch)}"))
    assert db.catch_up(len(leaves) * 2 // 3) == len(leaves) - len(leaves) * 2 // 3


def _matches(q: SearchQuery, leaf: NewLeaf) -> bool:
    c = leaf.columns
    for member in (q.member, q.visible_to):
        if member and member not in (c[3], c[7]):
            return False
    return (
        (not q.officer_id or c[4] == q.officer_id)
        and (not q.case_number or c[5] == q.case_number)
        and (not q.request_id or c[1] == q.request_id)
        and (not q.target or c[7] == q.target)
        and (not q.action or c[6] == q.action)
        and (not q.outcome or c[8] == q.outcome)
        and (not q.leg or c[0] == q.leg)
        and (not q.subject or q.subject in c[10])
        and (q.since_us is None or c[2] >= q.since_us)
        and (q.until_us is None or c[2] < q.until_us)
        and leaf.index > q.after_index
        and (q.before_index is None or leaf.index < q.before_index)
    )


def _expected(q: SearchQuery, leaves: list[NewLeaf]) -> list[int]:
    hits = [n.index for n in leaves if _matches(q, n)]
    if q.newest_first:
        hits.reverse()
    return hits[: q.limit]


def _time_blocks(leaves: list[NewLeaf]) -> list[tuple[int, int, int, int, int]]:
    """What ``time_blocks`` holds for ``leaves``, computed here: each complete block's least and
    greatest time, the greatest time so far, and the furthest a block so far began before the
    greatest time of the blocks before it."""
    rows = []
    reach, lag = 0, 0
    for block in range(len(leaves) // 256):
        times = [n.columns[2] for n in leaves[block * 256 : block * 256 + 256]]
        if block:
            lag = max(lag, reach - min(times))
        reach = max(times) if not block else max(reach, max(times))
        rows.append((block, min(times), max(times), reach, lag))
    return rows


def _queries(count: int) -> Iterator[SearchQuery]:
    rnd = random.Random(11)
    fields: dict[str, Callable[[], Any]] = {
        "officer_id": lambda: f"officer-{rnd.randrange(13)}",
        "case_number": lambda: f"case-{rnd.randrange(31)}",
        "request_id": lambda: f"req-{rnd.randrange(700)}",
        "target": lambda: rnd.choice(MEMBERS),
        "member": lambda: rnd.choice(MEMBERS),
        "visible_to": lambda: rnd.choice(MEMBERS),
        "action": lambda: rnd.choice(ACTIONS),
        "outcome": lambda: rnd.choice(OUTCOMES),
        "leg": lambda: rnd.choice((1, 2, 3)),
        "subject": lambda: f"acct:{rnd.randrange(21)}",
    }
    for _ in range(count):
        kw: dict[str, Any] = {
            n: f() for n, f in rnd.sample(sorted(fields.items()), rnd.randrange(3))
        }
        if rnd.random() < 0.5:
            kw["since_us"] = T0 + rnd.randrange(0, 1300) * 60_000_000
            if rnd.random() < 0.7:
                kw["until_us"] = kw["since_us"] + rnd.randrange(1, 400) * 60_000_000
        elif rnd.random() < 0.3:
            kw["until_us"] = T0 + rnd.randrange(0, 1300) * 60_000_000
        if rnd.random() < 0.3:
            kw["after_index"] = rnd.randrange(-1, 1200)
        if rnd.random() < 0.3:
            kw["before_index"] = rnd.randrange(0, 1300)
        yield SearchQuery(**kw, newest_first=rnd.random() < 0.5, limit=rnd.choice((1, 5, 51, 500)))


def _indices(hits: list[IndexedRow]) -> list[int]:
    return [h.index for h in hits]


@pytest.fixture(scope="module")
def leaves() -> list[NewLeaf]:
    return _leaves(1200)  # four full time blocks and an open one


@pytest.fixture
def sqlite_db(tmp_path: Path, leaves: list[NewLeaf]) -> Iterator[SqliteDatabase]:
    db = SqliteDatabase(tmp_path / "audit.db", origin=ORIGIN, writer=True)
    _fill(db, leaves)
    yield db
    db.close()


@pytest.fixture
def pg_db(pg: PgTarget, leaves: list[NewLeaf]) -> Iterator[PgDatabase]:
    db = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
    _fill(db, leaves)
    yield db
    db.close()


class TestSameHitsAsAPlainFilter:
    def test_sqlite(self, sqlite_db: SqliteDatabase, leaves: list[NewLeaf]) -> None:
        for q in _queries(400):
            assert _indices(sqlite_db.search(q)) == _expected(q, leaves), q

    def test_postgres(self, pg_db: PgDatabase, leaves: list[NewLeaf]) -> None:
        for q in _queries(150):
            assert _indices(pg_db.search(q)) == _expected(q, leaves), q

    def test_time_blocks_cover_each_complete_block(
        self, sqlite_db: SqliteDatabase, leaves: list[NewLeaf]
    ) -> None:
        rows = sqlite_db._con.execute("SELECT * FROM time_blocks ORDER BY block").fetchall()
        assert rows == _time_blocks(leaves)
        assert rows[-1][4] > 3_600_000_000  # the leaves hours late: the lag is theirs

    def test_pg_time_blocks_are_the_same(self, pg_db: PgDatabase, leaves: list[NewLeaf]) -> None:
        with pg_db._c().cursor() as cur:
            rows = cur.execute(
                "SELECT block, min_us, max_us, reach_us, lag_us FROM time_blocks"
                " WHERE origin = %s ORDER BY block",
                (ORIGIN,),
            ).fetchall()
        assert [tuple(r) for r in rows] == _time_blocks(leaves)

    def test_pg_schema_step_computes_the_bounds(
        self, pg_db: PgDatabase, pg: PgTarget, leaves: list[NewLeaf]
    ) -> None:
        # Step 4 -> 5 on PostgreSQL: version 4's time blocks (least and greatest time only)
        # gain the running bounds the commits write, each shard's its own.
        other, other_leaves = "fedgate.test/gateway/shard-1", _leaves(700, seed=3)
        second = PgDatabase(pg.dsn, origin=other, schema=pg.schema, writer=True)
        _fill(second, other_leaves)
        second.close()
        pg_db.close()
        with psycopg.connect(pg.dsn, autocommit=True) as conn, conn.transaction():
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            conn.execute("DROP INDEX time_blocks_reach")
            conn.execute("ALTER TABLE time_blocks DROP COLUMN reach_us, DROP COLUMN lag_us")
            conn.execute("CREATE INDEX time_blocks_min ON time_blocks (origin, min_us)")
            conn.execute("CREATE INDEX time_blocks_max ON time_blocks (origin, max_us)")
            conn.execute("UPDATE fedgate_schema SET version = 4 WHERE store = 'audit log'")
        PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True).close()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            rows, other_rows = (
                conn.execute(
                    "SELECT block, min_us, max_us, reach_us, lag_us FROM time_blocks"
                    " WHERE origin = %s ORDER BY block",
                    (origin,),
                ).fetchall()
                for origin in (ORIGIN, other)
            )
            indexes = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s"
                " AND tablename = 'time_blocks' ORDER BY 1",
                (pg.schema,),
            ).fetchall()
            assert conn.execute("SELECT version FROM fedgate_schema").fetchall() == [(5,)]
        assert [tuple(r) for r in rows] == _time_blocks(leaves)
        assert [tuple(r) for r in other_rows] == _time_blocks(other_leaves)
        assert [r[0] for r in indexes] == ["time_blocks_pkey", "time_blocks_reach"]

    def test_pg_an_older_gateways_insert_gets_the_bounds(
        self, pg_db: PgDatabase, pg: PgTarget, leaves: list[NewLeaf]
    ) -> None:
        # A rolling upgrade: a gateway of schema 4 still running inserts a block's least and
        # greatest time only; the trigger adds its running bounds.
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            last = _time_blocks(leaves)[-1]
            conn.execute(
                "INSERT INTO time_blocks (origin, block, min_us, max_us) VALUES (%s, %s, %s, %s)",
                (ORIGIN, last[0] + 1, last[3] - 10**10, last[3] - 10**9),
            )
            row = conn.execute(
                "SELECT reach_us, lag_us FROM time_blocks WHERE origin = %s AND block = %s",
                (ORIGIN, last[0] + 1),
            ).fetchone()
        assert row == (last[3], max(last[4], 10**10))

    def test_a_clock_set_back_is_found(self, tmp_path: Path) -> None:
        # 300 leaves a day early in the middle of the log (a clock set back, then right): the
        # windows around them find them, and so does every window a plain filter answers.
        leaves = _leaves(1500)
        for i in range(600, 900):
            old = leaves[i]
            cols = (*old.columns[:2], old.columns[2] - 86_400_000_000, *old.columns[3:])
            leaves[i] = NewLeaf(old.index, old.data, old.leaf_hash, cols)  # type: ignore[arg-type]
        db = SqliteDatabase(tmp_path / "stepped.db", origin=ORIGIN, writer=True)
        try:
            _fill(db, leaves)
            early = SearchQuery(  # leaves 600-899 are 14 to 9 hours before T0 now
                since_us=T0 - 60_000_000_000, until_us=T0 - 20_000_000_000, limit=500
            )
            assert _indices(db.search(early)) == _expected(early, leaves)
            assert len(_indices(db.search(early))) > 50
            for q in _queries(300):
                assert _indices(db.search(q)) == _expected(q, leaves), q
        finally:
            db.close()

    def test_the_migration_computes_the_bounds_the_commits_write(
        self, sqlite_db: SqliteDatabase
    ) -> None:
        # Schema step 5 -> 6 computes the running bounds of existing blocks with window
        # functions; the commits write them block by block. Both agree.
        written = sqlite_db._con.execute("SELECT * FROM time_blocks ORDER BY block").fetchall()
        con = sqlite3.connect(":memory:", isolation_level=None)
        try:
            con.execute(
                "CREATE TABLE time_blocks (block INTEGER PRIMARY KEY, min_us INTEGER NOT NULL,"
                " max_us INTEGER NOT NULL) STRICT"
            )
            con.executemany("INSERT INTO time_blocks VALUES (?, ?, ?)", [r[:3] for r in written])
            for statement in sql_statements(MIGRATION_6_TIME_REACH):
                con.execute(statement)
            assert con.execute("SELECT * FROM time_blocks ORDER BY block").fetchall() == written
        finally:
            con.close()

    def test_a_late_entry_in_the_open_block_is_found(self, tmp_path: Path) -> None:
        leaves = _leaves(300)
        old = leaves[-1]
        cols = (*old.columns[:2], T0 - 10**12, *old.columns[3:])
        leaves[-1] = NewLeaf(old.index, old.data, old.leaf_hash, cols)  # type: ignore[arg-type]
        db = SqliteDatabase(tmp_path / "late.db", origin=ORIGIN, writer=True)
        try:
            _fill(db, leaves)
            assert _indices(db.search(SearchQuery(until_us=T0 - 10**11))) == [299]
        finally:
            db.close()


# Each search and the index its plan must use (SQLite).
PLANS: list[tuple[SearchQuery, str]] = [
    (SearchQuery(officer_id="officer-3"), "search_officer"),
    (SearchQuery(case_number="case-4"), "search_case"),
    (SearchQuery(request_id="req-9"), "search_request_id"),
    (SearchQuery(target="bank.icbc"), "search_target"),
    (SearchQuery(action="freeze_account"), "search_action"),
    (SearchQuery(outcome="refused"), "search_outcome"),
    (SearchQuery(subject="acct:3"), "subjects"),
    (SearchQuery(member="bank.ccb"), "search_target"),
    (SearchQuery(member="bank.ccb"), "search_requesting"),
    (SearchQuery(visible_to="police.gd", officer_id="officer-1"), "search_officer"),
    (SearchQuery(officer_id="officer-3", newest_first=True, before_index=900), "search_officer"),
    (SearchQuery(case_number="case-4", since_us=T0, until_us=T0 + 10**10), "search_case"),
    (SearchQuery(since_us=T0 + 10**10, until_us=T0 + 2 * 10**10), "PRIMARY KEY"),
    (SearchQuery(since_us=T0 + 6 * 10**10, newest_first=True), "PRIMARY KEY"),
]


def _sqlite_plan(con: sqlite3.Connection, statement: str, params: tuple[Any, ...]) -> str:
    rows = con.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    return "\n".join(str(r[3]) for r in rows)


def _sqlite_bounds(con: sqlite3.Connection, query: SearchQuery) -> tuple[int, int | None]:
    """The leaf-index range of ``query``'s time window (the whole log without one)."""
    if query.since_us is None and query.until_us is None:
        return 0, None
    return _search.time_bounds(
        lambda s, p: con.execute(s, p).fetchall(),
        _search.SQLITE,
        (),
        query.since_us,
        query.until_us,
    )


def _sqlite_statement(
    con: sqlite3.Connection, query: SearchQuery, lo: int, hi: int | None
) -> tuple[str, tuple[Any, ...]]:
    """``query``'s statement over the projection; a key search names every key block of its
    range (as ``search`` does on a log without key tiers), in the page's order."""
    blocks = None
    if _search.key_field(query) is not None:
        (end,) = con.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM search_rows").fetchone()
        first, last = _search.key_block_range(query, lo, end if hi is None else hi)
        blocks = list(range(first, last + 1))[:: -1 if query.newest_first else 1]
    return _search.search_statement(query, _search.SQLITE, (), lo=lo, hi=hi, key_blocks=blocks)


class TestSqlitePlans:
    @pytest.mark.parametrize(("query", "index"), PLANS, ids=lambda v: str(v)[:60])
    def test_every_search_uses_its_index(
        self, sqlite_db: SqliteDatabase, query: SearchQuery, index: str
    ) -> None:
        con = sqlite_db._con
        lo, hi = _sqlite_bounds(con, query)
        if query.since_us is not None or query.until_us is not None:
            assert (lo, hi) != (0, None)  # the window was narrowed
        statement, params = _sqlite_statement(con, query, lo, hi)
        plan = _sqlite_plan(con, statement, params)
        for table in ("search_rows", "leaves", "subjects"):
            assert f"SCAN {table}" not in plan, plan
        assert index in plan, plan
        # The leaf rows past the projection are read by primary key only, never an index
        # from the log's start.
        statement, params = _search.search_statement(
            query, _search.SQLITE, (), lo=lo, hi=hi, table="leaves"
        )
        plan = _sqlite_plan(con, statement, params)
        for table in ("search_rows", "leaves", "subjects"):
            assert f"SCAN {table}" not in plan, plan
        assert "SEARCH leaves USING INTEGER PRIMARY KEY" in plan, plan

    def test_the_time_bounds_use_indexes(self, sqlite_db: SqliteDatabase) -> None:
        con = sqlite_db._con
        seen: list[str] = []

        def fetch(statement: str, params: tuple[Any, ...]) -> list[Any]:
            seen.append(_sqlite_plan(con, statement, params))
            return con.execute(statement, params).fetchall()

        _search.time_bounds(fetch, _search.SQLITE, (), T0, T0 + 10**10)
        assert len(seen) == 4
        for plan in seen:
            assert "SCAN" not in plan.replace("COVERING INDEX", ""), plan
        # The open block is read by primary key: the time index would be read from the start.
        (edge,) = [p for p in seen if "leaves" in p]
        assert "INTEGER PRIMARY KEY (rowid>?)" in edge, edge

    def test_a_time_window_costs_the_same_however_long_the_log(self, tmp_path: Path) -> None:
        # The bounds are index seeks: a range on the least or greatest time instead would read
        # every block before or after the window (issue 18: hundreds of cold pages at 10 M).
        def steps(blocks: int) -> int:
            db = SqliteDatabase(tmp_path / f"blocks-{blocks}.db", origin=ORIGIN, writer=True)
            try:
                con = db._con
                con.executemany(
                    "INSERT INTO time_blocks VALUES (?, ?, ?, ?, 0)",
                    [(b, T0 + b * 10**9, T0 + b * 10**9 + 10**8, T0 + b * 10**9 + 10**8)
                     for b in range(blocks)],
                )  # fmt: skip
                counted = [0]

                def count() -> int:
                    counted[0] += 1
                    return 0

                con.set_progress_handler(count, 10)
                middle = T0 + blocks // 2 * 10**9
                lo, hi = _search.time_bounds(
                    lambda st, p: con.execute(st, p).fetchall(),
                    _search.SQLITE,
                    (),
                    middle,
                    middle + 5 * 10**9,
                )
                con.set_progress_handler(None, 0)
                assert lo <= blocks // 2 * 256  # the window's blocks are in the range
                assert hi is not None
                assert hi >= (blocks // 2 + 5) * 256
                return counted[0]
            finally:
                db.close()

        short, long = steps(64), steps(20_000)
        assert long <= short * 2, (short, long)

    @pytest.mark.parametrize(
        ("query", "seek"),
        [
            (SearchQuery(officer_id="officer-3"), "search_officer (<expr>=? AND officer_id=?"),
            (SearchQuery(case_number="case-4", newest_first=True), "search_case (<expr>=?"),
            (
                SearchQuery(case_number="case-4", since_us=T0, until_us=T0 + 10**10),
                "search_case (<expr>=? AND case_number=?",
            ),
            (
                SearchQuery(officer_id="officer-1", visible_to="police.gd", newest_first=True),
                "search_officer (<expr>=? AND officer_id=?",
            ),
            (SearchQuery(subject="acct:3"), "subjects USING PRIMARY KEY (block=? AND subject=?)"),
            (
                SearchQuery(subject="acct:3", newest_first=True, before_index=900),
                "subjects USING PRIMARY KEY (block=? AND subject=?)",
            ),
        ],
        ids=lambda v: str(v)[:60],
    )
    def test_the_random_keys_seek_by_key_block_without_a_sort(
        self, sqlite_db: SqliteDatabase, query: SearchQuery, seek: str
    ) -> None:
        # Officer, case and subject indexes are keyed by key block first (issue 18): the
        # search seeks each block of its range, in the page's order (no sort of every hit).
        con = sqlite_db._con
        lo, hi = _sqlite_bounds(con, query)
        statement, params = _sqlite_statement(con, query, lo, hi)
        plan = _sqlite_plan(con, statement, params)
        for table in ("search_rows", "leaves", "subjects"):
            assert f"SCAN {table}" not in plan, plan
        assert seek in plan, plan
        if not query.visible_to:
            assert "TEMP B-TREE" not in plan, plan
        # Each hit is read once, from its leaf row (no second read of ``subjects``); an index
        # that is the only filter names the hits without reading the projection's rows.
        assert "SEARCH leaves USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        if query in (SearchQuery(officer_id="officer-3"), SearchQuery(case_number="case-4")):
            assert "USING COVERING INDEX search_" in plan, plan

    def test_a_plan_that_scans_is_caught(self, sqlite_db: SqliteDatabase) -> None:
        # The check itself: the old statement (no ``<> ''`` term) scanned the log.
        plan = _sqlite_plan(
            sqlite_db._con,
            "SELECT idx FROM leaves WHERE officer_id = ? ORDER BY idx LIMIT 5",
            ("officer-3",),
        )
        assert "SCAN leaves" in plan


class TestPostgresPlans:
    @pytest.mark.parametrize(("query", "index"), PLANS, ids=lambda v: str(v)[:60])
    def test_every_search_uses_an_index(
        self, pg_db: PgDatabase, pg: PgTarget, query: SearchQuery, index: str
    ) -> None:
        scope = (ORIGIN,)
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            conn.execute("SET enable_seqscan = off")
            plans: list[str] = []

            def fetch(statement: str, params: tuple[Any, ...]) -> list[Any]:
                explained = conn.execute(f"EXPLAIN {statement}".encode(), params).fetchall()
                plans.append("\n".join(r[0] for r in explained))
                return conn.execute(statement.encode(), params).fetchall()

            lo, hi = 0, None
            if query.since_us is not None or query.until_us is not None:
                lo, hi = _search.time_bounds(
                    fetch, _search.PG, scope, query.since_us, query.until_us
                )
            for table in ("search_rows", "leaves"):
                statement, params = _search.search_statement(
                    query, _search.PG, scope, lo=lo, hi=hi, table=table
                )
                fetch(statement, params)
        for plan in plans:
            assert "Seq Scan" not in plan, plan
