"""The police CLI: ``fedgate query``, ``fedgate order``, ``fedgate ticket``.

Requests are inspected through ``--dry-run`` (the signed request as JSON) and through the
stand-in gateway of ``conftest.py``, which answers over real mTLS with genuinely signed,
countersigned and logged answers, so verification, rendering and exit codes are real.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from fedgate import errors
from fedgate.client import Answer, verify_signed_response
from fedgate.commands import order, query
from fedgate.commands._police import (
    ExitCode,
    SentStore,
    exit_code_for_refusal,
    exit_code_for_status,
    failure_outcome,
    parse_amount,
    parse_duration,
    parse_request_id,
    parse_time,
)
from fedgate.envelope import Domain, decode_request, verify_envelope
from fedgate.errors import FedgateError, FieldViolation
from fedgate.note import Note, parse_note
from fedgate.registry import Registry
from fedgate.render import CST, Outcome, format_money, format_time, render_json, render_text
from fedgate.testing import (
    card_number,
    case_number,
    free_port,
    mobile_number,
    resident_id,
    valid_request,
)
from fedgate.types import KeyId
from fedgate.v1 import (
    bank_pb2,
    common_pb2,
    envelope_pb2,
    gateway_service_pb2,
    request_pb2,
    ticket_pb2,
)

if TYPE_CHECKING:
    from conftest import AnswerSigner, FakeGateway, Run

ORIGIN = "fedgate.test/gateway/shard-0"
WITNESS = "pboc.gz"
CARD_ICBC = card_number("bank.icbc", 11)
CARD_CCB = card_number("bank.ccb", 12)
PHONE_CMCC = mobile_number("carrier.cmcc", 13)
PHONE_CUCC = mobile_number("carrier.cucc", 14)
ID_NUMBER = resident_id(15)
CASE = case_number(1, when=date(2026, 11, 1))
ORIGINAL = "01936f3e-8c1a-7000-8000-000000000001"
HEADER = (
    "--case",
    CASE,
    "--doc-number",
    "穗公(反诈)查字〔2026〕00001号",
    "--purpose",
    "核查涉案线索",
)


def _argv(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# argv after the group, action, target, expected action fields (a subset of the JSON mapping)
BUILD_CASES: list[tuple[tuple[str, ...], str, str, dict[str, Any]]] = [
    (
        ("query", "account-holder", "--account", CARD_ICBC),
        "account_holder",
        "bank.icbc",
        {"account_number": CARD_ICBC},
    ),
    (
        _argv(
            f"query transactions --account {CARD_CCB} --from -30d --page-size 50 --page-token p2"
        ),
        "transactions",
        "bank.ccb",
        {"account_number": CARD_CCB, "page": {"page_size": 50, "page_token": "p2"}},
    ),
    (
        ("query", "accounts-by-id", "--id-number", ID_NUMBER, "--target", "bank.abc"),
        "accounts_by_id",
        "bank.abc",
        {"id_number": ID_NUMBER},
    ),
    (
        ("query", "login-records", "--account", CARD_ICBC, "--from", "-7d", "--to", "now"),
        "login_records",
        "bank.icbc",
        {"account_number": CARD_ICBC},
    ),
    (
        _argv("query aggregate-stats --metric freezes --from -90d --target bank.icbc"),
        "aggregate_stats",
        "bank.icbc",
        {"metric": "freezes"},
    ),
    (
        ("query", "subscriber", "--phone", PHONE_CMCC),
        "subscriber",
        "carrier.cmcc",
        {"phone_number": PHONE_CMCC},
    ),
    (
        ("query", "number-status", "--phone", PHONE_CUCC),
        "number_status",
        "carrier.cucc",
        {"phone_number": PHONE_CUCC},
    ),
    (
        ("query", "sim-count", "--id-number", ID_NUMBER, "--target", "carrier.ctcc"),
        "sim_count",
        "carrier.ctcc",
        {"id_number": ID_NUMBER},
    ),
    (
        _argv(
            f"query call-records --phone {PHONE_CMCC} --from -14d --sms "
            "--second-officer-id 440100999 --second-officer-name 李娜"
        ),
        "call_records",
        "carrier.cmcc",
        {"phone_number": PHONE_CMCC, "include_sms": True},
    ),
    (
        ("query", "location", "--phone", PHONE_CMCC, "--at", "2026-11-27T10:00:00+08:00"),
        "location",
        "carrier.cmcc",
        {"phone_number": PHONE_CMCC, "at": "2026-11-27T10:00:00+08:00"},
    ),
    (
        _argv(
            f"order stop-payment --account {CARD_ICBC} --name 李强 --payer-account "
            f"{CARD_CCB} --payer-name 张芳 --amount 49800.5 --transfer-time -20m "
            "--victim-application SQ20261127"
        ),
        "stop_payment",
        "bank.icbc",
        {
            "account_number": CARD_ICBC,
            "account_name": "李强",
            "payer_account": CARD_CCB,
            "payer_name": "张芳",
            "payer_bank": "bank.ccb",
            "amount": {"currency": "CNY", "minor_units": "4980050"},
            "victim_application": "SQ20261127",
        },
    ),
    (
        _argv(
            f"order stop-payment-release --account {CARD_ICBC} --original {ORIGINAL} "
            "--reason 资金与案件无关"
        ),
        "stop_payment_release",
        "bank.icbc",
        {"account_number": CARD_ICBC, "reason": "资金与案件无关"},
    ),
    (
        ("order", "stop-payment-extend", "--account", CARD_ICBC, "--original", ORIGINAL),
        "stop_payment_extend",
        "bank.icbc",
        {"account_number": CARD_ICBC},
    ),
    (
        _argv(
            f"order freeze --account {CARD_ICBC} --name 李强 --method fixed --amount "
            "1000 --end +90d --duty-phone 020-83113110 --bulk-count 250 "
            "--approver-id 440100500 --approver-name 赵强 --approval-doc "
            "粤公反诈审〔2026〕0001号"
        ),
        "freeze",
        "bank.icbc",
        {
            "account_number": CARD_ICBC,
            "account_name": "李强",
            "method": "FREEZE_METHOD_FIXED_AMOUNT",
            "amount": {"currency": "CNY", "minor_units": "100000"},
            "duty_phone": "020-83113110",
            "bulk_count": 250,
            "approval": {
                "approver": {"id": "440100500", "name": "赵强", "role": "ROLE_CENTRE_SUPERVISOR"},
                "document_number": "粤公反诈审〔2026〕0001号",
            },
        },
    ),
    (
        _argv(
            f"order freeze-release --account {CARD_ICBC} --original {ORIGINAL} "
            "--reason 资金与案件无关"
        ),
        "freeze_release",
        "bank.icbc",
        {"account_number": CARD_ICBC, "reason": "资金与案件无关"},
    ),
    (
        _argv(f"order freeze-renew --account {CARD_ICBC} --original {ORIGINAL} --end 2027-03-01"),
        "freeze_renew",
        "bank.icbc",
        {"account_number": CARD_ICBC, "end": "2027-03-01T00:00:00+08:00"},
    ),
    (
        _argv(
            f"order refund --account {CARD_ICBC} --original {ORIGINAL} --victim-account "
            f"{CARD_CCB} --victim-name 张芳 --victim-bank bank.ccb --amount 200 "
            "--reported-loss 49800.5 --application FH20261127"
        ),
        "refund",
        "bank.icbc",
        {
            "account_number": CARD_ICBC,
            "victim_account": CARD_CCB,
            "victim_name": "张芳",
            "victim_bank": "bank.ccb",
            "amount": {"currency": "CNY", "minor_units": "20000"},
            "reported_loss": {"currency": "CNY", "minor_units": "4980050"},
            "victim_application": "FH20261127",
        },
    ),
    (
        ("order", "monitor-start", "--account", CARD_CCB, "--until", "+30d"),
        "monitor_start",
        "bank.ccb",
        {"account_number": CARD_CCB},
    ),
    (
        ("order", "monitor-stop", "--account", CARD_CCB, "--original", ORIGINAL),
        "monitor_stop",
        "bank.ccb",
        {"account_number": CARD_CCB},
    ),
    (
        ("order", "number-suspend", "--phone", PHONE_CMCC, "--reason", "冒充客服诈骗"),
        "number_suspend",
        "carrier.cmcc",
        {"phone_number": PHONE_CMCC, "reason": "冒充客服诈骗"},
    ),
    (
        ("order", "number-block", "--phone", PHONE_CUCC, "--reason", "冒充客服诈骗"),
        "number_block",
        "carrier.cucc",
        {"phone_number": PHONE_CUCC, "reason": "冒充客服诈骗"},
    ),
    (
        (
            "order",
            "number-restore",
            "--phone",
            PHONE_CMCC,
            "--reason",
            "申诉核查属实",
            "--original",
            ORIGINAL,
        ),
        "number_restore",
        "carrier.cmcc",
        {"phone_number": PHONE_CMCC, "reason": "申诉核查属实"},
    ),
    (
        _argv("order approval --max-count 300 --expires +7d --approval-doc 粤公反诈审〔2026〕1号"),
        "approval",
        "gateway",
        {"actions": ["freeze"], "max_count": 300, "document_number": "粤公反诈审〔2026〕1号"},
    ),
    (
        _argv("order sms-block --sender 10690000001 --reason 仿冒银行短信 --target carrier.ctcc"),
        "sms_block",
        "carrier.ctcc",
        {"sender": "10690000001", "reason": "仿冒银行短信"},
    ),
    (
        _argv("order approval --max-count 5 --expires +7d --approval-doc SP2026-1"),
        "approval",
        "gateway",
        {"actions": ["freeze"], "max_count": 5, "document_number": "SP2026-1"},
    ),
]


def _ids(case: tuple[tuple[str, ...], str, str, dict[str, Any]]) -> str:
    return case[1]


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual)


def _dry_run(cli: Callable[..., Run], *argv: str) -> tuple[request_pb2.Request, dict[str, Any]]:
    run = cli(*argv, *HEADER, "--dry-run")
    assert run.code == 0, run.err
    doc = run.json()
    request = json_format.ParseDict(doc["request"], request_pb2.Request())
    return request, doc


def _answer(signer: AnswerSigner, body: bytes, registry: Registry, **kwargs: Any) -> Answer:
    request = decode_request(body)
    return verify_signed_response(
        signer.answer(body, **kwargs),
        request_body=body,
        request_id=request.request_id,
        target=request.target_agency,
        registry=registry,
    )


def _with_cause(error: FedgateError) -> FedgateError:
    """``error`` as the client rebuilds it from a failed call."""
    error.__cause__ = grpc.RpcError()
    return error


# ----------------------------------------------------------------------------- parsing


class TestParseTime:
    NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)

    def test_iso_with_offset(self) -> None:
        assert parse_time("2026-11-27T10:00:00+08:00") == self.NOW

    def test_iso_without_offset_is_china_standard_time(self) -> None:
        assert parse_time("2026-11-27T10:00") == self.NOW
        assert parse_time("2026-11-27").utcoffset() == timedelta(hours=8)

    def test_zulu(self) -> None:
        assert parse_time("2026-11-27T02:00:00Z") == self.NOW

    @pytest.mark.parametrize(
        ("text", "delta"),
        [
            ("now", timedelta()),
            ("-30d", timedelta(days=-30)),
            ("+2h", timedelta(hours=2)),
            ("-15m", timedelta(minutes=-15)),
            ("+90s", timedelta(seconds=90)),
            ("-1w", timedelta(weeks=-1)),
        ],
    )
    def test_relative(self, text: str, delta: timedelta) -> None:
        assert parse_time(text, now=self.NOW) == self.NOW + delta

    @pytest.mark.parametrize("text", ["yesterday", "-30", "30d", "2026-13-01", ""])
    def test_refused(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
            parse_time(text)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("24h", timedelta(hours=24)),
            ("1d12h", timedelta(hours=36)),
            ("30m", timedelta(minutes=30)),
        ],
    )
    def test_parses(self, text: str, expected: timedelta) -> None:
        assert parse_duration(text) == expected

    @pytest.mark.parametrize(
        ("text", "match"), [("0h", "positive"), ("1 day", "duration"), ("h", "duration")]
    )
    def test_refused(self, text: str, match: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            parse_duration(text)


class TestParseAmount:
    @pytest.mark.parametrize(
        ("text", "fen"), [("1234.56", 123456), ("49800", 4980000), ("0.1", 10), ("0", 0)]
    )
    def test_yuan_to_fen(self, text: str, fen: int) -> None:
        assert parse_amount(text) == fen

    @pytest.mark.parametrize("text", ["1.234", "-5", "1e3", "12,000", "¥5", "", "1."])
    def test_refused(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="not an amount"):
            parse_amount(text)

    def test_too_large(self) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="too large"):
            parse_amount("9" * 20)

    @given(st.integers(min_value=0, max_value=10**13))
    def test_round_trip(self, fen: int) -> None:
        assert parse_amount(f"{fen // 100}.{fen % 100:02d}") == fen


class TestParseRequestId:
    def test_canonical(self) -> None:
        assert parse_request_id(ORIGINAL.upper()) == ORIGINAL

    @pytest.mark.parametrize("text", ["../../etc/passwd", "abc", ""])
    def test_refused(self, text: str) -> None:
        with pytest.raises(argparse.ArgumentTypeError, match="not a request id"):
            parse_request_id(text)


# ----------------------------------------------------------------------------- requests


class TestBuiltRequest:
    def test_every_subcommand_is_covered(self) -> None:
        names = {(argv[0], argv[1]) for argv, *_ in BUILD_CASES}
        expected = {("query", c.name) for c in query.COMMANDS} | {
            ("order", c.name) for c in order.COMMANDS
        }
        assert names == expected

    @pytest.mark.parametrize("case", BUILD_CASES, ids=_ids)
    def test_action_and_target(
        self,
        cli: Callable[..., Run],
        federation_registry: Registry,
        sent_dir: Path,
        case: tuple[tuple[str, ...], str, str, dict[str, Any]],
    ) -> None:
        argv, action, target, fields = case
        request, doc = _dry_run(cli, *argv)
        assert request.WhichOneof("action") == action
        assert request.target_agency == target
        assert request.requesting_agency == "police.gd.afc"
        assert _subset(fields, doc["request"][action]), doc["request"][action]
        if "--original" in argv:
            assert request.original_request_id == ORIGINAL
        envelope = json_format.ParseDict(doc["envelope"], envelope_pb2.SignedEnvelope())
        member, key = federation_registry.signing_key(KeyId(envelope.key_id), at=datetime.now(UTC))
        assert member.id == "police.gd.afc"
        verify_envelope(envelope, key, Domain.REQUEST)
        assert decode_request(envelope.body) == request
        assert not sent_dir.exists(), "a dry run sends nothing and keeps nothing"

    def test_an_order_cites_its_approval(self, cli: Callable[..., Run]) -> None:
        argv, *_ = next(c for c in BUILD_CASES if c[1] == "freeze")
        request, _ = _dry_run(cli, *argv, "--approval", ORIGINAL)
        assert request.approval_request_id == ORIGINAL
        query, *_ = next(c for c in BUILD_CASES if c[1] == "account_holder")
        run = cli(*query, *HEADER, "--dry-run", "--approval", ORIGINAL)
        assert run.code != 0
        assert "unrecognized arguments: --approval" in run.err

    def test_header_from_options(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(
            cli,
            *("query", "account-holder", "--account", CARD_ICBC),
            *("--officer-id", "440100777", "--officer-name", "陈静"),
            *("--officer-role", "duty_officer", "--officer-phone", "13800138000"),
            *("--officer-id-number", ID_NUMBER, "--case-type", "aiding_cybercrime"),
            *("--case-reason", "冒充客服", "--doc-kind", "evidence_notice"),
            *("--doc-issued", "2026-11-27T09:00:00+08:00", "--urgency", "urgent"),
            *("--deadline", "2h"),
        )
        assert request.officer == common_pb2.Person(
            id="440100777",
            name="陈静",
            phone="13800138000",
            id_number=ID_NUMBER,
            role=common_pb2.ROLE_POLICE_DUTY_OFFICER,
        )
        assert not request.HasField("second_officer")
        assert request.case == common_pb2.CaseInfo(
            case_number=CASE, case_type=common_pb2.CASE_TYPE_AIDING_CYBERCRIME, reason="冒充客服"
        )
        doc = request.legal_document
        assert doc.kind == common_pb2.LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE
        assert doc.number == "穗公(反诈)查字〔2026〕00001号"
        assert doc.issued_at.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 27, 1, tzinfo=UTC)
        assert request.urgency == common_pb2.URGENCY_URGENT
        assert request.purpose == "核查涉案线索"
        span = request.answer_deadline.ToDatetime() - request.issued_at.ToDatetime()
        assert span == timedelta(hours=2)

    def test_officer_from_environment(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(cli, "query", "subscriber", "--phone", PHONE_CMCC)
        assert (request.officer.id, request.officer.name) == ("440100123", "王伟")
        assert request.officer.role == common_pb2.ROLE_POLICE_INVESTIGATOR

    def test_second_officer(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(cli, *BUILD_CASES[8][0])
        assert request.second_officer.id == "440100999"
        assert request.second_officer.name == "李娜"

    @pytest.mark.parametrize(
        ("argv", "urgency", "kind"),
        [
            (BUILD_CASES[0][0], "URGENCY_ROUTINE", "LEGAL_DOCUMENT_KIND_QUERY_NOTICE"),
            (BUILD_CASES[8][0], "URGENCY_ROUTINE", "LEGAL_DOCUMENT_KIND_EVIDENCE_NOTICE"),
            (BUILD_CASES[10][0], "URGENCY_EMERGENCY", "LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE"),
            (BUILD_CASES[11][0], "URGENCY_ROUTINE", "LEGAL_DOCUMENT_KIND_RELEASE_NOTICE"),
            (BUILD_CASES[13][0], "URGENCY_URGENT", "LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION"),
            (BUILD_CASES[16][0], "URGENCY_ROUTINE", "LEGAL_DOCUMENT_KIND_REFUND_DECISION"),
            (BUILD_CASES[19][0], "URGENCY_URGENT", "LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER"),
        ],
    )
    def test_defaults_per_action(
        self, cli: Callable[..., Run], argv: tuple[str, ...], urgency: str, kind: str
    ) -> None:
        _, doc = _dry_run(cli, *argv)
        assert doc["request"]["urgency"] == urgency
        assert doc["request"]["legal_document"]["kind"] == kind

    def test_window_ends_now_by_default(self, cli: Callable[..., Run]) -> None:
        before = datetime.now(UTC)
        request, _ = _dry_run(cli, "query", "login-records", "--account", CARD_ICBC, "--from=-7d")
        window = request.login_records.window
        end = window.end.ToDatetime(tzinfo=UTC)
        assert before <= end <= datetime.now(UTC)
        assert end - window.start.ToDatetime(tzinfo=UTC) == pytest.approx(
            timedelta(days=7), abs=timedelta(seconds=5)
        )

    def test_receive_only_freeze_has_no_amount(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(
            cli,
            *("order", "freeze", "--account", CARD_ICBC, "--name", "李强"),
            *("--method", "receive-only", "--end", "+90d", "--duty-phone", "020-83113110"),
        )
        assert request.freeze.method == bank_pb2.FREEZE_METHOD_RECEIVE_ONLY
        assert not request.freeze.HasField("amount")
        assert not request.freeze.HasField("approval")

    def test_sms_block_target_from_a_mobile_sender(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(cli, "order", "sms-block", "--sender", PHONE_CUCC, "--reason", "x")
        assert request.target_agency == "carrier.cucc"

    def test_other_member(self, cli: Callable[..., Run]) -> None:
        request, _ = _dry_run(
            cli, "query", "subscriber", "--phone", PHONE_CMCC, "--member", "police.gz.unit"
        )
        assert request.requesting_agency == "police.gz.unit"


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (("order", "stop-payment-release", "--account", CARD_ICBC), "--original"),
            (("query", "accounts-by-id", "--id-number", ID_NUMBER), "--target"),
            (
                ("query", "transactions", "--account", CARD_ICBC, "--from", "yesterday"),
                "not a time",
            ),
            (
                _argv(
                    f"order freeze --account {CARD_ICBC} --name x --method fixed --amount "
                    "12.345 --end +1d --duty-phone 1"
                ),
                "not an amount",
            ),
            (("query", "subscriber", "--phone", PHONE_CMCC, "--deadline", "soon"), "duration"),
            (("ticket", "get", "../../etc/passwd"), "not a request id"),
        ],
    )
    def test_argument_errors_exit_2(
        self, cli: Callable[..., Run], argv: tuple[str, ...], message: str
    ) -> None:
        run = cli(*argv)
        assert run.code == ExitCode.USAGE
        assert message in run.err

    def test_target_not_inferred(self, cli: Callable[..., Run]) -> None:
        run = cli("query", "account-holder", "--account", "4000000000000002", *HEADER)
        assert run.code == ExitCode.USAGE
        assert "--target is required" in run.err

    def test_missing_federation(self, cli: Callable[..., Run], tmp_path: Path) -> None:
        run = cli(
            "query", "subscriber", "--phone", PHONE_CMCC, "--federation", str(tmp_path / "none")
        )
        assert run.code == ExitCode.USAGE
        assert run.err.startswith("fedgate: error: ")

    def test_out_of_range_integer(self, cli: Callable[..., Run]) -> None:
        run = cli(*BUILD_CASES[1][0], "--page-size", str(2**40), *HEADER, "--dry-run")
        assert run.code == ExitCode.USAGE
        assert run.err.startswith("fedgate: error: ")

    def test_unknown_role_in_environment(
        self, cli: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("FEDGATE_OFFICER_ROLE", "chief")
        run = cli("query", "subscriber", "--phone", PHONE_CMCC)
        assert run.code == ExitCode.USAGE
        assert "--officer-role (or FEDGATE_OFFICER_ROLE) 'chief'" in run.err

    @pytest.mark.parametrize(
        ("variable", "flag"),
        [("FEDGATE_OFFICER_ID", "--officer-id"), ("FEDGATE_OFFICER_NAME", "--officer-name")],
    )
    def test_a_missing_officer_is_caught_before_signing(
        self,
        cli: Callable[..., Run],
        monkeypatch: pytest.MonkeyPatch,
        sent_dir: Path,
        variable: str,
        flag: str,
    ) -> None:
        monkeypatch.delenv(variable)
        run = cli("query", "subscriber", "--phone", PHONE_CMCC, *HEADER, "--dry-run")
        assert run.code == ExitCode.USAGE
        assert f"{flag} is required" in run.err
        assert variable in run.err
        assert run.out == ""  # nothing signed, nothing printed
        assert not list(sent_dir.glob("*.bin")) if sent_dir.exists() else True

    def test_grouped_account_digits_are_accepted(self, cli: Callable[..., Run]) -> None:
        grouped = " ".join(CARD_ICBC[i : i + 4] for i in range(0, len(CARD_ICBC), 4))
        run = cli("query", "account-holder", "--account", grouped, *HEADER, "--dry-run")
        assert run.code == ExitCode.OK, run.err
        assert json.loads(run.out)["request"]["account_holder"]["account_number"] == CARD_ICBC

    def test_a_missing_federation_names_the_setting(
        self, cli: Callable[..., Run], tmp_path: Path
    ) -> None:
        run = cli(
            "query", "subscriber", "--phone", PHONE_CMCC, "--federation", str(tmp_path / "none")
        )
        assert run.code == ExitCode.USAGE
        assert "FEDGATE_FEDERATION" in run.err
        assert "--federation" in run.err

    def test_help_lists_exit_codes(self, cli: Callable[..., Run]) -> None:
        run = cli("order", "freeze", "--help")
        assert run.code == 0
        assert "exit codes:" in run.out
        assert "10  queued" in run.out


# ----------------------------------------------------------------------------- exit codes

EXPECTED_REFUSAL_CODES: dict[type[FedgateError], ExitCode] = {
    errors.FedgateError: ExitCode.UNAVAILABLE,  # INTERNAL
    errors.InvalidArgument: ExitCode.REFUSED,
    errors.ConfigError: ExitCode.REFUSED,
    errors.DecodeError: ExitCode.REFUSED,
    errors.ConfigError: ExitCode.REFUSED,
    errors.AuthenticationError: ExitCode.REFUSED,
    errors.SignatureInvalid: ExitCode.REFUSED,
    errors.UnknownKey: ExitCode.REFUSED,
    errors.KeyNotValid: ExitCode.REFUSED,
    errors.PeerMismatch: ExitCode.REFUSED,
    errors.ResponseBindingError: ExitCode.REFUSED,
    errors.RegistryError: ExitCode.REFUSED,
    errors.MemberRefused: ExitCode.REFUSED,
    errors.PermissionRefused: ExitCode.REFUSED,
    errors.PolicyDenied: ExitCode.REFUSED,
    errors.RuleViolated: ExitCode.REFUSED,
    errors.Replayed: ExitCode.REFUSED,
    errors.InProgress: ExitCode.UNAVAILABLE,  # a retry while the first attempt runs: ask again
    errors.Stale: ExitCode.REFUSED,
    errors.QuotaExceeded: ExitCode.REFUSED,
    errors.NotFound: ExitCode.REFUSED,
    errors.Expired: ExitCode.AGENCY_DECLINED,
    errors.AgencyUnavailable: ExitCode.UNAVAILABLE,
    errors.AgencyFault: ExitCode.UNAVAILABLE,
    errors.AuditUnavailable: ExitCode.UNAVAILABLE,
    errors.KeyUnavailable: ExitCode.UNAVAILABLE,  # the gateway's own key-encryption key
    errors.LogInconsistent: ExitCode.UNAVAILABLE,
    errors.StoreVersionError: ExitCode.UNAVAILABLE,
    errors.VerificationError: ExitCode.UNAVAILABLE,
    errors.NotCosigned: ExitCode.UNAVAILABLE,
}


def _all_error_classes() -> set[type[FedgateError]]:
    found: set[type[FedgateError]] = set()
    pending: list[type[FedgateError]] = [FedgateError]
    while pending:
        cls = pending.pop()
        if cls.__module__ == "fedgate.errors":
            found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def _instance(cls: type[FedgateError]) -> FedgateError:
    if issubclass(cls, errors.QuotaExceeded):
        return cls("slow down", retry_after_s=1.0)
    return cls("refused")


class TestExitCodes:
    def test_every_error_class_has_a_decided_code(self) -> None:
        assert _all_error_classes() == set(EXPECTED_REFUSAL_CODES)

    @pytest.mark.parametrize("cls", list(EXPECTED_REFUSAL_CODES), ids=lambda c: c.__name__)
    def test_refusal_from_the_gateway(self, cls: type[FedgateError]) -> None:
        error = _with_cause(_instance(cls))
        assert exit_code_for_refusal(error) == EXPECTED_REFUSAL_CODES[cls]
        assert failure_outcome(error, ORIGINAL).exit_code == EXPECTED_REFUSAL_CODES[cls]

    @pytest.mark.parametrize("cls", list(EXPECTED_REFUSAL_CODES), ids=lambda c: c.__name__)
    def test_local_error_is_a_failed_verification(self, cls: type[FedgateError]) -> None:
        outcome = failure_outcome(_instance(cls), ORIGINAL)
        assert outcome.exit_code == ExitCode.VERIFICATION_FAILED
        assert outcome.kind == "verification_failed"

    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            (grpc.StatusCode.UNAVAILABLE, ExitCode.UNAVAILABLE),
            (grpc.StatusCode.DEADLINE_EXCEEDED, ExitCode.UNAVAILABLE),
            (grpc.StatusCode.PERMISSION_DENIED, ExitCode.REFUSED),
            (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.REFUSED),
        ],
    )
    def test_bare_status_codes(self, code: grpc.StatusCode, expected: ExitCode) -> None:
        error = FedgateError("no details", reason=code.name)
        error.code = code
        assert exit_code_for_refusal(error) == expected

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (request_pb2.RESPONSE_STATUS_OK, ExitCode.OK),
            (request_pb2.RESPONSE_STATUS_REFUSED, ExitCode.AGENCY_DECLINED),
            (request_pb2.RESPONSE_STATUS_NOT_FOUND, ExitCode.AGENCY_DECLINED),
            (request_pb2.RESPONSE_STATUS_INVALID, ExitCode.AGENCY_DECLINED),
            (request_pb2.RESPONSE_STATUS_EXPIRED, ExitCode.AGENCY_DECLINED),
            (request_pb2.RESPONSE_STATUS_PENDING, ExitCode.QUEUED),
        ],
    )
    def test_answer_status(
        self, status: request_pb2.ResponseStatus.ValueType, expected: ExitCode
    ) -> None:
        assert exit_code_for_status(status) == expected


# ----------------------------------------------------------------------------- rendering


def _transactions(response: request_pb2.Response) -> None:
    result = response.transactions
    result.account_number = CARD_ICBC
    tx = result.transactions.add(
        transaction_id="T0001",
        direction="in",
        counterparty_account=CARD_CCB,
        counterparty_name="张芳",
        counterparty_bank="bank.ccb",
        channel="mobile",
        memo="转账",
    )
    tx.time.FromDatetime(datetime(2026, 11, 27, 1, 40, tzinfo=UTC))
    tx.amount.CopyFrom(common_pb2.Money(currency="CNY", minor_units=4_980_000))
    tx.balance_after.CopyFrom(common_pb2.Money(currency="CNY", minor_units=5_012_345))
    result.next_page_token = "p2"


@pytest.fixture(scope="module")
def signed_body() -> bytes:
    return valid_request("transactions", now=datetime.now(UTC)).SerializeToString()


class TestRender:
    def test_money_and_time(self) -> None:
        assert (
            format_money(common_pb2.Money(currency="CNY", minor_units=123456789)) == "¥1,234,567.89"
        )
        assert format_money(common_pb2.Money(currency="USD", minor_units=5)) == "0.05 USD"
        assert format_money(common_pb2.Money()) == "—"
        at = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
        assert format_time(at) == "2026-11-27 10:00:00+08:00"
        assert at.astimezone(CST).utcoffset() == timedelta(hours=8)

    def test_answer_text(
        self, answer_signer: AnswerSigner, federation_registry: Registry, signed_body: bytes
    ) -> None:
        signer = answer_signer
        answer = _answer(signer, signed_body, federation_registry, result=_transactions)
        out, err = render_text(Outcome("answered", 0, answer=answer), registry=federation_registry)
        assert err == ""
        assert "bank.icbc (中国工商银行) answered OK automatically" in out
        assert re.search(rf"账号 account +{CARD_ICBC}", out)
        assert "交易明细 transactions (1)" in out
        assert "¥49,800.00" in out
        assert "¥50,123.45" in out
        assert "2026-11-27 09:40:00+08:00" in out
        assert f"log {ORIGIN} · entry {answer.receipt.leaf_index}" in out
        assert f"witnesses: {WITNESS} ✓" in out
        key = answer.signed.response.key_id[:16]
        assert (
            f"✓ signed by bank.icbc (key {key}…) ✓ bound to request ✓ countersigned by gateway"
            f" ✓ in audit log at index {answer.receipt.leaf_index}"
        ) in out

    def test_declined_answer_shows_detail(
        self, answer_signer: AnswerSigner, federation_registry: Registry, signed_body: bytes
    ) -> None:
        signer = answer_signer
        answer = _answer(
            signer,
            signed_body,
            federation_registry,
            status=request_pb2.RESPONSE_STATUS_REFUSED,
            detail="户名与账号不符",
            answered_by="icbc-staff-007",
        )
        out, _ = render_text(Outcome("answered", 1, answer=answer))
        assert "answered REFUSED by staff icbc-staff-007" in out
        assert "refused: 户名与账号不符" in out

    def test_answer_json(
        self, answer_signer: AnswerSigner, federation_registry: Registry, signed_body: bytes
    ) -> None:
        signer = answer_signer
        answer = _answer(signer, signed_body, federation_registry, result=_transactions)
        doc = json.loads(
            render_json(Outcome("answered", 0, "rid", answer=answer), registry=federation_registry)
        )
        assert doc["outcome"] == "answered"
        assert doc["exit_code"] == 0
        assert doc["status"] == "OK"
        assert (
            doc["response"]["transactions"]["transactions"][0]["amount"]["minor_units"] == "4980000"
        )
        assert doc["receipt"]["leaf_index"] == str(answer.receipt.leaf_index)
        verification = doc["verification"]
        assert verification["verified"] is True
        assert verification["signed_by"] == "bank.icbc"
        assert verification["witnesses"][0]["name"] == WITNESS
        assert verification["witnesses"][0]["verified"] is True

    def test_refusal_text_lists_every_field(self) -> None:
        error = errors.InvalidArgument.for_fields(
            [
                FieldViolation("stop_payment.amount", "must be positive"),
                FieldViolation("purpose", "required"),
            ]
        )
        _, err = render_text(Outcome("refused", 3, error=error))
        assert "refused by the gateway: INVALID_ARGUMENT" in err
        assert "✗ --amount (stop_payment.amount): must be positive" in err
        assert "✗ --purpose (purpose): required" in err

    @pytest.mark.parametrize(
        ("path", "flag"),
        [
            ("legal_document.number", "--doc-number"),
            ("freeze.amount.minor_units", "--amount"),
            ("transactions.window.end", "--to"),
            ("officer.id", "--officer-id"),
            ("freeze.approval.approver.name", "--approver-name"),
            ("nonce", None),
        ],
    )
    def test_a_refused_field_is_named_by_its_option(self, path: str, flag: str | None) -> None:
        error = errors.InvalidArgument.for_fields([FieldViolation(path, "is wrong")])
        _, err = render_text(Outcome("refused", 3, error=error))
        shown = path if flag is None else f"{flag} ({path})"
        assert f"✗ {shown}: is wrong" in err
        doc = json.loads(render_json(Outcome("refused", 3, error=error)))
        assert doc["error"]["field_violations"][0]["flag"] == flag

    def test_quota_shows_retry(self) -> None:
        error = errors.QuotaExceeded("too many queries", retry_after_s=2.5)
        _, err = render_text(Outcome("refused", 3, error=error))
        assert "QUOTA_EXCEEDED: too many queries" in err
        assert "retry after 2.5 s" in err

    def test_verification_failure_is_loud(self) -> None:
        error = errors.ResponseBindingError("response request_hash does not match")
        out, err = render_text(Outcome("verification_failed", 5, ORIGINAL, error=error))
        assert out == ""
        assert "VERIFICATION FAILED — DO NOT ACT ON THIS ANSWER" in err
        assert ORIGINAL in err

    def test_ticket_text(self, answer_signer: AnswerSigner, signed_body: bytes) -> None:
        ticket = answer_signer.ticket(signed_body, ticket_pb2.TICKET_STATE_CLAIMED)
        out, _ = render_text(Outcome("queued", 10, ticket=ticket, hints=("follow it",)))
        assert f"ticket {ticket.ticket_id} at bank.icbc: CLAIMED" in out
        assert f"request logged: log {ORIGIN} · entry 7" in out
        assert out.endswith("follow it\n")


# ----------------------------------------------------------------------------- sent store


class TestSentStore:
    def test_saved_0600_and_loaded(self, tmp_path: Path, signed_body: bytes) -> None:
        store = SentStore(tmp_path / "sent")
        request_id = decode_request(signed_body).request_id
        path = store.save(request_id, envelope_pb2.SignedEnvelope(body=signed_body))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert store.load(request_id) == signed_body
        assert store.load(ORIGINAL) is None

    def test_file_for_another_request_is_refused(self, tmp_path: Path, signed_body: bytes) -> None:
        store = SentStore(tmp_path)
        store.path(ORIGINAL).write_bytes(
            envelope_pb2.SignedEnvelope(body=signed_body).SerializeToString()
        )
        with pytest.raises(errors.DecodeError, match="not "):
            store.load(ORIGINAL)


# ----------------------------------------------------------------------------- through a gateway


class TestAgainstGateway:
    """The whole command against the stand-in gateway over mTLS."""

    @pytest.mark.parametrize("case", BUILD_CASES, ids=_ids)
    def test_answered(
        self,
        cli: Callable[..., Run],
        fake_gateway: FakeGateway,
        case: tuple[tuple[str, ...], str, str, dict[str, Any]],
    ) -> None:
        argv, action, target, _ = case
        run = cli(*argv, *HEADER, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.OK, run.err
        assert fake_gateway.received[-1].WhichOneof("action") == action
        assert f"✓ signed by {target}" in run.out
        assert "✓ in audit log at index" in run.out

    def test_json(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        run = cli(*BUILD_CASES[5][0], *HEADER, "--endpoint", fake_gateway.endpoint, "--json")
        assert run.code == 0
        doc = run.json()
        assert doc["outcome"] == "answered"
        assert doc["request_id"] == fake_gateway.received[-1].request_id
        assert doc["response"]["subscriber"]["phone_number"] == PHONE_CMCC
        assert doc["verification"]["signed_by"] == "carrier.cmcc"

    def test_answers_are_kept_listed_shown_and_exported(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, sent_dir: Path, tmp_path: Path
    ) -> None:
        cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        request_id = fake_gateway.received[-1].request_id
        assert (sent_dir / f"{request_id}.answer.bin").exists()
        listed = cli("answers", "list")
        assert request_id in listed.out
        assert "account_holder" in listed.out
        assert cli("answers", "list", "--last").out.strip() == request_id
        doc = json.loads(cli("answers", "list", "--json").out)
        assert doc["requests"][-1]["issued_at"].endswith("+08:00")
        shown = cli("answers", "show", request_id)
        assert shown.code == ExitCode.OK, shown.err
        assert "✓ signed by bank.icbc" in shown.out
        assert "fedgate answers fetch" not in shown.out  # the stand-in's receipt is cosigned
        # A copy kept before any witness cosigned: still verified, with how to get a better one.
        path = sent_dir / f"{request_id}.answer.bin"
        signed = envelope_pb2.SignedResponse.FromString(path.read_bytes())
        note = parse_note(signed.receipt.checkpoint)
        bare = Note(note.text, tuple(x for x in note.signatures if x.name != "pboc.gz"))
        signed.receipt.checkpoint = bare.marshal()
        path.write_bytes(signed.SerializeToString())
        early = cli("answers", "show", request_id)
        assert early.code == ExitCode.OK, early.err
        assert f"fedgate answers upgrade {request_id}" in early.out
        out = tmp_path / "export.json"
        assert cli("answers", "export", request_id, "--out", str(out)).code == ExitCode.OK
        exported = json.loads(out.read_text(encoding="utf-8"))
        assert exported["request"]["request_id"] == request_id
        assert exported["signed_response_b64"]

    def test_a_kept_answer_changed_on_disk_fails_verification(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, sent_dir: Path
    ) -> None:
        cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        request_id = fake_gateway.received[-1].request_id
        path = sent_dir / f"{request_id}.answer.bin"
        signed = envelope_pb2.SignedResponse.FromString(path.read_bytes())
        body = request_pb2.Response.FromString(signed.response.body)
        body.detail = "changed afterwards"
        signed.response.body = body.SerializeToString()
        path.write_bytes(signed.SerializeToString())
        shown = cli("answers", "show", request_id)
        assert shown.code == ExitCode.VERIFICATION_FAILED
        assert "VERIFICATION FAILED" in shown.out + shown.err

    def test_sent_request_is_kept(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, sent_dir: Path
    ) -> None:
        cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        request_id = fake_gateway.received[-1].request_id
        assert SentStore(sent_dir).load(request_id) == fake_gateway.bodies[-1]

    def test_agency_refused(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        fake_gateway.respond = lambda body: _submit_answer(
            fake_gateway,
            body,
            status=request_pb2.RESPONSE_STATUS_REFUSED,
            detail="转账时间与金额不符，未止付",
        )
        run = cli(*BUILD_CASES[10][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.AGENCY_DECLINED
        assert "answered REFUSED" in run.out
        assert "转账时间与金额不符" in run.out

    def test_not_found(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        fake_gateway.respond = lambda body: _submit_answer(
            fake_gateway, body, status=request_pb2.RESPONSE_STATUS_NOT_FOUND, detail="无此号码"
        )
        run = cli(*BUILD_CASES[5][0], *HEADER, "--endpoint", fake_gateway.endpoint, "--json")
        assert run.code == ExitCode.AGENCY_DECLINED
        assert run.json()["status"] == "NOT_FOUND"

    @pytest.mark.parametrize(
        ("error", "code", "shown"),
        [
            (
                errors.InvalidArgument.for_fields(
                    [
                        FieldViolation("stop_payment.transfer_time", "must be at most 30 days ago"),
                        FieldViolation("officer.id", "required"),
                    ]
                ),
                ExitCode.REFUSED,
                [
                    "✗ --transfer-time (stop_payment.transfer_time): must be at most 30 days ago",
                    "✗ --officer-id (officer.id):",
                ],
            ),
            (
                errors.RuleViolated("stop-payment limit: this account was stopped twice already"),
                ExitCode.REFUSED,
                ["RULE_VIOLATED: stop-payment limit"],
            ),
            (
                errors.PolicyDenied("no rule allows police.gd.afc to freeze at bank.icbc"),
                ExitCode.REFUSED,
                ["POLICY_DENIED"],
            ),
            (
                errors.QuotaExceeded("officer quota", retry_after_s=30),
                ExitCode.REFUSED,
                ["retry after 30 s"],
            ),
            (errors.Replayed("seen"), ExitCode.REFUSED, ["REPLAYED"]),
            (errors.AgencyUnavailable("bank.icbc is down"), ExitCode.UNAVAILABLE, ["unavailable"]),
            (errors.AuditUnavailable("log full"), ExitCode.UNAVAILABLE, ["AUDIT_UNAVAILABLE"]),
        ],
        ids=lambda v: getattr(v, "reason", None),
    )
    def test_gateway_refusal(
        self,
        cli: Callable[..., Run],
        fake_gateway: FakeGateway,
        error: FedgateError,
        code: ExitCode,
        shown: list[str],
    ) -> None:
        fake_gateway.respond = _raiser(error)
        run = cli(*BUILD_CASES[10][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        assert run.code == code
        for text in shown:
            assert text in run.err

    def test_refusal_json(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        fake_gateway.respond = _raiser(
            errors.InvalidArgument.for_fields([FieldViolation("purpose", "required")])
        )
        run = cli(*BUILD_CASES[0][0], "--endpoint", fake_gateway.endpoint, "--json")
        assert run.code == ExitCode.REFUSED
        doc = run.json()
        assert doc["outcome"] == "refused"
        assert doc["error"]["field_violations"] == [
            {"field": "purpose", "flag": "--purpose", "description": "required"}
        ]

    def test_gateway_down(self, cli: Callable[..., Run], unused_port: int) -> None:
        run = cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", f"127.0.0.1:{unused_port}")
        assert run.code == ExitCode.UNAVAILABLE
        assert "unavailable" in run.err

    @pytest.mark.parametrize(
        ("forgery", "message"),
        [
            ({"signed_by": "bank.ccb"}, "signed by bank.ccb"),
            ({"responder": "bank.ccb", "signed_by": "bank.ccb"}, "signed by bank.ccb"),
            ({"bound_to": b"another request"}, "request_hash"),
        ],
        ids=["wrong-signer", "wrong-responder", "wrong-request"],
    )
    def test_forged_answer(
        self,
        cli: Callable[..., Run],
        fake_gateway: FakeGateway,
        forgery: dict[str, Any],
        message: str,
    ) -> None:
        fake_gateway.respond = lambda body: _submit_answer(fake_gateway, body, **forgery)
        run = cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.VERIFICATION_FAILED
        assert "VERIFICATION FAILED" in run.err
        assert message in run.err
        assert run.out == ""

    def test_tampered_receipt(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        def tampered(body: bytes) -> Any:
            reply = _submit_answer(fake_gateway, body)
            reply.response.receipt.leaf_hash = bytes(32)
            return reply

        fake_gateway.respond = tampered
        run = cli(*BUILD_CASES[0][0], *HEADER, "--endpoint", fake_gateway.endpoint, "--json")
        assert run.code == ExitCode.VERIFICATION_FAILED
        assert run.json()["verification"]["verified"] is False


def _submit_answer(fake: FakeGateway, body: bytes, **kwargs: Any) -> Any:
    return gateway_service_pb2.SubmitResponse(response=fake.signer.answer(body, **kwargs))


def _raiser(error: FedgateError) -> Callable[[bytes], Any]:
    def respond(body: bytes) -> Any:
        raise error

    return respond


@pytest.fixture
def unused_port() -> int:
    return free_port()


# ----------------------------------------------------------------------------- tickets


def _queue(fake: FakeGateway) -> Callable[[bytes], Any]:
    def respond(body: bytes) -> Any:
        return gateway_service_pb2.SubmitResponse(
            ticket=fake.signer.ticket(body, ticket_pb2.TICKET_STATE_WAITING)
        )

    return respond


class TestTickets:
    @pytest.fixture
    def queued(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> tuple[str, bytes]:
        fake_gateway.respond = _queue(fake_gateway)
        run = cli(*BUILD_CASES[1][0], *HEADER, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.QUEUED, run.err
        body = fake_gateway.bodies[-1]
        ticket_id = decode_request(body).request_id
        assert f"fedgate ticket watch {ticket_id}" in run.out
        return ticket_id, body

    def _script(
        self, fake: FakeGateway, ticket_id: str, body: bytes, *states: int, answer: bool = True
    ) -> None:
        updates: list[Any] = [(fake.signer.ticket(body, state), None) for state in states]
        if answer:
            updates.append(
                (
                    fake.signer.ticket(body, ticket_pb2.TICKET_STATE_ANSWERED),
                    fake.signer.answer(body, answered_by="ccb-staff-001", result=_transactions),
                )
            )
        fake.tickets[ticket_id] = updates

    def test_get_answered(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        self._script(fake_gateway, ticket_id, body)
        run = cli("ticket", "get", ticket_id, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.OK, run.err
        assert "answered OK by staff ccb-staff-001" in run.out
        assert "✓ bound to request" in run.out

    def test_get_waiting(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        self._script(fake_gateway, ticket_id, body, ticket_pb2.TICKET_STATE_CLAIMED, answer=False)
        run = cli("ticket", "get", ticket_id, "--endpoint", fake_gateway.endpoint, "--json")
        assert run.code == ExitCode.QUEUED
        assert run.json()["ticket"]["state"] == "TICKET_STATE_CLAIMED"

    def test_get_without_the_sent_request(
        self,
        cli: Callable[..., Run],
        fake_gateway: FakeGateway,
        queued: tuple[str, bytes],
        tmp_path: Path,
    ) -> None:
        ticket_id, body = queued
        self._script(fake_gateway, ticket_id, body)
        run = cli(
            *("ticket", "get", ticket_id, "--endpoint", fake_gateway.endpoint),
            *("--sent-dir", str(tmp_path / "elsewhere")),
        )
        assert run.code == ExitCode.USAGE
        assert "cannot verify the answer" in run.err
        assert "--sent-dir" in run.err

    def test_get_answer_to_another_request(
        self,
        cli: Callable[..., Run],
        fake_gateway: FakeGateway,
        queued: tuple[str, bytes],
        signed_body: bytes,
    ) -> None:
        ticket_id, body = queued
        fake_gateway.tickets[ticket_id] = [
            (
                fake_gateway.signer.ticket(body, ticket_pb2.TICKET_STATE_ANSWERED),
                fake_gateway.signer.answer(body, bound_to=signed_body),
            )
        ]
        run = cli("ticket", "get", ticket_id, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.VERIFICATION_FAILED
        assert "VERIFICATION FAILED" in run.err

    def test_get_unknown(self, cli: Callable[..., Run], fake_gateway: FakeGateway) -> None:
        run = cli("ticket", "get", ORIGINAL, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.REFUSED
        assert "NOT_FOUND" in run.err

    def test_get_expired(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, _ = queued
        fake_gateway.tickets[ticket_id] = [errors.Expired("bank.ccb did not answer in time")]
        run = cli("ticket", "get", ticket_id, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.AGENCY_DECLINED
        assert "expired: EXPIRED: bank.ccb did not answer in time" in run.err

    def test_watch_until_answered(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        self._script(
            fake_gateway,
            ticket_id,
            body,
            ticket_pb2.TICKET_STATE_WAITING,
            ticket_pb2.TICKET_STATE_CLAIMED,
        )
        run = cli("ticket", "watch", ticket_id, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.OK, run.err
        assert run.out.index(": WAITING") < run.out.index(": CLAIMED") < run.out.index("OK by")

    def test_watch_json_lines(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        self._script(fake_gateway, ticket_id, body, ticket_pb2.TICKET_STATE_WAITING)
        run = cli("ticket", "watch", ticket_id, "--endpoint", fake_gateway.endpoint, "--json")
        lines = run.json_lines()
        assert [line["outcome"] for line in lines] == ["waiting", "answered"]
        assert lines[-1]["verification"]["signed_by"] == "bank.ccb"

    def test_watch_expires(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        fake_gateway.tickets[ticket_id] = [
            (fake_gateway.signer.ticket(body, ticket_pb2.TICKET_STATE_WAITING), None),
            errors.Expired("bank.ccb did not answer before the deadline"),
        ]
        run = cli("ticket", "watch", ticket_id, "--endpoint", fake_gateway.endpoint)
        assert run.code == ExitCode.AGENCY_DECLINED
        assert "did not answer before the deadline" in run.err

    def test_watch_gives_up_after_timeout(
        self, cli: Callable[..., Run], fake_gateway: FakeGateway, queued: tuple[str, bytes]
    ) -> None:
        ticket_id, body = queued
        self._script(fake_gateway, ticket_id, body, ticket_pb2.TICKET_STATE_WAITING, answer=False)
        run = cli(
            "ticket", "watch", ticket_id, "--endpoint", fake_gateway.endpoint, "--timeout", "0.5"
        )
        assert run.code == ExitCode.QUEUED
        assert "still waiting after 0.5 s" in run.out


class TestWords:
    def test_codes_in_both_languages_and_members_by_name(self, federation_dir: Path) -> None:
        from fedgate.render import _result_lines

        registry = Registry.load_dir(federation_dir)
        result = bank_pb2.TransactionsResult(
            account_number=CARD_ICBC,
            transactions=[
                bank_pb2.Transaction(
                    transaction_id="t1",
                    direction="in",
                    counterparty_bank="bank.ccb",
                    channel="mobile",
                )
            ],
        )
        text = "\n".join(_result_lines(result, registry))
        assert "转入 in" in text
        assert "手机银行 mobile banking" in text
        assert f"bank.ccb ({registry.member('bank.ccb').name_zh})" in text
        freeze = bank_pb2.FreezeResult(account_number=CARD_ICBC)
        holder = bank_pb2.AccountHolderResult(status="frozen")
        assert "已冻结 frozen" in "\n".join(_result_lines(holder, registry))
        assert _result_lines(freeze, registry)

    def test_every_command_defaults_to_a_document_its_action_accepts(self) -> None:
        from fedgate.actions import ACCEPTED_DOCUMENTS
        from fedgate.commands._police import _DOC_KINDS

        for command in (*order.COMMANDS, *query.COMMANDS):
            assert _DOC_KINDS[command.doc_kind] in ACCEPTED_DOCUMENTS[command.action], command
