"""Tests for gateway.rules: every business rule, allowed and refused, over a real SQLite state
and over the state shared in PostgreSQL (``gateway.rules_pg``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedgate.actions import (
    ACCEPTED_DOCUMENTS,
    ACTIONS,
    CITING_ACTIONS,
    REPORT_ACTIONS,
    document_name,
)
from fedgate.errors import AuditUnavailable, RuleViolated
from fedgate.testing import card_number, officer, supervisor_approval, valid_request
from fedgate.v1 import common_pb2, request_pb2
from gateway.pipeline.validation import mask, validate_request
from gateway.rules import (
    BULK_CASE_THRESHOLD,
    BULK_ORDER_THRESHOLD,
    RULES,
    BusinessRules,
    BusinessRuleViolated,
)
from gateway.rules_pg import open_shared_rules

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
OK = request_pb2.RESPONSE_STATUS_OK
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
CASE = "A44010000000020260300042"
# A card with a Luhn digit but no federation bank's prefix: valid at any target bank.
NEUTRAL_CARD = "9558801234567890128"


@pytest.fixture(params=["sqlite", "postgres"])
def rules(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusinessRules]:
    """The state in SQLite, and shared in PostgreSQL (``gateway.rules_pg``): same rules."""
    if request.param == "postgres":
        pg = request.getfixturevalue("pg")
        r = open_shared_rules(dsn=pg.dsn, schema=pg.schema)
    else:
        r = BusinessRules.open(tmp_path / "state" / "rules.sqlite")
    yield r
    r.close()


def request(action: str, *, now: datetime = NOW, **kwargs: object) -> request_pb2.Request:
    """A valid request (checked by the validator, so the rules see what the pipeline sees)."""
    r = valid_request(action, now=now, **kwargs)  # type: ignore[arg-type]
    validate_request(r, now=now)
    return r


def allowed(rules: BusinessRules, r: request_pb2.Request, *, now: datetime = NOW) -> None:
    rules.check(r, action=str(r.WhichOneof("action")), now=now)


def refused(
    rules: BusinessRules, r: request_pb2.Request, rule: str, *, now: datetime = NOW
) -> BusinessRuleViolated:
    with pytest.raises(BusinessRuleViolated, match=rf"^RULE {rule}: ") as caught:
        allowed(rules, r, now=now)
    assert caught.value.rule == rule
    assert rule in RULES
    assert isinstance(caught.value, RuleViolated)
    assert caught.value.reason == "RULE_VIOLATED"
    return caught.value


def executed(
    rules: BusinessRules, action: str, *, now: datetime = NOW, **kwargs: object
) -> request_pb2.Request:
    """Check, then record as answered OK: an order the agency carried out."""
    r = request(action, now=now, **kwargs)
    allowed(rules, r, now=now)
    rules.record_outcome(r, action=action, status=OK, now=now)
    return r


class TestStopPaymentMaxTwoPerAccount:
    def test_two_allowed_third_refused(self, rules: BusinessRules) -> None:
        executed(rules, "stop_payment")
        executed(rules, "stop_payment", now=NOW + HOUR)
        third = request("stop_payment", now=NOW + 2 * HOUR)
        account = third.stop_payment.account_number
        error = refused(rules, third, "stop_payment.max_two_per_account", now=NOW + 2 * HOUR)
        assert error.message == (
            f"RULE stop_payment.max_two_per_account: account {mask(account)} at bank.icbc "
            "has already been stopped twice (2 stop-payment(s))"
        )
        assert account not in error.message

    def test_expired_stops_still_count(self, rules: BusinessRules) -> None:
        executed(rules, "stop_payment")
        executed(rules, "stop_payment", now=NOW + 3 * DAY)
        later = NOW + 30 * DAY
        refused(
            rules, request("stop_payment", now=later), "stop_payment.max_two_per_account", now=later
        )

    def test_an_extension_counts_as_a_stop(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        executed(
            rules, "stop_payment_extend", now=NOW + HOUR, original_request_id=original.request_id
        )
        error = refused(
            rules,
            request("stop_payment", now=NOW + 2 * HOUR),
            "stop_payment.max_two_per_account",
            now=NOW + 2 * HOUR,
        )
        assert "1 stop-payment(s) and 1 extension(s)" in error.message

    def test_counted_per_account_and_bank(self, rules: BusinessRules) -> None:
        executed(rules, "stop_payment")
        executed(rules, "stop_payment")
        allowed(rules, request("stop_payment", serial=1))
        allowed(rules, request("stop_payment", target="bank.ccb"))

    def test_refused_answers_do_not_count(self, rules: BusinessRules) -> None:
        for status in (
            request_pb2.RESPONSE_STATUS_REFUSED,
            request_pb2.RESPONSE_STATUS_PENDING,
            request_pb2.RESPONSE_STATUS_INVALID,
        ):
            r = request("stop_payment")
            rules.record_outcome(r, action="stop_payment", status=status, now=NOW)
        executed(rules, "stop_payment")
        allowed(rules, request("stop_payment"))

    def test_recording_twice_counts_once(self, rules: BusinessRules) -> None:
        r = executed(rules, "stop_payment")
        rules.record_outcome(r, action="stop_payment", status=OK, now=NOW + HOUR)
        allowed(rules, request("stop_payment"))

    def test_the_count_survives_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.sqlite"
        first = BusinessRules.open(path)
        executed(first, "stop_payment")
        executed(first, "stop_payment")
        first.close()
        again = BusinessRules.open(path)
        try:
            refused(again, request("stop_payment"), "stop_payment.max_two_per_account")
        finally:
            again.close()


class TestStopPaymentRelease:
    RULE = "stop_payment_release.cites_executed_stop"

    def test_release_of_an_executed_stop(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        allowed(rules, request("stop_payment_release", original_request_id=original.request_id))

    def test_release_of_an_unknown_order(self, rules: BusinessRules) -> None:
        r = request("stop_payment_release")
        error = refused(rules, r, self.RULE)
        assert f"{r.original_request_id} is not an executed stop-payment" in error.message

    def test_release_on_another_account(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        r = request("stop_payment_release", serial=1, original_request_id=original.request_id)
        error = refused(rules, r, self.RULE)
        assert mask(original.stop_payment.account_number) in error.message
        assert original.stop_payment.account_number not in error.message

    def test_release_at_another_bank(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment", account_number=NEUTRAL_CARD)
        r = request(
            "stop_payment_release",
            target="bank.ccb",
            account_number=NEUTRAL_CARD,
            original_request_id=original.request_id,
        )
        assert "at bank.icbc, not" in refused(rules, r, self.RULE).message

    def test_release_twice(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        executed(rules, "stop_payment_release", original_request_id=original.request_id)
        r = request("stop_payment_release", original_request_id=original.request_id)
        assert "was released at" in refused(rules, r, self.RULE).message

    def test_a_stop_payment_is_not_a_freeze(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        r = request("freeze_release", original_request_id=original.request_id)
        refused(rules, r, "freeze_release.cites_freeze")


class TestStopPaymentExtend:
    RULE = "stop_payment_extend.cites_stop_in_force"

    def test_extend_a_stop_in_force(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        later = NOW + 47 * HOUR
        r = request("stop_payment_extend", now=later, original_request_id=original.request_id)
        allowed(rules, r, now=later)

    def test_a_stop_payment_expires_after_48_hours(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        later = NOW + 48 * HOUR
        r = request("stop_payment_extend", now=later, original_request_id=original.request_id)
        assert (
            "expired at 2026-03-16 17:26:53+08:00"
            in refused(rules, r, self.RULE, now=later).message
        )

    def test_extend_a_released_stop(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        executed(rules, "stop_payment_release", original_request_id=original.request_id)
        r = request("stop_payment_extend", original_request_id=original.request_id)
        assert "was released" in refused(rules, r, self.RULE).message

    def test_extend_an_unknown_order(self, rules: BusinessRules) -> None:
        refused(rules, request("stop_payment_extend"), self.RULE)

    def test_extend_on_another_account(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        r = request("stop_payment_extend", serial=2, original_request_id=original.request_id)
        refused(rules, r, self.RULE)

    def test_extended_once_only(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        first = executed(
            rules, "stop_payment_extend", now=NOW + HOUR, original_request_id=original.request_id
        )
        r = request(
            "stop_payment_extend", now=NOW + 2 * HOUR, original_request_id=original.request_id
        )
        error = refused(rules, r, "stop_payment_extend.once_per_original", now=NOW + 2 * HOUR)
        assert first.request_id in error.message

    def test_an_extension_adds_48_hours(self, rules: BusinessRules) -> None:
        original = executed(rules, "stop_payment")
        executed(
            rules, "stop_payment_extend", now=NOW + HOUR, original_request_id=original.request_id
        )
        # 60 h after execution the original would have lapsed; extended, it is still in force
        # (so the once-per-original rule, not the in-force rule, is what refuses).
        later = NOW + 60 * HOUR
        r = request("stop_payment_extend", now=later, original_request_id=original.request_id)
        refused(rules, r, "stop_payment_extend.once_per_original", now=later)
        lapsed = NOW + 96 * HOUR
        r = request("stop_payment_extend", now=lapsed, original_request_id=original.request_id)
        refused(rules, r, self.RULE, now=lapsed)

    def test_extension_refused_when_the_account_was_stopped_twice(
        self, rules: BusinessRules
    ) -> None:
        original = executed(rules, "stop_payment")
        executed(rules, "stop_payment", now=NOW + HOUR)
        r = request(
            "stop_payment_extend", now=NOW + 2 * HOUR, original_request_id=original.request_id
        )
        refused(rules, r, "stop_payment.max_two_per_account", now=NOW + 2 * HOUR)


class TestLegalDocumentKind:
    RULE = "legal_document.accepted_kind"

    @pytest.mark.parametrize("action", sorted(ACTIONS - CITING_ACTIONS))
    def test_every_action_accepts_its_kinds_and_refuses_the_others(
        self, rules: BusinessRules, action: str
    ) -> None:
        accepted = ACCEPTED_DOCUMENTS[action]
        for kind in set(common_pb2.LegalDocumentKind.values()) - {0}:
            r = request(action) if action not in REPORT_ACTIONS else valid_request(action, now=NOW)
            r.legal_document.kind = kind  # type: ignore[assignment]
            if kind in accepted:
                allowed(rules, r)
                continue
            error = refused(rules, r, self.RULE)
            for ok in accepted:
                assert document_name(ok) in error.message

    @pytest.mark.parametrize(
        ("action", "named"),
        [("stop_payment", "紧急止付通知书 (stop_payment_notice)"),
         ("number_suspend", "技术反制通知 (countermeasure_order)")],
    )  # fmt: skip
    def test_an_order_on_a_query_notice_is_refused(
        self, rules: BusinessRules, action: str, named: str
    ) -> None:
        r = request(action)
        r.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE
        error = refused(rules, r, self.RULE)
        assert error.message.endswith(
            f"{action} must cite {named}, not 协助查询财产通知书 (query_notice)"
        )

    def test_freeze_with_a_case_filing_decision(self, rules: BusinessRules) -> None:
        allowed(rules, request("freeze"))

    @pytest.mark.parametrize(
        "kind",
        [
            common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE,
            common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE,
            common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE,
        ],
    )
    def test_freeze_without_one(self, rules: BusinessRules, kind: int) -> None:
        r = request("freeze")
        r.legal_document.kind = kind  # type: ignore[assignment]
        error = refused(rules, r, self.RULE)
        assert "立案决定书" in error.message

    def test_renewal_without_one(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        r = request("freeze_renew", original_request_id=original.request_id)
        r.legal_document.kind = common_pb2.LEGAL_DOCUMENT_KIND_FREEZE_NOTICE
        refused(rules, r, self.RULE)


class TestFreezeMaxSixMonths:
    def test_183_days(self, rules: BusinessRules) -> None:
        r = request("freeze")
        r.freeze.end.FromDatetime(NOW + timedelta(days=183))
        allowed(rules, r)

    def test_counted_from_execution_not_from_an_earlier_start(self, rules: BusinessRules) -> None:
        r = request("freeze")
        r.freeze.start.FromDatetime(NOW - timedelta(days=10))
        r.freeze.end.FromDatetime(NOW + timedelta(days=180))
        allowed(rules, r)

    def test_184_days(self, rules: BusinessRules) -> None:
        r = request("freeze")
        r.freeze.end.FromDatetime(NOW + timedelta(days=184))
        error = refused(rules, r, "freeze.max_six_months")
        assert "lasts 184 days; at most 183" in error.message


class TestFreezeBulkRequiresApproval:
    """Which freezes need a supervisor's approval. The approval itself is an exchange in the
    audit log that the pipeline checks (tests/gateway/test_approval.py); the self-asserted
    FreezeOrder.approval is never looked at."""

    def bulk(self, count: int, *, serial: int = 0) -> request_pb2.Request:
        r = request("freeze", serial=serial)
        r.freeze.bulk_count = count
        return r

    def test_below_the_order_threshold(self, rules: BusinessRules) -> None:
        allowed(rules, self.bulk(BULK_ORDER_THRESHOLD - 1))
        assert rules.approval_needed(self.bulk(BULK_ORDER_THRESHOLD - 1), action="freeze") is None

    def test_at_the_order_threshold(self, rules: BusinessRules) -> None:
        r = self.bulk(BULK_ORDER_THRESHOLD)
        allowed(rules, r)  # the other freeze rules pass; approval is the pipeline's check
        assert rules.approval_needed(r, action="freeze") == "200 accounts in one order (≥ 200)"

    def test_a_self_asserted_approval_changes_nothing(self, rules: BusinessRules) -> None:
        r = self.bulk(250)
        r.freeze.approval.CopyFrom(supervisor_approval(NOW))
        assert rules.approval_needed(r, action="freeze") == "250 accounts in one order (≥ 200)"

    def test_other_actions_need_none(self, rules: BusinessRules) -> None:
        assert rules.approval_needed(request("stop_payment"), action="stop_payment") is None

    def test_cumulative_in_one_case(self, rules: BusinessRules) -> None:
        recorded = 310
        for i in range(recorded):
            executed(rules, "freeze", serial=i, case=CASE)
        below = self.bulk(BULK_CASE_THRESHOLD - recorded - 1, serial=999)
        below.case.case_number = CASE
        assert rules.approval_needed(below, action="freeze") is None
        reaching = self.bulk(BULK_CASE_THRESHOLD - recorded, serial=999)
        reaching.case.case_number = CASE
        assert rules.approval_needed(reaching, action="freeze") == (
            f"case {CASE} would reach 500 frozen accounts (≥ 500)"
        )
        other_case = self.bulk(BULK_CASE_THRESHOLD - recorded, serial=999)
        assert rules.approval_needed(other_case, action="freeze") is None


class TestFreezeRenew:
    RULE = "freeze_renew.cites_freeze_in_force"

    def test_renew_a_freeze_in_force(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        allowed(rules, request("freeze_renew", original_request_id=original.request_id))

    def test_renew_an_unknown_freeze(self, rules: BusinessRules) -> None:
        refused(rules, request("freeze_renew"), self.RULE)

    def test_renew_a_lapsed_freeze(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")  # ends 90 days after NOW
        later = NOW + timedelta(days=91)
        r = request("freeze_renew", now=later, original_request_id=original.request_id)
        assert "lapsed at" in refused(rules, r, self.RULE, now=later).message

    def test_renew_a_released_freeze(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        executed(rules, "freeze_release", original_request_id=original.request_id)
        r = request("freeze_renew", original_request_id=original.request_id)
        assert "was released" in refused(rules, r, self.RULE).message

    def test_renew_on_another_account(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        r = request("freeze_renew", serial=3, original_request_id=original.request_id)
        refused(rules, r, self.RULE)

    def test_new_end_at_most_183_days_ahead(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        r = request("freeze_renew", original_request_id=original.request_id)
        r.freeze_renew.end.FromDatetime(NOW + timedelta(days=183))
        allowed(rules, r)
        r.freeze_renew.end.FromDatetime(NOW + timedelta(days=184))
        refused(rules, r, "freeze_renew.max_six_months")

    def test_a_renewal_moves_the_end(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")  # ends at NOW + 90 days
        executed(rules, "freeze_renew", original_request_id=original.request_id)  # NOW + 120
        later = NOW + timedelta(days=100)
        allowed(
            rules,
            request("freeze_renew", now=later, original_request_id=original.request_id),
            now=later,
        )


class TestFreezeRelease:
    RULE = "freeze_release.cites_freeze"

    def test_release_an_executed_freeze(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        allowed(rules, request("freeze_release", original_request_id=original.request_id))

    def test_release_a_lapsed_freeze_is_allowed(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        later = NOW + timedelta(days=100)
        r = request("freeze_release", now=later, original_request_id=original.request_id)
        allowed(rules, r, now=later)

    def test_release_an_unknown_freeze(self, rules: BusinessRules) -> None:
        refused(rules, request("freeze_release"), self.RULE)

    def test_release_twice(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze")
        executed(rules, "freeze_release", original_request_id=original.request_id)
        r = request("freeze_release", original_request_id=original.request_id)
        refused(rules, r, self.RULE)

    def test_release_at_another_bank(self, rules: BusinessRules) -> None:
        original = executed(rules, "freeze", account_number=NEUTRAL_CARD)
        r = request(
            "freeze_release",
            target="bank.abc",
            account_number=NEUTRAL_CARD,
            original_request_id=original.request_id,
        )
        assert "at bank.icbc, not" in refused(rules, r, self.RULE).message


class TestSecondOfficer:
    @pytest.mark.parametrize("action", ["call_records", "location"])
    def test_with_a_second_officer(self, rules: BusinessRules, action: str) -> None:
        allowed(rules, request(action))

    @pytest.mark.parametrize("action", ["call_records", "location"])
    def test_without_one(self, rules: BusinessRules, action: str) -> None:
        r = request(action)
        r.ClearField("second_officer")
        refused(rules, r, f"{action}.requires_second_officer")

    @pytest.mark.parametrize("action", ["call_records", "location"])
    def test_the_same_officer_twice(self, rules: BusinessRules, action: str) -> None:
        r = request(action)
        r.second_officer.CopyFrom(r.officer)
        error = refused(rules, r, f"{action}.requires_second_officer")
        assert "another officer" in error.message

    def test_a_second_officer_must_be_police(self, rules: BusinessRules) -> None:
        r = request("call_records")
        r.second_officer.CopyFrom(officer(77, role=common_pb2.ROLE_BANK_STAFF))
        refused(rules, r, "call_records.requires_second_officer")

    def test_a_second_officer_without_a_name(self, rules: BusinessRules) -> None:
        r = request("location")
        r.second_officer.name = ""
        refused(rules, r, "location.requires_second_officer")


class TestMonitorStop:
    RULE = "monitor_stop.cites_monitor_start"

    def test_stop_a_started_monitor(self, rules: BusinessRules) -> None:
        start = executed(rules, "monitor_start")
        allowed(rules, request("monitor_stop", original_request_id=start.request_id))

    def test_stop_an_unknown_monitor(self, rules: BusinessRules) -> None:
        refused(rules, request("monitor_stop"), self.RULE)

    def test_stop_twice(self, rules: BusinessRules) -> None:
        start = executed(rules, "monitor_start")
        executed(rules, "monitor_stop", original_request_id=start.request_id)
        r = request("monitor_stop", original_request_id=start.request_id)
        assert "was stopped at" in refused(rules, r, self.RULE).message

    def test_stop_on_another_account(self, rules: BusinessRules) -> None:
        start = executed(rules, "monitor_start")
        r = request(
            "monitor_stop",
            account_number=card_number("bank.icbc", 4),
            original_request_id=start.request_id,
        )
        refused(rules, r, self.RULE)


class TestStateAndFailures:
    def test_every_rule_is_catalogued(self) -> None:
        assert all(rule.count(".") == 1 for rule in RULES)
        assert all(RULES.values())

    @pytest.mark.parametrize(
        "action", ["account_holder", "subscriber", "number_suspend", "case_report", "monitor_start"]
    )
    def test_actions_without_rules_need_no_state(self, tmp_path: Path, action: str) -> None:
        closed = BusinessRules.open(tmp_path / "rules.sqlite")
        closed.close()
        allowed(closed, request(action))

    def test_unreadable_state_fails_closed(self, tmp_path: Path) -> None:
        closed = BusinessRules.open(tmp_path / "rules.sqlite")
        closed.close()
        with pytest.raises(AuditUnavailable, match="business-rules state unreadable"):
            allowed(closed, request("stop_payment"))
        with pytest.raises(AuditUnavailable, match="not written"):
            closed.record_outcome(
                request("stop_payment"), action="stop_payment", status=OK, now=NOW
            )

    def test_an_unopenable_path_fails_closed(self, tmp_path: Path) -> None:
        (tmp_path / "dir.sqlite").mkdir()
        with pytest.raises(AuditUnavailable, match="cannot open"):
            BusinessRules.open(tmp_path / "dir.sqlite")

    def test_an_outcome_citing_an_unknown_order_is_logged(
        self, rules: BusinessRules, caplog: pytest.LogCaptureFixture
    ) -> None:
        r = request("stop_payment_release")
        rules.record_outcome(r, action="stop_payment_release", status=OK, now=NOW)
        assert r.original_request_id in caplog.text


class TestRepeatedOrders:
    """An order repeating one in force (same account, case, document) is not counted again."""

    def test_a_repeated_stop_passes_the_limit_and_is_not_counted(
        self, rules: BusinessRules
    ) -> None:
        executed(rules, "stop_payment")
        second = executed(rules, "stop_payment", now=NOW + HOUR)
        notice = second.legal_document.number
        repeat = request("stop_payment", now=NOW + 2 * HOUR, document_number=notice)
        allowed(rules, repeat, now=NOW + 2 * HOUR)
        rules.record_outcome(
            repeat,
            action="stop_payment",
            status=OK,
            now=NOW + 2 * HOUR,
            repeat_of=second.request_id,
        )
        # still two stops: a new notice is refused, the repeat passes again
        fresh = request("stop_payment", now=NOW + 3 * HOUR)
        refused(rules, fresh, "stop_payment.max_two_per_account", now=NOW + 3 * HOUR)
        again = request("stop_payment", now=NOW + 3 * HOUR, document_number=notice)
        allowed(rules, again, now=NOW + 3 * HOUR)

    def test_a_repeat_of_a_released_stop_is_a_new_stop(self, rules: BusinessRules) -> None:
        executed(rules, "stop_payment")
        second = executed(rules, "stop_payment", now=NOW + HOUR)
        executed(
            rules, "stop_payment_release", now=NOW + 2 * HOUR, original_request_id=second.request_id
        )
        repeat = request(
            "stop_payment", now=NOW + 3 * HOUR, document_number=second.legal_document.number
        )
        refused(rules, repeat, "stop_payment.max_two_per_account", now=NOW + 3 * HOUR)

    def test_a_repeat_in_another_case_is_a_new_stop(self, rules: BusinessRules) -> None:
        executed(rules, "stop_payment")
        second = executed(rules, "stop_payment", now=NOW + HOUR)
        other = request(
            "stop_payment",
            now=NOW + 2 * HOUR,
            document_number=second.legal_document.number,
            case="A44010000000020260300043",
        )
        refused(rules, other, "stop_payment.max_two_per_account", now=NOW + 2 * HOUR)


class TestRefunds:
    """``refund.*`` against the state: the freeze in force and the victim's reported loss (the
    freeze's own amount and ordering unit are checked against the log: test_refund_e2e)."""

    @staticmethod
    def _refund(
        freeze: request_pb2.Request, *, amount: int, loss: int, now: datetime = NOW
    ) -> request_pb2.Request:
        r = request(
            "refund",
            now=now,
            original_request_id=freeze.request_id,
            account_number=freeze.freeze.account_number,
            case=freeze.case.case_number,
        )
        r.refund.amount.minor_units = amount
        r.refund.reported_loss.minor_units = loss
        return r

    def test_limits_and_what_was_refunded(self, rules: BusinessRules) -> None:
        freeze = executed(rules, "freeze", case=CASE)
        first = self._refund(freeze, amount=300_00, loss=500_00)
        allowed(rules, first)
        rules.record_outcome(first, action="refund", status=OK, now=NOW)
        rules.record_outcome(first, action="refund", status=OK, now=NOW)  # idempotent
        assert rules.refunded_from(freeze.request_id) == 300_00
        error = refused(
            rules,
            self._refund(freeze, amount=200_01, loss=500_00),
            "refund.max_reported_loss",
        )
        assert "¥300.00 already refunded, at most ¥200.00 remains" in str(error)
        allowed(rules, self._refund(freeze, amount=200_00, loss=500_00))
        refused(rules, self._refund(freeze, amount=1_00, loss=900_00), "refund.same_reported_loss")

    def test_a_refused_refund_is_not_counted(self, rules: BusinessRules) -> None:
        freeze = executed(rules, "freeze", case=CASE)
        r = self._refund(freeze, amount=100_00, loss=500_00)
        rules.record_outcome(
            r, action="refund", status=request_pb2.RESPONSE_STATUS_REFUSED, now=NOW
        )
        assert rules.refunded_from(freeze.request_id) == 0

    def test_the_freeze_must_be_in_force(self, rules: BusinessRules) -> None:
        freeze = executed(rules, "freeze", case=CASE)
        lapsed = NOW + timedelta(days=91)
        refused(
            rules,
            self._refund(freeze, amount=1_00, loss=5_00, now=lapsed),
            "refund.cites_freeze_in_force",
            now=lapsed,
        )
        executed(
            rules,
            "freeze_release",
            original_request_id=freeze.request_id,
            account_number=freeze.freeze.account_number,
        )
        error = refused(
            rules, self._refund(freeze, amount=1_00, loss=5_00), "refund.cites_freeze_in_force"
        )
        assert "was released at" in str(error)
        unknown = self._refund(freeze, amount=1_00, loss=5_00)
        unknown.original_request_id = request("freeze").request_id
        assert "is not an executed freeze" in str(
            refused(rules, unknown, "refund.cites_freeze_in_force")
        )
