"""The audit log: durable appends with group commit, checkpoint latency, full verification,
proof sizes. Units are plain (``appends/s``, ``entries/s``, ``ms``, ``bytes``); what each figure
counts is said here and in the progress lines on stderr.

Appends: ``c`` concurrent appenders each run exchanges as the gateway does, a request leg then
its response leg, on a fresh store (receipts compute their proofs on first use, which the
gateway pays for the response legs it returns, about 30 us each, outside the log);
realistic leaves (300-600-byte envelopes, varied officers, cases, subjects, UUIDv7 ids).
``audit_appends_per_s_{sqlite,pg}`` is the 256-appender figure, ``_c1``/``_c16``/``_c256`` the
breakdown. ``audit_checkpoint_p99_ms`` is the p99 time from calling ``append`` to holding a
receipt with a signed checkpoint covering the entry, at 16 appenders on SQLite (``_c256`` under
full load). ``audit_checkpoint_cosigned_p99_ms`` goes on until a checkpoint covering the entry is
cosigned by the witnesses (both of the default federation's, over mTLS gRPC, each fsyncing its
state before it cosigns), 16 appenders on SQLite. Verification rebuilds the tree of a log
written by the real group commit (16 appenders through ``AuditLog``: a checkpoint every few
entries, as the gateway stores them) and checks every entry (hashes, strict decoding, response
links), every checkpoint signature and root, and the consistency of successive checkpoints, with
one worker process per CPU (``audit_verify_cpu_us_per_entry``: CPU of all processes per entry);
a log written in 5,000-entry batches is verified for comparison (``_batched``); the search-index
check and the request and response signatures (on a log of really signed exchanges) are timed
separately.

Appends on a big log: ``audit_appends_per_s_sqlite_big`` and ``_empty_side`` are 256 appenders
on a big log (``BENCH_AUDIT_BIG_LOG``, else the cached log ``bench_scale`` measures — 10 M
entries, 200 k with ``--quick``, or ``BENCH_SCALE_ENTRIES`` — built once by ``bench._biglog``
into ``bench/.cache``) and on an empty one, interleaved in this process;
``audit_appends_big_ratio`` is their ratio and ``audit_appends_big_cpu_ratio`` the ratio of
this process's CPU per append (robust to other load on the machine). Append figures count
closing the log (the search projection's last catch-up).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._biglog import bench_signer, build_record, cached_log, write_log
from fedgate.actions import new_request_id
from fedgate.audit_entry import (
    RequestLeg,
    ResponseLeg,
    columns_of,
    encode_entry,
    searchable,
    with_request_columns,
)
from fedgate.auditverify import LogSource, VerifyOptions, verify_log
from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner
from fedgate.testing import percentile
from fedgate.tiles import TiledTree
from fedgate.tlogproof import TlogProof
from gateway.audit._search import KEY_BLOCK_BITS
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import SqliteDatabase, open_sqlite_store
from gateway.audit.store import AuditStore, CommitBatch, NewLeaf

__all__ = ["run"]

ORIGIN = "fedgate.bench/gateway/shard-0"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = (1, 16, 256)


class _Entries:
    """Realistic leaves: request legs and the response legs that answer them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.at = datetime.now(UTC)

    def request(self) -> RequestLeg:
        rng = self.rng
        return RequestLeg(
            envelope=rng.randbytes(rng.randrange(300, 600)),
            peer="police.gd.afc",
            peer_cert_sha256=rng.randbytes(32).hex(),
            received_at=self.at,
            decision="allowed",
            rule="p, police_investigator, police, stop_payment, bank, allow",
            request_id=new_request_id(),
            requesting_agency="police.gd.afc",
            officer_id=f"4401{rng.randrange(500):05d}",
            case_number=f"A4401002026110{rng.randrange(5000):04d}",
            action="stop_payment",
            target_agency=rng.choice(["bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb"]),
            subjects=(f"62220{rng.randrange(10**14):014d}",),
        )

    def response(self, request: RequestLeg, index: int) -> ResponseLeg:
        rng = self.rng
        return ResponseLeg(
            request_id=request.request_id,
            request_leaf_index=index,
            responder=request.target_agency,
            received_at=self.at,
            status="ok",
            response_hash=rng.randbytes(32),
            responder_signature=rng.randbytes(64),
            responder_key_id=rng.randbytes(16).hex(),
            response_envelope=rng.randbytes(rng.randrange(200, 400)),
        )


Opener = Callable[[], Awaitable[AuditStore]]


async def _appends(
    open_store: Opener,
    signer: NoteSigner,
    concurrency: int,
    exchanges: int,
    cpu: list[float] | None = None,
) -> tuple[float, list[float]]:
    """Appends per second and every append's latency (s); this process's CPU seconds over the
    same span are appended to ``cpu`` when given."""
    store = await open_store()
    log = await AuditLog.open(store=store, origin=ORIGIN, signer=signer)
    entries = _Entries(concurrency)
    requests = [entries.request() for _ in range(exchanges)]
    latencies: list[float] = []

    async def appender(k: int) -> None:
        for i in range(k, exchanges, concurrency):
            t0 = time.perf_counter()
            receipt = await log.append(requests[i])
            t1 = time.perf_counter()
            await log.append(entries.response(requests[i], receipt.index))
            latencies.extend((t1 - t0, time.perf_counter() - t1))

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(appender(k) for k in range(concurrency)))
    # Closing is counted: it brings the search projection level (its last catch-up), so the
    # figure includes every projection cost of the appends measured.
    await log.close()
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return 2 * exchanges / elapsed, latencies


def _p99_ms(latencies: list[float]) -> float:
    return percentile(latencies, 0.99) * 1000


def _append_figures(
    store: str, open_store: Callable[[Path], Opener], quick: bool
) -> dict[str, tuple[float, str]]:
    signer = NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate())
    exchanges = {1: 100, 16: 500, 256: 5_000} if quick else {1: 1_000, 16: 8_000, 256: 40_000}
    figures: dict[str, tuple[float, str]] = {}
    for c in CONCURRENCY:
        with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
            rate, latencies = asyncio.run(_appends(open_store(Path(tmp)), signer, c, exchanges[c]))
        figures[f"audit_appends_per_s_{store}_c{c}"] = (
            rate,
            "appends/s",
        )
        figures[f"audit_append_p99_ms_{store}_c{c}"] = (_p99_ms(latencies), "ms")
        print(f"  {store} c{c}: {rate:,.0f}/s p99 {_p99_ms(latencies):.1f} ms", file=sys.stderr)
    figures[f"audit_appends_per_s_{store}"] = (
        figures[f"audit_appends_per_s_{store}_c256"][0],
        "appends/s",
    )
    return figures


def _sqlite_opener(tmp: Path) -> Opener:
    async def opener() -> AuditStore:
        return await open_sqlite_store(tmp / "audit.sqlite", origin=ORIGIN)

    return opener


def _pg_figures(quick: bool) -> dict[str, tuple[float, str]]:
    import psycopg
    from psycopg import sql

    from gateway.audit.pg_store import open_pg_store

    dsn = os.environ.get("FEDGATE_PG_DSN", DEFAULT_PG_DSN)
    try:
        admin = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"  PostgreSQL not reachable ({exc}); no PostgreSQL figures", file=sys.stderr)
        return {}
    schemas: list[str] = []

    def opener(tmp: Path) -> Opener:
        schema = f"bench_audit_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)

        async def open_store() -> AuditStore:
            return await open_pg_store(dsn, origin=ORIGIN, schema=schema, state_path=tmp / "state")

        return open_store

    try:
        return _append_figures("pg", opener, quick)
    finally:
        for schema in schemas:
            admin.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
        admin.close()


def _write_log(path: Path, signer: NoteSigner, entries: int, batch: int) -> None:
    """A log of ``entries`` exchanges' legs written straight to the store in big batches (tiles
    and all, as the gateway writes it: ``bench._biglog``)."""
    write_log(path, entries, signer=signer, batch=batch)


def _group_commit_log(path: Path, signer: NoteSigner, exchanges: int, appenders: int) -> int:
    """A log written by the gateway's own group commit: ``appenders`` concurrent exchanges
    through ``AuditLog`` (a checkpoint per commit, so one every few entries). Returns the
    number of checkpoints it signed."""

    async def opener() -> AuditStore:
        return await open_sqlite_store(path, origin=ORIGIN)

    asyncio.run(_appends(opener, signer, appenders, exchanges))
    db = SqliteDatabase(path, origin=None, writer=False)
    try:
        return len(db.checkpoints_in(-1, 1 << 62))
    finally:
        db.close()


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the verification workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _verify(
    db: Path, signer: NoteSigner, *, check_index: bool, what: str, jobs: int = 0
) -> tuple[float, float]:
    """Entries/s verified, and CPU microseconds per entry (all processes); ``jobs`` workers (0:
    one per CPU; 1: in this process, no worker to start)."""
    jobs = jobs or os.cpu_count() or 1
    cpu = _cpu_s()
    opener: Callable[[], LogSource] = functools.partial(
        SqliteDatabase, db, origin=None, writer=False
    )
    report = verify_log(
        opener,
        log_keys=[signer.verifier()],
        options=VerifyOptions(jobs=jobs, chunk=20_000, check_index=check_index),
    )
    if not report.ok:
        raise AssertionError(f"the benchmark log does not verify: {report.failure}")
    cpu_us = 1e6 * (_cpu_s() - cpu) / report.entries
    print(
        f"  verified {report.entries:,} entries and {report.checkpoints:,} checkpoints in "
        f"{report.seconds:.3f} s, {cpu_us:.1f} us CPU per entry ({what}, {jobs} workers, "
        f"{'fork' if threading.active_count() == 1 else 'forkserver'})",
        file=sys.stderr,
    )
    return report.entries / report.seconds, cpu_us


def _verify_figures(quick: bool) -> dict[str, tuple[float, str]]:
    """Verification of a log the group commit wrote (16 appenders: a checkpoint every few
    entries, as the gateway stores them), and for comparison of one written in 5,000-entry
    batches (the old benchmark's log, one checkpoint per 5,000 entries)."""
    exchanges = 5_000 if quick else 100_000
    batched = 10_000 if quick else 400_000
    signer = NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate())
    figures: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        db = Path(tmp) / "audit.sqlite"
        started = time.perf_counter()
        checkpoints = _group_commit_log(db, signer, exchanges, 16)
        print(
            f"  group commit wrote {2 * exchanges:,} entries in {time.perf_counter() - started:.1f}"
            f" s with {checkpoints:,} checkpoints ({2 * exchanges / checkpoints:.1f} entries per"
            " checkpoint)",
            file=sys.stderr,
        )
        figures["audit_verify_log_entries_per_checkpoint"] = (
            2 * exchanges / checkpoints,
            "entries",
        )
        rate, cpu_us = _verify(
            db, signer, check_index=False, what="group-commit log, index check excluded"
        )
        figures["audit_verify_entries_per_s"] = (rate, "entries/s")
        figures["audit_verify_cpu_us_per_entry"] = (cpu_us, "us")
        # The same in this process alone: no worker to start, no results to pass (what each
        # entry costs, steady state; on 10,000 entries the workers' start is a large part).
        rate, cpu_us = _verify(db, signer, check_index=False, what="the same, one process", jobs=1)
        figures["audit_verify_entries_per_s_1proc"] = (rate, "entries/s")
        figures["audit_verify_cpu_us_per_entry_1proc"] = (cpu_us, "us")
        rate, _ = _verify(db, signer, check_index=True, what="group-commit log, index checked")
        figures["audit_verify_index_entries_per_s"] = (rate, "entries/s")
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        db = Path(tmp) / "audit.sqlite"
        _write_log(db, signer, batched, batch=5_000)
        rate, cpu_us = _verify(
            db, signer, check_index=False, what="5,000-entry batches, for comparison"
        )
        figures["audit_verify_entries_per_s_batched"] = (rate, "entries/s")
        figures["audit_verify_cpu_us_per_entry_batched"] = (cpu_us, "us")
    with tempfile.TemporaryDirectory(prefix="bench-audit-verify-") as tmp:
        # Two tiles, one per worker: nearly all of it is starting the workers.
        db = Path(tmp) / "audit.sqlite"
        _write_log(db, signer, 512, batch=256)
        started = time.perf_counter()
        _verify(db, signer, check_index=False, what="512 entries: the workers' start")
        figures["audit_verify_startup_ms"] = (1e3 * (time.perf_counter() - started), "ms")
    return figures


def _signature_figures(quick: bool) -> dict[str, tuple[float, str]]:
    """Request and response signatures checked by ``verify`` (one Ed25519 check each plus
    decoding): really signed exchanges from a fresh federation."""
    from fedgate.envelope import Domain, Signer, sign_envelope
    from fedgate.evidence import log_verifiers
    from fedgate.keys import load_private_key
    from fedgate.pki import FederationLayout, init_federation
    from fedgate.registry import Registry
    from fedgate.testing import card_number, valid_request
    from fedgate.types import MemberId
    from fedgate.v1 import request_pb2

    exchanges = 500 if quick else 5_000
    with tempfile.TemporaryDirectory(prefix="bench-audit-sig-") as tmp:
        fed = init_federation(Path(tmp) / "fed", now=datetime.now(UTC) - timedelta(days=1))
        registry = Registry.load_dir(fed)
        layout = FederationLayout(fed)
        police = Signer.from_key(load_private_key(layout.signing_key(MemberId("police.gd.afc"))))
        bank = Signer.from_key(load_private_key(layout.signing_key(MemberId("bank.icbc"))))
        signer = NoteSigner(
            name=ORIGIN, private_key=load_private_key(layout.signing_key(MemberId("gateway")))
        )
        now = datetime.now(UTC)
        tree = TiledTree(size=0, edge=[b""], read=lambda level, start, stop: [])
        leaves: list[NewLeaf] = []
        for i in range(exchanges):
            account = card_number("bank.icbc", i)
            request = valid_request("stop_payment", now=now, serial=i, account_number=account)
            body = request.SerializeToString()
            env = sign_envelope(body, police, Domain.REQUEST)
            leg = RequestLeg(
                envelope=env.SerializeToString(),
                peer="police.gd.afc",
                peer_cert_sha256="",
                received_at=now,
                decision="allowed",
                rule="bench",
                request_id=request.request_id,
                requesting_agency="police.gd.afc",
                officer_id=request.officer.id,
                case_number=request.case.case_number,
                action="stop_payment",
                target_agency="bank.icbc",
                subjects=(account,),
            )
            response = request_pb2.Response(
                request_id=request.request_id,
                request_hash=hashlib.sha256(body).digest(),
                responder="bank.icbc",
                status=request_pb2.RESPONSE_STATUS_OK,
            )
            response.answered_at.FromDatetime(now)
            answer = sign_envelope(response.SerializeToString(), bank, Domain.RESPONSE)
            resp = ResponseLeg(
                request_id=request.request_id,
                request_leaf_index=len(leaves),
                responder="bank.icbc",
                received_at=now,
                status="ok",
                response_hash=hashlib.sha256(answer.body).digest(),
                responder_signature=answer.signature,
                responder_key_id=answer.key_id,
                response_envelope=answer.SerializeToString(),
            )
            q = columns_of(searchable(leg))
            for entry, cols in (
                (leg, q),
                (resp, with_request_columns(columns_of(searchable(resp)), q)),
            ):
                data = encode_entry(entry)
                leaves.append(NewLeaf(len(leaves), data, leaf_hash(data), cols))
        db = Path(tmp) / "audit.sqlite"
        store = SqliteDatabase(db, origin=ORIGIN, writer=True)
        store.commit(
            CommitBatch((), 0, sign_checkpoint(Checkpoint(ORIGIN, 0, tree.root()), signer))
        )
        tiles = tree.extend(n.leaf_hash for n in leaves)
        store.commit(
            CommitBatch(
                leaves,
                tree.size,
                sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), signer),
                tiles,
            )
        )
        store.close()
        jobs = os.cpu_count() or 1
        opener: Callable[[], LogSource] = functools.partial(
            SqliteDatabase, db, origin=None, writer=False
        )
        report = verify_log(
            opener,
            log_keys=log_verifiers(registry, ORIGIN),
            options=VerifyOptions(federation=fed, jobs=jobs, chunk=2_000),
        )
        if not report.ok or report.signatures is None:
            raise AssertionError(f"the signed benchmark log does not verify: {report.failure}")
    return {
        "audit_verify_signatures_per_s": (
            2 * exchanges / report.seconds,
            "entries/s",
        )
    }


def _proof_figures() -> dict[str, tuple[float, str]]:
    size = 1_000_000
    tree = MerkleTree.from_leaf_hashes(
        hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)
    )
    sample = [0, 1, size // 3, size // 2, size - 2, size - 1]
    worst = max(len(tree.inclusion_proof(i, size)) for i in sample)
    note = sign_checkpoint(
        Checkpoint(ORIGIN, size, tree.root()),
        NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate()),
    )
    tlog = TlogProof(
        index=size - 1, proof=tuple(tree.inclusion_proof(size - 1, size)), checkpoint_note=note
    ).marshal()
    consistency = len(tree.consistency_proof(size // 2 + 1, size))
    return {
        "audit_inclusion_proof_bytes_1m": (float(32 * worst), "bytes"),
        "audit_consistency_proof_bytes_1m": (
            float(32 * consistency),
            "bytes",
        ),
        "audit_tlog_proof_bytes_1m": (float(len(tlog.encode())), "bytes"),
    }


async def _cosigned(fed: Path, appenders: int, appends: int) -> list[float]:
    """Append → a checkpoint covering the entry signed by the log and cosigned by the
    witnesses (the default policy, 1 of 2): each latency, with both witnesses served over mTLS
    gRPC from their own fsync'd state (``fedgate.witness``)."""
    import grpc.aio

    from fedgate.checkpoint import CosignatureVerifier
    from fedgate.keys import public_key_from_raw
    from fedgate.registry import Registry
    from fedgate.tls import (
        MemberCredentials,
        channel_credentials,
        channel_options,
        server_credentials,
    )
    from fedgate.types import MemberId
    from fedgate.v1 import audit_service_pb2_grpc
    from fedgate.witness import GrpcWitnessClient, Witness, WitnessServicer

    registry = Registry.load_dir(fed)
    gateway = MemberCredentials.load(fed, MemberId("gateway"))
    signer = NoteSigner(name=ORIGIN, private_key=gateway.signing_key)
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []
    clients = []
    policy = registry.effective_witness_policy()
    assert policy is not None
    for name in policy.witnesses:
        creds = MemberCredentials.load(fed, name)
        witness = Witness(
            name=name,
            private_key=creds.signing_key,
            state_path=fed / f"{name}.witness.json",
            logs={ORIGIN: signer.verifier()},
        )
        server = grpc.aio.server()
        audit_service_pb2_grpc.add_WitnessServiceServicer_to_server(
            WitnessServicer(witness), server
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(creds))
        await server.start()
        servers.append(server)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(gateway), options=channel_options(name)
        )
        channels.append(channel)
        key = registry.member(name).signing_keys[-1]
        verifier = CosignatureVerifier(name=name, public_key=public_key_from_raw(key.public_key))
        clients.append(GrpcWitnessClient(channel, verifier=verifier))
    store = await open_sqlite_store(fed / "audit.sqlite", origin=ORIGIN)
    log = await AuditLog.open(store=store, origin=ORIGIN, signer=signer, witnesses=clients)
    entries = _Entries(appenders)
    latencies: list[float] = []

    async def appender(k: int) -> None:
        for _ in range(k, appends, appenders):
            t0 = time.perf_counter()
            receipt = await log.append(entries.request())
            await log.cosigned_covering(receipt.tree_size, timeout_s=10.0)
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(appender(k) for k in range(appenders)))
    finally:
        await log.close()
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.stop(None)
    return latencies


def _cosigned_figures(quick: bool) -> dict[str, tuple[float, str]]:
    from fedgate.pki import init_federation

    appends = 300 if quick else 3_000
    with tempfile.TemporaryDirectory(prefix="bench-cosigned-") as tmp:
        fed = init_federation(Path(tmp) / "fed", now=datetime.now(UTC) - timedelta(hours=1))
        latencies = asyncio.run(_cosigned(fed, 16, appends))
    p99 = _p99_ms(latencies)
    print(
        f"  cosigned: {appends} appends by 16 appenders, p50 "
        f"{percentile(latencies, 0.5) * 1000:.1f} ms p99 {p99:.1f} ms",
        file=sys.stderr,
    )
    return {"audit_checkpoint_cosigned_p99_ms": (p99, "ms")}


def _big_log(quick: bool) -> Path:
    """The big log to append to: ``BENCH_AUDIT_BIG_LOG`` if set, else the benchmarks' cached
    log (``bench._biglog.cached_log``: 10 M entries, 200 k with ``--quick``, shared with
    ``bench_scale``), built or finished here if need be and kept in ``bench/.cache``."""
    named = os.environ.get("BENCH_AUDIT_BIG_LOG")
    if named:
        return Path(named)
    path, entries = cached_log(quick)
    seconds = write_log(path, entries, progress=True)
    record = build_record(path)
    print(
        f"  big log {path.name}: {record.entries:,} entries, built in {record.seconds:,.0f} s"
        f" over all runs ({seconds:.0f} s in this one)",
        file=sys.stderr,
    )
    return path


# Rounds of ``_big_appends``: an even count, so each side goes first as often as the other.
APPEND_ROUNDS = 4
APPEND_ROUNDS_QUICK = 2


async def _big_appends(big: Path, rounds: int, exchanges: int) -> dict[str, float]:
    """Appends/s at 256 appenders on an empty log and on ``big``, interleaved ``rounds`` times
    in this process (load on the machine falls on both alike), with this process's CPU time.
    The sides take turns going first (empty, big; big, empty; ...), so neither always runs
    in the wake of the other's close (its last catch-up, WAL checkpoint and write-back)."""
    signer = bench_signer()

    async def on_big() -> AuditStore:
        return await open_sqlite_store(big, origin=ORIGIN)

    totals = {"empty_s": 0.0, "big_s": 0.0, "empty_cpu": 0.0, "big_cpu": 0.0, "n": 0.0}
    for r in range(rounds):
        for name in ("empty", "big") if r % 2 == 0 else ("big", "empty"):
            with tempfile.TemporaryDirectory(prefix="bench-audit-empty-") as tmp:
                opener = _sqlite_opener(Path(tmp)) if name == "empty" else on_big
                cpu: list[float] = []
                rate, _ = await _appends(opener, signer, 256, exchanges, cpu)
                totals[f"{name}_cpu"] += cpu[0]
                totals[f"{name}_s"] += 2 * exchanges / rate
        totals["n"] += 2 * exchanges
    return totals


def key_block_fill(size: int) -> int:
    """How many leaves of a log of ``size`` entries are already in its newest key block
    (``_search.KEY_BLOCK_BITS``). The catch-up's inserts into the officer, case and subject
    indexes land at random among that block's pages, so the pages a catch-up dirties (and the
    WAL and checkpoint work they cost) grow with it: the big-log append figures depend on where
    in its key block the log stands, not only on its size (docs/benchmarks.md)."""
    return size % (1 << KEY_BLOCK_BITS)


def _big_log_figures(quick: bool) -> dict[str, tuple[float, str]]:
    big = _big_log(quick)
    # A writer first: a log cached by an older fedgate migrates to this one's schema (a reader
    # would refuse it), and its search projection is brought level before the figures.
    db = SqliteDatabase(big, origin=None, writer=True)
    try:
        db.checkpoint_wal()
        size = db.next_index()
    finally:
        db.close()
    rounds = APPEND_ROUNDS_QUICK if quick else APPEND_ROUNDS
    t = asyncio.run(_big_appends(big, rounds, 3_000 if quick else 10_000))
    empty, loaded = t["n"] / t["empty_s"], t["n"] / t["big_s"]
    print(
        f"  appends at 256 appenders: {loaded:,.0f}/s on the {size:,}-entry log, {empty:,.0f}/s"
        f" on an empty one (CPU {1e6 * t['big_cpu'] / t['n']:.0f} vs "
        f"{1e6 * t['empty_cpu'] / t['n']:.0f} us per append; {key_block_fill(size):,} leaves"
        " already in the newest key block)",
        file=sys.stderr,
    )
    return {
        "audit_big_log_entries": (float(size), "entries"),
        "audit_big_log_key_block_fill": (float(key_block_fill(size)), "entries"),
        "audit_appends_per_s_sqlite_big": (loaded, "appends/s"),
        "audit_appends_per_s_sqlite_empty_side": (empty, "appends/s"),
        "audit_appends_big_ratio": (loaded / empty, "ratio"),
        "audit_append_cpu_us_big": (1e6 * t["big_cpu"] / t["n"], "us"),
        "audit_append_cpu_us_empty": (1e6 * t["empty_cpu"] / t["n"], "us"),
        "audit_appends_big_cpu_ratio": (t["empty_cpu"] / t["big_cpu"], "ratio"),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    figures: dict[str, tuple[float, str]] = {}
    # Verification first: like ``fedgate audit verify`` it forks its workers from a process
    # without threads; once the witnesses' gRPC has run, its poller thread stays and verify
    # starts a forkserver instead (about 0.5 s, once per process: docs/benchmarks.md).
    figures.update(_verify_figures(quick))
    figures.update(_append_figures("sqlite", _sqlite_opener, quick))
    figures.update(_big_log_figures(quick))
    figures["audit_checkpoint_p99_ms"] = (
        figures["audit_append_p99_ms_sqlite_c16"][0],
        "ms",
    )
    figures.update(_cosigned_figures(quick))
    figures.update(_pg_figures(quick))
    figures.update(_signature_figures(quick))
    figures.update(_proof_figures())
    return figures


if __name__ == "__main__":
    for name, (value, unit) in run("--quick" in sys.argv).items():
        print(f"{name}: {value:.6g} {unit}")
