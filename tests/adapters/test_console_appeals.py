"""The staff console's appeals page (Art. 32) over HTTP: recording an appeal, a refusal shown
with its rule and audited, the agency's appeals listed masked; and the node's desk refusing an
order the node never executed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.appeals import AppealForm, NodeAppealDesk
from adapters.console import StaffConsole
from fedgate.errors import InvalidArgument, RuleViolated
from fedgate.v1 import appeal_pb2
from fedgate.web.auth import UserStore
from fedgate.web.text import mask_identifier
from tests.adapters.test_console import Audit, Browser, FakeQueue, add_users

ORDER = "01a24300-0000-7000-8000-000000000001"
PENDING_ORDER = "01a24300-0000-7000-8000-000000000002"
ACCOUNT = "6222020031415926537"


class FakeDesk:
    """An ``AppealDesk`` that files into a list, refusing one order as the gateway would."""

    def __init__(self) -> None:
        self.filed: list[tuple[AppealForm, str]] = []
        self.records: list[appeal_pb2.AppealRecord] = []

    async def file(self, form: AppealForm, staff_id: str) -> appeal_pb2.AppealResult:
        if form.order_request_id == PENDING_ORDER:
            raise RuleViolated(
                f"RULE appeal.one_pending_per_order: appeal x against {PENDING_ORDER} is pending"
            )
        self.filed.append((form, staff_id))
        now = datetime.now(UTC)
        record = appeal_pb2.AppealRecord(
            appeal_id=str(uuid.uuid4()),
            order_request_id=form.order_request_id,
            order_action="freeze",
            subject=ACCOUNT,
            filed_by="bank.icbc",
            ordering_agency="police.gd.afc",
            state=appeal_pb2.APPEAL_STATE_PENDING,
            overdue=len(self.records) > 0,
        )
        record.filed_at.FromDatetime(now)
        record.due_at.FromDatetime(now + timedelta(days=3))
        self.records.append(record)
        return appeal_pb2.AppealResult(
            appeal_id=record.appeal_id, ordering_agency="police.gd.afc", state=record.state
        )

    async def appeals(self) -> Sequence[appeal_pb2.AppealRecord]:
        return list(self.records)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.desk = FakeDesk()
        self.audit = Audit()
        self.users = UserStore.in_state_dir(tmp_path)
        add_users(self.users, ("icbc.zhang", "bank.icbc"))
        console = StaffConsole(
            queue=FakeQueue(),
            users=self.users,
            state_dir=tmp_path,
            audit_hook=self.audit,
            appeals=self.desk,
        )
        self.zhang = Browser(console.app)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = Setup(tmp_path)
    await s.zhang.login("icbc.zhang")
    yield s
    await s.zhang.client.aclose()
    s.users.close()


FORM = {
    "order_request_id": ORDER,
    "appellant_name": "李秀英",
    "appellant_id_number": "110101199003074514",
    "appellant_phone": "13800138000",
    "grounds": "货款往来，与诈骗无关",
}


class TestAppealsPage:
    async def test_record_an_appeal(self, setup: Setup) -> None:
        page = await setup.zhang.get("/appeals")
        assert "登记申诉" in page.text
        done = await setup.zhang.post("/appeals", **FORM)
        assert done.status_code == 303
        assert done.headers["location"] == "/appeals?notice=appeal_filed"
        ((form, staff),) = setup.desk.filed
        assert (form.order_request_id, form.grounds, staff) == (
            ORDER,
            FORM["grounds"],
            "icbc.zhang",
        )
        (event,) = [e for e in setup.audit.events if e.kind == "console_appeal"]
        assert event.actor == "icbc.zhang"
        listed = await setup.zhang.get("/appeals?notice=appeal_filed")
        assert "申诉已签名并送交" in listed.text
        assert mask_identifier(ACCOUNT) in listed.text
        assert ACCOUNT not in listed.text
        assert "待决定" in listed.text

    async def test_missing_fields_are_named_and_nothing_is_sent(self, setup: Setup) -> None:
        await setup.zhang.get("/appeals")
        page = await setup.zhang.post("/appeals", **{**FORM, "grounds": " ", "appellant_phone": ""})
        assert page.status_code == 400
        assert "appellant_phone" in page.text
        assert "grounds" in page.text
        assert setup.desk.filed == []
        assert FORM["appellant_name"] in page.text  # what was typed is kept
        (event,) = [e for e in setup.audit.events if e.kind == "console_appeal_refused"]
        assert dict(event.detail)["reason"] == "INVALID_ARGUMENT"

    async def test_a_gateway_refusal_is_shown_with_its_rule(self, setup: Setup) -> None:
        await setup.zhang.get("/appeals")
        page = await setup.zhang.post("/appeals", **{**FORM, "order_request_id": PENDING_ORDER})
        assert page.status_code == 400
        assert "RULE appeal.one_pending_per_order" in page.text
        (event,) = [e for e in setup.audit.events if e.kind == "console_appeal_refused"]
        assert dict(event.detail)["reason"] == "RULE_VIOLATED"

    async def test_overdue_and_english(self, setup: Setup) -> None:
        await setup.zhang.get("/appeals")
        await setup.zhang.post("/appeals", **FORM)
        await setup.zhang.post("/appeals", **FORM)
        page = await setup.zhang.get("/appeals?lang=en")
        assert "Record an appeal" in page.text
        assert page.text.count(">Overdue<") == 1
        assert page.text.count(">Pending<") == 2


class TestNodeDesk:
    async def test_an_order_the_node_never_executed_is_refused(self, bank_node: Any) -> None:
        node = await bank_node("bank.icbc")
        desk = NodeAppealDesk(node)
        form = AppealForm(**{**FORM, "order_request_id": str(uuid.uuid4())})
        with pytest.raises(InvalidArgument) as caught:
            await desk.file(form, "icbc.zhang")
        ((field, why),) = [(v.field, v.description) for v in caught.value.violations]
        assert (field, why) == ("order_request_id", "not an order this agency executed")
