"""Approvals are real (issue 10, item 3): a supervisor's approval is its own logged exchange,
and a bulk freeze must cite one that covers it; a self-asserted approval counts for nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.federation import DEFAULT_MEMBERS, MemberKind, MemberSpec
from fedgate.pki import init_federation
from fedgate.testing import officer, supervisor_approval
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

OK = request_pb2.RESPONSE_STATUS_OK
RULE = "RULE freeze.bulk_requires_approval"
BULK = "250 accounts in one order (≥ 200) need a centre supervisor's approval"
SUPERVISOR = common_pb2.ROLE_CENTRE_SUPERVISOR


async def _approve(h: GatewayHarness, case: str, **change: Any) -> request_pb2.Request:
    """A supervisor (440100600-699 on police.gd.afc's roster) approves freezes in ``case``."""
    approval = h.request("approval", case=case)
    grant = approval.approval
    for name, value in change.items():
        if name == "actions":
            del grant.actions[:]
            grant.actions.extend(value)
        elif name == "expires_at":
            grant.expires_at.FromDatetime(value)
        elif name == "max_amount":
            grant.max_amount.currency, grant.max_amount.minor_units = "CNY", value
        else:
            setattr(grant, name, value)
    submitted = await h.client().submit(approval)
    assert submitted.answer is not None
    result = submitted.answer.response
    assert result.status == OK
    assert result.approval.approval_request_id == approval.request_id
    return approval


def _bulk_freeze(h: GatewayHarness, case: str, approval_id: str = "") -> request_pb2.Request:
    order = h.request("freeze", case=case)
    order.freeze.bulk_count = 250
    order.approval_request_id = approval_id
    return order


async def _refused(h: GatewayHarness, request: request_pb2.Request, message: str) -> None:
    before = h.gateway.audit.size
    refusal = await h.refusal(h.sign(request))
    assert (refusal.code, refusal.error.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "RULE_VIOLATED",
    )
    assert refusal.error.message == message
    assert h.gateway.audit.size == before + 1
    entry = await h.last_entry()
    assert isinstance(entry, RequestLeg)
    assert (entry.decision, entry.request_id) == ("refused", request.request_id)
    assert entry.rule == f"RULE_VIOLATED: {message}"


class TestTheApprovalExchange:
    async def test_an_approval_is_logged_and_answered_by_the_gateway(
        self, harness: GatewayHarness
    ) -> None:
        case = harness.request().case.case_number
        approval = await _approve(harness, case)
        legs = [
            e
            for e in await harness.entries()
            if getattr(e, "request_id", "") == approval.request_id
        ]
        assert [type(e).__name__ for e in legs] == ["RequestLeg", "ResponseLeg"]
        request_leg, response_leg = legs
        assert isinstance(request_leg, RequestLeg)
        assert isinstance(response_leg, ResponseLeg)
        assert (request_leg.decision, request_leg.action, request_leg.officer_id) == (
            "allowed",
            "approval",
            approval.officer.id,
        )
        assert (response_leg.responder, response_leg.status) == ("gateway", "ok")

    @pytest.mark.parametrize(
        ("badge", "role", "reason", "message"),
        [
            (
                "440100150",
                common_pb2.ROLE_POLICE_INVESTIGATOR,
                "POLICY_DENIED",
                "police_investigator at police.gd.afc may not approval at gateway: no allow rule "
                "gives role 'police_investigator' (effective roles at police.gd.afc: "
                "police_investigator) action 'approval'; roles with it: centre_supervisor",
            ),
            (
                "440100150",
                SUPERVISOR,
                "POLICY_DENIED",
                "officer 440100150 does not hold the role centre_supervisor on the roster of "
                "police.gd.afc (roles: police_investigator, police_duty_officer)",
            ),
        ],
    )
    async def test_only_a_rostered_supervisor_may_approve(
        self, harness: GatewayHarness, badge: str, role: int, reason: str, message: str
    ) -> None:
        approval = harness.request("approval")
        approval.officer.id, approval.officer.role = badge, role  # type: ignore[assignment]
        refusal = await harness.refusal(harness.sign(approval))
        assert (refusal.code, refusal.error.reason) == (grpc.StatusCode.PERMISSION_DENIED, reason)
        assert refusal.error.message == message
        entry = await harness.last_entry()
        assert isinstance(entry, RequestLeg)
        assert (entry.decision, entry.request_id) == ("refused", approval.request_id)
        assert entry.rule == f"{reason}: {message}"


class TestABulkFreeze:
    async def test_a_self_asserted_approval_counts_for_nothing(
        self, harness: GatewayHarness
    ) -> None:
        order = _bulk_freeze(harness, harness.request().case.case_number)
        order.freeze.approval.CopyFrom(supervisor_approval(datetime.now(UTC)))
        await _refused(
            harness,
            order,
            f"{RULE}: {BULK}: cite the approval exchange in approval_request_id",
        )

    async def test_a_covering_approval_lets_it_through(self, harness: GatewayHarness) -> None:
        case = harness.request().case.case_number
        approval = await _approve(harness, case)
        order = _bulk_freeze(harness, case, approval.request_id)
        submitted = await harness.client().submit(order)
        assert submitted.answer is not None
        assert submitted.answer.response.status == OK

    async def test_the_approving_members_centre_may_approve_a_city_units_order(
        self, harness: GatewayHarness
    ) -> None:
        case = harness.request().case.case_number
        approval = await _approve(harness, case)
        order = _bulk_freeze(harness, case, approval.request_id)
        order.requesting_agency = "police.gz.unit"
        submitted = await harness.client("police.gz.unit").submit(order)
        assert submitted.answer is not None

    @pytest.mark.parametrize(
        "case",
        [
            "unknown",
            "not_an_approval",
            "other_case",
            "other_action",
            "too_many",
            "too_much",
            "expired",
            "own_order",
        ],
    )
    async def test_an_approval_that_does_not_cover_the_order(
        self, harness: GatewayHarness, case: str
    ) -> None:
        h = harness
        case_number = h.request().case.case_number
        cited: str
        problem: str
        if case == "unknown":
            cited = h.request().request_id
            problem = f"{cited} is not an approval the gateway allowed (not in the audit log)"
        elif case == "not_an_approval":
            query = h.request()
            assert (await h.client().submit(query)).answer is not None
            cited = query.request_id
            problem = f"{cited} is a account_holder, not an approval"
        elif case == "other_case":
            other = h.request().case.case_number
            cited = (await _approve(h, other)).request_id
            problem = f"approval {cited} is for case {other}, not {case_number}"
        elif case == "other_action":
            cited = (await _approve(h, case_number, actions=["monitor_start"])).request_id
            problem = f"approval {cited} covers monitor_start, not freeze"
        elif case == "too_many":
            cited = (await _approve(h, case_number, max_count=200)).request_id
            problem = f"approval {cited} covers at most 200 accounts, not 250"
        elif case == "too_much":
            cited = (await _approve(h, case_number, max_amount=100_000)).request_id
            problem = f"approval {cited} covers at most 100000 CNY (minor units), not 4980000 CNY"
        elif case == "expired":
            expires = datetime.now(UTC) + timedelta(seconds=1)
            cited = (await _approve(h, case_number, expires_at=expires)).request_id
            await asyncio.sleep(1.5)
            stamp = expires.isoformat(timespec="microseconds").replace("+00:00", "Z")
            problem = f"approval {cited} expired at {stamp}"
        else:
            approval = await _approve(h, case_number)
            cited = approval.request_id
            order = _bulk_freeze(h, case_number, cited)
            order.officer.CopyFrom(officer(0))
            order.officer.id = approval.officer.id
            problem = f"officer {approval.officer.id} cannot approve their own order"
            await _refused(h, order, f"{RULE}: {BULK}: {problem}")
            return
        await _refused(h, _bulk_freeze(h, case_number, cited), f"{RULE}: {BULK}: {problem}")


SHENZHEN = MemberSpec(
    MemberId("police.sz.unit"),
    "深圳市公安局反诈中心",
    "Shenzhen Municipal Anti-Fraud Unit",
    MemberKind.POLICE,
    ("police_investigator", "police_duty_officer", "centre_supervisor"),
    max(m.port for m in DEFAULT_MEMBERS) + 1,  # the next port after the default federation's
    MemberId("police.gd.afc"),
)


class TestWhoseApprovalCounts:
    async def test_only_the_ordering_member_or_one_above_it(
        self,
        harness_factory: Callable[..., Any],
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        fed = init_federation(
            tmp_path_factory.mktemp("approval-fed") / "fed",
            members=(*DEFAULT_MEMBERS, SHENZHEN),
            now=datetime.now(UTC) - timedelta(days=1),
        )
        h = await harness_factory(fed, tmp_path_factory.mktemp("approval-gw"))
        try:
            case_number = h.request().case.case_number
            approval = h.request("approval", case=case_number, requesting_agency="police.sz.unit")
            submitted = await h.client("police.sz.unit").submit(approval)
            assert submitted.answer is not None
            # A neighbouring unit's supervisor approves nothing for police.gz.unit ...
            order = _bulk_freeze(h, case_number, approval.request_id)
            order.requesting_agency = "police.gz.unit"
            refusal = await h.refusal(h.sign(order, "police.gz.unit"), member="police.gz.unit")
            message = (
                f"{RULE}: {BULK}: approval {approval.request_id} was given by police.sz.unit, "
                "which is neither police.gz.unit nor a member above it"
            )
            assert (refusal.error.reason, refusal.error.message) == ("RULE_VIOLATED", message)
            entry = await h.last_entry()
            assert isinstance(entry, RequestLeg)
            assert entry.rule == f"RULE_VIOLATED: {message}"
            # ... nor for the provincial centre above it; but for itself it does.
            above = _bulk_freeze(h, case_number, approval.request_id)
            refusal = await h.refusal(h.sign(above))
            assert refusal.error.message == (
                f"{RULE}: {BULK}: approval {approval.request_id} was given by police.sz.unit, "
                "which is neither police.gd.afc nor a member above it"
            )
            own = _bulk_freeze(h, case_number, approval.request_id)
            own.requesting_agency = "police.sz.unit"
            assert (await h.client("police.sz.unit").submit(own)).answer is not None
        finally:
            await h.close()
