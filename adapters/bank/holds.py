"""Holding transfers to listed accounts on the bank's transfer path (Anti-Fraud Law Art. 18).

``TransferGuard.check`` is called by the bank's transfer path before a transfer is settled. It
looks the receiving account up in the local risk list replica (in memory) and:

- a transfer to an account listed (bank account category, in force at the transfer's time)
  MUST be held: stored durably (SQLite, ``synchronous=FULL``) before ``check`` returns, and
  not settled while held; the bank reports it to police (``hold_warning``: an early warning
  about the payer, risk level 5);
- a held transfer MUST be released by ``sweep`` when the list no longer lists the account
  (removed after an appeal, or lapsed), or when the hold itself expires (``hold_for``,
  24 hours by default: the bank may delay settlement, not confiscate);
- a transfer to an account not listed passes (``check`` returns ``None``).

``TransferPath`` is the reference core's transfer path with the guard in it: ``send`` settles a
transfer (posts it on the payer's account) only if the guard lets it through; ``sweep`` settles
the holds the guard releases. A held transfer is not posted: the money stays on the account.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from adapters._sqlite import from_us, to_us
from adapters.bank.backend import Direction, Transaction
from adapters.bank.reference import ReferenceBank
from fedgate.errors import AgencyUnavailable, RuleViolated
from fedgate.risklist import RiskIndex
from fedgate.storage import Schema, open_store
from fedgate.v1 import report_pb2, risklist_pb2
from fedgate.validate import bank_of_card

__all__ = [
    "DEFAULT_HOLD",
    "STORE",
    "Hold",
    "HoldState",
    "Transfer",
    "TransferGuard",
    "TransferPath",
    "hold_warning",
]

ACCOUNT = risklist_pb2.RISK_CATEGORY_BANK_ACCOUNT
DEFAULT_HOLD = timedelta(hours=24)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS holds (
    transfer_id  TEXT PRIMARY KEY,
    from_account TEXT NOT NULL,
    from_name    TEXT NOT NULL,
    to_account   TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    held_us      INTEGER NOT NULL,
    expires_us   INTEGER NOT NULL,
    state        TEXT NOT NULL,
    released_us  INTEGER
);
CREATE INDEX IF NOT EXISTS holds_by_state ON holds (state);
"""


STORE = Schema(store="transfer holds", version=1, create=_SCHEMA)
_ALL_SQL = (
    "SELECT transfer_id, from_account, from_name, to_account, amount_minor, currency, at_us, "
    "held_us, expires_us, state, released_us FROM holds ORDER BY held_us"
)
_HELD_SQL = (
    "SELECT transfer_id, from_account, from_name, to_account, amount_minor, currency, at_us, "
    "held_us, expires_us, state, released_us FROM holds WHERE state = ? ORDER BY held_us"
)


class HoldState(StrEnum):
    HELD = "held"
    RELEASED_DELISTED = "released_delisted"
    RELEASED_EXPIRED = "released_expired"


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer about to be settled."""

    transfer_id: str
    from_account: str
    from_name: str
    to_account: str
    amount_minor: int
    currency: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Hold:
    """A held transfer and what became of it."""

    transfer: Transfer
    held_at: datetime
    expires_at: datetime
    state: HoldState
    released_at: datetime | None = None


def hold_warning(hold: Hold) -> report_pb2.EarlyWarning:
    """The early warning a bank sends police about the payer of a held transfer."""
    t = hold.transfer
    warning = report_pb2.EarlyWarning(
        subject=t.from_account, name=t.from_name, flagged=t.to_account, risk_level=5
    )
    warning.contact_time.FromDatetime(t.at)
    return warning


class TransferGuard:
    """The check on the transfer path (see the module's contract). Thread-safe."""

    def __init__(self, *, index: RiskIndex, path: Path, hold_for: timedelta = DEFAULT_HOLD) -> None:
        self._accounts = index.table(ACCOUNT)
        self._hold_for = hold_for
        self._lock = threading.Lock()
        self._db = open_store(path, STORE, error=AgencyUnavailable)

    def check(self, transfer: Transfer, *, now: datetime | None = None) -> Hold | None:
        """Hold ``transfer`` if its receiving account is listed; ``None`` if it may settle."""
        if self._accounts.get(transfer.to_account, 0) <= to_us(transfer.at):
            return None
        held = now or datetime.now(UTC)
        hold = Hold(
            transfer=transfer,
            held_at=held,
            expires_at=held + self._hold_for,
            state=HoldState.HELD,
        )
        t = transfer
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO holds (transfer_id, from_account, from_name, to_account, "
                    "amount_minor, currency, at_us, held_us, expires_us, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        t.transfer_id,
                        t.from_account,
                        t.from_name,
                        t.to_account,
                        t.amount_minor,
                        t.currency,
                        to_us(t.at),
                        to_us(hold.held_at),
                        to_us(hold.expires_at),
                        HoldState.HELD.value,
                    ),
                )
        except sqlite3.Error as exc:
            # Fail closed: a transfer that cannot be recorded as held is not let through either.
            raise AgencyUnavailable(f"cannot record the hold of {t.transfer_id}: {exc}") from exc
        return hold

    def sweep(self, *, now: datetime | None = None) -> list[Hold]:
        """Release every hold whose account is no longer listed or whose hold expired; returns
        the released holds."""
        at = now or datetime.now(UTC)
        at_us = to_us(at)
        released: list[Hold] = []
        with self._lock:
            for hold in self._select(_HELD_SQL, (HoldState.HELD.value,)):
                if to_us(hold.expires_at) <= at_us:
                    state = HoldState.RELEASED_EXPIRED
                elif self._accounts.get(hold.transfer.to_account, 0) <= at_us:
                    state = HoldState.RELEASED_DELISTED
                else:
                    continue
                try:
                    with self._db:
                        self._db.execute(
                            "UPDATE holds SET state = ?, released_us = ? WHERE transfer_id = ?",
                            (state.value, at_us, hold.transfer.transfer_id),
                        )
                except sqlite3.Error as exc:
                    raise AgencyUnavailable(f"cannot release a hold: {exc}") from exc
                released.append(
                    Hold(hold.transfer, hold.held_at, hold.expires_at, state, released_at=at)
                )
        return released

    def holds(self) -> list[Hold]:
        """Every hold, oldest first."""
        with self._lock:
            return self._select(_ALL_SQL, ())

    def _select(self, sql: str, args: tuple[object, ...]) -> list[Hold]:
        rows = self._db.execute(sql, args).fetchall()
        return [
            Hold(
                transfer=Transfer(tid, fa, fn, ta, amount, cur, from_us(at)),
                held_at=from_us(held),
                expires_at=from_us(expires),
                state=HoldState(state),
                released_at=None if released is None else from_us(released),
            )
            for tid, fa, fn, ta, amount, cur, at, held, expires, state, released in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TransferPath:
    """Outgoing transfers of ``core`` (the reference bank) through ``guard``."""

    def __init__(self, *, core: ReferenceBank, guard: TransferGuard) -> None:
        self._core = core
        self._guard = guard

    def _settle(self, t: Transfer) -> Transaction:
        return self._core.record_transaction(
            t.from_account,
            direction=Direction.OUT,
            amount_minor=t.amount_minor,
            counterparty_account=t.to_account,
            counterparty_name="",
            counterparty_bank=bank_of_card(t.to_account) or "",
            memo=f"transfer {t.transfer_id}",
            ts=t.at,
        )

    def send(self, transfer: Transfer, *, now: datetime | None = None) -> Hold | Transaction:
        """The hold, if the receiving account is listed; else the posted transaction."""
        hold = self._guard.check(transfer, now=now)
        return hold if hold is not None else self._settle(transfer)

    def sweep(self, *, now: datetime | None = None) -> list[tuple[Hold, Transaction | None]]:
        """Release what the guard releases and post it; ``None`` where posting was refused
        (e.g. the account was stopped or frozen meanwhile: the money stays)."""
        out: list[tuple[Hold, Transaction | None]] = []
        for hold in self._guard.sweep(now=now):
            try:
                out.append((hold, self._settle(hold.transfer)))
            except RuleViolated:
                out.append((hold, None))
        return out
