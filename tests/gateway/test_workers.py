"""Worker processes (``gateway.workers``): the plan, each worker's config, and a real
supervisor running two workers on one address (SO_REUSEPORT) on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.up.instances import PgTarget, instance_settings, write_instance_config
from fedgate.testing import free_port
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc
from gateway.audit.pg_store import list_origins
from gateway.config import (
    ConfigError,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
)
from gateway.server import Gateway
from gateway.workers import check_shared, plan_workers, worker_config, worker_origin
from tests.adapters._scaleout import drop_schemas


def _shared(tmp_path: Path, fed: Path, **extra: Any) -> GatewayConfig:
    settings = instance_settings(
        listen="127.0.0.1:20999",
        federation_dir=fed,
        state_dir=tmp_path / "state",
        origin="fedgate.test/workers",
        pg=PgTarget(dsn="postgresql://127.0.0.1:5432/test", schema="s"),
        extra=extra,
    )
    return GatewayConfig.from_mapping(settings, env={})


class TestPlan:
    def test_n_workers_share_one_address(self, tmp_path: Path) -> None:
        config = _shared(tmp_path, tmp_path)
        plan = plan_workers(config, workers=3, listens=[])
        assert plan.listens == ("127.0.0.1:20999",) * 3
        assert all(plan.shares_port(i) for i in range(3))

    def test_one_worker_per_address(self, tmp_path: Path) -> None:
        plan = plan_workers(_shared(tmp_path, tmp_path), workers=None, listens=["a:1", "a:2"])
        assert plan.listens == ("a:1", "a:2")
        assert not plan.shares_port(0)

    @pytest.mark.parametrize(
        ("workers", "listens", "match"),
        [
            (0, [], "--workers must be at least 1"),
            (3, ["a:1", "a:2"], "--workers 3 does not match the 2 --listen"),
            (2, ["127.0.0.1:0"], "need a fixed port"),
        ],
    )
    def test_refused(self, tmp_path: Path, workers: int, listens: list[str], match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            plan_workers(_shared(tmp_path, tmp_path), workers=workers, listens=listens)


class TestWorkerConfig:
    def test_each_worker_its_own_shard_state_and_ports(self, tmp_path: Path) -> None:
        config = _shared(
            tmp_path,
            tmp_path,
            console={"listen": "127.0.0.1:21000"},
            telemetry={"prometheus_listen": "127.0.0.1:9000"},
        )
        one = worker_config(config, index=1, listen="127.0.0.1:20999")
        assert one.audit.origin == worker_origin("fedgate.test/workers", 1)
        assert one.audit.origin == "fedgate.test/workers/worker-1"
        assert one.pipeline.state_dir == tmp_path / "state" / "worker-1"
        assert one.console.listen == "127.0.0.1:21001"
        assert one.telemetry.prometheus_listen == "127.0.0.1:9001"
        assert one.console_users_dir == tmp_path / "state"  # accounts shared by the workers
        assert one.audit_state_path != worker_config(config, index=0, listen="x:1").audit_state_path

    @pytest.mark.parametrize(
        ("changes", "match"),
        [
            ({"audit": {"store": "sqlite", "dsn": ""}}, 'audit.store = "postgres"'),
            ({"shared": {"store": "local"}}, 'shared.store = "postgres"'),
            ({"tickets": {"path": "t.sqlite"}}, "tickets.path names one file"),
            ({"audit": {"state_path": "a.state"}}, "audit.state_path names one file"),
        ],
    )
    def test_state_not_shared_is_refused(
        self, tmp_path: Path, changes: dict[str, dict[str, Any]], match: str
    ) -> None:
        settings = instance_settings(
            listen="127.0.0.1:20999",
            federation_dir=tmp_path,
            state_dir=tmp_path,
            origin="o",
            pg=PgTarget(dsn="postgresql://127.0.0.1/test"),
            extra=changes,
        )
        if settings["audit"]["store"] == "sqlite":
            settings["shared"]["store"] = "local"
        config = GatewayConfig.from_mapping(settings, env={})
        with pytest.raises(ConfigError, match=match):
            check_shared(config)


class TestSinglePort:
    async def test_a_gateway_does_not_share_a_taken_port_by_accident(
        self, gw_federation: Path, tmp_path: Path
    ) -> None:
        """gRPC sets SO_REUSEPORT unless told not to: a lone gateway asks it not to, so a port
        taken by another server (that allows sharing) is refused, not silently shared."""
        port = free_port()
        other = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        assert other.add_insecure_port(f"127.0.0.1:{port}") == port
        await other.start()
        try:
            config = GatewayConfig(
                federation=FederationConfig(dir=gw_federation, reload_interval_s=0),
                pipeline=PipelineConfig(state_dir=tmp_path / "state"),
                server=ServerConfig(listen=f"127.0.0.1:{port}", grace_period_s=0.5),
            )
            with pytest.raises(ConfigError, match="could not be bound"):
                await Gateway.start(config)
        finally:
            await other.stop(0)


async def _origin_behind(fed: Path, endpoint: str) -> str | None:
    """The shard of whichever worker a fresh connection reaches."""
    creds = MemberCredentials.load(fed, MemberId("audit.office"))
    async with grpc.aio.secure_channel(
        endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
    ) as channel:
        try:
            reply = await audit_service_pb2_grpc.AuditServiceStub(channel).GetCheckpoint(
                audit_service_pb2.GetCheckpointRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return None
        return reply.checkpoint.splitlines()[0]


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


class TestSupervisor:
    async def test_two_workers_on_one_port_then_a_clean_stop(
        self, gw_federation: Path, tmp_path: Path, pg: Any
    ) -> None:
        target = PgTarget(dsn=pg.dsn, schema=pg.schema)
        endpoint = f"127.0.0.1:{free_port()}"
        config = write_instance_config(
            tmp_path / "gateway.toml",
            listen=endpoint,
            federation_dir=gw_federation,
            state_dir=tmp_path / "state",
            origin="fedgate.test/workers",
            pg=target,
            extra={"federation": {"reload_interval_s": 0}, "server": {"grace_period_s": 2.0}},
        )
        log = (tmp_path / "supervisor.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.server", "--config", str(config), "--workers", "2",
            stdout=log, stderr=log,
        )  # fmt: skip
        origins = {worker_origin("fedgate.test/workers", i) for i in range(2)}
        loop = asyncio.get_running_loop()
        try:
            seen: set[str] = set()
            deadline = loop.time() + 90
            while seen != origins:
                assert proc.returncode is None, (tmp_path / "supervisor.log").read_text()
                assert loop.time() < deadline, f"only {seen} answered on {endpoint}"
                found = await _origin_behind(gw_federation, endpoint)
                if found is not None:
                    seen.add(found)
                else:
                    await asyncio.sleep(0.2)
            assert set(await asyncio.to_thread(list_origins, pg.dsn, schema=pg.schema)) == origins

            # A worker that dies is started again by the supervisor.
            workers = _children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)
            deadline = loop.time() + 60
            while True:
                again = _children(proc.pid)
                if len(again) == 2 and workers[0] not in again:
                    break
                assert loop.time() < deadline, "the dead worker was not restarted"
                await asyncio.sleep(0.2)
            seen.clear()
            while seen != origins:  # and it serves its shard again
                assert loop.time() < deadline, f"only {seen} answered after the restart"
                found = await _origin_behind(gw_federation, endpoint)
                if found is not None:
                    seen.add(found)
                else:
                    await asyncio.sleep(0.2)

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()
            for child in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            drop_schemas(target)
