"""A reference core-banking backend on SQLite, filled by ``adapters.synth``.

It implements :class:`adapters.bank.backend.CoreBanking` with the business rules
of stop-payments and freezes, so the demo and the tests exercise real queries
and real refusals. Safe to call from several threads (one connection each;
orders run under ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from adapters._sqlite import Database, decode_page_token, encode_page_token, from_us, to_us, utc_now
from adapters.bank import _orders
from adapters.bank._schema import SCHEMA
from adapters.bank.backend import (
    AccountHolder,
    AccountSummary,
    AccountType,
    AggregateStats,
    Channel,
    Direction,
    FreezeMethod,
    FreezeOrder,
    FreezeOutcome,
    LoginRecord,
    MonitorState,
    RefundOrder,
    RefundOutcome,
    StopPaymentOrder,
    StopPaymentOutcome,
    Transaction,
    TransactionPage,
)
from fedgate.actions import AGGREGATE_METRICS
from fedgate.errors import FieldViolation, InvalidArgument, NotFound, RuleViolated
from fedgate.validate import (
    BANK_BINS,
    FieldChecker,
    amount_valid,
    bank_card_valid,
    bank_of_card,
    case_number_valid,
    currency_valid,
    resident_id_valid,
    window_valid,
)

__all__ = ["MAX_PAGE_SIZE", "ReferenceBank"]

MAX_PAGE_SIZE = 1000
"""The largest page of transactions (and cap on other list answers)."""

_ACCOUNT_LIKE = re.compile(r"\d{8,32}")
_PHONE_LIKE = re.compile(r"\+?[\d-]{7,20}")
_TX_COLUMNS = (
    "id, account_number, ts, direction, amount, currency, counterparty_account,"
    " counterparty_name, counterparty_bank, channel, balance_after, memo"
)


def _tx(row: tuple[Any, ...]) -> Transaction:
    (tid, acct, ts, direction, amount, cur, cp_acct, cp_name, cp_bank, channel, after, memo) = row
    return Transaction(
        id=tid,
        account_number=acct,
        ts=from_us(ts),
        direction=Direction(direction),
        amount_minor=amount,
        currency=cur,
        counterparty_account=cp_acct,
        counterparty_name=cp_name,
        counterparty_bank=cp_bank,
        channel=Channel(channel),
        balance_after_minor=after,
        memo=memo,
    )


class ReferenceBank:
    """One bank's core system on one SQLite file (created empty if missing).

    ``clock`` gives the time for answers that depend on it without an explicit
    ``now`` (holder state, active monitors, recorded transactions).
    Raises ``ValueError`` if ``bank_id`` is not a federation bank or the file
    belongs to another bank.
    """

    def __init__(
        self, *, path: Path, bank_id: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        if bank_id not in BANK_BINS:
            raise ValueError(f"bank_id {bank_id!r} is not one of {sorted(BANK_BINS)}")
        self._bank_id = bank_id
        self._clock = clock
        self._db = Database(path, schema=SCHEMA)
        with self._db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('bank_id', ?)", (bank_id,))
            (stored,) = conn.execute("SELECT value FROM meta WHERE key = 'bank_id'").fetchone()
        if stored != bank_id:
            self._db.close()
            raise ValueError(f"bank_id {bank_id!r} does not match the database's {stored!r}")

    @property
    def bank_id(self) -> str:
        return self._bank_id

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReferenceBank:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ checks

    def _check_account(self, checker: FieldChecker, number: str, field: str) -> None:
        ok = bank_card_valid(number) and bank_of_card(number) == self._bank_id
        checker.check(field, ok, f"not a card number issued by {self._bank_id}")

    def _valid_account(self, number: str, field: str = "account_number") -> None:
        c = FieldChecker()
        self._check_account(c, number, field)
        c.raise_if_any()

    @staticmethod
    def _check_time(checker: FieldChecker, field: str, value: datetime) -> None:
        checker.check(field, value.utcoffset() is not None, "must carry a time zone")

    def _holder_row(self, conn: sqlite3.Connection, number: str) -> tuple[Any, ...]:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT a.account_number, a.account_type, a.opened_on, a.branch, a.status,"
            " a.balance, a.currency, c.name, c.id_number, c.phone, c.address"
            " FROM accounts a JOIN customers c ON c.id = a.customer_id"
            " WHERE a.account_number = ?",
            (number,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no account {number} at {self._bank_id}")
        return row

    # ------------------------------------------------------------------ queries

    def account_holder(self, account_number: str) -> AccountHolder:
        """The holder and state of an account; ``NotFound`` if it is not held here."""
        self._valid_account(account_number)
        now_us = to_us(self._clock())
        with self._db.read() as conn:
            (num, kind, opened, branch, status, balance, cur, name, idn, phone, addr) = (
                self._holder_row(conn, account_number)
            )
            stopped, receive_only, fixed = _orders.restrictions(conn, account_number, now_us)
        return AccountHolder(
            account_number=num,
            bank_id=self._bank_id,
            name=name,
            id_number=idn,
            phone=phone,
            address=addr,
            account_type=AccountType(kind),
            opened_on=date.fromisoformat(opened),
            branch=branch,
            status=status,
            balance_minor=balance,
            available_minor=0 if stopped or receive_only else max(0, balance - fixed),
            currency=cur,
            stopped=stopped,
            frozen=receive_only or fixed > 0,
        )

    def transactions(
        self,
        account_number: str,
        start: datetime,
        end: datetime,
        *,
        page_size: int,
        page_token: str,
    ) -> TransactionPage:
        """Postings with ``start <= ts < end`` ordered by (time, id), ``page_size`` at a time."""
        c = FieldChecker()
        self._check_account(c, account_number, "account_number")
        c.check("start", window_valid(start, end), "window must be time-zone aware, start < end")
        c.check("page_size", 1 <= page_size <= MAX_PAGE_SIZE, f"must be 1..{MAX_PAGE_SIZE}")
        c.raise_if_any()
        start_us, end_us = to_us(start), to_us(end)
        after = decode_page_token(page_token, "tx", account_number, start_us, end_us)
        after_ts, after_id = after if after is not None else (start_us - 1, 0)
        with self._db.read() as conn:
            self._holder_row(conn, account_number)
            rows = conn.execute(
                f"SELECT {_TX_COLUMNS} FROM transactions"  # noqa: S608 - constant columns
                " WHERE account_number = ? AND ts >= ? AND ts < ? AND (ts, id) > (?, ?)"
                " ORDER BY ts, id LIMIT ?",
                (account_number, start_us, end_us, after_ts, after_id, page_size + 1),
            ).fetchall()
        page = tuple(_tx(r) for r in rows[:page_size])
        token = ""
        if len(rows) > page_size:
            last = rows[page_size - 1]
            token = encode_page_token(last[2], last[0], "tx", account_number, start_us, end_us)
        return TransactionPage(transactions=page, next_page_token=token)

    def accounts_by_id(self, id_number: str) -> tuple[AccountSummary, ...]:
        """Every account held under a resident ID number; ``NotFound`` if there is none."""
        c = FieldChecker()
        c.check("id_number", resident_id_valid(id_number), "not a resident ID number")
        c.raise_if_any()
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT a.account_number, c.name, a.account_type, a.opened_on, a.branch,"
                " a.status, a.balance, a.currency"
                " FROM customers c JOIN accounts a ON a.customer_id = c.id"
                " WHERE c.id_number = ? ORDER BY a.opened_on, a.account_number",
                (id_number,),
            ).fetchall()
        if not rows:
            raise NotFound(f"no account under this ID number at {self._bank_id}")
        return tuple(
            AccountSummary(
                account_number=num,
                bank_id=self._bank_id,
                name=name,
                account_type=AccountType(kind),
                opened_on=date.fromisoformat(opened),
                branch=branch,
                status=status,
                balance_minor=balance,
                currency=cur,
            )
            for num, name, kind, opened, branch, status, balance, cur in rows
        )

    def login_records(
        self, account_number: str, start: datetime, end: datetime
    ) -> tuple[LoginRecord, ...]:
        """Logins with ``start <= ts < end``, oldest first, at most ``MAX_PAGE_SIZE``."""
        c = FieldChecker()
        self._check_account(c, account_number, "account_number")
        c.check("start", window_valid(start, end), "window must be time-zone aware, start < end")
        c.raise_if_any()
        with self._db.read() as conn:
            self._holder_row(conn, account_number)
            rows = conn.execute(
                "SELECT ts, device_id, ip, channel FROM logins"
                " WHERE account_number = ? AND ts >= ? AND ts < ? ORDER BY ts, id LIMIT ?",
                (account_number, to_us(start), to_us(end), MAX_PAGE_SIZE),
            ).fetchall()
        return tuple(
            LoginRecord(account_number, from_us(ts), device, ip, Channel(channel))
            for ts, device, ip, channel in rows
        )

    # ------------------------------------------------------------------ stop-payment

    def stop_payment(self, order: StopPaymentOrder, *, now: datetime) -> StopPaymentOutcome:
        """Stop payment for 48 hours on the account that received the victim's transfer.

        The bank MUST act only if the holder's name, the account, and an incoming
        transfer from ``payer_account`` of exactly ``amount_minor`` within five
        minutes of ``transfer_time`` all match; otherwise it raises
        ``RuleViolated`` naming what did not match. An account MUST NOT be
        stopped more than twice, ever (an extension counts).
        """
        c = FieldChecker()
        self._check_ref(c, "order_ref", order.order_ref)
        self._check_account(c, order.account_number, "account_number")
        c.check("account_name", bool(order.account_name.strip()), "must not be empty")
        c.check(
            "payer_account",
            _ACCOUNT_LIKE.fullmatch(order.payer_account) is not None,
            "must be 8..32 digits",
        )
        c.check(
            "amount", amount_valid(order.amount_minor), "must be 0.01 to 100,000,000,000.00 yuan"
        )
        c.check("currency", currency_valid(order.currency), "not an ISO 4217 currency code")
        self._check_time(c, "transfer_time", order.transfer_time)
        c.raise_if_any()
        now_us = to_us(now)
        with self._db.write() as conn:
            row = self._holder_row(conn, order.account_number)
            return _orders.execute_stop(
                conn,
                order,
                holder_name=row[7],
                currency=row[6],
                now_us=now_us,
                transfer_us=to_us(order.transfer_time),
            )

    def stop_payment_release(
        self, account_number: str, original_order_ref: str, *, now: datetime
    ) -> StopPaymentOutcome:
        """Release (解除) an active stop-payment; ``RuleViolated`` if it is not active."""
        self._valid_order_target(account_number, "original_order_ref", original_order_ref)
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            return _orders.release_stop(conn, account_number, original_order_ref, to_us(now))

    def stop_payment_extend(
        self, account_number: str, original_order_ref: str, *, now: datetime
    ) -> StopPaymentOutcome:
        """Extend (延期) an active stop-payment by 48 hours past its current end.

        The extension counts as an execution, so it is refused on an account
        already stopped twice; ``RuleViolated`` also if the original is not active.
        """
        self._valid_order_target(account_number, "original_order_ref", original_order_ref)
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            return _orders.extend_stop(conn, account_number, original_order_ref, to_us(now))

    # ------------------------------------------------------------------ freeze

    def freeze(self, order: FreezeOrder, *, now: datetime) -> FreezeOutcome:
        """Freeze a fixed amount, or all outflows (receive-only), until ``order.end``.

        Refused (``RuleViolated``) if the name does not match, the end is more
        than 183 days away, or a fixed amount exceeds the balance not already
        frozen. The outcome lists the freezes already in force on the account.
        """
        c = FieldChecker()
        self._check_ref(c, "order_ref", order.order_ref)
        self._check_account(c, order.account_number, "account_number")
        c.check("account_name", bool(order.account_name.strip()), "must not be empty")
        if order.method == FreezeMethod.FIXED_AMOUNT:
            c.check(
                "amount",
                amount_valid(order.amount_minor),
                "must be 0.01 to 100,000,000,000.00 yuan",
            )
        else:
            c.check("amount", order.amount_minor == 0, "must be 0 for a receive-only freeze")
        c.check("currency", currency_valid(order.currency), "not an ISO 4217 currency code")
        self._check_time(c, "end", order.end)
        c.check("agency", bool(order.agency.strip()), "must not be empty")
        c.check("case_number", case_number_valid(order.case_number), "not a case number")
        c.check("case_document", bool(order.case_document.strip()), "must cite the decision")
        c.check(
            "duty_phone", _PHONE_LIKE.fullmatch(order.duty_phone) is not None, "not a phone number"
        )
        c.raise_if_any()
        with self._db.write() as conn:
            row = self._holder_row(conn, order.account_number)
            return _orders.execute_freeze(
                conn,
                order,
                holder_name=row[7],
                currency=row[6],
                now_us=to_us(now),
                end_us=to_us(order.end),
            )

    def freeze_release(
        self, account_number: str, original_ref: str, *, now: datetime
    ) -> FreezeOutcome:
        """Release (解冻) an active freeze; ``RuleViolated`` if it is not active."""
        self._valid_order_target(account_number, "original_ref", original_ref)
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            return _orders.release_freeze(conn, account_number, original_ref, to_us(now))

    def freeze_renew(
        self, account_number: str, original_ref: str, new_end: datetime, *, now: datetime
    ) -> FreezeOutcome:
        """Renew (续冻) an active freeze to ``new_end``, at most 183 days after ``now``."""
        self._valid_order_target(account_number, "original_ref", original_ref)
        c = FieldChecker()
        self._check_time(c, "new_end", new_end)
        c.raise_if_any()
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            return _orders.renew_freeze(
                conn, account_number, original_ref, to_us(new_end), to_us(now)
            )

    # ------------------------------------------------------------------ refund

    def refund(self, order: RefundOrder, *, now: datetime) -> RefundOutcome:
        """Return frozen funds to the victim (资金返还); see ``CoreBanking.refund``."""
        c = FieldChecker()
        self._check_ref(c, "order_ref", order.order_ref)
        self._check_ref(c, "freeze_ref", order.freeze_ref)
        self._check_account(c, order.account_number, "account_number")
        c.check("victim_account", bool(order.victim_account.strip()), "must not be empty")
        c.check(
            "amount", amount_valid(order.amount_minor), "must be 0.01 to 100,000,000,000.00 yuan"
        )
        c.check(
            "reported_loss",
            amount_valid(order.reported_loss_minor),
            "must be 0.01 to 100,000,000,000.00 yuan",
        )
        c.check("currency", currency_valid(order.currency), "not an ISO 4217 currency code")
        c.check("case_number", case_number_valid(order.case_number), "not a case number")
        c.raise_if_any()
        with self._db.write() as conn:
            if conn.execute(
                "SELECT 1 FROM refunds WHERE order_ref = ?", (order.order_ref,)
            ).fetchone():
                raise RuleViolated("order_ref has already been executed")
            row = self._holder_row(conn, order.account_number)
            return _orders.execute_refund(
                conn, order, bank_id=self.bank_id, holder_name=row[7], now_us=to_us(now)
            )

    # ------------------------------------------------------------------ monitoring

    def monitor_start(self, account_number: str, until: datetime, *, now: datetime) -> MonitorState:
        """Start (or prolong) live monitoring of an account until ``until``.

        New postings are those with an id above ``start_after_id`` of the answer.
        """
        c = FieldChecker()
        self._check_account(c, account_number, "account_number")
        self._check_time(c, "until", until)
        c.raise_if_any()
        now_us, until_us = to_us(now), to_us(until)
        if until_us <= now_us:
            c.check("until", False, "must be after now")
            c.raise_if_any()
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            (last_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM transactions").fetchone()
            conn.execute(
                "INSERT INTO monitors(account_number, since_ts, until_ts, start_after_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(account_number) DO UPDATE SET"
                " since_ts = CASE WHEN stopped_ts IS NULL AND until_ts > ?"
                "   THEN since_ts ELSE excluded.since_ts END,"
                " start_after_id = CASE WHEN stopped_ts IS NULL AND until_ts > ?"
                "   THEN start_after_id ELSE excluded.start_after_id END,"
                " until_ts = excluded.until_ts, stopped_ts = NULL",
                (account_number, now_us, until_us, last_id, now_us, now_us),
            )
            return self._monitor(conn, account_number, now_us)

    def aggregate_stats(self, metric: str, start: datetime, end: datetime) -> AggregateStats:
        """Counts and totals over [start, end): never a name or a number."""
        if metric not in AGGREGATE_METRICS:
            raise InvalidArgument.for_fields(
                [
                    FieldViolation(
                        "aggregate_stats.metric",
                        f"unknown metric {metric!r}; one of {', '.join(AGGREGATE_METRICS)}",
                    )
                ]
            )
        lo, hi = to_us(start), to_us(end)
        with self._db.read() as conn:
            if metric == "accounts_flagged":
                row = conn.execute(
                    "SELECT COUNT(*), 0 FROM (SELECT account_number FROM stop_payments"
                    " WHERE start_ts >= ? AND start_ts < ? UNION SELECT account_number"
                    " FROM freezes WHERE start_ts >= ? AND start_ts < ?)",
                    (lo, hi, lo, hi),
                ).fetchone()
            elif metric == "frozen_amount":
                row = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM freezes WHERE start_ts < ?"
                    " AND end_ts >= ? AND (released_ts IS NULL OR released_ts >= ?)",
                    (hi, hi, hi),
                ).fetchone()
            elif metric == "stop_payments":
                row = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM stop_payments"
                    " WHERE start_ts >= ? AND start_ts < ?",
                    (lo, hi),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM freezes"
                    " WHERE start_ts >= ? AND start_ts < ?",
                    (lo, hi),
                ).fetchone()
        return AggregateStats(metric=metric, count=int(row[0]), total_minor=int(row[1]))

    def monitor_stop(self, account_number: str, *, now: datetime) -> MonitorState:
        """Stop live monitoring; ``RuleViolated`` if the account is not being monitored."""
        self._valid_account(account_number)
        now_us = to_us(now)
        with self._db.write() as conn:
            self._holder_row(conn, account_number)
            cur = conn.execute(
                "UPDATE monitors SET stopped_ts = ? WHERE account_number = ?"
                " AND stopped_ts IS NULL AND until_ts > ?",
                (now_us, account_number, now_us),
            )
            if cur.rowcount == 0:
                raise RuleViolated("account_number is not being monitored")
            return self._monitor(conn, account_number, now_us)

    def monitored_accounts(self) -> tuple[MonitorState, ...]:
        """The monitors active now (by the clock), by account number."""
        now_us = to_us(self._clock())
        with self._db.read() as conn:
            numbers = conn.execute(
                "SELECT account_number FROM monitors WHERE stopped_ts IS NULL AND until_ts > ?"
                " ORDER BY account_number",
                (now_us,),
            ).fetchall()
            return tuple(self._monitor(conn, n, now_us) for (n,) in numbers)

    @staticmethod
    def _monitor(conn: sqlite3.Connection, number: str, now_us: int) -> MonitorState:
        since, until, after, stopped = conn.execute(
            "SELECT since_ts, until_ts, start_after_id, stopped_ts FROM monitors"
            " WHERE account_number = ?",
            (number,),
        ).fetchone()
        return MonitorState(
            account_number=number,
            since=from_us(since),
            until=from_us(until),
            start_after_id=after,
            active=stopped is None and until > now_us,
        )

    def new_transactions_since(self, account_number: str, after_id: int) -> tuple[Transaction, ...]:
        """Postings on the account with ``id > after_id``, by id, at most ``MAX_PAGE_SIZE``."""
        self._valid_account(account_number)
        with self._db.read() as conn:
            self._holder_row(conn, account_number)
            rows = conn.execute(
                f"SELECT {_TX_COLUMNS} FROM transactions"  # noqa: S608 - constant columns
                " WHERE account_number = ? AND id > ? ORDER BY id LIMIT ?",
                (account_number, after_id, MAX_PAGE_SIZE),
            ).fetchall()
        return tuple(_tx(r) for r in rows)

    def record_transaction(
        self,
        account_number: str,
        *,
        direction: Direction,
        amount_minor: int,
        counterparty_account: str,
        counterparty_name: str,
        counterparty_bank: str,
        channel: Channel = Channel.MOBILE,
        memo: str = "",
        ts: datetime | None = None,
    ) -> Transaction:
        """Post a transaction now (or at ``ts``), for tests and demos.

        An outgoing posting is refused (``RuleViolated``) while the account is
        stopped or frozen receive-only, or beyond the balance not frozen.
        """
        when = ts if ts is not None else self._clock()
        c = FieldChecker()
        self._check_account(c, account_number, "account_number")
        c.check("amount", amount_valid(amount_minor), "must be 0.01 to 100,000,000,000.00 yuan")
        self._check_time(c, "ts", when)
        c.raise_if_any()
        ts_us = to_us(when)
        with self._db.write() as conn:
            row = self._holder_row(conn, account_number)
            if row[4] != "active":
                raise RuleViolated(f"account_number is {row[4]}")
            balance, available, _ = _orders.balances(conn, account_number, ts_us)
            if direction == Direction.OUT:
                stopped, receive_only, _ = _orders.restrictions(conn, account_number, ts_us)
                if stopped:
                    raise RuleViolated("account_number is under a stop-payment")
                if receive_only:
                    raise RuleViolated("account_number is frozen (receive only)")
                if amount_minor > available:
                    raise RuleViolated("amount exceeds the available balance")
                after = balance - amount_minor
            else:
                after = balance + amount_minor
            conn.execute(
                "UPDATE accounts SET balance = ? WHERE account_number = ?", (after, account_number)
            )
            values = (account_number, ts_us, direction.value, amount_minor, row[6],
                      counterparty_account, counterparty_name, counterparty_bank, channel.value,
                      after, memo)  # fmt: skip
            cur = conn.execute(
                "INSERT INTO transactions(account_number, ts, direction, amount, currency,"
                " counterparty_account, counterparty_name, counterparty_bank, channel,"
                " balance_after, memo) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            assert cur.lastrowid is not None
            return _tx((cur.lastrowid, *values))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_ref(checker: FieldChecker, field: str, ref: str) -> None:
        checker.check(field, 0 < len(ref) <= 64 and ref.isprintable(), "must be 1..64 characters")

    def _valid_order_target(self, account_number: str, ref_field: str, ref: str) -> None:
        c = FieldChecker()
        self._check_account(c, account_number, "account_number")
        self._check_ref(c, ref_field, ref)
        c.raise_if_any()
