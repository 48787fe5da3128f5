"""An appeal (Art. 32) from the carrier's staff console through to a lift and the restore at the
node, in a real browser (Debian's chromium driven by Playwright) against the real gateway and
carrier nodes: the police suspend a number; the subscriber appeals at the carrier, where the
stationed staff record it; the police unit lists it and lifts it (``fedgate appeal decide
--lift``: the restore order citing the suspension, then the decision); the carrier's node
restores the number; the staff console and the auditor console show the appeal lifted."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.carrier.backend import NumberState
from adapters.carrier.node import CarrierNode
from adapters.console_node import start_staff_console
from adapters.synth import World
from fedgate.cli import main
from fedgate.testing import case_number, officer, resident_id
from fedgate.v1 import appeal_pb2, carrier_pb2, common_pb2, request_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from fedgate.web.text import mask_identifier
from tests.adapters._live import live_federation

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)

pytestmark = [pytest.mark.asyncio, pytest.mark.browser, pytest.mark.slow]


def add_user(state_dir: Path, user: str, member: str, role: Role) -> None:
    users = UserStore.in_state_dir(state_dir)
    users.add_user(
        user, member_id=member, display_name="张敏", role=role, password=PASSWORD, params=FAST
    )
    users.close()


def login(page: Any, url: str, user: str, then: str) -> None:
    page.goto(f"{url}{then}")
    page.wait_for_selector("#user")
    page.fill("#user", user)
    page.fill("#password", PASSWORD)
    page.keyboard.press("Enter")


async def test_an_appeal_from_the_staff_console_to_the_restore(
    chromium: Any, fed_dir: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "live"
    add_user(state / "gateway", "audit.wang", "audit.office", Role.AUDITOR)
    chain = world.chains[0]
    number = chain.fraud_numbers[0]
    async with live_federation(fed_dir, world, state, console=True) as live:
        carrier = live.nodes[number.carrier_id]
        assert isinstance(carrier, CarrierNode)
        member = number.carrier_id
        staff = f"{member.split('.')[1]}.zhang"  # the node's configured staff id
        add_user(Path(carrier.config.state_dir), staff, member, Role.STAFF)
        web = await start_staff_console(carrier, poll_seconds=0.3)
        try:
            # The police suspend the number.
            now = datetime.now(UTC)
            suspend = live.police.new_request(
                action=carrier_pb2.NumberSuspendOrder(
                    phone_number=number.number, reason="冒充客服诈骗来电"
                ),
                action_name="number_suspend",
                officer=officer(5),
                target=member,
                case=common_pb2.CaseInfo(
                    case_number=case_number(81, when=now.date()),
                    case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
                ),
                legal_document=common_pb2.LegalDocument(
                    kind=common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
                    number="穗公(反诈)反制字〔2026〕00081号",
                ),
                purpose="关停涉诈号码",
            )
            assert (
                await live.police.ask(suspend)
            ).response.status == request_pb2.RESPONSE_STATUS_OK
            assert carrier.core.number_status(number.number).state is NumberState.SUSPENDED

            # The subscriber appeals at the carrier; the stationed staff record it.
            page = await chromium.run(
                lambda: chromium.browser.new_context(locale="zh-CN").new_page()
            )

            def record_appeal() -> dict[str, str]:
                login(page, web.url, staff, "/appeals")
                page.wait_for_selector("#appeal-form")
                page.fill("#order_request_id", suspend.request_id)
                page.fill("#appellant_name", "李秀英")
                page.fill("#appellant_id_number", resident_id(42))
                page.fill("#appellant_phone", "13800138000")
                page.fill("#grounds", "本人号码用于日常通话，从未拨打诈骗电话，请求复机")
                chromium.shot(page, "staff-appeal-form.png")
                page.click("#file-appeal")
                page.wait_for_url(f"{web.url}/appeals?notice=appeal_filed")
                page.wait_for_selector("#appeals tbody tr")
                chromium.shot(page, "staff-appeal-filed.png")
                row = page.locator("#appeals tbody tr").first
                return {
                    "id": str(row.get_attribute("id")),
                    "state": str(row.get_attribute("data-state")),
                    "text": str(row.inner_text()),
                    "notice": str(page.inner_text("main")),
                }

            filed = await chromium.run(record_appeal)
            assert filed["state"] == "pending"
            assert "待决定" in filed["text"]
            assert mask_identifier(number.number) in filed["text"]
            assert number.number not in filed["text"]
            assert "申诉已签名并送交" in filed["notice"]
            appeal_id = filed["id"].removeprefix("appeal-")

            # The ordering unit sees it pending and lifts it from the command line.
            (pending,) = await live.police.list_appeals(appeal_id=appeal_id)
            assert (pending.state, pending.order_request_id, pending.filed_by) == (
                appeal_pb2.APPEAL_STATE_PENDING,
                suspend.request_id,
                member,
            )
            assert pending.grounds == "本人号码用于日常通话，从未拨打诈骗电话，请求复机"
            capsys.readouterr()
            code = await asyncio.to_thread(
                main,
                [
                    "appeal", "decide", appeal_id, "--lift",
                    "--reason", "经核查为本人正常使用号码",
                    "--doc-number", "穗公(反诈)申核字〔2026〕00082号",
                    "--release-doc-number", "穗公(反诈)解字〔2026〕00083号",
                    "--officer-id", "440100128", "--officer-name", "王伟",
                    "--federation", str(live.fed_dir),
                    "--endpoint", live.gateway.endpoint,
                    "--sent-dir", str(tmp_path / "sent"),
                    "--json",
                ],
            )  # fmt: skip
            decided = json.loads(capsys.readouterr().out)
            assert code == 0, decided
            assert decided["state"] == "lifted"

            # The carrier's node restored the number, on the restore order the lift sent.
            status = carrier.core.number_status(number.number)
            assert status.state is NumberState.ACTIVE
            assert status.order_ref == decided["lift_request_id"]

            def see_it_lifted() -> str:
                page.goto(f"{web.url}/appeals")
                page.wait_for_selector(f"#appeal-{appeal_id}[data-state=lifted]")
                chromium.shot(page, "staff-appeal-lifted.png")
                return str(page.inner_text(f"#appeal-{appeal_id}"))

            lifted = await chromium.run(see_it_lifted)
            assert "已解除" in lifted
            assert "经核查为本人正常使用号码" in lifted

            # The auditors see it too: lifted, on time; nothing pending or overdue.
            url = live.gateway.console_url
            assert url is not None
            audit_page = await chromium.run(
                lambda: chromium.browser.new_context(locale="zh-CN").new_page()
            )

            def audit() -> dict[str, str]:
                login(audit_page, url, "audit.wang", "/appeals")
                audit_page.wait_for_selector(f"#appeal-{appeal_id}")
                chromium.shot(audit_page, "audit-appeals.png")
                return {
                    "row": str(audit_page.inner_text(f"#appeal-{appeal_id}")),
                    "state": str(audit_page.get_attribute(f"#appeal-{appeal_id}", "data-state")),
                    **{
                        s: str(audit_page.inner_text(f"#count-{s}"))
                        for s in ("pending", "overdue", "upheld", "lifted")
                    },
                }

            seen = await chromium.run(audit)
            assert seen["state"] == "lifted"
            assert (seen["pending"], seen["overdue"], seen["lifted"]) == ("0", "0", "1")
            assert mask_identifier(number.number) in seen["row"]
            assert number.number not in seen["row"]
        finally:
            await web.stop()
