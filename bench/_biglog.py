"""Writing large audit logs for the benchmarks: realistic exchanges bulk-loaded into the store.

``write_log`` produces what the gateway's log holds once its store has caught up (leaves with
their columns, the search projection — ``search_rows``, ``subjects`` and the console rollups —,
C2SP tiles, time blocks, the checkpoints the store keeps at its interval, the head and the state
file), which ``fedgate audit verify`` accepts, without going through the log's commit path:

- ``workers`` processes make the entries — the leaf bytes by the log's own ``encode_entry``,
  their hashes, columns, subjects, time blocks and each chunk's rollup counts (the functions the
  store's catch-up uses) — while this process writes them, in order, one transaction of
  ``batch`` entries (a multiple of 256) each;
- the tiles come out of one streaming pass of ``TiledTree.extend``, and a checkpoint is signed
  at every multiple of ``CHECKPOINT_INTERVAL`` (as a batch ending there would be), so the
  history holds exactly what ``kept_checkpoint`` keeps;
- the member, target, action and outcome indexes are dropped while the leaves go in and built
  once at the end (a sort); those whose keys grow with the leaf index stay: time, UUIDv7
  request id, the subjects' leaf, and the officer, case and subject keys, which the store keys
  by the leaf's key block first (``_search.KEY_BLOCK_BITS``), so each chunk's inserts land in
  the newest block. A chunk's subjects go in in key order;
- the WAL is copied into the database after every transaction (``wal_checkpoint(TRUNCATE)``),
  so it stays bounded however long the build;
- the last (partial) block goes through the store's own ``commit``, which writes the head.

It resumes an interrupted build from its last transaction (the list of dropped indexes is in
the database, written in the same transaction as the drops), and extends a log finished at a
smaller size.

The exchanges are spread evenly over ``days`` days ending now (so charts and time searches have
something to find; a log extended past entries later than that plan continues from its latest
entry instead, see ``_times``), with 40 police members, 500 officers each, 5,000 cases, five
actions, and one request in 20 refused by the gateway; request ids are UUIDv7 of the request's
time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.actions import new_request_id
from fedgate.audit_entry import (
    AuditEntry,
    IndexColumns,
    RequestLeg,
    ResponseLeg,
    encode_entry,
    entry_columns,
    with_request_columns,
)
from fedgate.auditverify import normalized_subjects
from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.files import write_atomically
from fedgate.merkle import leaf_hash
from fedgate.note import NoteSigner
from fedgate.storage import immediate, open_sqlite
from fedgate.tiles import TILE_WIDTH, TiledTree
from gateway.audit import _rollups, _rows, _search
from gateway.audit.sqlite_store import (
    AUDIT_SCHEMA,
    INSERT_LEAF,
    INSERT_TIME_BLOCK,
    SET_HEAD,
    SqliteDatabase,
    default_state_path,
)
from gateway.audit.store import CHECKPOINT_INTERVAL, CommitBatch, NewLeaf

__all__ = ["ORIGIN", "BuildRecord", "bench_signer", "build_record", "cached_log", "write_log"]

ORIGIN = "fedgate.bench/gateway/shard-0"
_ACTIONS = ("stop_payment", "query_account", "query_transactions", "freeze_account", "query_phone")
_TARGETS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb", "carrier.cm", "carrier.cu")
_REFUSALS = ("NOT_PERMITTED: rule", "QUOTA_EXCEEDED: officer", "CASE_REQUIRED: freeze")
_SUBJECT_PREFIX = "62220"
_SUBJECT_DIGITS = 14
_KEPT_INDEXES = frozenset(
    {
        "leaves_time",
        "search_time",
        "search_request_id",
        "search_officer",
        "search_case",
        "subjects_idx",
    }
)
"""Secondary indexes left in place while bulk loading: their keys grow with the leaf index
(or its key block)."""


CACHE = Path(__file__).with_name(".cache")
"""Where the benchmarks keep their big logs between runs (git-ignored)."""


def cached_log(quick: bool) -> tuple[Path, int]:
    """The benchmarks' big log and its size: 10 M entries (200 k with ``--quick``) in
    ``bench/.cache``, or ``BENCH_SCALE_ENTRIES`` (to measure a log built part of the way).
    ``write_log`` builds it, or finishes it, or finds it built."""
    entries = int(os.environ.get("BENCH_SCALE_ENTRIES", 200_000 if quick else 10_000_000))
    return CACHE / ("audit-200k.sqlite" if quick else "audit-10m.sqlite"), entries


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """How far a cached log's build got and the wall seconds spent on it over every run."""

    entries: int
    seconds: float


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".build.json")


def build_record(path: Path) -> BuildRecord:
    """The build record kept beside ``path`` (zero for a log without one)."""
    try:
        data = json.loads(_record_path(path).read_text(encoding="utf-8"))
        return BuildRecord(int(data["entries"]), float(data["seconds"]))
    except (OSError, ValueError, KeyError, TypeError):
        return BuildRecord(0, 0.0)


def _record(path: Path, entries: int, seconds: float) -> None:
    text = json.dumps({"entries": entries, "seconds": round(seconds, 1)})
    write_atomically(_record_path(path), text.encode("utf-8"))


def bench_signer(origin: str = ORIGIN) -> NoteSigner:
    """A fixed signing key for cached benchmark logs (derived from a constant: not a secret)."""
    seed = hashlib.sha256(b"fedgate bench log key " + origin.encode()).digest()
    return NoteSigner(name=origin, private_key=Ed25519PrivateKey.from_private_bytes(seed))


class _Exchanges:
    def __init__(self, seed: int, start: datetime, step: timedelta) -> None:
        self.rng = random.Random(seed)
        self.start = start
        self.step = step

    def request(self, index: int) -> RequestLeg:
        rng = self.rng
        member = rng.randrange(40)
        refused = rng.random() < 0.05
        action = rng.choice(_ACTIONS)
        at = self.start + self.step * index
        return RequestLeg(
            envelope=rng.randbytes(rng.randrange(300, 600)),
            peer=f"police.{member:02d}",
            peer_cert_sha256=rng.randbytes(32).hex(),
            received_at=at,
            decision="refused" if refused else "allowed",
            rule=rng.choice(_REFUSALS) if refused else f"p, police, {action}, allow",
            request_id=new_request_id(int(at.timestamp() * 1000)),
            requesting_agency=f"police.{member:02d}",
            officer_id=f"44{member:02d}{rng.randrange(500):05d}",
            case_number=f"A4401002026110{rng.randrange(5000):04d}",
            action=action,
            target_agency=rng.choice(_TARGETS),
            subjects=(f"{_SUBJECT_PREFIX}{rng.randrange(10**_SUBJECT_DIGITS):014d}",),
        )

    def response(self, request: RequestLeg, index: int) -> ResponseLeg:
        rng = self.rng
        return ResponseLeg(
            request_id=request.request_id,
            request_leaf_index=index,
            responder=request.target_agency,
            received_at=self.start + self.step * (index + 1),
            status="ok" if rng.random() < 0.9 else "not_found",
            response_hash=rng.randbytes(32),
            responder_signature=rng.randbytes(64),
            responder_key_id=rng.randbytes(16).hex(),
            response_envelope=rng.randbytes(rng.randrange(200, 400)),
        )


def _leaves(make: _Exchanges, start: int, stop: int, entries: int) -> Iterator[NewLeaf]:
    """The leaves ``[start, stop)`` of a log of ``entries``: request legs at even indices, each
    followed by its response leg (``start`` is even: a multiple of 256), with the columns the
    log gives them (``entry_columns``, the response leg's completed from its request's)."""
    for index in range(start, stop, 2):
        request = make.request(index)
        request_columns = entry_columns(request)
        pair: list[tuple[AuditEntry, IndexColumns]] = [(request, request_columns)]
        if index + 1 < entries:
            response = make.response(request, index)
            columns = with_request_columns(entry_columns(response), request_columns)
            pair.append((response, columns))
        for offset, (entry, cols) in enumerate(pair):
            if index + offset < stop:
                data = encode_entry(entry)
                yield NewLeaf(index + offset, data, leaf_hash(data), (int(cols[0]), *cols[1:]))


_Made = tuple[
    list[_rows.LeafValues],
    list[tuple[int, str, int]],
    list[tuple[int, str, str, int]],
    list[tuple[int, str, str, int, str, int, str, int, int]],
]
"""A chunk made by a worker: its leaf rows, subjects ``(block, subject, idx)`` in key order,
and rollup counts (``_rollups.day_rows``, ``_rollups.officer_rows``)."""


def _chunk(start: int, stop: int, entries: int, first: datetime, step: timedelta) -> _Made:
    """The leaves ``[start, stop)`` and what the store derives from them, made in a worker
    process (seeded by ``start``)."""
    leaves = list(_leaves(_Exchanges(start, first, step), start, stop, entries))
    subjects = sorted(
        (n.index >> _search.KEY_BLOCK_BITS, s, n.index)
        for n in leaves
        for s in normalized_subjects(n.columns[10])
    )
    return (
        _rows.leaf_values(leaves),
        subjects,
        _rollups.day_rows(leaves),
        _rollups.officer_rows(leaves),
    )


_INSERT_ROW = (
    f"INSERT INTO search_rows ({_rows.PROJECTED_COLUMNS})"
    f" VALUES ({', '.join('?' * len(_rows.PROJECTED_COLUMNS.split(',')))})"
)
_ROLLUP_DAY, _ROLLUP_OFFICER = _rollups.upserts(pg=False)
_STAGING = """
CREATE TABLE IF NOT EXISTS bulk_indexes (name TEXT PRIMARY KEY, sql TEXT NOT NULL) STRICT;
"""
_DROPPABLE = (
    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    " AND tbl_name IN ('leaves', 'subjects', 'search_rows')"
)


def _has_table(path: Path, name: str) -> bool:
    if not path.exists():
        return False
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None
    finally:
        con.close()


def _schema_version(path: Path) -> int | None:
    """The audit log schema version ``path`` records (``None`` without one)."""
    if not _has_table(path, "fedgate_schema"):
        return None
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT version FROM fedgate_schema WHERE store = ?", (AUDIT_SCHEMA.store,)
        ).fetchone()
        return None if row is None else int(row[0])
    finally:
        con.close()


def _has_staging(path: Path) -> bool:
    """Whether ``path`` holds an unfinished bulk load (its staging table). Raises
    ``RuntimeError`` for one left by an older builder: before key blocks its subjects wait in a
    staging table this one no longer finishes; of an older schema version (key blocks of
    another size), the rows this one would add do not fit the tables there, and a finished log
    is what the store's writer migrates. A finished log of an older version is migrated by the
    first writer that opens it (``write_log`` opens one first)."""
    if _has_table(path, "bulk_subjects"):
        raise RuntimeError(
            f"{path} is an unfinished build by an older bench._biglog (its subjects are staged "
            "in bulk_subjects): delete it and its .state and .build.json files, and build again"
        )
    staged = _has_table(path, "bulk_indexes")
    version = _schema_version(path)
    if staged and version is not None and version != AUDIT_SCHEMA.version:
        raise RuntimeError(
            f"{path} is an unfinished build of audit log schema version {version}, and this "
            f"bench._biglog writes version {AUDIT_SCHEMA.version}: delete it and its .state and "
            ".build.json files, and build again"
        )
    return staged


def _stage(con: sqlite3.Connection) -> None:
    """Create the staging table and drop the secondary indexes not kept (remembering their
    SQL), in one transaction."""
    with immediate(con):
        for statement in _STAGING.split(";"):
            if statement.strip():
                con.execute(statement)
        for name, ddl in con.execute(_DROPPABLE).fetchall():
            if name not in _KEPT_INDEXES:
                con.execute("INSERT INTO bulk_indexes (name, sql) VALUES (?, ?)", (name, ddl))
                con.execute(f'DROP INDEX "{name}"')  # a name read from the schema itself


def _bulk(con: sqlite3.Connection, tree: TiledTree, made: _Made, signer: NoteSigner) -> None:
    """Write one chunk (whole blocks of 256) with its projection, tiles, time blocks, rollups
    and the checkpoints at each multiple of ``CHECKPOINT_INTERVAL`` (the last one the head),
    in one transaction."""
    rows, subjects, day_rows, officer_rows = made
    hashes = [r[2] for r in rows]
    tiles: list[tuple[int, int, bytes]] = []
    notes: list[tuple[int, str]] = []
    for lo in range(0, len(hashes), CHECKPOINT_INTERVAL):
        tiles += tree.extend(hashes[lo : lo + CHECKPOINT_INTERVAL])
        checkpoint = Checkpoint(signer.name, tree.size, tree.root())
        notes.append((tree.size, sign_checkpoint(checkpoint, signer)))
    with immediate(con):
        con.executemany(INSERT_LEAF, rows)  # the store's
        con.executemany(_INSERT_ROW, [(r[0], *r[3:14]) for r in rows])
        con.executemany("INSERT INTO subjects (block, subject, idx) VALUES (?, ?, ?)", subjects)
        con.executemany("INSERT INTO tiles (level, idx, data) VALUES (?, ?, ?)", tiles)
        first = rows[0][0]  # a chunk is whole blocks: its time blocks as the store writes them
        con.executemany(
            INSERT_TIME_BLOCK,
            [
                (b, b * TILE_WIDTH, (b + 1) * TILE_WIDTH)
                for b in range(first // TILE_WIDTH, tree.size // TILE_WIDTH)
            ],
        )
        con.executemany("INSERT INTO checkpoints (size, note) VALUES (?, ?)", notes)
        con.execute(SET_HEAD, ("signed", *notes[-1]))
        con.executemany(_ROLLUP_DAY, day_rows)
        con.executemany(_ROLLUP_OFFICER, officer_rows)
        con.execute(
            "UPDATE projection_state SET value = ? WHERE name = 'projected_to'", (tree.size,)
        )


def _finish_staging(con: sqlite3.Connection, started: float | None) -> None:
    """Rebuild the dropped indexes one by one and drop the staging table; the WAL is truncated
    after each index. Each index is one transaction, so a stopped finish resumes."""
    for name, ddl in con.execute("SELECT name, sql FROM bulk_indexes ORDER BY name").fetchall():
        with immediate(con):
            con.execute(ddl.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1))
            con.execute("DELETE FROM bulk_indexes WHERE name = ?", (name,))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if started is not None:
            _progress(f"index {name} built", None, started)
    con.execute("DROP TABLE bulk_indexes")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def write_log(
    path: Path,
    entries: int,
    *,
    signer: NoteSigner | None = None,
    batch: int = 32_768,
    days: float = 100.0,
    progress: bool = False,
    workers: int = 2,
) -> float:
    """Write (or finish writing) a log of ``entries`` entries at ``path``, ``batch`` entries per
    transaction (rounded down to whole blocks of 256), the entries made by ``workers``
    processes; returns the seconds this call spent (``build_record`` adds up every call's).
    Raises what the store raises."""
    signer = signer or bench_signer()
    origin = signer.name
    started = time.perf_counter()
    spent_before = build_record(path).seconds if path.exists() else 0.0
    batch = max(TILE_WIDTH, batch - batch % TILE_WIDTH)
    first, step = _times(path, entries, days)
    if not _has_staging(path):
        db = SqliteDatabase(path, origin=origin, writer=True)  # schema, origin, rollups_from = 0
        try:
            stored = db.load()
            if stored.checkpoint is None:
                _commit(db, signer, 0, 0, entries, first, step)
            elif stored.next_index % TILE_WIDTH and stored.next_index < entries:
                # A log finished at a smaller size: complete its last block the store's way.
                block_end = stored.next_index - stored.next_index % TILE_WIDTH + TILE_WIDTH
                _commit(
                    db, signer, stored.next_index, min(block_end, entries), entries, first, step
                )
            db.checkpoint_wal()  # the projection level with the leaves before bulk loading
        finally:
            db.close()
    # The last block (1 to 256 entries) goes through the store's commit, which writes the head.
    bulk_end = max(0, (entries - 1) // TILE_WIDTH * TILE_WIDTH)
    con = open_sqlite(path, synchronous="NORMAL")
    try:
        con.execute("PRAGMA cache_size = -262144")
        (size,) = con.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()
        if size < bulk_end:
            _stage(con)
            tree = TiledTree.open(size=size, leaf_hashes=[], read=_tile_reader(con))
            plan = _Plan(
                path, entries, first, step, signer, workers, started, spent_before, progress
            )
            _load(con, tree, range(size, bulk_end, batch), bulk_end, plan)
        if _has_staging(path):
            _finish_staging(con, started if progress else None)
    finally:
        con.close()
    db = SqliteDatabase(path, origin=origin, writer=True)
    try:
        size = db.next_index()
        if size < entries:
            _commit(db, signer, size, entries, entries, first, step)
        db.checkpoint_wal()
        stored = db.load()
        assert stored.checkpoint is not None
        write_atomically(default_state_path(path), stored.checkpoint.encode("utf-8"))
    finally:
        db.close()
    seconds = time.perf_counter() - started
    _record(path, stored.next_index, spent_before + seconds)
    return seconds


def _times(path: Path, entries: int, days: float) -> tuple[datetime, timedelta]:
    """When the entries of a log of ``entries`` happen: entry ``i`` at ``first + step * i``.

    The plan spreads them evenly over ``days`` days ending now. A log being finished or extended
    keeps what it holds, and its next entry MUST NOT be earlier than its latest one: when that
    one is past the plan (exchanges a measuring run appended at the real time, a log finished at
    a smaller size over the same days), the rest are spread evenly from it to now instead, so
    time stays in log order and no entry is in the future (the gateway's own appends, at the
    real time, then still follow)."""
    now = datetime.now(UTC)
    first = now - timedelta(days=days)
    step = timedelta(days=days) / max(entries, 1)
    size, latest_us = _stored_span(path)
    if latest_us is None or size >= entries:
        return first, step
    latest = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=latest_us)
    if latest <= first + step * size:
        return first, step
    # Rounded down, so the last entry is not after now.
    step = max(now - latest, timedelta(0)) // (entries - size)
    return latest - step * size, step


def _stored_span(path: Path) -> tuple[int, int | None]:
    """The number of leaves ``path`` holds and the latest time (µs) among them (``None`` for a
    log without leaves); both read from an index."""
    if not path.exists():
        return 0, None
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        if not con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'leaves'"
        ).fetchone():
            return 0, None
        size, latest = con.execute(
            "SELECT (SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves),"
            " (SELECT MAX(time_us) FROM leaves)"
        ).fetchone()
        return int(size), None if latest is None else int(latest)
    finally:
        con.close()


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a bulk load makes: ``entries`` spread from ``first`` every ``step``, signed by
    ``signer``, made by ``workers`` processes, into ``path``; ``spent_before`` seconds went into
    earlier runs of the build."""

    path: Path
    entries: int
    first: datetime
    step: timedelta
    signer: NoteSigner
    workers: int
    started: float
    spent_before: float
    progress: bool


def _load(
    con: sqlite3.Connection, tree: TiledTree, starts: range, bulk_end: int, plan: _Plan
) -> None:
    """Bulk-load the chunks starting at ``starts``: ``plan.workers`` processes make them (at
    most ``workers`` + 1 chunks ahead, so memory stays flat) while this one writes them in
    order, truncating the WAL after each."""
    from_size, from_time = tree.size, time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(plan.workers, mp_context=spawn) as pool:
        queued: collections.deque[concurrent.futures.Future[_Made]] = collections.deque()
        for lo in [*starts, None]:
            if lo is not None:
                stop = min(lo + starts.step, bulk_end)
                queued.append(pool.submit(_chunk, lo, stop, plan.entries, plan.first, plan.step))
                if len(queued) <= plan.workers:
                    continue
            while queued and (lo is None or len(queued) > plan.workers):
                _bulk(con, tree, queued.popleft().result(), plan.signer)
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                now = time.perf_counter()
                _record(plan.path, tree.size, plan.spent_before + now - plan.started)
                if plan.progress:
                    rate = (tree.size - from_size) / (now - from_time)
                    _progress(f"{tree.size:,} entries written", rate, plan.started)


def _commit(
    db: SqliteDatabase,
    signer: NoteSigner,
    start: int,
    stop: int,
    entries: int,
    first: datetime,
    step: timedelta,
) -> None:
    """Commit the leaves ``[start, stop)`` as one batch through the store (which writes the
    head, and keeps the checkpoint if the batch reaches a multiple of 256)."""
    stored = db.load()
    tree = TiledTree.open(size=stored.next_index, leaf_hashes=stored.edge_hashes, read=db.tiles)
    leaves = list(_leaves(_Exchanges(start, first, step), start, stop, entries))
    tiles = tree.extend(n.leaf_hash for n in leaves)
    note = sign_checkpoint(Checkpoint(signer.name, tree.size, tree.root()), signer)
    db.commit(CommitBatch(leaves, tree.size, note, tiles))


def _progress(what: str, rate: float | None, started: float) -> None:
    per_s = f", {rate:,.0f} entries/s" if rate is not None else ""
    print(
        f"  {what} ({time.perf_counter() - started:.0f} s{per_s})",
        file=sys.stderr,
        flush=True,
    )


def _tile_reader(con: sqlite3.Connection):  # type: ignore[no-untyped-def]
    def read(level: int, start: int, stop: int) -> list[tuple[int, bytes]]:
        return con.execute(
            "SELECT idx, data FROM tiles WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (level, start, stop),
        ).fetchall()

    return read


if __name__ == "__main__":
    # python -m bench._biglog PATH ENTRIES: build (or finish) a cached log in the background.
    target, count = Path(sys.argv[1]), int(sys.argv[2])
    seconds = write_log(target, count, progress=True)
    print(f"wrote {count:,} entries to {target} in {seconds:.0f} s", file=sys.stderr)
