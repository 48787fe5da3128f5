"""Test helpers: realistic, valid identifiers and one valid ``Request`` per action.

Everything here passes ``gateway.pipeline.validation.validate_request`` by construction; tests start
from a valid request and break exactly the thing they test. Identifiers carry real check
digits (Luhn, GB 11643) and sit in the target's issuer or number ranges, so a bank's card
goes to that bank and a carrier's number to that carrier.

>>> from datetime import UTC, datetime
>>> request = valid_request("stop_payment", now=datetime.now(UTC))
>>> request.target_agency
'bank.icbc'

Not for production code: nothing here is random enough to be a real nonce source except
``new_nonce``, and the values are synthetic.
"""

from __future__ import annotations

import math
import os
import random
import re
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from fedgate.actions import (
    ACTIONS,
    APPROVAL_ACTIONS,
    BANK_ACTIONS,
    CARRIER_ACTIONS,
    CITING_ACTIONS,
    REPORT_ACTIONS,
    RISKLIST_ACTIONS,
    new_request_id,
)
from fedgate.chase import Authority
from fedgate.v1 import (
    appeal_pb2,
    bank_pb2,
    carrier_pb2,
    common_pb2,
    report_pb2,
    request_pb2,
    risklist_pb2,
)
from fedgate.validate import (
    BANK_BINS,
    CARRIER_PREFIXES,
    luhn_check_digit,
    resident_id_check_digit,
)

__all__ = [
    "DEFAULT_BANK",
    "DEFAULT_CARRIER",
    "DEFAULT_POLICE",
    "LEGAL_KIND",
    "card_number",
    "case_number",
    "chase_authority",
    "free_port",
    "json_times",
    "mobile_number",
    "new_nonce",
    "officer",
    "percentile",
    "resident_id",
    "second_officer",
    "supervisor_approval",
    "valid_request",
]

DEFAULT_POLICE = "police.gd.afc"
DEFAULT_BANK = "bank.icbc"
DEFAULT_CARRIER = "carrier.cmcc"


_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = (
    "伟",
    "芳",
    "娜",
    "秀英",
    "敏",
    "静",
    "丽",
    "强",
    "磊",
    "军",
    "洋",
    "勇",
    "艳",
    "杰",
    "涛",
)
LEGAL_KIND: dict[str, common_pb2.LegalDocumentKind.ValueType] = {
    "stop_payment": common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE,
    "stop_payment_extend": common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE,
    "stop_payment_release": common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
    "freeze": common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION,
    "freeze_renew": common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION,
    "freeze_release": common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
    "call_records": common_pb2.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE,
    "location": common_pb2.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE,
    "number_suspend": common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
    "number_block": common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
    "number_restore": common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
    "sms_block": common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
    "approval": common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION,
    "risk_list_add": common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
    "risk_list_extend": common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
    "risk_list_remove": common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
    "refund": common_pb2.LEGAL_DOCUMENT_KIND_REFUND_DECISION,
    "appeal": common_pb2.LEGAL_DOCUMENT_KIND_APPEAL,
    "appeal_decision": common_pb2.LEGAL_DOCUMENT_KIND_APPEAL_DECISION,
}
"""The legal document each action cites (a query notice for the rest)."""
_DOC_PREFIX: dict[common_pb2.LegalDocumentKind.ValueType, str] = {
    common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION: "穗公(反诈)立字",
    common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE: "穗公(反诈)查字",
    common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE: "穗公(反诈)止字",
    common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE: "穗公(反诈)冻字",
    common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE: "穗公(反诈)解字",
    common_pb2.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE: "穗公(反诈)证字",
    common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER: "穗公(反诈)反制字",
    common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT: "报告",
    common_pb2.LEGAL_DOCUMENT_KIND_REFUND_DECISION: "穗公(反诈)返字",
    common_pb2.LEGAL_DOCUMENT_KIND_APPEAL: "申诉",
    common_pb2.LEGAL_DOCUMENT_KIND_APPEAL_DECISION: "穗公(反诈)申核字",
}


# ----------------------------------------------------------------------------- identifiers


def _worker_ports(ports: range) -> range:
    """This test process's share of ``ports`` when pytest-xdist runs several (``gw0``, ``gw1``,
    ... of ``PYTEST_XDIST_WORKER_COUNT``): disjoint shares, so two processes never pick the
    same port between choosing it and binding it; all of ``ports`` otherwise."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return ports
    share = len(ports) // count
    start = ports.start + int(worker[2:]) % count * share
    return range(start, start + share)


FREE_PORTS: Final = _worker_ports(range(10_000, 20_000))
"""Where ``free_port`` looks: below the kernel's ephemeral range (32768-60999 here, handed to
outgoing connections) and below ``fedgate up``'s ports (20000 and up); this process's share of
it under pytest-xdist."""
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago, for a child process or a config that
    needs a port number before anything listens; where a server can bind port 0 and report its
    port, prefer that.

    The port is chosen at random in ``FREE_PORTS``, tried by binding it, and never handed out
    twice by one process. A port bound to 0 and released (what this did before) comes from the
    ephemeral range, where any outgoing connection made before the server binds it may take it
    (a test failed that way: ``Address already in use`` on such a port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} in {FREE_PORTS.start}-{FREE_PORTS.stop - 1}")


_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def json_times(doc: Any) -> list[str]:
    """Every string in a decoded JSON document that is a time (``2026-11-27T10:00…``), so a
    test can check that each carries the China offset."""
    if isinstance(doc, dict):
        return [t for value in doc.values() for t in json_times(value)]
    if isinstance(doc, list):
        return [t for value in doc for t in json_times(value)]
    return [doc] if isinstance(doc, str) and _ISO_TIME.match(doc) else []


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile of ``values`` (``0 < q <= 1``): the smallest value with at
    least ``q`` of all values at or below it; ``percentile(v, 1.0)`` is the maximum.

    Raises ``ValueError`` for no values or ``q`` outside ``(0, 1]``."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    ordered = sorted(values)
    # The epsilon keeps 0.07 * 100 (7.000000000000001) from rounding up a rank.
    return ordered[max(0, math.ceil(q * len(ordered) - 1e-9) - 1)]


def card_number(bank: str = DEFAULT_BANK, serial: int = 0, *, length: int = 19) -> str:
    """A card number of ``bank`` (a key of ``BANK_BINS``) with a Luhn check digit.

    Distinct ``serial`` values give distinct numbers. Raises ``KeyError`` for an unknown bank
    and ``ValueError`` when ``length`` is outside 16..19 or ``serial`` does not fit.
    """
    if not 16 <= length <= 19:
        raise ValueError("length must be 16..19")
    prefix = BANK_BINS[bank][0]
    width = length - len(prefix) - 1
    if not 0 <= serial < 10**width:
        raise ValueError(f"serial {serial} does not fit in {width} digits")
    # An affine map modulo 10**width (multiplier coprime to 10): distinct serials, distinct
    # numbers, and digits that look like an account rather than a counter.
    body = prefix + f"{(serial * 7_654_321 + 3_141_592_653) % 10**width:0{width}d}"
    return body + luhn_check_digit(body)


def mobile_number(carrier: str = DEFAULT_CARRIER, serial: int = 0) -> str:
    """An 11-digit mobile number in ``carrier``'s ranges (a key of ``CARRIER_PREFIXES``).

    The three-digit prefix cycles through the carrier's ranges with ``serial``.
    """
    prefixes = CARRIER_PREFIXES[carrier]
    prefix = prefixes[serial % len(prefixes)]
    return prefix + f"{(12_345_678 + serial * 7_919) % 10**8:08d}"


def resident_id(serial: int = 0, *, born: date = date(1988, 5, 17), region: str = "440106") -> str:
    """A GB 11643 resident ID number (18 characters, correct check character)."""
    first17 = f"{region}{born:%Y%m%d}{serial % 1000:03d}"
    return first17 + resident_id_check_digit(first17)


def case_number(
    serial: int = 1, *, when: date = date(2026, 1, 1), organ: str = "440100000000"
) -> str:
    """A police case number: ``A`` + organ code + ``YYYYMM`` + 5-digit serial."""
    return f"A{organ}{when:%Y%m}{serial % 100_000:05d}"


def new_nonce() -> bytes:
    """16 fresh random bytes."""
    return os.urandom(16)


def _name(serial: int) -> str:
    return _SURNAMES[serial % len(_SURNAMES)] + _GIVEN[(serial // 3) % len(_GIVEN)]


def officer(
    serial: int = 0,
    *,
    role: common_pb2.Role.ValueType = common_pb2.ROLE_POLICE_INVESTIGATOR,
) -> common_pb2.Person:
    """A police officer with badge number, name, resident ID number and mobile phone."""
    return common_pb2.Person(
        id=f"440100{123 + serial:03d}",
        name=_name(serial),
        id_number=resident_id(serial, born=date(1985, 3, 9)),
        phone=mobile_number("carrier.cmcc", 100 + serial),
        role=role,
    )


def chase_authority(
    serial: int = 0, *, officer_serial: int = 0, now: datetime | None = None
) -> Authority:
    """Under whom a test or benchmark chase runs: ``officer(officer_serial)``, a telecom-fraud
    case and its query and stop-payment notices (numbered by ``serial``, issued an hour before
    ``now``), and the victim's application."""
    now = now or datetime.now(UTC)

    def document(
        kind: common_pb2.LegalDocumentKind.ValueType, word: str
    ) -> common_pb2.LegalDocument:
        doc = common_pb2.LegalDocument(
            kind=kind, number=f"穗公(反诈){word}字〔2026〕{serial:05d}号"
        )
        doc.issued_at.FromDatetime(now - timedelta(hours=1))
        return doc

    return Authority(
        officer=officer(officer_serial),
        case=common_pb2.CaseInfo(
            case_number=case_number(serial, when=now.date()),
            case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            reason="受害人被冒充客服诱导转账",
        ),
        query_document=document(common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, "查"),
        stop_document=document(common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE, "止"),
        victim_application=f"SQ2026{serial:06d}",
    )


def second_officer(serial: int = 1) -> common_pb2.Person:
    """A second officer (协查人) whose badge number differs from ``officer(0)``'s."""
    return officer(serial + 1000)


def supervisor_approval(now: datetime, serial: int = 0) -> common_pb2.Approval:
    """A centre supervisor's approval for a bulk freeze."""
    approval = common_pb2.Approval(
        approver=officer(500 + serial, role=common_pb2.ROLE_CENTRE_SUPERVISOR),
        document_number=f"粤公反诈审〔{now.year}〕{serial + 1:04d}号",
    )
    approval.approved_at.FromDatetime(now - timedelta(hours=1))
    return approval


# ----------------------------------------------------------------------------- requests


def _default_target(action: str) -> str:
    if action in APPROVAL_ACTIONS:
        return "gateway"
    if action in BANK_ACTIONS:
        return DEFAULT_BANK
    if action in CARRIER_ACTIONS:
        return DEFAULT_CARRIER
    if action in RISKLIST_ACTIONS or action == "appeal_decision":
        return "gateway"
    return DEFAULT_POLICE


def _window(window: common_pb2.TimeWindow, now: datetime, days: int = 30) -> None:
    window.start.FromDatetime(now - timedelta(days=days))
    window.end.FromDatetime(now)


def _money(money: common_pb2.Money, minor_units: int) -> None:
    money.currency = "CNY"
    money.minor_units = minor_units


def valid_request(
    action: str,
    *,
    now: datetime,
    requesting_agency: str | None = None,
    target: str | None = None,
    serial: int = 0,
    account_number: str | None = None,
    phone_number: str | None = None,
    original_request_id: str | None = None,
    urgency: common_pb2.Urgency.ValueType | None = None,
    case: str | None = None,
    document_number: str | None = None,
) -> request_pb2.Request:
    """A request for ``action`` that passes validation at ``now``.

    Defaults: police ``police.gd.afc`` asks ``bank.icbc`` (bank actions) or ``carrier.cmcc``
    (carrier actions); reports go from ``bank.icbc`` to ``police.gd.afc``. ``serial`` varies
    every identifier; ``account_number`` / ``phone_number`` override the action's subject
    (default: a number of the target); ``original_request_id`` is the cited order for
    releases, extensions, renewals and monitor stops (default: a fresh id). Each call has a
    fresh request id (UUIDv7 at ``now``), nonce and document number (``document_number``
    overrides it, e.g. to repeat an order). Raises ``ValueError`` for an unknown action.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    is_report = action in REPORT_ACTIONS or action == "appeal"
    target = target or _default_target(action)
    requester = requesting_agency or (DEFAULT_BANK if is_report else DEFAULT_POLICE)
    # A bank, carrier or regulator changing the risk list writes as its staff, without a case.
    staff_header = is_report or (action in RISKLIST_ACTIONS and not requester.startswith("police."))
    bank = target if target in BANK_BINS else DEFAULT_BANK
    carrier = target if target in CARRIER_PREFIXES else DEFAULT_CARRIER
    account = account_number or card_number(bank, serial)
    phone = phone_number or mobile_number(carrier, serial)
    now_ms = int(now.timestamp() * 1000)

    request = request_pb2.Request(
        request_id=new_request_id(now_ms),
        nonce=new_nonce(),
        requesting_agency=requester,
        target_agency=target,
        purpose=_PURPOSE.get(action, "核查电信网络诈骗案件涉案线索"),
    )
    request.issued_at.FromDatetime(now)
    request.answer_deadline.FromDatetime(now + timedelta(hours=24))
    if staff_header:
        request.officer.CopyFrom(
            common_pb2.Person(
                id=f"{requester.rsplit('.', 1)[-1]}-staff-{serial % 1000:03d}",
                name=_name(serial + 7),
                role=_staff_role(requester),
            )
        )
        request.urgency = common_pb2.URGENCY_URGENT if urgency is None else urgency
        request.case.case_type = common_pb2.CASE_TYPE_TELECOM_FRAUD
        request.case.reason = "客户疑似遭受电信网络诈骗"
        kind = LEGAL_KIND.get(action, common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT)
        if case is not None:
            request.case.case_number = case
    else:
        if action in APPROVAL_ACTIONS:  # a centre supervisor on the roster (440100600-699)
            request.officer.CopyFrom(
                officer(477 + serial % 100, role=common_pb2.ROLE_CENTRE_SUPERVISOR)
            )
        else:
            request.officer.CopyFrom(officer(serial % 100))
        emergency = action == "stop_payment"
        default_urgency = common_pb2.URGENCY_EMERGENCY if emergency else common_pb2.URGENCY_ROUTINE
        request.urgency = default_urgency if urgency is None else urgency
        request.case.case_number = case or case_number(serial + 1, when=now.date())
        request.case.case_type = common_pb2.CASE_TYPE_TELECOM_FRAUD
        request.case.reason = "受害人被冒充客服诱导转账"
        kind = LEGAL_KIND.get(action, common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE)
        if action in ("call_records", "location"):
            request.second_officer.CopyFrom(second_officer(serial % 100))
    request.legal_document.kind = kind
    # Each call cites a document of its own, so that two calls are two orders: an order citing
    # the same document as one in force is a repeat (``fedgate.actions.REPEATABLE_ORDERS``).
    request.legal_document.number = document_number or (
        f"{_DOC_PREFIX[kind]}〔{now.year}〕{serial + 1:05d}-{os.urandom(4).hex()}号"
    )
    request.legal_document.issued_at.FromDatetime(now - timedelta(hours=2))
    if action in CITING_ACTIONS:
        request.original_request_id = original_request_id or new_request_id(now_ms - 3_600_000)

    _fill_action(request, action, now=now, account=account, phone=phone, serial=serial)
    return request


_PURPOSE: dict[str, str] = {
    "stop_payment": "受害人报案，资金正在转移，申请紧急止付",
    "freeze": "已立案，冻结涉案账户资金以便返还受害人",
    "call_records": "调取涉案号码通话记录以查明作案人员",
    "location": "定位涉案号码以抓捕嫌疑人",
}


def _staff_role(member: str) -> common_pb2.Role.ValueType:
    if member.startswith("regulator."):
        return common_pb2.ROLE_REGULATOR_STAFF
    if member.startswith("carrier."):
        return common_pb2.ROLE_CARRIER_STAFF
    return common_pb2.ROLE_BANK_STAFF


def _fill_action(
    request: request_pb2.Request,
    action: str,
    *,
    now: datetime,
    account: str,
    phone: str,
    serial: int,
) -> None:
    """Set ``request``'s action to a valid ``action`` message."""
    ts = now - timedelta(minutes=20)
    if action == "approval":
        grant = request.approval
        grant.actions.append("freeze")
        grant.max_count = 1000
        grant.expires_at.FromDatetime(now + timedelta(days=7))
        grant.document_number = f"粤公反诈审〔{now.year}〕{serial + 1:04d}号"
    elif action == "account_holder":
        request.account_holder.CopyFrom(bank_pb2.AccountHolderQuery(account_number=account))
    elif action == "transactions":
        request.transactions.account_number = account
        _window(request.transactions.window, now)
        request.transactions.page.page_size = 100
    elif action == "accounts_by_id":
        request.accounts_by_id.id_number = resident_id(serial + 10)
    elif action == "login_records":
        request.login_records.account_number = account
        _window(request.login_records.window, now, days=7)
    elif action == "stop_payment":
        order = request.stop_payment
        order.account_number = account
        order.account_name = _name(serial + 3)
        order.payer_account = card_number("bank.ccb", serial + 1)
        order.payer_name = _name(serial + 4)
        order.payer_bank = "bank.ccb"
        _money(order.amount, 4_980_000)
        order.transfer_time.FromDatetime(ts)
        order.victim_application = f"SQ{now:%Y%m%d}{serial:04d}"
    elif action == "stop_payment_release":
        request.stop_payment_release.account_number = account
        request.stop_payment_release.reason = "经核查资金与案件无关"
    elif action == "stop_payment_extend":
        request.stop_payment_extend.account_number = account
        request.stop_payment_extend.reason = "案件尚在侦查，需延长止付"
    elif action == "freeze":
        order_f = request.freeze
        order_f.account_number = account
        order_f.account_name = _name(serial + 3)
        order_f.method = bank_pb2.FREEZE_METHOD_FIXED_AMOUNT
        _money(order_f.amount, 4_980_000)
        order_f.start.FromDatetime(now)
        order_f.end.FromDatetime(now + timedelta(days=90))
        order_f.duty_phone = "020-83113110"
        order_f.bulk_count = 1
    elif action == "freeze_release":
        request.freeze_release.account_number = account
        request.freeze_release.reason = "经查明资金与案件无关"
    elif action == "freeze_renew":
        request.freeze_renew.account_number = account
        request.freeze_renew.end.FromDatetime(now + timedelta(days=120))
    elif action == "refund":
        refund = request.refund
        refund.account_number = account
        refund.victim_account = card_number("bank.ccb", serial + 1)
        refund.victim_name = _name(serial + 4)
        refund.victim_bank = "bank.ccb"
        _money(refund.amount, 1_000_000)
        _money(refund.reported_loss, 4_980_000)
        refund.victim_application = f"FH{now:%Y%m%d}{serial:04d}"
    elif action == "appeal":
        appeal = request.appeal
        appeal.appellant_name = _name(serial + 3)
        appeal.appellant_id_number = resident_id(serial + 10)
        appeal.appellant_phone = mobile_number(DEFAULT_CARRIER, serial + 5)
        appeal.subject = account
        appeal.grounds = "本人账户用于正常经营收款，与诈骗无关，附营业执照及交易合同"
        appeal.received_at.FromDatetime(now - timedelta(minutes=10))
        appeal.recorded_by = "icbc-staff-007"
    elif action == "appeal_decision":
        decision = request.appeal_decision
        decision.appeal_id = new_request_id(int(now.timestamp() * 1000) - 60_000)
        decision.outcome = appeal_pb2.APPEAL_OUTCOME_UPHOLD
        decision.reason = "经核查，该账户接收受害人转账后立即转出，维持冻结"
    elif action == "monitor_start":
        request.monitor_start.account_number = account
        request.monitor_start.until.FromDatetime(now + timedelta(days=30))
    elif action == "monitor_stop":
        request.monitor_stop.account_number = account
    elif action == "aggregate_stats":
        request.aggregate_stats.metric = "stop_payments"
        _window(request.aggregate_stats.window, now, days=90)
    elif action == "subscriber":
        request.subscriber.CopyFrom(carrier_pb2.SubscriberQuery(phone_number=phone))
    elif action == "number_status":
        request.number_status.phone_number = phone
    elif action == "sim_count":
        request.sim_count.id_number = resident_id(serial + 20)
    elif action == "call_records":
        request.call_records.phone_number = phone
        _window(request.call_records.window, now, days=14)
        request.call_records.include_sms = True
        request.call_records.page.page_size = 200
    elif action == "location":
        request.location.phone_number = phone
        request.location.at.FromDatetime(now - timedelta(minutes=5))
    elif action in ("number_suspend", "number_block", "number_restore"):
        sub = getattr(request, action)
        sub.phone_number = phone
        sub.reason = "该号码用于冒充客服实施诈骗" if action != "number_restore" else "申诉核查属实"
    elif action == "sms_block":
        request.sms_block.sender = f"10690{serial:06d}"
        request.sms_block.reason = "发送仿冒银行的诈骗短信"
    else:
        _fill_report(request, action, now=now, ts=ts, phone=phone, serial=serial)


def _fill_report(
    request: request_pb2.Request,
    action: str,
    *,
    now: datetime,
    ts: datetime,
    phone: str,
    serial: int,
) -> None:
    account = card_number(DEFAULT_BANK, serial + 50)
    if action == "case_report":
        report = report_pb2.CaseReport(
            reference=f"ICBC-GZ-{now:%Y%m%d}-{serial:04d}",
            victim_name=_name(serial + 5),
            victim_phone=mobile_number("carrier.cucc", serial),
            accounts=[account],
            phone_numbers=[phone],
            description="客户来电称被冒充公检法人员诱导转账",
        )
        _money(report.amount, 1_200_000)
        request.case_report.CopyFrom(report)
    elif action == "abnormal_account_opening":
        opening = request.abnormal_account_opening
        opening.account_number = account
        opening.id_number = resident_id(serial + 30, born=date(2000, 2, 11))
        opening.name = _name(serial + 6)
        opening.opened_at.FromDatetime(ts)
        opening.indicator = "同一身份证一日内于三家网点开卡"
    elif action == "case_linked_account":
        request.case_linked_account.account_number = account
        request.case_linked_account.name = _name(serial + 8)
        request.case_linked_account.case_number = case_number(serial + 1, when=now.date())
        request.case_linked_account.indicator = "收到多名受害人转账后快速转出"
    elif action == "abnormal_event":
        request.abnormal_event.event_code = "E101"
        request.abnormal_event.subject = account
        request.abnormal_event.time.FromDatetime(ts)
        request.abnormal_event.description = "夜间大额频繁转出"
    elif action == "early_warning":
        request.early_warning.subject = phone
        request.early_warning.name = _name(serial + 9)
        request.early_warning.flagged = mobile_number("carrier.ctcc", serial + 99)
        request.early_warning.contact_time.FromDatetime(ts)
        request.early_warning.risk_level = 4
    elif action == "monitored_transaction":
        pushed = request.monitored_transaction
        pushed.account_number = account
        pushed.monitor_request_id = str(uuid.UUID(new_request_id(int(now.timestamp() * 1000))))
        tx = pushed.transaction
        tx.transaction_id = f"T{now:%Y%m%d}{serial:08d}"
        tx.time.FromDatetime(ts)
        tx.direction = "out"
        _money(tx.amount, 2_000_000)
        tx.counterparty_account = card_number("bank.abc", serial + 2)
        tx.counterparty_name = _name(serial + 10)
        tx.counterparty_bank = "bank.abc"
        tx.channel = "mobile"
    elif action in RISKLIST_ACTIONS:
        change = getattr(request, action)
        change.category = risklist_pb2.RISK_CATEGORY_PHONE_NUMBER
        change.value = phone
        change.reason = "冒充客服诈骗来电号码" if action != "risk_list_remove" else "申诉核实，误列"
    else:  # pragma: no cover - ACTIONS is checked above
        raise ValueError(f"unknown action {action!r}")
