"""The log a real gateway writes (answered, refused and forged requests) passes
``fedgate audit verify`` with every signature, and an exchange exports as evidence."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.keys import generate_signing_key
from fedgate.v1 import envelope_pb2
from gateway.audit.cli import register


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


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
        code, out = run_audit(
            ["verify-bundle", str(bundle), "--federation", str(h.federation)], capsys
        )
        assert code == 0, out
