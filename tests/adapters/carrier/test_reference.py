"""Tests for adapters.carrier.reference on a seeded world: owners, records, orders, ranges."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.carrier.backend import (
    CallDirection,
    CallRecord,
    NumberState,
    RecordKind,
    SubscriberSystem,
)
from adapters.carrier.reference import ReferenceCarrier
from adapters.synth import World, seed_world
from fedgate.errors import InvalidArgument, NotFound, RuleViolated
from fedgate.validate import CARRIER_PREFIXES

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return seed_world(tmp_path_factory.mktemp("world"), customers_per_bank=200, now=NOW)


@pytest.fixture
def open_carrier(world: World, tmp_path: Path) -> Iterator[Callable[[str], ReferenceCarrier]]:
    """Open a private copy of a carrier's database, so tests may change it."""
    opened: list[ReferenceCarrier] = []

    def _open(carrier_id: str) -> ReferenceCarrier:
        path = tmp_path / f"{carrier_id}.sqlite"
        if not path.exists():
            shutil.copy(world.database(carrier_id), path)
        carrier = ReferenceCarrier(path=path, carrier_id=carrier_id, clock=lambda: NOW)
        opened.append(carrier)
        return carrier

    yield _open
    for carrier in opened:
        carrier.close()


def _rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _unassigned(world: World, carrier_id: str) -> str:
    taken = {n for (n,) in _rows(world.database(carrier_id), "SELECT number FROM subscribers")}
    prefix = CARRIER_PREFIXES[carrier_id][0]
    return next(f"{prefix}{i:08d}" for i in range(10**8) if f"{prefix}{i:08d}" not in taken)


class TestSubscriber:
    def test_is_subscriber_system(self, open_carrier: Callable[[str], ReferenceCarrier]) -> None:
        carrier: SubscriberSystem = open_carrier("carrier.cmcc")
        assert carrier.carrier_id == "carrier.cmcc"

    def test_victims_number(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        victim = world.chains[0].victim
        sub = open_carrier(victim.carrier_id).subscriber(victim.phone)
        assert (sub.name, sub.id_number, sub.carrier_id) == (
            victim.name,
            victim.id_number,
            victim.carrier_id,
        )
        assert sub.status is NumberState.ACTIVE
        assert sub.registered_at < NOW

    def test_unknown_number_in_range(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        with pytest.raises(NotFound, match="not assigned"):
            open_carrier("carrier.cucc").subscriber(_unassigned(world, "carrier.cucc"))

    @pytest.mark.parametrize(
        "number", ["13800138000", "18912345678", "1380013800", "12012345678", "abc"]
    )
    def test_number_outside_the_ranges(
        self, open_carrier: Callable[[str], ReferenceCarrier], number: str
    ) -> None:
        carrier = open_carrier("carrier.cucc")
        for call in (carrier.subscriber, carrier.number_status):
            with pytest.raises(InvalidArgument, match="phone_number") as info:
                call(number)
            (violation,) = info.value.violations
            assert violation.field == "phone_number"

    def test_refuses_another_carriers_file(self, world: World) -> None:
        with pytest.raises(ValueError, match="carrier_id"):
            ReferenceCarrier(path=world.database("carrier.cmcc"), carrier_id="carrier.ctcc")


class TestSimCount:
    def test_fraudster_holds_several_live_sims(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        owner = carrier.subscriber(number.number).id_number
        assert carrier.sim_count(owner) >= 3

    def test_cancelled_numbers_do_not_count(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        for carrier_id in world.carriers:
            rows = _rows(
                world.database(carrier_id),
                "SELECT id_number FROM subscribers WHERE state = 'cancelled' ORDER BY number",
            )
            if not rows:
                continue
            (owner,) = rows[0]
            ((live,),) = _rows(
                world.database(carrier_id),
                "SELECT COUNT(*) FROM subscribers WHERE id_number = ? AND state != 'cancelled'",
                (owner,),
            )
            assert open_carrier(carrier_id).sim_count(owner) == live
            return
        pytest.fail("the world has no cancelled number")

    def test_no_sims(self, open_carrier: Callable[[str], ReferenceCarrier]) -> None:
        assert open_carrier("carrier.ctcc").sim_count("11010519491231002X") == 0

    def test_invalid_id(self, open_carrier: Callable[[str], ReferenceCarrier]) -> None:
        with pytest.raises(InvalidArgument, match="id_number"):
            open_carrier("carrier.ctcc").sim_count("11010519491231002x")


class TestCallRecords:
    def test_paging_and_sms_filter(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        start = NOW - timedelta(days=7)
        whole = carrier.call_records(
            number.number, start, NOW, page_size=1000, page_token="", include_sms=True
        )
        assert whole.next_page_token == ""
        paged: list[CallRecord] = []
        token = ""
        while True:
            page = carrier.call_records(
                number.number, start, NOW, page_size=4, page_token=token, include_sms=True
            )
            paged.extend(page.records)
            token = page.next_page_token
            if not token:
                break
        assert paged == list(whole.records)
        assert len(paged) > 10
        keys = [(r.ts, r.id) for r in paged]
        assert keys == sorted(keys)
        voice = carrier.call_records(
            number.number, start, NOW, page_size=1000, page_token="", include_sms=False
        )
        assert {r.kind for r in whole.records} == {RecordKind.VOICE, RecordKind.SMS}
        assert list(voice.records) == [r for r in whole.records if r.kind is RecordKind.VOICE]

    def test_fraud_call_seen_by_the_victims_carrier(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        chain = world.chains[0]
        victim = chain.victim
        page = open_carrier(victim.carrier_id).call_records(
            victim.phone,
            chain.first_contact,
            chain.hops[0].ts,
            page_size=100,
            page_token="",
            include_sms=True,
        )
        from_fraudster = [
            r for r in page.records if r.other_number == chain.fraud_numbers[0].number
        ]
        assert {(r.kind, r.direction) for r in from_fraudster} == {
            (RecordKind.SMS, CallDirection.IN),
            (RecordKind.VOICE, CallDirection.IN),
        }

    def test_token_bound_to_the_query(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        start = NOW - timedelta(days=7)
        token = carrier.call_records(
            number.number, start, NOW, page_size=1, page_token="", include_sms=True
        ).next_page_token
        with pytest.raises(InvalidArgument, match="page_token"):
            carrier.call_records(
                number.number, start, NOW, page_size=1, page_token=token, include_sms=False
            )

    def test_bad_window(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        victim = world.chains[0].victim
        with pytest.raises(InvalidArgument, match="start"):
            open_carrier(victim.carrier_id).call_records(
                victim.phone, NOW, NOW, page_size=10, page_token="", include_sms=True
            )


class TestLocation:
    def test_recent_location(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        victim = world.chains[0].victim
        where = open_carrier(victim.carrier_id).location(victim.phone, NOW)
        assert NOW - timedelta(hours=24) < where.observed_at <= NOW
        assert 20 < where.lat < 25
        assert 112 < where.lon < 116
        assert where.cell_id.startswith("460-")
        assert round(where.lat, 2) == where.lat

    def test_nothing_known_then(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        victim = world.chains[0].victim
        with pytest.raises(NotFound, match="no location"):
            open_carrier(victim.carrier_id).location(victim.phone, NOW - timedelta(days=30))


class TestOrders:
    def test_suspend_and_restore(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        status = carrier.suspend(number.number, order_ref="o1", reason="涉诈号码", now=NOW)
        assert (status.state, status.order_ref, status.reason, status.since) == (
            NumberState.SUSPENDED,
            "o1",
            "涉诈号码",
            NOW,
        )
        assert carrier.number_status(number.number) == status
        assert carrier.subscriber(number.number).status is NumberState.SUSPENDED
        with pytest.raises(RuleViolated, match="suspended"):
            carrier.suspend(number.number, order_ref="o2", reason="again", now=NOW)
        later = NOW + timedelta(hours=2)
        restored = carrier.restore(number.number, order_ref="o3", reason="申诉核实", now=later)
        assert (restored.state, restored.since) == (NumberState.ACTIVE, later)
        with pytest.raises(RuleViolated, match="restore"):
            carrier.restore(number.number, order_ref="o4", reason="again", now=later)

    def test_block_from_suspended(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[1].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        carrier.suspend(number.number, order_ref="o1", reason="涉诈号码", now=NOW)
        blocked = carrier.block(number.number, order_ref="o2", reason="涉诈号码", now=NOW)
        assert blocked.state is NumberState.BLOCKED
        with pytest.raises(RuleViolated, match="blocked"):
            carrier.suspend(number.number, order_ref="o3", reason="x", now=NOW)

    def test_order_ref_used_once(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        carrier = open_carrier(number.carrier_id)
        carrier.suspend(number.number, order_ref="o1", reason="涉诈号码", now=NOW)
        with pytest.raises(RuleViolated, match="order_ref"):
            carrier.restore(number.number, order_ref="o1", reason="x", now=NOW)

    def test_cancelled_number_cannot_be_ordered(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        for carrier_id in world.carriers:
            rows = _rows(
                world.database(carrier_id),
                "SELECT number FROM subscribers WHERE state = 'cancelled' ORDER BY number",
            )
            if rows:
                with pytest.raises(RuleViolated, match="cancelled"):
                    open_carrier(carrier_id).suspend(rows[0][0], order_ref="o", reason="x", now=NOW)
                return
        pytest.fail("the world has no cancelled number")

    def test_invalid_order(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = world.chains[0].fraud_numbers[0]
        with pytest.raises(InvalidArgument, match="order_ref, reason"):
            open_carrier(number.carrier_id).block(number.number, order_ref="", reason=" ", now=NOW)

    def test_unknown_number(
        self, world: World, open_carrier: Callable[[str], ReferenceCarrier]
    ) -> None:
        number = _unassigned(world, "carrier.cmcc")
        with pytest.raises(NotFound):
            open_carrier("carrier.cmcc").suspend(number, order_ref="o", reason="x", now=NOW)


class TestSmsBlock:
    def test_block_sender_once(self, open_carrier: Callable[[str], ReferenceCarrier]) -> None:
        carrier = open_carrier("carrier.ctcc")
        block = carrier.block_sms_sender("10690000123", order_ref="s1", reason="仿冒客服", now=NOW)
        assert (block.sender, block.order_ref, block.since) == ("10690000123", "s1", NOW)
        with pytest.raises(RuleViolated, match="already blocked"):
            carrier.block_sms_sender("10690000123", order_ref="s2", reason="again", now=NOW)

    @pytest.mark.parametrize("sender", ["", "12", "abc", "1" * 21])
    def test_bad_sender(self, open_carrier: Callable[[str], ReferenceCarrier], sender: str) -> None:
        with pytest.raises(InvalidArgument, match="sender"):
            open_carrier("carrier.ctcc").block_sms_sender(
                sender, order_ref="s", reason="x", now=NOW
            )
