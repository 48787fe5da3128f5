"""The synthetic world's generator: people, accounts, 90 days of history, calls, fraud chains.

Deterministic: every random choice comes from one ``random.Random(seed)`` and
one seeded Faker, in a fixed order, and nothing iterates over a ``set``.
Produces database rows (see ``adapters.*._schema``) and the chains' truth.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from faker import Faker

from adapters._sqlite import to_us
from adapters.bank._schema import AccountRow, CustomerRow, LoginRow, TransactionRow
from adapters.carrier._schema import CellRow, LocationRow, RecordRow, SubscriberRow
from fedgate.validate import (
    BANK_BINS,
    CARRIER_PREFIXES,
    luhn_check_digit,
    resident_id_check_digit,
)

__all__ = [
    "GD_REGIONS",
    "BankRows",
    "CarrierRows",
    "DeadEnd",
    "FraudChain",
    "FraudNumber",
    "Holding",
    "Hop",
    "Victim",
    "WorldRows",
    "build_rows",
    "card_number",
    "resident_id",
]

GD_REGIONS: tuple[tuple[str, str, str, float, float], ...] = (
    ("440103", "广州市", "荔湾区", 23.12, 113.24),
    ("440104", "广州市", "越秀区", 23.13, 113.27),
    ("440105", "广州市", "海珠区", 23.10, 113.32),
    ("440106", "广州市", "天河区", 23.13, 113.36),
    ("440111", "广州市", "白云区", 23.16, 113.27),
    ("440112", "广州市", "黄埔区", 23.11, 113.46),
    ("440113", "广州市", "番禺区", 22.94, 113.38),
    ("440114", "广州市", "花都区", 23.40, 113.22),
    ("440303", "深圳市", "罗湖区", 22.55, 114.13),
    ("440304", "深圳市", "福田区", 22.54, 114.06),
    ("440305", "深圳市", "南山区", 22.53, 113.93),
    ("440306", "深圳市", "宝安区", 22.56, 113.88),
    ("440307", "深圳市", "龙岗区", 22.72, 114.25),
    ("440402", "珠海市", "香洲区", 22.27, 113.54),
    ("440604", "佛山市", "禅城区", 23.01, 113.12),
    ("440605", "佛山市", "南海区", 23.03, 113.14),
    ("440606", "佛山市", "顺德区", 22.81, 113.29),
    ("440703", "江门市", "蓬江区", 22.60, 113.08),
    ("441302", "惠州市", "惠城区", 23.11, 114.42),
    ("441900", "东莞市", "", 23.02, 113.75),
    ("442000", "中山市", "", 22.52, 113.39),
)
"""Guangdong region codes (the first six digits of a resident ID), with names and centres."""

_BANK_NAMES = {
    "bank.icbc": "中国工商银行",
    "bank.ccb": "中国建设银行",
    "bank.abc": "中国农业银行",
    "bank.gzrcb": "广州农村商业银行",
}
_CARRIER_SHARE = {"carrier.cmcc": 55, "carrier.cucc": 20, "carrier.ctcc": 25}
_MNC = {"carrier.cmcc": "00", "carrier.cucc": "01", "carrier.ctcc": "11"}
_CELLS_PER_REGION = 6
_PAYMENT_INSTITUTIONS = (
    ("财付通支付科技有限公司", "243300133", "财付通"),
    ("支付宝（中国）网络技术有限公司", "215500690", "支付宝"),
    ("中国银联股份有限公司", "110000000", "银联"),
)
_MERCHANTS = (
    "美宜佳便利店", "广州地铁", "美团外卖", "京东商城", "盒马鲜生", "滴滴出行", "中国石化",
    "大润发超市", "屈臣氏", "拼多多", "永辉超市", "肯德基", "瑞幸咖啡", "中国南方电网",
)  # fmt: skip
_IP_PREFIXES = ("113.108", "183.6", "14.127", "120.236", "119.123", "116.22", "59.41", "221.4")
_LOCAL = timedelta(hours=8)
_DAY_US = 86_400_000_000
_MIN_US = 60_000_000


def resident_id(region: str, born: date, seq: int) -> str:
    """A resident ID number: region, ``YYYYMMDD``, 3-digit sequence, GB 11643 check digit."""
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + resident_id_check_digit(first17)


def card_number(prefix: str, body: int, length: int = 19) -> str:
    """A card number: issuer ``prefix``, ``body`` zero-padded, and a Luhn check digit."""
    partial = f"{prefix}{body:0{length - 1 - len(prefix)}d}"
    return partial + luhn_check_digit(partial)


@dataclass(frozen=True, slots=True)
class Victim:
    name: str
    id_number: str
    phone: str
    carrier_id: str
    account_number: str
    bank_id: str


@dataclass(frozen=True, slots=True)
class FraudNumber:
    number: str
    carrier_id: str


@dataclass(frozen=True, slots=True)
class Hop:
    """One transfer of a chain; hop 1 is the victim's own transfer."""

    index: int
    from_bank: str
    from_account: str
    from_name: str
    to_bank: str
    to_account: str
    to_name: str
    amount_minor: int
    currency: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class Holding:
    """An account at a member bank still holding a victim's money at the end of the world."""

    bank: str
    account: str
    name: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class DeadEnd:
    """Victim's money that left the banks' reach: ``kind`` is ``cash`` (ATM), ``merchant`` or
    ``outside`` (a bank outside the federation); ``amount_minor`` is the victim's money in it."""

    kind: str
    from_bank: str
    from_account: str
    to_account: str
    amount_minor: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class FraudChain:
    """A planted chain. ``hops`` is its main line (victim → mule 1 → … → last mule); the
    chain also splits, merges, cashes out, pays merchants and leaves the federation, and the
    mules spend a little of their own money on the way. ``holdings`` says which accounts hold
    how much of the victim's money at the end (own money spent first: ``docs/chase.md``);
    ``innocents`` are accounts that received only the mules' own money."""

    index: int
    victim: Victim
    fraud_numbers: tuple[FraudNumber, ...]
    first_contact: datetime
    hops: tuple[Hop, ...]
    holdings: tuple[Holding, ...] = ()
    dead_ends: tuple[DeadEnd, ...] = ()
    innocents: tuple[str, ...] = ()


@dataclass(slots=True)
class BankRows:
    customers: list[CustomerRow] = field(default_factory=list)
    accounts: list[AccountRow] = field(default_factory=list)
    transactions: list[TransactionRow] = field(default_factory=list)
    logins: list[LoginRow] = field(default_factory=list)


@dataclass(slots=True)
class CarrierRows:
    subscribers: list[SubscriberRow] = field(default_factory=list)
    cells: list[CellRow] = field(default_factory=list)
    records: list[RecordRow] = field(default_factory=list)
    locations: list[LocationRow] = field(default_factory=list)


@dataclass(slots=True)
class WorldRows:
    banks: dict[str, BankRows]
    carriers: dict[str, CarrierRows]
    chains: list[FraudChain]
    people: int


@dataclass(slots=True)
class _Person:
    name: str
    id_number: str
    region: int
    address: str
    device: str
    role: str  # customer, mule or fraudster
    phones: list[tuple[str, str]] = field(default_factory=list)  # (number, carrier)
    customer_ids: dict[str, int] = field(default_factory=dict)  # bank -> customer id


@dataclass(slots=True)
class _Account:
    number: str
    bank: str
    person: _Person
    balance: int
    victim: bool = False
    traced: int = 0
    """The part of ``balance`` that is a victim's money (the chase's rule: own money first)."""


class _Builder:
    def __init__(
        self, seed: int, banks: tuple[str, ...], carriers: tuple[str, ...], now: datetime
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
        self.fake = Faker("zh_CN")
        self.fake.seed_instance(seed)
        self.banks, self.carriers, self.now = banks, carriers, now
        self.now_us = to_us(now)
        self.people: list[_Person] = []
        self.accounts: list[_Account] = []
        self.bank_rows = {b: BankRows() for b in banks}
        self.carrier_rows = {c: CarrierRows() for c in carriers}
        self._used: set[str] = set()  # membership only: ids, phones, cards
        self._carrier_weights = [_CARRIER_SHARE.get(c, 20) for c in carriers]

    # ------------------------------------------------------------------ identities

    def _unique(self, make: Callable[[], str]) -> str:
        while (value := make()) in self._used:
            pass
        self._used.add(value)
        return value

    def person(self, role: str = "customer", *, min_age: int = 18, max_age: int = 75) -> _Person:
        rng = self.rng
        region = rng.randrange(len(GD_REGIONS))
        code, city, district, _, _ = GD_REGIONS[region]
        today = self.now.date()
        span = (max_age - min_age) * 365
        born = today - timedelta(days=min_age * 365 + 1 + rng.randrange(span))
        idn = self._unique(lambda: resident_id(code, born, rng.randrange(1000)))
        name = self.fake.name_male() if int(idn[16]) % 2 else self.fake.name_female()
        street = self.fake.street_name() + f"{rng.randint(1, 399)}号"
        address = f"广东省{city}{district}{street}"
        device = f"{rng.getrandbits(64):016x}"
        p = _Person(name, idn, region, address, device, role)
        self.people.append(p)
        return p

    def phone(self, person: _Person, carrier: str | None = None) -> str:
        rng = self.rng
        c = carrier or rng.choices(self.carriers, self._carrier_weights)[0]
        prefixes = CARRIER_PREFIXES[c]
        number = self._unique(lambda: rng.choice(prefixes) + f"{rng.randrange(10**8):08d}")
        person.phones.append((number, c))
        return number

    def account(
        self, person: _Person, bank: str, *, opened: date, kind: str, balance: int
    ) -> _Account:
        rng = self.rng
        rows = self.bank_rows[bank]
        if bank not in person.customer_ids:
            cid = len(rows.customers) + 1
            person.customer_ids[bank] = cid
            phone = person.phones[0][0] if person.phones else self.phone(person)
            rows.customers.append(
                CustomerRow(cid, person.name, person.id_number, phone, person.address)
            )
        bins = BANK_BINS[bank]
        number = self._unique(lambda: card_number(rng.choice(bins), rng.randrange(10**12)))
        _, city, district, _, _ = GD_REGIONS[person.region]
        branch = f"{_BANK_NAMES.get(bank, bank)}{city}{district or '城区'}支行"
        rows.accounts.append(
            AccountRow(number, person.customer_ids[bank], kind, opened.isoformat(), branch,
                       "active", 0, "CNY")
        )  # fmt: skip
        acct = _Account(number, bank, person, balance)
        self.accounts.append(acct)
        return acct

    # ------------------------------------------------------------------ postings

    def post(
        self, acct: _Account, ts: int, direction: str, amount: int, cp: tuple[str, str, str],
        channel: str, memo: str,
    ) -> None:  # fmt: skip
        ts -= ts % 1_000_000  # whole seconds, like the systems it imitates
        acct.balance += amount if direction == "in" else -amount
        self.bank_rows[acct.bank].transactions.append(
            TransactionRow(acct.number, ts, direction, amount, "CNY", cp[0], cp[1], cp[2],
                           channel, acct.balance, memo)
        )  # fmt: skip

    def spend(self, acct: _Account, amount: int) -> int:
        """Take ``amount`` out of ``acct``'s ledger, own money first; returns the traced part."""
        own = acct.balance - acct.traced
        from_traced = min(acct.traced, amount - min(own, amount))
        acct.traced -= from_traced
        return from_traced

    def transfer(
        self, src: _Account, dst: _Account, ts: int, amount: int, memo: str,
        traced: int | None = None,
    ) -> int:  # fmt: skip
        """Move money between two accounts of the world; returns the traced part moved
        (``traced``: all of it is a victim's money, for the victim's own transfer)."""
        part = self.spend(src, amount)
        if traced is not None:
            part = traced
        self.post(src, ts, "out", amount, (dst.number, dst.person.name, dst.bank), "mobile", memo)
        self.post(dst, ts, "in", amount, (src.number, src.person.name, src.bank), "mobile", memo)
        dst.traced += part
        return part

    # ------------------------------------------------------------------ calls

    def call(
        self, a: tuple[str, str], b: tuple[str, str], ts: int, kind: str, duration: int,
        cells: tuple[int, int],
    ) -> None:  # fmt: skip
        """Record a call or SMS from ``a`` to ``b`` at both carriers (when they are ours)."""
        ts -= ts % 1_000_000
        for (number, carrier), (other, _), direction, cell in (
            (a, b, "out", cells[0]),
            (b, a, "in", cells[1]),
        ):
            rows = self.carrier_rows.get(carrier)
            if rows is None:
                continue
            cell_id = rows.cells[cell].cell_id
            rows.records.append(RecordRow(number, ts, kind, direction, other, duration, cell_id))
            rows.locations.append(LocationRow(number, ts, cell_id))

    def home_cell(self, person: _Person) -> int:
        return person.region * _CELLS_PER_REGION + self.rng.randrange(_CELLS_PER_REGION)


def _cells(carrier: str, rng: random.Random) -> list[CellRow]:
    cells = []
    for region, (_, _, _, lat, lon) in enumerate(GD_REGIONS):
        for j in range(_CELLS_PER_REGION):
            lac = 9000 + region
            cells.append(
                CellRow(
                    f"460-{_MNC.get(carrier, '99')}-{lac}-{region * 100 + j + 1}",
                    round(lat + rng.uniform(-0.05, 0.05), 5),
                    round(lon + rng.uniform(-0.05, 0.05), 5),
                    rng.choice((300, 500, 800, 1200, 2000)),
                )
            )
    return cells


def _opening_balance(rng: random.Random) -> int:
    """A balance in fen: log-normal, median about 15,000 yuan."""
    return int(min(rng.lognormvariate(9.6, 1.3), 3_000_000)) * 100


def build_rows(
    *,
    seed: int,
    banks: tuple[str, ...],
    carriers: tuple[str, ...],
    customers_per_bank: int,
    fraud_chains: int,
    now: datetime,
    progress: Callable[[str], None],
) -> WorldRows:
    """Every row of every database of the world, and the truth of its fraud chains."""
    b = _Builder(seed, banks, carriers, now)
    for c in carriers:
        b.carrier_rows[c].cells.extend(_cells(c, b.rng))
    progress("people and accounts")
    _customers(b, customers_per_bank)
    progress("90 days of transactions")
    _history(b)
    progress("fraud chains")
    chains = [_chain(b, i) for i in range(1, fraud_chains + 1)]
    progress("calls, SMS and logins")
    _calls(b)
    _logins(b)
    _subscribers(b)
    balances = {a.number: a.balance for a in b.accounts}
    for rows in b.bank_rows.values():
        rows.accounts[:] = [r._replace(balance=balances[r.account_number]) for r in rows.accounts]
    for crow in b.carrier_rows.values():
        crow.records.sort(key=lambda r: r.ts)
        crow.locations.sort(key=lambda r: r.ts)
    return WorldRows(b.bank_rows, b.carrier_rows, chains, len(b.people))


def _customers(b: _Builder, per_bank: int) -> None:
    rng = b.rng
    today = b.now.date()
    for bank in b.banks:
        while len(b.bank_rows[bank].customers) < per_bank:
            person = rng.choice(b.people) if b.people and rng.random() < 0.25 else None
            if person is None or bank in person.customer_ids:
                person = b.person()
                b.phone(person)
                if rng.random() < 0.1:
                    b.phone(person)
            for _ in range(2 if rng.random() < 0.15 else 1):
                opened = today - timedelta(days=120 + rng.randrange(3650))
                kind = "class_i" if rng.random() < 0.85 else "class_ii"
                b.account(person, bank, opened=opened, kind=kind, balance=_opening_balance(rng))


def _history(b: _Builder) -> None:
    """Salaries, shopping, ATM withdrawals and transfers over the 90 days before ``now``."""
    rng = b.rng
    start = b.now_us - 90 * _DAY_US
    end = b.now_us - 2 * 3600 * 1_000_000
    employers = [
        (b.fake.company(), f"44{rng.randrange(10**17):017d}", rng.choice(b.banks))
        for _ in range(40)
    ]
    events: list[tuple[int, int, int, int, int]] = []  # ts, kind, account, other, amount
    accounts = b.accounts
    for i in range(len(accounts)):
        if rng.random() < 0.7:
            employer = rng.randrange(len(employers))
            pay = rng.randint(40, 300) * 10_000
            day = start + rng.randrange(_DAY_US)
            while day < end:
                events.append((day, 0, i, employer, pay + rng.randint(-50, 50) * 100))
                day += 30 * _DAY_US
        for _ in range(rng.randint(6, 20)):
            amount = int(rng.lognormvariate(4.5, 1.1) * 100) + 100
            events.append((rng.randrange(start, end), 1, i, rng.randrange(len(_MERCHANTS)), amount))
        for _ in range(rng.randint(0, 2)):
            events.append((rng.randrange(start, end), 2, i, 0, rng.randint(1, 30) * 10_000))
        for _ in range(rng.randint(0, 4)):
            other = rng.randrange(len(accounts) - 1)
            other += other >= i
            amount = rng.randint(1, 200) * 5_000
            events.append((rng.randrange(start, end), 3, i, other, amount))
    events.sort()
    for ts, kind, i, other, amount in events:
        acct = accounts[i]
        if kind == 0:
            name, number, bank = employers[other]
            b.post(acct, ts, "in", amount, (number, name, bank), "online", "工资")
        elif acct.balance < amount:
            continue
        elif kind == 1:
            inst, inst_account, label = rng.choice(_PAYMENT_INSTITUTIONS)
            channel = "pos" if label == "银联" else "third_party"
            b.post(acct, ts, "out", amount, (inst_account, inst, label), channel, _MERCHANTS[other])
        elif kind == 2:
            b.post(acct, ts, "out", amount, ("", "", ""), "atm", "ATM取款")
        else:
            b.transfer(
                acct, accounts[other], ts, amount, rng.choice(("转账", "还款", "红包", "房租"))
            )


def _chain(b: _Builder, index: int) -> FraudChain:
    """Plant one fraud chain ending before ``now``; returns its truth."""
    rng = b.rng
    customers = [a for a in b.accounts if a.person.role == "customer" and not a.victim]
    rich = [a for a in customers if a.balance >= 2_000_000]
    victim_acct = rng.choice(rich or sorted(customers, key=lambda a: -a.balance)[:1])
    victim_acct.victim = True
    victim = victim_acct.person
    first = b.now_us - rng.randint(38, 55) * _MIN_US - rng.randrange(60) * 1_000_000
    first -= first % 1_000_000  # banks record whole seconds
    # The fraudster: one identity holding several SIMs bought through an agent.
    fraudster = b.person("fraudster", min_age=20, max_age=45)
    # Fraudsters' SIMs at each carrier in turn, so that every carrier has a planted number.
    carrier = b.carriers[(index - 1) % len(b.carriers)]
    sims = [b.phone(fraudster, carrier) for _ in range(rng.randint(3, 6))]
    fraud_numbers = tuple(FraudNumber(n, carrier) for n in sims[:2])  # two numbers call the victim
    victim_phone = victim.phones[0]
    duration = rng.randint(300, 1500)
    call_ts = first - (duration + rng.randint(60, 300)) * 1_000_000
    caller = (fraud_numbers[0].number, carrier)
    cells = (rng.randrange(len(GD_REGIONS) * _CELLS_PER_REGION), b.home_cell(victim))
    b.call(caller, victim_phone, call_ts - 10 * _MIN_US, "sms", 0, cells)
    b.call(caller, victim_phone, call_ts, "voice", duration, cells)
    if len(fraud_numbers) > 1:
        b.call((fraud_numbers[1].number, carrier), victim_phone, call_ts - 30 * _MIN_US,
               "voice", rng.randint(30, 120), cells)  # fmt: skip
    for _ in range(rng.randint(10, 25)):  # the same number calls many others
        other = rng.choice(b.people)
        if other.phones and other is not victim:
            ts = b.now_us - rng.randrange(1, 24 * 60) * _MIN_US
            duration, callee_cell = rng.randint(5, 90), b.home_cell(other)
            # Not the fraudster's own SIM (it would call itself); the draws above are made all
            # the same, so that every other row of a seeded world stays as it was.
            if other is not fraudster:
                b.call(caller, other.phones[0], ts, "voice", duration, (cells[0], callee_cell))
    truth_victim = Victim(victim.name, victim.id_number, victim_phone[0], victim_phone[1],
                          victim_acct.number, victim_acct.bank)  # fmt: skip
    amount = min(victim_acct.balance * rng.randint(50, 95) // 100 // 10_000 * 10_000, 50_000_000)
    hops, holdings, dead_ends, innocents = _money_trail(b, victim_acct, first, amount, index)
    return FraudChain(
        index, truth_victim, fraud_numbers, _dt(call_ts - 10 * _MIN_US), tuple(hops),
        holdings, dead_ends, innocents,
    )  # fmt: skip


_OUTSIDE_BANKS = (("622588", "招商银行"), ("622155", "平安银行"), ("621483", "招商银行"))
"""Issuers outside the federation (no member's prefix): a hop there leaves the federation."""


def _outside_card(prefix: str, rng: random.Random) -> str:
    return card_number(prefix, rng.randrange(10**12))


def _mule(b: _Builder, exclude: str) -> _Account:
    rng = b.rng
    bank = rng.choice([x for x in b.banks if x != exclude])
    mule = b.person("mule", min_age=18, max_age=30)
    b.phone(mule)
    opened = b.now.date() - timedelta(days=rng.randint(3, 30))
    return b.account(mule, bank, opened=opened, kind="class_ii",
                     balance=rng.randint(50, 300) * 100)  # fmt: skip


def _money_trail(
    b: _Builder, victim_acct: _Account, first: int, amount: int, chain: int
) -> tuple[list[Hop], tuple[Holding, ...], tuple[DeadEnd, ...], tuple[str, ...]]:
    """The victim's transfer and where the money goes: a main line of 3-5 mules a few minutes
    apart; mule 1 splits part off to a side account, which cashes some out at an ATM and
    merges the rest back into mule 3; mules spend a little of their own money (a meal, a
    transfer to a friend) before forwarding; a mule in the middle pays a merchant; odd chains
    end with a transfer to a bank outside the federation, even ones with the last mule holding
    all it received. Events run in time order, so the ledger's
    own-money-first rule gives the truth."""
    rng = b.rng
    n = rng.randint(3, 5)
    mules: list[_Account] = []
    src = victim_acct
    for _ in range(n):
        mules.append(_mule(b, src.bank))
        src = mules[-1]
    side = _mule(b, mules[0].bank)
    opening = {a.number: a.balance for a in (*mules, side)}
    times = [first]
    for _ in range(n - 1):
        times.append(times[-1] + rng.randint(150, 420) * 1_000_000)
    merchant_at = rng.randrange(1, n - 1) if n > 2 else 1  # a mule in the middle pays one
    outside = chain % 2 == 1  # odd chains end outside; even ones end with all the money held
    innocents: list[str] = []
    dead: list[DeadEnd] = []
    events: list[tuple[int, int, str, int]] = []  # ts, order, kind, mule index
    for i in range(n):
        events.append((times[i], 0, "receive", i))
        events.append((times[i] + rng.randint(20, 50) * 1_000_000, 1, "own", i))
        if i == merchant_at:
            events.append((times[i] + rng.randint(100, 140) * 1_000_000, 3, "merchant", i))
    events.append((times[1] + rng.randint(10, 60) * 1_000_000, 2, "split", 0))
    events.append((times[1] + rng.randint(120, 200) * 1_000_000, 2, "cash", 0))
    events.append((times[2] + rng.randint(30, 90) * 1_000_000, 4, "merge", 0))
    if outside:
        events.append((times[-1] + rng.randint(120, 240) * 1_000_000, 5, "outside", n - 1))
    events.sort()
    hops: list[Hop] = []

    def hop_to(i: int, ts: int, amt: int) -> None:
        source = victim_acct if i == 0 else mules[i - 1]
        memo = "转账" if i == 0 else rng.choice(("货款", "往来款"))
        b.transfer(source, mules[i], ts, amt, memo, traced=amt if i == 0 else None)
        hops.append(Hop(i + 1, source.bank, source.number, source.person.name, mules[i].bank,
                        mules[i].number, mules[i].person.name, amt, "CNY", _dt(ts)))  # fmt: skip
        for k in range(2):  # mules log in from one shared phone
            b.bank_rows[mules[i].bank].logins.append(
                LoginRow(mules[i].number, ts + (k * 2 - 1) * rng.randint(20, 90) * 1_000_000,
                         device, ip, "mobile")
            )  # fmt: skip

    device = f"{rng.getrandbits(64):016x}"
    ip = f"{rng.choice(_IP_PREFIXES)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    last_amount = amount
    for ts, _, kind, i in events:
        mule = mules[i]
        if kind == "receive":
            if i == 0:
                amt = amount
            else:
                prev = mules[i - 1]
                amt = min(prev.traced * rng.randint(55, 75) // 100, last_amount * 98 // 100)
                amt = amt // 1_000 * 1_000
            hop_to(i, ts, amt)
            last_amount = amt
        elif kind == "own":  # the mule's own small spending: out of its opening balance
            own = min(mule.balance - mule.traced, opening[mule.number])
            if own < 2_000:
                continue
            spend = rng.randint(own // 10, own * 8 // 10) // 100 * 100
            if rng.random() < 0.5:
                friends = [a for a in b.accounts if a.person.role == "customer" and not a.victim
                           and a.bank != mule.bank]  # fmt: skip
                friend = friends[rng.randrange(len(friends))]
                b.transfer(mule, friend, ts, spend, rng.choice(("还钱", "红包", "饭钱")))
                innocents.append(friend.number)
            else:
                b.spend(mule, spend)
                inst, inst_account, label = rng.choice(_PAYMENT_INSTITUTIONS)
                b.post(mule, ts, "out", spend, (inst_account, inst, label), "third_party",
                       rng.choice(_MERCHANTS))  # fmt: skip
        elif kind == "merchant":
            amt = mule.traced * rng.randint(5, 12) // 100 // 100 * 100
            if amt > 0:
                part = b.spend(mule, amt)
                inst, inst_account, label = rng.choice(_PAYMENT_INSTITUTIONS)
                b.post(mule, ts, "out", amt, (inst_account, inst, label), "third_party",
                       rng.choice(_MERCHANTS))  # fmt: skip
                if part > 0:
                    dead.append(DeadEnd("merchant", mule.bank, mule.number, inst_account, part,
                                        _dt(ts)))  # fmt: skip
        elif kind == "split":  # after forwarding, mule 1 sends most of what is left aside
            amt = mule.traced * rng.randint(60, 80) // 100 // 1_000 * 1_000
            b.transfer(mule, side, ts, amt, rng.choice(("货款", "往来款")))
        elif kind == "cash":
            amt = side.traced * rng.randint(30, 60) // 100 // 10_000 * 10_000
            if amt > 0:
                part = b.spend(side, amt)
                b.post(side, ts, "out", amt, ("", "", ""), "atm", "ATM取款")
                if part > 0:
                    dead.append(DeadEnd("cash", side.bank, side.number, "", part, _dt(ts)))
        elif kind == "merge":  # the side account sends most of the rest on to mule 3
            amt = side.traced * rng.randint(85, 95) // 100 // 1_000 * 1_000
            b.transfer(side, mules[2], ts, amt, rng.choice(("货款", "往来款")))
        elif kind == "outside":
            prefix, bank_name = rng.choice(_OUTSIDE_BANKS)
            number = b._unique(functools.partial(_outside_card, prefix, rng))
            amt = mule.traced * rng.randint(40, 70) // 100 // 1_000 * 1_000
            if amt > 0:
                part = b.spend(mule, amt)
                name = b.fake.name()
                b.post(mule, ts, "out", amt, (number, name, bank_name), "mobile", "转账")
                if part > 0:
                    dead.append(DeadEnd("outside", mule.bank, mule.number, number, part, _dt(ts)))
    holdings = tuple(
        Holding(a.bank, a.number, a.person.name, a.traced) for a in (*mules, side) if a.traced > 0
    )
    held_innocents = {h.account for h in holdings}
    return hops, holdings, tuple(dead), tuple(x for x in innocents if x not in held_innocents)


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _calls(b: _Builder) -> None:
    """A week of ordinary calls and SMS between people, and recent location updates."""
    rng = b.rng
    people = [p for p in b.people if p.phones]
    week = 7 * _DAY_US
    for p in people:
        home = b.home_cell(p)
        for phone in p.phones:
            for _ in range(rng.randint(2, 8)):
                other = rng.choice(people)
                if other is p:
                    continue
                kind = "sms" if rng.random() < 0.3 else "voice"
                duration = 0 if kind == "sms" else int(rng.expovariate(1 / 120)) + 1
                ts = b.now_us - rng.randrange(5 * _MIN_US, week)
                b.call(
                    phone, rng.choice(other.phones), ts, kind, duration, (home, b.home_cell(other))
                )
            rows = b.carrier_rows.get(phone[1])
            if rows is not None:
                for hours in (rng.randint(8, 20), rng.randint(1, 3)):
                    ts = b.now_us - hours * 3_600_000_000 - rng.randrange(3600) * 1_000_000
                    rows.locations.append(LocationRow(phone[0], ts, rows.cells[home].cell_id))


def _logins(b: _Builder) -> None:
    rng = b.rng
    for acct in b.accounts:
        ip = f"{rng.choice(_IP_PREFIXES)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        logins = b.bank_rows[acct.bank].logins
        for _ in range(rng.randint(1, 6)):
            ts = b.now_us - rng.randrange(180, 30 * 86_400) * 1_000_000
            channel = rng.choice(("mobile", "online"))
            logins.append(LoginRow(acct.number, ts, acct.person.device, ip, channel))
    for rows in b.bank_rows.values():
        rows.logins.sort(key=lambda r: r.ts)


def _subscribers(b: _Builder) -> None:
    rng = b.rng
    for p in b.people:
        for k, (number, carrier) in enumerate(p.phones):
            rows = b.carrier_rows.get(carrier)
            if rows is None:
                continue
            if p.role == "customer":
                registered = b.now_us - rng.randrange(2 * 86_400, 3000 * 86_400) * 1_000_000
                channel = rng.choices(("store", "online", "agent"), (60, 30, 10))[0]
            else:  # fresh SIMs, bought online or through an agent
                registered = b.now_us - rng.randrange(2 * 86_400, 60 * 86_400) * 1_000_000
                channel = rng.choice(("online", "agent"))
            state, reason, state_ts = "active", "", registered
            if p.role == "customer" and k > 0 and rng.random() < 0.08:
                state, reason = rng.choice((("cancelled", "用户销号"), ("suspended", "欠费停机")))
                state_ts += rng.randrange((b.now_us - registered) // 1_000_000) * 1_000_000
            rows.subscribers.append(
                SubscriberRow(
                    number, p.name, p.id_number, registered, channel, state, state_ts, reason, ""
                )
            )
    for rows in b.carrier_rows.values():
        rows.subscribers.sort()
