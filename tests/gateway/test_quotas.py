"""Tests for gateway.quotas: buckets drain and refill, the emergency floor, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.actions import ACTIONS, PERSONAL_DATA_ACTIONS
from fedgate.errors import QuotaExceeded
from fedgate.v1 import common_pb2
from gateway.config import ConfigError
from gateway.quotas import QuotaConfig, Quotas

MEMBER = "police.gd.afc"
OFFICER = "440100123"
ROUTINE = common_pb2.URGENCY_ROUTINE
EMERGENCY = common_pb2.URGENCY_EMERGENCY


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ask(
    quotas: Quotas,
    *,
    officer: str = OFFICER,
    member: str = MEMBER,
    action: str = "account_holder",
    urgency: int = ROUTINE,
) -> None:
    quotas.check(member=member, officer_id=officer, action=action, urgency=urgency)


def drain(quotas: Quotas, n: int, **kwargs: object) -> None:
    for _ in range(n):
        ask(quotas, **kwargs)  # type: ignore[arg-type]


class TestOfficerBucket:
    def test_burst_then_refused(self) -> None:
        quotas = Quotas(QuotaConfig(), clock=Clock())
        drain(quotas, 20)
        with pytest.raises(
            QuotaExceeded,
            match=r"^officer 440100123 of police.gd.afc is over the personal-data query quota "
            r"\(60/min\)$",
        ) as caught:
            ask(quotas)
        assert caught.value.retry_after_s == pytest.approx(1.0)
        assert caught.value.reason == "QUOTA_EXCEEDED"

    def test_refills_at_the_rate(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(), clock=clock)
        drain(quotas, 20)
        clock.now += 0.5
        with pytest.raises(QuotaExceeded) as caught:
            ask(quotas)
        assert caught.value.retry_after_s == pytest.approx(0.5)
        clock.now += caught.value.retry_after_s
        ask(quotas)  # retrying after retry_after_s succeeds
        with pytest.raises(QuotaExceeded):
            ask(quotas)
        clock.now += 10
        drain(quotas, 10)  # ten seconds give back ten tokens
        with pytest.raises(QuotaExceeded):
            ask(quotas)

    def test_never_refills_past_the_burst(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(), clock=clock)
        clock.now += 3600
        drain(quotas, 20)
        with pytest.raises(QuotaExceeded):
            ask(quotas)

    def test_officers_are_separate(self) -> None:
        quotas = Quotas(QuotaConfig(), clock=Clock())
        drain(quotas, 20)
        ask(quotas, officer="440100456")
        ask(quotas, member="police.gz.unit")  # the same badge number at another member

    def test_explicit_now_overrides_the_clock(self) -> None:
        quotas = Quotas(QuotaConfig(officer_burst=1))
        quotas.check(member=MEMBER, officer_id=OFFICER, action="subscriber", urgency=1, now=5.0)
        with pytest.raises(QuotaExceeded):
            quotas.check(member=MEMBER, officer_id=OFFICER, action="subscriber", urgency=1, now=5.5)
        quotas.check(member=MEMBER, officer_id=OFFICER, action="subscriber", urgency=1, now=6.0)

    def test_a_clock_going_backwards_gives_nothing(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(officer_burst=1), clock=clock)
        ask(quotas)
        clock.now -= 100
        with pytest.raises(QuotaExceeded):
            ask(quotas)


class TestMemberBucket:
    def test_the_member_is_limited_across_officers(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(member_burst=50, member_per_minute=600), clock=clock)
        for i in range(50):
            ask(quotas, officer=f"4401{i:05d}")
        with pytest.raises(
            QuotaExceeded,
            match=r"^member police.gd.afc is over its personal-data query quota \(600/min\)$",
        ) as caught:
            ask(quotas, officer="440199999")
        assert caught.value.retry_after_s == pytest.approx(0.1)
        ask(quotas, member="police.gz.unit", officer="440199999")

    def test_a_refusal_by_the_member_takes_no_officer_token(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(member_burst=1, officer_burst=2), clock=clock)
        ask(quotas, officer="a12")
        with pytest.raises(QuotaExceeded, match="member"):
            ask(quotas)
        for _ in range(2):  # the officer's two tokens are intact
            clock.now += 0.05  # the member bucket refills at 50/s
            ask(quotas)


class TestWhatIsLimited:
    @pytest.mark.parametrize("action", sorted(ACTIONS - PERSONAL_DATA_ACTIONS))
    def test_other_actions_are_not_limited(self, action: str) -> None:
        quotas = Quotas(QuotaConfig(officer_burst=1, member_burst=1), clock=Clock())
        drain(quotas, 50, action=action)

    @pytest.mark.parametrize("action", sorted(PERSONAL_DATA_ACTIONS))
    def test_personal_data_queries_are_limited(self, action: str) -> None:
        quotas = Quotas(QuotaConfig(officer_burst=1), clock=Clock())
        ask(quotas, action=action)
        with pytest.raises(QuotaExceeded):
            ask(quotas, action=action)

    def test_everything_is_limited_when_asked(self) -> None:
        quotas = Quotas(QuotaConfig(officer_burst=2, personal_data_only=False), clock=Clock())
        ask(quotas, action="freeze")
        ask(quotas, action="aggregate_stats")
        with pytest.raises(QuotaExceeded, match="over the request quota"):
            ask(quotas, action="number_suspend")


class TestEmergencyFloor:
    def config(self) -> QuotaConfig:
        return QuotaConfig(
            officer_burst=2, officer_per_minute=6, personal_data_only=False,
            emergency_floor_per_minute=30,
        )  # fmt: skip

    def test_emergency_stop_payments_use_the_floor_when_the_bucket_is_empty(self) -> None:
        clock = Clock()
        quotas = Quotas(self.config(), clock=clock)
        drain(quotas, 2, action="stop_payment", urgency=EMERGENCY)
        # the main bucket is empty; the floor bucket holds 10 s at 30/min = 5
        drain(quotas, 5, action="stop_payment", urgency=EMERGENCY)
        with pytest.raises(QuotaExceeded) as caught:
            ask(quotas, action="stop_payment", urgency=EMERGENCY)
        assert caught.value.retry_after_s == pytest.approx(2.0)  # the floor's next token

    def test_the_floor_rate_is_sustained(self) -> None:
        clock = Clock()
        quotas = Quotas(self.config(), clock=clock)
        drain(quotas, 7, action="stop_payment", urgency=EMERGENCY)
        allowed = 0
        for _ in range(600):  # ten minutes, one attempt a second
            clock.now += 1
            try:
                ask(quotas, action="stop_payment", urgency=EMERGENCY)
                allowed += 1
            except QuotaExceeded:
                pass
        assert allowed >= 10 * 30  # at least the floor, whatever the main bucket does

    def test_routine_stop_payments_do_not_get_the_floor(self) -> None:
        quotas = Quotas(self.config(), clock=Clock())
        drain(quotas, 2, action="stop_payment", urgency=common_pb2.URGENCY_URGENT)
        with pytest.raises(QuotaExceeded):
            ask(quotas, action="stop_payment", urgency=common_pb2.URGENCY_URGENT)

    def test_other_emergencies_do_not_get_the_floor(self) -> None:
        quotas = Quotas(self.config(), clock=Clock())
        drain(quotas, 2, action="freeze", urgency=EMERGENCY)
        with pytest.raises(QuotaExceeded):
            ask(quotas, action="freeze", urgency=EMERGENCY)

    def test_no_floor(self) -> None:
        config = QuotaConfig(
            officer_burst=1, personal_data_only=False, emergency_floor_per_minute=0
        )
        quotas = Quotas(config, clock=Clock())
        ask(quotas, action="stop_payment", urgency=EMERGENCY)
        with pytest.raises(QuotaExceeded):
            ask(quotas, action="stop_payment", urgency=EMERGENCY)


class TestMemory:
    def test_idle_buckets_are_dropped(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(member_burst=5000), clock=clock)
        for i in range(1000):
            ask(quotas, officer=f"o{i:04d}")
        assert quotas.bucket_count() == 1001
        clock.now += 60  # 20 tokens at 60/min: full again after 20 s
        ask(quotas, officer="latecomer")
        assert quotas.bucket_count() == 2

    def test_forgetting_an_idle_bucket_changes_nothing(self) -> None:
        clock = Clock()
        quotas = Quotas(QuotaConfig(), clock=clock)
        drain(quotas, 20)
        clock.now += 20  # exactly refilled
        drain(quotas, 20)
        with pytest.raises(QuotaExceeded):
            ask(quotas)

    def test_the_number_of_buckets_is_bounded(self) -> None:
        quotas = Quotas(QuotaConfig(member_burst=5000), clock=Clock(), max_buckets=100)
        for i in range(1000):
            ask(quotas, officer=f"o{i:04d}")
        assert quotas.bucket_count() <= 2 * 100

    @settings(max_examples=50, deadline=None)
    @given(
        gaps=st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=200),
    )
    def test_never_more_than_burst_plus_rate_times_time(self, gaps: list[float]) -> None:
        clock = Clock()
        start = clock.now
        quotas = Quotas(QuotaConfig(officer_burst=5, officer_per_minute=60), clock=clock)
        allowed = 0
        waits: list[float] = []
        for gap in gaps:
            clock.now += gap
            try:
                ask(quotas)
                allowed += 1
            except QuotaExceeded as exc:
                waits.append(exc.retry_after_s)
        assert all(0 < w <= 1.001 for w in waits)
        assert allowed <= 5 + (clock.now - start) * 1.0 + 1e-6


class TestConfig:
    def test_defaults(self) -> None:
        assert QuotaConfig.from_mapping({}) == QuotaConfig()

    def test_from_the_toml_table(self) -> None:
        config = QuotaConfig.from_mapping(
            {"officer_per_minute": 30, "member_burst": 100, "personal_data_only": False}
        )
        assert config.officer_per_minute == 30
        assert config.member_burst == 100
        assert config.personal_data_only is False

    def test_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"^quotas.officer_per_hour is not a quota setting"):
            QuotaConfig.from_mapping({"officer_per_hour": 5})

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("officer_per_minute", 0),
            ("officer_per_minute", "60"),
            ("member_per_minute", -1.5),
            ("member_per_minute", float("inf")),
            ("officer_burst", 0),
            ("officer_burst", 2.5),
            ("member_burst", True),
            ("personal_data_only", "yes"),
            ("emergency_floor_per_minute", -1),
        ],
    )
    def test_bad_values_are_named(self, key: str, value: object) -> None:
        with pytest.raises(ConfigError, match=rf"^quotas.{key} must be"):
            QuotaConfig.from_mapping({key: value})
