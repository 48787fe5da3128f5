"""The SQLite store counts the rollups in SQL (no row comes into Python): the same counts as
``_rollups.day_rows`` and ``officer_rows``, which PostgreSQL still uses, for any columns."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.audit import _rollups
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import NewLeaf

_HOUR = 3_600_000_000
_COLUMNS = (
    "idx, leg, request_id, time_us, requesting_agency, officer_id, case_number, action,"
    " target_agency, outcome, reason, request_leaf_index"
)
_INSERTS = {
    "search_rows": f"INSERT INTO search_rows ({_COLUMNS}) VALUES ({', '.join('?' * 12)})",
    "leaves": f"INSERT INTO leaves ({_COLUMNS}, leaf, leaf_hash) VALUES ({', '.join('?' * 14)})",
}
_REASONS = ("", ":", "NOT_PERMITTED: rule", "QUOTA_EXCEEDED", ":x", "规则: 拒绝", "a:b:c")


def _leaves(n: int, seed: int) -> list[NewLeaf]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        leg = rng.choice((1, 1, 2, 3))
        # Around the epoch too: days and hours are floor divisions, as in Python.
        time_us = rng.choice((0, -1, -8 * _HOUR, -8 * _HOUR - 1, 1)) + rng.randrange(
            -3 * 24 * _HOUR, 3 * 24 * _HOUR
        )
        columns = (
            leg,
            f"r-{i}",
            time_us,
            rng.choice(("police.a", "police.b")),
            rng.choice(("", "4401001", "4401002")),
            "",
            rng.choice(("stop_payment", "query_account")),
            rng.choice(("bank.a", "bank.b")),
            rng.choice(("allowed", "refused", "ok")),
            rng.choice(_REASONS),
            (),
            -1,
        )
        out.append(NewLeaf(i, b"", b"", columns))
    return out


@pytest.mark.parametrize("table", ["search_rows", "leaves"])
def test_sql_rollups_equal_the_python_counts(tmp_path: Path, table: str) -> None:
    leaves = _leaves(400, seed=7)
    db = SqliteDatabase(tmp_path / "a.sqlite", origin="fedgate.test/rollups", writer=True)
    try:
        con = db._con
        con.executemany(
            _INSERTS[table],
            [
                (
                    n.index,
                    *n.columns[:10],
                    n.columns[11],
                    *((b"", b"") if table == "leaves" else ()),
                )
                for n in leaves
            ],
        )
        for lo, hi in ((0, 150), (150, 151), (151, 400)):  # counts add up across ranges
            for statement in _rollups.sqlite_range_upserts(table):
                con.execute(statement, (lo, hi))
        days = {tuple(r[:3]): r[3] for r in con.execute("SELECT * FROM rollup_day")}
        officers = {
            tuple(r[:7]): tuple(r[7:])
            for r in con.execute(
                "SELECT day, member, officer, hour, action, leg, outcome, n, first_idx"
                " FROM rollup_officer"
            )
        }
    finally:
        db.close()
    expected_days: dict[tuple[object, ...], int] = {}
    for d, dim, key, n in _rollups.day_rows(leaves):
        expected_days[(d, dim, key)] = expected_days.get((d, dim, key), 0) + n
    assert days == expected_days
    assert officers == {tuple(r[:7]): tuple(r[7:]) for r in _rollups.officer_rows(leaves)}


def test_only_the_two_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not 'subjects'"):
        _rollups.sqlite_range_upserts("subjects")
