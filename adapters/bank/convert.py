"""Core-banking answers (frozen dataclasses of ``adapters.bank.backend``) as protobuf results."""

from __future__ import annotations

from datetime import date, datetime, time

from google.protobuf import timestamp_pb2

from adapters.bank.backend import (
    AccountHolder,
    AccountSummary,
    FreezeOutcome,
    LoginRecord,
    MonitorState,
    OrderState,
    RefundOutcome,
    StopPaymentOutcome,
    Transaction,
)
from fedgate.types import CHINA_TIME
from fedgate.v1 import bank_pb2, common_pb2

__all__ = [
    "CHINA_TIME",
    "account_status",
    "freeze_pb",
    "holder_pb",
    "login_pb",
    "money",
    "monitor_pb",
    "refund_pb",
    "stop_pb",
    "summary_pb",
    "timestamp",
    "transaction_pb",
]

"""Dates the bank records (e.g. an account's opening day) start at midnight China time."""


def money(minor_units: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(currency=currency, minor_units=minor_units)


def timestamp(value: datetime | date) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0), CHINA_TIME)
    stamp.FromDatetime(value)
    return stamp


def account_status(status: str, *, stopped: bool, frozen: bool) -> str:
    """The wire status: ``normal``, ``stopped``, ``frozen`` or the bank's own (e.g. ``closed``)."""
    if status != "active":
        return status
    if stopped:
        return "stopped"
    return "frozen" if frozen else "normal"


def holder_pb(holder: AccountHolder) -> bank_pb2.AccountHolderResult:
    return bank_pb2.AccountHolderResult(
        account_number=holder.account_number,
        account_name=holder.name,
        id_number=holder.id_number,
        phone=holder.phone,
        branch=holder.branch,
        opened_at=timestamp(holder.opened_on),
        status=account_status(holder.status, stopped=holder.stopped, frozen=holder.frozen),
        balance=money(holder.balance_minor, holder.currency),
    )


def summary_pb(summary: AccountSummary, *, status: str) -> bank_pb2.AccountSummary:
    return bank_pb2.AccountSummary(
        account_number=summary.account_number,
        account_type=summary.account_type.value,
        status=status,
        balance=money(summary.balance_minor, summary.currency),
        opened_at=timestamp(summary.opened_on),
    )


def transaction_pb(tx: Transaction) -> bank_pb2.Transaction:
    return bank_pb2.Transaction(
        transaction_id=str(tx.id),
        time=timestamp(tx.ts),
        direction=tx.direction.value,
        amount=money(tx.amount_minor, tx.currency),
        balance_after=money(tx.balance_after_minor, tx.currency),
        counterparty_account=tx.counterparty_account,
        counterparty_name=tx.counterparty_name,
        counterparty_bank=tx.counterparty_bank,
        channel=tx.channel.value,
        memo=tx.memo,
    )


def login_pb(record: LoginRecord) -> bank_pb2.LoginRecord:
    return bank_pb2.LoginRecord(
        time=timestamp(record.ts),
        device_id=record.device_id,
        ip=record.ip,
        channel=record.channel.value,
    )


def stop_pb(outcome: StopPaymentOutcome) -> bank_pb2.StopPaymentResult:
    return bank_pb2.StopPaymentResult(
        account_number=outcome.account_number,
        in_force=outcome.state is OrderState.ACTIVE,
        start=timestamp(outcome.start),
        end=timestamp(outcome.end),
        balance=money(outcome.balance_minor, outcome.currency),
        stop_count=outcome.executions_on_account,
        repeat_of=outcome.repeat_of,
    )


def freeze_pb(outcome: FreezeOutcome) -> bank_pb2.FreezeResult:
    return bank_pb2.FreezeResult(
        account_number=outcome.account_number,
        in_force=outcome.state is OrderState.ACTIVE,
        amount_frozen=money(outcome.frozen_minor, outcome.currency),
        balance=money(outcome.balance_minor, outcome.currency),
        available_balance=money(outcome.available_minor, outcome.currency),
        start=timestamp(outcome.start),
        end=timestamp(outcome.end),
        prior_freezes=[
            bank_pb2.PriorFreeze(
                amount=money(f.amount_minor, outcome.currency),
                end=timestamp(f.end),
                agency=f.agency,
            )
            for f in outcome.earlier_freezes
        ],
        repeat_of=outcome.repeat_of,
    )


def monitor_pb(state: MonitorState) -> bank_pb2.MonitorResult:
    return bank_pb2.MonitorResult(
        account_number=state.account_number, active=state.active, until=timestamp(state.until)
    )


def refund_pb(outcome: RefundOutcome) -> bank_pb2.RefundResult:
    return bank_pb2.RefundResult(
        account_number=outcome.account_number,
        movement_id=outcome.movement_id,
        amount=money(outcome.amount_minor, outcome.currency),
        victim_account=outcome.victim_account,
        victim_bank=outcome.victim_bank,
        executed_at=timestamp(outcome.executed_at),
        frozen_remaining=money(outcome.frozen_remaining_minor, outcome.currency),
        balance=money(outcome.balance_minor, outcome.currency),
        freeze_in_force=outcome.freeze_in_force,
    )
