"""A gateway whose audit shard is in PostgreSQL (``[audit] store = "postgres"``): it answers
with verifiable receipts, rebuilds its replay cache from the shard after a power loss, its
shard passes ``fedgate audit verify --pg``, and instances with different origins on one
database keep their own shards. Also ``request_legs_since`` on both stores."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql

from fedgate.audit_entry import EntryKind, decode_entry, encode_entry, entry_kind
from fedgate.client import FedgateClient
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.types import MemberId
from gateway.audit import pg_store
from gateway.audit._months import month_of
from gateway.audit.cli import register
from gateway.audit.pg_store import PgDatabase, list_origins
from gateway.audit.sqlite_store import SqliteDatabase
from gateway.audit.store import CommitBatch
from gateway.config import AuditConfig, PipelineConfig
from gateway.replay import RequestLegSource
from gateway.server import Gateway

from ._pg_plans import assert_indexed, scans

ORIGIN = "fedgate.test/gateway/shard-0"  # the ``logs`` fixture's
SHARD_A = "fedgate.test/gateway/shard-a"
SHARD_B = "fedgate.test/gateway/shard-b"
POLICE = MemberId("police.gd.afc")


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def pg_audit(pg: Any, origin: str) -> AuditConfig:
    return AuditConfig(store="postgres", dsn=pg.dsn, schema=pg.schema, origin=origin)


class TestGatewayOnPostgres:
    async def test_answers_rebuilds_its_replay_cache_from_the_shard_and_verifies(
        self,
        pg: Any,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path, audit=pg_audit(pg, SHARD_A))
        try:
            answer = await h.client().ask(h.request("account_holder"))  # receipt verified
            assert answer.receipt.log_origin == SHARD_A
            envelope = h.sign(h.request("account_holder"))
            assert (await h.client().submit(envelope)).answer is not None
            forwarded = len(h.node.received)
            # A power loss takes the whole replay cache; the PostgreSQL shard keeps every leg.
            await h.gateway.stop()
            replay = h.state_dir / "replay.sqlite"
            for f in (replay, replay.with_name("replay.sqlite-wal")):
                f.unlink(missing_ok=True)
            await h.restart()
            refusal = await h.refusal(envelope)
            assert (refusal.code, refusal.error.reason) == (
                grpc.StatusCode.ALREADY_EXISTS,
                "REPLAYED",
            )
            assert len(h.node.received) == forwarded
            assert (h.state_dir / "audit-fedgate.test-gateway-shard-a.state").exists()
            assert not (h.state_dir / "audit.sqlite").exists()
        finally:
            await h.close()
        code, out = run_audit(
            [
                "verify",
                "--pg",
                pg.dsn,
                "--schema",
                pg.schema,
                "--origin",
                SHARD_A,
                "--federation",
                str(h.federation),
            ],
            capsys,
        )
        assert code == 0, out
        assert "2 allowed requests, 2 responses verified" in out

    async def test_instances_with_their_own_origins_keep_their_own_shards(
        self,
        pg: Any,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        a = await harness_factory(gw_federation, tmp_path / "a", audit=pg_audit(pg, SHARD_A))
        # The second instance opens its shard itself, from its configuration alone.
        config_b = dataclasses.replace(
            a.config(),
            audit=pg_audit(pg, SHARD_B),
            pipeline=PipelineConfig(state_dir=tmp_path / "b"),
        )
        b = await Gateway.start(config_b)
        client_b = FedgateClient.from_federation(a.federation, POLICE, endpoint=b.endpoint)
        try:
            await a.client().ask(a.request("account_holder"))
            for _ in range(2):
                answer = await client_b.ask(a.request("account_holder"))
                assert answer.receipt.log_origin == SHARD_B
            assert (a.gateway.audit.size, b.audit.size) == (2, 4)
            same_origin = dataclasses.replace(
                config_b, pipeline=PipelineConfig(state_dir=tmp_path / "c")
            )
            with pytest.raises(AuditUnavailable, match="each instance needs its own origin"):
                await Gateway.start(same_origin)
        finally:
            await client_b.close()
            await b.stop(0.5)
            await a.close()
        assert list_origins(pg.dsn, schema=pg.schema) == [SHARD_A, SHARD_B]
        code, out = run_audit(
            ["verify", "--pg", pg.dsn, "--schema", pg.schema, "--federation", str(a.federation)],
            capsys,
        )
        assert code == 0, out
        assert SHARD_A in out
        assert SHARD_B in out

    async def test_one_request_sent_to_two_instances_at_once_runs_once(
        self,
        pg: Any,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
    ) -> None:
        """With ``replay_store = "postgres"`` the instances share request ids and nonces."""
        a = await harness_factory(
            gw_federation, tmp_path / "a", audit=pg_audit(pg, SHARD_A), replay_store="postgres"
        )
        config_b = dataclasses.replace(
            a.config(),
            audit=pg_audit(pg, SHARD_B),
            pipeline=PipelineConfig(state_dir=tmp_path / "b", replay_store="postgres"),
        )
        b = await Gateway.start(config_b)
        client_b = FedgateClient.from_federation(a.federation, POLICE, endpoint=b.endpoint)
        try:
            for _ in range(3):
                envelope = a.sign(a.request("account_holder"))
                before = len(a.node.received)
                outcomes = await asyncio.gather(
                    a.client().submit(envelope),
                    client_b.submit(envelope),
                    return_exceptions=True,
                )
                answered = [o for o in outcomes if not isinstance(o, BaseException)]
                refused = [o for o in outcomes if isinstance(o, FedgateError)]
                assert len(answered) == 1, outcomes
                assert [e.reason for e in refused] == ["REPLAYED"]
                assert len(a.node.received) == before + 1
        finally:
            await client_b.close()
            await b.stop(0.5)
            await a.close()
            with psycopg.connect(pg.dsn, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(f"{pg.schema}_replay")
                    )
                )


def reader(logs: Any) -> SqliteDatabase | PgDatabase:
    if logs.kind == "sqlite":
        return SqliteDatabase(logs.db, origin=ORIGIN, writer=False)
    assert logs.pg is not None
    return PgDatabase(logs.pg.dsn, origin=ORIGIN, schema=logs.pg.schema, writer=False)


class TestRequestLegsSince:
    async def test_only_the_request_legs_of_the_window(self, logs: Any) -> None:
        fed = logs.fed
        log = await logs.open()
        start = fed.now
        old = fed.request()
        old_receipt = await log.append(old)
        await log.append(fed.response(old, old_receipt.index))
        fed.now = start + timedelta(minutes=20)
        recent = [fed.request(), fed.request(decision="refused")]
        for leg in recent:
            await log.append(leg)
        await log.append(fed.response(recent[0], 2))
        db: RequestLegSource = reader(logs)
        try:
            since = int((start + timedelta(minutes=10)).timestamp() * 1_000_000)
            found = sorted(db.request_legs_since(since))
            everything = list(db.request_legs_since(0))
        finally:
            db.close()  # type: ignore[attr-defined]
        assert found == sorted(encode_entry(leg) for leg in recent)
        assert len(everything) == 3
        assert {entry_kind(decode_entry(leaf)) for leaf in everything} == {EntryKind.REQUEST}

    def test_postgres_reads_the_window_through_the_time_index(self, pg: Any) -> None:
        PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True).close()
        now_us = time.time_ns() // 1000
        month = month_of(now_us)  # the writer created its partition ahead
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
            # A long shard (one request leg per microsecond), of which the window is the end.
            conn.execute(
                "INSERT INTO leaves (origin, idx, leaf, leaf_hash, leg, request_id, time_us,"
                " requesting_agency, officer_id, case_number, action, target_agency, outcome,"
                " reason, request_leaf_index, month)"
                " SELECT %s, i, '\\x00', '\\x00', 1, 'r' || i, %s + i, '', '', '', '', '', '',"
                " '', -1, %s FROM generate_series(0, 19999) AS i",
                (ORIGIN, now_us, month),
            )
            conn.execute("ANALYZE leaves")
            found = scans(
                conn,
                pg_store._REQUEST_LEGS_SINCE,
                (ORIGIN, month, now_us + 19_990, int(EntryKind.REQUEST)),
            )
            assert_indexed(conn, found)
        assert any(s.index.endswith("time_us_idx") for s in found), found


class TestInstancesStartingTogether:
    def test_a_writer_opening_beside_a_commit_that_deadlocks_with_it_still_opens(
        self, pg: Any
    ) -> None:
        """Another instance's commit holds ``checkpoints`` and then asks for ``heads`` while
        this writer's schema transaction holds ``heads`` (its trigger) and waits for
        ``checkpoints``: PostgreSQL aborts the one that waited first, the schema transaction,
        which is run again. (Seen in CI with `fedgate up --gateways 2`.)"""
        PgDatabase(pg.dsn, origin="fedgate.test/other", schema=pg.schema, writer=True).close()
        opened: list[PgDatabase] = []
        # A shard's first commit (an empty batch: its checkpoint at size 0) has written
        # ``checkpoints`` and is about to write ``heads``.
        _deadlock(
            pg,
            lambda: opened.append(PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)),
            first="checkpoints",
            then="heads",
            mode="ROW EXCLUSIVE",
        )
        opened[0].close()

    def test_a_commit_that_deadlocks_with_a_schema_transaction_is_committed_again(
        self, pg: Any
    ) -> None:
        """The other way round: the commit waits first (for ``heads``, held by another
        instance's schema transaction that then waits for ``checkpoints``), so PostgreSQL
        aborts the commit; it is run again and lands once the schema transaction is done."""
        db = PgDatabase(pg.dsn, origin=ORIGIN, schema=pg.schema, writer=True)
        try:
            _deadlock(
                pg,
                lambda: db.commit(CommitBatch((), 0, "checkpoint 0")),
                first="heads",
                then="checkpoints",
                mode="SHARE ROW EXCLUSIVE",
            )
            assert db.load().next_index == 0
            assert db.checkpoints_in(-1, 1) == [(0, "checkpoint 0")]
        finally:
            db.close()


def _deadlock(pg: Any, run: Callable[[], object], *, first: str, then: str, mode: str) -> None:
    """Run ``run`` on a thread against another session that holds table ``first`` in
    ``mode``, waits until ``run`` waits for a lock, then takes ``then`` in ``mode``: the two
    deadlock, and ``run`` (which waited first) is the one PostgreSQL aborts. Fails unless
    ``run`` completes without an error."""
    failed: list[BaseException] = []

    def running() -> None:
        try:
            run()
        except BaseException as exc:  # reported below
            failed.append(exc)

    lock = "LOCK TABLE {} IN " + mode + " MODE"  # constant modes and table names
    with psycopg.connect(pg.dsn, autocommit=True) as other:
        other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg.schema)))
        with other.transaction():
            other.execute(sql.SQL(lock).format(sql.Identifier(first)))
            thread = threading.Thread(target=running)
            thread.start()
            _wait_for_lock_wait(pg, exclude=other.info.backend_pid)
            other.execute(sql.SQL(lock).format(sql.Identifier(then)))
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failed == [], failed


def _wait_for_lock_wait(pg: Any, *, exclude: int) -> None:
    """Until another session of this database waits for a lock (bounded: 10 s)."""
    with psycopg.connect(pg.dsn, autocommit=True) as watch:
        for _ in range(500):
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> %s AND datname = current_database()",
                (exclude,),
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("the writer never waited for a lock")
