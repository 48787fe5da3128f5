"""The action vocabulary: names, which agency kind serves each, and their classes.

Action names are the field names of ``Request.action``; policies, audit entries,
quotas and the CLI all use these exact strings.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Final

from fedgate.errors import InvalidArgument
from fedgate.v1 import request_pb2

__all__ = [
    "ACTIONS",
    "AGGREGATE_METRICS",
    "APPROVAL_ACTIONS",
    "BANK_ACTIONS",
    "CARRIER_ACTIONS",
    "CARRIER_AGGREGATE_METRICS",
    "CITING_ACTIONS",
    "GATEWAY_ANSWERED",
    "IDEMPOTENT_READS",
    "ORDER_ACTIONS",
    "PERSONAL_DATA_ACTIONS",
    "REPORT_ACTIONS",
    "RESULT_FIELD",
    "RISKLIST_ACTIONS",
    "action_of",
    "new_request_id",
    "role_name",
    "target_kind_of",
]

BANK_QUERIES: Final = frozenset(
    {"account_holder", "transactions", "accounts_by_id", "login_records", "aggregate_stats"}
)
BANK_ORDERS: Final = frozenset(
    {
        "stop_payment",
        "stop_payment_release",
        "stop_payment_extend",
        "freeze",
        "freeze_release",
        "freeze_renew",
        "monitor_start",
        "monitor_stop",
    }
)
CARRIER_QUERIES: Final = frozenset(
    {"subscriber", "number_status", "sim_count", "call_records", "location"}
)
CARRIER_ORDERS: Final = frozenset({"number_suspend", "number_block", "number_restore", "sms_block"})
REPORT_ACTIONS: Final = frozenset(
    {
        "case_report",
        "abnormal_account_opening",
        "case_linked_account",
        "abnormal_event",
        "early_warning",
        "monitored_transaction",
    }
)

RISKLIST_ACTIONS: Final = frozenset({"risk_list_add", "risk_list_extend", "risk_list_remove"})
"""Changes to the shared risk list: addressed to the gateway, which answers them itself."""

AGGREGATE_METRICS: Final = ("stop_payments", "freezes", "frozen_amount", "accounts_flagged")
"""The figures ``aggregate_stats`` may ask a bank for: counts and totals, never a person."""

CARRIER_AGGREGATE_METRICS: Final = ("calls_intercepted", "sms_intercepted", "early_warnings")
"""The figures ``aggregate_stats`` may ask a carrier for (the telecom regulator's interception
statistics): counts of events, never a number."""

CITING_ACTIONS: Final = frozenset(
    {
        "stop_payment_release",
        "stop_payment_extend",
        "freeze_release",
        "freeze_renew",
        "monitor_stop",
        "number_restore",
    }
)
"""Actions that MUST cite the original order in ``Request.original_request_id``."""

BANK_ACTIONS: Final = BANK_QUERIES | BANK_ORDERS
CARRIER_ACTIONS: Final = CARRIER_QUERIES | CARRIER_ORDERS
ORDER_ACTIONS: Final = BANK_ORDERS | CARRIER_ORDERS
APPROVAL_ACTIONS: Final = frozenset({"approval"})
"""Police → gateway: a centre supervisor's approval, answered by the gateway itself."""
GATEWAY_ANSWERED: Final = REPORT_ACTIONS | APPROVAL_ACTIONS | RISKLIST_ACTIONS
"""Actions the gateway answers (and signs the answer of) itself."""
ACTIONS: Final = (
    BANK_ACTIONS | CARRIER_ACTIONS | REPORT_ACTIONS | APPROVAL_ACTIONS | RISKLIST_ACTIONS
)

PERSONAL_DATA_ACTIONS: Final = (BANK_QUERIES - {"aggregate_stats"}) | CARRIER_QUERIES
"""Queries that return personal data: rate-limited, never for auditors."""

IDEMPOTENT_READS: Final = BANK_QUERIES | CARRIER_QUERIES
"""Actions the gateway may retry on a transient failure (never orders)."""

RESULT_FIELD: Final[dict[str, str]] = {
    "account_holder": "account_holder",
    "transactions": "transactions",
    "accounts_by_id": "accounts_by_id",
    "login_records": "login_records",
    "stop_payment": "stop_payment",
    "stop_payment_release": "stop_payment",
    "stop_payment_extend": "stop_payment",
    "freeze": "freeze",
    "freeze_release": "freeze",
    "freeze_renew": "freeze",
    "monitor_start": "monitor",
    "monitor_stop": "monitor",
    "aggregate_stats": "aggregate_stats",
    "subscriber": "subscriber",
    "number_status": "number_status",
    "sim_count": "sim_count",
    "call_records": "call_records",
    "location": "location",
    "number_suspend": "number_order",
    "number_block": "number_order",
    "number_restore": "number_order",
    "sms_block": "number_order",
    **dict.fromkeys(REPORT_ACTIONS, "report_ack"),
    "approval": "approval",
    **dict.fromkeys(RISKLIST_ACTIONS, "risk_list_change"),
}
"""For each action, the ``Response.result`` field that answers it."""


def action_of(request: request_pb2.Request) -> str:
    """The request's action name; raises ``InvalidArgument`` when no action is set."""
    action = request.WhichOneof("action")
    if action is None:
        raise InvalidArgument("request has no action: set exactly one field of `action`")
    return action


def target_kind_of(action: str) -> str:
    """The member kind that serves ``action``: bank, carrier, police or gateway."""
    if action in BANK_ACTIONS:
        return "bank"
    if action in CARRIER_ACTIONS:
        return "carrier"
    if action in REPORT_ACTIONS:
        return "police"
    if action in APPROVAL_ACTIONS or action in RISKLIST_ACTIONS:
        return "gateway"
    raise InvalidArgument(f"unknown action {action!r}")


def role_name(role: int) -> str:
    """``ROLE_POLICE_INVESTIGATOR`` → ``police_investigator`` (the policy vocabulary)."""
    from fedgate.v1 import common_pb2

    return common_pb2.Role.Name(role).removeprefix("ROLE_").lower()  # type: ignore[arg-type]


def new_request_id(now_ms: int | None = None) -> str:
    """A fresh UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))
