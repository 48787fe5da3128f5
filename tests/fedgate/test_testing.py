"""The shared test and benchmark helpers that are not request builders."""

from __future__ import annotations

import socket

import pytest

from fedgate.testing import free_port, percentile


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


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
