"""Tests for adapters.bank.reference on a seeded world: queries, orders and monitoring."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.bank.backend import (
    Channel,
    CoreBanking,
    Direction,
    FreezeMethod,
    FreezeOrder,
    OrderState,
    StopPaymentOrder,
    Transaction,
)
from adapters.bank.reference import ReferenceBank
from adapters.synth import Hop, World, seed_world
from fedgate.errors import AgencyUnavailable, InvalidArgument, NotFound, RuleViolated
from fedgate.validate import luhn_check_digit

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CASE = "A44010000000020261100001"
OTHER_CASE = "A44010000000020261100002"
HOUR = timedelta(hours=1)


class Clock:
    """A settable clock injected into the backend."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return seed_world(tmp_path_factory.mktemp("world"), customers_per_bank=200, now=NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def open_bank(
    world: World, tmp_path: Path, clock: Clock
) -> Iterator[Callable[[str], ReferenceBank]]:
    """Open a private copy of a bank's database, so tests may change it."""
    opened: list[ReferenceBank] = []

    def _open(bank_id: str) -> ReferenceBank:
        path = tmp_path / f"{bank_id}.sqlite"
        if not path.exists():
            shutil.copy(world.database(bank_id), path)
        bank = ReferenceBank(path=path, bank_id=bank_id, clock=clock)
        opened.append(bank)
        return bank

    yield _open
    for bank in opened:
        bank.close()


def _first_hop(world: World, chain: int = 0) -> Hop:
    return world.chains[chain].hops[0]


def _stop_order(hop: Hop, ref: str = "req-stop-1", **changes: Any) -> StopPaymentOrder:
    order = StopPaymentOrder(
        order_ref=ref,
        account_number=hop.to_account,
        account_name=hop.to_name,
        payer_account=hop.from_account,
        payer_name=hop.from_name,
        payer_bank=hop.from_bank,
        amount_minor=hop.amount_minor,
        currency="CNY",
        transfer_time=hop.ts + timedelta(minutes=2),  # a victim's memory is not exact
        agency="police.gd.afc",
        case_number=CASE,
        case_document=f"穗公天止字〔2026〕{ref}号",  # one notice per order unless a test says so
    )
    return replace(order, **changes)


def _freeze_order(hop: Hop, ref: str = "req-freeze-1", **changes: Any) -> FreezeOrder:
    order = FreezeOrder(
        order_ref=ref,
        account_number=hop.to_account,
        account_name=hop.to_name,
        method=FreezeMethod.FIXED_AMOUNT,
        amount_minor=100_000,
        currency="CNY",
        end=NOW + timedelta(days=90),
        agency="police.gd.gz.tianhe",
        case_number=CASE,
        case_document=f"穗公天立字〔2026〕{ref}号",  # one decision per order unless a test says so
        duty_phone="020-83118110",
    )
    return replace(order, **changes)


def _unknown_card(bank: ReferenceBank) -> str:
    partial = "622202" + "9" * 12 if bank.bank_id == "bank.icbc" else None
    assert partial is not None
    return partial + luhn_check_digit(partial)


class TestConstruction:
    def test_is_core_banking(self, open_bank: Callable[[str], ReferenceBank]) -> None:
        bank: CoreBanking = open_bank("bank.icbc")
        assert bank.bank_id == "bank.icbc"

    def test_refuses_another_banks_file(self, world: World) -> None:
        with pytest.raises(ValueError, match="bank_id"):
            ReferenceBank(path=world.database("bank.icbc"), bank_id="bank.ccb")

    def test_refuses_unknown_bank(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="bank_id"):
            ReferenceBank(path=tmp_path / "x.sqlite", bank_id="bank.nope")

    def test_creates_an_empty_bank(self, tmp_path: Path) -> None:
        with (
            ReferenceBank(path=tmp_path / "new.sqlite", bank_id="bank.icbc") as bank,
            pytest.raises(NotFound),
        ):
            bank.account_holder(_unknown_card(bank))


class TestAccountHolder:
    def test_victim_holder(self, world: World, open_bank: Callable[[str], ReferenceBank]) -> None:
        victim = world.chains[0].victim
        holder = open_bank(victim.bank_id).account_holder(victim.account_number)
        assert (holder.name, holder.id_number, holder.phone) == (
            victim.name,
            victim.id_number,
            victim.phone,
        )
        assert holder.bank_id == victim.bank_id
        assert holder.available_minor == holder.balance_minor
        assert not holder.stopped
        assert not holder.frozen

    def test_unknown_account(self, open_bank: Callable[[str], ReferenceBank]) -> None:
        bank = open_bank("bank.icbc")
        with pytest.raises(NotFound, match="no account"):
            bank.account_holder(_unknown_card(bank))

    def test_other_banks_card_is_invalid(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        other = next(c.victim for c in world.chains if c.victim.bank_id != "bank.icbc")
        with pytest.raises(InvalidArgument, match="account_number") as info:
            open_bank("bank.icbc").account_holder(other.account_number)
        assert "bank.icbc" in info.value.violations[0].description

    @pytest.mark.parametrize("bad", ["", "6222020000000000001", "abc"])  # last: bad Luhn
    def test_malformed_number(self, open_bank: Callable[[str], ReferenceBank], bad: str) -> None:
        with pytest.raises(InvalidArgument, match="account_number"):
            open_bank("bank.icbc").account_holder(bad)


def _busiest_account(world: World, bank_id: str) -> str:
    conn = sqlite3.connect(world.database(bank_id))
    try:
        start = int((NOW - timedelta(days=30)).timestamp() * 1_000_000)
        ((number, _),) = conn.execute(
            "SELECT account_number, COUNT(*) AS n FROM transactions WHERE ts >= ?"
            " GROUP BY account_number ORDER BY n DESC, account_number LIMIT 1",
            (start,),
        ).fetchall()
        return str(number)
    finally:
        conn.close()


class TestTransactions:
    start = NOW - timedelta(days=30)

    def test_paging_walks_the_whole_window(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        bank = open_bank("bank.ccb")
        number = _busiest_account(world, "bank.ccb")
        whole = bank.transactions(number, self.start, NOW, page_size=1000, page_token="")
        assert whole.next_page_token == ""
        assert len(whole.transactions) > 7
        paged: list[Transaction] = []
        token, pages = "", 0
        while True:
            page = bank.transactions(number, self.start, NOW, page_size=7, page_token=token)
            assert len(page.transactions) <= 7
            paged.extend(page.transactions)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert paged == list(whole.transactions)
        assert pages == -(-len(paged) // 7)
        keys = [(t.ts, t.id) for t in paged]
        assert keys == sorted(keys)
        assert all(self.start <= t.ts < NOW and t.account_number == number for t in paged)

    def test_chain_hop_seen_at_the_receiving_bank(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        page = open_bank(hop.to_bank).transactions(
            hop.to_account, hop.ts, hop.ts + timedelta(seconds=1), page_size=10, page_token=""
        )
        (tx,) = page.transactions
        assert (tx.direction, tx.amount_minor, tx.counterparty_account, tx.counterparty_bank) == (
            Direction.IN,
            hop.amount_minor,
            hop.from_account,
            hop.from_bank,
        )

    def test_token_refused_by_another_query(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        bank = open_bank("bank.ccb")
        number = _busiest_account(world, "bank.ccb")
        token = bank.transactions(
            number, self.start, NOW, page_size=1, page_token=""
        ).next_page_token
        with pytest.raises(InvalidArgument, match="page_token"):
            bank.transactions(
                number, self.start - timedelta(days=1), NOW, page_size=1, page_token=token
            )
        with pytest.raises(InvalidArgument, match="page_token"):
            bank.transactions(number, self.start, NOW, page_size=1, page_token="garbage!")

    @pytest.mark.parametrize(
        ("start", "end", "size", "field"),
        [
            (NOW, NOW, 10, "start"),
            (NOW, NOW - timedelta(days=1), 10, "start"),
            (NOW.replace(tzinfo=None) - timedelta(days=1), NOW, 10, "start"),
            (NOW - timedelta(days=1), NOW, 0, "page_size"),
            (NOW - timedelta(days=1), NOW, 1001, "page_size"),
        ],
    )
    def test_bad_input(
        self,
        world: World,
        open_bank: Callable[[str], ReferenceBank],
        start: datetime,
        end: datetime,
        size: int,
        field: str,
    ) -> None:
        victim = world.chains[0].victim
        with pytest.raises(InvalidArgument, match=field):
            open_bank(victim.bank_id).transactions(
                victim.account_number, start, end, page_size=size, page_token=""
            )


class TestAccountsById:
    def test_accounts_across_banks(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        per_bank: dict[str, set[str]] = {}
        for bank_id in world.banks:
            conn = sqlite3.connect(world.database(bank_id))
            per_bank[bank_id] = {i for (i,) in conn.execute("SELECT id_number FROM customers")}
            conn.close()
        shared = sorted(per_bank["bank.icbc"] & per_bank["bank.ccb"])[0]
        found = {}
        for bank_id in world.banks:
            bank = open_bank(bank_id)
            if shared in per_bank[bank_id]:
                accounts = bank.accounts_by_id(shared)
                assert accounts
                assert all(a.bank_id == bank_id for a in accounts)
                found[bank_id] = accounts
            else:
                with pytest.raises(NotFound):
                    bank.accounts_by_id(shared)
        assert {"bank.icbc", "bank.ccb"} <= found.keys()
        names = {a.name for accounts in found.values() for a in accounts}
        assert len(names) == 1

    def test_invalid_id(self, open_bank: Callable[[str], ReferenceBank]) -> None:
        with pytest.raises(InvalidArgument, match="id_number"):
            open_bank("bank.icbc").accounts_by_id("44010619900101123X")


class TestLoginRecords:
    def test_mules_share_a_device(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hops = world.chains[0].hops
        devices = []
        for hop in hops[:2]:
            logins = open_bank(hop.to_bank).login_records(
                hop.to_account, NOW - timedelta(days=30), NOW
            )
            assert logins
            devices.append({r.device_id for r in logins})
        assert devices[0] & devices[1]


class TestStopPayment:
    def test_matching_order_stops_for_48_hours(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        before = bank.account_holder(hop.to_account)
        outcome = bank.stop_payment(_stop_order(hop), now=NOW)
        assert outcome.state is OrderState.ACTIVE
        assert (outcome.start, outcome.end) == (NOW, NOW + timedelta(hours=48))
        assert outcome.balance_minor == before.balance_minor
        assert outcome.executions_on_account == 1
        after = bank.account_holder(hop.to_account)
        assert after.stopped
        assert after.available_minor == 0
        with pytest.raises(RuleViolated, match="stop-payment"):
            bank.record_transaction(
                hop.to_account,
                direction=Direction.OUT,
                amount_minor=100,
                counterparty_account=hop.from_account,
                counterparty_name=hop.from_name,
                counterparty_bank=hop.from_bank,
            )

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"account_name": "张三"}, "account_name"),
            ({"amount_minor": 1}, "amount"),
            ({"transfer_time": NOW - timedelta(days=2)}, "transfer_time"),
            ({"payer_account": "6222020000000000000"}, "payer_account"),
            ({"currency": "USD"}, "currency"),
        ],
    )
    def test_mismatch_is_refused_and_nothing_stops(
        self,
        world: World,
        open_bank: Callable[[str], ReferenceBank],
        changes: dict[str, Any],
        field: str,
    ) -> None:
        hop = _first_hop(world)
        if field == "amount":
            changes = {"amount_minor": hop.amount_minor + 100}
        bank = open_bank(hop.to_bank)
        with pytest.raises(RuleViolated, match=field):
            bank.stop_payment(_stop_order(hop, **changes), now=NOW)
        assert not bank.account_holder(hop.to_account).stopped

    def test_transfer_time_tolerance_is_five_minutes(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        late = _stop_order(hop, transfer_time=hop.ts + timedelta(minutes=5, seconds=1))
        with pytest.raises(RuleViolated, match="transfer_time"):
            bank.stop_payment(late, now=NOW)
        bank.stop_payment(_stop_order(hop, transfer_time=hop.ts - timedelta(minutes=5)), now=NOW)

    def test_invalid_input_names_every_field(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        order = _stop_order(hop, order_ref="", amount_minor=0, currency="RMB", payer_account="x")
        with pytest.raises(InvalidArgument) as info:
            open_bank(hop.to_bank).stop_payment(order, now=NOW)
        fields = [v.field for v in info.value.violations]
        assert fields == ["order_ref", "payer_account", "amount", "currency"]

    def test_third_stop_on_an_account_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop, "r1"), now=NOW)
        bank.stop_payment_release(hop.to_account, "r1", now=NOW + timedelta(hours=1))
        second = bank.stop_payment(_stop_order(hop, "r2"), now=NOW + timedelta(hours=2))
        assert second.executions_on_account == 2
        bank.stop_payment_release(hop.to_account, "r2", now=NOW + timedelta(hours=3))
        with pytest.raises(RuleViolated, match="already been stopped 2 times"):
            bank.stop_payment(_stop_order(hop, "r3"), now=NOW + timedelta(hours=4))

    def test_extension_counts_as_a_stop(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop, "r1"), now=NOW)
        extended = bank.stop_payment_extend(hop.to_account, "r1", now=NOW + timedelta(hours=40))
        assert extended.end == NOW + timedelta(hours=96)
        assert extended.executions_on_account == 2
        with pytest.raises(RuleViolated, match="stopped 2 times"):
            bank.stop_payment_extend(hop.to_account, "r1", now=NOW + timedelta(hours=90))
        with pytest.raises(RuleViolated, match="stopped 2 times"):
            bank.stop_payment(_stop_order(hop, "r2"), now=NOW + timedelta(hours=97))

    def test_same_order_ref_twice_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop, "r1"), now=NOW)
        with pytest.raises(RuleViolated, match="order_ref"):
            bank.stop_payment(_stop_order(hop, "r1"), now=NOW)

    def test_release_of_unknown_order_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        with pytest.raises(RuleViolated, match="no such stop-payment"):
            bank.stop_payment_release(hop.to_account, "never-issued", now=NOW)
        with pytest.raises(RuleViolated, match="no such stop-payment"):
            bank.stop_payment_extend(hop.to_account, "never-issued", now=NOW)

    def test_release_frees_the_account(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop), now=NOW)
        released = bank.stop_payment_release(hop.to_account, "req-stop-1", now=NOW)
        assert released.state is OrderState.RELEASED
        assert not bank.account_holder(hop.to_account).stopped
        with pytest.raises(RuleViolated, match="released"):
            bank.stop_payment_release(hop.to_account, "req-stop-1", now=NOW)

    def test_expires_after_48_hours(
        self, world: World, open_bank: Callable[[str], ReferenceBank], clock: Clock
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop), now=NOW)
        clock.now = NOW + timedelta(hours=47, minutes=59)
        assert bank.account_holder(hop.to_account).stopped
        clock.now = NOW + timedelta(hours=48)
        assert not bank.account_holder(hop.to_account).stopped
        with pytest.raises(RuleViolated, match="expired"):
            bank.stop_payment_extend(hop.to_account, "req-stop-1", now=clock.now)
        with pytest.raises(RuleViolated, match="expired"):
            bank.stop_payment_release(hop.to_account, "req-stop-1", now=clock.now)

    def test_concurrent_orders_never_exceed_two(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)

        def attempt(i: int) -> bool:
            try:
                bank.stop_payment(_stop_order(hop, f"r{i}"), now=NOW)
            except RuleViolated:
                return False
            return True

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(attempt, range(12)))
        assert results.count(True) == 2


class TestRepeatedOrders:
    """Same account, case and document as an order in force: answered with it, not executed."""

    def test_a_repeated_stop_payment_reports_the_stop_in_force(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        first = bank.stop_payment(_stop_order(hop, "s1"), now=NOW)
        notice = _stop_order(hop, "s1").case_document
        again = bank.stop_payment(_stop_order(hop, "s2", case_document=notice), now=NOW + HOUR)
        assert again.repeat_of == "s1"
        assert (again.end, again.executions_on_account) == (first.end, 1)
        # a third order on the same notice is still a repeat: the account is not stopped twice
        third = bank.stop_payment(_stop_order(hop, "s3", case_document=notice), now=NOW + HOUR)
        assert third.repeat_of == "s1"
        other = bank.stop_payment(_stop_order(hop, "s4"), now=NOW + HOUR)
        assert (other.repeat_of, other.executions_on_account) == ("", 2)

    def test_a_released_stop_payment_is_not_repeated(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop, "s1"), now=NOW)
        bank.stop_payment_release(hop.to_account, "s1", now=NOW + HOUR)
        notice = _stop_order(hop, "s1").case_document
        again = bank.stop_payment(_stop_order(hop, "s2", case_document=notice), now=NOW + 2 * HOUR)
        assert (again.repeat_of, again.executions_on_account) == ("", 2)

    def test_a_repeated_freeze_freezes_nothing_more(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        first = bank.freeze(_freeze_order(hop, "f1"), now=NOW)
        decision = _freeze_order(hop, "f1").case_document
        again = bank.freeze(_freeze_order(hop, "f2", case_document=decision), now=NOW + HOUR)
        assert again.repeat_of == "f1"
        assert (again.frozen_minor, again.available_minor) == (
            first.frozen_minor,
            first.available_minor,
        )
        assert again.earlier_freezes == ()
        other_case = bank.freeze(
            _freeze_order(hop, "f3", case_document=decision, case_number=OTHER_CASE), now=NOW
        )
        assert other_case.repeat_of == ""
        assert other_case.available_minor == first.available_minor - 100_000


class TestAggregateStats:
    def test_counts_and_totals_follow_orders(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        window = (NOW - timedelta(days=1), NOW + timedelta(days=1))
        before = bank.aggregate_stats("stop_payments", *window)
        bank.stop_payment(_stop_order(hop), now=NOW)
        after = bank.aggregate_stats("stop_payments", *window)
        assert after.count == before.count + 1
        assert after.total_minor == before.total_minor + hop.amount_minor
        flagged = bank.aggregate_stats("accounts_flagged", *window)
        assert flagged.count >= 1
        assert flagged.total_minor == 0

    def test_unknown_metric_names_the_field(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        bank = open_bank(_first_hop(world).to_bank)
        with pytest.raises(InvalidArgument, match=r"aggregate_stats\.metric"):
            bank.aggregate_stats("names", NOW - timedelta(days=1), NOW)


class TestFreeze:
    def test_fixed_amount(self, world: World, open_bank: Callable[[str], ReferenceBank]) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        balance = bank.account_holder(hop.to_account).balance_minor
        outcome = bank.freeze(_freeze_order(hop), now=NOW)
        assert outcome.state is OrderState.ACTIVE
        assert (outcome.frozen_minor, outcome.balance_minor) == (100_000, balance)
        assert outcome.available_minor == balance - 100_000
        assert (outcome.start, outcome.end) == (NOW, NOW + timedelta(days=90))
        assert outcome.earlier_freezes == ()
        assert bank.account_holder(hop.to_account).frozen

    def test_longer_than_six_months_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        with pytest.raises(RuleViolated, match="6 months"):
            bank.freeze(_freeze_order(hop, end=NOW + timedelta(days=183, seconds=1)), now=NOW)
        bank.freeze(_freeze_order(hop, end=NOW + timedelta(days=183)), now=NOW)

    def test_end_in_the_past_is_invalid(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        with pytest.raises(InvalidArgument, match="end"):
            open_bank(hop.to_bank).freeze(_freeze_order(hop, end=NOW), now=NOW)

    def test_more_than_the_balance_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        balance = bank.account_holder(hop.to_account).balance_minor
        with pytest.raises(RuleViolated, match="amount exceeds"):
            bank.freeze(_freeze_order(hop, amount_minor=balance + 1), now=NOW)
        bank.freeze(_freeze_order(hop, "f1", amount_minor=balance - 100), now=NOW)
        with pytest.raises(RuleViolated, match=r"available to freeze \(¥1\.00\)"):
            bank.freeze(_freeze_order(hop, "f2", amount_minor=101), now=NOW)

    def test_earlier_freeze_is_reported(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.freeze(_freeze_order(hop, "f1", agency="police.gd.sz"), now=NOW)
        second = bank.freeze(
            _freeze_order(hop, "f2", amount_minor=5_000), now=NOW + timedelta(minutes=1)
        )
        (earlier,) = second.earlier_freezes
        assert (earlier.order_ref, earlier.amount_minor, earlier.agency) == (
            "f1",
            100_000,
            "police.gd.sz",
        )
        assert earlier.end == NOW + timedelta(days=90)

    def test_freeze_follows_a_stop_payment(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.stop_payment(_stop_order(hop), now=NOW)
        outcome = bank.freeze(_freeze_order(hop), now=NOW)
        assert outcome.frozen_minor == 100_000
        assert outcome.available_minor == 0  # still stopped

    def test_receive_only(self, world: World, open_bank: Callable[[str], ReferenceBank]) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        order = _freeze_order(hop, method=FreezeMethod.RECEIVE_ONLY, amount_minor=0)
        outcome = bank.freeze(order, now=NOW)
        assert outcome.available_minor == 0
        assert outcome.frozen_minor == outcome.balance_minor
        kwargs = {
            "amount_minor": 100,
            "counterparty_account": hop.from_account,
            "counterparty_name": hop.from_name,
            "counterparty_bank": hop.from_bank,
        }
        bank.record_transaction(hop.to_account, direction=Direction.IN, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(RuleViolated, match="receive only"):
            bank.record_transaction(hop.to_account, direction=Direction.OUT, **kwargs)  # type: ignore[arg-type]

    def test_receive_only_with_an_amount_is_invalid(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        order = _freeze_order(hop, method=FreezeMethod.RECEIVE_ONLY)
        with pytest.raises(InvalidArgument, match="amount"):
            open_bank(hop.to_bank).freeze(order, now=NOW)

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"case_number": "A123"}, "case_number"),
            ({"case_document": " "}, "case_document"),
            ({"duty_phone": "call me"}, "duty_phone"),
            ({"agency": ""}, "agency"),
        ],
    )
    def test_invalid_order(
        self,
        world: World,
        open_bank: Callable[[str], ReferenceBank],
        changes: dict[str, Any],
        field: str,
    ) -> None:
        hop = _first_hop(world)
        with pytest.raises(InvalidArgument, match=field):
            open_bank(hop.to_bank).freeze(_freeze_order(hop, **changes), now=NOW)

    def test_name_mismatch(self, world: World, open_bank: Callable[[str], ReferenceBank]) -> None:
        hop = _first_hop(world)
        with pytest.raises(RuleViolated, match="account_name"):
            open_bank(hop.to_bank).freeze(_freeze_order(hop, account_name="张三"), now=NOW)

    def test_renew_while_active(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.freeze(_freeze_order(hop), now=NOW)
        at = NOW + timedelta(days=80)
        renewed = bank.freeze_renew(
            hop.to_account, "req-freeze-1", at + timedelta(days=183), now=at
        )
        assert renewed.end == at + timedelta(days=183)
        assert renewed.state is OrderState.ACTIVE
        with pytest.raises(RuleViolated, match="6 months"):
            bank.freeze_renew(hop.to_account, "req-freeze-1", at + timedelta(days=184), now=at)

    def test_renew_after_expiry_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.freeze(_freeze_order(hop), now=NOW)
        late = NOW + timedelta(days=91)
        with pytest.raises(RuleViolated, match="expired"):
            bank.freeze_renew(hop.to_account, "req-freeze-1", late + timedelta(days=30), now=late)
        with pytest.raises(RuleViolated, match="no such freeze"):
            bank.freeze_renew(hop.to_account, "nope", late + timedelta(days=30), now=late)

    def test_release(self, world: World, open_bank: Callable[[str], ReferenceBank]) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.freeze(_freeze_order(hop), now=NOW)
        released = bank.freeze_release(hop.to_account, "req-freeze-1", now=NOW + timedelta(days=1))
        assert released.state is OrderState.RELEASED
        assert released.end == NOW + timedelta(days=1)
        assert released.available_minor == released.balance_minor
        with pytest.raises(RuleViolated, match="released"):
            bank.freeze_release(hop.to_account, "req-freeze-1", now=NOW + timedelta(days=2))


class TestMonitoring:
    def test_new_transactions_reach_the_monitor(
        self, world: World, open_bank: Callable[[str], ReferenceBank], clock: Clock
    ) -> None:
        hop = world.chains[1].hops[-1]
        bank = open_bank(hop.to_bank)
        state = bank.monitor_start(hop.to_account, NOW + timedelta(days=7), now=NOW)
        assert state.active
        assert [m.account_number for m in bank.monitored_accounts()] == [hop.to_account]
        assert bank.new_transactions_since(hop.to_account, state.start_after_id) == ()
        clock.now = NOW + timedelta(minutes=1)
        tx = bank.record_transaction(
            hop.to_account,
            direction=Direction.OUT,
            amount_minor=50_000,
            counterparty_account=hop.from_account,
            counterparty_name=hop.from_name,
            counterparty_bank=hop.from_bank,
            channel=Channel.ATM,
            memo="ATM取款",
        )
        assert tx.ts == clock.now
        assert bank.new_transactions_since(hop.to_account, state.start_after_id) == (tx,)
        assert bank.new_transactions_since(hop.to_account, tx.id) == ()
        stopped = bank.monitor_stop(hop.to_account, now=clock.now)
        assert not stopped.active
        assert bank.monitored_accounts() == ()
        with pytest.raises(RuleViolated, match="not being monitored"):
            bank.monitor_stop(hop.to_account, now=clock.now)

    def test_monitor_lapses_at_until(
        self, world: World, open_bank: Callable[[str], ReferenceBank], clock: Clock
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        bank.monitor_start(hop.to_account, NOW + timedelta(hours=1), now=NOW)
        clock.now = NOW + timedelta(hours=1)
        assert bank.monitored_accounts() == ()

    def test_until_must_be_later(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        with pytest.raises(InvalidArgument, match="until"):
            open_bank(hop.to_bank).monitor_start(hop.to_account, NOW, now=NOW)

    def test_overdraft_is_refused(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        hop = _first_hop(world)
        bank = open_bank(hop.to_bank)
        balance = bank.account_holder(hop.to_account).balance_minor
        with pytest.raises(RuleViolated, match="available balance"):
            bank.record_transaction(
                hop.to_account,
                direction=Direction.OUT,
                amount_minor=balance + 1,
                counterparty_account=hop.from_account,
                counterparty_name=hop.from_name,
                counterparty_bank=hop.from_bank,
            )


class TestThreads:
    def test_parallel_lookups(
        self, world: World, open_bank: Callable[[str], ReferenceBank]
    ) -> None:
        bank = open_bank("bank.icbc")
        conn = sqlite3.connect(world.database("bank.icbc"))
        numbers = [n for (n,) in conn.execute("SELECT account_number FROM accounts LIMIT 200")]
        conn.close()
        with ThreadPoolExecutor(max_workers=8) as pool:
            holders = list(pool.map(bank.account_holder, numbers))
        assert [h.account_number for h in holders] == numbers

    def test_close_waits_for_queries_in_flight(self, world: World, tmp_path: Path) -> None:
        path = tmp_path / "bank.ccb.sqlite"
        shutil.copy(world.database("bank.ccb"), path)
        bank = ReferenceBank(path=path, bank_id="bank.ccb", clock=lambda: NOW)
        number = _busiest_account(world, "bank.ccb")
        started, outcomes = threading.Barrier(5), []

        def hammer() -> None:
            started.wait()
            try:
                while True:
                    bank.transactions(
                        number, NOW - timedelta(days=90), NOW, page_size=1000, page_token=""
                    )
            except AgencyUnavailable as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        bank.close()
        for t in threads:
            t.join(timeout=10)
        assert len(outcomes) == 4
        with pytest.raises(AgencyUnavailable, match="closed"):
            bank.account_holder(number)
