"""The SDK over several gateway instances: the target it builds, and gRPC's round robin with
health checking and read retries against real mTLS servers on loopback.

Each "instance" is a gRPC server with the gateway's certificate, the standard health service
and ``GatewayService.GetOutcome`` answering with its own name (in ``refusal``), so the test sees
which instance took each call.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedgate.client import FedgateClient, gateway_service_config, gateway_target
from fedgate.commands._police import add_connection_options, open_client
from fedgate.errors import FedgateError, InvalidArgument
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.testing import free_port
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2

SERVICE = "fedgate.v1.GatewayService"


class TestTarget:
    def test_one_address_is_used_as_given(self) -> None:
        assert gateway_target("gw.example:20051") == "gw.example:20051"

    @pytest.mark.parametrize(
        "given",
        [
            "127.0.0.1:1,127.0.0.1:2",
            ["127.0.0.1:1", "127.0.0.1:2"],
            ["127.0.0.1:1,", "127.0.0.1:2"],
        ],
    )
    def test_several_become_one_ipv4_list(self, given: Any) -> None:
        assert gateway_target(given) == "ipv4:127.0.0.1:1,127.0.0.1:2"

    def test_host_names_are_resolved_once(self) -> None:
        assert gateway_target("localhost:5,127.0.0.1:6") in ("ipv4:127.0.0.1:5,127.0.0.1:6",)

    def test_ipv6(self) -> None:
        assert gateway_target("[::1]:5,[::1]:6") == "ipv6:[::1]:5,[::1]:6"

    @pytest.mark.parametrize(
        ("given", "match"),
        [
            ("", "no address"),
            ("127.0.0.1:1,nocolon", "'nocolon' is not HOST:PORT"),
            ("127.0.0.1:1,127.0.0.1:x", "is not HOST:PORT"),
            ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
            ("127.0.0.1:1,no-such-host.invalid:2", "does not resolve"),
        ],
    )
    def test_refused(self, given: str, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            gateway_target(given)

    def test_service_config_balances_checks_health_and_retries_only_reads(self) -> None:
        config = json.loads(gateway_service_config())
        assert config["loadBalancingConfig"] == [{"round_robin": {}}]
        assert config["healthCheckConfig"] == {"serviceName": SERVICE}
        retried = {n["method"] for m in config["methodConfig"] for n in m["name"]}
        assert retried == {"GetTicket", "GetOutcome", "WatchTicket"}
        assert "Submit" not in retried
        assert "FanOut" not in retried


class _Instance:
    def __init__(self, name: str, creds: MemberCredentials) -> None:
        self.name = name
        self.port = free_port()
        self.server = grpc.aio.server()
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

        async def get_outcome(request: Any, context: Any) -> Any:
            return gateway_service_pb2.GetOutcomeResponse(
                request_id=request.request_id, refusal=self.name
            )

        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "GetOutcome": grpc.unary_unary_rpc_method_handler(
                            get_outcome,
                            request_deserializer=gateway_service_pb2.GetOutcomeRequest.FromString,
                            response_serializer=gateway_service_pb2.GetOutcomeResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        self.server.add_secure_port(f"127.0.0.1:{self.port}", server_credentials(creds))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        await self.serving(True)

    async def serving(self, yes: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if yes
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(SERVICE, status)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fed")
    init_federation(directory)
    return directory


@pytest.fixture
async def instances(fed: Path) -> AsyncIterator[list[_Instance]]:
    creds = MemberCredentials.load(fed, MemberId("gateway"))
    running = [_Instance(name, creds) for name in ("a", "b", "c")]
    for instance in running:
        await instance.start()
    yield running
    for instance in running:
        await instance.server.stop(0)


async def _who(client: FedgateClient, calls: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for i in range(calls):
        reply, _ = await client.get_outcome(f"r{i}", timeout=5)
        seen[reply.refusal] += 1
    return seen


async def _until(client: FedgateClient, expected: set[str], *, tries: int = 200) -> Counter[str]:
    """Call until the last 12 calls went only to ``expected`` (bounded)."""
    for _ in range(tries):
        seen = await _who(client, 12)
        if set(seen) == expected:
            return seen
    raise AssertionError(f"calls never settled on {expected}: {seen}")


class TestBalancing:
    async def test_round_robin_leaves_out_an_instance_not_serving(
        self, fed: Path, instances: list[_Instance]
    ) -> None:
        client = FedgateClient(
            credentials=MemberCredentials.load(fed, MemberId("police.gd.afc")),
            registry=Registry.load_dir(fed),
            gateway_endpoint=[i.endpoint for i in instances],
        )
        try:
            await _until(client, {"a", "b", "c"})
            seen = await _who(client, 12)  # all three ready: round robin, evenly
            assert seen == Counter({"a": 4, "b": 4, "c": 4}), seen
            await instances[1].serving(False)  # draining
            await _until(client, {"a", "c"})
            await instances[1].serving(True)
            await _until(client, {"a", "b", "c"})
        finally:
            await client.close()

    async def test_reads_carry_on_when_an_instance_goes_away(
        self, fed: Path, instances: list[_Instance]
    ) -> None:
        client = FedgateClient(
            credentials=MemberCredentials.load(fed, MemberId("police.gd.afc")),
            registry=Registry.load_dir(fed),
            gateway_endpoint=",".join(i.endpoint for i in instances),
        )
        try:
            await _until(client, {"a", "b", "c"})
            await instances[0].server.stop(0)
            # Every call still answered (retried elsewhere, or never sent to the dead one).
            seen = await _who(client, 30)
            assert sum(seen.values()) == 30
            await _until(client, {"b", "c"})
            for instance in instances[1:]:
                await instance.server.stop(0)
            with pytest.raises(FedgateError) as gone:
                await client.get_outcome("r", timeout=3)
            assert gone.value.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        finally:
            await client.close()


class TestCliAddresses:
    def _args(self, fed: Path, *addresses: str) -> Any:
        parser = argparse.ArgumentParser()
        add_connection_options(parser, timeout=None)
        flags = [f for a in addresses for f in ("--gateway", a)]
        return parser.parse_args(["--federation", str(fed), *flags])

    async def test_repeated_and_comma_separated(self, fed: Path) -> None:
        client = open_client(self._args(fed, "127.0.0.1:1", "127.0.0.1:2,127.0.0.1:3"))
        try:
            assert client.endpoints == ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
        finally:
            await client.close()

    async def test_a_bad_address_is_named(self, fed: Path) -> None:
        with pytest.raises(InvalidArgument, match="'nowhere' is not HOST:PORT"):
            open_client(self._args(fed, "127.0.0.1:1", "nowhere"))
