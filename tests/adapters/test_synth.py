"""Tests for adapters.synth: a deterministic, valid and self-consistent synthetic world."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.synth import World, load_world, seed_bank_bulk, seed_world
from fedgate.validate import (
    bank_card_valid,
    bank_of_card,
    carrier_of_mobile,
    mobile_valid,
    resident_id_valid,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return seed_world(tmp_path_factory.mktemp("world"), customers_per_bank=200, now=NOW)


def _rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _digest(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


class TestSeedWorld:
    def test_same_seed_same_content(self, world: World, tmp_path: Path) -> None:
        again = seed_world(tmp_path, customers_per_bank=200, now=NOW)
        for member in (*world.banks, *world.carriers):
            assert _digest(again.database(member)) == _digest(world.database(member)), member
        assert (tmp_path / "world.json").read_bytes() == (
            world.directory / "world.json"
        ).read_bytes()

    def test_other_seed_other_content(self, world: World, tmp_path: Path) -> None:
        other = seed_world(tmp_path, seed=8, customers_per_bank=200, now=NOW)
        assert _digest(other.database("bank.icbc")) != _digest(world.database("bank.icbc"))

    def test_rerun_replaces_databases(self, tmp_path: Path) -> None:
        first = seed_world(tmp_path, customers_per_bank=20, fraud_chains=1, now=NOW)
        second = seed_world(tmp_path, customers_per_bank=20, fraud_chains=1, now=NOW)
        assert first.counts == second.counts

    def test_world_json_round_trips(self, world: World) -> None:
        assert load_world(world.directory) == world

    def test_database_of_unknown_member(self, world: World) -> None:
        with pytest.raises(KeyError):
            world.database("bank.boc")

    @pytest.mark.parametrize(
        ("kwargs", "option"),
        [
            ({"banks": ("bank.icbc",)}, "banks"),
            ({"banks": ("bank.icbc", "bank.nope")}, "banks"),
            ({"carriers": ()}, "carriers"),
            ({"customers_per_bank": 5}, "customers_per_bank"),
            ({"fraud_chains": -1}, "fraud_chains"),
            ({"now": datetime(2026, 1, 1)}, "now"),
        ],
    )
    def test_bad_options_named(
        self, tmp_path: Path, kwargs: dict[str, object], option: str
    ) -> None:
        with pytest.raises(ValueError, match=option):
            seed_world(tmp_path, **kwargs)  # type: ignore[arg-type]

    @pytest.mark.slow
    def test_default_size(self, tmp_path: Path) -> None:
        # How long it takes is a benchmark figure (synth_world_default_s), not a test.
        world = seed_world(tmp_path, now=NOW)
        assert world.counts.accounts >= 4 * 2000


class TestIdentifiers:
    def test_bank_identifiers_pass_the_validators(self, world: World) -> None:
        for bank in world.banks:
            db = world.database(bank)
            for id_number, phone in _rows(db, "SELECT id_number, phone FROM customers"):
                assert resident_id_valid(str(id_number), today=NOW.date()), id_number
                assert str(id_number).startswith("44")
                assert mobile_valid(str(phone)), phone
            for (number,) in _rows(db, "SELECT account_number FROM accounts"):
                assert bank_card_valid(str(number)), number
                assert bank_of_card(str(number)) == bank

    def test_carrier_identifiers_pass_the_validators(self, world: World) -> None:
        for carrier in world.carriers:
            db = world.database(carrier)
            rows = _rows(db, "SELECT number, id_number FROM subscribers")
            assert rows
            for number, id_number in rows:
                assert carrier_of_mobile(str(number)) == carrier
                assert resident_id_valid(str(id_number), today=NOW.date())

    def test_customer_phones_are_subscribers_of_that_id(self, world: World) -> None:
        owners: dict[str, str] = {}
        for carrier in world.carriers:
            owners.update(
                _rows(world.database(carrier), "SELECT number, id_number FROM subscribers")
            )
        for bank in world.banks:
            for id_number, phone in _rows(
                world.database(bank), "SELECT id_number, phone FROM customers"
            ):
                assert owners[str(phone)] == id_number

    def test_some_people_bank_at_several_banks(self, world: World) -> None:
        banks_of: dict[object, int] = defaultdict(int)
        for bank in world.banks:
            for (id_number,) in _rows(world.database(bank), "SELECT id_number FROM customers"):
                banks_of[id_number] += 1
        assert sum(1 for n in banks_of.values() if n > 1) >= 20


class TestLedgers:
    def test_balances_follow_the_postings(self, world: World) -> None:
        for bank in world.banks:
            db = world.database(bank)
            balances: dict[str, int] = dict(
                _rows(db, "SELECT account_number, balance FROM accounts")
            )
            last: dict[str, int] = {}
            for account, direction, amount, after in _rows(
                db,
                "SELECT account_number, direction, amount, balance_after FROM transactions"
                " ORDER BY id",
            ):
                assert int(after) >= 0
                if account in last:
                    step = int(amount) if direction == "in" else -int(amount)
                    assert last[account] + step == after
                last[account] = int(after)
            for account, after in last.items():
                assert balances[account] == after

    def test_transfers_between_customers_are_recorded_on_both_sides(self, world: World) -> None:
        outgoing, incoming = set(), set()
        for bank in world.banks:
            for account, direction, amount, ts, cp, cp_bank in _rows(
                world.database(bank),
                "SELECT account_number, direction, amount, ts, counterparty_account,"
                " counterparty_bank FROM transactions",
            ):
                if not bank_card_valid(str(cp)):
                    continue  # salaries from corporate accounts, card-less payments
                if direction == "out":
                    outgoing.add((bank, account, cp_bank, cp, amount, ts))
                else:
                    incoming.add((cp_bank, cp, bank, account, amount, ts))
        assert len(outgoing) > 1000
        assert outgoing == incoming


class TestFraudChains:
    def test_chain_count_and_shape(self, world: World) -> None:
        assert len(world.chains) == 5
        for chain in world.chains:
            assert 3 <= len(chain.hops) <= 5
            assert chain.hops[0].from_account == chain.victim.account_number
            assert chain.hops[0].from_bank == chain.victim.bank_id
            for a, b in zip(chain.hops, chain.hops[1:], strict=False):
                assert a.to_account == b.from_account
                assert a.to_bank == b.from_bank
                assert a.ts < b.ts <= a.ts + timedelta(minutes=10)
                assert b.amount_minor < a.amount_minor
            for hop in chain.hops:
                assert hop.from_bank != hop.to_bank
                assert NOW - timedelta(hours=1) <= hop.ts < NOW
            assert chain.first_contact < chain.hops[0].ts

    def test_victims_are_distinct(self, world: World) -> None:
        assert len({c.victim.account_number for c in world.chains}) == len(world.chains)

    def test_each_hop_is_on_both_banks(self, world: World) -> None:
        for chain in world.chains:
            for hop in chain.hops:
                ts = int((hop.ts - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
                sent = _rows(
                    world.database(hop.from_bank),
                    "SELECT counterparty_name, counterparty_bank FROM transactions"
                    " WHERE account_number = ? AND direction = 'out' AND counterparty_account = ?"
                    " AND amount = ? AND ts = ?",
                    (hop.from_account, hop.to_account, hop.amount_minor, ts),
                )
                received = _rows(
                    world.database(hop.to_bank),
                    "SELECT counterparty_name, counterparty_bank FROM transactions"
                    " WHERE account_number = ? AND direction = 'in' AND counterparty_account = ?"
                    " AND amount = ? AND ts = ?",
                    (hop.to_account, hop.from_account, hop.amount_minor, ts),
                )
                assert sent == [(hop.to_name, hop.to_bank)]
                assert received == [(hop.from_name, hop.from_bank)]

    def test_fraud_number_called_the_victim_first(self, world: World) -> None:
        for chain in world.chains:
            caller = chain.fraud_numbers[0]
            victim = chain.victim
            first_us = int(
                (chain.hops[0].ts - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)
            )
            out = _rows(
                world.database(caller.carrier_id),
                "SELECT kind, ts FROM records WHERE number = ? AND other_number = ?"
                " AND direction = 'out' ORDER BY ts",
                (caller.number, victim.phone),
            )
            inbound = _rows(
                world.database(victim.carrier_id),
                "SELECT kind, ts FROM records WHERE number = ? AND other_number = ?"
                " AND direction = 'in' ORDER BY ts",
                (victim.phone, caller.number),
            )
            assert out == inbound
            assert {k for k, _ in out} == {"sms", "voice"}
            assert all(int(ts) < first_us for _, ts in out)

    def test_fraudster_holds_several_sims_and_mules_own_theirs(self, world: World) -> None:
        for chain in world.chains:
            number = chain.fraud_numbers[0]
            db = world.database(number.carrier_id)
            ((owner,),) = _rows(
                db, "SELECT id_number FROM subscribers WHERE number = ?", (number.number,)
            )
            ((count,),) = _rows(
                db, "SELECT COUNT(*) FROM subscribers WHERE id_number = ?", (owner,)
            )
            assert int(count) >= 3
            for hop in chain.hops:
                ((id_number, phone),) = _rows(
                    world.database(hop.to_bank),
                    "SELECT c.id_number, c.phone FROM customers c JOIN accounts a"
                    " ON a.customer_id = c.id WHERE a.account_number = ?",
                    (hop.to_account,),
                )
                carrier = carrier_of_mobile(str(phone))
                assert carrier is not None
                subscribed = _rows(
                    world.database(carrier),
                    "SELECT id_number, channel FROM subscribers WHERE number = ?",
                    (phone,),
                )
                assert subscribed[0][0] == id_number


class TestBulk:
    def test_bulk_bank_is_valid(self, tmp_path: Path) -> None:
        built = seed_bank_bulk(tmp_path / "bulk.sqlite", accounts=500, transactions=5000, now=NOW)
        assert (built.accounts, built.transactions) == (500, 5000)
        db = built.path
        numbers = _rows(db, "SELECT account_number FROM accounts")
        assert len({n for (n,) in numbers}) == 500
        assert all(bank_card_valid(str(n)) for (n,) in numbers)
        ids = _rows(db, "SELECT id_number FROM customers")
        assert len({i for (i,) in ids}) == 500
        assert all(resident_id_valid(str(i), today=NOW.date()) for (i,) in ids)
        ((n,),) = _rows(db, "SELECT COUNT(*) FROM transactions WHERE balance_after < 0")
        assert n == 0

    def test_bulk_refuses_existing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "bulk.sqlite"
        path.touch()
        with pytest.raises(FileExistsError):
            seed_bank_bulk(path, accounts=1, transactions=0)
