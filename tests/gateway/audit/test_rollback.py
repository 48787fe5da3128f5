"""Rollback is caught against what the witnesses cosigned: offline (``fedgate audit verify
--checkpoint`` / ``--from-witnesses``) and by the log at open, even when the database and its
state file were restored together."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from fedgate.errors import LogInconsistent
from fedgate.note import parse_note
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2_grpc
from fedgate.witness import WitnessServicer
from gateway.audit.cli import register
from gateway.audit.log import AuditLog

if TYPE_CHECKING:
    from conftest import LogFactory

PBOC = MemberId("pboc.gz")
ORIGIN = "fedgate.test/gateway/shard-0"


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def exchanges(logs: LogFactory, log: AuditLog, count: int) -> str:
    """Append ``count`` exchanges and wait for the witness; returns the cosigned note."""
    for _ in range(count):
        request = logs.fed.request()
        receipt = await log.append(request)
        await log.append(logs.fed.response(request, receipt.index))
    return await logs.cosigned(log)


def truncated_copy(db: Path, to: Path, size: int, head: str) -> Path:
    """A copy of the SQLite log cut exactly at size ``size``, with ``head`` (a cosigned note of
    that size) as its newest signed and cosigned checkpoint: a consistent, older log that
    verifies on its own."""
    to.mkdir()
    copy = to / db.name
    lite = sqlite3.connect(db)
    lite.execute(f"VACUUM INTO '{copy}'")
    lite.close()
    lite = sqlite3.connect(copy, isolation_level=None)
    for (name,) in lite.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        lite.execute(f"DROP TRIGGER {name}")
    for table, column in (
        ("leaves", "idx"),
        ("subjects", "idx"),
        ("checkpoints", "size"),
        ("cosigned", "size"),
    ):
        lite.execute(
            f"DELETE FROM {table} WHERE {column} {'>=' if column == 'idx' else '>'} ?", (size,)
        )
    lite.execute("UPDATE heads SET size = ?, note = ?", (size, head))
    lite.close()
    return copy


class TestOfflineVerification:
    async def test_a_copy_truncated_at_an_older_cosigned_checkpoint_fails_against_the_newest(
        self, sqlite_logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        logs = sqlite_logs
        log = await logs.open(witnessed=True)
        early = await exchanges(logs, log, 3)
        newest = await exchanges(logs, log, 2)
        await log.close()
        assert early != newest
        note = tmp_path / "newest.checkpoint"
        note.write_text(newest)
        copy = truncated_copy(logs.db, tmp_path / "copy", 6, early)
        fed = ["--federation", str(logs.fed.dir), "--quiet"]

        code, out = run_audit(["verify", "--db", str(copy), *fed], capsys)
        assert code == 0, out  # on its own, the older log is a perfectly good log
        code, out = run_audit(
            ["verify", "--db", str(copy), *fed, "--checkpoint", str(note)], capsys
        )
        assert code == 1
        assert "holds 6 entries but the witnesses" in out
        assert "cosigned a checkpoint of size 10: the log was rolled back or truncated" in out

        code, out = run_audit(
            ["verify", "--db", str(logs.db), *fed, "--checkpoint", str(note)], capsys
        )
        assert code == 0, out
        assert "witnessed    size 10 cosigned by the witnesses" in out

    async def test_a_checkpoint_file_below_the_witness_policy_is_refused(
        self, sqlite_logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        logs = sqlite_logs
        log = await logs.open(witnessed=True)
        cosigned = await exchanges(logs, log, 1)
        await log.close()
        note = tmp_path / "log-only.checkpoint"
        parsed = parse_note(cosigned)
        note.write_text(f"{parsed.text}\n" + parsed.signatures[0].line())  # the log's line only
        code, out = run_audit(
            ["verify", "--db", str(logs.db), "--federation", str(logs.fed.dir), "--quiet",
             "--checkpoint", str(note)], capsys,
        )  # fmt: skip
        assert code == 1
        assert "the witness policy requires 1 of 2" in out

    async def test_the_witnesses_are_asked_over_grpc(
        self, sqlite_logs: LogFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        logs = sqlite_logs
        log = await logs.open(witnessed=True)
        early = await exchanges(logs, log, 3)
        await exchanges(logs, log, 2)
        await log.close()
        copy = truncated_copy(logs.db, tmp_path / "copy", 6, early)
        # The central bank's witness, served over mTLS from its own state file.
        witness = logs.fed.witness(PBOC, logs.tmp / "witness-pboc")
        server = grpc.aio.server()
        audit_service_pb2_grpc.add_WitnessServiceServicer_to_server(
            WitnessServicer(witness), server
        )
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(MemberCredentials.load(logs.fed.dir, PBOC))
        )
        await server.start()
        try:
            ask = ["--federation", str(logs.fed.dir), "--quiet", "--from-witnesses",
                   "--witness-endpoint", f"pboc.gz=127.0.0.1:{port}",
                   "--witness-endpoint", "audit.office=127.0.0.1:1"]  # fmt: skip
            code, out = await asyncio.to_thread(
                run_audit, ["verify", "--db", str(copy), *ask], capsys
            )
            assert code == 1
            assert "witness pboc.gz cosigned a checkpoint of size 10" in out
            code, out = await asyncio.to_thread(
                run_audit, ["verify", "--db", str(logs.db), *ask], capsys
            )
            assert code == 0, out
        finally:
            await server.stop(None)


class TestAtOpen:
    async def test_a_database_restored_with_its_state_file_is_refused_by_the_witness_view(
        self, sqlite_logs: LogFactory, tmp_path: Path
    ) -> None:
        logs = sqlite_logs
        log = await logs.open(witnessed=True)
        await exchanges(logs, log, 2)
        await log.close()
        backup = tmp_path / "backup"
        backup.mkdir()
        for f in logs.tmp.glob("audit.sqlite*"):
            shutil.copy2(f, backup / f.name)
        log = await logs.open(witnessed=True)
        await exchanges(logs, log, 2)
        await log.close()
        for f in logs.tmp.glob("audit.sqlite*"):
            f.unlink()
        for f in backup.iterdir():
            shutil.copy2(f, logs.tmp / f.name)

        # The state file came back with the database, so on its own the log cannot tell...
        alone = await logs.open()
        assert alone.size == 4
        await alone.close()
        # ...but the witness remembers size 8.
        store = await logs.store()
        witness = logs.fed.witness(PBOC, logs.tmp / "witness-pboc")
        with pytest.raises(
            LogInconsistent, match=r"witness pboc\.gz cosigned a checkpoint of size 8"
        ):
            await AuditLog.open(
                store=store, origin=ORIGIN, signer=logs.fed.log_signer(), witnesses=[witness]
            )
        await store.close()
