"""Key tiers (SQLite schema version 7, issue 18): which key blocks hold a key, so a search for a
rare or absent key seeks only those blocks.

On a real log of one level-1 tier and some (``write_log``): the writer's builder makes the tier
in the background, its rows are what the leaves say, searches find what a plain filter over the
leaves finds, an absent key reads no block a tier rules out, an interrupted build leaves no
partial tier in use and is finished by the next one, and a version 6 log gains its tiers. On a
sparse projection of many key blocks (no leaves: the tiers read only the projection): level-2
tiers name exactly the blocks that hold a key.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench._biglog import bench_signer, write_log
from fedgate.errors import AuditUnavailable
from gateway.audit import _key_tiers, _search
from gateway.audit.cli import register
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import SearchQuery

pytestmark = pytest.mark.xdist_group("key_tiers")  # one worker builds the module's log

BLOCK = 1 << _search.KEY_BLOCK_BITS
TIER = BLOCK << _key_tiers.FANOUT_BITS  # leaves per level-1 tier
ENTRIES = TIER + 3 * BLOCK + 1_000  # one tier, three blocks past it, and a partial one


def _fetch(con: sqlite3.Connection) -> _key_tiers.Fetch:
    return lambda statement, params: con.execute(statement, params).fetchall()


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _wait_built(path: Path, level_1: int, timeout: float = 60.0) -> None:
    con = _connect(path)
    try:
        deadline = time.monotonic() + timeout
        while _key_tiers.built(_fetch(con))[0] < level_1:
            assert time.monotonic() < deadline, "the builder did not build the tier in time"
            time.sleep(0.05)
    finally:
        con.close()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log, its first tier built by a writer's builder."""
    path = tmp_path_factory.mktemp("key-tiers") / "audit.sqlite"
    write_log(path, ENTRIES, batch=16_384, workers=2)
    db = SqliteDatabase(path, origin=None, writer=True)
    try:
        assert db.settle_key_tiers() == (1, 0)
    finally:
        db.close()
    return path


def _copy(log: Path, path: Path) -> Path:
    for suffix in ("", ".state"):
        shutil.copyfile(f"{log}{suffix}", f"{path}{suffix}")
    return path


_Leaf = tuple[int, str, str, tuple[str, ...]]


def _leaves(path: Path) -> list[_Leaf]:
    con = _connect(path)
    try:
        return [
            (int(i), str(o), str(c), tuple(json.loads(str(s))))
            for i, o, c, s in con.execute(
                "SELECT idx, officer_id, case_number, subjects FROM leaves ORDER BY idx"
            )
        ]
    finally:
        con.close()


def _blocks_of(leaves: list[_Leaf]) -> dict[tuple[int, str], set[int]]:
    """``{(kind, key): key blocks holding it}``, from the leaves."""
    found: dict[tuple[int, str], set[int]] = {}
    for idx, officer, case, subjects in leaves:
        block = idx >> _search.KEY_BLOCK_BITS
        keys = [(0, officer), (1, case), *((2, s) for s in subjects)]
        for kind, key in keys:
            if key:
                found.setdefault((kind, key), set()).add(block)
    return found


def _tier_rows(path: Path, level: int, tier: int) -> set[tuple[int, str, int]]:
    con = _connect(path)
    try:
        return {
            (int(k), str(key), int(m))
            for k, key, m in con.execute(
                "SELECT kind, key, mask FROM key_tiers WHERE level = ? AND tier = ?", (level, tier)
            )
        }
    finally:
        con.close()


def _expected_tier(leaves: list[_Leaf]) -> set[tuple[int, str, int]]:
    rows = set()
    for (kind, key), blocks in _blocks_of([leaf for leaf in leaves if leaf[0] < TIER]).items():
        rows.add((kind, key, sum(1 << (b & 15) for b in blocks)))
    return rows


def _expected_hits(leaves: list[_Leaf], q: SearchQuery) -> list[int]:
    hits = [
        i
        for i, officer, case, subjects in leaves
        if i > q.after_index
        and (q.before_index is None or i < q.before_index)
        and (not q.officer_id or officer == q.officer_id)
        and (not q.case_number or case == q.case_number)
        and (not q.subject or q.subject in subjects)
    ]
    if q.newest_first:
        hits.reverse()
    return hits[: q.limit]


def _queries(leaves: list[_Leaf]) -> Iterator[SearchQuery]:
    """Keys found in the tier and past it, near the tier's edge and far from it; absent ones;
    both orders, small and large pages, and keyset bounds across the tier's edge."""
    rnd = random.Random(7)
    picks = [leaves[i] for i in (5, BLOCK * 7 + 3, TIER - 2, TIER + 1, TIER + 2 * BLOCK + 9)]
    picks += rnd.sample(leaves, 4)
    for _idx, officer, case, subjects in picks:
        fields: list[dict[str, Any]] = [{"officer_id": officer}, {"case_number": case}]
        fields += [{"subject": s} for s in subjects[:1]]
        fields.append({"officer_id": officer, "subject": subjects[0]} if subjects else {})
        fields += [{"subject": "absent"}, {"officer_id": "absent"}, {"case_number": "absent"}]
        for kw in fields:
            if not kw:
                continue
            for newest_first in (False, True):
                for limit in (1, 9, 400):
                    yield SearchQuery(**kw, newest_first=newest_first, limit=limit)
                yield SearchQuery(
                    **kw,
                    newest_first=newest_first,
                    after_index=TIER - rnd.randrange(1, 3 * BLOCK),
                    before_index=TIER + rnd.randrange(1, 2 * BLOCK),
                    limit=50,
                )


def _same_hits(path: Path, leaves: list[_Leaf]) -> None:
    db = SqliteDatabase(path, origin=None, writer=False)
    try:
        checked = 0
        for q in _queries(leaves):
            assert [h.index for h in db.search(q)] == _expected_hits(leaves, q), q
            checked += 1
        assert checked > 200
    finally:
        db.close()


class TestOneTier:
    def test_the_tier_holds_each_key_with_the_blocks_it_is_in(self, log: Path) -> None:
        leaves = _leaves(log)
        assert _tier_rows(log, 1, 0) == _expected_tier(leaves)
        con = _connect(log)
        try:
            assert _key_tiers.built(_fetch(con)) == (1, 0)
            # nothing past the tier: its blocks are not all complete
            assert con.execute("SELECT COUNT(*) FROM key_tiers WHERE tier > 0").fetchone() == (0,)
        finally:
            con.close()

    def test_searches_find_what_a_plain_filter_finds(self, log: Path) -> None:
        _same_hits(log, _leaves(log))

    def test_only_the_blocks_that_hold_the_key_are_sought(self, log: Path) -> None:
        leaves = _leaves(log)
        holding = _blocks_of(leaves)
        con = _connect(log)
        try:
            fetch = _fetch(con)
            counts = _key_tiers.built(fetch)
            last = (ENTRIES - 1) >> _search.KEY_BLOCK_BITS
            past = list(range(16, last + 1))  # the blocks no tier covers: always sought

            def sought(kind: int, key: str, newest_first: bool) -> list[list[int]]:
                return list(
                    _key_tiers.block_batches(
                        fetch, counts, kind, key, 0, last, newest_first=newest_first
                    )
                )

            # an absent key: one seek in the tier, then only the blocks past it
            assert sought(2, "absent", False) == [past]
            assert sought(2, "absent", True) == [past[::-1]]
            # a subject of block 7: that block, and the blocks past the tier
            (subject,) = leaves[BLOCK * 7 + 3][3][:1]
            inside = sorted(b for b in holding[(2, subject)] if b < 16)
            assert inside == [7]
            assert sought(2, subject, False) == [[7], past]
            assert sought(2, subject, True) == [past[::-1], [7]]
            # an officer found everywhere: every block, newest first without a tier look-up
            officer = leaves[TIER + 1][1]
            assert sought(0, officer, True)[0] == past[::-1]
        finally:
            con.close()

    def test_an_interrupted_build_is_not_used_and_the_next_one_finishes_it(
        self, log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = _copy(log, tmp_path / "interrupted.sqlite")
        con = _connect(path)
        try:
            con.execute("DELETE FROM projection_state WHERE name LIKE 'key_tiers_%'")
            con.execute("DROP TRIGGER key_tiers_no_delete")
            con.execute("DELETE FROM key_tiers")
            con.execute(
                "CREATE TRIGGER key_tiers_no_delete BEFORE DELETE ON key_tiers BEGIN SELECT"
                " RAISE(ABORT, 'the audit log is append-only: DELETE on key_tiers refused'); END"
            )
            monkeypatch.setattr(_key_tiers, "COPY_ROWS", 5_000)
            chunks = iter(range(10**6))
            assert _key_tiers.build_next(con, stopping=lambda: next(chunks) >= 3)
            (rows,) = con.execute("SELECT COUNT(*) FROM key_tiers").fetchone()
            assert rows == 3 * 5_000  # three chunks copied, the tier not recorded
            assert _key_tiers.built(_fetch(con)) == (0, 0)
        finally:
            con.close()
        leaves = _leaves(path)
        _same_hits(path, leaves)  # the partial tier is not read
        con = _connect(path)
        try:
            assert _key_tiers.build_next(con)
            assert not _key_tiers.build_next(con)  # nothing else is complete
        finally:
            con.close()
        assert _tier_rows(path, 1, 0) == _expected_tier(leaves)
        _same_hits(path, leaves)

    def test_a_version_6_log_gains_its_tiers_in_the_background(
        self, log: Path, tmp_path: Path
    ) -> None:
        path = _copy(log, tmp_path / "v6.sqlite")
        con = _connect(path)
        try:
            con.executescript(
                "DROP TABLE key_tiers;"
                "DELETE FROM projection_state WHERE name LIKE 'key_tiers_%';"
                "UPDATE fedgate_schema SET version = 6 WHERE store = 'audit log';"
            )
        finally:
            con.close()
        with pytest.raises(Exception, match="older than this fedgate"):
            SqliteDatabase(path, origin=None, writer=False).close()  # a reader never migrates
        db = SqliteDatabase(path, origin=None, writer=True)
        try:
            _wait_built(path, 1)
        finally:
            db.close()
        assert _tier_rows(path, 1, 0) == _expected_tier(_leaves(path))

    def test_a_failed_build_is_logged_reported_and_tried_again(
        self,
        log: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        path = _copy(log, tmp_path / "failing.sqlite")
        real = _key_tiers.build_next

        def full_disk(con: sqlite3.Connection, stopping: Any = None) -> bool:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(_key_tiers, "build_next", full_disk)
        db = SqliteDatabase(path, origin=None, writer=True)
        try:
            with pytest.raises(
                AuditUnavailable, match=r"cannot build the key tiers: .*disk is full"
            ):
                db.settle_key_tiers()
            warned = [r for r in caplog.records if "a build failed" in r.getMessage()]
            assert [r.levelname for r in warned][:1] == ["WARNING"]
            monkeypatch.setattr(_key_tiers, "build_next", real)
            assert db.settle_key_tiers() == (1, 0)  # the next request builds
        finally:
            db.close()

    def test_the_tiers_are_append_only(self, log: Path, tmp_path: Path) -> None:
        path = _copy(log, tmp_path / "edit.sqlite")
        con = _connect(path)
        try:
            for edit in ("UPDATE key_tiers SET mask = 1", "DELETE FROM key_tiers WHERE tier = 0"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    con.execute(edit)
        finally:
            con.close()


def _verify(path: Path, fed_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``fedgate audit verify`` of the bench log at ``path`` (its key named, no signatures)."""
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["audit", "verify", "--db", str(path), "--federation", str(fed_dir), "--no-signatures",
         "--log-key", bench_signer().verifier().vkey(), "--quiet"]
    )  # fmt: skip
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


class TestVerify:
    def test_verify_checks_the_tiers_with_the_index(
        self, log: Path, fed_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, out = _verify(log, fed_dir, capsys)
        assert code == 0, out
        assert "key tiers    1 checked against the index" in out
        assert "OK" in out

    @pytest.mark.parametrize(
        "edit",
        [
            # a block left out: the search would not seek it and would miss the key's hits
            "UPDATE key_tiers SET mask = mask & ~1 WHERE level = 1 AND tier = 0 AND kind = 0"
            " AND key = (SELECT MIN(key) FROM key_tiers WHERE kind = 0 AND mask & 1 AND mask > 1)",
            "DELETE FROM key_tiers WHERE level = 1 AND tier = 0 AND kind = 0 AND key ="
            " (SELECT MIN(key) FROM key_tiers WHERE kind = 0)",
            "INSERT INTO key_tiers VALUES (1, 0, 1, 'case-not-there', 1)",
        ],
        ids=["a-block-left-out", "a-key-deleted", "a-key-added"],
    )
    def test_an_altered_tier_fails_verify(
        self,
        log: Path,
        tmp_path: Path,
        fed_dir: Path,
        capsys: pytest.CaptureFixture[str],
        edit: str,
    ) -> None:
        path = _copy(log, tmp_path / "altered.sqlite")
        con = _connect(path)
        try:
            con.execute("DROP TRIGGER key_tiers_no_update")
            con.execute("DROP TRIGGER key_tiers_no_delete")
            assert con.execute(edit).rowcount == 1
        finally:
            con.close()
        code, out = _verify(path, fed_dir, capsys)
        assert code == 1, out
        assert "key tier 0 of level 1 does not match the search index" in out, out
        assert "FAILED" in out


# -- level 2, on a sparse projection --------------------------------------------------------

_LEVEL_2_BLOCKS = (1 << (2 * _key_tiers.FANOUT_BITS)) + 2 * 16 + 5  # one level-2 tier and more


@pytest.fixture(scope="module")
def sparse(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[tuple[int, str], set[int]]]:
    """A store whose projection holds a few rows in each of ``_LEVEL_2_BLOCKS`` key blocks, as
    if every leaf between them were there, with every tier built."""
    path = tmp_path_factory.mktemp("sparse") / "audit.sqlite"
    SqliteDatabase(path, origin="sparse", writer=True).close()
    rnd = random.Random(11)
    holding: dict[tuple[int, str], set[int]] = {}
    rows, subjects = [], []
    for block in range(_LEVEL_2_BLOCKS):
        for n in rnd.sample(range(BLOCK), 3):
            idx = block * BLOCK + n
            officer = f"officer-{rnd.randrange(40)}"  # common
            case = f"case-{rnd.randrange(2_000)}"  # rarer
            subject = f"acct:{rnd.randrange(3_000)}"  # rare
            rows.append((idx, officer, case))
            subjects.append((block, subject, idx))
            for key in ((0, officer), (1, case), (2, subject)):
                holding.setdefault(key, set()).add(block)
    con = _connect(path)
    try:
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO search_rows (idx, leg, request_id, time_us, requesting_agency,"
            " officer_id, case_number, action, target_agency, outcome, reason,"
            " request_leaf_index) VALUES (?, 1, '', 0, 'police.gd', ?, ?, 'a', 'bank.x', 'ok',"
            " '', 0)",
            sorted(rows),
        )
        con.executemany("INSERT OR IGNORE INTO subjects VALUES (?, ?, ?)", sorted(subjects))
        # the leaf rows a key search reads its hits from (not a log: no tree, no checkpoint)
        by_idx: dict[int, list[str]] = {}
        for _block, subject, idx in subjects:
            by_idx.setdefault(idx, []).append(subject)
        con.executemany(
            "INSERT INTO leaves (idx, leaf, leaf_hash, leg, request_id, time_us,"
            " requesting_agency, officer_id, case_number, action, target_agency, outcome,"
            " reason, request_leaf_index, subjects) VALUES (?, x'00', x'00', 1, '', 0,"
            " 'police.gd', ?, ?, 'a', 'bank.x', 'ok', '', 0, ?)",
            [(i, o, c, json.dumps(sorted(set(by_idx[i])))) for i, o, c in sorted(rows)],
        )
        con.execute(
            "UPDATE projection_state SET value = ? WHERE name = 'projected_to'",
            (_LEVEL_2_BLOCKS * BLOCK,),
        )
        con.execute("COMMIT")
        built = 0
        while _key_tiers.build_next(con):
            built += 1
        assert _key_tiers.built(_fetch(con)) == (_LEVEL_2_BLOCKS // 16, 1)
        assert built == _LEVEL_2_BLOCKS // 16 + 1
    finally:
        con.close()
    return path, holding


class TestLevelTwo:
    def test_the_blocks_sought_are_those_holding_the_key_and_those_no_tier_covers(
        self, sparse: tuple[Path, dict[tuple[int, str], set[int]]]
    ) -> None:
        path, holding = sparse
        con = _connect(path)
        try:
            fetch = _fetch(con)
            counts = _key_tiers.built(fetch)
            uncovered = set(range(counts[0] * 16, _LEVEL_2_BLOCKS))
            rnd = random.Random(5)
            keys = [*rnd.sample(sorted(holding), 150), (2, "absent"), (0, "absent")]
            for kind, key in keys:
                for first, last in ((0, _LEVEL_2_BLOCKS - 1), (rnd.randrange(300), 290)):
                    for newest_first in (False, True):
                        batches = list(
                            _key_tiers.block_batches(
                                fetch, counts, kind, key, first, last, newest_first=newest_first
                            )
                        )
                        flat = [b for batch in batches for b in batch]
                        want = sorted(
                            b
                            for b in holding.get((kind, key), set()) | uncovered
                            if first <= b <= last
                        )
                        assert flat == (want[::-1] if newest_first else want), (kind, key)
        finally:
            con.close()

    def test_searches_over_both_levels_find_what_a_plain_filter_finds(
        self, sparse: tuple[Path, dict[tuple[int, str], set[int]]]
    ) -> None:
        path, _holding = sparse
        con = _connect(path)
        try:
            leaves: list[_Leaf] = [
                (int(i), str(o), str(c), tuple(json.loads(str(j))))
                for i, o, c, j in con.execute(
                    "SELECT idx, officer_id, case_number, subjects FROM leaves ORDER BY idx"
                )
            ]
        finally:
            con.close()
        db = SqliteDatabase(path, origin=None, writer=False)
        try:
            rnd = random.Random(9)
            for _ in range(300):
                _idx, officer, case, subjects = rnd.choice(leaves)
                kw = rnd.choice(
                    [{"officer_id": officer}, {"case_number": case}, {"subject": subjects[0]},
                     {"subject": "absent"}, {"case_number": case, "subject": subjects[0]}]
                )  # fmt: skip
                bounds = {}
                if rnd.random() < 0.5:
                    bounds = {"after_index": rnd.randrange(_LEVEL_2_BLOCKS * BLOCK)}
                if rnd.random() < 0.5:
                    bounds["before_index"] = rnd.randrange(_LEVEL_2_BLOCKS * BLOCK)
                q = SearchQuery(
                    **kw, **bounds, newest_first=rnd.random() < 0.5, limit=rnd.choice([1, 5, 60])
                )
                assert [h.index for h in db.search(q)] == _expected_hits(leaves, q), q
        finally:
            db.close()

    def test_a_level_2_row_is_the_union_of_its_level_1_rows(
        self, sparse: tuple[Path, dict[tuple[int, str], set[int]]]
    ) -> None:
        path, holding = sparse
        want = {
            (kind, key, sum(1 << t for t in {b >> 4 for b in blocks if b < 256}))
            for (kind, key), blocks in holding.items()
            if any(b < 256 for b in blocks)
        }
        assert _tier_rows(path, 2, 0) == want
