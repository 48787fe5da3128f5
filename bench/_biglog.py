"""Writing large audit logs for the benchmarks: realistic exchanges bulk-loaded into the store.

``write_log`` produces the store layout the gateway's log writes (leaves with their columns,
subjects, C2SP tiles, time blocks, rollups, the checkpoints the store keeps at its interval,
the head and the state file), which ``fedgate audit verify`` accepts, without going through the
log's commit path:

- the leaves go in with the secondary indexes dropped, in transactions of ``batch`` entries
  (a multiple of 256), and the indexes are built once at the end (a sort, not millions of
  random b-tree inserts);
- the tiles come out of one streaming pass of ``TiledTree.extend``; the time blocks and the
  rollups of each transaction are computed in memory;
- a checkpoint is signed at every multiple of ``CHECKPOINT_INTERVAL`` (as a batch ending
  there would be), so the history holds exactly what ``kept_checkpoint`` keeps;
- the last (partial) block goes through the store's own ``commit``, which writes the head.

It resumes an interrupted build from the store's last full transaction, and copies the WAL into
the database after each transaction, so the WAL stays bounded however long the build.

The exchanges are spread evenly over ``days`` days ending now (so charts and time searches have
something to find), with 40 police members, 500 officers each, 5,000 cases, five actions, and one
request in 20 refused by the gateway.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import multiprocessing
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.actions import new_request_id
from fedgate.audit_entry import (
    AuditEntry,
    IndexColumns,
    RequestLeg,
    ResponseLeg,
    columns_of,
    encode_entry,
    searchable,
    with_request_columns,
)
from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.files import write_atomically
from fedgate.merkle import leaf_hash
from fedgate.note import NoteSigner
from fedgate.storage import open_sqlite
from fedgate.tiles import TILE_WIDTH, TiledTree
from gateway.audit import _rows
from gateway.audit.sqlite_store import SqliteDatabase, default_state_path
from gateway.audit.store import CHECKPOINT_INTERVAL, CommitBatch, NewLeaf

__all__ = ["ORIGIN", "bench_signer", "write_log"]

ORIGIN = "fedgate.bench/gateway/shard-0"
_ACTIONS = ("stop_payment", "query_account", "query_transactions", "freeze_account", "query_phone")
_TARGETS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb", "carrier.cm", "carrier.cu")
_REFUSALS = ("NOT_PERMITTED: rule", "QUOTA_EXCEEDED: officer", "CASE_REQUIRED: freeze")


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
        return RequestLeg(
            envelope=rng.randbytes(rng.randrange(300, 600)),
            peer=f"police.{member:02d}",
            peer_cert_sha256=rng.randbytes(32).hex(),
            received_at=self.start + self.step * index,
            decision="refused" if refused else "allowed",
            rule=rng.choice(_REFUSALS) if refused else f"p, police, {action}, allow",
            request_id=new_request_id(),
            requesting_agency=f"police.{member:02d}",
            officer_id=f"44{member:02d}{rng.randrange(500):05d}",
            case_number=f"A4401002026110{rng.randrange(5000):04d}",
            action=action,
            target_agency=rng.choice(_TARGETS),
            subjects=(f"62220{rng.randrange(10**14):014d}",),
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
    followed by its response leg (``start`` is even: a multiple of 256)."""
    for index in range(start, stop, 2):
        request = make.request(index)
        request_columns = columns_of(searchable(request))
        pair: list[tuple[AuditEntry, IndexColumns]] = [(request, request_columns)]
        if index + 1 < entries:
            response = make.response(request, index)
            columns = with_request_columns(columns_of(searchable(response)), request_columns)
            pair.append((response, columns))
        for offset, (entry, cols) in enumerate(pair):
            if index + offset < stop:
                data = encode_entry(entry)
                yield NewLeaf(index + offset, data, leaf_hash(data), cols)


def _chunk(start: int, stop: int, entries: int, first: datetime, step: timedelta) -> list[NewLeaf]:
    """The leaves ``[start, stop)``, made in a worker process (seeded by ``start``)."""
    return list(_leaves(_Exchanges(start, first, step), start, stop, entries))


_INSERT_LEAF = (
    f"INSERT INTO leaves ({_rows.LEAF_COLUMNS})"
    f" VALUES ({', '.join('?' * len(_rows.LEAF_COLUMNS.split(',')))})"
)
_SECONDARY_INDEXES = (
    "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    " AND tbl_name IN ('leaves', 'subjects')"
)


def _bulk(
    con: sqlite3.Connection,
    tree: TiledTree,
    leaves: list[NewLeaf],
    signer: NoteSigner,
) -> None:
    """Write ``leaves`` (whole blocks of 256) with their tiles, time blocks and the checkpoints
    at each multiple of ``CHECKPOINT_INTERVAL``, in one transaction. The search projection
    (columns, subjects, rollups) is the store's to fill: ``checkpoint_wal`` at the end."""
    tiles: list[tuple[int, int, bytes]] = []
    notes: list[tuple[int, str]] = []
    for lo in range(0, len(leaves), CHECKPOINT_INTERVAL):
        tiles += tree.extend(n.leaf_hash for n in leaves[lo : lo + CHECKPOINT_INTERVAL])
        checkpoint = Checkpoint(signer.name, tree.size, tree.root())
        notes.append((tree.size, sign_checkpoint(checkpoint, signer)))
    blocks = []
    for lo in range(0, len(leaves), TILE_WIDTH):
        times = [n.columns[2] for n in leaves[lo : lo + TILE_WIDTH]]
        blocks.append((leaves[lo].index // TILE_WIDTH, min(times), max(times)))
    con.execute("BEGIN IMMEDIATE")
    try:
        con.executemany(_INSERT_LEAF, _rows.leaf_values(leaves))
        con.executemany("INSERT INTO tiles (level, idx, data) VALUES (?, ?, ?)", tiles)
        con.executemany("INSERT INTO time_blocks (block, min_us, max_us) VALUES (?, ?, ?)", blocks)
        con.executemany("INSERT INTO checkpoints (size, note) VALUES (?, ?)", notes)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


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
    processes; returns the seconds spent. Raises what the store raises."""
    signer = signer or bench_signer()
    origin = signer.name
    started = time.perf_counter()
    batch = max(TILE_WIDTH, batch - batch % TILE_WIDTH)
    first = datetime.now(UTC) - timedelta(days=days)
    step = timedelta(days=days) / max(entries, 1)
    db = SqliteDatabase(path, origin=origin, writer=True)  # schema, origin, rollups_from = 0
    try:
        stored = db.load()
        if stored.checkpoint is None:
            _commit(db, signer, 0, 0, entries, first, step)
        elif stored.next_index % TILE_WIDTH and stored.next_index < entries:
            # A log finished at a smaller size: complete its last block the store's way.
            block_end = stored.next_index - stored.next_index % TILE_WIDTH + TILE_WIDTH
            _commit(db, signer, stored.next_index, min(block_end, entries), entries, first, step)
        stored = db.load()
    finally:
        db.close()
    # The last block (1 to 256 entries) goes through the store's commit, which writes the head.
    bulk_end = max(0, (entries - 1) // TILE_WIDTH * TILE_WIDTH)
    if stored.next_index < bulk_end:
        con = open_sqlite(path, synchronous="NORMAL")
        try:
            con.execute("PRAGMA cache_size = -1048576")
            # Built again at the end by the schema's own CREATE INDEX IF NOT EXISTS.
            for (name,) in con.execute(_SECONDARY_INDEXES).fetchall():
                con.execute(f'DROP INDEX "{name}"')
            read = _tile_reader(con)
            tree = TiledTree.open(size=stored.next_index, leaf_hashes=[], read=read)
            starts = range(tree.size, bulk_end, batch)
            # Two processes make the entries while this one writes them.
            spawn = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
                queued: collections.deque[concurrent.futures.Future[list[NewLeaf]]] = (
                    collections.deque()
                )
                for lo in [*starts, None]:
                    if lo is not None:
                        stop = min(lo + batch, bulk_end)
                        queued.append(pool.submit(_chunk, lo, stop, entries, first, step))
                        if len(queued) <= workers:  # a bounded backlog: memory stays flat
                            continue
                    while queued and (lo is None or len(queued) > workers):
                        _bulk(con, tree, queued.popleft().result(), signer)
                        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                        if progress:
                            _progress(tree.size, started)
        finally:
            con.close()
    db = SqliteDatabase(path, origin=origin, writer=True)  # builds the dropped indexes
    try:
        size = db.next_index()
        if size < entries:
            _commit(db, signer, size, entries, entries, first, step)
        db.checkpoint_wal()
        cp = db.load().checkpoint
        assert cp is not None
        write_atomically(default_state_path(path), cp.encode("utf-8"))
    finally:
        db.close()
    return time.perf_counter() - started


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


def _progress(size: int, started: float) -> None:
    print(
        f"  {size:,} entries written ({time.perf_counter() - started:.0f} s)",
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
