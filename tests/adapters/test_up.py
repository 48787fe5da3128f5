"""``fedgate demo``: a fresh federation comes up, the scenario succeeds, nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from adapters.up import (
    EXTRA_GATEWAY_PORT_OFFSET,
    _port_in_use,
    check_ports,
    console_port,
    demo_password,
    prepare_state,
)
from adapters.up.instances import PgTarget
from fedgate.errors import FedgateError
from fedgate.federation import DEFAULT_MEMBERS
from fedgate.registry import Registry
from fedgate.risklist import risklist_origin
from fedgate.types import MemberId
from gateway.audit.pg_store import list_origins
from gateway.config import GatewayConfig
from gateway.workers import check_shared

# Whole federations on ports from 20000 up (``fedgate up``'s range, which ``free_port`` avoids):
# every module that starts one runs on the same test process, one after the other, so two
# never take the same ports (``make test`` runs two processes).
pytestmark = pytest.mark.xdist_group("federations")


def _free_base() -> int:
    """A base port with the twelve ports above it and their consoles free, below 32768."""
    import random

    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(22000, 30000)
        addresses = [f"127.0.0.1:{base + i}" for i in range(len(DEFAULT_MEMBERS))]
        try:
            check_ports(addresses + [f"127.0.0.1:{base + 1000 + i}" for i in range(12)])
        except FedgateError:
            continue
        return base
    raise RuntimeError("no free base port")


def _leftovers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if marker in line and "ps -eo" not in line]


class TestPrepareState:
    def test_layout_and_configs(self, tmp_path: Path) -> None:
        lines: list[str] = []
        federation = prepare_state(tmp_path / "state", progress=lines.append)
        members = {spec.member for spec in federation.processes}
        assert "gateway" in members
        assert {"bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb"} <= members
        assert {"carrier.cmcc", "carrier.cucc", "carrier.ctcc"} <= members
        assert {"pboc.gz", "audit.office"} <= members  # the log's witnesses
        assert (tmp_path / "state" / "gateway" / "gateway.toml").exists()
        assert (tmp_path / "state" / "nodes" / "bank.icbc" / "node.toml").exists()
        assert any("seeding" in line for line in lines)
        # A second run reuses everything: no new PKI, no reseeding.
        again: list[str] = []
        prepare_state(tmp_path / "state", progress=again.append)
        assert again == []

    def test_demo_password_is_generated_and_private(self, tmp_path: Path) -> None:
        first = demo_password(tmp_path)
        assert len(first) >= 12
        assert demo_password(tmp_path) == first
        assert (tmp_path / "demo-password").stat().st_mode & 0o777 == 0o600
        assert (
            demo_password(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)
            != first
        )

    def test_console_ports(self) -> None:
        assert console_port("127.0.0.1:20054") == 21054

    def test_default_ports_are_outside_the_ephemeral_range(self) -> None:
        for member in DEFAULT_MEMBERS:
            assert 1024 <= member.port < 32768
            assert console_port(member.endpoint) < 32768

    def test_base_port_places_every_member(self, tmp_path: Path) -> None:
        base = _free_base()
        federation = prepare_state(tmp_path / "state", progress=lambda _: None, base_port=base)
        registry = Registry.load_dir(federation.federation_dir)
        ports = sorted(int(m.endpoint.rsplit(":", 1)[1]) for m in registry.members())
        assert ports == list(range(base, base + len(DEFAULT_MEMBERS)))
        assert registry.member(MemberId("gateway")).endpoint == f"127.0.0.1:{base}"
        with pytest.raises(FedgateError, match=f"created with base port {base}"):
            prepare_state(tmp_path / "state", progress=lambda _: None, base_port=base + 100)

    def test_a_taken_port_is_refused_before_keys_or_data_exist(self, tmp_path: Path) -> None:
        import socket

        base = _free_base()
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", base + 3))
            holder.listen(1)
            with pytest.raises(FedgateError, match=f"127.0.0.1:{base + 3}"):
                prepare_state(tmp_path / "state", progress=lambda _: None, base_port=base)
        assert not (tmp_path / "state" / "federation").exists()
        assert not (tmp_path / "state" / "world").exists()

    def test_a_port_in_time_wait_is_free_for_a_server(self) -> None:
        """Ctrl-C then `make run` again: the old connections linger in TIME_WAIT."""
        import socket

        base = _free_base()
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", base))
            server.listen(1)
            client = socket.create_connection(("127.0.0.1", base))
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: its end waits in TIME_WAIT
            client.close()
        assert not _port_in_use(f"127.0.0.1:{base}")


@pytest.mark.slow
class TestDemo:
    def test_demo_succeeds_and_stops_everything(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "fedgate.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "federation up in" in result.stdout
        assert "Scenario succeeded" in result.stdout
        assert "audit verify ✓" in result.stdout
        assert "chase ✓" in result.stdout  # every account holding the victim's money stopped
        assert "stopped ✓" in result.stdout
        assert "  stopped     ¥" in result.stdout
        cosigned = next(line for line in result.stdout.splitlines() if "cosigned" in line)
        assert "pboc.gz" in cosigned
        assert "audit.office" in cosigned
        assert "fedgate demo: OK" in result.stdout
        assert _leftovers("fedgate-demo-") == []


class TestSeveralGateways:
    def test_instances_share_postgresql_and_every_origin_is_witnessed(self, tmp_path: Path) -> None:
        base = _free_base()
        pg = PgTarget(dsn="postgresql://postgres@127.0.0.1:5432/test", schema="up_test")
        federation = prepare_state(
            tmp_path / "state", progress=lambda _: None, base_port=base, gateways=3, pg=pg
        )
        gateways = [p for p in federation.processes if p.member == "gateway"]
        assert [p.key for p in gateways] == ["gateway", "gateway-1", "gateway-2"]
        assert federation.gateway_endpoints == (
            f"127.0.0.1:{base}",
            f"127.0.0.1:{base + EXTRA_GATEWAY_PORT_OFFSET + 1}",
            f"127.0.0.1:{base + EXTRA_GATEWAY_PORT_OFFSET + 2}",
        )
        assert [p.console is not None for p in gateways] == [True, False, False]
        origins = []
        for spec in gateways:
            config = GatewayConfig.load(Path(spec.argv[-1]), env={})
            assert config.audit.store == "postgres"
            assert config.audit.schema == "up_test"
            assert config.is_shared
            assert config.replay_kind == "postgres"
            check_shared(config)
            origins.append(config.audit.origin)
        assert len(set(origins)) == 3
        witness = next(p for p in federation.processes if p.member == "pboc.gz")
        witnessed = {witness.argv[i + 1] for i, a in enumerate(witness.argv) if a == "--origin"}
        assert witnessed == {*origins, *(risklist_origin(o) for o in origins)}
        assert federation.audit_source == ("--pg", pg.dsn, "--schema", "up_test")

    def test_several_gateways_need_postgresql(self, tmp_path: Path) -> None:
        with pytest.raises(FedgateError, match="needs a PostgreSQL database"):
            prepare_state(tmp_path / "state", progress=lambda _: None, gateways=2)
        assert not (tmp_path / "state").exists()

    @pytest.mark.slow
    def test_up_and_down_with_two_gateways(self, tmp_path: Path, pg: Any) -> None:
        """`fedgate up --gateways 2` on PostgreSQL, then `fedgate down`: both instances drain."""
        state = tmp_path / "state"
        common = ["--state", str(state)]
        try:
            up = subprocess.run(
                [sys.executable, "-m", "fedgate.cli", "up", *common, "--gateways", "2",
                 "--pg", pg.dsn, "--pg-schema", pg.schema, "--base-port", str(_free_base()),
                 "--no-scenario", "--background"],
                capture_output=True, text=True, timeout=240, check=False,
            )  # fmt: skip
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
            assert "gateway-1      serving" in up.stdout
            assert "2 gateway instances on PostgreSQL" in up.stdout
        finally:
            down = subprocess.run(
                [sys.executable, "-m", "fedgate.cli", "down", *common],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(f"{pg.schema}_replay")
                    )
                )
        assert down.returncode == 0, down.stderr
        for name in ("gateway", "gateway-1"):
            log = (state / "logs" / f"{name}.log").read_text()
            assert '"message": "drained"' in log, log[-2000:]
        shards = list_origins(pg.dsn, schema=pg.schema)
        assert shards == ["fedgate.local/gateway/shard-0", "fedgate.local/gateway/shard-1"]
