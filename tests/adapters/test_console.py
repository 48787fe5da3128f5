"""The staff console over HTTP: against a fake queue (masking, forms, conflicts) and against a
real bank node (claim, confirm, signed answer; other agencies see nothing)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.console import Preview, QueueCase, StaffConsole
from adapters.console_node import NodeStaffQueue
from fedgate.actions import BANK_ACTIONS, CARRIER_ACTIONS
from fedgate.audit_entry import EventEntry
from fedgate.errors import NotFound, RuleViolated
from fedgate.testing import valid_request
from fedgate.types import MemberId, RequestId
from fedgate.v1 import request_pb2, ticket_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from fedgate.web.text import mask_identifier

FAST = ScryptParams(n=2**10, r=8, p=1)
PASSWORD = "correct horse battery"
WAITING = ticket_pb2.TICKET_STATE_WAITING
CLAIMED = ticket_pb2.TICKET_STATE_CLAIMED
ANSWERED = ticket_pb2.TICKET_STATE_ANSWERED


class FakeQueue:
    """An in-memory ``StaffQueue`` with the real one's claim rules."""

    member_id = MemberId("bank.icbc")

    def member_name(self, member_id: str, lang: str) -> str:
        return f"name of {member_id}"

    def __init__(self) -> None:
        self.cases: dict[str, QueueCase] = {}
        self.answers: dict[str, request_pb2.Response] = {}

    def add(self, action: str, *, due_in: timedelta = timedelta(hours=2)) -> QueueCase:
        now = datetime.now(UTC)
        request = valid_request(action, now=now)
        case = QueueCase(RequestId(request.request_id), request, action, WAITING, now, now + due_in)
        self.cases[case.request_id] = case
        return case

    async def list_open(self) -> Sequence[QueueCase]:
        cases = [c for c in self.cases.values() if c.state in (WAITING, CLAIMED)]
        return sorted(cases, key=lambda c: c.deadline)

    async def get(self, request_id: str) -> QueueCase:
        if request_id not in self.cases:
            raise NotFound(f"no queued request {request_id}")
        return self.cases[request_id]

    def _held(self, request_id: str, staff_id: str) -> QueueCase:
        case = self.cases[request_id]
        if case.state != CLAIMED or case.claimed_by != staff_id:
            raise RuleViolated(f"request {request_id} is not claimed by {staff_id}")
        return case

    async def claim(self, request_id: str, staff_id: str) -> QueueCase:
        case = await self.get(request_id)
        if case.state != WAITING:
            raise RuleViolated(f"request {request_id} is not waiting")
        self.cases[request_id] = replace(case, state=CLAIMED, claimed_by=staff_id)
        return self.cases[request_id]

    async def release(self, request_id: str, staff_id: str) -> QueueCase:
        case = self._held(request_id, staff_id)
        self.cases[request_id] = replace(case, state=WAITING, claimed_by="")
        return self.cases[request_id]

    async def preview(self, request_id: str, staff_id: str) -> Preview:
        case = self._held(request_id, staff_id)
        if case.action != "account_holder":
            return Preview("none")
        response = request_pb2.Response(status=request_pb2.RESPONSE_STATUS_OK)
        holder = response.account_holder
        holder.account_number = case.request.account_holder.account_number
        holder.account_name = "王小明"
        holder.phone = "13812345678"
        holder.balance.currency = "CNY"
        holder.balance.minor_units = 1234567
        return Preview("result", response)

    def _answered(self, request_id: str, staff_id: str, answer: request_pb2.Response) -> QueueCase:
        case = self._held(request_id, staff_id)
        self.answers[request_id] = answer
        self.cases[request_id] = replace(
            case,
            state=ANSWERED,
            answered_by=staff_id,
            answered_at=datetime.now(UTC),
            status=int(answer.status),
            detail=answer.detail,
        )
        return self.cases[request_id]

    async def confirm(self, request_id: str, staff_id: str) -> QueueCase:
        preview = await self.preview(request_id, staff_id)
        assert preview.response is not None
        return self._answered(request_id, staff_id, preview.response)

    async def answer(
        self, request_id: str, staff_id: str, answer: request_pb2.Response
    ) -> QueueCase:
        return self._answered(request_id, staff_id, answer)

    async def reject(self, request_id: str, staff_id: str, reason: str) -> QueueCase:
        refusal = request_pb2.Response(status=request_pb2.RESPONSE_STATUS_REFUSED, detail=reason)
        return self._answered(request_id, staff_id, refusal)

    async def history(self, staff_id: str, *, limit: int = 200) -> Sequence[QueueCase]:
        return [c for c in self.cases.values() if c.answered_by == staff_id][:limit]


def add_users(users: UserStore, *accounts: tuple[str, str]) -> None:
    for user_id, member in accounts:
        users.add_user(
            user_id,
            member_id=member,
            display_name=user_id,
            role=Role.STAFF,
            password=PASSWORD,
            params=FAST,
        )


class Browser:
    """One staff member's HTTP session with a console."""

    def __init__(self, app: object) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            base_url="http://console.test",
        )
        self.token = ""

    async def get(self, path: str) -> httpx.Response:
        response = await self.client.get(path)
        match = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if match:
            self.token = match.group(1)
        return response

    async def post(self, path: str, **data: str) -> httpx.Response:
        return await self.client.post(path, data={"csrf": self.token, **data})

    async def login(self, user: str) -> httpx.Response:
        await self.get("/login")
        response = await self.post("/login", user=user, password=PASSWORD, next="/")
        await self.get("/")
        return response


class Audit:
    def __init__(self) -> None:
        self.events: list[EventEntry] = []

    async def __call__(self, entry: EventEntry) -> None:
        self.events.append(entry)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.queue = FakeQueue()
        self.audit = Audit()
        self.users = UserStore.in_state_dir(tmp_path)
        add_users(self.users, ("icbc.zhang", "bank.icbc"), ("icbc.li", "bank.icbc"))
        self.console = StaffConsole(
            queue=self.queue, users=self.users, state_dir=tmp_path, audit_hook=self.audit
        )
        self.zhang = Browser(self.console.app)
        self.li = Browser(self.console.app)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = Setup(tmp_path)
    await s.zhang.login("icbc.zhang")
    await s.li.login("icbc.li")
    yield s
    await s.zhang.client.aclose()
    await s.li.client.aclose()
    s.users.close()


class TestQueuePage:
    async def test_empty_queue_says_so(self, setup: Setup) -> None:
        page = await setup.zhang.get("/")
        assert "队列为空" in page.text
        assert "新的查询到达后会自动出现在这里" in page.text

    async def test_lists_masked_identifiers_only(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        account = case.request.account_holder.account_number
        page = await setup.zhang.get("/")
        assert case.request.case.case_number in page.text
        assert "主体查询" in page.text
        assert mask_identifier(account) in page.text
        assert account not in page.text
        polled = (await setup.zhang.client.get("/api/queue")).json()
        assert polled["count"] == 1
        assert account not in polled["rows"]
        assert mask_identifier(account) in polled["rows"]

    async def test_expiring_queries_stand_out(self, setup: Setup) -> None:
        soon = setup.queue.add("account_holder", due_in=timedelta(minutes=5))
        setup.queue.add("account_holder", due_in=timedelta(hours=5))
        page = await setup.zhang.get("/")
        row = re.search(rf'<tr id="row-{soon.request_id}" class="([^"]+)"', page.text)
        assert row is not None
        assert "expiring" in row.group(1).split()
        assert page.text.count(" expiring") == 1

    async def test_poll_version_changes_when_the_queue_does(self, setup: Setup) -> None:
        before = (await setup.zhang.client.get("/api/queue")).json()["version"]
        setup.queue.add("account_holder")
        after = (await setup.zhang.client.get("/api/queue")).json()
        assert after["version"] != before
        assert after["count"] == 1

    async def test_english(self, setup: Setup) -> None:
        setup.queue.add("account_holder")
        page = await setup.zhang.get("/?lang=en")
        assert "Account holder" in page.text
        assert "Claim" in page.text


class TestItemPage:
    async def test_claimant_sees_full_identifiers_and_backend_data(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        account = case.request.account_holder.account_number
        before = await setup.zhang.get(f"/items/{case.request_id}")
        assert account not in before.text
        assert "认领后方可查看完整的账号" in before.text
        claimed = await setup.zhang.post(f"/items/{case.request_id}/claim")
        assert claimed.headers["location"] == f"/items/{case.request_id}?notice=claimed"
        page = await setup.zhang.get(f"/items/{case.request_id}")
        assert account in page.text
        assert "王小明" in page.text
        assert "13812345678" in page.text
        assert "12,345.67 CNY" in page.text
        assert page.headers["cache-control"] == "no-store"
        kinds = [e.kind for e in setup.audit.events]
        assert kinds[-2:] == ["console_claim", "console_reveal"]

    async def test_a_colleague_sees_it_masked_and_cannot_claim_it(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        account = case.request.account_holder.account_number
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        page = await setup.li.get(f"/items/{case.request_id}")
        assert account not in page.text
        assert "王小明" not in page.text
        refused = await setup.li.post(f"/items/{case.request_id}/claim")
        assert refused.headers["location"] == "/?error=conflict"
        queue = await setup.li.get("/?error=conflict")
        assert "操作未完成" in queue.text
        assert "icbc.zhang 已认领" in queue.text

    async def test_free_text_is_masked_for_anyone_but_the_claimant(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        case.request.case.reason = "受害人 13812345678 被诱导转账"
        case.request.purpose = "核查 6222021234567891234 的资金去向"
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        colleague = await setup.li.get(f"/items/{case.request_id}")
        assert "13812345678" not in colleague.text
        assert "6222021234567891234" not in colleague.text
        assert "138****5678" in colleague.text
        claimant = await setup.zhang.get(f"/items/{case.request_id}")
        assert "13812345678" in claimant.text

    async def test_history_masks_numbers_in_answer_details(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get(f"/items/{case.request_id}")
        await setup.zhang.post(
            f"/items/{case.request_id}/reject", reason="账户 6222021234567891234 已销户"
        )
        page = await setup.zhang.get("/history")
        assert "622****1234" in page.text
        assert "6222021234567891234" not in page.text

    async def test_confirm_sends_the_backend_answer(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get(f"/items/{case.request_id}")
        done = await setup.zhang.post(f"/items/{case.request_id}/confirm")
        assert done.headers["location"] == "/?notice=answered"
        assert setup.queue.answers[case.request_id].account_holder.account_name == "王小明"
        event = setup.audit.events[-1]
        assert event.kind == "console_answer"
        assert ("status", "ok") in event.detail
        history = await setup.zhang.get("/history")
        assert case.request.case.case_number in history.text
        assert "已答复" in history.text

    async def test_manual_answer_is_read_from_the_form(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get(f"/items/{case.request_id}")
        done = await setup.zhang.post(
            f"/items/{case.request_id}/answer",
            outcome="ok",
            **{
                "r.account_number": "6222021234567890123",
                "r.account_name": "李四",
                "r.balance": "100.05",
                "r.balance.currency": "CNY",
                "r.opened_at": "2020-01-02T09:30",
            },
        )
        assert done.status_code == 303
        answer = setup.queue.answers[case.request_id]
        assert answer.status == request_pb2.RESPONSE_STATUS_OK
        assert answer.account_holder.account_name == "李四"
        assert answer.account_holder.balance.minor_units == 10005
        opened = answer.account_holder.opened_at.ToDatetime(tzinfo=UTC)
        assert opened == datetime(2020, 1, 2, 1, 30, tzinfo=UTC)

    async def test_unreadable_manual_answer_is_shown_again(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get(f"/items/{case.request_id}")
        page = await setup.zhang.post(
            f"/items/{case.request_id}/answer",
            outcome="ok",
            **{"r.account_name": "李四", "r.balance": "12.345"},
        )
        assert page.status_code == 400
        assert "balance: give an amount in yuan with at most 2 decimals" in page.text
        assert 'value="李四"' in page.text
        assert case.request_id not in setup.queue.answers

    async def test_reject_needs_a_reason(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get(f"/items/{case.request_id}")
        empty = await setup.zhang.post(f"/items/{case.request_id}/reject", reason="  ")
        assert empty.status_code == 400
        assert case.request_id not in setup.queue.answers
        done = await setup.zhang.post(f"/items/{case.request_id}/reject", reason="法律文书不全")
        assert done.headers["location"] == "/?notice=rejected"
        assert setup.queue.answers[case.request_id].detail == "法律文书不全"

    async def test_unknown_query_is_404(self, setup: Setup) -> None:
        page = await setup.zhang.get("/items/0190c0de-0000-7000-8000-000000000000")
        assert page.status_code == 404

    async def test_release_gives_it_back(self, setup: Setup) -> None:
        case = setup.queue.add("account_holder")
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        await setup.zhang.get("/")
        done = await setup.zhang.post(f"/items/{case.request_id}/release")
        assert done.headers["location"] == "/?notice=released"
        assert setup.queue.cases[case.request_id].state == WAITING


class TestEveryAction:
    @pytest.mark.parametrize("action", sorted(BANK_ACTIONS | CARRIER_ACTIONS))
    async def test_the_claimant_page_renders_in_both_languages(
        self, setup: Setup, action: str
    ) -> None:
        case = setup.queue.add(action)
        await setup.zhang.post(f"/items/{case.request_id}/claim")
        for lang in ("zh", "en"):
            page = await setup.zhang.get(f"/items/{case.request_id}?lang={lang}")
            assert page.status_code == 200, page.text
            assert 'name="outcome" value="ok"' in page.text
        queue = await setup.zhang.get("/?lang=zh")
        assert queue.status_code == 200


class TestOnARealNode:
    async def test_claim_and_confirm_answers_the_police_signed(
        self, bank_node: Any, kit: Any, tmp_path: Path
    ) -> None:
        icbc = await bank_node("bank.icbc", manual={"account_holder"})
        ccb = await bank_node("bank.ccb", manual={"account_holder"}, staff=("ccb.zhao",))
        _, hop = kit.hop_into("bank.icbc")
        request = kit.request("account_holder")
        request.account_holder.account_number = hop.to_account
        envelope = kit.sign(request)
        link = kit.link(icbc)
        queued = await link.handle(envelope)
        assert queued.HasField("queued")

        users = UserStore.in_state_dir(tmp_path / "users")
        add_users(
            users,
            ("icbc.zhang", "bank.icbc"),
            ("icbc.temp", "bank.icbc"),
            ("ccb.zhao", "bank.ccb"),
        )
        icbc_console = StaffConsole(
            queue=NodeStaffQueue(icbc), users=users, state_dir=tmp_path / "icbc-web"
        )
        ccb_console = StaffConsole(
            queue=NodeStaffQueue(ccb), users=users, state_dir=tmp_path / "ccb-web"
        )
        zhang, temp, zhao = (
            Browser(icbc_console.app),
            Browser(icbc_console.app),
            Browser(ccb_console.app),
        )
        try:
            # Another bank's staff cannot log in here, and their own console has no such query.
            refused = await Browser(icbc_console.app).login("ccb.zhao")
            assert refused.status_code == 403
            await zhao.login("ccb.zhao")
            assert hop.to_account not in (await zhao.get("/")).text
            assert "队列为空" in (await zhao.get("/")).text
            assert (await zhao.get(f"/items/{request.request_id}")).status_code == 404

            # An account of this bank that the node does not list as staff may not claim.
            await temp.login("icbc.temp")
            assert (await temp.post(f"/items/{request.request_id}/claim")).status_code == 403

            await zhang.login("icbc.zhang")
            queue = await zhang.get("/")
            assert mask_identifier(hop.to_account) in queue.text
            await zhang.post(f"/items/{request.request_id}/claim")
            page = await zhang.get(f"/items/{request.request_id}")
            assert hop.to_account in page.text
            assert hop.to_name in page.text
            done = await zhang.post(f"/items/{request.request_id}/confirm")
            assert done.headers["location"] == "/?notice=answered"

            result = await link.get_result(request.request_id)
            response = kit.verify_signed(envelope, result.response)
            assert response.status == request_pb2.RESPONSE_STATUS_OK
            assert response.answered_by == "icbc.zhang"
            assert response.account_holder.account_name == hop.to_name
            history = await zhang.get("/history")
            assert request.request_id in history.text
        finally:
            for b in (zhang, temp, zhao):
                await b.client.aclose()
            users.close()

    async def test_an_order_is_executed_only_on_confirm(
        self, bank_node: Any, kit: Any, tmp_path: Path
    ) -> None:
        icbc = await bank_node("bank.icbc", manual={"stop_payment"})
        _, hop = kit.hop_into("bank.icbc")
        request = kit.stop_request(hop)
        envelope = kit.sign(request)
        link = kit.link(icbc)
        assert (await link.handle(envelope)).HasField("queued")
        users = UserStore.in_state_dir(tmp_path / "users")
        add_users(users, ("icbc.zhang", "bank.icbc"))
        console = StaffConsole(queue=NodeStaffQueue(icbc), users=users, state_dir=tmp_path / "w")
        zhang = Browser(console.app)
        try:
            await zhang.login("icbc.zhang")
            await zhang.post(f"/items/{request.request_id}/claim")
            page = await zhang.get(f"/items/{request.request_id}")
            assert "执行前请核对对象信息" in page.text
            assert hop.to_name in page.text
            assert "确认执行" in page.text
            # Looking at it twice executed nothing: the account is not stopped yet.
            await zhang.get(f"/items/{request.request_id}")
            assert icbc.core.account_holder(hop.to_account).stopped is False
            done = await zhang.post(f"/items/{request.request_id}/confirm")
            assert done.headers["location"] == "/?notice=answered"
            assert icbc.core.account_holder(hop.to_account).stopped is True
            result = await link.get_result(request.request_id)
            response = kit.verify_signed(envelope, result.response)
            assert response.status == request_pb2.RESPONSE_STATUS_OK
            assert response.stop_payment.in_force
            assert response.answered_by == "icbc.zhang"
        finally:
            await zhang.client.aclose()
            users.close()
