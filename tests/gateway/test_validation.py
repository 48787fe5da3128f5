"""Tests for gateway.pipeline.validation: valid requests pass, bad fields are named, no leaks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.message import DecodeError as ProtoDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.actions import ACTIONS, REPORT_ACTIONS, new_request_id
from fedgate.errors import InvalidArgument
from fedgate.testing import (
    card_number,
    mobile_number,
    officer,
    resident_id,
    valid_request,
)
from fedgate.v1 import bank_pb2, common_pb2, request_pb2
from fedgate.validate import (
    BANK_BINS,
    CARRIER_PREFIXES,
    bank_of_card,
    luhn_check_digit,
    luhn_valid,
    resident_id_check_digit,
    resident_id_valid,
)
from gateway.pipeline._fields import uuid_valid
from gateway.pipeline.validation import CITING_ACTIONS, mask, subjects_of, validate_request

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)

Mutate = Callable[[request_pb2.Request], object]


def violations(request: request_pb2.Request, now: datetime = NOW) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_request(request, now=now)
    return caught.value


def fields_of(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]


def ts(message: object, field: str, at: datetime) -> None:
    getattr(message, field).FromDatetime(at)


class TestValidRequests:
    @pytest.mark.parametrize("action", sorted(ACTIONS))
    def test_every_action_has_a_valid_request(self, action: str) -> None:
        request = valid_request(action, now=NOW)
        assert request.WhichOneof("action") == action
        validate_request(request, now=NOW)

    @pytest.mark.parametrize("target", sorted(BANK_BINS))
    @pytest.mark.parametrize("action", ["account_holder", "stop_payment", "freeze"])
    def test_every_bank_target(self, action: str, target: str) -> None:
        validate_request(valid_request(action, now=NOW, target=target), now=NOW)

    @pytest.mark.parametrize("target", sorted(CARRIER_PREFIXES))
    @pytest.mark.parametrize("action", ["subscriber", "call_records", "number_suspend"])
    def test_every_carrier_target(self, action: str, target: str) -> None:
        validate_request(valid_request(action, now=NOW, target=target), now=NOW)

    @pytest.mark.parametrize("action", sorted(REPORT_ACTIONS))
    def test_reports_need_no_case_number(self, action: str) -> None:
        request = valid_request(action, now=NOW)
        request.case.case_number = ""
        validate_request(request, now=NOW)

    def test_a_landline_is_a_valid_officer_phone(self) -> None:
        request = valid_request("account_holder", now=NOW)
        request.officer.phone = "02083113110"
        validate_request(request, now=NOW)

    def test_answer_deadline_is_optional(self) -> None:
        request = valid_request("transactions", now=NOW)
        request.ClearField("answer_deadline")
        validate_request(request, now=NOW)

    def test_bulk_count_zero_means_one(self) -> None:
        request = valid_request("freeze", now=NOW)
        request.freeze.bulk_count = 0
        validate_request(request, now=NOW)

    def test_receive_only_freeze_needs_no_amount(self) -> None:
        request = valid_request("freeze", now=NOW)
        request.freeze.method = bank_pb2.FREEZE_METHOD_RECEIVE_ONLY
        request.freeze.ClearField("amount")
        validate_request(request, now=NOW)

    def test_naive_now_is_a_programming_error(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            validate_request(valid_request("subscriber", now=NOW), now=NOW.replace(tzinfo=None))

    @settings(max_examples=60, deadline=None)
    @given(
        action=st.sampled_from(sorted(ACTIONS)),
        now=st.datetimes(
            min_value=datetime(2001, 1, 1), max_value=datetime(2098, 1, 1), timezones=st.just(UTC)
        ),
        serial=st.integers(min_value=0, max_value=10**6),
    )
    def test_generated_requests_pass(self, action: str, now: datetime, serial: int) -> None:
        validate_request(valid_request(action, now=now, serial=serial), now=now)


# --------------------------------------------------------------------------- the table

CARD_BAD_LUHN = "6222020031415926538"  # card_number("bank.icbc", 0) with the last digit off
_ID = resident_id(3)
ID_BAD_CHECK = _ID[:-1] + ("1" if _ID[-1] == "0" else "0")  # a wrong GB 11643 check character
ID_BAD_CHECK = "440106198805170105"
MOBILE_CUCC = "13012345678"
LONG = "案" * 501


def _set(path: str, value: object) -> Mutate:
    def mutate(request: request_pb2.Request) -> None:
        *parents, last = path.split(".")
        target: object = request
        for p in parents:
            target = getattr(target, p)
        setattr(target, last, value)

    return mutate


def _clear(path: str) -> Mutate:
    def mutate(request: request_pb2.Request) -> None:
        *parents, last = path.split(".")
        target: object = request
        for p in parents:
            target = getattr(target, p)
        target.ClearField(last)  # type: ignore[attr-defined]

    return mutate


def _time(path: str, delta: timedelta) -> Mutate:
    def mutate(request: request_pb2.Request) -> None:
        *parents, last = path.split(".")
        target: object = request
        for p in parents:
            target = getattr(target, p)
        getattr(target, last).FromDatetime(NOW + delta)

    return mutate


def _both(*mutations: Mutate) -> Mutate:
    def mutate(request: request_pb2.Request) -> None:
        for m in mutations:
            m(request)

    return mutate


def _append(path: str, value: str) -> Mutate:
    def mutate(request: request_pb2.Request) -> None:
        *parents, last = path.split(".")
        target: object = request
        for p in parents:
            target = getattr(target, p)
        getattr(target, last).append(value)

    return mutate


def case(
    action: str, mutate: Mutate, field: str, *, secret: str = "", target: str | None = None
) -> object:
    """One invalid request: ``field`` must be the one violation; ``secret`` must not leak."""
    return pytest.param(action, mutate, field, secret, target, id=f"{action}:{field}")


INVALID = [
    # header: ids, nonce, time, members
    case("account_holder", _set("request_id", "not-a-uuid"), "request_id"),
    case("account_holder", _set("request_id", str(uuid.uuid4())), "request_id"),
    case(
        "account_holder",
        _set("request_id", "0195E0F4-1C2B-7A3D-8E4F-5A6B7C8D9E0F"),
        "request_id",
    ),
    case("account_holder", _set("nonce", b"\x00" * 8), "nonce"),
    case("account_holder", _clear("issued_at"), "issued_at"),
    case("account_holder", _set("requesting_agency", "Police_GD"), "requesting_agency"),
    case("account_holder", _set("target_agency", ""), "target_agency"),
    # officer
    case("account_holder", _set("officer.id", "12"), "officer.id"),
    case("account_holder", _set("officer.id", "4401 00123"), "officer.id"),
    case("account_holder", _set("officer.name", "  "), "officer.name"),
    case("account_holder", _set("officer.name", "名" * 65), "officer.name"),
    case("account_holder", _set("officer.role", common_pb2.ROLE_UNSPECIFIED), "officer.role"),
    case("account_holder", _set("officer.role", 99), "officer.role"),
    case(
        "account_holder",
        _set("officer.id_number", ID_BAD_CHECK),
        "officer.id_number",
        secret=ID_BAD_CHECK,
    ),
    case("account_holder", _set("officer.phone", "1234567"), "officer.phone"),
    case("call_records", _set("second_officer.name", ""), "second_officer.name"),
    case("location", _set("second_officer.id", "x"), "second_officer.id"),
    # case and legal document
    case("transactions", _set("case.case_number", "A4401002026110001"), "case.case_number"),
    case("transactions", _set("case.case_number", ""), "case.case_number"),
    case("transactions", _set("case.case_type", 0), "case.case_type"),
    case("transactions", _set("case.reason", LONG), "case.reason"),
    case("case_report", _set("case.case_number", "A123"), "case.case_number"),
    case("transactions", _set("legal_document.kind", 0), "legal_document.kind"),
    case(
        "transactions",
        _set("legal_document.kind", common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT),
        "legal_document.kind",
    ),
    case("transactions", _set("legal_document.number", ""), "legal_document.number"),
    case(
        "transactions",
        _time("legal_document.issued_at", timedelta(days=3)),
        "legal_document.issued_at",
    ),
    # urgency, purpose, deadline, cited order
    case("subscriber", _set("urgency", 0), "urgency"),
    case("subscriber", _set("purpose", ""), "purpose"),
    case("subscriber", _set("purpose", LONG), "purpose"),
    case("subscriber", _time("answer_deadline", -timedelta(minutes=1)), "answer_deadline"),
    case("subscriber", _time("answer_deadline", timedelta(days=31)), "answer_deadline"),
    *(
        case(a, _set("original_request_id", ""), "original_request_id")
        for a in sorted(CITING_ACTIONS)
    ),
    case("freeze_release", _set("original_request_id", "abc"), "original_request_id"),
    case("subscriber", _set("original_request_id", str(uuid.uuid4())), "original_request_id"),
    # cards
    case(
        "account_holder",
        _set("account_holder.account_number", CARD_BAD_LUHN),
        "account_holder.account_number",
        secret=CARD_BAD_LUHN,
    ),
    case(
        "account_holder",
        _set("account_holder.account_number", "622202123456789"),
        "account_holder.account_number",
        secret="622202123456789",
    ),
    case(
        "account_holder",
        _set("account_holder.account_number", "62220200314159265a"),
        "account_holder.account_number",
        secret="62220200314159265a",
    ),
    case(
        "account_holder", _set("account_holder.account_number", ""), "account_holder.account_number"
    ),
    case(
        "account_holder",
        _set("account_holder.account_number", card_number("bank.icbc", 5)),
        "account_holder.account_number",
        secret=card_number("bank.icbc", 5),
        target="bank.ccb",
    ),
    case(
        "stop_payment",
        _set("stop_payment.payer_account", CARD_BAD_LUHN),
        "stop_payment.payer_account",
        secret=CARD_BAD_LUHN,
    ),
    # names and money
    case("stop_payment", _set("stop_payment.account_name", ""), "stop_payment.account_name"),
    case("stop_payment", _set("stop_payment.payer_name", "名" * 65), "stop_payment.payer_name"),
    case("stop_payment", _set("stop_payment.payer_bank", ""), "stop_payment.payer_bank"),
    case("stop_payment", _clear("stop_payment.amount"), "stop_payment.amount"),
    case(
        "stop_payment", _set("stop_payment.amount.currency", "cny"), "stop_payment.amount.currency"
    ),
    case(
        "stop_payment", _set("stop_payment.amount.currency", "RMB"), "stop_payment.amount.currency"
    ),
    case(
        "stop_payment",
        _set("stop_payment.amount.minor_units", 0),
        "stop_payment.amount.minor_units",
    ),
    case(
        "stop_payment",
        _set("stop_payment.amount.minor_units", -5),
        "stop_payment.amount.minor_units",
    ),
    case(
        "stop_payment",
        _set("stop_payment.amount.minor_units", 10**13 + 1),
        "stop_payment.amount.minor_units",
    ),
    case(
        "stop_payment",
        _time("stop_payment.transfer_time", timedelta(hours=1)),
        "stop_payment.transfer_time",
    ),
    case(
        "stop_payment",
        _time("stop_payment.transfer_time", -timedelta(days=31)),
        "stop_payment.transfer_time",
    ),
    case("stop_payment", _clear("stop_payment.transfer_time"), "stop_payment.transfer_time"),
    case(
        "stop_payment",
        _set("stop_payment.victim_application", ""),
        "stop_payment.victim_application",
    ),
    case(
        "stop_payment_release",
        _set("stop_payment_release.reason", ""),
        "stop_payment_release.reason",
    ),
    case(
        "stop_payment_extend",
        _set("stop_payment_extend.reason", LONG),
        "stop_payment_extend.reason",
    ),
    # windows and pages
    case(
        "transactions",
        _time("transactions.window.end", -timedelta(days=40)),
        "transactions.window.end",
    ),
    case(
        "transactions",
        _time("transactions.window.start", -timedelta(days=400)),
        "transactions.window",
    ),
    case(
        "transactions",
        _time("transactions.window.end", timedelta(days=2)),
        "transactions.window.end",
    ),
    case("transactions", _clear("transactions.window"), "transactions.window"),
    case("transactions", _clear("transactions.window.start"), "transactions.window.start"),
    case(
        "transactions",
        _set("transactions.window.end.nanos", 2_000_000_000),
        "transactions.window.end",
    ),
    case("transactions", _set("transactions.page.page_size", 501), "transactions.page.page_size"),
    case("transactions", _set("transactions.page.page_size", -1), "transactions.page.page_size"),
    case("login_records", _clear("login_records.window.end"), "login_records.window.end"),
    case(
        "call_records",
        _time("call_records.window.end", timedelta(days=3)),
        "call_records.window.end",
    ),
    case("aggregate_stats", _set("aggregate_stats.metric", "balances"), "aggregate_stats.metric"),
    # resident ids
    case(
        "accounts_by_id",
        _set("accounts_by_id.id_number", ID_BAD_CHECK),
        "accounts_by_id.id_number",
        secret=ID_BAD_CHECK,
    ),
    case(
        "sim_count",
        _set("sim_count.id_number", "44010619880532010X"),
        "sim_count.id_number",
        secret="44010619880532010X",
    ),
    case("sim_count", _set("sim_count.id_number", ""), "sim_count.id_number"),
    # freeze
    case("freeze", _set("freeze.method", 0), "freeze.method"),
    case("freeze", _clear("freeze.amount"), "freeze.amount"),
    case(
        "freeze",
        _set("freeze.method", bank_pb2.FREEZE_METHOD_RECEIVE_ONLY),
        "freeze.amount",
    ),
    case("freeze", _time("freeze.end", -timedelta(days=1)), "freeze.end"),
    case("freeze", _set("freeze.duty_phone", ""), "freeze.duty_phone"),
    case("freeze", _set("freeze.duty_phone", "110"), "freeze.duty_phone"),
    case("freeze", _set("freeze.bulk_count", -1), "freeze.bulk_count"),
    case(
        "freeze",
        lambda r: r.freeze.approval.approver.CopyFrom(officer(9)),
        "freeze.approval.document_number",
    ),
    case(
        "freeze",
        _both(
            _set("freeze.approval.document_number", "审〔2026〕1号"),
            lambda r: r.freeze.approval.approver.CopyFrom(
                officer(9, role=common_pb2.ROLE_UNSPECIFIED)
            ),
        ),
        "freeze.approval.approver.role",
    ),
    case("freeze_renew", _time("freeze_renew.end", -timedelta(hours=1)), "freeze_renew.end"),
    case("freeze_renew", _clear("freeze_renew.end"), "freeze_renew.end"),
    case("monitor_start", _time("monitor_start.until", -timedelta(hours=1)), "monitor_start.until"),
    case("monitor_start", _time("monitor_start.until", timedelta(days=91)), "monitor_start.until"),
    # mobiles
    case(
        "subscriber",
        _set("subscriber.phone_number", "139123456789"),
        "subscriber.phone_number",
        secret="139123456789",
    ),
    case(
        "subscriber",
        _set("subscriber.phone_number", "12012345678"),
        "subscriber.phone_number",
        secret="12012345678",
    ),
    case(
        "number_status",
        _set("number_status.phone_number", MOBILE_CUCC),
        "number_status.phone_number",
        secret=MOBILE_CUCC,
    ),
    case("location", _clear("location.at"), "location.at"),
    case("location", _time("location.at", timedelta(days=2)), "location.at"),
    case("number_suspend", _set("number_suspend.reason", ""), "number_suspend.reason"),
    case("number_block", _set("number_block.phone_number", ""), "number_block.phone_number"),
    case("sms_block", _set("sms_block.sender", "95"), "sms_block.sender"),
    case("sms_block", _set("sms_block.sender", "ICBC-95588"), "sms_block.sender"),
    case("sms_block", _set("sms_block.sender", "1" * 21), "sms_block.sender"),
    # reports
    case("case_report", _set("case_report.reference", ""), "case_report.reference"),
    case(
        "case_report",
        _set("case_report.victim_phone", "1301234567"),
        "case_report.victim_phone",
        secret="1301234567",
    ),
    case(
        "case_report",
        _append("case_report.accounts", CARD_BAD_LUHN),
        "case_report.accounts[1]",
        secret=CARD_BAD_LUHN,
    ),
    case(
        "case_report",
        _append("case_report.phone_numbers", "10012345678"),
        "case_report.phone_numbers[1]",
        secret="10012345678",
    ),
    case(
        "case_report",
        _set("case_report.amount.currency", "XX"),
        "case_report.amount.currency",
    ),
    case(
        "abnormal_account_opening",
        _set("abnormal_account_opening.id_number", ""),
        "abnormal_account_opening.id_number",
    ),
    case(
        "abnormal_account_opening",
        _time("abnormal_account_opening.opened_at", timedelta(hours=2)),
        "abnormal_account_opening.opened_at",
    ),
    case(
        "case_linked_account",
        _set("case_linked_account.case_number", "B44010000000020260300001"),
        "case_linked_account.case_number",
    ),
    case(
        "case_linked_account",
        _set("case_linked_account.account_number", ""),
        "case_linked_account.account_number",
    ),
    case("abnormal_event", _set("abnormal_event.event_code", ""), "abnormal_event.event_code"),
    case(
        "abnormal_event",
        _set("abnormal_event.subject", "hello world"),
        "abnormal_event.subject",
    ),
    case(
        "early_warning",
        _set("early_warning.subject", "12345678901"),
        "early_warning.subject",
        secret="12345678901",
    ),
    case("early_warning", _set("early_warning.risk_level", 0), "early_warning.risk_level"),
    case("early_warning", _set("early_warning.risk_level", 6), "early_warning.risk_level"),
    case("early_warning", _clear("early_warning.contact_time"), "early_warning.contact_time"),
    case(
        "monitored_transaction",
        _set("monitored_transaction.monitor_request_id", "x"),
        "monitored_transaction.monitor_request_id",
    ),
    case(
        "monitored_transaction",
        _clear("monitored_transaction.transaction"),
        "monitored_transaction.transaction",
    ),
    case(
        "monitored_transaction",
        _set("monitored_transaction.transaction.direction", "sideways"),
        "monitored_transaction.transaction.direction",
    ),
    case(
        "monitored_transaction",
        _set("monitored_transaction.transaction.amount.minor_units", 0),
        "monitored_transaction.transaction.amount.minor_units",
    ),
    # refunds (资金返还)
    case(
        "refund",
        _set("refund.victim_account", CARD_BAD_LUHN),
        "refund.victim_account",
        secret=CARD_BAD_LUHN,
    ),
    case("refund", _set("refund.victim_name", " "), "refund.victim_name"),
    case("refund", _set("refund.victim_bank", ""), "refund.victim_bank"),
    case("refund", _clear("refund.amount"), "refund.amount"),
    case("refund", _set("refund.amount.minor_units", 0), "refund.amount.minor_units"),
    case("refund", _set("refund.amount.minor_units", -5), "refund.amount.minor_units"),
    case("refund", _clear("refund.reported_loss"), "refund.reported_loss"),
    case(
        "refund",
        _set("refund.reported_loss.currency", "USD"),
        "refund.reported_loss.currency",
    ),
    case("refund", _set("refund.victim_application", ""), "refund.victim_application"),
    case("refund", _set("original_request_id", ""), "original_request_id"),
    # appeals (Art. 32)
    case("appeal", _set("appeal.appellant_name", ""), "appeal.appellant_name"),
    case(
        "appeal",
        _set("appeal.appellant_id_number", ID_BAD_CHECK),
        "appeal.appellant_id_number",
        secret=ID_BAD_CHECK,
    ),
    case("appeal", _set("appeal.appellant_phone", ""), "appeal.appellant_phone"),
    case("appeal", _set("appeal.subject", "12345678901"), "appeal.subject", secret="12345678901"),
    case("appeal", _set("appeal.grounds", "理" * 2001), "appeal.grounds"),
    case("appeal", _time("appeal.received_at", timedelta(hours=2)), "appeal.received_at"),
    case("appeal", _set("appeal.recorded_by", ""), "appeal.recorded_by"),
    case("appeal", _set("original_request_id", "x"), "original_request_id"),
    case("appeal_decision", _set("appeal_decision.appeal_id", "x"), "appeal_decision.appeal_id"),
    case("appeal_decision", _set("appeal_decision.outcome", 0), "appeal_decision.outcome"),
    case("appeal_decision", _set("appeal_decision.outcome", 9), "appeal_decision.outcome"),
    case("appeal_decision", _set("appeal_decision.reason", ""), "appeal_decision.reason"),
    case(
        "appeal_decision",
        _set("appeal_decision.outcome", 2),
        "appeal_decision.lift_request_id",
    ),
    case(
        "appeal_decision",
        _set("appeal_decision.lift_request_id", str(uuid.uuid4())),
        "appeal_decision.lift_request_id",
    ),
    case("appeal_decision", _set("target_agency", "police.gd.afc"), "target_agency"),
]


class TestInvalidFields:
    @pytest.mark.parametrize(("action", "mutate", "field", "secret", "target"), INVALID)
    def test_the_field_is_named_and_nothing_leaks(
        self, action: str, mutate: Mutate, field: str, secret: str, target: str | None
    ) -> None:
        request = valid_request(action, now=NOW, target=target)
        mutate(request)
        error = violations(request)
        assert fields_of(error) == [field]
        if secret:
            assert secret not in error.message
            for v in error.violations:
                assert secret not in v.description
                assert mask(secret) in v.description or len(secret) < 11

    def test_every_violation_is_reported_at_once(self) -> None:
        request = valid_request("stop_payment", now=NOW)
        request.nonce = b""
        request.officer.name = ""
        request.stop_payment.payer_account = CARD_BAD_LUHN
        request.stop_payment.amount.currency = "cny"
        error = violations(request)
        assert fields_of(error) == [
            "nonce",
            "officer.name",
            "stop_payment.payer_account",
            "stop_payment.amount.currency",
        ]
        assert "invalid field(s) nonce, officer.name" in error.message

    def test_carrier_mismatch_names_both_carriers(self) -> None:
        request = valid_request("call_records", now=NOW, target="carrier.cucc")
        number = mobile_number("carrier.cmcc", 3)
        request.call_records.phone_number = number
        error = violations(request)
        (v,) = error.violations
        assert v.field == "call_records.phone_number"
        assert v.description == f"number {mask(number)} belongs to carrier.cmcc, not carrier.cucc"

    def test_bank_mismatch_names_both_banks(self) -> None:
        request = valid_request("freeze", now=NOW, target="bank.abc")
        number = card_number("bank.gzrcb", 3)
        request.freeze.account_number = number
        (v,) = violations(request).violations
        assert v.description == f"card {mask(number)} belongs to bank.gzrcb, not bank.abc"

    def test_card_of_a_bank_outside_the_federation_is_accepted(self) -> None:
        request = valid_request("account_holder", now=NOW)
        body = "955880" + "123456789012"
        request.account_holder.account_number = body + luhn_check_digit(body)
        validate_request(request, now=NOW)

    def test_request_without_action(self) -> None:
        request = valid_request("subscriber", now=NOW)
        request.ClearField("subscriber")
        assert fields_of(violations(request)) == ["action"]

    def test_original_request_id_must_not_cite_itself(self) -> None:
        request = valid_request("monitor_stop", now=NOW)
        request.original_request_id = request.request_id
        assert fields_of(violations(request)) == ["original_request_id"]

    def test_a_refund_to_the_frozen_account_itself(self) -> None:
        request = valid_request("refund", now=NOW)
        request.refund.victim_account = request.refund.account_number
        (v,) = violations(request).violations
        assert (v.field, v.description) == (
            "refund.victim_account",
            "must differ from account_number (the frozen account)",
        )

    def test_an_appeal_needs_no_case_number(self) -> None:
        request = valid_request("appeal", now=NOW)
        request.case.case_number = ""
        validate_request(request, now=NOW)

    def test_a_person_without_a_resident_id_is_fine(self) -> None:
        request = valid_request("subscriber", now=NOW)
        request.officer.id_number = ""
        request.officer.phone = ""
        validate_request(request, now=NOW)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(digits=st.text(alphabet="0123456789", min_size=8, max_size=22))
    def test_card_fields_accept_exactly_luhn_numbers_of_16_to_19_digits(self, digits: str) -> None:
        request = valid_request("account_holder", now=NOW)
        request.account_holder.account_number = digits
        issuer = bank_of_card(digits)
        expected = 16 <= len(digits) <= 19 and luhn_valid(digits) and issuer in (None, "bank.icbc")
        if expected:
            validate_request(request, now=NOW)
            return
        error = violations(request)
        assert fields_of(error) == ["account_holder.account_number"]
        assert digits not in error.violations[0].description

    @settings(max_examples=200, deadline=None)
    @given(first17=st.text(alphabet="0123456789", min_size=17, max_size=17), wrong=st.booleans())
    def test_resident_ids_follow_gb_11643(self, first17: str, wrong: bool) -> None:
        check = resident_id_check_digit(first17)
        if wrong:
            check = "0" if check != "0" else "1"
        number = first17 + check
        request = valid_request("sim_count", now=NOW)
        request.sim_count.id_number = number
        if resident_id_valid(number, today=NOW.date()):
            assert not wrong
            validate_request(request, now=NOW)
        else:
            error = violations(request)
            assert fields_of(error) == ["sim_count.id_number"]
            assert number not in error.violations[0].description

    @settings(max_examples=200, deadline=None)
    @given(digits=st.text(alphabet="0123456789", min_size=11, max_size=11))
    def test_phone_fields_accept_numbers_of_the_target_carrier_only(self, digits: str) -> None:
        request = valid_request("subscriber", now=NOW, target="carrier.ctcc")
        request.subscriber.phone_number = digits
        if digits[:3] in CARRIER_PREFIXES["carrier.ctcc"]:
            validate_request(request, now=NOW)
        else:
            error = violations(request)
            assert fields_of(error) == ["subscriber.phone_number"]
            assert digits not in error.message

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        action=st.sampled_from(sorted(ACTIONS)),
        data=st.data(),
    )
    def test_corrupted_requests_raise_only_invalid_argument(
        self, action: str, data: st.DataObject
    ) -> None:
        body = bytearray(valid_request(action, now=NOW).SerializeToString())
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            i = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
            body[i] = data.draw(st.integers(min_value=0, max_value=255))
        try:
            request = request_pb2.Request.FromString(bytes(body))
        except ProtoDecodeError:
            return  # refused by the decode stage, before validation
        errors: list[InvalidArgument] = []
        try:
            validate_request(request, now=NOW)
        except InvalidArgument as caught:
            errors.append(caught)
        for refused in errors:
            assert refused.violations
            assert all(v.field for v in refused.violations)
            assert all(v.description for v in refused.violations)


class TestMask:
    @pytest.mark.parametrize(
        ("value", "masked"),
        [
            ("6222020031415926539", "622****6539"),
            ("13912345678", "139****5678"),
            ("440106198805170106", "440****0106"),
            ("1234567890", "12****90"),
            ("1234567", "****"),
            ("", "****"),
        ],
    )
    def test_mask(self, value: str, masked: str) -> None:
        assert mask(value) == masked


class TestSubjects:
    def test_stop_payment_names_both_accounts(self) -> None:
        request = valid_request("stop_payment", now=NOW)
        assert subjects_of(request) == (
            request.stop_payment.account_number,
            request.stop_payment.payer_account,
        )

    def test_case_report_names_every_account_and_number_once(self) -> None:
        request = valid_request("case_report", now=NOW)
        report = request.case_report
        report.phone_numbers.append(report.victim_phone)
        assert subjects_of(request) == (
            report.victim_phone,
            *report.accounts,
            report.phone_numbers[0],
        )

    @pytest.mark.parametrize(
        ("action", "field"),
        [
            ("accounts_by_id", "id_number"),
            ("sim_count", "id_number"),
            ("subscriber", "phone_number"),
            ("sms_block", "sender"),
            ("freeze", "account_number"),
        ],
    )
    def test_single_subject(self, action: str, field: str) -> None:
        request = valid_request(action, now=NOW)
        assert subjects_of(request) == (getattr(getattr(request, action), field),)

    def test_monitored_transaction_names_the_counterparty(self) -> None:
        request = valid_request("monitored_transaction", now=NOW)
        pushed = request.monitored_transaction
        assert subjects_of(request) == (
            pushed.account_number,
            pushed.transaction.counterparty_account,
        )

    def test_no_subjects(self) -> None:
        assert subjects_of(valid_request("aggregate_stats", now=NOW)) == ()
        assert subjects_of(request_pb2.Request()) == ()

    @pytest.mark.parametrize("action", sorted(ACTIONS))
    def test_every_action_has_its_subjects_listed(self, action: str) -> None:
        subjects = subjects_of(valid_request(action, now=NOW))
        assert all(subjects)
        assert (action in ("aggregate_stats", "approval", "appeal_decision")) == (subjects == ())


class TestFactory:
    def test_numbers_belong_to_their_issuers(self) -> None:
        for bank in BANK_BINS:
            assert bank_of_card(card_number(bank, 42)) == bank
        assert resident_id_valid(resident_id(7), today=NOW.date())

    def test_distinct_serials_give_distinct_numbers(self) -> None:
        assert len({card_number("bank.ccb", i) for i in range(1000)}) == 1000
        assert len({mobile_number("carrier.cucc", i) for i in range(1000)}) == 1000

    def test_requests_are_fresh_each_time(self) -> None:
        a, b = valid_request("stop_payment", now=NOW), valid_request("stop_payment", now=NOW)
        assert a.request_id != b.request_id
        assert a.nonce != b.nonce
        assert a.stop_payment.account_number == b.stop_payment.account_number

    def test_unknown_action(self) -> None:
        with pytest.raises(ValueError, match="unknown action"):
            valid_request("teleport", now=NOW)


class TestWorkflowLink:
    """``chase_id`` and ``parent_request_id`` (issue 11) are optional, well formed when set;
    a fan-out's ``target_set`` belongs on ``GatewayService.FanOut``, not ``Submit``."""

    def test_a_linked_request_is_valid(self) -> None:
        request = valid_request("transactions", now=NOW)
        request.chase_id = str(uuid.uuid4())
        request.parent_request_id = str(uuid.uuid4())
        validate_request(request, now=NOW)

    @pytest.mark.parametrize(
        ("chase", "parent", "fields"),
        [
            ("not-a-uuid", "", ["chase_id"]),
            ("", "", []),
            (None, "x", ["parent_request_id"]),
            ("", None, ["chase_id"]),
            (None, "self", ["parent_request_id"]),
        ],
    )
    def test_malformed_links_are_named(
        self, chase: str | None, parent: str | None, fields: list[str]
    ) -> None:
        request = valid_request("stop_payment", now=NOW)
        request.chase_id = str(uuid.uuid4()) if chase is None else chase
        if parent == "self":
            request.parent_request_id = request.request_id
        else:
            request.parent_request_id = str(uuid.uuid4()) if parent is None else parent
        if not fields:
            validate_request(request, now=NOW)
            return
        assert fields_of(violations(request)) == fields

    def test_a_target_set_is_not_for_submit(self) -> None:
        request = valid_request("accounts_by_id", now=NOW)
        request.target_set.group = request_pb2.TARGET_GROUP_ALL_BANKS
        assert fields_of(violations(request)) == ["target_set"]


_HITS = request_pb2.DISCLOSURE_STAGE_HITS
_DETAILS = request_pb2.DISCLOSURE_STAGE_DETAILS


class TestDisclosure:
    """``disclosure`` (staged disclosure, issue 15): a stage only on a hit-capable query;
    stage 2 cites an earlier request, stage 1 cites nothing."""

    @pytest.mark.parametrize("action", ["accounts_by_id", "sim_count"])
    def test_both_stages_are_valid(self, action: str) -> None:
        hits = valid_request(action, now=NOW)
        hits.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
        validate_request(hits, now=NOW)
        details = valid_request(action, now=NOW)
        details.disclosure.stage = request_pb2.DISCLOSURE_STAGE_DETAILS
        details.disclosure.hits_request_id = hits.request_id
        validate_request(details, now=NOW)

    @pytest.mark.parametrize(
        ("action", "stage", "cited", "fields"),
        [
            ("account_holder", _HITS, "", ["disclosure.stage"]),
            ("stop_payment", _DETAILS, None, ["disclosure.stage"]),
            ("accounts_by_id", request_pb2.DISCLOSURE_STAGE_UNSPECIFIED, "", ["disclosure.stage"]),
            ("accounts_by_id", 7, "", ["disclosure.stage"]),
            ("accounts_by_id", _HITS, None, ["disclosure.hits_request_id"]),
            ("sim_count", _DETAILS, "", ["disclosure.hits_request_id"]),
            ("sim_count", _DETAILS, "x", ["disclosure.hits_request_id"]),
            ("sim_count", _DETAILS, "self", ["disclosure.hits_request_id"]),
        ],
    )
    def test_malformed_stages_are_named(
        self, action: str, stage: int, cited: str | None, fields: list[str]
    ) -> None:
        request = valid_request(action, now=NOW)
        request.disclosure.stage = stage  # type: ignore[assignment]
        if cited == "self":
            request.disclosure.hits_request_id = request.request_id
        else:
            request.disclosure.hits_request_id = str(uuid.uuid4()) if cited is None else cited
        assert fields_of(violations(request)) == fields


def _uuid_valid_by_parsing(value: str, version: int | None) -> bool:
    """The definition ``uuid_valid`` keeps: what ``uuid.UUID`` parses, printed back the same,
    of the RFC 4122 variant and the version asked."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    if str(parsed) != value or parsed.variant != uuid.RFC_4122:
        return False
    return version is None or parsed.version == version


def _spellings(u: uuid.UUID) -> list[str]:
    text = str(u)
    return [
        text,
        text.upper(),
        "".join(c.upper() if i % 2 else c for i, c in enumerate(text)),  # mixed case
        text.replace("-", ""),
        "{" + text + "}",
        "urn:uuid:" + text,
        text[:-1],
        text + "0",
        text + "\n",  # what ``$`` (not ``fullmatch``) would let through
        text.replace("-", "_", 1),
        " " + text,
        text[:9] + "١" + text[10:],  # a non-ASCII digit int() would read
    ]


class TestUuidValid:
    @given(
        st.integers(min_value=0, max_value=2**128 - 1),
        st.sampled_from([None, 0, 1, 4, 7, 8, 10, 15, 16, -1]),
    )
    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    def test_same_answers_as_parsing_with_uuid_module(self, n: int, version: int | None) -> None:
        for value in _spellings(uuid.UUID(int=n)):
            assert uuid_valid(value, version=version) == _uuid_valid_by_parsing(value, version)

    @given(st.text(alphabet="0123456789abcdefABCDEF-{}xyz_", max_size=40))
    def test_same_answers_on_arbitrary_text(self, value: str) -> None:
        for version in (None, 7):
            assert uuid_valid(value, version=version) == _uuid_valid_by_parsing(value, version)

    def test_request_ids_are_version_7_of_the_rfc_variant(self) -> None:
        request_id = new_request_id()
        assert uuid_valid(request_id, version=7)
        assert not uuid_valid(request_id, version=4)
        assert not uuid_valid(request_id[:19] + "c" + request_id[20:])  # another variant
