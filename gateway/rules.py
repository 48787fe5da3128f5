"""Stateful business rules that the Casbin policy cannot express (pipeline stage 6).

``BusinessRules.check`` runs after the policy allowed a request; ``record_outcome`` runs after
the target agency answered an order with ``RESPONSE_STATUS_OK``. The state is a projection of
the audit log (``gateway.rules_rebuild``): the gateway keeps it in memory
(``BusinessRules.in_memory``) and rebuilds it from the response legs of executed orders at every
start, so no file can be lost, locked or restored behind the log's back (a lost record of an
executed stop-payment would let a third one through). ``BusinessRules.open`` keeps it in a
SQLite file instead (WAL, ``synchronous=FULL``), for tools and tests. Several instances share
one projection in PostgreSQL (``gateway.rules_pg``, ``[shared] store = "postgres"``): an order
one instance recorded counts at every other one.

Every rule has a stable id (``RULES``); a refusal is a ``BusinessRuleViolated`` whose ``rule``
is that id and whose message starts with ``RULE <id>:``.

Decisions, where the domain leaves room:

- "The same account may be stopped at most twice": the count per (bank, account) is the
  executed stop-payments plus the executed extensions, over all time. The proto says an
  extension "counts as a stop-payment", and the bank node counts the same way. An original may
  be extended once (a second extension would be a third stop anyway).
- A stop-payment runs 48 hours from execution (when ``record_outcome`` is called); an extension
  adds 48 hours to its current end. A release ends it.
- A freeze order freezes one account; ``bulk_count`` (0 → 1) is the size of the batch it
  belongs to. The cumulative count of a case is the executed freeze orders recorded for the
  case number plus this order's ``bulk_count``; a batch sent as many orders therefore errs
  toward asking for approval, never away from it.
- A bulk approval MUST come from someone other than the requesting officer.
- Freeze renewals need the case-filing decision too (a renewal is a new freeze period).
- An order repeating one in force (``fedgate.actions.REPEATABLE_ORDERS``: same account at the
  same bank, same case number, same document number) passes the limits: the bank answers it
  with the order in force and executes nothing, and ``record_outcome`` does not count it.
- ``check`` reserves nothing in one process: two concurrent orders on one account may both
  pass it. The agency node enforces the same limits when it executes, and ``record_outcome`` is
  idempotent by request id. Several instances sharing the state (``Reservations``,
  ``gateway.rules_pg``) reserve: a stop-payment or extension that passes ``check`` holds a
  reservation on its account, taken under a lock on the account in the same transaction as the
  count, until its outcome is recorded (whatever the answer: a bank's refusal releases it, so a
  legitimate retry is not blocked) or the reservation lapses; so two instances cannot both allow
  a third stop-payment.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from google.protobuf.descriptor import EnumDescriptor

from fedgate.actions import document_problem
from fedgate.errors import AuditUnavailable, RuleViolated
from fedgate.logs import mask
from fedgate.render import format_money, format_time
from fedgate.storage import Schema, immediate, open_store
from fedgate.v1 import common_pb2, request_pb2

__all__ = [
    "BULK_CASE_THRESHOLD",
    "BULK_ORDER_THRESHOLD",
    "FREEZE_MAX",
    "RULES",
    "SCHEMA",
    "STOP_PAYMENT_DURATION",
    "BusinessRuleViolated",
    "BusinessRules",
    "Reservations",
    "StateConnection",
]

_log = logging.getLogger(__name__)

STOP_PAYMENT_DURATION: Final = timedelta(hours=48)
FREEZE_MAX: Final = timedelta(days=183)
"""Six months, the longest a deposit may be frozen by one order or renewal."""
_STOP_PAYMENT_MAX = 2
_STOP_US: Final = STOP_PAYMENT_DURATION // timedelta(microseconds=1)


BULK_ORDER_THRESHOLD: Final = 200
"""Accounts in one freeze order from which a supervisor's approval is required."""
BULK_CASE_THRESHOLD: Final = 500
"""Accounts frozen in one case from which a supervisor's approval is required."""


RULES: Final[dict[str, str]] = {
    "stop_payment.max_two_per_account": "an account may be stopped at most twice at one bank "
    "(extensions count)",
    "stop_payment_release.cites_executed_stop": "a release cites an executed, unreleased "
    "stop-payment on the same account at the same bank",
    "stop_payment_extend.cites_stop_in_force": "an extension cites a stop-payment still in force "
    "on the same account at the same bank",
    "stop_payment_extend.once_per_original": "a stop-payment may be extended once",
    "legal_document.accepted_kind": "every order and query cites a kind of legal document that "
    "may authorise it (fedgate.actions.ACCEPTED_DOCUMENTS); freezes and renewals cite a "
    "case-filing decision",
    "freeze.max_six_months": "a freeze lasts at most 183 days",
    "freeze.bulk_requires_approval": f"≥ {BULK_ORDER_THRESHOLD} accounts in one order or "
    f"≥ {BULK_CASE_THRESHOLD} in one case need a centre supervisor's approval",
    "freeze_renew.cites_freeze_in_force": "a renewal cites a freeze still in force on the same "
    "account at the same bank",
    "freeze_renew.max_six_months": "a renewal ends at most 183 days from now",
    "freeze_release.cites_freeze": "a release cites an executed, unreleased freeze on the same "
    "account at the same bank",
    "call_records.requires_second_officer": "call records need a second officer",
    "location.requires_second_officer": "location needs a second officer",
    "monitor_stop.cites_monitor_start": "a monitor stop cites a monitor_start not yet stopped, "
    "on the same account at the same bank",
    **{
        # Refunds (资金返还): checked here against the state, and in the pipeline against the
        # log (``gateway.pipeline._refunds``: the cited freeze itself, who gave it, its amount).
        "refund.cites_freeze_in_force": "a refund cites an executed freeze still in force on the "
        "same account at the same bank, in the same case",
        "refund.by_ordering_unit_or_above": "only the unit that froze the funds, or one above it, "
        "may order them refunded",
        "refund.max_frozen_amount": "refunds drawn on one fixed-amount freeze never exceed the "
        "amount it froze",
        "refund.max_reported_loss": "refunds to one victim in one case never exceed the victim's "
        "reported loss",
        "refund.same_reported_loss": "every refund to one victim in one case states the same "
        "reported loss",
    },
}
"""Every rule id with a one-line statement (for docs, ``fedgate policy explain`` and audits)."""

_POLICE_ROLES: Final = frozenset(
    {
        common_pb2.ROLE_POLICE_INVESTIGATOR,
        common_pb2.ROLE_POLICE_DUTY_OFFICER,
        common_pb2.ROLE_CENTRE_SUPERVISOR,
    }
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stop_payments (
    request_id  TEXT PRIMARY KEY,
    bank        TEXT NOT NULL,
    account     TEXT NOT NULL,
    start_us    INTEGER NOT NULL,
    end_us      INTEGER NOT NULL,
    extended_by TEXT,
    released_us INTEGER
);
CREATE INDEX IF NOT EXISTS stop_payments_by_account ON stop_payments (bank, account);
CREATE TABLE IF NOT EXISTS freezes (
    request_id  TEXT PRIMARY KEY,
    bank        TEXT NOT NULL,
    account     TEXT NOT NULL,
    case_number TEXT NOT NULL,
    start_us    INTEGER NOT NULL,
    end_us      INTEGER NOT NULL,
    released_us INTEGER
);
CREATE INDEX IF NOT EXISTS freezes_by_case ON freezes (case_number);
CREATE TABLE IF NOT EXISTS order_documents (
    request_id  TEXT PRIMARY KEY,
    case_number TEXT NOT NULL,
    doc_number  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitors (
    request_id TEXT PRIMARY KEY,
    bank       TEXT NOT NULL,
    account    TEXT NOT NULL,
    until_us   INTEGER NOT NULL,
    stopped_us INTEGER
);
CREATE TABLE IF NOT EXISTS refunds (
    request_id     TEXT PRIMARY KEY,
    freeze_id      TEXT NOT NULL,
    case_number    TEXT NOT NULL,
    victim_account TEXT NOT NULL,
    currency       TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    reported_loss  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_by_freeze ON refunds (freeze_id);
CREATE INDEX IF NOT EXISTS refunds_by_victim ON refunds (case_number, victim_account);
"""
_STORE = Schema(
    store="business-rules state", version=1, create=_SCHEMA, legacy_table="stop_payments"
)
SCHEMA: Final = _SCHEMA
"""The tables of the state (SQLite's dialect; ``gateway.rules_pg`` reads it for PostgreSQL)."""


class StateCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class Reservations(Protocol):
    """Stop-payments allowed but not yet answered, on a state several instances share. Every
    method runs inside the rules' transaction on their connection."""

    def lock_account(self, bank: str, account: str) -> None:
        """Hold a lock on the account until the transaction ends (serialises two checks)."""
        ...

    def held(self, bank: str, account: str, *, other_than: str, now_us: int) -> int:
        """Reservations in force on the account, but ``other_than``'s."""
        ...

    def reserve(self, request_id: str, bank: str, account: str, *, now_us: int) -> None: ...

    def release(self, request_id: str) -> None: ...


class StateConnection(Protocol):
    """What the rules need of their database: an ``sqlite3.Connection`` or
    ``gateway.rules_pg.PgStateConnection`` (same statements, ``?`` parameters)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> StateCursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _iso(us: int) -> str:
    """A time in a rule's message, as people at the centre read it (China time)."""
    return format_time(_EPOCH + timedelta(microseconds=us))


@dataclass(frozen=True, slots=True)
class _Order:
    """An executed order as recorded: what it is on, and until when."""

    request_id: str
    bank: str
    account: str
    end_us: int
    """The stop-payment's or freeze's end, or the monitor's ``until``."""
    closed_us: int | None
    """When it was released (stop-payment, freeze) or stopped (monitor)."""
    extended_by: str | None = None


_ORDER_QUERIES: Final[dict[str, str]] = {
    "stop-payment": "SELECT request_id, bank, account, end_us, released_us, extended_by"
    " FROM stop_payments WHERE request_id = ?",
    "freeze": "SELECT request_id, bank, account, end_us, released_us, NULL"
    " FROM freezes WHERE request_id = ?",
    "monitor": "SELECT request_id, bank, account, until_us, stopped_us, NULL"
    " FROM monitors WHERE request_id = ?",
}


class BusinessRuleViolated(RuleViolated):
    """A business rule refused the request; ``rule`` is its stable id (a key of ``RULES``)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"RULE {rule}: {detail}")
        self.rule = rule


class BusinessRules:
    """The rules of ``RULES`` over the state of executed orders. Thread-safe.

    ``check`` MUST refuse every request that breaks a rule, naming the rule. ``record_outcome``
    MUST be durable before it returns. Database failures raise ``AuditUnavailable``: the gateway
    fails closed rather than decide without the state a rule depends on.
    """

    def __init__(
        self, *, connection: StateConnection, reservations: Reservations | None = None
    ) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self._reservations = reservations

    @classmethod
    def in_memory(cls) -> BusinessRules:
        """An empty state in memory, to be filled by ``gateway.rules_rebuild`` at start-up."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        return cls(connection=db)

    @classmethod
    def open(cls, path: Path) -> BusinessRules:
        """Open (creating if needed) the rules database at ``path``."""
        return cls(connection=open_store(path, _STORE, error=AuditUnavailable))

    def close(self) -> None:
        """Close the database; the object is unusable afterwards."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------- checks

    def check(self, request: request_pb2.Request, *, action: str, now: datetime) -> None:
        """Raise ``BusinessRuleViolated`` if the validated ``request`` for ``action`` breaks a rule.

        ``now`` is timezone-aware. Actions without rules return at once, without I/O.
        """
        problem = document_problem(action, request.legal_document.kind)
        if problem is not None:
            raise BusinessRuleViolated("legal_document.accepted_kind", problem)
        rule_check = _CHECKS.get(action)
        if rule_check is None:
            return
        try:
            with self._lock:
                if self._reservations is not None and action in _RESERVING:
                    self._check_and_reserve(rule_check, request, action, now)
                else:
                    rule_check(self, request, now)
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"business-rules state unreadable: {exc}") from exc

    def _check_and_reserve(
        self,
        rule_check: Callable[[BusinessRules, request_pb2.Request, datetime], None],
        request: request_pb2.Request,
        action: str,
        now: datetime,
    ) -> None:
        """``rule_check`` and, if it passes, a reservation, in one transaction under the
        account's lock: a concurrent check on another instance waits, then counts it."""
        assert self._reservations is not None
        account = getattr(request, action).account_number
        with immediate(self._db):
            self._reservations.lock_account(request.target_agency, account)
            rule_check(self, request, now)
            self._reservations.reserve(
                request.request_id, request.target_agency, account, now_us=_us(now)
            )

    def _order(self, kind: str, request_id: str) -> _Order | None:
        row = self._db.execute(_ORDER_QUERIES[kind], (request_id,)).fetchone()
        return None if row is None else _Order(*row)

    def _cited(self, rule: str, kind: str, request: request_pb2.Request, account: str) -> _Order:
        """The order cited by ``original_request_id``, on ``account`` at the target, else refuse."""
        cited = request.original_request_id
        order = self._order(kind, cited)
        if order is None:
            raise BusinessRuleViolated(rule, f"{cited} is not an executed {kind}")
        if (order.bank, order.account) != (request.target_agency, account):
            raise BusinessRuleViolated(
                rule,
                f"{kind} {cited} is on account {mask(order.account)} at {order.bank}, "
                f"not {mask(account)} at {request.target_agency}",
            )
        return order

    def _refuse_third_stop(
        self, bank: str, account: str, request_id: str = "", now: datetime | None = None
    ) -> None:
        stops, extensions = self._db.execute(
            "SELECT COUNT(*), COUNT(extended_by) FROM stop_payments WHERE bank = ? AND account = ?",
            (bank, account),
        ).fetchone()
        pending = 0
        if self._reservations is not None and now is not None:
            pending = self._reservations.held(bank, account, other_than=request_id, now_us=_us(now))
        if stops + extensions + pending >= _STOP_PAYMENT_MAX:
            counted = f"{stops} stop-payment(s)"
            if extensions:
                counted += f" and {extensions} extension(s)"
            if pending:
                counted += f", {pending} allowed and not yet answered"
            raise BusinessRuleViolated(
                "stop_payment.max_two_per_account",
                f"account {mask(account)} at {bank} has already been stopped twice ({counted})",
            )

    def _repeats_order_in_force(
        self, table: str, request: request_pb2.Request, account: str, now: datetime
    ) -> bool:
        """True when ``request`` repeats an executed order in force on ``account`` at the target,
        with the same case and document: the agency answers it with that order and executes
        nothing, so no limit counts it."""
        query = _REPEAT_QUERIES[table]
        row = self._db.execute(
            query,
            (
                request.target_agency,
                account,
                request.case.case_number,
                request.legal_document.number,
                _us(now),
            ),
        ).fetchone()
        return row is not None

    def _check_stop_payment(self, request: request_pb2.Request, now: datetime) -> None:
        account = request.stop_payment.account_number
        if self._repeats_order_in_force("stop_payments", request, account, now):
            return
        self._refuse_third_stop(request.target_agency, account, request.request_id, now)

    def _check_stop_release(self, request: request_pb2.Request, now: datetime) -> None:
        rule = "stop_payment_release.cites_executed_stop"
        order = self._cited(
            rule, "stop-payment", request, request.stop_payment_release.account_number
        )
        if order.closed_us is not None:
            raise BusinessRuleViolated(
                rule, f"stop-payment {order.request_id} was released at {_iso(order.closed_us)}"
            )

    def _check_stop_extend(self, request: request_pb2.Request, now: datetime) -> None:
        rule = "stop_payment_extend.cites_stop_in_force"
        account = request.stop_payment_extend.account_number
        order = self._cited(rule, "stop-payment", request, account)
        if order.closed_us is not None:
            raise BusinessRuleViolated(
                rule, f"stop-payment {order.request_id} was released at {_iso(order.closed_us)}"
            )
        if order.end_us <= _us(now):
            raise BusinessRuleViolated(
                rule, f"stop-payment {order.request_id} expired at {_iso(order.end_us)}"
            )
        if order.extended_by is not None:
            raise BusinessRuleViolated(
                "stop_payment_extend.once_per_original",
                f"stop-payment {order.request_id} was already extended by {order.extended_by}",
            )
        self._refuse_third_stop(request.target_agency, account, request.request_id, now)

    def _check_freeze(self, request: request_pb2.Request, now: datetime) -> None:
        order = request.freeze
        if self._repeats_order_in_force("freezes", request, order.account_number, now):
            return
        # The bank freezes when it executes (now), whatever ``start`` says (validation refuses a
        # future start), so six months are counted from the later of the two.
        start = max(order.start.ToDatetime(tzinfo=UTC), now)
        span = order.end.ToDatetime(tzinfo=UTC) - start
        if span > FREEZE_MAX:
            raise BusinessRuleViolated(
                "freeze.max_six_months",
                f"the freeze lasts {span.total_seconds() / 86400:g} days; at most 183 (6 months)",
            )
        # Whether the freeze needs a supervisor's approval is ``approval_needed``; the approval
        # itself is an exchange in the audit log, checked by the pipeline (never the
        # self-asserted FreezeOrder.approval).

    def approval_needed(self, request: request_pb2.Request, *, action: str) -> str | None:
        """Why ``request`` needs a centre supervisor's approval (rule
        ``freeze.bulk_requires_approval``), or ``None``. Raises ``AuditUnavailable`` when the
        state cannot be read."""
        if action != "freeze":
            return None
        accounts = max(1, request.freeze.bulk_count)
        if accounts >= BULK_ORDER_THRESHOLD:
            return f"{accounts} accounts in one order (≥ {BULK_ORDER_THRESHOLD})"
        try:
            with self._lock:
                (recorded,) = self._db.execute(
                    "SELECT COUNT(*) FROM freezes WHERE case_number = ?",
                    (request.case.case_number,),
                ).fetchone()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"business-rules state unreadable: {exc}") from exc
        if recorded + accounts >= BULK_CASE_THRESHOLD:
            return (
                f"case {request.case.case_number} would reach {recorded + accounts} frozen "
                f"accounts (≥ {BULK_CASE_THRESHOLD})"
            )
        return None

    def _check_freeze_renew(self, request: request_pb2.Request, now: datetime) -> None:
        rule = "freeze_renew.cites_freeze_in_force"
        order = self._cited(rule, "freeze", request, request.freeze_renew.account_number)
        if order.closed_us is not None:
            raise BusinessRuleViolated(
                rule, f"freeze {order.request_id} was released at {_iso(order.closed_us)}"
            )
        if order.end_us <= _us(now):
            raise BusinessRuleViolated(
                rule, f"freeze {order.request_id} lapsed at {_iso(order.end_us)}"
            )
        end = request.freeze_renew.end.ToDatetime(tzinfo=UTC)
        if end - now > FREEZE_MAX:
            raise BusinessRuleViolated(
                "freeze_renew.max_six_months",
                f"the new end is {(end - now).total_seconds() / 86400:.1f} days from now; "
                "at most 183 (6 months)",
            )

    def _check_freeze_release(self, request: request_pb2.Request, now: datetime) -> None:
        rule = "freeze_release.cites_freeze"
        order = self._cited(rule, "freeze", request, request.freeze_release.account_number)
        if order.closed_us is not None:
            raise BusinessRuleViolated(
                rule, f"freeze {order.request_id} was released at {_iso(order.closed_us)}"
            )

    def _check_monitor_stop(self, request: request_pb2.Request, now: datetime) -> None:
        rule = "monitor_stop.cites_monitor_start"
        order = self._cited(rule, "monitor", request, request.monitor_stop.account_number)
        if order.closed_us is not None:
            raise BusinessRuleViolated(
                rule, f"monitor {order.request_id} was stopped at {_iso(order.closed_us)}"
            )

    def refunded_from(self, freeze_id: str) -> int:
        """Minor units already refunded from the freeze ``freeze_id`` (executed refunds).
        Raises ``AuditUnavailable`` when the state cannot be read."""
        try:
            with self._lock:
                (total,) = self._db.execute(
                    "SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE freeze_id = ?",
                    (freeze_id,),
                ).fetchone()
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"business-rules state unreadable: {exc}") from exc
        return int(total)

    def _check_refund(self, request: request_pb2.Request, now: datetime) -> None:
        _check_refund_state(self, request, now)

    def _check_second_officer(self, request: request_pb2.Request, now: datetime) -> None:
        action = request.WhichOneof("action")
        second = request.second_officer
        if not request.HasField("second_officer") or not second.id or not second.name.strip():
            problem = "second_officer with a badge number and a name is required"
        elif second.id == request.officer.id:
            problem = "second_officer must be another officer than officer"
        elif second.role not in _POLICE_ROLES:
            problem = "second_officer must act under a police role"
        else:
            return
        raise BusinessRuleViolated(f"{action}.requires_second_officer", problem)

    # ------------------------------------------------------------------------- outcomes

    def record_outcome(
        self,
        request: request_pb2.Request,
        *,
        action: str,
        status: int,
        now: datetime,
        repeat_of: str = "",
    ) -> None:
        """Remember an order the target executed (``status`` is ``RESPONSE_STATUS_OK``).

        Other statuses and actions without state are ignored, and so is an answer that reports
        an order in force this one repeated (``repeat_of``: nothing was executed). Idempotent by
        request id; durable when it returns. Raises ``AuditUnavailable`` when the state cannot be
        written. With ``Reservations``, any answer to a stop-payment or extension releases its
        reservation (in the same transaction as the record).
        """
        release = self._reservations is not None and action in _RESERVING
        executed = status == request_pb2.RESPONSE_STATUS_OK and action in _RECORDERS
        if not (release or (executed and not repeat_of)):
            return
        try:
            with self._lock, immediate(self._db):
                if executed and not repeat_of:
                    _RECORDERS[action](self._db, request, _us(now))
                if release:
                    assert self._reservations is not None
                    self._reservations.release(request.request_id)
        except sqlite3.Error as exc:
            raise AuditUnavailable(f"business-rules state not written: {exc}") from exc


def _name_of(enum: EnumDescriptor, value: int) -> str:
    known = enum.values_by_number.get(value)
    return known.name if known is not None else f"unknown value {value}"


def _record_stop(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    db.execute(
        "INSERT OR IGNORE INTO stop_payments (request_id, bank, account, start_us, end_us)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            request.request_id,
            request.target_agency,
            request.stop_payment.account_number,
            now_us,
            now_us + _STOP_US,
        ),
    )
    _record_document(db, request)


def _record_document(db: StateConnection, request: request_pb2.Request) -> None:
    db.execute(
        "INSERT OR IGNORE INTO order_documents (request_id, case_number, doc_number)"
        " VALUES (?, ?, ?)",
        (request.request_id, request.case.case_number, request.legal_document.number),
    )


def _record_stop_extend(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    cursor = db.execute(
        "UPDATE stop_payments SET extended_by = ?, end_us = end_us + ?"
        " WHERE request_id = ? AND extended_by IS NULL",
        (request.request_id, _STOP_US, request.original_request_id),
    )
    _warn_if_missing(cursor, request)


def _record_stop_release(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    cursor = db.execute(
        "UPDATE stop_payments SET released_us = ? WHERE request_id = ? AND released_us IS NULL",
        (now_us, request.original_request_id),
    )
    _warn_if_missing(cursor, request)


def _record_freeze(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    order = request.freeze
    db.execute(
        "INSERT OR IGNORE INTO freezes (request_id, bank, account, case_number, start_us, end_us)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            request.request_id,
            request.target_agency,
            order.account_number,
            request.case.case_number,
            order.start.ToMicroseconds(),
            order.end.ToMicroseconds(),
        ),
    )
    _record_document(db, request)


def _record_freeze_renew(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    cursor = db.execute(
        "UPDATE freezes SET end_us = ? WHERE request_id = ? AND released_us IS NULL",
        (request.freeze_renew.end.ToMicroseconds(), request.original_request_id),
    )
    _warn_if_missing(cursor, request)


def _record_freeze_release(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    cursor = db.execute(
        "UPDATE freezes SET released_us = ? WHERE request_id = ? AND released_us IS NULL",
        (now_us, request.original_request_id),
    )
    _warn_if_missing(cursor, request)


def _record_monitor(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    db.execute(
        "INSERT OR IGNORE INTO monitors (request_id, bank, account, until_us) VALUES (?, ?, ?, ?)",
        (
            request.request_id,
            request.target_agency,
            request.monitor_start.account_number,
            request.monitor_start.until.ToMicroseconds(),
        ),
    )


def _record_monitor_stop(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    cursor = db.execute(
        "UPDATE monitors SET stopped_us = ? WHERE request_id = ? AND stopped_us IS NULL",
        (now_us, request.original_request_id),
    )
    _warn_if_missing(cursor, request)


def _check_refund_state(rules: BusinessRules, request: request_pb2.Request, now: datetime) -> None:
    """Refunds against the state: the freeze is in force; the victim's loss is not exceeded."""
    order = request.refund
    freeze = rules._cited("refund.cites_freeze_in_force", "freeze", request, order.account_number)
    if freeze.closed_us is not None:
        raise BusinessRuleViolated(
            "refund.cites_freeze_in_force",
            f"freeze {freeze.request_id} was released at {_iso(freeze.closed_us)}",
        )
    if freeze.end_us <= _us(now):
        raise BusinessRuleViolated(
            "refund.cites_freeze_in_force",
            f"freeze {freeze.request_id} lapsed at {_iso(freeze.end_us)}",
        )
    rows = rules._db.execute(
        "SELECT currency, amount, reported_loss FROM refunds"
        " WHERE case_number = ? AND victim_account = ?",
        (request.case.case_number, order.victim_account),
    ).fetchall()
    loss = order.reported_loss
    for currency, _, earlier_loss in rows:
        if (currency, earlier_loss) != (loss.currency, loss.minor_units):
            raise BusinessRuleViolated(
                "refund.same_reported_loss",
                f"earlier refunds to {mask(order.victim_account)} in case "
                f"{request.case.case_number} state a reported loss of "
                f"{_money(currency, earlier_loss)}, not {_money(loss.currency, loss.minor_units)}",
            )
    refunded = sum(int(amount) for _, amount, _ in rows)
    if refunded + order.amount.minor_units > loss.minor_units:
        raise BusinessRuleViolated(
            "refund.max_reported_loss",
            f"{_money(order.amount.currency, order.amount.minor_units)} would exceed the "
            f"victim's reported loss of {_money(loss.currency, loss.minor_units)}: "
            f"{_money(loss.currency, refunded)} already refunded, at most "
            f"{_money(loss.currency, max(0, loss.minor_units - refunded))} remains",
        )


def _money(currency: str, minor: int) -> str:
    return format_money(common_pb2.Money(currency=currency, minor_units=minor))


def _record_refund(db: StateConnection, request: request_pb2.Request, now_us: int) -> None:
    order = request.refund
    db.execute(
        "INSERT OR IGNORE INTO refunds (request_id, freeze_id, case_number, victim_account,"
        " currency, amount, reported_loss) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            request.request_id,
            request.original_request_id,
            request.case.case_number,
            order.victim_account,
            order.amount.currency,
            order.amount.minor_units,
            order.reported_loss.minor_units,
        ),
    )


def _warn_if_missing(cursor: StateCursor, request: request_pb2.Request) -> None:
    # Replaying an outcome changes nothing (idempotent); an unknown original means the agency
    # executed something the gateway did not check, which an operator should look at.
    if cursor.rowcount == 0:
        _log.warning(
            "outcome of %s cites %s, which is unknown or already closed here",
            request.request_id,
            request.original_request_id,
        )


_REPEAT_QUERIES: Final[dict[str, str]] = {
    "stop_payments": "SELECT 1 FROM stop_payments o JOIN order_documents d USING (request_id)"
    " WHERE o.bank = ? AND o.account = ? AND d.case_number = ? AND d.doc_number = ?"
    " AND o.released_us IS NULL AND o.end_us > ? LIMIT 1",
    "freezes": "SELECT 1 FROM freezes o JOIN order_documents d USING (request_id)"
    " WHERE o.bank = ? AND o.account = ? AND d.case_number = ? AND d.doc_number = ?"
    " AND o.released_us IS NULL AND o.end_us > ? LIMIT 1",
}

_RESERVING: Final = frozenset({"stop_payment", "stop_payment_extend"})
"""Actions whose allowance is reserved on a shared state until their answer (``Reservations``)."""

_CHECKS: Final[dict[str, Callable[[BusinessRules, request_pb2.Request, datetime], None]]] = {
    "stop_payment": BusinessRules._check_stop_payment,
    "stop_payment_release": BusinessRules._check_stop_release,
    "stop_payment_extend": BusinessRules._check_stop_extend,
    "freeze": BusinessRules._check_freeze,
    "freeze_renew": BusinessRules._check_freeze_renew,
    "freeze_release": BusinessRules._check_freeze_release,
    "monitor_stop": BusinessRules._check_monitor_stop,
    "call_records": BusinessRules._check_second_officer,
    "location": BusinessRules._check_second_officer,
    "refund": BusinessRules._check_refund,
}

_RECORDERS: Final[dict[str, Callable[[StateConnection, request_pb2.Request, int], None]]] = {
    "stop_payment": _record_stop,
    "stop_payment_extend": _record_stop_extend,
    "stop_payment_release": _record_stop_release,
    "freeze": _record_freeze,
    "freeze_renew": _record_freeze_renew,
    "freeze_release": _record_freeze_release,
    "monitor_start": _record_monitor,
    "monitor_stop": _record_monitor_stop,
    "refund": _record_refund,
}
