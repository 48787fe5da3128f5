"""The auditor console's countermeasures page in a real browser (Debian's chromium, Playwright)
against a real gateway: police list a number and a domain through the pipeline, a carrier's
interception counts arrive as an audited event, and the auditor sees them charted, per day, with
no number or domain on the page. Screenshot: ``tests/artifacts/screenshots/audit-counter.png``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fedgate.client import FedgateClient
from fedgate.testing import mobile_number, valid_request
from fedgate.types import CHINA_TIME, MemberId
from fedgate.v1 import request_pb2, risklist_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from gateway.config import (
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
)
from gateway.server import Gateway

PASSWORD = "correct horse battery"
R = risklist_pb2

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # the chromium fixture skips if it is missing


@pytest.fixture
async def gateway(gw_federation: Path, tmp_path: Path) -> AsyncIterator[Gateway]:
    fed = tmp_path / "fed"
    shutil.copytree(gw_federation, fed)
    state = tmp_path / "gateway"
    users = UserStore.in_state_dir(state)
    users.add_user(
        "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
        password=PASSWORD, params=ScryptParams(n=2**10, r=8, p=1),
    )  # fmt: skip
    users.close()
    gw = await Gateway.start(
        GatewayConfig(
            federation=FederationConfig(dir=fed, reload_interval_s=0),
            pipeline=PipelineConfig(state_dir=state),
            server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
            console=ConsoleConfig(listen="127.0.0.1:0"),
        )
    )
    try:
        yield gw
    finally:
        await gw.stop(0.5)


async def test_the_countermeasures_page(chromium: Any, gateway: Gateway) -> None:
    fed = gateway.config.federation.dir
    police = FedgateClient.from_federation(
        fed, MemberId("police.gd.afc"), endpoint=gateway.endpoint
    )
    carrier = FedgateClient.from_federation(
        fed, MemberId("carrier.cmcc"), endpoint=gateway.endpoint
    )
    number = mobile_number("carrier.cucc", 77)
    try:
        for serial, (category, value) in enumerate(
            ((R.RISK_CATEGORY_PHONE_NUMBER, number), (R.RISK_CATEGORY_DOMAIN, "refund-now.example"))
        ):
            request = valid_request("risk_list_add", now=datetime.now(UTC), serial=serial)
            request.risk_list_add.category = category
            request.risk_list_add.value = value
            answer = await police.ask(request)
            assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        day = datetime.now(CHINA_TIME).date().isoformat()
        await carrier.record_event(
            kind="interception_counts",
            actor="carrier.cmcc.node",
            at=datetime.now(UTC),
            detail=[("day", day), ("kind", "sms"), ("seen", "40"), ("blocked", "7")],
        )
    finally:
        await police.close()
        await carrier.close()
    url = gateway.console_url
    assert url is not None
    page = await chromium.run(
        lambda: chromium.browser.new_context(
            locale="zh-CN", viewport={"width": 1366, "height": 900}
        ).new_page()
    )

    def visit() -> dict[str, str]:
        page.goto(f"{url}/countermeasures?days=7")
        page.wait_for_url(f"{url}/login?next=**")
        page.fill("#user", "audit.wang")
        page.fill("#password", PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_selector("#chart-listed")
        chromium.shot(page, "audit-counter.png")
        text = page.inner_text("main")
        bars = page.locator("#chart-listed svg rect.bar").count()
        intercepted = page.locator("#chart-intercepted svg rect.bar").count()
        page.click("#chart-intercepted summary")
        table = page.inner_text("#chart-intercepted table")
        nav = page.inner_text("nav.nav")
        page.context.close()
        return {"text": text, "bars": str(bars), "intercepted": str(intercepted), "table": table,
                "nav": nav}  # fmt: skip

    seen = await chromium.run(visit)
    assert "技术反制与预警劝阻" in seen["text"]
    assert "反制与预警" in seen["nav"]
    assert int(seen["bars"]) == 2  # phone numbers and domains, today
    assert int(seen["intercepted"]) == 1
    assert "7" in seen["table"]
    assert number not in seen["text"]
    assert "refund-now" not in seen["text"]
