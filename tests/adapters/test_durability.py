"""A node process killed with SIGKILL loses nothing: queued and claimed queries, claims and
answers are all there after a restart (``python -m adapters`` in a subprocess)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.config import ActionMode, NodeConfig
from fedgate.testing import free_port
from fedgate.types import MemberId
from fedgate.v1 import request_pb2, staff_service_pb2, ticket_pb2

ZHANG = (("x-fedgate-staff", "icbc.zhang"),)


class NodeProcess:
    def __init__(self, config_file: Path, log: Path) -> None:
        self.config_file = config_file
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, kit: Any, endpoint: str) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters", "--config", str(self.config_file), stderr=log
            )
        health = health_pb2_grpc.HealthStub(kit.link(endpoint).channel)
        for _ in range(150):
            if self.proc.returncode is not None:
                raise AssertionError(f"node exited: {self.log.read_text()}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"node did not come up: {self.log.read_text()}")

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 10)


@pytest.fixture
async def node_process(
    kit: Any, fed_dir: Path, world: Any, tmp_path: Path
) -> AsyncIterator[tuple[NodeProcess, str]]:
    endpoint = f"127.0.0.1:{free_port()}"
    config = NodeConfig(
        member_id=MemberId("bank.icbc"),
        federation_dir=fed_dir,
        state_dir=tmp_path / "state",
        listen=endpoint,
        staff=("icbc.zhang", "icbc.li"),
        backend_path=world.database("bank.icbc"),
        modes={"account_holder": ActionMode.MANUAL, "transactions": ActionMode.MANUAL},
    )
    config_file = tmp_path / "node.toml"
    config_file.write_text(config.to_toml(), encoding="utf-8")
    process = NodeProcess(config_file, tmp_path / "node.log")
    yield process, endpoint
    if process.proc is not None and process.proc.returncode is None:
        process.proc.kill()
        await process.proc.wait()


class TestQueueDurability:
    async def test_sigkill_with_queries_waiting_and_claimed_loses_nothing(
        self, kit: Any, node_process: Any
    ) -> None:
        process, endpoint = node_process
        await process.start(kit, endpoint)
        gateway = kit.link(endpoint)
        staff = kit.link(endpoint, as_member="bank.icbc").staff
        envelopes = []
        for action in ("account_holder", "transactions", "account_holder"):
            envelope = kit.sign(kit.request(action))
            reply = await gateway.handle(envelope)
            assert reply.HasField("queued")
            envelopes.append((envelope, reply))
        automatic = kit.sign(kit.request("login_records"))
        answered = await gateway.handle(automatic)
        ids = [kit_request_id(e) for e, _ in envelopes]
        await staff.ClaimQueueItem(
            staff_service_pb2.ClaimQueueItemRequest(request_id=ids[1]), metadata=ZHANG
        )

        assert await process.signal(signal.SIGKILL) == -signal.SIGKILL
        await process.start(kit, endpoint)

        listed = await staff.ListQueue(staff_service_pb2.ListQueueRequest(), metadata=ZHANG)
        states = {i.request_id: (i.state, i.claimed_by) for i in listed.items}
        assert states == {
            ids[0]: (ticket_pb2.TICKET_STATE_WAITING, ""),
            ids[1]: (ticket_pb2.TICKET_STATE_CLAIMED, "icbc.zhang"),
            ids[2]: (ticket_pb2.TICKET_STATE_WAITING, ""),
        }
        for envelope, reply in envelopes:
            again = await gateway.handle(envelope)
            assert again.SerializeToString() == reply.SerializeToString()
        again = await gateway.handle(automatic)
        assert again.response.SerializeToString() == answered.response.SerializeToString()

        rejected = await staff.RejectQueueItem(
            staff_service_pb2.RejectQueueItemRequest(request_id=ids[1], reason="查无此案"),
            metadata=ZHANG,
        )
        kit.verify_signed(envelopes[1][0], rejected.response)
        assert await process.signal(signal.SIGTERM) == 0


def kit_request_id(envelope: Any) -> str:
    return request_pb2.Request.FromString(envelope.body).request_id
