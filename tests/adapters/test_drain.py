"""Graceful drain: a gateway instance told to stop (SIGTERM) turns NOT_SERVING, refuses new
exchanges, finishes the one in flight with both legs in its shard and its last checkpoint
signed, then exits 0.

The exchange in flight is held at the node by a loopback proxy that delays the node's answer
(bounded: 2 s), so the SIGTERM lands while the gateway waits for it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.up.instances import PgTarget
from fedgate.cli import main as fedgate_main
from fedgate.client import FedgateClient
from fedgate.errors import FedgateError
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from gateway.audit.pg_store import PgDatabase
from tests.adapters._scaleout import (
    POLICE,
    Cluster,
    TcpProxy,
    drop_schemas,
    node_requests,
    read_legs,
)

HOLD_S = 2.0


@pytest.fixture
async def slow_cluster(
    fed_dir: Path, agency_node: Any, tmp_path: Path, pg: Any
) -> AsyncIterator[tuple[Cluster, TcpProxy]]:
    node = await agency_node("bank.icbc")
    host, _, port = node.endpoint.rpartition(":")
    proxy = await TcpProxy((host, int(port))).start()
    target = PgTarget(dsn=pg.dsn, schema=pg.schema)
    cluster = Cluster(fed_dir, tmp_path, target, {"bank.icbc": proxy.address})
    try:
        yield cluster, proxy
    finally:
        await cluster.stop_all()
        await proxy.close()
        drop_schemas(target)


async def _health(fed_dir: Path, endpoint: str) -> int | None:
    """The instance's overall health status, or ``None`` when it does not answer."""
    creds = MemberCredentials.load(fed_dir, POLICE)
    async with grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


class TestDrain:
    async def test_sigterm_finishes_the_exchange_in_flight_then_exits_0(
        self, kit: Any, fed_dir: Path, tmp_path: Path, slow_cluster: tuple[Cluster, TcpProxy]
    ) -> None:
        cluster, proxy = slow_cluster
        instance = cluster.add(0)
        await cluster.start(instance)
        client = FedgateClient.from_federation(fed_dir, POLICE, endpoint=instance.endpoint)
        try:
            account = kit.hops_into("bank.icbc")[0].to_account
            warm = kit.request("account_holder")  # connects gateway and node (TLS) undelayed
            warm.account_holder.account_number = account
            await client.ask(warm, timeout=30)
            request = kit.request("account_holder")
            request.account_holder.account_number = account
            proxy.delay_s = HOLD_S
            in_flight = asyncio.create_task(client.ask(request, timeout=30))
            node_state = tmp_path / "state" / "bank.icbc"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while not any(r[0] == request.request_id for r in node_requests(node_state)):
                assert loop.time() < deadline, "the request never reached the node"
                assert not in_flight.done(), in_flight
                await asyncio.sleep(0.02)

            instance.proc.signal(signal.SIGTERM)
            # NOT_SERVING (or already closed to new connections) while the exchange finishes.
            seen: set[int | None] = set()
            while not in_flight.done() and loop.time() < deadline:
                seen.add(await _health(fed_dir, instance.endpoint))
                await asyncio.sleep(0.05)
            assert health_pb2.HealthCheckResponse.SERVING not in seen, seen
            assert seen, "the exchange finished before the drain could be observed"

            answer = await in_flight
            assert answer.response.request_id == request.request_id
            assert await instance.proc.wait(30) == 0, instance.proc.tail()

            # A new exchange is not taken any more.
            late = kit.request("account_holder")
            with pytest.raises(FedgateError) as refused:
                await client.ask(late, timeout=3)
            assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        finally:
            await client.close()

        legs = await asyncio.to_thread(read_legs, cluster.pg, cluster.origins)
        assert legs.orphans == []
        assert [leg.status for leg in legs.responses[request.request_id]] == ["ok"]
        assert [leg.status for leg in legs.responses[warm.request_id]] == ["ok"]
        assert late.request_id not in legs.requests
        # The last checkpoint covers the response leg the answer's receipt points at.
        db = PgDatabase(
            cluster.pg.dsn, origin=instance.origin, schema=cluster.pg.schema, writer=False
        )
        try:
            assert db.next_index() == answer.receipt.leaf_index + 1
        finally:
            db.close()
        verified = await asyncio.to_thread(
            fedgate_main,
            ["audit", "verify", "--pg", cluster.pg.dsn, "--schema", cluster.pg.schema,
             "--federation", str(fed_dir), "--quiet"],
        )  # fmt: skip
        assert verified == 0
