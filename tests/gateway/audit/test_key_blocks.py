"""SQLite's officer, case and subject indexes keyed by the leaf's key block first (schema steps
3 -> 4 and 4 -> 5, issue 18): searches across key blocks find what a plain filter over the
leaves finds, page by page in both orders; a log written by the version 3 schema (no key
blocks) or the version 4 one (key blocks of 65,536 leaves) migrates, its leaves untouched, and
still verifies with the index check; the writer's re-key in bounded transactions (``_rekey``)
keeps the WAL bounded, resumes when interrupted and ends where the one-shot step ends."""

from __future__ import annotations

import functools
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._biglog import write_log
from fedgate.storage import open_sqlite, prepare_sqlite
from gateway.audit import _rekey, _search
from gateway.audit.sqlite_store import AUDIT_SCHEMA, REKEY_SUBJECTS, SCHEMA_VERSION, SqliteDatabase
from gateway.audit.store import SearchQuery
from tests.bench.test_biglog import verifies

BLOCK = 1 << _search.KEY_BLOCK_BITS
ENTRIES = BLOCK + 3_000  # two key blocks, the second partly filled


def _older_table(table: str, create: str, copy: str, after: str) -> str:
    """Script: ``table`` made again as ``create`` (an older version's text), its rows copied by
    ``INSERT INTO {table} {copy} FROM`` the old one, then ``after`` (its indexes) and its
    append-only triggers, as that version's schema made them."""
    triggers = "".join(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} BEGIN\n"
        f"SELECT RAISE(ABORT, 'the audit log is append-only: {op} on {table} refused'); END;\n"
        for op in ("UPDATE", "DELETE")
    )
    return (
        f"ALTER TABLE {table} RENAME TO {table}_newer;\n"
        f"DROP TRIGGER {table}_no_update;\nDROP TRIGGER {table}_no_delete;\n"
        f"{create}\nINSERT INTO {table} {copy} FROM {table}_newer;\nDROP TABLE {table}_newer;\n"
        f"{after}{triggers}"
    )


# What the version 5 schema had: time blocks of their least and greatest time only, each with
# an index (``sqlite_store`` before the running bounds).
_TO_VERSION_5 = (
    "DROP INDEX time_blocks_reach;\n"
    + _older_table(
        "time_blocks",
        "CREATE TABLE time_blocks (block INTEGER PRIMARY KEY, min_us INTEGER NOT NULL,"
        " max_us INTEGER NOT NULL) STRICT;",
        "(block, min_us, max_us) SELECT block, min_us, max_us",
        "CREATE INDEX time_blocks_min ON time_blocks (min_us);\n"
        "CREATE INDEX time_blocks_max ON time_blocks (max_us);\n",
    )
    + "UPDATE fedgate_schema SET version = 5 WHERE store = 'audit log';\n"
)


def _older_subjects(officer_case: str, create: str, copy: str, version: int) -> str:
    """Script: a version 5 log turned into version ``version``'s: its officer and case indexes
    keyed by ``officer_case`` and its subjects table made again as ``create``."""
    return (
        _TO_VERSION_5
        + "DROP INDEX search_officer;\nDROP INDEX search_case;\n"
        + f"CREATE INDEX search_officer ON search_rows ({officer_case}officer_id)"
        " WHERE officer_id <> '';\n"
        + f"CREATE INDEX search_case ON search_rows ({officer_case}case_number)"
        " WHERE case_number <> '';\n"
        + "DROP INDEX subjects_idx;\n"
        + _older_table("subjects", create, copy, "CREATE INDEX subjects_idx ON subjects (idx);\n")
        + f"UPDATE fedgate_schema SET version = {version} WHERE store = 'audit log';\n"
    )


# What the version 3 schema had: the subjects keyed by subject, the officer and case indexes by
# their value (``sqlite_store`` before key blocks).
_TO_VERSION_3 = _older_subjects(
    "",
    "CREATE TABLE subjects (subject TEXT NOT NULL, idx INTEGER NOT NULL,"
    " PRIMARY KEY (subject, idx)) STRICT, WITHOUT ROWID;",
    "(subject, idx) SELECT subject, idx",
    3,
)

# What the version 4 schema had: key blocks of 65,536 leaves (``idx >> 16``).
_TO_VERSION_4 = _older_subjects(
    "idx >> 16, ",
    "CREATE TABLE subjects (block INTEGER NOT NULL, subject TEXT NOT NULL, idx INTEGER NOT NULL,"
    " PRIMARY KEY (block, subject, idx), CHECK (block = idx >> 16)) STRICT, WITHOUT ROWID;",
    "(block, subject, idx) SELECT idx >> 16, subject, idx",
    4,
)


def _read(path: Path, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute(statement, params).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key-blocks") / "audit.sqlite"
    write_log(path, ENTRIES, batch=16_384, workers=2)
    return path


@pytest.fixture
def db(built: Path) -> Iterator[SqliteDatabase]:
    db = SqliteDatabase(built, origin=None, writer=False)
    yield db
    db.close()


_Row = tuple[int, str, str, tuple[str, ...], int]


@functools.cache
def _rows(path: Path) -> tuple[_Row, ...]:
    """Every leaf row's ``(idx, officer, case, subjects, time_us)``, read once per file."""
    return tuple(
        (int(i), str(o), str(c), tuple(json.loads(str(s))), int(str(t)))
        for i, o, c, s, t in _read(
            path, "SELECT idx, officer_id, case_number, subjects, time_us FROM leaves ORDER BY idx"
        )
    )


def _expected(path: Path, q: SearchQuery) -> list[int]:
    """The hits of ``q`` by a plain filter over every leaf row (no index, no key block)."""
    hits = [
        i
        for i, officer, case, subjects, time_us in _rows(path)
        if i > q.after_index
        and (q.before_index is None or i < q.before_index)
        and (not q.officer_id or officer == q.officer_id)
        and (not q.case_number or case == q.case_number)
        and (not q.subject or q.subject in subjects)
        and (q.since_us is None or time_us >= q.since_us)
    ]
    if q.newest_first:
        hits.reverse()
    return hits[: q.limit]


def _queries(path: Path) -> Iterator[SearchQuery]:
    """Officer, case and subject searches (with and without a time window and a member)
    whose hits lie on both sides of the key block boundary, and an absent key."""
    rnd = random.Random(3)
    sample = _read(
        path,
        "SELECT officer_id, case_number, subjects, time_us, requesting_agency FROM leaves"
        " WHERE idx IN (?, ?, ?, ?) AND leg = 1",
        (BLOCK - 2, BLOCK - 1, BLOCK, BLOCK + 1),
    )
    for officer, case, subjects, time_us, member in sample:
        subject = json.loads(str(subjects))[0]
        for kw in (
            {"officer_id": officer},
            {"case_number": case},
            {"subject": subject},
            {"officer_id": officer, "case_number": case},
            {"case_number": case, "since_us": int(str(time_us)) - 10**9},
            {"officer_id": officer, "visible_to": member},
            {"officer_id": "absent"},
        ):
            for newest_first in (False, True):
                for limit in (1, 7, 500):
                    yield SearchQuery(**kw, newest_first=newest_first, limit=limit)  # type: ignore[arg-type]
                yield SearchQuery(
                    **kw,  # type: ignore[arg-type]
                    newest_first=newest_first,
                    after_index=BLOCK - rnd.randrange(1, 4_000),
                    before_index=BLOCK + rnd.randrange(1, 2_000),
                )


class TestAcrossKeyBlocks:
    def test_the_log_spans_two_key_blocks(self, built: Path) -> None:
        blocks = _read(built, "SELECT DISTINCT block FROM subjects ORDER BY block")
        assert blocks == [(0,), (1,)]

    def test_same_hits_as_a_plain_filter(self, built: Path, db: SqliteDatabase) -> None:
        checked = 0
        for q in _queries(built):
            assert [h.index for h in db.search(q)] == _expected(built, q), q
            checked += 1
        assert checked > 100

    def test_pages_follow_each_other_across_the_boundary(
        self, built: Path, db: SqliteDatabase
    ) -> None:
        (case,) = _read(built, "SELECT case_number FROM leaves WHERE idx = ?", (BLOCK,))[0]
        for newest_first in (False, True):
            want = _expected(built, SearchQuery(case_number=str(case), limit=10**6,
                                                newest_first=newest_first))  # fmt: skip
            got: list[int] = []
            while True:
                edge = {"before_index": got[-1]} if newest_first and got else {}
                if not newest_first and got:
                    edge = {"after_index": got[-1]}
                page = db.search(
                    SearchQuery(case_number=str(case), limit=5, newest_first=newest_first, **edge)  # type: ignore[arg-type]
                )
                if not page:
                    break
                got += [h.index for h in page]
            assert got == want
            assert min(want) < BLOCK <= max(want)


def _older(built: Path, path: Path, script: str) -> None:
    """A copy of ``built`` at ``path`` turned into an older version's layout by ``script``."""
    for suffix in ("", ".state"):
        Path(f"{path}{suffix}").write_bytes(Path(f"{built}{suffix}").read_bytes())
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.executescript(script)
    finally:
        con.close()


def _schema(path: Path) -> list[tuple[object, ...]]:
    """``sqlite_master``, with the one difference a re-key in bounded transactions makes: the
    renamed table's name is quoted (``_rekey``)."""
    return [
        (t, n, tbl, str(sql).replace('CREATE TABLE "subjects" (', "CREATE TABLE subjects ("))
        for t, n, tbl, sql in _read(
            path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        )
    ]


def _migrates_and_verifies(path: Path, tmp_path: Path) -> None:
    """The writer migrates the older log at ``path`` to this version: the same schema as a new
    log, the leaves and subjects untouched, every subject in its key block, the index check
    passes, the subjects stay append-only, and searches find what a plain filter finds."""
    leaves = _read(path, "SELECT idx, leaf, leaf_hash FROM leaves ORDER BY idx")
    subjects = _read(path, "SELECT subject, idx FROM subjects ORDER BY subject, idx")
    with pytest.raises(Exception, match="older than this fedgate"):
        SqliteDatabase(path, origin=None, writer=False).close()  # a reader never migrates

    SqliteDatabase(path, origin=None, writer=True).close()  # the writer migrates

    assert _read(path, "SELECT version FROM fedgate_schema WHERE store = 'audit log'") == [
        (int(SCHEMA_VERSION),)
    ]
    fresh = tmp_path / "fresh.sqlite"
    SqliteDatabase(fresh, origin="fresh", writer=True).close()
    assert _schema(path) == _schema(fresh)
    assert _read(path, "SELECT idx, leaf, leaf_hash FROM leaves ORDER BY idx") == leaves
    assert _read(path, "SELECT subject, idx FROM subjects ORDER BY subject, idx") == subjects
    assert _read(path, "SELECT COUNT(*) FROM subjects WHERE block <> idx >> ?", (
        _search.KEY_BLOCK_BITS,
    )) == [(0,)]  # fmt: skip
    assert _read(path, "SELECT DISTINCT block FROM subjects ORDER BY block") == [(0,), (1,)]
    assert _read(path, "SELECT * FROM time_blocks ORDER BY block") == _time_blocks(path)
    verifies(path)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("DELETE FROM subjects WHERE idx = 0")
    finally:
        con.close()
    db = SqliteDatabase(path, origin=None, writer=False)
    try:
        checked = 0
        for q in _queries(path):
            assert [h.index for h in db.search(q)] == _expected(path, q), q
            checked += 1
        assert checked > 100
    finally:
        db.close()


def _time_blocks(path: Path) -> list[tuple[object, ...]]:
    """The time blocks of the leaves at ``path``, computed here: each block's least and greatest
    time, the greatest time so far, and the furthest a block so far began before the greatest
    time of the blocks before it."""
    times = [int(str(t)) for (t,) in _read(path, "SELECT time_us FROM leaves ORDER BY idx")]
    rows: list[tuple[object, ...]] = []
    reach, lag = None, 0
    for block in range(len(times) // 256):
        chunk = times[block * 256 : block * 256 + 256]
        if reach is not None:
            lag = max(lag, reach - min(chunk))
        reach = max(chunk) if reach is None else max(reach, max(chunk))
        rows.append((block, min(chunk), max(chunk), reach, lag))
    return rows


class TestMigrationFromVersion5:
    def test_a_version_5_log_migrates_and_verifies(self, built: Path, tmp_path: Path) -> None:
        path = tmp_path / "v5.sqlite"
        _older(built, path, _TO_VERSION_5)
        assert _read(path, "SELECT COUNT(*) FROM pragma_table_info('time_blocks')") == [(3,)]
        _migrates_and_verifies(path, tmp_path)


class TestMigrationFromVersion3:
    def test_a_version_3_log_migrates_and_verifies(self, built: Path, tmp_path: Path) -> None:
        # Through steps 3 -> 4 (blocks of 65,536, as version 4 wrote them) and 4 -> 5.
        path = tmp_path / "v3.sqlite"
        _older(built, path, _TO_VERSION_3)
        assert _read(path, "SELECT name FROM pragma_table_info('subjects')") == [
            ("subject",),
            ("idx",),
        ]
        _migrates_and_verifies(path, tmp_path)


class TestMigrationFromVersion4:
    def test_a_version_4_log_migrates_and_verifies(self, built: Path, tmp_path: Path) -> None:
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)
        assert _read(path, "SELECT DISTINCT block FROM subjects") == [(0,)]  # one old block
        _migrates_and_verifies(path, tmp_path)

    def test_the_builder_migrates_a_finished_version_4_log_and_extends_it(
        self, built: Path, tmp_path: Path
    ) -> None:
        # ``bench_scale`` and ``bench_audit`` call ``write_log`` on the cached log first: its
        # writer migrates a log cached with the version 4 layout before adding to it.
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)
        write_log(path, ENTRIES + 700, batch=512, workers=1)
        assert _read(path, "SELECT version FROM fedgate_schema WHERE store = 'audit log'") == [
            (int(SCHEMA_VERSION),)
        ]
        assert _read(path, "SELECT COUNT(*) FROM leaves") == [(ENTRIES + 700,)]
        verifies(path)


CHUNK = BLOCK // 4  # leaves per copy transaction: the test log's subjects move in five


def _wal(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _one_shot(path: Path) -> int:
    """Migrate ``path`` the way ``prepare_sqlite`` alone does (every step in one transaction);
    returns the WAL file's size after it, its peak (nothing truncates it meanwhile)."""
    con = open_sqlite(path)
    try:
        con.execute("PRAGMA wal_autocheckpoint = 0")
        prepare_sqlite(con, AUDIT_SCHEMA, where=path)
        return _wal(path)
    finally:
        con.close()


def _rekey_subjects(path: Path, after_chunk: object = None) -> None:
    """``rekey_subjects`` in ``CHUNK``s on a writer's connection, as ``SqliteDatabase`` runs it."""
    con = open_sqlite(path)
    try:
        _rekey.rekey_subjects(con, REKEY_SUBJECTS, where=path, chunk=CHUNK, after_chunk=after_chunk)  # type: ignore[arg-type]
    finally:
        con.close()


class _Interrupt(Exception):
    pass


class TestRekeyInBoundedTransactions:
    def test_the_wal_stays_bounded_and_the_result_is_the_one_shot_migration(
        self, built: Path, tmp_path: Path
    ) -> None:
        one_shot = tmp_path / "one-shot.sqlite"
        _older(built, one_shot, _TO_VERSION_4)
        one_shot_wal = _one_shot(one_shot)
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)
        _read(path, "PRAGMA wal_checkpoint(TRUNCATE)")
        seen: list[tuple[str, int, int]] = []
        _rekey_subjects(path, lambda step, done, total: seen.append((step, done, _wal(path))))

        steps = [s for s, _, _ in seen]
        assert steps == ["copy"] * 5 + ["swap"] + ["index"] * 3, seen
        assert [d for s, d, _ in seen if s == "copy"] == [
            CHUNK,
            2 * CHUNK,
            3 * CHUNK,
            4 * CHUNK,
            ENTRIES,
        ]
        # Each transaction's WAL is a fraction of the one-shot's, which holds them all.
        assert all(0 < wal < one_shot_wal / 3 for _, _, wal in seen), (seen, one_shot_wal)
        # A chunk's WAL does not grow with the log: a chunk inside a key block rewrites that
        # block's pages (up to a block's subjects), the next block starts small again.
        copies = [wal for s, _, wal in seen if s == "copy"]
        assert copies[4] < copies[3] / 2, seen
        assert _wal(path) == 0  # checkpointed (TRUNCATE) after the last one

        _migrates_and_verifies_again(path)
        rows = "SELECT block, subject, idx FROM subjects ORDER BY block, subject, idx"
        assert _read(path, rows) == _read(one_shot, rows)
        assert _schema(path) == _schema(one_shot)

    def test_an_interrupted_copy_keeps_the_old_version_and_resumes(
        self, built: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)
        subjects = _read(path, "SELECT block, subject, idx FROM subjects ORDER BY 1, 2, 3")

        def interrupt(step: str, done: int, total: int) -> None:
            if done == 2 * CHUNK:
                raise _Interrupt

        with pytest.raises(_Interrupt):
            _rekey_subjects(path, interrupt)
        # The old table is the truth, at the old version: this fedgate's reader refuses it.
        assert _read(path, "SELECT version FROM fedgate_schema") == [(4,)]
        assert _read(path, "SELECT block, subject, idx FROM subjects ORDER BY 1, 2, 3") == subjects
        assert _read(path, f"SELECT MAX(idx) < ? FROM {_rekey.REKEYED}", (2 * CHUNK,)) == [(1,)]
        with pytest.raises(Exception, match="older than this fedgate"):
            SqliteDatabase(path, origin=None, writer=False).close()

        seen: list[tuple[str, int, int]] = []
        with caplog.at_level("INFO", logger=_rekey.__name__):
            _rekey_subjects(path, lambda step, done, total: seen.append((step, done, total)))
        assert "resuming the subjects' re-key at leaf" in caplog.text
        assert [d for s, d, _ in seen if s == "copy"] == [3 * CHUNK, 4 * CHUNK, ENTRIES]
        _migrates_and_verifies_again(path)

    def test_a_writer_resumes_an_interrupted_copy_and_verifies(
        self, built: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)

        def interrupt(step: str, done: int, total: int) -> None:
            if done == 3 * CHUNK:
                raise _Interrupt

        with pytest.raises(_Interrupt):
            _rekey_subjects(path, interrupt)
        _migrates_and_verifies(path, tmp_path)  # the writer, with its own chunk size

    def test_indexes_left_by_an_interrupted_run_are_built_by_the_next_writer(
        self, built: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)

        def interrupt(step: str, done: int, total: int) -> None:
            if step == "index":
                raise _Interrupt

        with pytest.raises(_Interrupt):
            _rekey_subjects(path, interrupt)
        indexes = "SELECT name FROM sqlite_master WHERE name IN ('search_officer', 'search_case')"
        assert _read(path, indexes) == []
        # Version 5, the re-key's: a reader waits for the writer's last step (5 -> 6).
        assert _read(path, "SELECT version FROM fedgate_schema") == [(5,)]
        with pytest.raises(Exception, match="older than this fedgate"):
            SqliteDatabase(path, origin=None, writer=False).close()
        _migrates_and_verifies_again(path)
        db = SqliteDatabase(path, origin=None, writer=False)
        try:
            for q in list(_queries(path))[:40]:
                assert [h.index for h in db.search(q)] == _expected(path, q), q
        finally:
            db.close()
        assert len(_read(path, indexes)) == 2

    def test_a_copy_that_does_not_match_is_dropped_and_refused(
        self, built: Path, tmp_path: Path
    ) -> None:
        path = tmp_path / "v4.sqlite"
        _older(built, path, _TO_VERSION_4)

        def interrupt(step: str, done: int, total: int) -> None:
            raise _Interrupt

        with pytest.raises(_Interrupt):
            _rekey_subjects(path, interrupt)
        con = sqlite3.connect(path, isolation_level=None)
        try:  # a row the old table does not hold
            con.execute(f"INSERT INTO {_rekey.REKEYED} VALUES (0, 'forged', 1)")
        finally:
            con.close()
        with pytest.raises(Exception, match="re-keyed subjects hold"):
            _rekey_subjects(path)
        assert _read(path, "SELECT version FROM fedgate_schema") == [(4,)]
        assert _read(path, f"SELECT name FROM sqlite_master WHERE name = '{_rekey.REKEYED}'") == []
        _migrates_and_verifies_again(path)


def _migrates_and_verifies_again(path: Path) -> None:
    """A writer opens the log at ``path`` (finishing any re-key): the current version, every
    subject in its key block, a new log's schema, and the index check passes."""
    SqliteDatabase(path, origin=None, writer=True).close()
    assert _read(path, "SELECT version FROM fedgate_schema WHERE store = 'audit log'") == [
        (int(SCHEMA_VERSION),)
    ]
    assert _read(path, "SELECT COUNT(*) FROM subjects WHERE block <> idx >> ?", (
        _search.KEY_BLOCK_BITS,
    )) == [(0,)]  # fmt: skip
    fresh = path.with_name(path.name + "-fresh.sqlite")
    SqliteDatabase(fresh, origin="fresh", writer=True).close()
    assert _schema(path) == _schema(fresh)
    verifies(path)
