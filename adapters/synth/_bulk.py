"""The bulk fast path of the generator: one large bank, for benchmarks.

Millions of rows are streamed straight into SQLite (``executemany``, indexes
built after the load); identifiers are derived from the row number so they are
unique without bookkeeping, and still pass the validators. Less varied than
:func:`adapters.synth.seed_world`, and without fraud chains.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from faker import Faker

from adapters._sqlite import to_us
from adapters.bank._schema import AccountRow, CustomerRow, TransactionRow, create_bank_database
from adapters.synth._gen import GD_REGIONS, card_number, resident_id
from fedgate.validate import BANK_BINS, CARRIER_PREFIXES

__all__ = ["BulkBank", "seed_bank_bulk"]

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class BulkBank:
    """What :func:`seed_bank_bulk` built, and how long it took."""

    path: Path
    bank_id: str
    accounts: int
    transactions: int
    seconds: float


def seed_bank_bulk(
    path: Path,
    *,
    bank_id: str = "bank.icbc",
    accounts: int,
    transactions: int,
    seed: int = 7,
    now: datetime | None = None,
    history_days: int = 180,
    progress: Callable[[str], None] | None = None,
) -> BulkBank:
    """Write a bank database with one account per customer and ``transactions`` postings.

    Postings are spread evenly over the ``history_days`` before ``now`` on
    uniformly chosen accounts, with running balances that never go negative.
    Raises ``FileExistsError`` if ``path`` exists, ``ValueError`` for bad sizes.
    """
    if bank_id not in BANK_BINS:
        raise ValueError(f"bank_id: {bank_id!r} is not a federation bank")
    if not 1 <= accounts <= 10**8:
        raise ValueError("accounts: must be 1..10^8")
    if transactions < 0:
        raise ValueError("transactions: must not be negative")
    started = time.perf_counter()
    now = now or datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    names = [fake.name() for _ in range(2000)]
    streets = [fake.street_name() for _ in range(500)]
    bins = BANK_BINS[bank_id]
    # Card bodies i * 104729 mod 10^12 are distinct for distinct i (104729 is prime).
    cards = [card_number(bins[i % len(bins)], i * 104_729 % 10**12) for i in range(accounts)]
    balances = [int(rng.lognormvariate(9.6, 1.3)) * 100 for _ in range(accounts)]
    end_us = to_us(now) - 3600 * _US
    start_us = end_us - history_days * 86_400 * _US

    def customers() -> Iterator[CustomerRow]:
        mobiles = CARRIER_PREFIXES["carrier.cmcc"] + CARRIER_PREFIXES["carrier.ctcc"]
        regions = len(GD_REGIONS)
        for i in range(accounts):
            code, city, district, _, _ = GD_REGIONS[i % regions]
            j = i // regions  # (region, birth day, sequence) is distinct for every i
            born = date(1960, 1, 1) + timedelta(days=(j // 1000) * 7)
            address = f"广东省{city}{district}{streets[i % 500]}{i % 300 + 1}号"
            phone = mobiles[i % len(mobiles)] + f"{i * 7919 % 10**8:08d}"
            yield CustomerRow(
                i + 1, names[i % 2000], resident_id(code, born, j % 1000), phone, address
            )

    def postings() -> Iterator[TransactionRow]:
        randrange, random_ = rng.randrange, rng.random
        span = end_us - start_us
        for k in range(transactions):
            a = randrange(accounts)
            cp = randrange(accounts)
            amount = randrange(1, 5000) * 100
            if random_() < 0.45 or balances[a] < amount:
                direction = "in"
                balances[a] += amount
            else:
                direction = "out"
                balances[a] -= amount
            yield TransactionRow(
                cards[a], start_us + k * span // max(transactions, 1), direction, amount, "CNY",
                cards[cp], names[cp % 2000], bank_id, "mobile", balances[a], "转账",
            )  # fmt: skip

    def account_rows() -> Iterator[AccountRow]:
        opened = (now.date() - timedelta(days=history_days + 30)).isoformat()
        for i in range(accounts):
            yield AccountRow(
                cards[i], i + 1, "class_i", opened, f"{bank_id} 广州分行", "active",
                balances[i], "CNY",
            )  # fmt: skip

    create_bank_database(
        path,
        bank_id=bank_id,
        customers=customers(),
        accounts=account_rows(),
        transactions=postings(),
        logins=(),
        progress=progress,
    )
    return BulkBank(path, bank_id, accounts, transactions, time.perf_counter() - started)
