"""A police system upgrades a receipt with a witness-cosigned checkpoint and a consistency proof
(``FedgateClient.cosign_receipt``), verifiable offline against the registry's witness policy."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.witness import WitnessNode
from fedgate.client import FedgateClient
from fedgate.cosigned import verify_cosigned_receipt
from fedgate.errors import InvalidArgument, VerificationError
from fedgate.registry import Registry
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


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
