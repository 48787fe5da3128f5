"""``fedgate audit``: search, show, prove, export and verify-bundle on a real log."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedgate.audit_entry import AuditEntry, RequestLeg, encode_entry
from fedgate.auditverify import VerifyOptions, verify_log
from fedgate.errors import NotFound
from fedgate.evidence import log_verifiers, witness_verifiers
from fedgate.logs import mask
from fedgate.testing import json_times
from fedgate.tlogproof import parse_tlog_proof, verify_tlog_proof
from gateway.audit.cli import register
from gateway.audit.sqlite_store import SqliteDatabase

if TYPE_CHECKING:
    from conftest import LogFactory

ORIGIN = "fedgate.test/gateway/shard-0"


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def two_exchanges(logs: LogFactory) -> list[AuditEntry]:
    fed = logs.fed
    log = await logs.open(witnessed=True)
    entries: list[AuditEntry] = []
    for _ in range(2):
        request = fed.request()
        receipt = await log.append(request)
        response = fed.response(request, receipt.index)
        await log.append(response)
        entries += [request, response]
    await logs.cosigned(log)
    await log.close()
    return entries


class TestInspecting:
    async def test_search_finds_both_legs_by_subject(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        entries = await two_exchanges(logs)
        assert isinstance(entries[2], RequestLeg)
        subject = entries[2].subjects[0]
        code, out = run_audit(["search", *logs.source_args(), "--subject", subject], capsys)
        lines = out.splitlines()
        assert code == 0
        assert lines[0].startswith("INDEX")
        assert len(lines) == 3
        assert lines[1].split()[:2] == ["2", "request"]
        assert lines[2].split()[:2] == [
            "3",
            "response",
        ]
        code, out = run_audit(
            ["search", *logs.source_args(), "--member", "bank.icbc", "--json"], capsys
        )
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["index"] for r in rows] == [0, 1, 2, 3]
        assert rows[1]["leg"] == "response"
        assert rows[1]["case_number"] == rows[0]["case_number"]
        assert all(r["time"].endswith("+08:00") for r in rows)
        assert rows[0]["subjects"] == [mask(entries[0].subjects[0])]  # masked on a terminal
        assert entries[0].subjects[0] not in out

    async def test_show_decodes_the_signed_request(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        entries = await two_exchanges(logs)
        code, out = run_audit(["show", *logs.source_args(), "0", "--json"], capsys)
        view = json.loads(out)
        assert code == 0
        assert view["kind"] == "RequestLeg"
        times = json_times(view)  # received_at and the request's issued_at
        assert len(times) >= 2
        assert all(t.endswith("+08:00") for t in times), times
        assert view["envelope"]["body"]["requesting_agency"] == "police.gd.afc"
        officer = view["envelope"]["body"]["officer"]
        assert "****" in officer["id_number"]
        assert "****" in officer["phone"]
        first = entries[0]
        assert isinstance(first, RequestLeg)
        assert view["subjects"] == [mask(s) for s in first.subjects]
        code, out = run_audit(["show", *logs.source_args(), "1"], capsys)
        assert code == 0
        assert "ResponseLeg" in out
        assert "bank.icbc" in out
        with pytest.raises(NotFound, match="no entry 9"):
            run_audit(["show", *logs.source_args(), "9"], capsys)

    async def test_prove_prints_a_tlog_proof_that_verifies(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        leaves = [encode_entry(e) for e in await two_exchanges(logs)]
        code, out = run_audit(["prove", *logs.source_args(), "2"], capsys)
        assert code == 0
        verifier = logs.fed.log_signer().verifier()
        cp = verify_tlog_proof(parse_tlog_proof(out), leaves[2], verifier, origin=ORIGIN)
        assert cp.size == 4
        code, out = run_audit(["prove", *logs.source_args(), "2", "--size", "4"], capsys)
        assert verify_tlog_proof(parse_tlog_proof(out), leaves[2], verifier).size == 4
        # Size 3 was a batch's checkpoint: its receipt carried it, the store kept only the head.
        with pytest.raises(NotFound, match="keeps no checkpoint at size 3"):
            run_audit(["prove", *logs.source_args(), "2", "--size", "3"], capsys)


class TestEvidence:
    async def test_an_exported_bundle_verifies_with_public_keys_only(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        await two_exchanges(logs)
        bundle = tmp_path / "evidence.json"
        code, out = run_audit(["export", *logs.source_args(), "1", "--out", str(bundle)], capsys)
        assert code == 0
        assert "entries 0, 1" in out
        public = tmp_path / "public"
        (public / "trust").mkdir(parents=True)
        for name in ("trust/ca.pem", "trust/admin.pub", "registry.json"):
            (public / name).write_bytes((logs.fed.dir / name).read_bytes())
        code, out = run_audit(["verify-bundle", str(bundle), "--federation", str(public)], capsys)
        assert code == 0, out
        assert "signed by police.gd.afc" in out
        assert "bound to the request" in out

    async def test_an_altered_bundle_fails(
        self, logs: LogFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        await two_exchanges(logs)
        bundle = tmp_path / "evidence.json"
        run_audit(["export", *logs.source_args(), "0", "--out", str(bundle)], capsys)
        doc = json.loads(bundle.read_text())
        doc["entries"][0]["index"] = 1
        doc["entries"][0]["tlog_proof"] = doc["entries"][0]["tlog_proof"].replace(
            "index 0", "index 1"
        )
        bundle.write_text(json.dumps(doc))
        code, out = run_audit(
            ["verify-bundle", str(bundle), "--federation", str(logs.fed.dir)], capsys
        )
        assert code == 1
        assert "FAILED" in out
        assert "not proved included" in out


class TestVerifyInWorkers:
    async def test_worker_processes_agree_with_one_process(self, sqlite_logs: LogFactory) -> None:
        logs = sqlite_logs
        await two_exchanges(logs)
        registry = logs.fed.registry
        opener = functools.partial(SqliteDatabase, logs.db, origin=None, writer=False)
        reports = [
            verify_log(
                opener,
                log_keys=log_verifiers(registry, ORIGIN),
                witnesses=witness_verifiers(registry),
                options=VerifyOptions(federation=logs.fed.dir, jobs=jobs, chunk=1),
            )
            for jobs in (1, 2)
        ]
        assert all(r.ok for r in reports), [r.failure for r in reports]
        assert reports[0].signatures == reports[1].signatures
