"""Crash safety: SIGKILL a process in the middle of a stream of appends; the log still verifies
and every receipt handed out before the kill is still provable."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from fedgate.auditverify import verify_log
from fedgate.checkpoint import open_checkpoint
from fedgate.evidence import log_verifiers
from fedgate.merkle import verify_consistency
from fedgate.pki import FederationLayout
from fedgate.tlogproof import parse_tlog_proof, verify_tlog_proof
from fedgate.types import MemberId
from gateway.audit.pg_store import PgDatabase
from gateway.audit.sqlite_store import SqliteDatabase

if TYPE_CHECKING:
    from conftest import LogFactory

ORIGIN = "fedgate.test/gateway/shard-0"
RECEIPTS_BEFORE_KILL = 150
ROOT = Path(__file__).resolve().parents[3]

APPENDER = textwrap.dedent(
    """
    import asyncio, base64, json, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from fedgate.audit_entry import EventEntry, encode_entry
    from fedgate.keys import load_private_key
    from fedgate.note import NoteSigner
    from gateway.audit.log import AuditLog
    from gateway.audit.pg_store import open_pg_store
    from gateway.audit.sqlite_store import open_sqlite_store

    kind, where, schema, state, key, origin = sys.argv[1:7]

    async def main():
        if kind == "sqlite":
            store = await open_sqlite_store(Path(where), origin=origin)
        else:
            store = await open_pg_store(where, origin=origin, schema=schema, state_path=Path(state))
        signer = NoteSigner(name=origin, private_key=load_private_key(Path(key)))
        log = await AuditLog.open(store=store, origin=origin, signer=signer)

        async def appender(k):
            n = 0
            while True:
                entry = EventEntry(kind="tick", actor=f"worker-{k}", member="bank.icbc",
                                   at=datetime.now(UTC), detail=(("n", str(n)),))
                r = await log.append(entry)
                line = {"index": r.index, "size": r.tree_size, "tlog": r.tlog_proof,
                        "leaf": base64.b64encode(encode_entry(entry)).decode()}
                sys.stdout.write(json.dumps(line) + "\\n")
                sys.stdout.flush()
                n += 1

        await asyncio.gather(*(appender(k) for k in range(8)))

    asyncio.run(main())
    """
)


def _append_then_kill(argv: list[str]) -> list[str]:
    """Run the appender, SIGKILL it after RECEIPTS_BEFORE_KILL receipts; every line it wrote."""
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if len(lines) >= RECEIPTS_BEFORE_KILL:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            lines += proc.stdout.readlines()
        finally:
            proc.kill()
    return lines


class TestCrashSafety:
    async def test_a_killed_appender_leaves_a_log_that_verifies_and_proves_its_receipts(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        script = tmp_path / "appender.py"
        script.write_text(APPENDER)
        key = FederationLayout(logs.fed.dir).signing_key(MemberId("gateway"))
        if logs.kind == "sqlite":
            where, schema = str(logs.db), ""
        else:
            assert logs.pg is not None
            where, schema = logs.pg.dsn, logs.pg.schema
        args = [logs.kind, where, schema, str(logs.state), str(key), ORIGIN]
        lines = await asyncio.to_thread(_append_then_kill, [str(script), *args])
        receipts = []
        for line in lines:
            try:
                receipts.append(json.loads(line))
            except json.JSONDecodeError:
                assert line is lines[-1]  # only a line cut by the kill may be partial
        assert len(receipts) >= RECEIPTS_BEFORE_KILL

        log = await logs.open()  # reopens: not rolled back, consistent with its state file
        verifier = logs.fed.log_signer().verifier()
        latest = open_checkpoint(log.latest_checkpoint(), verifier)
        for r in receipts:
            cp = verify_tlog_proof(
                parse_tlog_proof(r["tlog"]), base64.b64decode(r["leaf"]), verifier, origin=ORIGIN
            )
            assert cp.size == r["size"] <= log.size
            assert await log.get_entry(r["index"]) == base64.b64decode(r["leaf"])
            proof = log.consistency_proof(cp.size, latest.size)
            verify_consistency(cp.size, latest.size, proof, cp.root_hash, latest.root_hash)
        await log.close()

        if logs.kind == "sqlite":
            report = verify_log(
                lambda: SqliteDatabase(logs.db, origin=None, writer=False),
                log_keys=log_verifiers(logs.fed.registry, ORIGIN),
            )
        else:
            assert logs.pg is not None
            target = logs.pg
            report = verify_log(
                lambda: PgDatabase(target.dsn, origin=ORIGIN, schema=target.schema, writer=False),
                log_keys=log_verifiers(logs.fed.registry, ORIGIN),
            )
        assert report.ok, report.failure
        assert report.entries >= len(receipts)
