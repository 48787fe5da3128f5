"""The seam between a bank's agency node and its core banking system.

:class:`CoreBanking` has one synchronous method per bank action; the node runs
them in worker threads and turns the frozen dataclasses below into protobuf.
Money is an ``int`` of minor units (fen) beside an ISO 4217 currency code;
times are timezone-aware datetimes.

Errors raised by an implementation:

- ``fedgate.errors.InvalidArgument`` for malformed input, naming the field;
- ``fedgate.errors.NotFound`` for an unknown account or ID number;
- ``fedgate.errors.RuleViolated`` when the bank refuses an order, the message
  naming the field or rule that failed;
- ``fedgate.errors.AgencyUnavailable`` when the system cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Protocol

__all__ = [
    "FREEZE_MAX",
    "STOP_PAYMENT_DURATION",
    "STOP_PAYMENT_MAX_PER_ACCOUNT",
    "STOP_PAYMENT_TIME_TOLERANCE",
    "AccountHolder",
    "AccountSummary",
    "AccountType",
    "AggregateStats",
    "Channel",
    "CoreBanking",
    "Direction",
    "EarlierFreeze",
    "FreezeMethod",
    "FreezeOrder",
    "FreezeOutcome",
    "LoginRecord",
    "MonitorState",
    "OrderState",
    "RefundOrder",
    "RefundOutcome",
    "StopPaymentOrder",
    "StopPaymentOutcome",
    "Transaction",
    "TransactionPage",
]

STOP_PAYMENT_DURATION = timedelta(hours=48)
"""A stop-payment (or an extension) lasts 48 hours from its execution."""

STOP_PAYMENT_MAX_PER_ACCOUNT = 2
"""Stop-payment executions allowed per account, ever (an extension counts as one)."""

STOP_PAYMENT_TIME_TOLERANCE = timedelta(minutes=5)
"""How far the reported transfer time may be from the bank's record of it."""

FREEZE_MAX = timedelta(days=183)
"""The longest freeze of deposits (six months), counted from execution or renewal."""


class AccountType(StrEnum):
    """Personal account classes (I类/II类/III类户)."""

    CLASS_I = "class_i"
    CLASS_II = "class_ii"
    CLASS_III = "class_iii"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Channel(StrEnum):
    COUNTER = "counter"
    ATM = "atm"
    POS = "pos"
    ONLINE = "online"
    MOBILE = "mobile"
    THIRD_PARTY = "third_party"


class FreezeMethod(StrEnum):
    FIXED_AMOUNT = "fixed_amount"
    """Freeze a stated amount of the balance."""
    RECEIVE_ONLY = "receive_only"
    """只收不付: the account may receive but nothing may leave it."""


class OrderState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class AccountHolder:
    """The answer to a holder query (主体查询): who holds the account, and its state."""

    account_number: str
    bank_id: str
    name: str
    id_number: str
    phone: str
    address: str
    account_type: AccountType
    opened_on: date
    branch: str
    status: str
    balance_minor: int
    available_minor: int
    currency: str
    stopped: bool
    frozen: bool


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """One account in the answer to an all-accounts query (全户查询)."""

    account_number: str
    bank_id: str
    name: str
    account_type: AccountType
    opened_on: date
    branch: str
    status: str
    balance_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Transaction:
    """One posting on an account; ``id`` increases with every posting at this bank."""

    id: int
    account_number: str
    ts: datetime
    direction: Direction
    amount_minor: int
    currency: str
    counterparty_account: str
    counterparty_name: str
    counterparty_bank: str
    channel: Channel
    balance_after_minor: int
    memo: str


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """Transactions in time order; ``next_page_token`` is empty on the last page."""

    transactions: tuple[Transaction, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class LoginRecord:
    account_number: str
    ts: datetime
    device_id: str
    ip: str
    channel: Channel


@dataclass(frozen=True, slots=True)
class StopPaymentOrder:
    """An emergency stop-payment (紧急止付) on the account that received a victim's transfer.

    ``order_ref`` is the police request id of this order. The bank executes it
    only if ``account_name`` is the holder's name and the account received
    ``amount_minor`` from ``payer_account`` within five minutes of
    ``transfer_time``.
    """

    order_ref: str
    account_number: str
    account_name: str
    payer_account: str
    payer_name: str
    payer_bank: str
    amount_minor: int
    currency: str
    transfer_time: datetime
    agency: str
    case_number: str = ""
    case_document: str = ""


@dataclass(frozen=True, slots=True)
class StopPaymentOutcome:
    order_ref: str
    account_number: str
    state: OrderState
    start: datetime
    end: datetime
    balance_minor: int
    currency: str
    matched_transaction_id: int
    executions_on_account: int
    repeat_of: str = ""
    """The order in force this one repeated (same account, case and document), else empty."""


@dataclass(frozen=True, slots=True)
class FreezeOrder:
    """A freeze (冻结) of a fixed amount or of all outflows, until ``end``.

    ``amount_minor`` is the amount for ``FIXED_AMOUNT`` and 0 for ``RECEIVE_ONLY``.
    ``case_document`` is the number of the case-filing decision (立案决定书).
    """

    order_ref: str
    account_number: str
    account_name: str
    method: FreezeMethod
    amount_minor: int
    currency: str
    end: datetime
    agency: str
    case_number: str
    case_document: str
    duty_phone: str


@dataclass(frozen=True, slots=True)
class EarlierFreeze:
    """A freeze that was already in force on the account when a new one arrived."""

    order_ref: str
    method: FreezeMethod
    amount_minor: int
    end: datetime
    agency: str


@dataclass(frozen=True, slots=True)
class FreezeOutcome:
    """The state of a freeze after an order; ``frozen_minor`` is this freeze's amount."""

    order_ref: str
    account_number: str
    method: FreezeMethod
    state: OrderState
    start: datetime
    end: datetime
    frozen_minor: int
    balance_minor: int
    available_minor: int
    currency: str
    earlier_freezes: tuple[EarlierFreeze, ...]
    repeat_of: str = ""
    """The freeze in force this one repeated (same account, case and document), else empty."""


@dataclass(frozen=True, slots=True)
class RefundOrder:
    """A refund (资金返还) of frozen funds to the victim, drawn on the freeze ``freeze_ref``.

    ``reported_loss_minor`` is the victim's reported loss in ``case_number``; the refunds to one
    victim in one case never exceed it.
    """

    order_ref: str
    freeze_ref: str
    account_number: str
    victim_account: str
    victim_name: str
    victim_bank: str
    amount_minor: int
    reported_loss_minor: int
    currency: str
    case_number: str
    agency: str


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """The movement a refund made: the debit on the frozen account, and what the freeze keeps."""

    order_ref: str
    account_number: str
    movement_id: str
    amount_minor: int
    currency: str
    victim_account: str
    victim_bank: str
    executed_at: datetime
    frozen_remaining_minor: int
    balance_minor: int
    freeze_in_force: bool


@dataclass(frozen=True, slots=True)
class MonitorState:
    """Live monitoring (动态查询) of an account; push postings with ``id > start_after_id``."""

    account_number: str
    since: datetime
    until: datetime
    start_after_id: int
    active: bool


@dataclass(frozen=True, slots=True)
class AggregateStats:
    """An aggregate figure over a window: how many events, and their total where it has one."""

    metric: str
    count: int
    total_minor: int
    currency: str = "CNY"


class CoreBanking(Protocol):
    """What a bank's node needs from core banking. Methods are blocking and thread-safe."""

    @property
    def bank_id(self) -> str:
        """The bank's member id, e.g. ``bank.icbc``."""
        ...

    def account_holder(self, account_number: str) -> AccountHolder:
        """The holder and state of an account held at this bank."""
        ...

    def transactions(
        self,
        account_number: str,
        start: datetime,
        end: datetime,
        *,
        page_size: int,
        page_token: str,
    ) -> TransactionPage:
        """Postings with ``start <= ts < end`` in time order, one page at a time."""
        ...

    def accounts_by_id(self, id_number: str) -> tuple[AccountSummary, ...]:
        """Every account at this bank under a resident ID number; ``NotFound`` if none."""
        ...

    def login_records(
        self, account_number: str, start: datetime, end: datetime
    ) -> tuple[LoginRecord, ...]:
        """Logins (device, IP, channel) with ``start <= ts < end``, oldest first."""
        ...

    def stop_payment(self, order: StopPaymentOrder, *, now: datetime) -> StopPaymentOutcome:
        """Stop payment on the account for 48 hours from ``now``.

        The bank MUST act only if the holder's name, the account, and an incoming
        transfer from ``payer_account`` of ``amount_minor`` within five minutes of
        ``transfer_time`` all match, and otherwise raise ``RuleViolated`` naming
        what did not match. It MUST NOT stop one account more than twice, ever. An order
        that repeats a stop-payment in force (same account, ``case_number`` and
        ``case_document``) MUST be answered with that stop-payment (``repeat_of`` set to its
        ``order_ref``) and MUST NOT be executed again.
        """
        ...

    def stop_payment_release(
        self, account_number: str, original_order_ref: str, *, now: datetime
    ) -> StopPaymentOutcome:
        """Release an active stop-payment; ``RuleViolated`` if it is unknown or not active."""
        ...

    def stop_payment_extend(
        self, account_number: str, original_order_ref: str, *, now: datetime
    ) -> StopPaymentOutcome:
        """Extend an active stop-payment by 48 hours; counts towards the two per account."""
        ...

    def freeze(self, order: FreezeOrder, *, now: datetime) -> FreezeOutcome:
        """Freeze until ``order.end``, at most 183 days from ``now``.

        A fixed amount MUST NOT exceed the balance not already frozen. The
        outcome reports every earlier freeze still in force. An order that repeats a freeze
        in force (same account, ``case_number`` and ``case_document``) MUST be answered with
        that freeze (``repeat_of`` set to its ``order_ref``) and MUST NOT freeze again.
        """
        ...

    def freeze_release(
        self, account_number: str, original_ref: str, *, now: datetime
    ) -> FreezeOutcome:
        """Release an active freeze; ``RuleViolated`` if it is unknown or not active."""
        ...

    def freeze_renew(
        self, account_number: str, original_ref: str, new_end: datetime, *, now: datetime
    ) -> FreezeOutcome:
        """Renew an active freeze to ``new_end``, at most 183 days from ``now``."""
        ...

    def refund(self, order: RefundOrder, *, now: datetime) -> RefundOutcome:
        """Return frozen funds to the victim along the original route (资金返还).

        The bank MUST refuse (``RuleViolated``, naming the limit) unless ``freeze_ref`` is a
        freeze in force on ``account_number`` in ``case_number``; the amount MUST NOT exceed
        what the freeze still holds (a fixed amount less earlier refunds; the balance for a
        receive-only freeze) nor the victim's reported loss less the refunds already made to
        ``victim_account`` in the case. It debits the frozen account, reduces the freeze (a
        fixed-amount freeze refunded in full ends) and credits the victim's account when it is
        held here (else the funds leave for ``victim_bank``).
        """
        ...

    def monitor_start(self, account_number: str, until: datetime, *, now: datetime) -> MonitorState:
        """Start (or prolong) live monitoring until ``until``."""
        ...

    def monitor_stop(self, account_number: str, *, now: datetime) -> MonitorState:
        """Stop live monitoring; ``RuleViolated`` if the account is not monitored."""
        ...

    def monitored_accounts(self) -> tuple[MonitorState, ...]:
        """The monitors in force now."""
        ...

    def aggregate_stats(self, metric: str, start: datetime, end: datetime) -> AggregateStats:
        """An aggregate figure (one of ``AGGREGATE_METRICS``) for [start, end); no personal
        data. ``InvalidArgument`` for an unknown metric."""
        ...

    def new_transactions_since(self, account_number: str, after_id: int) -> tuple[Transaction, ...]:
        """Postings on the account with ``id > after_id``, by id (for live monitoring)."""
        ...

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
        """Post a new transaction (tests and demos): refused if it would break a stop or freeze."""
        ...
