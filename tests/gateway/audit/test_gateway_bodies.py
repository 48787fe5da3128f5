"""A gateway with a key-encryption key (``[audit] kek_path``), on both stores: a real exchange
leaves no identifier in the database, the replay cache is rebuilt from sealed legs, a wrong or
missing KEK stops the start, and ``fedgate audit retention`` shreds while ``verify`` passes."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fedgate.errors import ConfigError, KeyUnavailable
from fedgate.kek import write_kek_file
from gateway.audit.cli import register
from gateway.config import AuditConfig, PipelineConfig
from gateway.pipeline import subjects_of
from gateway.server import Gateway, run_retention_once

ORIGIN = "fedgate.test/gateway/sealed"


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def raw_database(audit: AuditConfig, state_dir: Path) -> bytes:
    if audit.store == "sqlite":
        return b"".join(p.read_bytes() for p in state_dir.glob("audit.sqlite*"))
    rows: list[bytes] = []
    with psycopg.connect(audit.dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (audit.schema,),
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} AS t").format(
                sql.Identifier(audit.schema), sql.Identifier(table)
            )
            rows += [r[0].encode() for r in conn.execute(query).fetchall()]
    return b"\n".join(rows)


@pytest.fixture(params=["sqlite", "postgres"])
def sealed_audit(request: pytest.FixtureRequest, tmp_path: Path) -> AuditConfig:
    kek = tmp_path / "keys" / "audit.kek"
    write_kek_file(kek)
    if request.param == "sqlite":
        return AuditConfig(origin=ORIGIN, kek_path=kek)
    pg = request.getfixturevalue("pg")
    return AuditConfig(origin=ORIGIN, kek_path=kek, store="postgres", dsn=pg.dsn, schema=pg.schema)


class TestSealedGateway:
    async def test_a_real_exchange_is_sealed_at_rest_and_the_gateway_restarts_on_it(
        self,
        sealed_audit: AuditConfig,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path, audit=sealed_audit)
        try:
            asked = h.request("account_holder")
            await h.client().ask(asked)  # the receipt proves the sealed response leg
            envelope = h.sign(h.request("account_holder"))
            assert (await h.client().submit(envelope)).answer is not None
            await h.restart()  # the replay cache is rebuilt from the sealed request legs
            refusal = await h.refusal(envelope)
            assert refusal.error.reason == "REPLAYED"
        finally:
            await h.close()
        raw = raw_database(sealed_audit, h.state_dir)
        assert asked.request_id.encode() in raw
        values = [*subjects_of(asked), asked.officer.id_number, asked.officer.phone]
        for value in filter(None, values):
            assert value.encode() not in raw, value
            assert value.encode().hex().encode() not in raw, value

    async def test_a_wrong_or_missing_kek_stops_the_start(
        self,
        sealed_audit: AuditConfig,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path, audit=sealed_audit)
        try:
            await h.client().ask(h.request("account_holder"))
        finally:
            await h.close()
        other = tmp_path / "other.kek"
        write_kek_file(other)
        base = h.config()
        for audit, message in (
            (dataclasses.replace(sealed_audit, kek_path=other), "sealed under key-encryption"),
            (dataclasses.replace(sealed_audit, kek_path=None), "kek_path is not set"),
            (dataclasses.replace(sealed_audit, kek_path=tmp_path / "gone"), "no key-encryption"),
        ):
            with pytest.raises(KeyUnavailable, match=message):
                await Gateway.start(dataclasses.replace(base, audit=audit))

    async def test_retention_from_the_cli_shreds_and_the_log_still_verifies(
        self,
        sealed_audit: AuditConfig,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path, audit=sealed_audit)
        try:
            asked = h.request("account_holder")
            await h.client().ask(asked)
        finally:
            await h.close()
        config = h.config()
        assert await run_retention_once(config, now=datetime.now(UTC)) == []
        later = datetime.now(UTC) + timedelta(days=5 * 365)
        destroyed = await run_retention_once(config, now=later)
        assert asked.case.case_number in destroyed
        if sealed_audit.store == "sqlite":
            source = ["--db", str(config.audit_path)]
        else:
            source = ["--pg", sealed_audit.dsn, "--schema", sealed_audit.schema]
            source += ["--origin", ORIGIN]
        code, out = run_audit(["verify", *source, "--federation", str(h.federation)], capsys)
        assert code == 0, out
        assert "legs sealed" in out


class TestShardsApart:
    async def test_a_sealed_shard_does_not_stop_an_unsealed_one_in_the_same_schema(
        self,
        pg: Any,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
    ) -> None:
        kek = tmp_path / "audit.kek"
        write_kek_file(kek)
        sealed = AuditConfig(
            origin=ORIGIN, kek_path=kek, store="postgres", dsn=pg.dsn, schema=pg.schema
        )
        h = await harness_factory(gw_federation, tmp_path / "a", audit=sealed)
        try:
            await h.client().ask(h.request("account_holder"))
        finally:
            await h.close()
        plain = dataclasses.replace(sealed, origin="fedgate.test/gateway/plain", kek_path=None)
        config = dataclasses.replace(
            h.config(), audit=plain, pipeline=PipelineConfig(state_dir=tmp_path / "b")
        )
        gateway = await Gateway.start(config)
        await gateway.stop(0)
        unsealed = dataclasses.replace(sealed, kek_path=None)
        with pytest.raises(KeyUnavailable, match="kek_path is not set"):
            await Gateway.start(dataclasses.replace(config, audit=unsealed))


class TestRetentionWithoutKek:
    async def test_sqlite_has_nothing_to_retire_and_postgres_runs_its_months(
        self, pg: Any, harness_factory: Callable[..., Any], gw_federation: Path, tmp_path: Path
    ) -> None:
        """Without a KEK there are no case keys: a SQLite log has nothing to retire (a clear
        error), a PostgreSQL log runs the job for its months (nothing due yet here)."""
        plain = AuditConfig(origin=ORIGIN, store="postgres", dsn=pg.dsn, schema=pg.schema)
        h = await harness_factory(gw_federation, tmp_path, audit=plain)
        try:
            await h.client().ask(h.request("account_holder"))
        finally:
            await h.close()
        config = h.config()
        later = datetime.now(UTC) + timedelta(days=5 * 365)
        assert await run_retention_once(config, now=later) == []
        on_sqlite = dataclasses.replace(config, audit=AuditConfig(origin=ORIGIN))
        with pytest.raises(ConfigError, match="kek_path is not set"):
            await run_retention_once(on_sqlite, now=later)
