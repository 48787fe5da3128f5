"""Writing large audit logs for the benchmarks: realistic exchanges straight into the store.

``write_log`` writes what the gateway's log writes (leaves, columns, subjects, C2SP tiles, time
blocks, one signed checkpoint per batch, the state file) without the group commit in front, so a
log of millions of entries takes minutes. It resumes an interrupted build from the store's right
edge, and copies the WAL into the database as it goes (``SqliteDatabase.checkpoint_wal``), so the
WAL stays bounded however long the build.

The exchanges are spread evenly over ``days`` days ending now (so charts and time searches have
something to find), with 40 police members, 500 officers each, 5,000 cases, five actions, and one
request in 20 refused by the gateway.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
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
from fedgate.tiles import TiledTree
from gateway.audit.sqlite_store import SqliteDatabase, default_state_path
from gateway.audit.store import CommitBatch, NewLeaf

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


def write_log(
    path: Path,
    entries: int,
    *,
    signer: NoteSigner | None = None,
    batch: int = 5_000,
    days: float = 100.0,
    progress: bool = False,
) -> float:
    """Write (or finish writing) a log of ``entries`` entries at ``path``; returns the seconds
    spent. Raises what the store raises."""
    signer = signer or bench_signer()
    origin = signer.name
    started = time.perf_counter()
    db = SqliteDatabase(path, origin=origin, writer=True)
    try:
        stored = db.load()
        tree = TiledTree.open(size=stored.next_index, leaf_hashes=stored.edge_hashes, read=db.tiles)
        if stored.checkpoint is None:
            note = sign_checkpoint(Checkpoint(origin, 0, tree.root()), signer)
            db.commit(CommitBatch((), 0, note))
        now = datetime.now(UTC)
        step = timedelta(days=days) / max(entries, 1)
        make = _Exchanges(tree.size, now - timedelta(days=days), step)
        batches = 0
        while tree.size < entries:
            leaves: list[NewLeaf] = []
            while len(leaves) < batch and tree.size + len(leaves) < entries:
                index = tree.size + len(leaves)
                request = make.request(index)
                request_columns = columns_of(searchable(request))
                pair: list[tuple[AuditEntry, IndexColumns]] = [(request, request_columns)]
                if index + 1 < entries:
                    response = make.response(request, index)
                    pair.append(
                        (
                            response,
                            with_request_columns(columns_of(searchable(response)), request_columns),
                        )
                    )
                for entry, columns in pair:
                    data = encode_entry(entry)
                    leaves.append(NewLeaf(tree.size + len(leaves), data, leaf_hash(data), columns))
            tiles = tree.extend(n.leaf_hash for n in leaves)
            note = sign_checkpoint(Checkpoint(origin, tree.size, tree.root()), signer)
            db.commit(CommitBatch(leaves, tree.size, note, tiles))
            batches += 1
            if batches % 20 == 0:
                db.checkpoint_wal()
                write_atomically(default_state_path(path), note.encode("utf-8"))
                if progress:
                    print(
                        f"  {tree.size:,} entries written ({time.perf_counter() - started:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
        db.checkpoint_wal()
        cp = db.load().checkpoint
        assert cp is not None
        write_atomically(default_state_path(path), cp.encode("utf-8"))
    finally:
        db.close()
    return time.perf_counter() - started


if __name__ == "__main__":
    # python -m bench._biglog PATH ENTRIES: build (or finish) a cached log in the background.
    target, count = Path(sys.argv[1]), int(sys.argv[2])
    seconds = write_log(target, count, progress=True)
    print(f"wrote {count:,} entries to {target} in {seconds:.0f} s", file=sys.stderr)
