"""Only the ordering unit, or a member above it, may undo an order (issue 10, item 2).

The federation here has the provincial centre ``police.gd.afc`` with two city units under it,
``police.gz.unit`` and ``police.sz.unit``. Every release, extension, renewal, stop and restore
cites its original by ``original_request_id``; the gateway finds the original's request leg in
its audit log and refuses, with a logged request leg, an undo by anyone but the ordering unit
or a member above it, and one citing an order of another kind, target or account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio

from fedgate.audit_entry import RequestLeg
from fedgate.errors import InvalidArgument
from fedgate.federation import DEFAULT_MEMBERS, MemberKind, MemberSpec
from fedgate.pki import init_federation
from fedgate.types import MemberId
from fedgate.v1 import request_pb2

if TYPE_CHECKING:
    from conftest import GatewayHarness

GD = "police.gd.afc"
GZ = "police.gz.unit"
SZ = "police.sz.unit"
OK = request_pb2.RESPONSE_STATUS_OK

SHENZHEN = MemberSpec(
    MemberId(SZ),
    "深圳市公安局反诈中心",
    "Shenzhen Municipal Anti-Fraud Unit",
    MemberKind.POLICE,
    ("police_investigator", "police_duty_officer"),
    max(m.port for m in DEFAULT_MEMBERS) + 1,  # the next port after the default federation's
    MemberId(GD),
)

ORDER_OF: dict[str, str] = {
    "stop_payment_release": "stop_payment",
    "stop_payment_extend": "stop_payment",
    "freeze_release": "freeze",
    "freeze_renew": "freeze",
    "monitor_stop": "monitor_start",
}


@pytest.fixture(scope="module")
def undo_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_federation(
        tmp_path_factory.mktemp("undo-federation") / "fed",
        members=(*DEFAULT_MEMBERS, SHENZHEN),
        now=datetime.now(UTC) - timedelta(days=1),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def h(
    harness_factory: Callable[..., Any],
    undo_federation: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayHarness]:
    harness: GatewayHarness = await harness_factory(
        undo_federation, tmp_path_factory.mktemp("undo-gateway")
    )
    try:
        yield harness
    finally:
        await harness.close()


async def _order(h: GatewayHarness, action: str, member: str) -> request_pb2.Request:
    order = h.request(action, requesting_agency=member)
    submitted = await h.client(member).submit(order)
    assert submitted.answer is not None
    assert submitted.answer.response.status == OK
    return order


def _undo(
    h: GatewayHarness, action: str, member: str, original: request_pb2.Request
) -> request_pb2.Request:
    kind = original.WhichOneof("action") or ""
    undo = h.request(
        action,
        requesting_agency=member,
        original_request_id=original.request_id,
        account_number=getattr(original, kind).account_number,
    )
    if action == "freeze_renew":
        undo.case.CopyFrom(original.case)
    return undo


pytestmark = pytest.mark.asyncio(loop_scope="module")


class TestWhoMayUndo:
    @pytest.mark.parametrize(
        ("action", "orderer", "undoer", "allowed"),
        [
            ("stop_payment_release", GD, GZ, False),  # a city unit, the centre's order
            ("stop_payment_release", GZ, SZ, False),  # a neighbouring unit's order
            ("stop_payment_release", GZ, GD, True),  # the centre above the unit
            ("stop_payment_release", GZ, GZ, True),  # the unit itself
            ("stop_payment_extend", GZ, SZ, False),
            ("stop_payment_extend", SZ, GD, True),
            ("freeze_release", GD, SZ, False),
            ("freeze_release", SZ, SZ, True),
            ("freeze_renew", GZ, SZ, False),
            ("freeze_renew", GZ, GD, True),
            ("monitor_stop", GD, GZ, False),
            ("monitor_stop", GZ, GD, True),
        ],
    )
    async def test_only_the_ordering_unit_or_one_above_it(
        self, h: GatewayHarness, action: str, orderer: str, undoer: str, allowed: bool
    ) -> None:
        original = await _order(h, ORDER_OF[action], orderer)
        undo = _undo(h, action, undoer, original)
        if allowed:
            submitted = await h.client(undoer).submit(undo)
            assert submitted.answer is not None
            assert submitted.answer.response.status == OK
            return
        before = h.gateway.audit.size
        refusal = await h.refusal(h.sign(undo, undoer), member=undoer)
        assert (refusal.code, refusal.error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "POLICY_DENIED",
        )
        ancestors = "police.gd.afc" if orderer != GD else "none"
        expected = (
            f"RULE undo.by_ordering_unit_or_above: {ORDER_OF[action]} {original.request_id} was "
            f"ordered by {orderer}: only {orderer} or a member above it ({ancestors}) may "
            f"{action.replace('_', ' ')} it, not {undoer}"
        )
        assert refusal.error.message == expected
        assert h.gateway.audit.size == before + 1
        entry = await h.last_entry()
        assert isinstance(entry, RequestLeg)
        assert (entry.decision, entry.request_id, entry.peer) == (
            "refused",
            undo.request_id,
            undoer,
        )
        assert entry.rule == f"POLICY_DENIED: {expected}"


class TestTheCitedOrder:
    async def test_an_undo_must_cite_its_original(self, h: GatewayHarness) -> None:
        for action in (*ORDER_OF, "number_restore"):
            undo = h.request(action)
            undo.original_request_id = ""
            refusal = await h.refusal(h.sign(undo))
            assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
            assert isinstance(refusal.error, InvalidArgument)
            assert [v.field for v in refusal.error.violations] == ["original_request_id"]
            entry = await h.last_entry()
            assert isinstance(entry, RequestLeg)
            assert entry.decision == "refused"
            assert entry.rule.startswith("INVALID_ARGUMENT: ")

    @pytest.mark.parametrize("case", ["unknown", "wrong_kind", "a_query", "not_executed"])
    async def test_number_restore_cites_a_suspend_or_block_of_that_number(
        self, h: GatewayHarness, case: str
    ) -> None:
        stop = await _order(h, "stop_payment", GD)
        cited = {
            "unknown": h.request("account_holder").request_id,
            "wrong_kind": stop.request_id,
        }
        if case == "a_query":  # a query, not an order: found, but the wrong kind
            query = h.request("account_holder")
            assert (await h.client().submit(query)).answer is not None
            cited[case] = query.request_id
        if case == "not_executed":  # the bank is down: allowed, but never executed
            down = h.request("stop_payment", target="bank.ccb")
            with pytest.raises(Exception):  # noqa: B017 - AgencyUnavailable, logged
                await h.client().submit(down)
            cited[case] = down.request_id
        restore = h.request("number_restore", original_request_id=cited[case])
        refusal = await h.refusal(h.sign(restore))
        assert (refusal.code, refusal.error.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "RULE_VIOLATED",
        )
        message = {
            "unknown": f"{cited[case]} is not an order the gateway allowed (not in the audit log)",
            "wrong_kind": f"{cited[case]} is a stop_payment; number_restore cites number_block "
            "or number_suspend",
            "a_query": f"{cited[case]} is a account_holder; number_restore cites "
            "number_block or number_suspend",
            "not_executed": f"{cited[case]} was not executed (no OK answer to it in the audit log)",
        }[case]
        assert refusal.error.message == f"RULE undo.cites_original_order: {message}"
        entry = await h.last_entry()
        assert isinstance(entry, RequestLeg)
        assert entry.rule == f"RULE_VIOLATED: RULE undo.cites_original_order: {message}"
