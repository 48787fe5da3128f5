"""The business-rule state is a projection of the audit log: whatever happens to a state file,
a restarted gateway still refuses a third stop-payment on an account stopped twice."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fedgate.client import FedgateClient
from fedgate.errors import RuleViolated
from fedgate.testing import free_port
from fedgate.types import MemberId
from fedgate.v1 import request_pb2
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway

Start = Callable[[], Awaitable[tuple[Gateway, FedgateClient]]]


@pytest.fixture
async def start_gateway(
    fed_dir: Path, bank_node: Any, tmp_path: Path
) -> AsyncIterator[tuple[Start, GatewayConfig]]:
    listen = f"127.0.0.1:{free_port()}"
    node = await bank_node("bank.icbc", gateway_endpoint=listen)
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=listen, grace_period_s=1.0),
        routing=RoutingConfig(timeout_s=5.0, endpoints={MemberId("bank.icbc"): node.endpoint}),
    )
    running: list[tuple[Gateway, FedgateClient]] = []

    async def start() -> tuple[Gateway, FedgateClient]:
        gateway = await Gateway.start(config)
        client = FedgateClient.from_federation(
            fed_dir, MemberId("police.gd.afc"), endpoint=gateway.endpoint
        )
        running.append((gateway, client))
        return gateway, client

    yield start, config
    for gateway, client in running:
        await client.close()
        await gateway.stop(0.5)


async def _two_stops(kit: Any, start: Start) -> tuple[Gateway, FedgateClient, Any]:
    gateway, client = await start()
    _, hop = kit.hop_into("bank.icbc")
    for _ in range(2):
        answer = await client.ask(kit.stop_request(hop))
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
    return gateway, client, hop


class TestRulesRebuiltFromTheLog:
    async def test_third_stop_refused_after_restart_without_any_state_file(
        self, kit: Any, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        gateway, client, hop = await _two_stops(kit, start)
        await client.close()
        await gateway.stop(0.5)
        for stale in config.pipeline.state_dir.glob("rules.sqlite*"):
            stale.unlink()

        _, client = await start()
        with pytest.raises(RuleViolated, match=r"stop_payment\.max_two_per_account"):
            await client.ask(kit.stop_request(hop))

    async def test_third_stop_refused_after_restart_with_a_locked_state_file(
        self, kit: Any, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        gateway, client, hop = await _two_stops(kit, start)
        await client.close()
        await gateway.stop(0.5)
        # Another process holds the old state file locked (and it is empty): the gateway neither
        # waits for it nor believes it.
        path = config.pipeline.state_dir / "rules.sqlite"
        path.unlink(missing_ok=True)
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            _, client = await start()
            with pytest.raises(RuleViolated, match=r"stop_payment\.max_two_per_account"):
                await client.ask(kit.stop_request(hop))
        finally:
            locker.close()


class TestWitnessPolicyAtStartUp:
    async def test_a_gateway_whose_witnesses_cannot_meet_the_policy_says_so(
        self, start_gateway: tuple[Start, GatewayConfig], caplog: pytest.LogCaptureFixture
    ) -> None:
        start, _ = start_gateway
        with caplog.at_level(logging.WARNING, logger="gateway.server"):
            await start()
        assert "cannot meet the registry's witness policy 1 of 2" in caplog.text
