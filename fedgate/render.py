"""Readable and JSON renderings of what the gateway returns: a verified answer, a ticket, an error.

An :class:`Outcome` is what one police command ended with; :func:`render_text` turns it into
the lines a person reads (result fields with Chinese and English labels, lists as tables, the
audit receipt and a verification summary) and :func:`render_json` into one JSON object for
scripts (the protobuf JSON mapping of the response with proto field names, plus status,
receipt and verification).

Only an :class:`~fedgate.client.Answer` is rendered as an answer: the client builds one only
after every check passed, so the verification summary states what was checked, not a guess.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from fedgate import errors
from fedgate.checkpoint import CosignatureVerifier, parse_checkpoint
from fedgate.client import GATEWAY_ID, Answer
from fedgate.errors import FedgateError, VerificationError
from fedgate.keys import public_key_from_raw
from fedgate.note import parse_note
from fedgate.protojson import iso_time, message_dict
from fedgate.registry import Registry
from fedgate.types import CHINA_TIME, MemberId
from fedgate.v1 import common_pb2, envelope_pb2, request_pb2, ticket_pb2
from fedgate.words import CODE_FIELDS, bilingual

__all__ = [
    "CST",
    "Outcome",
    "Verification",
    "Witness",
    "format_money",
    "format_time",
    "render_json",
    "render_text",
    "request_document",
    "table",
    "verification_of",
]

CST = CHINA_TIME
"""China Standard Time: times are shown in it, and times typed without an offset mean it."""

_LABELS: dict[str, str] = {
    "account_number": "账号 account",
    "repeat_of": "重复命令 repeat of",
    "account_name": "户名 name",
    "account_type": "类型 type",
    "active": "监控中 active",
    "agency": "机关 agency",
    "amount": "金额 amount",
    "amount_frozen": "冻结金额 frozen",
    "available_balance": "可用余额 available",
    "balance": "余额 balance",
    "balance_after": "余额 balance",
    "branch": "开户网点 branch",
    "cell_id": "基站 cell",
    "channel": "渠道 channel",
    "count": "数量 count",
    "counterparty": "对方号码 counterparty",
    "counterparty_account": "对方账号 counterparty",
    "counterparty_bank": "对方银行 bank",
    "counterparty_name": "对方户名 name",
    "direction": "方向 dir",
    "duration_s": "时长秒 secs",
    "device_id": "设备 device",
    "effective_at": "生效时间 effective",
    "end": "结束 end",
    "holder_name": "户名 holder",
    "id_number": "身份证号 ID number",
    "in_force": "生效 in force",
    "ip": "IP",
    "kind": "操作 kind",
    "latitude": "纬度 latitude",
    "live_sims": "在用卡数 live SIMs",
    "longitude": "经度 longitude",
    "memo": "附言 memo",
    "metric": "指标 metric",
    "name": "姓名 name",
    "next_page_token": "下一页 next page",
    "observed_at": "观测时间 observed",
    "opened_at": "开户时间 opened",
    "phone": "电话 phone",
    "phone_number": "号码 number",
    "reference": "编号 reference",
    "registered_at": "入网时间 registered",
    "since": "变更时间 since",
    "start": "开始 start",
    "status": "状态 status",
    "stop_count": "止付次数 stops",
    "subject": "对象 subject",
    "time": "时间 time",
    "total": "合计 total",
    "transaction_id": "流水号 txn id",
    "until": "截止 until",
}
_TABLE_TITLES: dict[str, str] = {
    "transactions": "交易明细 transactions",
    "accounts": "账户 accounts",
    "records": "记录 records",
    "prior_freezes": "在先冻结 earlier freezes",
}
_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_MONEY = common_pb2.Money.DESCRIPTOR.full_name


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Witness:
    """A cosignature line on the receipt's checkpoint, and whether it verified."""

    name: str
    verified: bool
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class Verification:
    """What the client checked on an answer (all of it passed, or there is no Answer)."""

    signed_by: str
    key_id: str
    request_id: str
    request_hash: str
    countersigned_by: str
    countersignature_key_id: str
    log_origin: str
    leaf_index: int
    request_leaf_index: int
    tree_size: int
    root_hash: str
    witnesses: tuple[Witness, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one police command ended. ``kind`` is one of ``answered``, ``queued``,
    ``waiting`` (a ticket update), ``expired``, ``refused``, ``unavailable``,
    ``verification_failed`` or ``error`` (local)."""

    kind: str
    exit_code: int
    request_id: str = ""
    answer: Answer | None = None
    ticket: ticket_pb2.Ticket | None = None
    error: BaseException | None = None
    hints: tuple[str, ...] = ()


def format_time(ts: Timestamp | datetime) -> str:
    """``2026-11-27 10:00:00+08:00`` (China Standard Time); ``—`` for an unset timestamp."""
    if isinstance(ts, Timestamp):
        if ts.seconds == 0 and ts.nanos == 0:
            return "—"
        ts = ts.ToDatetime(tzinfo=UTC)
    return ts.astimezone(CST).isoformat(sep=" ", timespec="seconds")


def format_money(money: common_pb2.Money) -> str:
    """``¥1,234.56`` for CNY, ``1,234.56 USD`` otherwise; ``—`` when unset."""
    if not money.currency and money.minor_units == 0:
        return "—"
    units = money.minor_units
    sign = "-" if units < 0 else ""
    whole, cents = divmod(abs(units), 100)
    text = f"{sign}{whole:,}.{cents:02d}"
    return f"¥{text}" if money.currency == "CNY" else f"{text} {money.currency}".rstrip()


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _enum_label(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum)).lower()


_MEMBER_FIELDS: Final = frozenset(
    {"counterparty_bank", "agency", "payer_bank", "responder", "bank", "carrier"}
)


def _scalar(fd: Any, value: Any, registry: Registry | None = None) -> str:
    """One field value as text; ``fd`` is a ``FieldDescriptor`` (the stubs type it loosely).
    Codes are shown in both languages, member ids with the member's name."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        name = fd.message_type.full_name
        if name == _TIMESTAMP:
            return format_time(value)
        if name == _MONEY:
            return format_money(value)
        return json_format.MessageToJson(value, indent=None, preserving_proto_field_name=True)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return bilingual(_enum_label(fd.enum_type, value))
    if fd.type == FieldDescriptor.TYPE_STRING and value:
        if fd.name in CODE_FIELDS:
            return bilingual(value)
        if fd.name in _MEMBER_FIELDS and registry is not None:
            return _member_name(value, registry)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "是 yes" if value else "否 no"
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return f"{value:.6f}"
    text = str(value)
    return text if text else "—"


# ----------------------------------------------------------------------------- tables


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns as lines, measured in display width (CJK characters count two)."""
    widths = [_width(h) for h in headers]
    for row in rows:
        widths = [max(w, _width(c)) for w, c in zip(widths, row, strict=True)]
    lines = [indent + "  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True))]
    lines += [
        indent + "  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return [line.rstrip() for line in lines]


def _label(name: str) -> str:
    return _LABELS.get(name, name.replace("_", " "))


def _result_lines(result: Message, registry: Registry | None = None) -> list[str]:
    """Scalar fields as ``label  value`` lines, then each repeated message field as a table."""
    fields: list[Any] = list(result.DESCRIPTOR.fields)
    singles = [fd for fd in fields if not fd.is_repeated]
    pairs = [(_label(fd.name), _scalar(fd, getattr(result, fd.name), registry)) for fd in singles]
    width = max((_width(label) for label, _ in pairs), default=0)
    lines = [f"  {_pad(label, width)}  {value}" for label, value in pairs]
    for fd in fields:
        if not fd.is_repeated:
            continue
        items = getattr(result, fd.name)
        title = _TABLE_TITLES.get(fd.name, fd.name.replace("_", " "))
        lines.append("")
        lines.append(f"  {title} ({len(items)})")
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            lines += [f"    {item}" for item in items]
            continue
        columns: list[Any] = list(fd.message_type.fields)
        headers = [_label(c.name) for c in columns]
        rows = [[_scalar(c, getattr(item, c.name), registry) for c in columns] for item in items]
        lines += table(headers, rows, indent="    ")
    return lines


# ----------------------------------------------------------------------------- verification


def _witnesses(
    receipt: envelope_pb2.AuditReceipt, registry: Registry | None
) -> tuple[Witness, ...]:
    """Cosignature lines of the checkpoint other than the log's own, checked against the
    signing keys of registry members with the ``witness`` role named like the line. An
    upgraded receipt's cosigned checkpoint (``fedgate answers upgrade``) is the one read: the
    receipt's own checkpoint was signed before any witness saw it."""
    try:
        note = parse_note(receipt.cosigned_checkpoint or receipt.checkpoint)
    except VerificationError:
        return ()
    seen: list[Witness] = []
    for sig in note.signatures:
        if sig.name == receipt.log_origin:
            continue
        member = registry.find(sig.name) if registry is not None else None
        timestamp: int | None = None
        if member is not None and "witness" in member.roles:
            for key in member.signing_keys:
                try:
                    verifier = CosignatureVerifier(
                        name=sig.name, public_key=public_key_from_raw(key.public_key)
                    )
                    timestamp = verifier.verify(note.text, sig)
                    break
                except (VerificationError, ValueError):
                    continue
        seen.append(Witness(sig.name, timestamp is not None, timestamp))
    return tuple(seen)


def verification_of(
    answer: Answer, *, registry: Registry | None = None, gateway_id: MemberId = GATEWAY_ID
) -> Verification:
    """The facts the client checked on ``answer``, for display."""
    receipt = answer.receipt
    try:
        root = parse_checkpoint(parse_note(receipt.checkpoint).text).root_hash.hex()
    except VerificationError:  # pragma: no cover - the client opened this checkpoint already
        root = ""
    return Verification(
        signed_by=answer.response.responder,
        key_id=answer.signed.response.key_id,
        request_id=answer.response.request_id,
        request_hash=answer.response.request_hash.hex(),
        countersigned_by=gateway_id,
        countersignature_key_id=answer.signed.countersignature.key_id,
        log_origin=receipt.log_origin,
        leaf_index=receipt.leaf_index,
        request_leaf_index=receipt.request_leaf_index,
        tree_size=receipt.tree_size,
        root_hash=root,
        witnesses=_witnesses(receipt, registry),
    )


def _summary(v: Verification) -> str:
    return (
        f"✓ signed by {v.signed_by} (key {v.key_id[:16]}…) ✓ bound to request "
        f"✓ countersigned by {v.countersigned_by} ✓ in audit log at index {v.leaf_index}"
    )


def _witness_text(witnesses: Sequence[Witness]) -> str:
    if not witnesses:
        return "none yet"
    parts = []
    for w in witnesses:
        if w.verified and w.timestamp is not None:
            when = format_time(datetime.fromtimestamp(w.timestamp, UTC))
            parts.append(f"{w.name} ✓ {when}")
        else:
            parts.append(f"{w.name} (not checked: unknown key)")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- text


def _member_name(member_id: str, registry: Registry | None) -> str:
    member = registry.find(member_id) if registry is not None else None
    return f"{member_id} ({member.name_zh})" if member is not None else member_id


def _status_name(status: int) -> str:
    return _enum_label(request_pb2.ResponseStatus.DESCRIPTOR, status).upper()


def _answer_lines(answer: Answer, registry: Registry | None, gateway_id: MemberId) -> list[str]:
    response = answer.response
    who = _member_name(response.responder, registry)
    status = _status_name(response.status)
    by = f"by staff {response.answered_by}" if response.answered_by else "automatically"
    head = f"{who} answered {status} {by} at {format_time(response.answered_at)}"
    lines = [head, f"  request {response.request_id}"]
    if response.detail:
        lines.append(f"  {status.lower()}: {response.detail}")
    result_field = response.WhichOneof("result")
    if result_field is not None:
        lines.append("")
        lines += _result_lines(getattr(response, result_field), registry)
    v = verification_of(answer, registry=registry, gateway_id=gateway_id)
    lines += [
        "",
        f"receipt   log {v.log_origin} · entry {v.leaf_index} (request entry "
        f"{v.request_leaf_index}) · tree size {v.tree_size} · root {v.root_hash[:12]}",
        f"          witnesses: {_witness_text(v.witnesses)}",
        f"verified  {_summary(v)}",
    ]
    return lines


def _ticket_lines(ticket: ticket_pb2.Ticket, registry: Registry | None) -> list[str]:
    state = _enum_label(ticket_pb2.TicketState.DESCRIPTOR, ticket.state).upper()
    lines = [
        f"ticket {ticket.ticket_id} at {_member_name(ticket.target_agency, registry)}: {state}"
        f", answer due {format_time(ticket.deadline)}"
    ]
    receipt = ticket.request_receipt
    if receipt.log_origin:
        lines.append(
            f"  request logged: log {receipt.request_log_origin or receipt.log_origin} · entry "
            f"{receipt.request_leaf_index}"
        )
    return lines


_HEADER_FLAGS: Final[dict[str, str]] = {
    "officer.id": "--officer-id",
    "officer.name": "--officer-name",
    "officer.phone": "--officer-phone",
    "officer.id_number": "--officer-id-number",
    "officer.role": "--officer-role",
    "second_officer": "--second-officer-id",
    "second_officer.id": "--second-officer-id",
    "second_officer.name": "--second-officer-name",
    "second_officer.phone": "--second-officer-phone",
    "case.case_number": "--case",
    "case.case_type": "--case-type",
    "case.reason": "--case-reason",
    "legal_document.kind": "--doc-kind",
    "legal_document.number": "--doc-number",
    "legal_document.issued_at": "--doc-issued",
    "urgency": "--urgency",
    "purpose": "--purpose",
    "answer_deadline": "--deadline",
    "original_request_id": "--original",
    "target_agency": "--target",
}
_ACTION_FLAGS: Final[dict[str, str]] = {
    "account_number": "--account",
    "account_name": "--name",
    "phone_number": "--phone",
    "id_number": "--id-number",
    "amount": "--amount",
    "amount.minor_units": "--amount",
    "amount.currency": "--currency",
    "payer_account": "--payer-account",
    "payer_name": "--payer-name",
    "payer_bank": "--payer-bank",
    "transfer_time": "--transfer-time",
    "victim_application": "--victim-application",
    "window": "--from",
    "window.start": "--from",
    "window.end": "--to",
    "page.page_size": "--page-size",
    "page.page_token": "--page-token",
    "start": "--start",
    "end": "--end",
    "until": "--until",
    "at": "--at",
    "method": "--method",
    "duty_phone": "--duty-phone",
    "bulk_count": "--bulk-count",
    "approval": "--approver-id",
    "approval.approver.id": "--approver-id",
    "approval.approver.name": "--approver-name",
    "approval.document_number": "--approval-doc",
    "approval.approved_at": "--approved-at",
    "reason": "--reason",
    "sender": "--sender",
    "include_sms": "--sms",
    "metric": "--metric",
}


def cli_flag(path: str) -> str | None:
    """The ``fedgate query|order`` option that sets the request field ``path``, if one does:
    ``legal_document.number`` → ``--doc-number``, ``freeze.amount.minor_units`` → ``--amount``."""
    if path in _HEADER_FLAGS:
        return _HEADER_FLAGS[path]
    _, _, rest = path.partition(".")
    return _ACTION_FLAGS.get(rest)


def _field_words(path: str) -> str:
    """How a refusal names a field to a CLI user: the option, and the field in brackets."""
    flag = cli_flag(path)
    return path if flag is None else f"{flag} ({path})"


def _violations(error: BaseException) -> tuple[errors.FieldViolation, ...]:
    return error.violations if isinstance(error, errors.InvalidArgument) else ()


def _error_lines(outcome: Outcome) -> list[str]:
    error = outcome.error
    message = error.message if isinstance(error, FedgateError) else str(error)
    reason = error.reason if isinstance(error, FedgateError) else type(error).__name__
    if outcome.kind == "verification_failed":
        return [
            "!!! VERIFICATION FAILED — DO NOT ACT ON THIS ANSWER !!!",
            f"the answer to request {outcome.request_id or '(unknown)'} did not verify: {message}",
            "it may be forged, altered, or bound to another request; keep this output and",
            "report it to the centre's security officer",
        ]
    headline = {
        "refused": "refused by the gateway",
        "unavailable": "unavailable",
        "expired": "expired",
    }.get(outcome.kind, "error")
    lines = [f"{headline}: {reason}: {message}"]
    lines += (
        [f"  ✗ {_field_words(v.field)}: {v.description}" for v in _violations(error)]
        if error
        else []
    )
    if isinstance(error, errors.QuotaExceeded):
        lines.append(f"  retry after {error.retry_after_s:g} s")
    return lines


def render_text(
    outcome: Outcome, *, registry: Registry | None = None, gateway_id: MemberId = GATEWAY_ID
) -> tuple[str, str]:
    """``(stdout, stderr)`` text for ``outcome``; either may be empty."""
    out: list[str] = []
    err: list[str] = []
    if outcome.answer is not None:
        out += _answer_lines(outcome.answer, registry, gateway_id)
    elif outcome.ticket is not None:
        out += _ticket_lines(outcome.ticket, registry)
    if outcome.error is not None:
        err += [f"fedgate: {line}" if line else "" for line in _error_lines(outcome)]
    out += outcome.hints
    return ("\n".join(out) + "\n" if out else "", "\n".join(err) + "\n" if err else "")


# ----------------------------------------------------------------------------- JSON


def _to_dict(message: Message) -> dict[str, Any]:
    return message_dict(message, with_defaults=True)


def _error_dict(error: BaseException) -> dict[str, Any]:
    if not isinstance(error, FedgateError):
        return {"reason": type(error).__name__, "message": str(error)}
    doc: dict[str, Any] = {
        "code": error.code.name,
        "reason": error.reason,
        "message": error.message,
        "field_violations": [
            {"field": v.field, "flag": cli_flag(v.field), "description": v.description}
            for v in _violations(error)
        ],
    }
    if isinstance(error, errors.QuotaExceeded):
        doc["retry_after_s"] = error.retry_after_s
    return doc


def _verification_dict(v: Verification) -> dict[str, Any]:
    return {
        "verified": True,
        "signed_by": v.signed_by,
        "key_id": v.key_id,
        "bound_to_request": v.request_id,
        "request_hash": v.request_hash,
        "countersigned_by": v.countersigned_by,
        "countersignature_key_id": v.countersignature_key_id,
        "log_origin": v.log_origin,
        "leaf_index": v.leaf_index,
        "request_leaf_index": v.request_leaf_index,
        "tree_size": v.tree_size,
        "root_hash": v.root_hash,
        "witnesses": [
            {
                "name": w.name,
                "verified": w.verified,
                "timestamp": w.timestamp,
                "cosigned_at": (
                    iso_time(datetime.fromtimestamp(w.timestamp, UTC))
                    if w.timestamp is not None
                    else None
                ),
            }
            for w in v.witnesses
        ],
    }


def render_json(
    outcome: Outcome,
    *,
    registry: Registry | None = None,
    gateway_id: MemberId = GATEWAY_ID,
    indent: int | None = 2,
) -> str:
    """One JSON object for ``outcome`` (``indent=None``: one line, for streams)."""
    doc: dict[str, Any] = {
        "outcome": outcome.kind,
        "exit_code": outcome.exit_code,
        "request_id": outcome.request_id,
    }
    if outcome.answer is not None:
        answer = outcome.answer
        doc["status"] = _status_name(answer.response.status)
        doc["response"] = _to_dict(answer.response)
        doc["receipt"] = _to_dict(answer.receipt)
        doc["verification"] = _verification_dict(
            verification_of(answer, registry=registry, gateway_id=gateway_id)
        )
    if outcome.ticket is not None:
        doc["ticket"] = _to_dict(outcome.ticket)
    if outcome.error is not None:
        doc["error"] = _error_dict(outcome.error)
        if outcome.kind == "verification_failed":
            doc["verification"] = {"verified": False, "error": str(outcome.error)}
    if outcome.hints:
        doc["hints"] = list(outcome.hints)
    return json.dumps(doc, ensure_ascii=False, indent=indent)


def request_document(request: request_pb2.Request, envelope: envelope_pb2.SignedEnvelope) -> str:
    """A signed request as JSON: the decoded request and the envelope (base64 bytes)."""
    doc = {"request": _to_dict(request), "envelope": _to_dict(envelope)}
    return json.dumps(doc, ensure_ascii=False, indent=2)
