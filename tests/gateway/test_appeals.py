"""The appeal deadline (``gateway.appeals.due_after``): working days in China time."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from fedgate.types import CHINA_TIME
from gateway.appeals import due_after
from gateway.config import ConfigError, GatewayConfig

_BASE = {"federation": {"dir": "fed"}, "pipeline": {"state_dir": "state"}}


class TestDueAfter:
    def test_three_working_days_skip_the_weekend(self) -> None:
        friday = datetime(2026, 9, 25, 10, 0, tzinfo=CHINA_TIME)
        assert due_after(friday, 3) == datetime(2026, 9, 30, 10, 0, tzinfo=CHINA_TIME)

    def test_holidays_are_skipped(self) -> None:
        national_day = [date(2026, 10, d) for d in range(1, 8)]
        tuesday = datetime(2026, 9, 29, 9, 30, tzinfo=CHINA_TIME)
        # 30 Sep counts; 1–7 Oct are holidays (3–4 also a weekend): then 8 and 9 Oct.
        assert due_after(tuesday, 3, national_day) == datetime(
            2026, 10, 9, 9, 30, tzinfo=CHINA_TIME
        )

    def test_china_time_decides_the_day(self) -> None:
        # Friday 23:30 UTC is Saturday 07:30 in China: Monday, Tuesday, Wednesday.
        late = datetime(2026, 9, 25, 23, 30, tzinfo=UTC)
        assert due_after(late, 3) == datetime(2026, 9, 30, 7, 30, tzinfo=CHINA_TIME)

    def test_one_working_day(self) -> None:
        thursday = datetime(2026, 9, 24, 16, 0, tzinfo=CHINA_TIME)
        assert due_after(thursday, 1) == datetime(2026, 9, 25, 16, 0, tzinfo=CHINA_TIME)


class TestConfig:
    def test_defaults(self) -> None:
        config = GatewayConfig.from_mapping(_BASE, env={})
        assert config.appeals.decision_working_days == 3
        assert config.appeals.holiday_dates() == ()

    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ({"decision_working_days": 0}, "appeals.decision_working_days must be 1 to 30"),
            ({"holidays": ["2026-13-01"]}, "appeals.holidays: '2026-13-01' is not an ISO date"),
        ],
    )
    def test_bad_values_are_named(self, section: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            GatewayConfig.from_mapping({**_BASE, "appeals": section}, env={})

    def test_from_environment(self) -> None:
        config = GatewayConfig.from_mapping(
            _BASE, env={"FEDGATE_GATEWAY__APPEALS__DECISION_WORKING_DAYS": "5"}
        )
        assert config.appeals.decision_working_days == 5
