"""A running federation for workflow tests: the real gateway in front of a real node for every
bank and carrier of a world, over loopback mTLS, with the police client.

``silent`` members get an endpoint that accepts connections and never answers (a node that
hangs); ``down`` members get an endpoint where nothing listens. ``Live.stop_node`` and
``Live.start_node`` take a node down and bring it back on the same port mid-test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adapters.bank.node import BankNode
from adapters.carrier.node import CarrierNode
from adapters.config import ActionMode, NodeConfig
from adapters.node import AgencyNode
from adapters.synth import World
from fedgate.client import FedgateClient
from fedgate.testing import free_port
from fedgate.types import MemberId
from gateway.config import (
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    TicketsConfig,
)
from gateway.server import Gateway

POLICE = MemberId("police.gd.afc")


@dataclass
class Live:
    fed_dir: Path
    state: Path
    world: World
    gateway: Gateway
    police: FedgateClient
    nodes: dict[str, AgencyNode]
    ports: dict[str, int]
    _hangers: list[_Hanger] = field(default_factory=list)
    bank_transactions: ActionMode = ActionMode.AUTOMATIC

    def node_config(self, member: str) -> NodeConfig:
        return NodeConfig(
            member_id=MemberId(member),
            federation_dir=self.fed_dir,
            state_dir=self.state / "nodes" / member,
            listen=f"127.0.0.1:{self.ports[member]}",
            staff=(f"{member.split('.')[1]}.zhang",),
            backend_path=self.world.database(member),
            default_mode=ActionMode.AUTOMATIC,
            modes=(
                {"transactions": self.bank_transactions}
                if member.startswith("bank.")
                else {"call_records": ActionMode.AUTOMATIC}
            ),
            monitor_poll_s=3600.0,
            # Reports and appeals the node sends go to this federation's gateway.
            gateway_endpoint=self.gateway.endpoint,
        )

    async def start_node(self, member: str) -> None:
        kind = BankNode if member.startswith("bank.") else CarrierNode
        node: AgencyNode = kind.open(self.node_config(member))
        await node.start()
        self.nodes[member] = node

    async def stop_node(self, member: str) -> None:
        await self.nodes.pop(member).stop(grace=None)


class _Hanger:
    """Accepts connections and never answers; closes them all on ``close``."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await reader.read()  # hold the connection open until the peer goes

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0)
        await self.server.wait_closed()


@asynccontextmanager
async def live_federation(
    fed_dir: Path,
    world: World,
    state: Path,
    *,
    silent: tuple[str, ...] = (),
    down: tuple[str, ...] = (),
    timeout_s: float = 5.0,
    quotas: dict[str, int] | None = None,
    console: bool = False,
    bank_transactions: ActionMode = ActionMode.AUTOMATIC,
) -> AsyncIterator[Live]:
    members = (*world.banks, *world.carriers)
    live: Live | None = None
    try:
        ports = {m: free_port() for m in members}
        gateway_port = free_port()
        hangers: list[_Hanger] = []
        for member in silent:
            hanger = _Hanger()
            hanger.server = await asyncio.start_server(hanger.handle, "127.0.0.1", ports[member])
            hangers.append(hanger)
        gateway = await Gateway.start(
            GatewayConfig(
                federation=FederationConfig(dir=fed_dir),
                pipeline=PipelineConfig(state_dir=state / "gateway"),
                server=ServerConfig(listen=f"127.0.0.1:{gateway_port}", grace_period_s=1.0),
                routing=RoutingConfig(
                    timeout_s=timeout_s,
                    max_attempts=2,
                    breaker_failures=1000,
                    endpoints={MemberId(m): f"127.0.0.1:{p}" for m, p in ports.items()},
                ),
                quotas=quotas or {"officer_burst": 2000, "officer_per_minute": 6000},
                tickets=TicketsConfig(poll_interval_s=0.05),
                **({"console": ConsoleConfig(listen="127.0.0.1:0")} if console else {}),
            )
        )
        police = FedgateClient.from_federation(fed_dir, POLICE, endpoint=gateway.endpoint)
        live = Live(fed_dir, state, world, gateway, police, {}, ports, hangers, bank_transactions)
        for member in members:
            if member not in silent and member not in down:
                await live.start_node(member)
        yield live
    finally:
        if live is not None:
            await live.police.close()
            await live.gateway.stop(0.5)
            for member in list(live.nodes):
                await live.stop_node(member)
            for hanger in live._hangers:
                await hanger.close()
