"""The shared test and benchmark helpers that are not request builders."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedgate.testing import FREE_PORTS, _worker_ports, free_port, percentile


class TestPercentile:
    def test_nearest_rank(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose
        assert percentile(values, 0.5) == 50.0
        assert percentile(values, 0.99) == 99.0
        assert percentile(values, 0.07) == 7.0  # 0.07 * 100 is 7.000000000000001
        assert percentile(values, 1.0) == 100.0
        assert percentile([3.0], 0.01) == 3.0

    @pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
    def test_q_outside_the_range_refused(self, q: float) -> None:
        with pytest.raises(ValueError, match=r"q must be in \(0, 1\]"):
            percentile([1.0], q)

    def test_no_values_refused(self) -> None:
        with pytest.raises(ValueError, match="no values"):
            percentile([], 0.5)


def test_free_port_is_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(p in FREE_PORTS for p in ports)
    # No outgoing connection can be given one of them while a test waits to bind it.
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low = int(ephemeral[0])
    assert max(ports) < low


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class TestWorkerPorts:
    """Under pytest-xdist each test process picks ports from its own share of ``FREE_PORTS``."""

    @pytest.mark.parametrize(
        ("worker", "count", "share"),
        [
            ("gw0", "2", range(10_000, 15_000)),
            ("gw1", "2", range(15_000, 20_000)),
            ("gw2", "4", range(15_000, 17_500)),
            ("", "", range(10_000, 20_000)),  # not under xdist
            ("master", "2", range(10_000, 20_000)),
        ],
    )
    def test_shares_are_disjoint_and_cover_the_range(
        self, monkeypatch: pytest.MonkeyPatch, worker: str, count: str, share: range
    ) -> None:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
        assert _worker_ports(range(10_000, 20_000)) == share

    def test_this_process_uses_its_share(self) -> None:
        assert _worker_ports(range(10_000, 20_000)) == FREE_PORTS
