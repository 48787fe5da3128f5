"""Measure the PostgreSQL leaves partitioned by month (``docs/audit.md``): EXPLAIN ANALYZE of
the store's reads on a log of a few hundred thousand entries over several months, built in a
schema of its own (dropped afterwards), and B-tree against BRIN for the time index.

    python -m bench.pg_months_plans [--entries 300000] [--months 6] [--dsn DSN]

Figures are for one run on this machine: quote them with the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from fedgate.audit_entry import EntryKind
from fedgate.merkle import leaf_hash
from gateway.audit import pg_store
from gateway.audit._months import month_of, month_start_us
from gateway.audit.pg_store import PgDatabase
from gateway.audit.store import CommitBatch, NewLeaf, SearchQuery

ORIGIN = "bench/pg-months"
DAY = 86_400_000_000


def _leaves(start: int, count: int, t0: int, step: int, rnd: random.Random) -> list[NewLeaf]:
    out = []
    for i in range(start, start + count):
        t = t0 + i * step + rnd.randrange(-step, step)
        leg = 1 + i % 2
        cols = (
            leg,
            f"req-{i // 2}",
            t,
            "police.gd" if i % 3 else "police.sh",
            f"officer-{rnd.randrange(2000)}",
            f"case-{rnd.randrange(40_000)}",
            rnd.choice(("query_account", "freeze_account", "query_subscriber")),
            rnd.choice(("bank.icbc", "bank.ccb", "carrier.cm")),
            rnd.choice(("allowed", "refused", "ok", "not_found")),
            "",
            (f"acct:{rnd.randrange(100_000)}",),
            -1 if leg == 1 else i - 1,
        )
        data = rnd.randbytes(400)
        out.append(NewLeaf(i, data, leaf_hash(data), cols))
    return out


def _analyze(conn: psycopg.Connection[Any], statement: str, params: Any) -> tuple[float, str]:
    rows = conn.execute(
        b"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + statement.encode(), params
    ).fetchall()
    text = "\n".join(str(r[0]) for r in rows)
    ms = float(text.rsplit("Execution Time: ", 1)[1].split(" ms")[0])
    return ms, text


def _best(conn: psycopg.Connection[Any], statement: str, params: Any, runs: int = 5) -> float:
    return min(_analyze(conn, statement, params)[0] for _ in range(runs))


def _size(conn: psycopg.Connection[Any], like: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(pg_relation_size(c.oid)), 0) FROM pg_class AS c"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'i' AND c.relname LIKE %s",
        (like,),
    ).fetchone()
    return 0 if row is None else int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument(
        "--dsn", default=os.environ.get("FEDGATE_PG_DSN", "postgresql://postgres@127.0.0.1/test")
    )
    args = parser.parse_args()
    schema = f"bench_months_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.dsn, autocommit=True)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        _run(args, schema)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


def _run(args: argparse.Namespace, schema: str) -> None:
    rnd = random.Random(1)
    first = month_of(time.time_ns() // 1000) - args.months
    t0 = month_start_us(first)
    step = args.months * 30 * DAY // args.entries
    db = PgDatabase(args.dsn, origin=ORIGIN, schema=schema, writer=True)
    started = time.perf_counter()
    batch = 5_000
    for start in range(0, args.entries, batch):
        leaves = _leaves(start, batch, t0, step, rnd)
        db.commit(CommitBatch(leaves, start + batch, f"checkpoint {start + batch}"))
    while db.catch_up(50_000):
        pass
    built = time.perf_counter() - started
    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute("ANALYZE")
    months = conn.execute("SELECT month, first_idx FROM leaf_months ORDER BY first_idx").fetchall()
    print(f"built {args.entries} entries over {len(months)} months in {built:.1f} s")
    print(f"load average {os.getloadavg()}")
    mid = int(months[len(months) // 2][1]) + 1000
    span = db._span(conn, mid, mid + 256)
    assert span is not None
    # 1. Reads by index range: with the range map's months, and without (every partition).
    no_months = (
        "SELECT leaf_hash FROM leaves WHERE origin = %s AND idx >= %s AND idx < %s ORDER BY idx"
    )
    print("read 256 leaf hashes by index:")
    print(f"  with the range map     {_best(conn, pg_store._LEAF_HASHES, span):.3f} ms")
    print(f"  without (all months)   {_best(conn, no_months, (ORIGIN, mid, mid + 256)):.3f} ms")
    _, plan = _analyze(conn, pg_store._LEAF_HASHES, span)
    print("  plan:", " | ".join(line.strip() for line in plan.splitlines()[:4]))
    # 2. Next index: the last month's partition against the whole table.
    last = int(months[-1][0])
    print("next index (MAX(idx) + 1):")
    in_last = "SELECT MAX(idx) + 1 FROM leaves WHERE origin = %s AND month = %s"
    print(f"  last month only        {_best(conn, in_last, (ORIGIN, last)):.3f} ms")
    print(
        "  every partition        "
        f"{_best(conn, 'SELECT MAX(idx) + 1 FROM leaves WHERE origin = %s', (ORIGIN,)):.3f} ms"
    )
    # 3. Request legs of the last two days: B-tree vs BRIN on time.
    since = t0 + (args.entries - 1) * step - 2 * DAY
    params = (ORIGIN, month_of(since), since, int(EntryKind.REQUEST))
    count_since = "SELECT count(*) FROM (" + pg_store._REQUEST_LEGS_SINCE + ") AS x"
    window = "SELECT count(*) FROM leaves WHERE origin = %s AND time_us >= %s AND time_us < %s"
    mid_t = t0 + (args.entries // 2) * step
    wparams = (ORIGIN, mid_t, mid_t + DAY)
    brin = (
        _best(conn, count_since, params),
        _best(conn, window, wparams),
        _size(conn, "%time_us_idx%"),
    )
    _, brin_plan = _analyze(conn, window, wparams)
    conn.execute("DROP INDEX leaves_time_brin")
    conn.execute("CREATE INDEX leaves_time ON leaves (origin, time_us)")
    conn.execute("ANALYZE leaves")
    btree = (
        _best(conn, count_since, params),
        _best(conn, window, wparams),
        _size(conn, "%time_us_idx%"),
    )
    print("time index (request legs of the last 2 days / one day in mid-log / index size):")
    print(
        f"  B-tree (origin, time_us)   {btree[0]:.2f} ms / {btree[1]:.2f} ms"
        f" / {btree[2] / 1e6:.1f} MB"
    )
    print(
        f"  BRIN (time_us), 16 pages   {brin[0]:.2f} ms / {brin[1]:.2f} ms / {brin[2] / 1e6:.2f} MB"
    )
    print("  BRIN plan:", " | ".join(line.strip() for line in brin_plan.splitlines()[:6]))
    # 4. Searches (first page, newest first): projection + leaf tail through the range map.
    probe = conn.execute(
        "SELECT officer_id, case_number, request_id, target_agency FROM search_rows"
        " WHERE origin = %s AND idx = %s",
        (ORIGIN, mid),
    ).fetchone()
    assert probe is not None
    queries = {
        "officer": SearchQuery(officer_id=probe[0]),
        "case": SearchQuery(case_number=probe[1]),
        "request id": SearchQuery(request_id=probe[2]),
        "target": SearchQuery(target=probe[3]),
        "action": SearchQuery(action="freeze_account"),
        "outcome": SearchQuery(outcome="refused"),
        "time (1 day)": SearchQuery(since_us=mid_t, until_us=mid_t + DAY),
    }
    print("searches (first page of 50, newest first; best of 5):")
    for name, q in queries.items():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            db.search(q)
            best = min(best, time.perf_counter() - t)
        print(f"  {name:14s} {best * 1000:.2f} ms")
    conn.close()
    db.close()


if __name__ == "__main__":
    main()
