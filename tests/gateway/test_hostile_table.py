"""The hostile table (issue 10): one row per hostile or faulty Submit, each asserting the exact
gRPC status, the reason code and the audit entry that records the refusal (the request leg's
decision and rule, or the response leg's status), and that no identifier is echoed in clear.

Rows cover envelopes, signatures, replay, freshness, every field validator, policy, business
rules, size limits, node faults and masks. ``test_hostile.py`` keeps the cases that need more
than one call (transport, quotas, restarts, a failing log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.message import Message

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.envelope import MAX_BODY_BYTES, Domain, Signer, sign_envelope
from fedgate.errors import InvalidArgument
from fedgate.testing import card_number, mobile_number
from fedgate.tls import MemberCredentials
from fedgate.types import MemberId
from fedgate.v1 import (
    bank_pb2,
    common_pb2,
    envelope_pb2,
    gateway_service_pb2,
    request_pb2,
)

if TYPE_CHECKING:
    from conftest import GatewayHarness

SC = grpc.StatusCode
POLICE = "police.gd.afc"
BANK = "bank.icbc"
BAD_CARD = "6222021234567890124"  # fails the Luhn check
BAD_ID = "440106198805170014"  # fails the GB 11643 check digit


@dataclass(frozen=True)
class Sent:
    """What a row submits: raw bytes or an envelope, as ``member`` (its TLS certificate)."""

    payload: envelope_pb2.SignedEnvelope | bytes
    member: str = POLICE
    secrets: tuple[str, ...] = ()
    """Identifiers in the request that must not appear in clear in the refusal or its entry."""


Build = Callable[["GatewayHarness"], Sent]


@dataclass(frozen=True)
class Row:
    id: str
    build: Build
    code: SC
    reason: str
    rule: str = ""
    """A fragment the request leg's rule (or the response leg's detail) must contain."""
    fields: tuple[str, ...] = ()
    """For INVALID_ARGUMENT: the violated fields (each named exactly, or as a prefix)."""
    leg: str = "request"
    """``request`` (a refused request leg) or a response leg status (``node_fault``, ...)."""
    node_mode: str = "ok"
    tags: frozenset[str] = field(default_factory=frozenset)


# -- building blocks ---------------------------------------------------------------------------


def _signer(h: GatewayHarness, member: str) -> Signer:
    return Signer.from_key(MemberCredentials.load(h.federation, MemberId(member)).signing_key)


def _sign(h: GatewayHarness, request: request_pb2.Request, member: str) -> Any:
    return sign_envelope(request.SerializeToString(), _signer(h, member), Domain.REQUEST)


def _default_member(action: str) -> str:
    return BANK if action in _REPORTS else POLICE


_REPORTS = frozenset(
    {
        "case_report",
        "abnormal_account_opening",
        "case_linked_account",
        "abnormal_event",
        "early_warning",
        "monitored_transaction",
    }
)


def mutated(
    action: str,
    mutate: Callable[[request_pb2.Request], None],
    *,
    member: str | None = None,
    secrets: Callable[[request_pb2.Request], tuple[str, ...]] | None = None,
    **kw: Any,
) -> Build:
    """A valid ``action`` request, changed by ``mutate``, signed and sent by ``member``."""

    def build(h: GatewayHarness) -> Sent:
        who = member or _default_member(action)
        request = h.request(action, **kw)
        mutate(request)
        return Sent(_sign(h, request, who), who, secrets(request) if secrets else ())

    return build


def _path(message: Message, path: str) -> tuple[Message, str]:
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    return message, leaf


def setting(path: str, value: Any) -> Callable[[request_pb2.Request], None]:
    def mutate(r: request_pb2.Request) -> None:
        parent, leaf = _path(r, path)
        setattr(parent, leaf, value)

    return mutate


def clearing(path: str) -> Callable[[request_pb2.Request], None]:
    def mutate(r: request_pb2.Request) -> None:
        parent, leaf = _path(r, path)
        parent.ClearField(leaf)

    return mutate


def at(path: str, delta: timedelta) -> Callable[[request_pb2.Request], None]:
    """Set the timestamp at ``path`` to now + ``delta``."""

    def mutate(r: request_pb2.Request) -> None:
        parent, leaf = _path(r, path)
        getattr(parent, leaf).FromDatetime(datetime.now(UTC) + delta)

    return mutate


def both(
    *mutations: Callable[[request_pb2.Request], None],
) -> Callable[[request_pb2.Request], None]:
    def mutate(r: request_pb2.Request) -> None:
        for m in mutations:
            m(r)

    return mutate


def invalid(
    action: str, path: str, mutate: Callable[[request_pb2.Request], None], **kw: Any
) -> Row:
    """A row for a field validator: INVALID_ARGUMENT naming ``path``."""
    return Row(
        f"{action}:{path}",
        mutated(action, mutate, **kw),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=(path,),
    )


def field_value(path: str) -> Callable[[request_pb2.Request], tuple[str, ...]]:
    def read(r: request_pb2.Request) -> tuple[str, ...]:
        parent, leaf = _path(r, path)
        return (str(getattr(parent, leaf)),)

    return read


def masked_invalid(action: str, path: str, value: str) -> Row:
    """An identifier field with a wrong value: named, and the value never echoed in clear."""
    return Row(
        f"mask:{action}:{path}",
        mutated(action, setting(path, value), secrets=field_value(path)),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=(path,),
        tags=frozenset({"mask"}),
    )


def raw(data: bytes | Callable[[GatewayHarness], bytes], member: str = POLICE) -> Build:
    def build(h: GatewayHarness) -> Sent:
        return Sent(data(h) if callable(data) else data, member)

    return build


def envelope_of(
    change: Callable[[GatewayHarness, envelope_pb2.SignedEnvelope], None],
    action: str = "account_holder",
) -> Build:
    """A validly signed envelope, then changed by ``change``."""

    def build(h: GatewayHarness) -> Sent:
        envelope = _sign(h, h.request(action), POLICE)
        change(h, envelope)
        return Sent(envelope)

    return build


def flip(position: int) -> Callable[[GatewayHarness, envelope_pb2.SignedEnvelope], None]:
    def change(h: GatewayHarness, e: envelope_pb2.SignedEnvelope) -> None:
        signature = bytearray(e.signature)
        signature[position] ^= 0x01
        e.signature = bytes(signature)

    return change


def signed_as(domain: Domain, member: str = POLICE, *, sender: str = POLICE) -> Build:
    def build(h: GatewayHarness) -> Sent:
        request = h.request(requesting_agency=member) if member != POLICE else h.request()
        return Sent(sign_envelope(request.SerializeToString(), _signer(h, member), domain), sender)

    return build


def tampered(mutate: Callable[[request_pb2.Request], None]) -> Build:
    """Signed, then the body changed: the signature no longer covers it."""

    def build(h: GatewayHarness) -> Sent:
        request = h.request()
        envelope = _sign(h, request, POLICE)
        mutate(request)
        envelope.body = request.SerializeToString()
        return Sent(envelope)

    return build


def submit_bytes(envelope: envelope_pb2.SignedEnvelope) -> bytes:
    return gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString()


def _body(body: bytes) -> Callable[[GatewayHarness], bytes]:
    def make(h: GatewayHarness) -> bytes:
        envelope = envelope_pb2.SignedEnvelope(
            body=body, key_id=_signer(h, POLICE).key_id, signature=b"\0" * 64
        )
        return submit_bytes(envelope)

    return make


def _second_officer_cleared(action: str) -> Row:
    return Row(
        f"rule:{action}:no_second_officer",
        mutated(action, clearing("second_officer")),
        SC.PERMISSION_DENIED,
        "RULE_VIOLATED",
        rule=f"{action}.requires_second_officer",
    )


def _citing(action: str, rule: str) -> Row:
    return Row(
        f"rule:{action}:cites_nothing_executed",
        mutated(action, lambda r: None),
        SC.PERMISSION_DENIED,
        "RULE_VIOLATED",
        rule=rule,
    )


# -- the table ---------------------------------------------------------------------------------

ENVELOPES = [
    Row("envelope:garbage", raw(b"\xff\xff\xff\xff"), SC.INVALID_ARGUMENT, "MALFORMED"),
    Row("envelope:truncated", raw(b"\x0a\x05abc"), SC.INVALID_ARGUMENT, "MALFORMED"),
    Row("envelope:wrong_wire_type", raw(b"\x0d\x01\x02"), SC.INVALID_ARGUMENT, "MALFORMED"),
    Row(
        "envelope:missing",
        raw(b""),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("envelope",),
    ),
    Row(
        "envelope:empty_body",
        raw(_body(b"")),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("request_id", "issued_at", "nonce", "action"),
    ),
    Row("envelope:garbage_body", raw(_body(b"\xff\xfe\xfd")), SC.INVALID_ARGUMENT, "MALFORMED"),
    Row(
        "envelope:oversized_body",
        mutated("account_holder", setting("purpose", "x" * (MAX_BODY_BYTES + 1))),
        SC.INVALID_ARGUMENT,
        "MALFORMED",
        rule="not kept in the log",
    ),
    Row(
        "envelope:no_request_id",
        mutated("account_holder", setting("request_id", "")),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("request_id",),
    ),
    Row(
        "envelope:no_nonce",
        mutated("account_holder", setting("nonce", b"")),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("nonce",),
    ),
    Row(
        "envelope:no_issued_at",
        mutated("account_holder", clearing("issued_at")),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("issued_at",),
    ),
    Row(
        "envelope:no_action",
        mutated("account_holder", clearing("account_holder")),
        SC.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        fields=("action",),
    ),
]

SIGNATURES = [
    Row(
        "signature:empty_key_id",
        envelope_of(lambda h, e: setattr(e, "key_id", "")),
        SC.UNAUTHENTICATED,
        "UNKNOWN_KEY",
    ),
    Row(
        "signature:unknown_key_id",
        envelope_of(lambda h, e: setattr(e, "key_id", "00" * 16)),
        SC.UNAUTHENTICATED,
        "UNKNOWN_KEY",
    ),
    Row(
        "signature:non_hex_key_id",
        envelope_of(lambda h, e: setattr(e, "key_id", "zz" * 16)),
        SC.UNAUTHENTICATED,
        "UNKNOWN_KEY",
    ),
    Row(
        "signature:empty",
        envelope_of(lambda h, e: setattr(e, "signature", b"")),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:short",
        envelope_of(lambda h, e: setattr(e, "signature", e.signature[:63])),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:long",
        envelope_of(lambda h, e: setattr(e, "signature", e.signature + b"\0")),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:zeros",
        envelope_of(lambda h, e: setattr(e, "signature", b"\0" * 64)),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    *[
        Row(
            f"signature:bit_{position}",
            envelope_of(flip(position)),
            SC.UNAUTHENTICATED,
            "SIGNATURE_INVALID",
        )
        for position in (0, 1, 31, 32, 62, 63)
    ],
    Row(
        "signature:response_domain",
        signed_as(Domain.RESPONSE),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row("signature:event_domain", signed_as(Domain.EVENT), SC.UNAUTHENTICATED, "SIGNATURE_INVALID"),
    Row(
        "signature:another_members_key",
        signed_as(Domain.REQUEST, "police.gz.unit"),
        SC.UNAUTHENTICATED,
        "PEER_MISMATCH",
    ),
    Row(
        "signature:a_banks_key",
        signed_as(Domain.REQUEST, BANK),
        SC.UNAUTHENTICATED,
        "PEER_MISMATCH",
    ),
    Row(
        "signature:requesting_agency_not_the_signer",
        mutated("account_holder", setting("requesting_agency", "police.gz.unit")),
        SC.UNAUTHENTICATED,
        "PEER_MISMATCH",
    ),
    Row(
        "signature:requesting_agency_empty",
        mutated("account_holder", setting("requesting_agency", "")),
        SC.UNAUTHENTICATED,
        "PEER_MISMATCH",
    ),
    Row(
        "signature:tampered_purpose",
        tampered(setting("purpose", "something else")),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:tampered_target",
        tampered(setting("target_agency", "bank.ccb")),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:tampered_officer",
        tampered(setting("officer.id", "PX99999")),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:tampered_account",
        tampered(setting("account_holder.account_number", card_number(BANK, 999))),
        SC.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
    ),
    Row(
        "signature:revoked_member",
        mutated(
            "subscriber", lambda r: None, member="carrier.ctcc", requesting_agency="carrier.ctcc"
        ),
        SC.PERMISSION_DENIED,
        "MEMBER_REFUSED",
        rule="revoked",
    ),
    Row(
        "signature:key_before_its_validity",
        mutated("account_holder", at("issued_at", -timedelta(days=2))),
        SC.UNAUTHENTICATED,
        "KEY_NOT_VALID",
    ),
]

FRESHNESS = [
    *[
        Row(
            f"freshness:issued_at_{name}",
            mutated("account_holder", at("issued_at", delta)),
            SC.FAILED_PRECONDITION,
            "STALE",
            rule=word,
        )
        for name, delta, word in (
            ("6_minutes_ago", -timedelta(minutes=6), "past"),
            ("30_minutes_ago", -timedelta(minutes=30), "past"),
            ("6_minutes_ahead", timedelta(minutes=6), "future"),
            ("an_hour_ahead", timedelta(hours=1), "future"),
        )
    ],
    *[
        Row(
            f"freshness:issued_at_not_a_time_{seconds}_{nanos}",
            mutated(
                "account_holder",
                both(setting("issued_at.seconds", seconds), setting("issued_at.nanos", nanos)),
            ),
            SC.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            fields=("issued_at",),
        )
        for seconds, nanos in ((2**62, 0), (-(2**40), 0), (10**9, -1), (10**9, 10**9))
    ],
]

HEADER = [
    invalid("account_holder", "request_id", setting("request_id", "not-a-uuid")),
    invalid(
        "account_holder",
        "request_id",
        setting("request_id", "3b241101-e2bb-4255-8caf-4136c566a962"),  # a UUIDv4
    ),
    invalid("account_holder", "nonce", setting("nonce", b"\1" * 8)),
    invalid("account_holder", "nonce", setting("nonce", b"\1" * 32)),
    invalid("account_holder", "target_agency", setting("target_agency", "Bank ICBC!")),
    invalid("account_holder", "officer.id", setting("officer.id", "")),
    invalid("account_holder", "officer.id", setting("officer.id", "a")),
    invalid("account_holder", "officer.id", setting("officer.id", "bad id!")),
    invalid("account_holder", "officer.id_number", setting("officer.id_number", BAD_ID)),
    invalid("account_holder", "officer.phone", setting("officer.phone", "123")),
    invalid("call_records", "second_officer.id", setting("second_officer.id", "x")),
    invalid("account_holder", "case.case_number", setting("case.case_number", "")),
    invalid("account_holder", "case.case_number", setting("case.case_number", "B123")),
    invalid("account_holder", "case.case_type", setting("case.case_type", 0)),
    invalid("account_holder", "case.case_type", setting("case.case_type", 999)),
    invalid("account_holder", "case.reason", setting("case.reason", "x" * 3000)),
    invalid("account_holder", "legal_document.kind", setting("legal_document.kind", 0)),
    invalid(
        "account_holder",
        "legal_document.kind",
        setting("legal_document.kind", common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT),
    ),
    invalid("account_holder", "legal_document.number", setting("legal_document.number", "")),
    invalid("account_holder", "legal_document.number", setting("legal_document.number", "x" * 300)),
    invalid(
        "account_holder",
        "legal_document.issued_at",
        at("legal_document.issued_at", timedelta(days=3)),
    ),
    invalid("account_holder", "urgency", setting("urgency", 0)),
    invalid("account_holder", "urgency", setting("urgency", 99)),
    invalid("account_holder", "purpose", setting("purpose", "")),
    invalid("account_holder", "purpose", setting("purpose", "x" * 3000)),
    invalid("account_holder", "answer_deadline", at("answer_deadline", -timedelta(minutes=1))),
    invalid("account_holder", "answer_deadline", at("answer_deadline", timedelta(days=60))),
    invalid(
        "account_holder",
        "original_request_id",
        setting("original_request_id", "01890a5d-ac96-774b-bcce-b302099a8057"),
    ),
    invalid("stop_payment_release", "original_request_id", setting("original_request_id", "")),
    invalid(
        "stop_payment_release",
        "original_request_id",
        lambda r: setattr(r, "original_request_id", r.request_id),
    ),
]

ACTIONS = [
    invalid(
        "account_holder",
        "account_holder.account_number",
        setting("account_holder.account_number", ""),
    ),
    invalid(
        "account_holder",
        "account_holder.account_number",
        setting("account_holder.account_number", "6222abcd34567890123"),
    ),
    invalid(
        "account_holder",
        "account_holder.account_number",
        setting("account_holder.account_number", card_number("bank.ccb", 5)),  # another bank
    ),
    invalid("transactions", "transactions.window", clearing("transactions.window")),
    invalid(
        "transactions",
        "transactions.window",
        lambda r: r.transactions.window.start.FromDatetime(
            r.transactions.window.end.ToDatetime() + timedelta(days=1)
        ),
    ),
    invalid(
        "transactions",
        "transactions.window",
        lambda r: r.transactions.window.start.FromDatetime(
            r.transactions.window.end.ToDatetime() - timedelta(days=400)
        ),
    ),
    invalid("transactions", "transactions.page", setting("transactions.page.page_size", 10**6)),
    invalid("accounts_by_id", "accounts_by_id.id_number", setting("accounts_by_id.id_number", "")),
    invalid(
        "accounts_by_id",
        "accounts_by_id.id_number",
        setting("accounts_by_id.id_number", "440106880517001"),
    ),
    invalid(
        "login_records",
        "login_records.account_number",
        setting("login_records.account_number", BAD_CARD),
    ),
    invalid("login_records", "login_records.window", clearing("login_records.window")),
    invalid("stop_payment", "stop_payment.amount", setting("stop_payment.amount.minor_units", -5)),
    invalid("stop_payment", "stop_payment.amount", setting("stop_payment.amount.minor_units", 0)),
    invalid("stop_payment", "stop_payment.amount", setting("stop_payment.amount.currency", "usd")),
    invalid("stop_payment", "stop_payment.amount", clearing("stop_payment.amount")),
    invalid("stop_payment", "stop_payment.account_name", setting("stop_payment.account_name", "")),
    invalid(
        "stop_payment",
        "stop_payment.payer_account",
        setting("stop_payment.payer_account", BAD_CARD),
    ),
    invalid("stop_payment", "stop_payment.payer_name", setting("stop_payment.payer_name", "")),
    invalid("stop_payment", "stop_payment.payer_bank", setting("stop_payment.payer_bank", "")),
    invalid(
        "stop_payment",
        "stop_payment.transfer_time",
        at("stop_payment.transfer_time", timedelta(hours=2)),
    ),
    invalid(
        "stop_payment",
        "stop_payment.transfer_time",
        at("stop_payment.transfer_time", -timedelta(days=40)),
    ),
    invalid(
        "stop_payment",
        "stop_payment.victim_application",
        setting("stop_payment.victim_application", ""),
    ),
    invalid("freeze", "freeze.method", setting("freeze.method", 0)),
    invalid(
        "freeze",
        "freeze.amount",
        both(
            setting("freeze.method", bank_pb2.FREEZE_METHOD_RECEIVE_ONLY),
            setting("freeze.amount.minor_units", 100),
        ),
    ),
    invalid("freeze", "freeze.start", at("freeze.start", timedelta(days=2))),
    invalid(
        "freeze",
        "freeze.end",
        lambda r: r.freeze.end.FromDatetime(r.freeze.start.ToDatetime() - timedelta(days=1)),
    ),
    invalid("freeze", "freeze.duty_phone", setting("freeze.duty_phone", "")),
    invalid("freeze", "freeze.bulk_count", setting("freeze.bulk_count", 200_000)),
    invalid("freeze_renew", "freeze_renew.end", at("freeze_renew.end", -timedelta(days=1))),
    invalid("monitor_start", "monitor_start.until", at("monitor_start.until", -timedelta(days=1))),
    invalid("monitor_start", "monitor_start.until", at("monitor_start.until", timedelta(days=100))),
    invalid(
        "aggregate_stats", "aggregate_stats.metric", setting("aggregate_stats.metric", "bogus")
    ),
    invalid("aggregate_stats", "aggregate_stats.window", clearing("aggregate_stats.window")),
    invalid("subscriber", "subscriber.phone_number", setting("subscriber.phone_number", "")),
    invalid("subscriber", "subscriber.phone_number", setting("subscriber.phone_number", "12345")),
    invalid(
        "subscriber",
        "subscriber.phone_number",
        setting("subscriber.phone_number", mobile_number("carrier.cucc", 3)),  # another carrier
    ),
    invalid(
        "number_status", "number_status.phone_number", setting("number_status.phone_number", "99")
    ),
    invalid("sim_count", "sim_count.id_number", setting("sim_count.id_number", BAD_ID)),
    invalid("call_records", "call_records.window", clearing("call_records.window")),
    invalid("location", "location.at", at("location.at", timedelta(days=3))),
    invalid("number_suspend", "number_suspend.reason", setting("number_suspend.reason", "")),
    invalid("sms_block", "sms_block.sender", setting("sms_block.sender", "!!")),
    invalid("sms_block", "sms_block.sender", setting("sms_block.sender", "ab")),
    invalid(
        "stop_payment_release",
        "stop_payment_release.reason",
        setting("stop_payment_release.reason", ""),
    ),
    invalid(
        "freeze_release",
        "freeze_release.account_number",
        setting("freeze_release.account_number", BAD_CARD),
    ),
    invalid("case_report", "case_report.reference", setting("case_report.reference", "")),
    invalid(
        "case_report",
        "case_report.accounts[0]",
        lambda r: r.case_report.accounts.insert(0, BAD_CARD),
    ),
    invalid(
        "case_report",
        "case_report.phone_numbers[0]",
        lambda r: r.case_report.phone_numbers.insert(0, "12"),
    ),
    invalid("case_report", "case_report.victim_phone", setting("case_report.victim_phone", "1")),
    invalid(
        "abnormal_account_opening",
        "abnormal_account_opening.id_number",
        setting("abnormal_account_opening.id_number", BAD_ID),
    ),
    invalid(
        "abnormal_account_opening",
        "abnormal_account_opening.opened_at",
        at("abnormal_account_opening.opened_at", timedelta(days=3)),
    ),
    invalid(
        "case_linked_account",
        "case_linked_account.indicator",
        setting("case_linked_account.indicator", ""),
    ),
    invalid(
        "abnormal_event",
        "abnormal_event.event_code",
        setting("abnormal_event.event_code", "bad code!"),
    ),
    invalid("early_warning", "early_warning.risk_level", setting("early_warning.risk_level", 0)),
    invalid("early_warning", "early_warning.risk_level", setting("early_warning.risk_level", 9)),
    invalid(
        "monitored_transaction",
        "monitored_transaction.transaction",
        clearing("monitored_transaction.transaction"),
    ),
    invalid(
        "monitored_transaction",
        "monitored_transaction.transaction.direction",
        setting("monitored_transaction.transaction.direction", "sideways"),
    ),
]

POLICY = [
    Row(
        "policy:freeze_by_a_duty_officer",
        mutated("freeze", setting("officer.role", common_pb2.ROLE_POLICE_DUTY_OFFICER)),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
        rule="police_duty_officer",
    ),
    Row(
        "policy:role_not_granted_to_the_member",
        mutated(
            "account_holder",
            setting("officer.role", common_pb2.ROLE_CENTRE_SUPERVISOR),
            member="police.gz.unit",
            requesting_agency="police.gz.unit",
        ),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
        rule="not granted to member police.gz.unit",
    ),
    Row(
        "policy:an_auditor_asking_for_personal_data",
        mutated(
            "account_holder",
            setting("officer.role", common_pb2.ROLE_AUDITOR),
            member="audit.office",
            requesting_agency="audit.office",
        ),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
    Row(
        "policy:a_bank_asking_a_bank",
        mutated(
            "account_holder",
            setting("officer.role", common_pb2.ROLE_BANK_STAFF),
            member=BANK,
            requesting_agency=BANK,
            target="bank.ccb",
        ),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
    Row(
        "policy:a_police_report",
        mutated("case_report", lambda r: None, member=POLICE, requesting_agency=POLICE),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
    Row(
        "policy:a_bank_query_to_a_carrier",
        mutated("account_holder", lambda r: None, target="carrier.cmcc"),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
    Row(
        "policy:a_query_to_the_police",
        mutated("account_holder", lambda r: None, target="police.gz.unit"),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
    Row(
        "policy:a_query_to_a_revoked_member",
        mutated("subscriber", lambda r: None, target="carrier.ctcc"),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
        rule="'carrier.ctcc' is not in the member registry",
    ),
    Row(
        "policy:a_query_to_an_unknown_member",
        mutated("account_holder", setting("target_agency", "bank.nowhere")),
        SC.PERMISSION_DENIED,
        "POLICY_DENIED",
    ),
]

RULES = [
    Row(
        "rule:freeze:without_case_filing_decision",
        mutated(
            "freeze", setting("legal_document.kind", common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE)
        ),
        SC.PERMISSION_DENIED,
        "RULE_VIOLATED",
        rule="legal_document.accepted_kind",
    ),
    Row(
        "rule:freeze:longer_than_six_months",
        mutated("freeze", at("freeze.end", timedelta(days=200))),
        SC.PERMISSION_DENIED,
        "RULE_VIOLATED",
        rule="freeze.max_six_months",
    ),
    Row(
        "rule:freeze:bulk_without_approval",
        mutated("freeze", both(setting("freeze.bulk_count", 200), clearing("freeze.approval"))),
        SC.PERMISSION_DENIED,
        "RULE_VIOLATED",
        rule="freeze.bulk_requires_approval",
    ),
    _second_officer_cleared("call_records"),
    _second_officer_cleared("location"),
    _citing("stop_payment_release", "stop_payment_release.cites_executed_stop"),
    _citing("stop_payment_extend", "stop_payment_extend.cites_stop_in_force"),
    _citing("freeze_release", "freeze_release.cites_freeze"),
    _citing("freeze_renew", "freeze_renew.cites_freeze_in_force"),
    _citing("monitor_stop", "monitor_stop.cites_monitor_start"),
]

NODE_FAULTS = [
    *[
        Row(
            f"node:{mode}",
            mutated("account_holder", lambda r: None),
            SC.UNAVAILABLE,
            "AGENCY_FAULT",
            leg="node_fault",
            node_mode=mode,
        )
        for mode in (
            "bad_signature",
            "other_hash",
            "refuse",
            "bad_deadline",
            "other_request_id",
            "wrong_result",
            "not_an_answer",
            "unsigned",
            "garbage_answer",
            "empty_reply",
        )
    ],
    Row(
        "node:down",
        mutated("account_holder", lambda r: None, target="bank.ccb"),
        SC.UNAVAILABLE,
        "AGENCY_UNAVAILABLE",
        leg="unavailable",
    ),
]

MASKS = [
    masked_invalid("account_holder", "account_holder.account_number", BAD_CARD),
    masked_invalid("transactions", "transactions.account_number", BAD_CARD),
    masked_invalid("stop_payment", "stop_payment.account_number", BAD_CARD),
    masked_invalid("stop_payment", "stop_payment.payer_account", BAD_CARD),
    masked_invalid("freeze", "freeze.account_number", BAD_CARD),
    masked_invalid("accounts_by_id", "accounts_by_id.id_number", BAD_ID),
    masked_invalid("sim_count", "sim_count.id_number", BAD_ID),
    masked_invalid("account_holder", "officer.id_number", BAD_ID),
    masked_invalid("subscriber", "subscriber.phone_number", "19912345678"),
    masked_invalid("call_records", "call_records.phone_number", "19912345678"),
    masked_invalid("account_holder", "officer.phone", "1381234567"),
]

TABLE = [
    *ENVELOPES,
    *SIGNATURES,
    *FRESHNESS,
    *HEADER,
    *ACTIONS,
    *POLICY,
    *RULES,
    *NODE_FAULTS,
    *MASKS,
]


def test_the_table_has_at_least_150_rows() -> None:
    assert len(TABLE) >= 150


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("row", TABLE, ids=[f"{i:03d}-{row.id}" for i, row in enumerate(TABLE)])
async def test_hostile_row(harness: GatewayHarness, row: Row) -> None:
    sent = row.build(harness)
    seen = len(harness.node.received)
    harness.node.mode = row.node_mode
    try:
        payload = sent.payload if isinstance(sent.payload, bytes) else submit_bytes(sent.payload)
        refusal = await harness.refusal(payload, member=sent.member)
    finally:
        harness.node.mode = "ok"
    assert (refusal.code, refusal.error.reason) == (row.code, row.reason), refusal.error.message
    entry = await harness.last_entry()
    if row.leg == "request":
        assert isinstance(entry, RequestLeg), entry
        assert entry.decision == "refused"
        assert entry.peer == sent.member
        assert entry.rule.startswith(f"{row.reason}: "), entry.rule
        assert row.rule in entry.rule, entry.rule
        assert len(harness.node.received) == seen, "a refused request reached the node"
        text = entry.rule
    else:
        assert isinstance(entry, ResponseLeg), entry
        assert entry.status == row.leg
        assert entry.detail.startswith(f"{row.reason}: ") or row.leg == "node_fault", entry.detail
        text = entry.detail
    if row.fields:
        assert isinstance(refusal.error, InvalidArgument)
        named = [v.field for v in refusal.error.violations]
        for expected in row.fields:
            assert any(f == expected or f.startswith(expected + ".") for f in named), named
    for secret in sent.secrets:
        assert secret not in text, text
        assert secret not in refusal.error.message, refusal.error.message
        for violation in getattr(refusal.error, "violations", ()):
            assert secret not in violation.description
