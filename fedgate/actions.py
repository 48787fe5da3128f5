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
from fedgate.v1 import common_pb2, request_pb2

__all__ = [
    "ACCEPTED_DOCUMENTS",
    "ACTIONS",
    "AGGREGATE_METRICS",
    "APPEAL_ACTIONS",
    "APPROVAL_ACTIONS",
    "BANK_ACTIONS",
    "CARRIER_ACTIONS",
    "CARRIER_AGGREGATE_METRICS",
    "CITING_ACTIONS",
    "DOCUMENT_NAMES",
    "GATEWAY_ANSWERED",
    "IDEMPOTENT_READS",
    "ORDER_ACTIONS",
    "PERSONAL_DATA_ACTIONS",
    "REPEATABLE_ORDERS",
    "REPORT_ACTIONS",
    "RESULT_FIELD",
    "RISKLIST_ACTIONS",
    "action_of",
    "document_name",
    "document_problem",
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
        "refund",
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
        "refund",
        "appeal",
    }
)
"""Actions that MUST cite the original order in ``Request.original_request_id`` (a refund
cites the freeze it draws on; an appeal the order appealed against)."""

BANK_ACTIONS: Final = BANK_QUERIES | BANK_ORDERS
CARRIER_ACTIONS: Final = CARRIER_QUERIES | CARRIER_ORDERS
ORDER_ACTIONS: Final = BANK_ORDERS | CARRIER_ORDERS
APPROVAL_ACTIONS: Final = frozenset({"approval"})
"""Police → gateway: a centre supervisor's approval, answered by the gateway itself."""
APPEAL_ACTIONS: Final = frozenset({"appeal", "appeal_decision"})
"""Appeals (Art. 32): a bank or carrier files one to the ordering police unit, which decides
(``appeal_decision``, to the gateway); the gateway answers both itself (``gateway.appeals``)."""
GATEWAY_ANSWERED: Final = REPORT_ACTIONS | APPROVAL_ACTIONS | RISKLIST_ACTIONS | APPEAL_ACTIONS
"""Actions the gateway answers (and signs the answer of) itself."""
ACTIONS: Final = (
    BANK_ACTIONS
    | CARRIER_ACTIONS
    | REPORT_ACTIONS
    | APPROVAL_ACTIONS
    | RISKLIST_ACTIONS
    | APPEAL_ACTIONS
)

PERSONAL_DATA_ACTIONS: Final = (BANK_QUERIES - {"aggregate_stats"}) | CARRIER_QUERIES
"""Queries that return personal data: rate-limited, never for auditors."""

IDEMPOTENT_READS: Final = BANK_QUERIES | CARRIER_QUERIES
"""Actions the gateway may retry on a transient failure (never orders)."""

_K = common_pb2
DOCUMENT_NAMES: Final[dict[int, tuple[str, str]]] = {
    _K.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION: ("case_filing", "立案决定书"),
    _K.LEGAL_DOCUMENT_KIND_QUERY_NOTICE: ("query_notice", "协助查询财产通知书"),
    _K.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE: ("stop_payment_notice", "紧急止付通知书"),
    _K.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE: ("freeze_notice", "协助冻结财产通知书"),
    _K.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE: ("release_notice", "解除冻结/止付通知书"),
    _K.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE: ("evidence_notice", "调取证据通知书"),
    _K.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER: ("countermeasure_order", "技术反制通知"),
    _K.LEGAL_DOCUMENT_KIND_AGENCY_REPORT: ("agency_report", "单位报告"),
    _K.LEGAL_DOCUMENT_KIND_REFUND_DECISION: ("refund_decision", "资金返还决定书"),
    _K.LEGAL_DOCUMENT_KIND_APPEAL: ("appeal", "申诉材料"),
    _K.LEGAL_DOCUMENT_KIND_APPEAL_DECISION: ("appeal_decision", "申诉核查决定"),
}
"""Each document kind's short name (the CLI's ``--doc-kind`` value) and its Chinese title."""

_QUERY = frozenset({_K.LEGAL_DOCUMENT_KIND_QUERY_NOTICE})
_EVIDENCE = frozenset({_K.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE})
_STOP = frozenset({_K.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE})
_CASE_FILING = frozenset({_K.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION})
_RELEASE = frozenset({_K.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE})
_COUNTER = frozenset({_K.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER})
_AGENCY_REPORT = frozenset({_K.LEGAL_DOCUMENT_KIND_AGENCY_REPORT})

ACCEPTED_DOCUMENTS: Final[dict[str, frozenset[int]]] = {
    # Bank queries (DOMAIN.md "Queries": 主体查询, 交易明细查询, 全户查询, device/IP/login
    # records) are served on a notice to assist in querying property (协助查询财产通知书).
    # Live monitoring (动态查询) is a query too; stopping it may cite the release notice.
    **dict.fromkeys(
        ("account_holder", "transactions", "accounts_by_id", "login_records", "monitor_start"),
        _QUERY,
    ),
    "monitor_stop": _QUERY | _RELEASE,
    # Aggregate figures for the central bank carry no personal data; a query notice covers them.
    "aggregate_stats": _QUERY,
    # Stop-payment (DOMAIN.md "Stop-payment (紧急止付)"): the emergency stop-payment notice;
    # the extension is a further stop on the same notice kind; the release cites a release notice.
    "stop_payment": _STOP,
    "stop_payment_extend": _STOP,
    "stop_payment_release": _RELEASE,
    # Freeze (DOMAIN.md "Freeze (冻结)"): "only after a case has been filed; the request cites
    # the case-filing decision (立案决定书)"; a renewal is a new freeze period, so it does too.
    "freeze": _CASE_FILING,
    "freeze_renew": _CASE_FILING,
    "freeze_release": _RELEASE,
    # Carrier queries: owner, status and SIM count on a query notice; call records and location
    # are evidence (调取证据通知书, the proto's LegalDocumentKind comment).
    **dict.fromkeys(("subscriber", "number_status", "sim_count"), _QUERY),
    "call_records": _EVIDENCE,
    "location": _EVIDENCE,
    # Technical countermeasures (DOMAIN.md "The setting": 技术反制) suspend and block on a
    # countermeasure order; restoring a number lifts one, on a release notice.
    **dict.fromkeys(("number_suspend", "number_block", "sms_block"), _COUNTER),
    "number_restore": _RELEASE | _COUNTER,
    # The shared risk list (技术反制): police list on a countermeasure order or the case-filing
    # decision, a bank or carrier its own account or number on its own report; a removal cites a
    # release notice (or the order / report that lifts it).
    "risk_list_add": _COUNTER | _CASE_FILING | _AGENCY_REPORT,
    "risk_list_extend": _COUNTER | _CASE_FILING | _AGENCY_REPORT,
    "risk_list_remove": _RELEASE | _COUNTER | _AGENCY_REPORT,
    # A supervisor's approval of orders in a case (trust seams): on the case-filing decision.
    "approval": _CASE_FILING,
    # Agency → police reports cite the agency's own report, never a police document.
    **dict.fromkeys(REPORT_ACTIONS, frozenset({_K.LEGAL_DOCUMENT_KIND_AGENCY_REPORT})),
    # Refunds (DOMAIN.md "Countermeasures, warnings, appeals and refunds": returned "on the
    # victim's application and police's refund decision"; Anti-Telecom and Online Fraud Law
    # Art. 20 "prompt unfreeze and refund"): the refund decision (资金返还决定书).
    "refund": frozenset({_K.LEGAL_DOCUMENT_KIND_REFUND_DECISION}),
    # Appeals (Art. 32: the restricted person appeals; the restriction is lifted when the
    # appeal checks out): the agency files the person's written appeal (申诉材料), the
    # ordering unit answers with its decision on it (申诉核查决定).
    "appeal": frozenset({_K.LEGAL_DOCUMENT_KIND_APPEAL}),
    "appeal_decision": frozenset({_K.LEGAL_DOCUMENT_KIND_APPEAL_DECISION}),
}
"""For each action, the legal document kinds that may authorise it (checked at the gateway,
business rule ``legal_document.accepted_kind``, and again at the agency node)."""

REPEATABLE_ORDERS: Final = frozenset({"stop_payment", "freeze"})
"""Orders idempotent by their subject, case and document: an order that repeats one still in
force (same account at the same bank, same case number, same document number) is answered with
the order in force (``repeat_of`` names it) and executed no second time. Releases, extensions
and renewals cite their original by request id and are refused when the original is closed;
carrier orders move a number between states and are refused when it is already there."""


def document_name(kind: int) -> str:
    """``立案决定书 (case_filing)``: a document kind as people and ``--doc-kind`` say it."""
    known = DOCUMENT_NAMES.get(kind)
    if known is None:
        return f"unknown document kind {kind}"
    return f"{known[1]} ({known[0]})"


def document_problem(action: str, kind: int) -> str | None:
    """Why a ``kind`` of legal document cannot authorise ``action``, or ``None`` if it can.

    The message names the kinds accepted, in Chinese and as ``--doc-kind`` values.
    """
    accepted = ACCEPTED_DOCUMENTS.get(action)
    if accepted is None or kind in accepted:
        return None
    names = " or ".join(document_name(k) for k in sorted(accepted))
    return f"{action} must cite {names}, not {document_name(kind)}"


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
    "refund": "refund",
    **dict.fromkeys(APPEAL_ACTIONS, "appeal"),
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
    if action in REPORT_ACTIONS or action == "appeal":
        return "police"
    if action in APPROVAL_ACTIONS or action in RISKLIST_ACTIONS or action == "appeal_decision":
        return "gateway"
    raise InvalidArgument(f"unknown action {action!r}")


def role_name(role: int) -> str:
    """``ROLE_POLICE_INVESTIGATOR`` → ``police_investigator`` (the policy vocabulary)."""
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
