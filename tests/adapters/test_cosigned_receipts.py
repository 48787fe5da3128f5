"""A police system upgrades a receipt with a witness-cosigned checkpoint and a consistency proof
(``FedgateClient.cosign_receipt``), verifiable offline against the registry's witness policy."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.witness import WitnessNode
from fedgate.cli import main as cli_main
from fedgate.client import FedgateClient
from fedgate.commands._sent import SentStore
from fedgate.cosigned import verify_cosigned_receipt
from fedgate.errors import InvalidArgument, VerificationError
from fedgate.registry import Registry
from fedgate.testing import free_port
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2
from gateway.config import (
    AuditConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway

PBOC = MemberId("pboc.gz")


def _free() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
async def witnessed(
    fed_dir: Path, bank_node: Any, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, FedgateClient]]:
    listen = _free()
    node = await bank_node("bank.icbc", gateway_endpoint=listen)
    origin = AuditConfig().origin
    witness = WitnessNode(
        federation=fed_dir, member=PBOC, state=tmp_path / "pboc", origins=[origin], listen=_free()
    )
    await witness.start()
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=listen, grace_period_s=1.0),
        audit=AuditConfig(witnesses=(PBOC,)),
        routing=RoutingConfig(
            timeout_s=5.0,
            endpoints={MemberId("bank.icbc"): node.endpoint, PBOC: witness.listen},
        ),
    )
    gateway = await Gateway.start(config)
    client = FedgateClient.from_federation(
        fed_dir, MemberId("police.gd.afc"), endpoint=gateway.endpoint
    )
    try:
        yield gateway, client
    finally:
        await client.close()
        await gateway.stop(0.5)
        await witness.stop(0)


class TestCosignedReceipts:
    async def test_a_receipt_is_upgraded_and_verifies_against_the_witness_policy(
        self, kit: Any, fed_dir: Path, witnessed: tuple[Gateway, FedgateClient]
    ) -> None:
        _, client = witnessed
        registry = Registry.load_dir(fed_dir)
        _, hop = kit.hop_into("bank.icbc")
        answer = await client.ask(kit.stop_request(hop))
        # As returned by the gateway: proved against the log's checkpoint, not yet witnessed.
        assert not answer.receipt.cosigned_checkpoint
        with pytest.raises(VerificationError, match="no cosigned checkpoint"):
            verify_cosigned_receipt(answer.receipt, registry)

        upgraded = await client.cosign_receipt(answer.receipt, wait_s=5.0)
        proved = verify_cosigned_receipt(upgraded, registry)
        assert proved.witnesses == ("pboc.gz",)
        assert proved.checkpoint.size >= upgraded.tree_size

    async def test_a_tampered_upgrade_is_refused(
        self, kit: Any, fed_dir: Path, witnessed: tuple[Gateway, FedgateClient]
    ) -> None:
        gateway, client = witnessed
        registry = Registry.load_dir(fed_dir)
        _, hop = kit.hop_into("bank.icbc")
        first = await client.ask(kit.stop_request(hop))
        await client.ask(kit.stop_request(hop))  # the log grows past the first receipt
        await gateway.audit.cosigned_covering(gateway.audit.size, timeout_s=5.0)
        upgraded = await client.cosign_receipt(first.receipt, wait_s=5.0)
        assert len(upgraded.cosigned_consistency_proof) > 0

        bad_proof = envelope_pb2.AuditReceipt()
        bad_proof.CopyFrom(upgraded)
        flipped = bytearray(bad_proof.cosigned_consistency_proof[0])
        flipped[0] ^= 1
        bad_proof.cosigned_consistency_proof[0] = bytes(flipped)
        with pytest.raises(VerificationError, match="not consistent with the cosigned one"):
            verify_cosigned_receipt(bad_proof, registry)

        bad_cosignature = envelope_pb2.AuditReceipt()
        bad_cosignature.CopyFrom(upgraded)
        lines = bad_cosignature.cosigned_checkpoint.split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("— pboc.gz "))
        name, encoded = lines[at].rsplit(" ", 1)
        raw = bytearray(base64.b64decode(encoded))
        raw[-1] ^= 1
        lines[at] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
        bad_cosignature.cosigned_checkpoint = "\n".join(lines)
        with pytest.raises(VerificationError, match="does not verify"):
            verify_cosigned_receipt(bad_cosignature, registry)

    async def test_a_tree_size_beyond_the_log_is_a_clear_invalid_argument(
        self, kit: Any, witnessed: tuple[Gateway, FedgateClient]
    ) -> None:
        gateway, client = witnessed
        _, hop = kit.hop_into("bank.icbc")
        answer = await client.ask(kit.stop_request(hop))
        for size in (0, gateway.audit.size + 5):
            beyond = envelope_pb2.AuditReceipt()
            beyond.CopyFrom(answer.receipt)
            beyond.tree_size = size
            with pytest.raises(InvalidArgument, match="tree_size must be between 1 and"):
                await client.cosign_receipt(beyond, wait_s=0.1)


class TestKeptReceiptsAreUpgraded:
    """``fedgate answers``: a receipt kept before the witnesses cosigned is upgraded in place,
    by ``answers upgrade`` and by ``answers show`` itself, and the upgrade is checked again
    every time the kept answer is read."""

    async def test_upgrade_then_show(
        self,
        kit: Any,
        fed_dir: Path,
        tmp_path: Path,
        witnessed: tuple[Gateway, FedgateClient],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        gateway, client = witnessed
        store = SentStore(tmp_path / "sent")
        kept: list[str] = []
        for _ in range(2):
            _, hop = kit.hop_into("bank.icbc")
            envelope = client.sign(kit.stop_request(hop))
            submitted = await client.submit(envelope)
            assert submitted.answer is not None
            assert not submitted.answer.receipt.cosigned_checkpoint
            request_id = submitted.answer.response.request_id
            store.save(request_id, envelope)
            store.save_answer(request_id, submitted.answer.signed)
            kept.append(request_id)
        await gateway.audit.cosigned_covering(gateway.audit.size, timeout_s=5.0)
        monkeypatch.setenv("FEDGATE_FEDERATION", str(fed_dir))
        monkeypatch.setenv("FEDGATE_MEMBER", "police.gd.afc")
        connection = ("--endpoint", gateway.endpoint, "--sent-dir", str(store.directory))

        async def fedgate(*argv: str) -> tuple[int, str]:
            capsys.readouterr()
            code = await asyncio.to_thread(cli_main, list(argv))
            return code, capsys.readouterr().out

        code, out = await fedgate("answers", "upgrade", kept[0], *connection, "--json")
        assert code == 0, out
        assert json.loads(out)["receipts"] == [
            {"request_id": kept[0], "state": "upgraded", "detail": "pboc.gz"}
        ]
        upgraded = store.load_answer(kept[0])
        assert upgraded is not None
        assert upgraded.receipt.cosigned_checkpoint
        verify_cosigned_receipt(upgraded.receipt, Registry.load_dir(fed_dir))

        # `show` upgrades the other one by itself, and prints the witness with China time.
        code, out = await fedgate("answers", "show", kept[1], *connection, "--json")
        assert code == 0, out
        witnesses = json.loads(out)["verification"]["witnesses"]
        assert [(w["name"], w["verified"]) for w in witnesses] == [("pboc.gz", True)]
        assert witnesses[0]["cosigned_at"].endswith("+08:00")
        second = store.load_answer(kept[1])
        assert second is not None
        assert second.receipt.cosigned_checkpoint
        code, out = await fedgate("answers", "upgrade", *connection)
        assert code == 0
        assert "already cosigned" in out

        # A kept upgrade changed on disk fails verification like any other change.
        lines = second.receipt.cosigned_checkpoint.split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("— pboc.gz "))
        name, encoded = lines[at].rsplit(" ", 1)
        raw = bytearray(base64.b64decode(encoded))
        raw[-1] ^= 1
        lines[at] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
        second.receipt.cosigned_checkpoint = "\n".join(lines)
        store.save_answer(kept[1], second)
        code, out = await fedgate("answers", "show", kept[1], *connection)
        assert code == 5
