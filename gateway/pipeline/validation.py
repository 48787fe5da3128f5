"""Field validation of a decoded ``Request`` (pipeline stage 5).

``validate_request`` checks formats, check digits and time limits of the header and of the one
action, and raises a single ``InvalidArgument`` listing every violation. Who may ask is
``gateway.policy``; limits that depend on earlier orders are ``gateway.rules``.

Contract:

- every violation MUST name the field by its dotted path in ``Request`` (``officer.id``,
  ``freeze.end``, ``call_records.window.end``, ``case_report.accounts[2]``), at most one per field;
- a description MUST NOT echo a card, ID or phone number in full: they appear through ``mask``
  (first 3 and last 4 characters), and names and free text never appear at all;
- an action without a validator MUST be refused (fail closed when the proto grows).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.message import Message

from fedgate.actions import (
    AGGREGATE_METRICS,
    CARRIER_AGGREGATE_METRICS,
    CITING_ACTIONS,
    ORDER_ACTIONS,
    REPORT_ACTIONS,
    RISKLIST_ACTIONS,
)
from fedgate.disclosure import DETAILS, HIT_ACTIONS, HITS
from fedgate.errors import InvalidArgument
from fedgate.risklist import CATEGORY_NAMES, MAX_TTL, canonical_value
from fedgate.v1 import (
    appeal_pb2,
    approval_pb2,
    bank_pb2,
    carrier_pb2,
    common_pb2,
    report_pb2,
    request_pb2,
    risklist_pb2,
)
from fedgate.validate import CARRIER_PREFIXES
from gateway.pipeline._fields import CLOCK_TOLERANCE, MAX_NAME, WINDOW_AHEAD, Fields, mask

__all__ = ["CITING_ACTIONS", "mask", "subjects_of", "validate_request"]


_MAX_FREE_TEXT = 2000
_MAX_LIST = 1000
_MAX_BULK = 100_000
_MAX_DEADLINE = timedelta(days=30)
_MAX_TRANSFER_AGE = timedelta(days=30)
_MAX_MONITOR = timedelta(days=90)
_SENDER = re.compile(r"[0-9A-Za-z]{3,20}")
_EVENT_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DIRECTIONS = frozenset({"in", "out"})
_MAX_APPROVED_ACTIONS = 8
GATEWAY_TARGET = "gateway"

_URGENCIES: Final = frozenset(common_pb2.Urgency.values()) - {common_pb2.URGENCY_UNSPECIFIED}
_CASE_TYPES: Final = frozenset(common_pb2.CaseType.values()) - {common_pb2.CASE_TYPE_UNSPECIFIED}
_DOC_KINDS: Final = frozenset(common_pb2.LegalDocumentKind.values()) - {
    common_pb2.LEGAL_DOCUMENT_KIND_UNSPECIFIED
}
_FREEZE_METHODS: Final = frozenset(bank_pb2.FreezeMethod.values()) - {
    bank_pb2.FREEZE_METHOD_UNSPECIFIED
}


# ----------------------------------------------------------------------------- header


def _header(f: Fields, request: request_pb2.Request, action: str | None) -> None:
    is_report = action in REPORT_ACTIONS
    # A bank or carrier lists its own account or number without a police case or document;
    # police listings need a case (stage 6, ``gateway.risklist``).
    own_document = is_report or action in RISKLIST_ACTIONS or action in _APPEAL_FILINGS
    f.uuid("request_id", request.request_id, version=7)
    if len(request.nonce) != 16:
        f.bad("nonce", f"must be exactly 16 random bytes, got {len(request.nonce)}")
    issued_at = f.time("issued_at", request, "issued_at")
    f.member("requesting_agency", request.requesting_agency)
    f.member("target_agency", request.target_agency)
    f.person("officer", request.officer)
    if request.HasField("second_officer"):
        f.person("second_officer", request.second_officer)

    # Agencies report before a case exists; police act only within a filed or registered case.
    f.case_number("case.case_number", request.case.case_number, required=not own_document)
    f.enum("case.case_type", request.case.case_type, _CASE_TYPES, "the type of the case")
    f.text("case.reason", request.case.reason, required=False)

    doc = request.legal_document
    f.enum("legal_document.kind", doc.kind, _DOC_KINDS, "the kind of legal document")
    if doc.kind == common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT and not own_document:
        f.bad("legal_document.kind", "AGENCY_REPORT is for agency reports; cite a police document")
    f.text("legal_document.number", doc.number, limit=MAX_NAME)
    doc_issued = f.time("legal_document.issued_at", doc, "issued_at", required=False)
    if doc_issued is not None and doc_issued > f.now + WINDOW_AHEAD:
        f.bad("legal_document.issued_at", "must not be in the future")

    f.enum("urgency", request.urgency, _URGENCIES, "ROUTINE, URGENT or EMERGENCY")
    f.text("purpose", request.purpose)
    deadline = f.time("answer_deadline", request, "answer_deadline", required=False)
    if deadline is not None and issued_at is not None:
        if deadline <= issued_at:
            f.bad("answer_deadline", "must be after issued_at")
        elif deadline - issued_at > _MAX_DEADLINE:
            f.bad("answer_deadline", "must be at most 30 days after issued_at")

    if request.approval_request_id:
        if action not in ORDER_ACTIONS:
            f.bad("approval_request_id", "only orders cite an approval")
        else:
            f.uuid("approval_request_id", request.approval_request_id)
    if request.HasField("target_set"):
        f.bad("target_set", "a request to a set of members is sent with GatewayService.FanOut")
    # The workflow link (a chase and the request that led to this one) is optional.
    if request.chase_id:
        f.uuid("chase_id", request.chase_id)
    if request.parent_request_id:
        f.uuid("parent_request_id", request.parent_request_id)
        if request.parent_request_id == request.request_id:
            f.bad("parent_request_id", "must name an earlier request, not this one")
        if not request.chase_id:
            f.bad("chase_id", "required with parent_request_id: the workflow the link is in")

    _disclosure(f, request, action)

    if action in CITING_ACTIONS:
        f.uuid("original_request_id", request.original_request_id)
        if request.original_request_id and request.original_request_id == request.request_id:
            f.bad("original_request_id", "must cite an earlier request, not this one")
    elif request.original_request_id:
        f.bad(
            "original_request_id",
            "only releases, extensions, renewals, monitor stops, restores, refunds and appeals "
            "cite one",
        )


def _disclosure(f: Fields, request: request_pb2.Request, action: str | None) -> None:
    """Staged disclosure (``fedgate.disclosure``): a stage only for a hit-capable query; the
    details stage cites its stage-1 request, nothing else does."""
    if not request.HasField("disclosure"):
        return
    stage, cited = request.disclosure.stage, request.disclosure.hits_request_id
    if stage not in (HITS, DETAILS):
        f.bad("disclosure.stage", "HITS or DETAILS when disclosure is set")
        return
    if action not in HIT_ACTIONS:
        f.bad("disclosure.stage", f"only {' and '.join(sorted(HIT_ACTIONS))} are asked in stages")
    if stage == HITS:
        if cited:
            f.bad("disclosure.hits_request_id", "must be empty at stage 1 (HITS)")
        return
    f.uuid("disclosure.hits_request_id", cited)
    if cited and cited == request.request_id:
        f.bad("disclosure.hits_request_id", "must cite an earlier stage-1 request, not this one")


# ----------------------------------------------------------------------------- bank actions


def _account_only(f: Fields, p: str, a: Any) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)


def _account_and_reason(f: Fields, p: str, a: Any) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.text(f"{p}.reason", a.reason)


def _transactions(f: Fields, p: str, a: bank_pb2.TransactionsQuery) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.window(f"{p}.window", a, "window")
    f.page(f"{p}.page", a, "page")


def _accounts_by_id(f: Fields, p: str, a: bank_pb2.AccountsByIdQuery) -> None:
    f.resident_id(f"{p}.id_number", a.id_number)


def _login_records(f: Fields, p: str, a: bank_pb2.LoginRecordsQuery) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.window(f"{p}.window", a, "window")


def _stop_payment(f: Fields, p: str, a: bank_pb2.StopPaymentOrder) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.name(f"{p}.account_name", a.account_name)
    f.card(f"{p}.payer_account", a.payer_account)
    f.name(f"{p}.payer_name", a.payer_name)
    f.name(f"{p}.payer_bank", a.payer_bank)
    f.money(f"{p}.amount", a, "amount")
    at = f.time(f"{p}.transfer_time", a, "transfer_time")
    if at is not None:
        if at > f.now + CLOCK_TOLERANCE:
            f.bad(f"{p}.transfer_time", "must not be in the future")
        elif at < f.now - _MAX_TRANSFER_AGE:
            f.bad(f"{p}.transfer_time", "must be at most 30 days ago: too old for a stop-payment")
    f.name(f"{p}.victim_application", a.victim_application)


def _freeze(f: Fields, p: str, a: bank_pb2.FreezeOrder) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.name(f"{p}.account_name", a.account_name)
    f.enum(f"{p}.method", a.method, _FREEZE_METHODS, "FIXED_AMOUNT or RECEIVE_ONLY")
    if a.method == bank_pb2.FREEZE_METHOD_RECEIVE_ONLY and a.HasField("amount"):
        f.bad(f"{p}.amount", "only for FIXED_AMOUNT; a receive-only freeze covers the balance")
    elif a.method == bank_pb2.FREEZE_METHOD_FIXED_AMOUNT:
        f.money(f"{p}.amount", a, "amount")
    start = f.time(f"{p}.start", a, "start")
    end = f.time(f"{p}.end", a, "end")
    if start is not None and start > f.now + CLOCK_TOLERANCE:
        # Banks execute a freeze at once; a scheduled freeze would start early, unannounced.
        f.bad(f"{p}.start", "must not be in the future: the bank freezes when it executes")
    if start is not None and end is not None and end <= start:
        f.bad(f"{p}.end", "must be after freeze.start")
    elif end is not None and end <= f.now:
        f.bad(f"{p}.end", "must be in the future")
    f.phone(f"{p}.duty_phone", a.duty_phone, required=True)
    if not 0 <= a.bulk_count <= _MAX_BULK:
        f.bad(f"{p}.bulk_count", f"must be 1 to {_MAX_BULK} (0 means 1)")
    if a.HasField("approval"):
        f.person(f"{p}.approval.approver", a.approval.approver)
        f.text(f"{p}.approval.document_number", a.approval.document_number, limit=MAX_NAME)
        f.past(f"{p}.approval.approved_at", a.approval, "approved_at", required=False)


def _approval(f: Fields, p: str, a: approval_pb2.ApprovalGrant) -> None:
    if f.target != GATEWAY_TARGET:
        f.bad("target_agency", f"an approval is sent to the gateway ({GATEWAY_TARGET!r})")
    if not 1 <= len(a.actions) <= _MAX_APPROVED_ACTIONS:
        f.bad(f"{p}.actions", f"1 to {_MAX_APPROVED_ACTIONS} order actions")
    for i, name in enumerate(a.actions):
        if name not in ORDER_ACTIONS:
            f.bad(f"{p}.actions[{i}]", "not an order action (e.g. freeze)")
    if not 1 <= a.max_count <= _MAX_BULK:
        f.bad(f"{p}.max_count", f"must be 1 to {_MAX_BULK}")
    if a.HasField("max_amount"):
        f.money(f"{p}.max_amount", a, "max_amount")
    expires = f.time(f"{p}.expires_at", a, "expires_at")
    if expires is not None and expires <= f.now:
        f.bad(f"{p}.expires_at", "must be in the future")
    elif expires is not None and expires - f.now > _MAX_DEADLINE:
        f.bad(f"{p}.expires_at", "must be at most 30 days ahead")
    f.text(f"{p}.document_number", a.document_number, limit=MAX_NAME)


def _freeze_renew(f: Fields, p: str, a: bank_pb2.FreezeRenewOrder) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    end = f.time(f"{p}.end", a, "end")
    if end is not None and end <= f.now:
        f.bad(f"{p}.end", "must be in the future")


def _monitor_start(f: Fields, p: str, a: bank_pb2.MonitorStartOrder) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    until = f.time(f"{p}.until", a, "until")
    if until is not None and until <= f.now:
        f.bad(f"{p}.until", "must be in the future")
    elif until is not None and until > f.now + _MAX_MONITOR:
        f.bad(f"{p}.until", "must be at most 90 days ahead")


def _aggregate_stats(f: Fields, p: str, a: bank_pb2.AggregateStatsQuery) -> None:
    # A carrier serves its interception statistics; a bank its order figures.
    metrics = CARRIER_AGGREGATE_METRICS if f.target in CARRIER_PREFIXES else AGGREGATE_METRICS
    if a.metric not in metrics:
        f.bad(f"{p}.metric", f"must be one of {', '.join(sorted(metrics))}")
    f.window(f"{p}.window", a, "window")


# ----------------------------------------------------------------------------- carrier actions


def _phone_only(f: Fields, p: str, a: Any) -> None:
    f.mobile(f"{p}.phone_number", a.phone_number, at_target=True)


def _phone_and_reason(f: Fields, p: str, a: Any) -> None:
    f.mobile(f"{p}.phone_number", a.phone_number, at_target=True)
    f.text(f"{p}.reason", a.reason)


def _sim_count(f: Fields, p: str, a: carrier_pb2.SimCountQuery) -> None:
    f.resident_id(f"{p}.id_number", a.id_number)


def _call_records(f: Fields, p: str, a: carrier_pb2.CallRecordsQuery) -> None:
    f.mobile(f"{p}.phone_number", a.phone_number, at_target=True)
    f.window(f"{p}.window", a, "window")
    f.page(f"{p}.page", a, "page")


def _location(f: Fields, p: str, a: carrier_pb2.LocationQuery) -> None:
    f.mobile(f"{p}.phone_number", a.phone_number, at_target=True)
    at = f.time(f"{p}.at", a, "at")
    if at is not None and at > f.now + WINDOW_AHEAD:
        f.bad(f"{p}.at", "must be at most 1 day in the future")


def _sms_block(f: Fields, p: str, a: carrier_pb2.SmsBlockOrder) -> None:
    if _SENDER.fullmatch(a.sender) is None:
        f.bad(f"{p}.sender", "must be 3 to 20 characters of 0-9 A-Z a-z")
    f.text(f"{p}.reason", a.reason)


# ----------------------------------------------------------------------------- reports


def _case_report(f: Fields, p: str, a: report_pb2.CaseReport) -> None:
    f.name(f"{p}.reference", a.reference)
    f.name(f"{p}.victim_name", a.victim_name, required=False)
    f.mobile(f"{p}.victim_phone", a.victim_phone, required=False)
    for field, values, check in (
        ("accounts", a.accounts, f.card),
        ("phone_numbers", a.phone_numbers, f.mobile),
    ):
        if len(values) > _MAX_LIST:
            f.bad(f"{p}.{field}", f"at most {_MAX_LIST} entries, got {len(values)}")
            continue
        for i, value in enumerate(values):
            check(f"{p}.{field}[{i}]", value)
    f.money(f"{p}.amount", a, "amount", required=False)
    f.text(f"{p}.description", a.description, limit=_MAX_FREE_TEXT, required=False)


def _abnormal_account_opening(f: Fields, p: str, a: report_pb2.AbnormalAccountOpening) -> None:
    f.card(f"{p}.account_number", a.account_number)
    f.resident_id(f"{p}.id_number", a.id_number)
    f.name(f"{p}.name", a.name)
    f.past(f"{p}.opened_at", a, "opened_at")
    f.text(f"{p}.indicator", a.indicator)


def _case_linked_account(f: Fields, p: str, a: report_pb2.CaseLinkedAccount) -> None:
    f.card(f"{p}.account_number", a.account_number)
    f.name(f"{p}.name", a.name, required=False)
    f.case_number(f"{p}.case_number", a.case_number, required=False)
    f.text(f"{p}.indicator", a.indicator)


def _abnormal_event(f: Fields, p: str, a: report_pb2.AbnormalEvent) -> None:
    if _EVENT_CODE.fullmatch(a.event_code) is None:
        f.bad(f"{p}.event_code", "required: 1 to 32 characters of A-Z a-z 0-9 _ -")
    f.subject(f"{p}.subject", a.subject)
    f.past(f"{p}.time", a, "time")
    f.text(f"{p}.description", a.description, limit=_MAX_FREE_TEXT, required=False)


def _early_warning(f: Fields, p: str, a: report_pb2.EarlyWarning) -> None:
    f.subject(f"{p}.subject", a.subject)
    f.name(f"{p}.name", a.name, required=False)
    f.text(f"{p}.flagged", a.flagged, limit=253)
    f.past(f"{p}.contact_time", a, "contact_time")
    if not 1 <= a.risk_level <= 5:
        f.bad(f"{p}.risk_level", "must be 1 (low) to 5 (imminent loss)")


def _monitored_transaction(f: Fields, p: str, a: report_pb2.MonitoredTransaction) -> None:
    f.card(f"{p}.account_number", a.account_number)
    f.uuid(f"{p}.monitor_request_id", a.monitor_request_id)
    if not a.HasField("transaction"):
        f.bad(f"{p}.transaction", "required: the new transaction")
        return
    t = f"{p}.transaction"
    f.name(f"{t}.transaction_id", a.transaction.transaction_id)
    f.past(f"{t}.time", a.transaction, "time")
    if a.transaction.direction not in _DIRECTIONS:
        f.bad(f"{t}.direction", "must be in or out")
    f.money(f"{t}.amount", a.transaction, "amount")
    f.name(f"{t}.counterparty_account", a.transaction.counterparty_account, required=False)


# ----------------------------------------------------------------------------- risk list


def _risk_value(f: Fields, p: str, a: Any) -> None:
    if a.category not in CATEGORY_NAMES:
        f.enum(f"{p}.category", a.category, CATEGORY_NAMES, "the kind of identifier")
        return
    try:
        canonical_value(a.category, a.value)
    except InvalidArgument as exc:
        shown = mask(a.value) if a.category in _PERSONAL_CATEGORIES else "the value"
        f.bad(f"{p}.value", f"{shown} {exc.message}" if a.value else "required")
    f.text(f"{p}.reason", a.reason)


_PERSONAL_CATEGORIES: Final = frozenset(
    {risklist_pb2.RISK_CATEGORY_PHONE_NUMBER, risklist_pb2.RISK_CATEGORY_BANK_ACCOUNT}
)


def _risk_expiry(f: Fields, p: str, a: Any) -> None:
    _risk_value(f, p, a)
    expires = f.time(f"{p}.expires_at", a, "expires_at", required=False)
    if expires is not None:
        if expires <= f.now:
            f.bad(f"{p}.expires_at", "must be in the future")
        elif expires - f.now > MAX_TTL:
            f.bad(f"{p}.expires_at", f"at most {MAX_TTL.days} days from now; extend it later")


_APPEAL_FILINGS: Final = frozenset({"appeal"})
_APPEAL_OUTCOMES: Final = frozenset(appeal_pb2.AppealOutcome.values()) - {
    appeal_pb2.APPEAL_OUTCOME_UNSPECIFIED
}


def _refund(f: Fields, p: str, a: bank_pb2.RefundOrder) -> None:
    f.card(f"{p}.account_number", a.account_number, at_target=True)
    f.card(f"{p}.victim_account", a.victim_account)
    if a.victim_account and a.victim_account == a.account_number:
        f.bad(f"{p}.victim_account", "must differ from account_number (the frozen account)")
    f.name(f"{p}.victim_name", a.victim_name)
    f.name(f"{p}.victim_bank", a.victim_bank)
    f.money(f"{p}.amount", a, "amount")
    f.money(f"{p}.reported_loss", a, "reported_loss")
    both = a.HasField("amount") and a.HasField("reported_loss")
    if both and a.amount.currency != a.reported_loss.currency:
        f.bad(f"{p}.reported_loss.currency", "must be the currency of refund.amount")
    f.name(f"{p}.victim_application", a.victim_application)


def _appeal(f: Fields, p: str, a: appeal_pb2.AppealFiling) -> None:
    f.name(f"{p}.appellant_name", a.appellant_name)
    f.resident_id(f"{p}.appellant_id_number", a.appellant_id_number)
    f.phone(f"{p}.appellant_phone", a.appellant_phone, required=True)
    f.subject(f"{p}.subject", a.subject)
    f.text(f"{p}.grounds", a.grounds, limit=_MAX_FREE_TEXT)
    f.past(f"{p}.received_at", a, "received_at")
    f.name(f"{p}.recorded_by", a.recorded_by)


def _appeal_decision(f: Fields, p: str, a: appeal_pb2.AppealDecision) -> None:
    if f.target != GATEWAY_TARGET:
        f.bad("target_agency", f"an appeal decision is sent to the gateway ({GATEWAY_TARGET!r})")
    f.uuid(f"{p}.appeal_id", a.appeal_id, version=7)
    f.enum(f"{p}.outcome", a.outcome, _APPEAL_OUTCOMES, "UPHOLD or LIFT")
    f.text(f"{p}.reason", a.reason, limit=_MAX_FREE_TEXT)
    if a.outcome == appeal_pb2.APPEAL_OUTCOME_LIFT:
        f.uuid(f"{p}.lift_request_id", a.lift_request_id, version=7)
    elif a.lift_request_id:
        f.bad(f"{p}.lift_request_id", "only a LIFT cites the release or restore order")


_ACTION_CHECKS: Final[dict[str, Callable[[Fields, str, Any], None]]] = {
    "account_holder": _account_only,
    "transactions": _transactions,
    "accounts_by_id": _accounts_by_id,
    "login_records": _login_records,
    "stop_payment": _stop_payment,
    "stop_payment_release": _account_and_reason,
    "stop_payment_extend": _account_and_reason,
    "freeze": _freeze,
    "freeze_release": _account_and_reason,
    "freeze_renew": _freeze_renew,
    "monitor_start": _monitor_start,
    "monitor_stop": _account_only,
    "aggregate_stats": _aggregate_stats,
    "subscriber": _phone_only,
    "number_status": _phone_only,
    "sim_count": _sim_count,
    "call_records": _call_records,
    "location": _location,
    "number_suspend": _phone_and_reason,
    "number_block": _phone_and_reason,
    "number_restore": _phone_and_reason,
    "sms_block": _sms_block,
    "case_report": _case_report,
    "abnormal_account_opening": _abnormal_account_opening,
    "case_linked_account": _case_linked_account,
    "abnormal_event": _abnormal_event,
    "early_warning": _early_warning,
    "monitored_transaction": _monitored_transaction,
    "approval": _approval,
    "risk_list_add": _risk_expiry,
    "risk_list_extend": _risk_expiry,
    "risk_list_remove": _risk_value,
    "refund": _refund,
    "appeal": _appeal,
    "appeal_decision": _appeal_decision,
}


def validate_request(request: request_pb2.Request, *, now: datetime) -> None:
    """Check every field of ``request`` at ``now`` (timezone-aware).

    Raises ``InvalidArgument`` whose ``violations`` name every bad field; returns ``None`` when
    the request is well formed. Raises ``ValueError`` if ``now`` is naive.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    action = request.WhichOneof("action")
    fields = Fields(now=now.astimezone(UTC), target=request.target_agency)
    _header(fields, request, action)
    if action is None:
        fields.bad("action", "required: set exactly one action")
    elif (check := _ACTION_CHECKS.get(action)) is None:
        # Fail closed: a field added to the proto is refused until someone validates it.
        fields.bad(action, "this action has no validator")
    else:
        check(fields, action, getattr(request, action))
    fields.raise_if_any()


# ----------------------------------------------------------------------------- subjects

_SUBJECT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "account_holder": ("account_number",),
    "transactions": ("account_number",),
    "accounts_by_id": ("id_number",),
    "login_records": ("account_number",),
    "stop_payment": ("account_number", "payer_account"),
    "stop_payment_release": ("account_number",),
    "stop_payment_extend": ("account_number",),
    "freeze": ("account_number",),
    "freeze_release": ("account_number",),
    "freeze_renew": ("account_number",),
    "monitor_start": ("account_number",),
    "monitor_stop": ("account_number",),
    "aggregate_stats": (),
    "subscriber": ("phone_number",),
    "number_status": ("phone_number",),
    "sim_count": ("id_number",),
    "call_records": ("phone_number",),
    "location": ("phone_number",),
    "number_suspend": ("phone_number",),
    "number_block": ("phone_number",),
    "number_restore": ("phone_number",),
    "sms_block": ("sender",),
    "case_report": ("victim_phone", "accounts", "phone_numbers"),
    "abnormal_account_opening": ("account_number", "id_number"),
    "case_linked_account": ("account_number",),
    "abnormal_event": ("subject",),
    "early_warning": ("subject", "flagged"),
    "monitored_transaction": ("account_number", "transaction.counterparty_account"),
    "approval": (),
    "risk_list_add": ("value",),
    "risk_list_extend": ("value",),
    "risk_list_remove": ("value",),
    "refund": ("account_number", "victim_account"),
    "appeal": ("subject",),
    "appeal_decision": (),
}


def _values(message: Message, path: str) -> Iterator[str]:
    head, _, rest = path.partition(".")
    value = getattr(message, head)
    if rest:
        yield from _values(value, rest)
    elif isinstance(value, str):
        yield value
    else:
        yield from value


def subjects_of(request: request_pb2.Request) -> tuple[str, ...]:
    """The account, ID and phone numbers and SMS senders the action is about, for audit search.

    In field order, without duplicates or empty values; ``()`` when no action is set.
    """
    action = request.WhichOneof("action")
    if action is None:
        return ()
    message = getattr(request, action)
    seen: dict[str, None] = {}
    for path in _SUBJECT_FIELDS.get(action, ()):
        for value in _values(message, path):
            if value:
                seen.setdefault(value)
    return tuple(seen)
