"""``Gateway.start`` leaves nothing behind when a step fails: ports freed, stores closed."""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from fedgate.errors import AuditUnavailable
from fedgate.testing import free_port
from gateway import server as server_module
from gateway.config import (
    ConfigError,
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
    TelemetryConfig,
)
from gateway.server import Gateway, settle_heap


def _open_files_under(directory: Path) -> list[str]:
    """The files under ``directory`` this process holds open (Linux ``/proc/self/fd``)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory.resolve())):
            held.append(target)
    return held


def _assert_free(port: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises EADDRINUSE if the gateway still listens


def _config(fed: Path, state: Path, **changes: Any) -> GatewayConfig:
    return GatewayConfig(
        federation=FederationConfig(dir=fed, reload_interval_s=0.2),
        pipeline=PipelineConfig(state_dir=state),
        server=changes.pop("server", ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5)),
        **changes,
    )


class TestPartialStart:
    async def test_a_late_step_failing_closes_ports_and_stores(
        self, gw_federation: Path, tmp_path: Path
    ) -> None:
        """The console (the last step) cannot listen: the gRPC port, the metrics port, the
        registry watcher and every store opened before are closed again."""
        state = tmp_path / "state"
        grpc_port, metrics_port = free_port(), free_port()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            config = _config(
                gw_federation,
                state,
                server=ServerConfig(listen=f"127.0.0.1:{grpc_port}", grace_period_s=0.5),
                telemetry=TelemetryConfig(prometheus_listen=f"127.0.0.1:{metrics_port}"),
                console=ConsoleConfig(listen=f"127.0.0.1:{taken.getsockname()[1]}"),
            )
            with pytest.raises(Exception, match="cannot listen"):
                await Gateway.start(config)
        assert _open_files_under(state) == []
        _assert_free(grpc_port)
        _assert_free(metrics_port)
        again = await Gateway.start(_config(gw_federation, state))
        await again.stop(0)

    async def test_the_grpc_port_taken_closes_the_stores(
        self, gw_federation: Path, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
            config = _config(gw_federation, state, server=ServerConfig(listen=listen))
            with pytest.raises(ConfigError, match="could not be bound"):
                await Gateway.start(config)
        assert _open_files_under(state) == []

    @pytest.mark.parametrize("step", ["AlertHub", "SqliteTickets", "BusinessRules"])
    async def test_a_store_failing_to_open_closes_the_ones_before(
        self, gw_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
    ) -> None:
        state = tmp_path / "state"

        def refuse(*_: Any, **__: Any) -> Any:
            raise AuditUnavailable(f"{step} refused by the test")

        # The rule state is rebuilt from the log in memory (``in_memory``); the others open files.
        opener = "in_memory" if step == "BusinessRules" else "open"
        monkeypatch.setattr(getattr(server_module, step), opener, refuse)
        with pytest.raises(AuditUnavailable, match=f"{step} refused by the test"):
            await Gateway.start(_config(gw_federation, state))
        assert _open_files_under(state) == []

    async def test_a_stopped_gateway_holds_nothing(
        self, gw_federation: Path, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        gateway = await Gateway.start(_config(gw_federation, state))
        assert _open_files_under(state) != []  # the test sees the stores while they are open
        port = gateway.port
        await gateway.stop(0)
        assert _open_files_under(state) == []
        _assert_free(port)


class TestSettleHeap:
    """``settle_heap``: what start-up built is out of the collector's view, young objects are
    collected less often (restored after the test: the test process starts many gateways)."""

    def test_freezes_the_heap_and_raises_the_young_threshold(self) -> None:
        thresholds = gc.get_threshold()
        try:
            settle_heap()
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] > thresholds[0]
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
