"""PostgreSQL leaves partitioned by month (``gateway.audit._months``, ``_partition``): appends
across a month boundary, reads by index and searches that read only the partitions they need
through an index (plans checked), proofs and ``verify`` over months, retention of a whole
month, the migration of an unpartitioned log (verified before and after) and two writers
creating partitions at once."""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from fedgate.audit_entry import EventEntry, decode_entry, encode_entry
from fedgate.auditverify import (
    RETIRED_EVENT,
    Failure,
    RetiredRange,
    RetirementClaim,
    VerifyReport,
    _claim,
    settle_retirements,
)
from fedgate.errors import AuditUnavailable, LogInconsistent
from fedgate.merkle import leaf_hash, root_of, verify_inclusion
from gateway.audit import _partition, _retention, _search
from gateway.audit._months import (
    LAST_MONTH,
    month_name,
    month_of,
    month_start_us,
    partition_name,
    partitions,
)
from gateway.audit._retention import RetentionPolicy
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase, PgMonthRetention, open_pg_store
from gateway.audit.store import CommitBatch, NewLeaf, SearchQuery

from ._pg_plans import assert_indexed, scans
from .conftest import ORIGIN, Fed, LogFactory
from .test_search import _expected
from .test_tamper import run_audit

if TYPE_CHECKING:
    from conftest import PgTarget

# 2026-08-01 00:00 UTC: the leaves below run over August to November.
T0 = month_start_us(2026 * 12 + 7)
HOUR = 3_600_000_000
OFFICERS = 12
MEMBERS = ("police.gd", "police.sh", "bank.icbc", "bank.ccb", "carrier.cm")
ACTIONS = ("query_account", "freeze_account", "query_subscriber")
OUTCOMES = ("allowed", "refused", "ok", "not_found")


def _leaves(count: int, *, start: int = 0, t0: int = T0, step_us: int = 2 * HOUR) -> list[NewLeaf]:
    """Leaves ``step_us`` apart with jitter; every 97th arrives six hours late, and so does
    the second leaf of each month (so it lands in the month after its time's)."""
    rnd = random.Random(start + 5)
    out = []
    previous = month_of(t0 + (start - 1) * step_us)
    late_next = False
    for i in range(start, start + count):
        time_us = t0 + i * step_us + rnd.randrange(-step_us // 3, step_us // 3)
        if i % 97 == 96:
            time_us -= 6 * HOUR
        if late_next:
            time_us = month_start_us(previous) - HOUR
        late_next = month_of(time_us) > previous
        previous = max(previous, month_of(time_us))
        leg = 1 + i % 2
        columns = (
            leg,
            f"req-{i // 2}",
            time_us,
            MEMBERS[i % 2],
            f"officer-{rnd.randrange(OFFICERS)}",
            f"case-{rnd.randrange(40)}",
            rnd.choice(ACTIONS),
            rnd.choice(MEMBERS[2:]),
            rnd.choice(OUTCOMES),
            "",
            (f"acct:{rnd.randrange(30)}",),
            -1 if leg == 1 else i - 1,
        )
        data = f"leaf-{i}".encode()
        out.append(NewLeaf(i, data, leaf_hash(data), columns))  # type: ignore[arg-type]
    return out


def _commit(db: PgDatabase, leaves: list[NewLeaf], batch: int = 100) -> None:
    for start in range(0, len(leaves), batch):
        part = leaves[start : start + batch]
        size = part[-1].index + 1
        db.commit(CommitBatch(part, size, f"checkpoint {size}"))


def _conn(pg: PgTarget) -> psycopg.Connection[Any]:
    conn = psycopg.connect(pg.dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
    return conn


def _tiled(conn: psycopg.Connection[Any], size: int, origin: str = ORIGIN) -> None:
    """Stand-in level-0 tiles for a store filled by ``_commit`` (which writes none): retention
    keeps the leaves of the open tile."""
    conn.execute(
        "INSERT INTO tiles (origin, level, idx, data) SELECT %s, 0, g, decode(repeat('00', 8192),"
        " 'hex') FROM generate_series(0, %s) AS g",
        (origin, size // 256 - 1),
    )


def _month_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        str(r[0]): int(r[1])
        for r in conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM leaves GROUP BY 1 ORDER BY 1"
        )
    }


def _expected_months(leaves: list[NewLeaf]) -> list[int]:
    months, floor = [], -1
    for n in leaves:
        floor = max(floor, month_of(n.columns[2]))
        months.append(floor)
    return months


@pytest.fixture(scope="module")
def spread() -> list[NewLeaf]:
    return _leaves(1500)  # about four months


@pytest.fixture
def db(pg: PgTarget, spread: list[NewLeaf]) -> Iterator[PgDatabase]:
    d = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
    _commit(d, spread)
    assert d.catch_up(1000) == 500  # the tail past the projection is read from the leaves
    yield d
    d.close()


class TestAppends:
    def test_leaves_go_to_their_month_and_never_back(
        self, db: PgDatabase, pg: PgTarget, spread: list[NewLeaf]
    ) -> None:
        months = _expected_months(spread)
        late = [n.index for n, m in zip(spread, months, strict=True) if month_of(n.columns[2]) < m]
        assert late, "the data must hold a leaf logged after its month ended"
        with _conn(pg) as conn:
            counts = _month_counts(conn)
            mapped = conn.execute(
                "SELECT month, first_idx FROM leaf_months WHERE origin = %s ORDER BY first_idx",
                (ORIGIN,),
            ).fetchall()
            stored = dict(
                conn.execute("SELECT idx, month FROM leaves WHERE origin = %s", (ORIGIN,))
            )
        want: dict[str, int] = {}
        for m in months:
            want[partition_name(m)] = want.get(partition_name(m), 0) + 1
        assert counts == want
        assert len(counts) >= 4
        assert stored == dict(enumerate(months))
        assert mapped == [(m, months.index(m)) for m in sorted(set(months))]

    def test_reads_by_index_across_the_boundary(
        self, db: PgDatabase, spread: list[NewLeaf], pg: PgTarget
    ) -> None:
        months = _expected_months(spread)
        edge = months.index(months[-1])  # first leaf of the last month
        assert 50 <= edge <= len(spread) - 20
        a, b = edge - 50, edge + 50
        assert db.leaves(a, b) == [n.data for n in spread[a:b]]
        assert db.leaf_hashes(a, b) == [n.leaf_hash for n in spread[a:b]]
        assert [r[0] for r in db.rows(a, b)] == list(range(a, min(b, len(spread))))
        assert db.leaves(1500, 1600) == []
        db.close()
        again = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            assert again.next_index() == 1500
            _commit(again, _leaves(10, start=1500))
            assert again.next_index() == 1510
        finally:
            again.close()

    def test_a_batch_out_of_order_is_refused(self, db: PgDatabase) -> None:
        with pytest.raises(AuditUnavailable, match="next index is 1500"):
            _commit(db, _leaves(5, start=1400))

    @pytest.mark.parametrize(
        ("ahead", "refusal"),
        [(0, "next index is 1505"), (1, "another writer appended meanwhile")],
        ids=["same-month", "next-month"],
    )
    def test_leaves_another_writer_appended_meanwhile_are_noticed(
        self, db: PgDatabase, pg: PgTarget, spread: list[NewLeaf], ahead: int, refusal: str
    ) -> None:
        """The writer keeps its shard's last month between commits (it does not read it at each
        commit): leaves another writer appended in turn (this one's lock lost, taken by the
        other, which committed before this one's next commit) are still noticed, in that month
        or a later one, and the commit after a refused one reads the month again, so its leaves
        never go back to an earlier month. The check detects leaves written in turn only; the
        session advisory writer lock (``take_writer_lock``) is what keeps a second writer from
        committing at the same moment, and this test releases it by hand to stage the case."""
        last = _expected_months(spread)[-1]

        def starting_in(month: int, start: int) -> list[NewLeaf]:
            return _leaves(5, start=start, t0=month_start_us(month) + HOUR - start * 2 * HOUR)

        db._c().execute(
            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"{pg.schema}/{ORIGIN}",)
        )
        other = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            _commit(other, starting_in(last + ahead, 1500))
        finally:
            other.close()
        with pytest.raises(AuditUnavailable, match=refusal):
            _commit(db, starting_in(last, 1500))
        _commit(db, starting_in(last, 1505))
        assert db.next_index() == 1510
        with _conn(pg) as conn:
            months = conn.execute(
                "SELECT DISTINCT month FROM leaves WHERE origin = %s AND idx >= 1500", (ORIGIN,)
            ).fetchall()
        assert months == [(last + ahead,)]


def _explain_all(
    pg: PgTarget, db: PgDatabase, run: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[tuple[str, tuple[Any, ...]]]]:
    """Run ``run()`` recording every statement the store runs through ``_fetch``."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real = db._fetch

    def fetch(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        seen.append((statement, params))
        return real(statement, params)

    monkeypatch.setattr(db, "_fetch", fetch)
    result = run()
    monkeypatch.undo()
    return result, seen


def _partitions_from(conn: psycopg.Connection[Any], index: int) -> set[str]:
    row = conn.execute(
        "SELECT month FROM leaf_months WHERE origin = %s AND first_idx <= %s"
        " ORDER BY first_idx DESC LIMIT 1",
        (ORIGIN, index),
    ).fetchone()
    assert row is not None
    return {partition_name(m) for m in partitions(conn) if m >= row[0]}


class TestPlans:
    """Every statement a search runs reads an index, and reads of the leaf rows read only the
    months from the projection's edge on (the leaf rows past ``projected_to``)."""

    @pytest.mark.parametrize(
        "field",
        ["officer_id", "case_number", "request_id", "target", "action", "outcome", "time"],
    )
    def test_search(
        self,
        db: PgDatabase,
        pg: PgTarget,
        spread: list[NewLeaf],
        field: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        probe = spread[1234]
        values = {
            "officer_id": probe.columns[4],
            "case_number": probe.columns[5],
            "request_id": probe.columns[1],
            "target": probe.columns[7],
            "action": probe.columns[6],
            "outcome": probe.columns[8],
        }
        queries = []
        for newest in (True, False):
            if field == "time":
                since = T0 + 40 * 24 * HOUR
                kw: dict[str, Any] = {"since_us": since, "until_us": since + 3 * 24 * HOUR}
            else:
                kw = {field: values[field]}
            queries.append(SearchQuery(**kw, newest_first=newest, limit=20))
        with _conn(pg) as conn:
            conn.execute("ANALYZE")
            conn.execute("SET enable_seqscan = off")
            for q in queries:
                hits, seen = _explain_all(pg, db, lambda q=q: db.search(q), monkeypatch)
                assert [h.index for h in hits] == _expected(q, spread), q
                tail = _partitions_from(conn, 1000)
                for statement, params in seen:
                    found = scans(conn, statement, params)
                    touches_leaves = any(s.relation.startswith("leaves_y") for s in found)
                    assert_indexed(conn, found, partitions=tail if touches_leaves else None)

    def test_reads_by_index_read_one_partition(self, db: PgDatabase, pg: PgTarget) -> None:
        from gateway.audit import pg_store

        with _conn(pg) as conn:
            conn.execute("ANALYZE")
            conn.execute("SET enable_seqscan = off")  # a test month is small: price scans out
            months = sorted(partitions(conn))
            row = conn.execute(
                "SELECT first_idx FROM leaf_months WHERE origin = %s AND month = %s",
                (ORIGIN, months[1]),
            ).fetchone()
            assert row is not None
            start = int(row[0]) + 10
            span = db._span(conn, start, start + 100)
            assert span is not None
            assert span[1] == span[2] == months[1]
            for statement in (pg_store._LEAF_BYTES, pg_store._LEAF_HASHES, pg_store._SELECT_ROWS):
                found = scans(conn, statement, span)
                assert {s.relation for s in found} - {""} == {partition_name(months[1])}, found
                assert_indexed(conn, found)

    def test_request_legs_since_reads_the_months_of_the_window(
        self, db: PgDatabase, pg: PgTarget, spread: list[NewLeaf]
    ) -> None:
        from fedgate.audit_entry import EntryKind
        from gateway.audit import pg_store

        since = spread[1400].columns[2]
        with _conn(pg) as conn:
            conn.execute("ANALYZE")
            conn.execute("SET enable_seqscan = off")
            found = scans(
                conn,
                pg_store._REQUEST_LEGS_SINCE,
                (ORIGIN, month_of(since), since, int(EntryKind.REQUEST)),
            )
            assert_indexed(conn, found)
            wanted = {partition_name(m) for m in partitions(conn) if m >= month_of(since)}
        read = {s.relation for s in found} - {""}
        assert read  # some month's leaves were read
        assert read <= wanted  # none outside the window
        assert len(wanted) < len(_expected_months(spread))
        assert len(wanted) <= 3


class TestRetention:
    def test_a_month_is_due_only_when_its_cases_were_not_active_after_the_cutoff(
        self, db: PgDatabase, pg: PgTarget, spread: list[NewLeaf]
    ) -> None:
        db.catch_up(10_000)
        months = _expected_months(spread)
        _first, second = sorted(set(months))[:2]
        with _conn(pg) as conn:
            _tiled(conn, len(spread))
            # The first month ended before the cutoff, but its cases recur in later months.
            assert _partition.due_months(conn, month_start_us(second) + HOUR) == []
            # Past every case's last activity, every month that ended is due, oldest first.
            ended = max(n.columns[2] for n in spread) + 1
            due = _partition.due_months(conn, ended)
            # ... except those reaching into the open tile (the log's right edge).
            stops = {m: len(months) - months[::-1].index(m) for m in set(months)}
            want = [m for m in sorted(set(months))[:-1] if stops[m] <= len(spread) // 256 * 256]
            assert len(want) >= 2
            assert [d.month for d in due] == want
            assert due[0].ranges == ((ORIGIN, 0, months.index(second)),)

    def test_retire_detaches_records_and_keeps_the_rest(self, pg: PgTarget) -> None:
        d = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            # Cases "old-*" only in the first 300 leaves (August and part of September),
            # "new-*" after: August's cases were last active in September.
            leaves = [
                NewLeaf(
                    n.index,
                    n.data,
                    n.leaf_hash,
                    (
                        *n.columns[:5],
                        f"{'old' if n.index < 300 else 'new'}-{n.index % 10}",
                        *n.columns[6:],
                    ),  # type: ignore[arg-type]
                )
                for n in _leaves(900, step_us=3 * HOUR)
            ]
            _commit(d, leaves)
            d.catch_up(10_000)
            months = _expected_months(leaves)
            m1, m2 = sorted(set(months))[:2]
            with _conn(pg) as conn:
                _tiled(conn, len(leaves))
                # A live data key created before month one ended holds it back.
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS body_keys (origin TEXT NOT NULL, ref TEXT NOT"
                    " NULL, kek_id TEXT NOT NULL, wrapped BYTEA, created_us BIGINT NOT NULL,"
                    " last_us BIGINT NOT NULL, destroyed_us BIGINT, rule TEXT NOT NULL DEFAULT"
                    " '', PRIMARY KEY (origin, ref))"
                )
                conn.execute(
                    "INSERT INTO body_keys VALUES (%s, 'case:x', 'k', '\\x01', %s, %s, NULL, '')",
                    (ORIGIN, T0 - 40 * 24 * HOUR, T0),
                )
                # After the old cases' last activity: the months that ended by then are due.
                cutoff = max(n.columns[2] for n in leaves[:300]) + 1
                ended = [m for m in sorted(set(months)) if month_start_us(m + 1) <= cutoff]
                assert len(ended) >= 2
                assert _partition.due_months(conn, cutoff) == []
                conn.execute("UPDATE body_keys SET wrapped = NULL, destroyed_us = %s", (T0,))
                due = _partition.due_months(conn, cutoff)
                assert [d.month for d in due] == ended
                stop = months.index(m2)
                assert due[0].ranges == ((ORIGIN, 0, stop),)
                name = _partition.retire_month(
                    conn, due[0], rule="test", now_us=cutoff, ddl_lock=0x66656467
                )
                assert name == partition_name(m1)
                assert m1 not in partitions(conn)
                kept = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
                ).fetchone()
                assert kept == (stop,)  # detached, not lost: archive it, then drop it
                assert conn.execute(
                    "SELECT origin, month, first_idx, stop_idx FROM retired_months"
                ).fetchall() == [(ORIGIN, m1, 0, stop)]
                # The rest of the log is still read by index, and appends go on.
                assert d.leaves(stop, stop + 5) == [n.data for n in leaves[stop : stop + 5]]
                assert d.leaves(0, stop) == []
                # The next due month is now the oldest; once archived, its table is dropped
                # by hand, and the log goes on without it.
                due = _partition.due_months(conn, cutoff)
                assert [d.month for d in due] == ended[1:]
                name = _partition.retire_month(
                    conn, due[0], rule="test", now_us=cutoff, ddl_lock=0x66656467
                )
                assert name == partition_name(m2)
                assert m2 not in partitions(conn)
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            _commit(d, _leaves(10, start=900, step_us=3 * HOUR))
            assert d.next_index() == 910
        finally:
            d.close()

    def test_an_idle_shards_last_month_is_kept_and_appends_go_on(self, pg: PgTarget) -> None:
        """A shard idle past retention whose size is a whole number of tiles: every month
        is past retention, but the one holding its newest leaf stays (its next index is read
        there); the months before it are retired and the shard still appends."""
        d = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            leaves = _leaves(512, step_us=3 * HOUR)
            _commit(d, leaves)
            d.catch_up(10_000)
            months = sorted(set(_expected_months(leaves)))
            assert len(months) >= 3
            with _conn(pg) as conn:
                _tiled(conn, len(leaves))  # every tile complete: no open tile holds it back
                cutoff = month_start_us(months[-1] + 1) + HOUR  # the last month ended too
                due = _partition.due_months(conn, cutoff)
                assert [m.month for m in due] == months[:-1]
                for month in due:
                    _partition.retire_month(
                        conn, month, rule="test", now_us=cutoff, ddl_lock=0x66656467
                    )
                assert partitions(conn) >= {months[-1]}
                assert _partition.due_months(conn, cutoff) == []
            assert d.next_index() == 512
            _commit(d, _leaves(10, start=512, t0=cutoff - 512 * 3 * HOUR, step_us=3 * HOUR))
            assert d.next_index() == 522
        finally:
            d.close()
        again = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            assert again.next_index() == 522
            _commit(again, _leaves(5, start=522, t0=cutoff - 522 * 3 * HOUR, step_us=3 * HOUR))
            assert again.next_index() == 527
        finally:
            again.close()

    def test_an_idle_shards_last_month_holds_back_the_months_after_it(
        self, pg: PgTarget, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two shards: one idle with a whole number of tiles, all in month one; the other
        active over months one to three. Past month two, nothing is due: month one holds the
        idle shard's newest leaf, and months retire oldest first. The job says which shard
        holds it back; then both shards append."""
        idle_origin = "fedgate.test/gateway/shard-idle"
        t0 = T0 + 24 * HOUR  # no leaf's jitter reaches back into the month before
        idle = PgDatabase(pg.dsn, origin=idle_origin, schema=pg.schema, writer=True)
        active = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            idle_leaves = _leaves(256, t0=t0)
            # Cases of one entry each: no case is active after the cutoff to hold a month.
            active_leaves = [
                NewLeaf(
                    n.index,
                    n.data,
                    n.leaf_hash,
                    (*n.columns[:5], f"once-{n.index}", *n.columns[6:]),  # type: ignore[arg-type]
                )
                for n in _leaves(700, t0=t0, step_us=3 * HOUR)
            ]
            _commit(idle, idle_leaves)
            _commit(active, active_leaves)
            idle.catch_up(10_000)
            active.catch_up(10_000)
            m1, m2, m3 = sorted(set(_expected_months(active_leaves)))
            assert set(_expected_months(idle_leaves)) == {m1}
            cutoff = month_start_us(m2 + 1) + HOUR
            with _conn(pg) as conn:
                _tiled(conn, 256, idle_origin)  # one whole tile: no open tile holds it back
                _tiled(conn, 700)  # months one and two below the active shard's open tile
                with caplog.at_level("INFO", logger=_partition.__name__):
                    assert _partition.due_months(conn, cutoff) == []
                assert f"retention stops at month {month_name(m1)}" in caplog.text
                assert repr(idle_origin) in caplog.text
                assert ORIGIN not in caplog.text
                assert partitions(conn) >= {m1, m2, m3}
            _commit(idle, _leaves(10, start=256, t0=cutoff - 256 * 3 * HOUR, step_us=3 * HOUR))
            _commit(active, _leaves(10, start=700, t0=t0, step_us=3 * HOUR))
            assert (idle.next_index(), active.next_index()) == (266, 710)
        finally:
            idle.close()
            active.close()


class TestConcurrentWriters:
    def test_two_shards_create_schema_and_months_at_once(self, pg: PgTarget) -> None:
        """Two writers (two origins, one schema) open at once and append over the same month
        boundaries: the schema and every partition are created once, under the lock."""
        origins = ("fedgate.test/gateway/shard-a", "fedgate.test/gateway/shard-b")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []
        data = _leaves(1200, step_us=3 * HOUR)

        def write(origin: str) -> None:
            try:
                barrier.wait(timeout=30)
                d = PgDatabase(pg.dsn, origin=origin, schema=pg.schema, writer=True)
                try:
                    _commit(d, data, batch=37)
                finally:
                    d.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(o,)) for o in origins]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        months = _expected_months(data)
        with _conn(pg) as conn:
            for origin in origins:
                rows = conn.execute(
                    "SELECT idx, month, leaf_hash FROM leaves WHERE origin = %s ORDER BY idx",
                    (origin,),
                ).fetchall()
                assert [(r[0], r[1]) for r in rows] == list(enumerate(months))
                assert [bytes(r[2]) for r in rows] == [n.leaf_hash for n in data]
            assert set(months) <= partitions(conn)


# -- the log itself: proofs, verify, migration -------------------------------------------------


@pytest_asyncio.fixture
async def pg_logs(tmp_path: Path, fed: Fed, pg: PgTarget) -> AsyncIterator[LogFactory]:
    factory = LogFactory("postgres", tmp_path, fed, pg)
    yield factory
    for log in factory.opened:
        await log.close()


NEXT_MONTH = datetime(2027, 1, 1, tzinfo=UTC)  # after the session federation's keys were issued


async def _exchanges(logs: LogFactory, times: list[datetime]) -> None:
    log = await logs.open()
    for at in times:
        logs.fed.now = at
        request = logs.fed.request()
        receipt = await log.append(request)
        await log.append(logs.fed.response(request, receipt.index))
    await log.close()
    logs.opened.remove(log)


OTHER = "fedgate.test/gateway/shard-other"


async def _other_shard(pg_logs: LogFactory, pg: PgTarget, times: list[datetime]) -> str:
    """A second instance's shard ``OTHER`` in the same schema, with an exchange at each time."""
    store = await open_pg_store(
        pg.dsn, origin=OTHER, schema=pg.schema, state_path=pg_logs.tmp / "other.state"
    )
    log = await AuditLog.open(store=store, origin=OTHER, signer=pg_logs.fed.log_signer(OTHER))
    try:
        for at in times:
            pg_logs.fed.now = at
            request = pg_logs.fed.request()
            receipt = await log.append(request)
            await log.append(pg_logs.fed.response(request, receipt.index))
    finally:
        await log.close()
    return OTHER


def _verify(
    pg_logs: LogFactory,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    signatures: bool = False,
    source: list[str] | None = None,
) -> tuple[int, str]:
    """``fedgate audit verify`` of ``pg_logs`` (or of what ``source`` names) with ``extra``
    arguments: ``(exit code, output)``. No signature checks unless ``signatures``: the
    session federation's keys were issued after the 2025 entries of the retention tests."""
    fed = ["--federation", str(pg_logs.fed.dir), *([] if signatures else ["--no-signatures"])]
    where = pg_logs.source_args() if source is None else source
    return run_audit(["verify", *where, *fed, *extra], capsys)


class TestLog:
    async def test_proofs_and_verify_over_a_month_boundary(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        times = [NEXT_MONTH + timedelta(minutes=m) for m in range(-140, 140, 2)]
        await _exchanges(pg_logs, times)
        with _conn(pg) as conn:
            counts = _month_counts(conn)
        assert set(counts) == {"leaves_y2026m12", "leaves_y2027m01"}, counts
        log = await pg_logs.open()
        try:
            hashes = [log.leaf_hash(i) for i in range(log.size)]
            root = root_of(hashes)
            for index in (0, 139, 140, 141, log.size - 1):
                proof = log.inclusion_proof(index, log.size)
                verify_inclusion(hashes[index], index, log.size, proof, root)
        finally:
            await log.close()
            pg_logs.opened.remove(log)
        code, out = _verify(pg_logs, capsys, signatures=True)
        assert code == 0, out
        code, out = run_audit(["prove", "140", *pg_logs.source_args()], capsys)
        assert code == 0, out


def _to_legacy(pg: PgTarget) -> None:
    """Turn the schema into what version 3 wrote: one unpartitioned ``leaves``."""
    with _conn(pg) as conn, conn.transaction():
        conn.execute("ALTER TABLE leaves RENAME TO leaves_monthly")
        conn.execute("ALTER INDEX leaves_pkey RENAME TO leaves_monthly_pkey")
        conn.execute("ALTER INDEX leaves_time_brin RENAME TO leaves_monthly_time")
        conn.execute(
            "CREATE TABLE leaves (origin TEXT NOT NULL, idx BIGINT NOT NULL CHECK (idx >= 0),"
            " leaf BYTEA NOT NULL, leaf_hash BYTEA NOT NULL, leg SMALLINT NOT NULL,"
            " request_id TEXT NOT NULL, time_us BIGINT NOT NULL, requesting_agency TEXT NOT NULL,"
            " officer_id TEXT NOT NULL, case_number TEXT NOT NULL, action TEXT NOT NULL,"
            " target_agency TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL,"
            " request_leaf_index BIGINT NOT NULL, subjects TEXT NOT NULL DEFAULT '[]',"
            " PRIMARY KEY (origin, idx))"
        )
        conn.execute(
            "INSERT INTO leaves SELECT origin, idx, leaf, leaf_hash, leg, request_id, time_us,"
            " requesting_agency, officer_id, case_number, action, target_agency, outcome,"
            " reason, request_leaf_index, subjects FROM leaves_monthly ORDER BY idx"
        )
        conn.execute("DROP TABLE leaves_monthly CASCADE")
        conn.execute("CREATE INDEX leaves_time ON leaves (origin, time_us)")
        conn.execute("DROP TABLE leaf_months, retired_months")
        conn.execute("UPDATE fedgate_schema SET version = 3 WHERE store = 'audit log'")


class TestMigration:
    async def test_an_unpartitioned_log_is_verified_moved_and_verified(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        times = [NEXT_MONTH + timedelta(days=d) for d in range(-25, 65, 3)]
        await _exchanges(pg_logs, times[:20])
        _to_legacy(pg)
        # A gateway of this version keeps writing the legacy layout (one month, 0) ...
        await _exchanges(pg_logs, times[20:])
        with _conn(pg) as conn:
            assert conn.execute("SELECT DISTINCT month FROM leaves").fetchall() == [(0,)]
            assert conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = 'leaves'::regclass"
            ).fetchone() == ("r",)
        fed = ["--federation", str(pg_logs.fed.dir)]
        source = ["--pg", pg.dsn, "--schema", pg.schema]
        # ... until ``migrate`` verifies it, moves it into months and verifies it again.
        code, out = run_audit(["migrate", *source, *fed], capsys)
        assert code == 0, out
        assert "before moving" in out, out
        assert "moved 60 entries into" in out, out
        assert "after migrating" in out, out
        assert "the old leaves are dropped" in out, out
        assert "partitioned fedgate.test/gateway/shard-0: 60/60 entries" in out
        with _conn(pg) as conn:
            counts = _month_counts(conn)
            assert conn.execute("SELECT to_regclass('leaves_unpartitioned')").fetchone() == (None,)
        want: dict[str, int] = {}
        for at in times:
            name = partition_name(at.year * 12 + at.month - 1)
            want[name] = want.get(name, 0) + 2  # request and response leg
        assert counts == want
        await _exchanges(pg_logs, [NEXT_MONTH + timedelta(days=70)])
        code, out = _verify(pg_logs, capsys, signatures=True)
        assert code == 0, out
        code, out = run_audit(["migrate", *source, *fed], capsys)  # again: nothing to do
        assert code == 0, out
        assert "moved" not in out, out

    async def test_a_log_that_does_not_verify_is_not_moved(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _exchanges(pg_logs, [NEXT_MONTH + timedelta(days=d) for d in range(0, 60, 6)])
        _to_legacy(pg)
        PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True).close()
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE leaves DISABLE TRIGGER USER")
            conn.execute("UPDATE leaves SET leaf = leaf || '\\x00'::bytea WHERE idx = 3")
        code, out = run_audit(
            [
                "migrate",
                "--pg",
                pg.dsn,
                "--schema",
                pg.schema,
                "--federation",
                str(pg_logs.fed.dir),
            ],
            capsys,
        )
        assert code == 1, out
        assert "does not verify: nothing changed" in out, out
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = 'leaves'::regclass"
            ).fetchone() == ("r",)


class TestRetentionJob:
    async def test_the_job_logs_then_detaches_the_months_past_retention(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The whole job on an unsealed log (no KEK, so no case keys): months still retire,
        which is how an unsealed log's personal data leaves the store."""
        jan = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(64)]
        feb = [datetime(2025, 2, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(100)]
        await _exchanges(pg_logs, jan + feb)  # leaves 0..127 in January, 128..327 in February
        log = await pg_logs.open()
        now = datetime.now(UTC)
        policy = RetentionPolicy(close_after_idle=timedelta(0), keep_after_close=timedelta(0))
        months = PgMonthRetention(pg.dsn, schema=pg.schema)
        destroyed = await _retention.run_retention(
            log, None, policy, actor="gateway", now=now, months=months
        )
        assert destroyed == []
        # January only: February reaches into the open tile (256..), the log's right edge.
        event = decode_entry(await log.get_entry(log.size - 1))
        assert log.size == 329
        assert event.kind == RETIRED_EVENT  # type: ignore[union-attr]
        assert dict(event.detail)["month"] == "2025-01"  # type: ignore[union-attr]
        assert dict(event.detail)["entries"] == f"{ORIGIN} 0..127"  # type: ignore[union-attr]
        assert dict(event.detail)["retired"] == f"{ORIGIN} 0..127"  # type: ignore[union-attr]
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT month, first_idx, stop_idx FROM retired_months ORDER BY month"
            ).fetchall() == [(2025 * 12, 0, 128)]
            assert 2025 * 12 not in partitions(conn)
            assert 2025 * 12 + 1 in partitions(conn)
        await log.close()
        pg_logs.opened.remove(log)
        log = await pg_logs.open()  # the right edge still loads
        assert log.size == 329
        # What is left verifies from the first kept checkpoint past the retired entries.
        code, out = _verify(pg_logs, capsys, "--from", "256")
        assert code == 0, out


# -- verify after retention: from the first kept checkpoint, the retirement logged -----------

JAN = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(64)]
FEB = [datetime(2025, 2, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(100)]
MAR = [datetime(2025, 3, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(150)]
"""Leaves 0..127 in January, 128..327 in February, 328..627 in March."""


async def _retire(pg_logs: LogFactory, pg: PgTarget, now: datetime | None = None) -> None:
    """Run the retention job's month step on the log (it logs, then detaches), at ``now``
    (the event is logged at that time: in that month's partition)."""
    log = await pg_logs.open()
    now = now or datetime.now(UTC)
    policy = RetentionPolicy(close_after_idle=timedelta(0), keep_after_close=timedelta(0))
    months = PgMonthRetention(pg.dsn, schema=pg.schema)
    await _retention._retire_months(log, months, policy, actor="gateway", now=now, cutoff=now)
    await log.close()
    pg_logs.opened.remove(log)


class TestVerifyAfterRetention:
    async def test_the_default_verify_starts_past_the_retired_months_and_says_so(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)  # January only (February reaches into the open tile)
        code, out = _verify(pg_logs, capsys)
        assert code == 0, out
        assert (
            "entries 0\u2013127 retired (month 2025-01, logged at entry 328); verified 201 "
            "entries from entry 128, against the signed checkpoint at size 256 and every one "
            "after it" in out
        ), out
        assert "entries      201 of 329 checked" in out, out
        # The lean check (no index, no signatures) finds the event through its own parse too.
        code, out = _verify(pg_logs, capsys, "--no-index")
        assert code == 0, out
        assert "entries 0\u2013127 retired (month 2025-01, logged at entry 328)" in out, out
        code, out = _verify(pg_logs, capsys, "--from", "300")
        assert code == 0, out  # --from past the retired entries: from its own checkpoint
        assert "entries      73 of 329 checked" in out, out
        assert "retired" not in out, out  # what --from skips is not its to check

    async def test_a_month_retired_again_later_is_named_by_its_own_event(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)  # January, logged at 328
        await _exchanges(pg_logs, MAR)
        await _retire(pg_logs, pg)  # February, logged at 629
        code, out = _verify(pg_logs, capsys)
        assert code == 0, out
        assert (
            "entries 0\u2013327 retired (month 2025-01, logged at entry 328; month 2025-02, "
            "logged at entry 629); verified 302 entries from entry 328, against the signed "
            "checkpoint at size 512 and every one after it" in out
        ), out
        # --from past January's event (and February's range): verified from its checkpoint.
        code, out = _verify(pg_logs, capsys, "--from", "600")
        assert code == 0, out
        assert "entries      118 of 630 checked" in out, out

    async def test_the_newest_event_names_every_retired_month_once_older_events_are_retired(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """January's event is logged in February; retiring February then retires it too. The
        February event names every entry retired so far, so the log still accounts for
        January."""
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg, datetime(2025, 2, 20, tzinfo=UTC))  # January, at 328
        await _exchanges(pg_logs, MAR)
        await _retire(pg_logs, pg, datetime(2025, 3, 25, tzinfo=UTC))  # February, at 629
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT month, first_idx, stop_idx FROM retired_months ORDER BY month"
            ).fetchall() == [(2025 * 12, 0, 128), (2025 * 12 + 1, 128, 329)]
        log = await pg_logs.open()
        event = decode_entry(await log.get_entry(629))
        await log.close()
        pg_logs.opened.remove(log)
        assert dict(event.detail)["entries"] == f"{ORIGIN} 128..328"  # type: ignore[union-attr]
        assert dict(event.detail)["retired"] == f"{ORIGIN} 0..328"  # type: ignore[union-attr]
        code, out = _verify(pg_logs, capsys)
        assert code == 0, out
        assert (
            "entries 0\u2013328 retired (month 2025-01, logged at entry 629; month 2025-02, "
            "logged at entry 629); verified 301 entries from entry 329" in out
        ), out
        # Entries past the logged retirement recorded as retired by hand: named by no event.
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE retired_months DISABLE TRIGGER USER")
            conn.execute(
                "INSERT INTO retired_months (origin, month, first_idx, stop_idx, retired_us,"
                " rule) VALUES (%s, %s, 329, 512, 0, 'by hand')",
                (ORIGIN, 2025 * 12 + 2),
            )
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert "FAILED at entry 329: entries 329..511 (month 2025-03) are missing" in out, out

    async def test_a_month_holding_the_older_event_detached_without_its_own_fails(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """February (which holds January's event) detached by hand: no event in the kept log
        names January or February."""
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg, datetime(2025, 2, 20, tzinfo=UTC))
        await _exchanges(pg_logs, MAR)
        months = PgMonthRetention(pg.dsn, schema=pg.schema)
        now_us = month_start_us(2025 * 12 + 2) + 24 * HOUR * 24
        due = months.due(now_us)
        assert [m.name for m in due] == ["2025-02"]
        assert due[0].through == ((ORIGIN, 0, 329),)
        months.retire(due[0], rule="by hand", now_us=now_us)
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert "FAILED at entry 0: entries 0..127 (month 2025-01) are missing" in out, out

    async def test_a_month_detached_without_its_event_fails(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The retirement done by hand (or by a job that skipped logging): the partition
        detached and recorded, no ``leaves_retired`` event in the log."""
        await _exchanges(pg_logs, JAN + FEB)
        months = PgMonthRetention(pg.dsn, schema=pg.schema)
        now_us = month_start_us(2026 * 12)
        due = months.due(now_us)
        assert [m.name for m in due] == ["2025-01"]
        months.retire(due[0], rule="by hand", now_us=now_us)
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert (
            "FAILED at entry 0: entries 0..127 (month 2025-01) are missing from the store, "
            "which says they were retired, but no leaves_retired event in the verified log "
            "names them" in out
        ), out

    async def test_a_later_month_detached_beside_a_logged_one_fails(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """January retired by the job; February then detached and recorded by hand: the
        January event does not cover it."""
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)
        await _exchanges(pg_logs, MAR)
        months = PgMonthRetention(pg.dsn, schema=pg.schema)
        now_us = month_start_us(2026 * 12)
        due = months.due(now_us)
        assert [m.name for m in due][:1] == ["2025-02"]
        months.retire(due[0], rule="by hand", now_us=now_us)
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert "month 2025-01, logged at entry 328" in out, out
        assert "FAILED at entry 128: entries 128..327 (month 2025-02) are missing" in out, out

    async def test_rows_deleted_from_the_oldest_month_fail(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A superuser deletes the oldest month's rows (no retirement recorded), or removes
        the record of a logged retirement: the entries are missing, whatever the log says."""
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE retired_months DISABLE TRIGGER USER")
            conn.execute("DELETE FROM retired_months")
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert "FAILED at entry 0: entry 0 is missing from the store" in out, out
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE leaves DISABLE TRIGGER USER")
            conn.execute("DELETE FROM leaves WHERE idx < 200")
        code, out = _verify(pg_logs, capsys)
        assert code == 1, out
        assert "FAILED at entry 0: entry 0 is missing from the store" in out, out
        # --from still verifies what is left (the claim is the auditor's to make).
        code, out = _verify(pg_logs, capsys, "--from", "256")
        assert code == 0, out


class TestVerifyAfterRetentionOverShards:
    async def test_a_shards_range_is_named_by_the_event_another_instance_logged(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two instances, one schema: the one that runs the job logs the event naming both
        shards' ranges. Verifying every shard credits it; one shard alone cannot."""
        other = await _other_shard(pg_logs, pg, JAN + FEB)
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)  # logged in ORIGIN's shard, at 328
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT origin, first_idx, stop_idx FROM retired_months ORDER BY origin"
            ).fetchall() == [(ORIGIN, 0, 128), (other, 0, 128)]
        every = ["--pg", pg.dsn, "--schema", pg.schema]
        code, out = _verify(pg_logs, capsys, source=every)
        assert code == 0, out
        assert f"(month 2025-01, logged at entry 328 of {ORIGIN})" in out, out
        code, out = _verify(pg_logs, capsys, "--origin", other, source=every)
        assert code == 1, out
        assert "FAILED at entry 0: entries 0..127 (month 2025-01) are missing" in out, out
        assert "verify every shard, without --origin" in out, out


class _RetirerBeforeTheFix:
    """The month step of retention as it was before a shard's last month was kept: January
    due with every shard's range in it, whatever it holds (``MonthRetirer``)."""

    def __init__(self, pg: PgTarget) -> None:
        self._pg = pg
        self._months = PgMonthRetention(pg.dsn, schema=pg.schema)

    def due(self, cutoff_us: int) -> list[_partition.RetiredMonth]:
        with _conn(self._pg) as conn:
            ranges = _partition._ranges(conn, 2025 * 12)
        return [_partition.RetiredMonth(2025 * 12, ranges, ranges)]  # January: from 0 each

    def retire(self, month: _partition.RetiredMonth, *, rule: str, now_us: int) -> str:
        return self._months.retire(month, rule=rule, now_us=now_us)


class TestShardWhoseLastMonthWasRetired:
    @staticmethod
    async def _stage(pg_logs: LogFactory, pg: PgTarget) -> str:
        """An idle shard of one whole tile in January, January retired by the job as it was
        before the fix (logged in ``ORIGIN``'s shard, then detached): returns the shard."""
        idle = [datetime(2025, 1, 5, tzinfo=UTC) + timedelta(minutes=30 * h) for h in range(128)]
        other = await _other_shard(pg_logs, pg, idle)  # leaves 0..255 in January
        await _exchanges(pg_logs, JAN + FEB)
        log = await pg_logs.open()
        now = datetime.now(UTC)
        policy = RetentionPolicy(close_after_idle=timedelta(0), keep_after_close=timedelta(0))
        await _retention._retire_months(
            log, _RetirerBeforeTheFix(pg), policy, actor="gateway", now=now, cutoff=now
        )
        await log.close()
        pg_logs.opened.remove(log)
        return other

    async def test_it_appends_on_from_the_retired_end_and_verifies(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Before retention kept a shard's last month, an idle shard of a whole number of
        tiles lost it: its next index read 0 in the detached month, and every commit to it
        was refused. Its next index is now the retired range's end: it opens, appends on from
        there, and the log verifies."""
        other = await self._stage(pg_logs, pg)
        jan = 2025 * 12
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT origin, month, first_idx, stop_idx FROM retired_months ORDER BY origin"
            ).fetchall() == [(ORIGIN, jan, 0, 128), (other, jan, 0, 256)]
            assert jan not in partitions(conn)
            assert conn.execute(LAST_MONTH, (other,)).fetchone() == (jan,)  # the broken state

            def fetch(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                return conn.execute(statement, params).fetchall()

            assert _search.next_index(fetch, _search.PG, (other,)) == 256
        reader = PgDatabase(pg.dsn, origin=other, schema=pg.schema, writer=False)
        try:
            assert reader.next_index() == 256
        finally:
            reader.close()
        april = [datetime(2025, 4, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(3)]
        await _other_shard(pg_logs, pg, april)  # opens (the tree checked), appends
        with _conn(pg) as conn:
            assert conn.execute(
                "SELECT month, first_idx FROM leaf_months WHERE origin = %s ORDER BY month",
                (other,),
            ).fetchall() == [(jan, 0), (jan + 3, 256)]
            assert conn.execute(
                "SELECT min(idx), max(idx) FROM leaves WHERE origin = %s", (other,)
            ).fetchone() == (256, 261)
        every = ["--pg", pg.dsn, "--schema", pg.schema]
        code, out = _verify(pg_logs, capsys, source=every)
        assert code == 0, out
        assert f"(month 2025-01, logged at entry 328 of {ORIGIN})" in out, out

    @pytest.mark.parametrize(
        "record",
        ["UPDATE retired_months SET stop_idx = 200", "DELETE FROM retired_months"],
        ids=["wrong-end", "no-record"],
    )
    async def test_a_retired_end_that_disagrees_with_the_signed_head_is_refused(
        self, pg_logs: LogFactory, pg: PgTarget, record: str
    ) -> None:
        """Fail closed: the next index read from a retired record (or 0 without one) must
        agree with the tiles and the signed checkpoint, or the shard does not open."""
        other = await self._stage(pg_logs, pg)
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE retired_months DISABLE TRIGGER USER")
            conn.execute(record + " WHERE origin = %s", (other,))  # constant text in the test
        store = await open_pg_store(
            pg.dsn, origin=other, schema=pg.schema, state_path=pg_logs.tmp / "other.state"
        )
        try:
            with pytest.raises(LogInconsistent, match="tiles and leaves disagree on its size"):
                await AuditLog.open(store=store, origin=other, signer=pg_logs.fed.log_signer(other))
        finally:
            await store.close()


class TestMigrateOverShards:
    async def test_migrate_verifies_every_shard_together(
        self, pg_logs: LogFactory, pg: PgTarget, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two instances, one schema, a month retired by one of them: ``migrate --pg``
        credits the event another shard logged, as ``verify`` over every shard does."""
        other = await _other_shard(pg_logs, pg, JAN + FEB)
        await _exchanges(pg_logs, JAN + FEB)
        await _retire(pg_logs, pg)  # logged in ORIGIN's shard, naming both
        fed = ["--federation", str(pg_logs.fed.dir)]  # (migrate checks no signatures)
        every = ["--pg", pg.dsn, "--schema", pg.schema]
        code, out = run_audit(["migrate", *every, *fed], capsys)
        assert code == 0, out
        assert f"before migrating {other}:" in out, out
        assert f"(month 2025-01, logged at entry 328 of {ORIGIN})" in out, out
        assert f"after migrating {other}:" in out, out
        # The other shard's range recorded as retired beyond what the event names: refused.
        with _conn(pg) as conn:
            conn.execute("ALTER TABLE retired_months DISABLE TRIGGER USER")
            conn.execute("UPDATE retired_months SET stop_idx = 200 WHERE origin = %s", (other,))
        code, out = run_audit(["migrate", *every, *fed], capsys)
        assert code == 1, out
        assert "the log does not verify: nothing changed" in out, out


class TestRetirementClaims:
    """The instance that runs the retention job logs the event in its own shard, naming every
    shard's range: a shard's retired range may be named in another shard."""

    @staticmethod
    def _report(origin: str, **kwargs: Any) -> VerifyReport:
        return VerifyReport(origin, 500, 2, 0, (), None, False, 0.1, **kwargs)

    def test_another_verified_shards_event_names_a_range_exactly(self) -> None:
        jan = RetiredRange("2025-01", 0, 128)
        claim = RetirementClaim(400, "2025-01", (("shard-b", 0, 90), ("shard-a", 0, 128)))
        a = self._report("shard-a", retired=(jan,))
        b = self._report("shard-b", claims=(claim,))
        assert not a.ok
        assert a.unclaimed == (jan,)
        settled = settle_retirements([a, b])
        assert settled[0].ok
        assert settled[0].retired_by == ((jan, "shard-b", 400),)
        # Another month, another range, or a shard that failed its verification name nothing.
        for other in (
            RetirementClaim(400, "2025-02", (("shard-a", 0, 128),)),
            RetirementClaim(400, "2025-01", (("shard-a", 0, 127),)),
        ):
            assert not settle_retirements([a, self._report("shard-b", claims=(other,))])[0].ok
        failed = self._report("shard-b", claims=(claim,), failure=Failure("entry 3 was altered"))
        assert not settle_retirements([a, failed])[0].ok

    def test_a_whole_retired_range_names_the_months_up_to_one_of_its_ends(self) -> None:
        jan, feb = RetiredRange("2025-01", 0, 128), RetiredRange("2025-02", 128, 329)
        newest = RetirementClaim(629, "2025-02", (("shard-a", 128, 329),), (("shard-a", 0, 329),))
        a = settle_retirements([self._report("shard-a", retired=(jan, feb), claims=(newest,))])[0]
        assert a.ok
        assert a.retired_by == ((jan, "shard-a", 629), (feb, "shard-a", 629))
        other = self._report("shard-b", retired=(jan, feb))
        assert settle_retirements([other, self._report("x", claims=(newest,))])[0].unclaimed == (
            jan,
            feb,
        )
        for claim in (
            # ends inside a retired range, names an earlier month, or another shard
            RetirementClaim(629, "2025-02", (), (("shard-a", 0, 300),)),
            RetirementClaim(629, "2025-01", (), (("shard-a", 0, 329),)),
            RetirementClaim(629, "2025-02", (), (("shard-b", 0, 329),)),
        ):
            report = self._report("shard-a", retired=(jan, feb), claims=(claim,))
            assert feb in settle_retirements([report])[0].unclaimed, claim
        # Beyond the end it names: a range retired later needs its own event.
        mar = RetiredRange("2025-03", 329, 512)
        report = self._report("shard-a", retired=(jan, feb, mar), claims=(newest,))
        assert settle_retirements([report])[0].unclaimed == (mar,)

    def test_the_claim_is_read_from_the_event_the_job_logs(self) -> None:
        def event(kind: str, entries: str) -> bytes:
            detail = (("month", "2025-01"), ("rule", "r"), ("entries", entries))
            return encode_entry(
                EventEntry(kind, "gw", "gw", datetime(2026, 1, 1, tzinfo=UTC), detail)
            )

        assert _claim(7, event("leaves_retired", "o/a 0..127; o/b 0..99")) == RetirementClaim(
            7, "2025-01", (("o/a", 0, 128), ("o/b", 0, 100))
        )
        assert _claim(7, event("console_login_failed", "o/a 0..127")) is None
        for malformed in ("o/a 0-127", "0..127", "o/a 5..3", "o/a -1..3"):
            assert _claim(7, event("leaves_retired", malformed)) is None, malformed

        def whole(retired: str) -> bytes:
            detail = (("month", "2025-02"), ("entries", "o/a 128..328"), ("retired", retired))
            return encode_entry(
                EventEntry("leaves_retired", "gw", "gw", datetime(2026, 1, 1, tzinfo=UTC), detail)
            )

        assert _claim(9, whole("o/a 0..328; o/b 0..99")) == RetirementClaim(
            9, "2025-02", (("o/a", 128, 329),), (("o/a", 0, 329), ("o/b", 0, 100))
        )
        for malformed in ("o/a 128..328", "o/a 0..", ""):  # a whole range starts at 0
            assert _claim(9, whole(malformed)) is None, malformed
