"""The policy truth tables (policies/tests/*.csv), checked with both deciders."""

from __future__ import annotations

import pytest

from gateway.policy import (
    ACTIONS,
    DEFAULT_MEMBER_KINDS,
    MEMBER_KINDS,
    PERSONAL_DATA_ACTIONS,
    ROLES,
    CasbinDecider,
    IndexedDecider,
    PolicyDecider,
    TruthRow,
    default_policy_dir,
    load_truth_table,
)
from gateway.policy._index import SELF, load_policy_source

POLICIES = default_policy_dir()
TABLES = sorted((POLICIES / "tests").glob("*.csv"))
ROWS = [row for table in TABLES for row in load_truth_table(table)]
GROUPS = {"agency"}


@pytest.fixture(scope="module", params=["casbin", "indexed"])
def decider(request: pytest.FixtureRequest) -> PolicyDecider:
    model, policy = POLICIES / "model.conf", POLICIES / "policy.csv"
    if request.param == "casbin":
        return CasbinDecider.from_files(model, policy)
    return IndexedDecider.from_files(model, policy)


class TestTruthTables:
    @pytest.mark.parametrize("row", ROWS, ids=[row.where for row in ROWS])
    def test_row(self, decider: PolicyDecider, row: TruthRow) -> None:
        decision = decider.decide(row.request(DEFAULT_MEMBER_KINDS))
        assert row.mismatch(decision) is None, f"{row}: {row.mismatch(decision)}"

    def test_one_table_per_area(self) -> None:
        names = {table.stem for table in TABLES}
        assert {"police", "agencies", "auditors", "central_bank", "cross_bank_isolation"} <= names
        assert len(ROWS) >= 120

    def test_every_role_and_action_is_exercised(self) -> None:
        assert {row.role for row in ROWS} >= ROLES
        assert {row.action for row in ROWS} >= ACTIONS
        assert {row.member for row in ROWS} >= set(DEFAULT_MEMBER_KINDS)

    def test_no_auditor_or_central_bank_row_allows_personal_data(self) -> None:
        for row in ROWS:
            if row.role in ("auditor", "central_bank_analyst") and row.allowed:
                assert row.action not in PERSONAL_DATA_ACTIONS, row

    def test_cross_bank_audit_read_own_is_denied(self) -> None:
        row = next(
            r
            for r in ROWS
            if (r.role, r.member, r.action, r.target)
            == ("bank_staff", "bank.icbc", "audit_read_own", "bank.ccb")
        )
        assert not row.allowed
        assert row.rule == ()


class TestPolicyVocabulary:
    def test_policy_uses_only_the_shared_vocabulary(self) -> None:
        source = load_policy_source(POLICIES / "model.conf", POLICIES / "policy.csv")
        members = set(DEFAULT_MEMBER_KINDS)
        for line in source.lines:
            assert line.sub in ROLES, line
            assert line.act in ACTIONS, line
            assert line.dom in MEMBER_KINDS | members, line
            assert line.obj in MEMBER_KINDS | members | GROUPS | {SELF}, line
        for user, role, domain in source.g:
            assert {user, role} <= ROLES
            assert domain in members
        for kind, group in source.g2:
            assert kind in MEMBER_KINDS
            assert group in GROUPS
        assert not source.g3

    def test_every_deny_line_is_about_personal_data_or_the_duty_desk(self) -> None:
        source = load_policy_source(POLICIES / "model.conf", POLICIES / "policy.csv")
        for line in source.lines:
            if line.eft == "deny":
                assert line.act in PERSONAL_DATA_ACTIONS, line
