"""A seeded generator of a synthetic federation world: bank and carrier databases with fraud chains.

:func:`seed_world` writes ``<member id>.sqlite`` for every bank and carrier
(the reference backends' format) and ``world.json`` with the ground truth of
the planted fraud chains. For a given ``seed`` and ``now`` the logical content
is identical on every run. Everything is synthetic: names from Faker's
``zh_CN`` locale, Guangdong resident ID numbers with real check digits, mobile
numbers in the right carrier's ranges, card numbers with the banks' issuer
prefixes and Luhn digits.

A fraud chain: the fraudster's number calls and texts the victim; minutes
later the victim transfers money to mule 1 at another bank, who forwards it
within minutes to mule 2 at a third bank, and so on for 3-5 hops. Like real
ones, the chains split (mule 1 sends part to a side account), merge (the side
account sends most of it on to mule 3), cash out at an ATM, pay a merchant and
leave the federation (a card of a bank that is no member); the mules spend a
little of their own money on the way. ``world.json`` says, per chain, which
accounts hold how much of the victim's money at the end (own money spent first,
the rule of ``docs/chase.md``). Each transfer between member banks is recorded
by both banks; each call by both carriers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.bank._schema import create_bank_database
from adapters.carrier._schema import create_carrier_database
from adapters.synth._bulk import BulkBank, seed_bank_bulk
from adapters.synth._gen import (
    DeadEnd,
    FraudChain,
    FraudNumber,
    Holding,
    Hop,
    Victim,
    WorldRows,
    build_rows,
)
from fedgate.chase import VictimTransfer
from fedgate.validate import BANK_BINS, CARRIER_PREFIXES

__all__ = [
    "WORLD_FILE",
    "BulkBank",
    "DeadEnd",
    "FraudChain",
    "FraudNumber",
    "Holding",
    "Hop",
    "Victim",
    "World",
    "WorldCounts",
    "load_world",
    "seed_bank_bulk",
    "seed_world",
    "victim_transfer",
]

WORLD_FILE = "world.json"
"""The ground-truth file written beside the databases."""


def victim_transfer(chain: FraudChain) -> VictimTransfer:
    """The transfer a victim of ``chain`` reports to the police: where a chase starts."""
    hop = chain.hops[0]
    return VictimTransfer(
        payer_account=hop.from_account,
        payer_name=hop.from_name,
        payer_bank=hop.from_bank,
        payee_account=hop.to_account,
        payee_name=hop.to_name,
        amount_minor=hop.amount_minor,
        currency=hop.currency,
        time=hop.ts,
    )


@dataclass(frozen=True, slots=True)
class WorldCounts:
    people: int
    accounts: int
    transactions: int
    subscribers: int
    call_records: int


@dataclass(frozen=True, slots=True)
class World:
    """The ground truth of a generated world; the databases are in ``directory``."""

    directory: Path
    seed: int
    now: datetime
    banks: tuple[str, ...]
    carriers: tuple[str, ...]
    chains: tuple[FraudChain, ...]
    counts: WorldCounts

    def database(self, member_id: str) -> Path:
        """The SQLite file of a bank or carrier of this world; ``KeyError`` for another id."""
        if member_id not in self.banks and member_id not in self.carriers:
            raise KeyError(member_id)
        return self.directory / f"{member_id}.sqlite"

    def to_json(self) -> str:
        """The ground truth as JSON (times in ISO 8601); the directory is left out."""
        body = {
            "seed": self.seed,
            "now": self.now.isoformat(),
            "banks": list(self.banks),
            "carriers": list(self.carriers),
            "counts": asdict(self.counts),
            "chains": [_chain_json(c) for c in self.chains],
        }
        return json.dumps(body, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def _chain_json(chain: FraudChain) -> dict[str, Any]:
    out = asdict(chain)
    out["first_contact"] = chain.first_contact.isoformat()
    for hop in out["hops"]:
        hop["ts"] = hop["ts"].isoformat()
    for end in out["dead_ends"]:
        end["ts"] = end["ts"].isoformat()
    return out


def load_world(directory: Path) -> World:
    """The world whose ``world.json`` is in ``directory``."""
    body = json.loads((directory / WORLD_FILE).read_text(encoding="utf-8"))
    chains = tuple(
        FraudChain(
            index=c["index"],
            victim=Victim(**c["victim"]),
            fraud_numbers=tuple(FraudNumber(**n) for n in c["fraud_numbers"]),
            first_contact=datetime.fromisoformat(c["first_contact"]),
            hops=tuple(Hop(**{**h, "ts": datetime.fromisoformat(h["ts"])}) for h in c["hops"]),
            holdings=tuple(Holding(**h) for h in c.get("holdings", ())),
            dead_ends=tuple(
                DeadEnd(**{**d, "ts": datetime.fromisoformat(d["ts"])})
                for d in c.get("dead_ends", ())
            ),
            innocents=tuple(c.get("innocents", ())),
        )
        for c in body["chains"]
    )
    return World(
        directory=directory,
        seed=body["seed"],
        now=datetime.fromisoformat(body["now"]),
        banks=tuple(body["banks"]),
        carriers=tuple(body["carriers"]),
        chains=chains,
        counts=WorldCounts(**body["counts"]),
    )


def seed_world(
    directory: Path,
    *,
    seed: int = 7,
    banks: tuple[str, ...] = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb"),
    carriers: tuple[str, ...] = ("carrier.cmcc", "carrier.cucc", "carrier.ctcc"),
    customers_per_bank: int = 2000,
    fraud_chains: int = 5,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> World:
    """Generate a world into ``directory`` (created if needed), replacing its databases.

    ``now`` (default: the current time, to the second) anchors every time: the
    history covers the 90 days before it and the fraud chains its last hour.
    Raises ``ValueError`` naming the option for an unknown bank or carrier,
    fewer than two banks, or sizes out of range.
    """
    unknown = [b for b in banks if b not in BANK_BINS] + [
        c for c in carriers if c not in CARRIER_PREFIXES
    ]
    if unknown:
        raise ValueError(f"banks/carriers: unknown member id(s) {unknown}")
    if len(banks) < 2 or len(set(banks)) != len(banks):
        raise ValueError("banks: need at least two distinct banks for cross-bank chains")
    if not carriers or len(set(carriers)) != len(carriers):
        raise ValueError("carriers: need at least one carrier, without repeats")
    if customers_per_bank < 20:
        raise ValueError("customers_per_bank: must be at least 20")
    if fraud_chains < 0:
        raise ValueError("fraud_chains: must not be negative")
    if now is None:
        now = datetime.now(UTC).replace(microsecond=0)
    elif now.utcoffset() is None:
        raise ValueError("now: must carry a time zone")
    say = progress or (lambda _msg: None)
    directory.mkdir(parents=True, exist_ok=True)

    rows = build_rows(
        seed=seed,
        banks=banks,
        carriers=carriers,
        customers_per_bank=customers_per_bank,
        fraud_chains=fraud_chains,
        now=now.astimezone(UTC),
        progress=say,
    )
    _write(directory, rows, say)
    world = World(
        directory=directory,
        seed=seed,
        now=now,
        banks=banks,
        carriers=carriers,
        chains=tuple(rows.chains),
        counts=WorldCounts(
            people=rows.people,
            accounts=sum(len(b.accounts) for b in rows.banks.values()),
            transactions=sum(len(b.transactions) for b in rows.banks.values()),
            subscribers=sum(len(c.subscribers) for c in rows.carriers.values()),
            call_records=sum(len(c.records) for c in rows.carriers.values()),
        ),
    )
    (directory / WORLD_FILE).write_text(world.to_json(), encoding="utf-8")
    say(f"world written to {directory}")
    return world


def _write(directory: Path, rows: WorldRows, say: Callable[[str], None]) -> None:
    for member in [*rows.banks, *rows.carriers]:
        for suffix in ("", "-wal", "-shm", "-journal"):
            (directory / f"{member}.sqlite{suffix}").unlink(missing_ok=True)
    for bank_id, b in rows.banks.items():
        say(f"writing {bank_id}")
        create_bank_database(
            directory / f"{bank_id}.sqlite",
            bank_id=bank_id,
            customers=b.customers,
            accounts=b.accounts,
            transactions=b.transactions,
            logins=b.logins,
        )
    for carrier_id, c in rows.carriers.items():
        say(f"writing {carrier_id}")
        create_carrier_database(
            directory / f"{carrier_id}.sqlite",
            carrier_id=carrier_id,
            subscribers=c.subscribers,
            cells=c.cells,
            records=c.records,
            locations=c.locations,
        )
