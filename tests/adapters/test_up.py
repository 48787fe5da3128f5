"""``fedgate demo``: a fresh federation comes up, the scenario succeeds, nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.up import console_port, demo_password, prepare_state


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
        assert console_port("127.0.0.1:50054") == 51054


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
