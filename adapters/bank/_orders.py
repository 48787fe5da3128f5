"""The reference bank's order rules: stop-payment, freeze, and what they leave available.

Functions here run inside the caller's write transaction, on an account the
caller has already found and whose input it has already validated. They raise
``RuleViolated`` for a business refusal, with a message naming the field or
rule that failed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from adapters._sqlite import from_us
from adapters.bank.backend import (
    FREEZE_MAX,
    STOP_PAYMENT_DURATION,
    STOP_PAYMENT_MAX_PER_ACCOUNT,
    STOP_PAYMENT_TIME_TOLERANCE,
    EarlierFreeze,
    FreezeMethod,
    FreezeOrder,
    FreezeOutcome,
    OrderState,
    RefundOrder,
    RefundOutcome,
    StopPaymentOrder,
    StopPaymentOutcome,
)
from fedgate.errors import FieldViolation, InvalidArgument, RuleViolated
from fedgate.render import format_money
from fedgate.v1.common_pb2 import Money

__all__ = [
    "balances",
    "execute_freeze",
    "execute_refund",
    "execute_stop",
    "extend_stop",
    "release_freeze",
    "release_stop",
    "renew_freeze",
    "restrictions",
]

_US = 1_000_000
_STOP_US = int(STOP_PAYMENT_DURATION.total_seconds()) * _US
_TOLERANCE_US = int(STOP_PAYMENT_TIME_TOLERANCE.total_seconds()) * _US
_FREEZE_MAX_US = int(FREEZE_MAX.total_seconds()) * _US


def restrictions(conn: sqlite3.Connection, number: str, now_us: int) -> tuple[bool, bool, int]:
    """(stopped, frozen receive-only, fixed amount frozen) in force on an account at ``now_us``."""
    (stops,) = conn.execute(
        "SELECT COUNT(*) FROM stop_payments WHERE account_number = ?"
        " AND released_ts IS NULL AND start_ts <= ? AND end_ts > ?",
        (number, now_us, now_us),
    ).fetchone()
    receive_only, fixed = False, 0
    for method, amount in conn.execute(
        "SELECT method, amount FROM freezes WHERE account_number = ?"
        " AND released_ts IS NULL AND start_ts <= ? AND end_ts > ?",
        (number, now_us, now_us),
    ):
        if method == FreezeMethod.RECEIVE_ONLY:
            receive_only = True
        else:
            fixed += int(amount)
    return stops > 0, receive_only, fixed


def balances(conn: sqlite3.Connection, number: str, now_us: int) -> tuple[int, int, int]:
    """(balance, available to pay out, available to freeze) at ``now_us``.

    A stop-payment or a receive-only freeze leaves nothing to pay out, but the
    balance not already frozen by fixed-amount freezes can still be frozen: a
    freeze usually follows a stop-payment.
    """
    (balance,) = conn.execute(
        "SELECT balance FROM accounts WHERE account_number = ?", (number,)
    ).fetchone()
    stopped, receive_only, fixed = restrictions(conn, number, now_us)
    freezable = max(0, int(balance) - fixed)
    return int(balance), 0 if stopped or receive_only else freezable, freezable


# ---------------------------------------------------------------------- stop-payment


def _stop_executions(conn: sqlite3.Connection, number: str) -> int:
    (n,) = conn.execute(
        "SELECT COUNT(*) + COALESCE(SUM(extensions), 0) FROM stop_payments"
        " WHERE account_number = ?",
        (number,),
    ).fetchone()
    return int(n)


def _refuse_third_stop(executions: int) -> None:
    if executions >= STOP_PAYMENT_MAX_PER_ACCOUNT:
        raise RuleViolated(
            f"account_number has already been stopped {executions} times"
            f" (at most {STOP_PAYMENT_MAX_PER_ACCOUNT} per account)"
        )


def execute_stop(
    conn: sqlite3.Connection,
    order: StopPaymentOrder,
    *,
    holder_name: str,
    currency: str,
    now_us: int,
    transfer_us: int,
) -> StopPaymentOutcome:
    """Match the victim's transfer and stop the account for 48 hours, or refuse saying why.

    A repeat of a stop-payment in force (same account, case number and document number) is
    answered with that stop-payment's state and ``repeat_of`` set; nothing is executed again.
    """
    if conn.execute(
        "SELECT 1 FROM stop_payments WHERE order_ref = ?", (order.order_ref,)
    ).fetchone():
        raise RuleViolated("order_ref has already been executed")
    repeated = _stop_in_force_for(conn, order, now_us)
    if repeated is not None:
        return repeated
    if holder_name != order.account_name:
        raise RuleViolated("account_name does not match the holder of account_number")
    if currency != order.currency:
        raise RuleViolated(f"currency does not match: the account is held in {currency}")
    candidates = conn.execute(
        "SELECT id, counterparty_account, amount FROM transactions"
        " WHERE account_number = ? AND ts BETWEEN ? AND ? AND direction = 'in'"
        " ORDER BY ABS(ts - ?), id",
        (order.account_number, transfer_us - _TOLERANCE_US, transfer_us + _TOLERANCE_US,
         transfer_us),
    ).fetchall()  # fmt: skip
    from_payer = [r for r in candidates if r[1] == order.payer_account]
    matched = [r for r in from_payer if r[2] == order.amount_minor]
    if not matched:
        if from_payer:
            raise RuleViolated(
                "amount does not match the transfer from payer_account at transfer_time"
            )
        if any(r[2] == order.amount_minor for r in candidates):
            raise RuleViolated(
                "payer_account does not match the transfer of that amount at transfer_time"
            )
        raise RuleViolated(
            "transfer_time does not match: no incoming transfer from payer_account"
            " within 5 minutes of it"
        )
    executions = _stop_executions(conn, order.account_number)
    _refuse_third_stop(executions)
    if conn.execute(
        "SELECT 1 FROM stop_payments WHERE order_ref = ?", (order.order_ref,)
    ).fetchone():
        raise RuleViolated("order_ref has already been executed")
    tx_id = int(matched[0][0])
    end_us = now_us + _STOP_US
    conn.execute(
        "INSERT INTO stop_payments(order_ref, account_number, agency, payer_account, payer_name,"
        " payer_bank, amount, currency, transfer_ts, matched_tx, start_ts, end_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order.order_ref, order.account_number, order.agency, order.payer_account,
         order.payer_name, order.payer_bank, order.amount_minor, order.currency, transfer_us,
         tx_id, now_us, end_us),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO stop_payment_documents(order_ref, case_number, case_document)"
        " VALUES (?, ?, ?)",
        (order.order_ref, order.case_number, order.case_document),
    )
    balance, _, _ = balances(conn, order.account_number, now_us)
    return StopPaymentOutcome(
        order_ref=order.order_ref,
        account_number=order.account_number,
        state=OrderState.ACTIVE,
        start=from_us(now_us),
        end=from_us(end_us),
        balance_minor=balance,
        currency=currency,
        matched_transaction_id=tx_id,
        executions_on_account=executions + 1,
    )


def _stop_in_force_for(
    conn: sqlite3.Connection, order: StopPaymentOrder, now_us: int
) -> StopPaymentOutcome | None:
    """The stop-payment in force that ``order`` repeats, as its outcome; else ``None``."""
    if not (order.case_number and order.case_document):
        return None
    row = conn.execute(
        "SELECT s.order_ref, s.start_ts, s.end_ts, s.matched_tx, s.currency FROM stop_payments s"
        " JOIN stop_payment_documents d USING (order_ref)"
        " WHERE s.account_number = ? AND d.case_number = ? AND d.case_document = ?"
        " AND s.released_ts IS NULL AND s.end_ts > ? ORDER BY s.start_ts LIMIT 1",
        (order.account_number, order.case_number, order.case_document, now_us),
    ).fetchone()
    if row is None:
        return None
    ref, start, end, tx, cur = row
    outcome = _stop_outcome(
        conn, order.account_number, ref, OrderState.ACTIVE, (start, end), tx, cur, now_us
    )
    return replace(outcome, repeat_of=str(ref))


def _active_stop(
    conn: sqlite3.Connection, number: str, ref: str, now_us: int
) -> tuple[int, int, int, str]:
    """(start, end, matched tx, currency) of an active stop, else ``RuleViolated``."""
    row = conn.execute(
        "SELECT start_ts, end_ts, matched_tx, currency, released_ts FROM stop_payments"
        " WHERE order_ref = ? AND account_number = ?",
        (ref, number),
    ).fetchone()
    if row is None:
        raise RuleViolated("original_order_ref: no such stop-payment on account_number")
    start, end, tx, cur, released = row
    if released is not None or end <= now_us:
        state = OrderState.RELEASED if released is not None else OrderState.EXPIRED
        raise RuleViolated(f"original_order_ref: the stop-payment is {state}, not active")
    return int(start), int(end), int(tx), str(cur)


def _stop_outcome(
    conn: sqlite3.Connection,
    number: str,
    ref: str,
    state: OrderState,
    span: tuple[int, int],
    tx: int,
    cur: str,
    now_us: int,
) -> StopPaymentOutcome:
    balance, _, _ = balances(conn, number, now_us)
    return StopPaymentOutcome(
        order_ref=ref,
        account_number=number,
        state=state,
        start=from_us(span[0]),
        end=from_us(span[1]),
        balance_minor=balance,
        currency=cur,
        matched_transaction_id=tx,
        executions_on_account=_stop_executions(conn, number),
    )


def release_stop(
    conn: sqlite3.Connection, number: str, ref: str, now_us: int
) -> StopPaymentOutcome:
    """Release an active stop-payment now."""
    start, _, tx, cur = _active_stop(conn, number, ref, now_us)
    conn.execute("UPDATE stop_payments SET released_ts = ? WHERE order_ref = ?", (now_us, ref))
    return _stop_outcome(conn, number, ref, OrderState.RELEASED, (start, now_us), tx, cur, now_us)


def extend_stop(conn: sqlite3.Connection, number: str, ref: str, now_us: int) -> StopPaymentOutcome:
    """Extend an active stop-payment by 48 hours past its current end (counts as an execution)."""
    start, end, tx, cur = _active_stop(conn, number, ref, now_us)
    _refuse_third_stop(_stop_executions(conn, number))
    new_end = end + _STOP_US
    conn.execute(
        "UPDATE stop_payments SET end_ts = ?, extensions = extensions + 1 WHERE order_ref = ?",
        (new_end, ref),
    )
    return _stop_outcome(conn, number, ref, OrderState.ACTIVE, (start, new_end), tx, cur, now_us)


# ---------------------------------------------------------------------- freeze


def _earlier_freezes(
    conn: sqlite3.Connection, number: str, now_us: int, exclude: str
) -> tuple[EarlierFreeze, ...]:
    rows = conn.execute(
        "SELECT order_ref, method, amount, end_ts, agency FROM freezes"
        " WHERE account_number = ? AND released_ts IS NULL AND start_ts <= ? AND end_ts > ?"
        " AND order_ref != ? ORDER BY start_ts, order_ref",
        (number, now_us, now_us, exclude),
    ).fetchall()
    return tuple(
        EarlierFreeze(ref, FreezeMethod(method), amount, from_us(end), agency)
        for ref, method, amount, end, agency in rows
    )


def _freeze_outcome(
    conn: sqlite3.Connection, number: str, ref: str, state: OrderState, now_us: int
) -> FreezeOutcome:
    method, amount, cur, start, end, released = conn.execute(
        "SELECT method, amount, currency, start_ts, end_ts, released_ts FROM freezes"
        " WHERE order_ref = ?",
        (ref,),
    ).fetchone()
    balance, available, _ = balances(conn, number, now_us)
    frozen = balance if method == FreezeMethod.RECEIVE_ONLY else int(amount)
    return FreezeOutcome(
        order_ref=ref,
        account_number=number,
        method=FreezeMethod(method),
        state=state,
        start=from_us(start),
        end=from_us(released if released is not None else end),
        frozen_minor=frozen if state is OrderState.ACTIVE else 0,
        balance_minor=balance,
        available_minor=available,
        currency=cur,
        earlier_freezes=_earlier_freezes(conn, number, now_us, ref),
    )


def _refuse_too_long(end_us: int, now_us: int, field: str) -> None:
    if end_us <= now_us:
        raise InvalidArgument.for_fields(
            [FieldViolation(field, "must be after the time of execution")]
        )
    if end_us - now_us > _FREEZE_MAX_US:
        raise RuleViolated(
            f"{field} is more than 6 months (183 days) away; freezes last at most that"
        )


def execute_freeze(
    conn: sqlite3.Connection,
    order: FreezeOrder,
    *,
    holder_name: str,
    currency: str,
    now_us: int,
    end_us: int,
) -> FreezeOutcome:
    """Freeze a fixed amount (at most what is not frozen already) or all outflows.

    A repeat of a freeze in force (same account, case number and document number) is answered
    with that freeze's state and ``repeat_of`` set; nothing is frozen again.
    """
    if conn.execute("SELECT 1 FROM freezes WHERE order_ref = ?", (order.order_ref,)).fetchone():
        raise RuleViolated("order_ref has already been executed")
    row = conn.execute(
        "SELECT order_ref FROM freezes WHERE account_number = ? AND case_number = ?"
        " AND case_document = ? AND released_ts IS NULL AND end_ts > ?"
        " ORDER BY start_ts LIMIT 1",
        (order.account_number, order.case_number, order.case_document, now_us),
    ).fetchone()
    if row is not None:
        outcome = _freeze_outcome(conn, order.account_number, row[0], OrderState.ACTIVE, now_us)
        return replace(outcome, repeat_of=str(row[0]))
    if holder_name != order.account_name:
        raise RuleViolated("account_name does not match the holder of account_number")
    if currency != order.currency:
        raise RuleViolated(f"currency does not match: the account is held in {currency}")
    _refuse_too_long(end_us, now_us, "end")
    if conn.execute("SELECT 1 FROM freezes WHERE order_ref = ?", (order.order_ref,)).fetchone():
        raise RuleViolated("order_ref has already been executed")
    _, _, freezable = balances(conn, order.account_number, now_us)
    if order.method == FreezeMethod.FIXED_AMOUNT and order.amount_minor > freezable:
        available = format_money(Money(currency=order.currency, minor_units=freezable))
        raise RuleViolated(f"amount exceeds the balance available to freeze ({available})")
    conn.execute(
        "INSERT INTO freezes(order_ref, account_number, method, amount, currency, agency,"
        " case_number, case_document, duty_phone, start_ts, end_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order.order_ref, order.account_number, order.method.value, order.amount_minor,
         order.currency, order.agency, order.case_number, order.case_document, order.duty_phone,
         now_us, end_us),
    )  # fmt: skip
    return _freeze_outcome(conn, order.account_number, order.order_ref, OrderState.ACTIVE, now_us)


def _active_freeze(conn: sqlite3.Connection, number: str, ref: str, now_us: int) -> int:
    """The end of an active freeze, else ``RuleViolated``."""
    row = conn.execute(
        "SELECT end_ts, released_ts FROM freezes WHERE order_ref = ? AND account_number = ?",
        (ref, number),
    ).fetchone()
    if row is None:
        raise RuleViolated("original_ref: no such freeze on account_number")
    end, released = row
    if released is not None or end <= now_us:
        state = OrderState.RELEASED if released is not None else OrderState.EXPIRED
        raise RuleViolated(f"original_ref: the freeze is {state}, not active")
    return int(end)


def release_freeze(conn: sqlite3.Connection, number: str, ref: str, now_us: int) -> FreezeOutcome:
    """Release an active freeze now."""
    _active_freeze(conn, number, ref, now_us)
    conn.execute("UPDATE freezes SET released_ts = ? WHERE order_ref = ?", (now_us, ref))
    return _freeze_outcome(conn, number, ref, OrderState.RELEASED, now_us)


def renew_freeze(
    conn: sqlite3.Connection, number: str, ref: str, new_end_us: int, now_us: int
) -> FreezeOutcome:
    """Renew an active freeze to ``new_end`` (later than its end, at most 6 months from now)."""
    end = _active_freeze(conn, number, ref, now_us)
    _refuse_too_long(new_end_us, now_us, "new_end")
    if new_end_us <= end:
        raise RuleViolated("new_end must be later than the freeze's current end")
    conn.execute(
        "UPDATE freezes SET end_ts = ?, renewals = renewals + 1 WHERE order_ref = ?",
        (new_end_us, ref),
    )
    return _freeze_outcome(conn, number, ref, OrderState.ACTIVE, now_us)


# ---------------------------------------------------------------------- refund


def _post(
    conn: sqlite3.Connection,
    number: str,
    *,
    direction: str,
    amount: int,
    currency: str,
    counterparty: tuple[str, str, str],
    memo: str,
    now_us: int,
) -> int:
    """Post one movement on ``number`` (no restriction checked: the caller decided); its id."""
    (balance,) = conn.execute(
        "SELECT balance FROM accounts WHERE account_number = ?", (number,)
    ).fetchone()
    after = int(balance) - amount if direction == "out" else int(balance) + amount
    conn.execute("UPDATE accounts SET balance = ? WHERE account_number = ?", (after, number))
    cur = conn.execute(
        "INSERT INTO transactions(account_number, ts, direction, amount, currency,"
        " counterparty_account, counterparty_name, counterparty_bank, channel,"
        " balance_after, memo) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'counter', ?, ?)",
        (number, now_us, direction, amount, currency, *counterparty, after, memo),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def execute_refund(
    conn: sqlite3.Connection, order: RefundOrder, *, bank_id: str, holder_name: str, now_us: int
) -> RefundOutcome:
    """Move ``order.amount_minor`` from the frozen account to the victim, within the limits."""
    row = conn.execute(
        "SELECT method, amount, currency, case_number, end_ts, released_ts FROM freezes"
        " WHERE order_ref = ? AND account_number = ?",
        (order.freeze_ref, order.account_number),
    ).fetchone()
    if row is None:
        raise RuleViolated("freeze_ref: no such freeze on account_number")
    method, held, currency, case_number, end, released = row
    if released is not None or end <= now_us:
        state = OrderState.RELEASED if released is not None else OrderState.EXPIRED
        raise RuleViolated(f"freeze_ref: the freeze is {state}, not in force")
    if case_number != order.case_number:
        raise RuleViolated("case_number: the freeze belongs to another case")
    if currency != order.currency:
        raise RuleViolated(f"currency does not match: the freeze holds {currency}")
    (balance,) = conn.execute(
        "SELECT balance FROM accounts WHERE account_number = ?", (order.account_number,)
    ).fetchone()
    holds = int(balance) if method == FreezeMethod.RECEIVE_ONLY else min(int(held), int(balance))
    if order.amount_minor > holds:
        raise RuleViolated(
            f"amount exceeds what the freeze holds ({_money(holds, currency)}): refund limit "
            "is the frozen amount"
        )
    (refunded,) = conn.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE case_number = ? AND victim_account = ?",
        (order.case_number, order.victim_account),
    ).fetchone()
    if int(refunded) + order.amount_minor > order.reported_loss_minor:
        left = max(0, order.reported_loss_minor - int(refunded))
        raise RuleViolated(
            f"amount exceeds the victim's reported loss less earlier refunds "
            f"({_money(left, currency)} left): refund limit is the reported loss"
        )
    memo = f"资金返还 {order.case_number}"
    movement = _post(
        conn,
        order.account_number,
        direction="out",
        amount=order.amount_minor,
        currency=currency,
        counterparty=(order.victim_account, order.victim_name, order.victim_bank),
        memo=memo,
        now_us=now_us,
    )
    victim_here = conn.execute(
        "SELECT 1 FROM accounts WHERE account_number = ?", (order.victim_account,)
    ).fetchone()
    if victim_here is not None:
        _post(
            conn,
            order.victim_account,
            direction="in",
            amount=order.amount_minor,
            currency=currency,
            counterparty=(order.account_number, holder_name, bank_id),
            memo=memo,
            now_us=now_us,
        )
    remaining = holds - order.amount_minor
    in_force = True
    if method == FreezeMethod.FIXED_AMOUNT:
        in_force = remaining > 0
        conn.execute(
            "UPDATE freezes SET amount = ?, released_ts = ? WHERE order_ref = ?",
            (remaining, None if in_force else now_us, order.freeze_ref),
        )
    conn.execute(
        "INSERT INTO refunds(order_ref, freeze_ref, account_number, victim_account, victim_bank,"
        " case_number, amount, reported_loss, currency, movement_id, ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order.order_ref, order.freeze_ref, order.account_number, order.victim_account,
         order.victim_bank, order.case_number, order.amount_minor, order.reported_loss_minor,
         currency, movement, now_us),
    )  # fmt: skip
    (after,) = conn.execute(
        "SELECT balance FROM accounts WHERE account_number = ?", (order.account_number,)
    ).fetchone()
    return RefundOutcome(
        order_ref=order.order_ref,
        account_number=order.account_number,
        movement_id=str(movement),
        amount_minor=order.amount_minor,
        currency=currency,
        victim_account=order.victim_account,
        victim_bank=order.victim_bank,
        executed_at=from_us(now_us),
        frozen_remaining_minor=remaining,
        balance_minor=int(after),
        freeze_in_force=in_force,
    )


def _money(minor: int, currency: str) -> str:
    return format_money(Money(currency=currency, minor_units=minor))
