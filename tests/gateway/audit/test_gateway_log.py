"""The log a real gateway writes (answered, refused and forged requests) passes
``fedgate audit verify`` with every signature, and an exchange exports as evidence."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.keys import generate_signing_key, load_private_key
from fedgate.note import NoteSigner
from fedgate.pki import FederationLayout
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2
from fedgate.witness import Witness
from gateway.audit.cli import register
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.config import AuditConfig


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


async def _cosign_latest(federation: Path, db: Path) -> None:
    """Open the log again with the central bank's witness and wait for its cosignature."""
    layout = FederationLayout(federation)
    log_key = load_private_key(layout.signing_key(MemberId("gateway")))
    origin = AuditConfig().origin
    signer = NoteSigner(name=origin, private_key=log_key)
    witness = Witness(
        name="pboc.gz",
        private_key=load_private_key(layout.signing_key(MemberId("pboc.gz"))),
        state_path=db.parent / "witness-pboc",
        logs={origin: signer.verifier()},
    )
    log = await AuditLog.open(
        store=await open_sqlite_store(db, origin=origin),
        origin=origin,
        signer=signer,
        witnesses=[witness],
    )
    try:
        for _ in range(500):
            if log.latest_cosigned_size() == log.size:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not cosigned: {log.witness_errors}")
    finally:
        await log.close()


class TestTheGatewaysLog:
    async def test_verifies_with_every_signature_and_exports_evidence(
        self,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path)
        try:
            client = h.client()
            for _ in range(3):
                await client.ask(h.request("account_holder"))
            forged = h.request("account_holder")
            envelope = sign_envelope(
                forged.SerializeToString(),
                Signer.from_key(generate_signing_key()),
                Domain.REQUEST,
            )
            await h.refusal(envelope_pb2.SignedEnvelope.FromString(envelope.SerializeToString()))
            await h.refusal(b"\x0a\x05hello")
        finally:
            await h.close()
        db = h.state_dir / "audit.sqlite"
        code, out = run_audit(
            ["verify", "--db", str(db), "--federation", str(h.federation)], capsys
        )
        assert code == 0, out
        assert "3 allowed requests, 3 responses verified" in out
        assert "2 unverifiable" in out
        bundle = tmp_path / "evidence.json"
        code, out = run_audit(["export", "--db", str(db), "1", "--out", str(bundle)], capsys)
        assert code == 0, out
        assert [e["index"] for e in json.loads(bundle.read_text())["entries"]] == [0, 1]
        # This gateway has no witness: its checkpoints are below the witness policy.
        code, out = run_audit(
            ["verify-bundle", str(bundle), "--federation", str(h.federation)], capsys
        )
        assert code == 1
        assert "the witness policy requires 1 of 2 (pboc.gz, audit.office)" in out

        await _cosign_latest(h.federation, db)
        code, out = run_audit(["export", "--db", str(db), "1", "--out", str(bundle)], capsys)
        assert code == 0, out
        code, out = run_audit(
            ["verify-bundle", str(bundle), "--federation", str(h.federation)], capsys
        )
        assert code == 0, out
        assert "cosigned by pboc.gz" in out
