"""Revocation takes effect everywhere at once (issue 10, item 1).

A registry reload swaps the one ``TrustHolder`` every gateway component reads: an answer signed
with an agency key revoked while the request was in flight is refused at the response check
(``AGENCY_FAULT`` naming ``KEY_NOT_VALID``), logged as a response leg, never countersigned; the
log still passes ``fedgate audit verify``; a revoked member is refused at once.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedgate.audit_entry import ResponseLeg
from fedgate.errors import AgencyFault, MemberRefused
from fedgate.pki import revoke_key, revoke_member
from fedgate.registry import Registry
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from gateway.audit.cli import register

BANK = MemberId("bank.icbc")
POLICE_GZ = MemberId("police.gz.unit")


def run_audit(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    code: int = args.func(args)
    out = capsys.readouterr()
    return code, out.out + out.err


class TestTrustHolder:
    def test_swap_refuses_an_older_serial(self, gw_federation: Path) -> None:
        registry = Registry.load_dir(gw_federation)
        holder = TrustHolder(registry)
        older = Registry(registry.serial - 1, registry.issued_at, registry.entries)
        assert not holder.swap(older)
        assert holder() is registry
        newer = Registry(registry.serial + 1, registry.issued_at, registry.entries)
        assert holder.swap(newer)
        assert holder.registry is newer

    def test_reload_keeps_the_current_one_when_the_file_does_not_verify(
        self, gw_federation: Path, tmp_path: Path
    ) -> None:
        import shutil

        fed = tmp_path / "fed"
        shutil.copytree(gw_federation, fed)
        holder = TrustHolder(Registry.load_dir(fed))
        before = holder.registry
        (fed / "registry.json").write_text('{"format": "x"}\n')
        assert not holder.reload(fed)
        assert holder.registry is before


class TestRevocationInFlight:
    async def test_an_answer_signed_with_a_key_revoked_in_flight_is_refused(
        self,
        harness_factory: Callable[..., Any],
        gw_federation: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path)
        try:
            client = h.client()
            assert (await client.submit(h.request())).answer is not None
            gz = h.client(POLICE_GZ)
            assert (await gz.submit(h.request(requesting_agency=POLICE_GZ))).answer is not None
            h.node.mode, h.node.delay_s = "slow", 1.0
            h.node.arrived.clear()
            in_flight = [
                asyncio.ensure_future(client.submit(h.request())),
                asyncio.ensure_future(gz.submit(h.request(requesting_agency=POLICE_GZ))),
            ]
            await asyncio.wait_for(h.node.arrived.wait(), timeout=5)
            # While both requests are at the bank: revoke the bank's key and the city unit.
            registry = h.gateway.pipeline.registry
            bank_key = registry.member(BANK).signing_keys[-1].key_id
            revoke_key(h.federation, bank_key, reason="key compromised (test)")
            revoke_member(h.federation, POLICE_GZ, reason="unit dissolved (test)")
            assert h.gateway.reload_registry()
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            for result in results:
                assert isinstance(result, AgencyFault), result
                assert result.code == grpc.StatusCode.UNAVAILABLE
                assert result.reason == "AGENCY_FAULT"
                assert "KEY_NOT_VALID" in result.message
                assert bank_key in result.message
            entries = await h.entries()
            faults = [e for e in entries if isinstance(e, ResponseLeg)][-2:]
            assert [(e.responder, e.status) for e in faults] == [(BANK, "node_fault")] * 2
            assert all("KEY_NOT_VALID" in e.detail for e in faults)
            # The revoked member is refused at once, by the same registry.
            h.node.mode = "ok"
            refusal = await h.refusal(
                h.sign(h.request(requesting_agency=POLICE_GZ), POLICE_GZ), member=POLICE_GZ
            )
            assert (refusal.code, refusal.error.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                MemberRefused.reason,
            )
            # Every component reads the same, new registry.
            assert h.gateway.pipeline.trust.registry.revocation_of(POLICE_GZ) is not None
            assert h.gateway.pipeline.registry.revocation_of(bank_key) is not None
        finally:
            await h.close()
        db = h.state_dir / "audit.sqlite"
        code, out = run_audit(
            ["verify", "--db", str(db), "--federation", str(h.federation)], capsys
        )
        assert code == 0, out

    async def test_an_older_registry_file_is_not_taken(
        self, harness_factory: Callable[..., Any], gw_federation: Path, tmp_path: Path
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path)
        try:
            before = (h.federation / "registry.json").read_bytes()
            revoke_member(h.federation, MemberId("bank.abc"), reason="test")
            assert h.gateway.reload_registry()
            serial = h.gateway.pipeline.registry.serial
            (h.federation / "registry.json").write_bytes(before)
            assert not h.gateway.reload_registry()
            assert h.gateway.pipeline.registry.serial == serial
        finally:
            await h.close()
