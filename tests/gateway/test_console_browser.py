"""The auditor console in a real browser (Debian's chromium driven by Playwright) against a real
gateway, a real bank node and the police client, all on loopback mTLS: the police ask a bank,
an auditor finds the exchange by its case number, sees every check verified, reveals one
identifier (audited), downloads the evidence bundle and ``fedgate audit verify-bundle`` accepts
it; the log, chart and flag pages render. Screenshots go to ``tests/artifacts/screenshots/``.

Playwright's sync API runs in one dedicated thread; the test's event loop keeps serving the
gateway, the node and the console meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.bank.node import BankNode
from adapters.config import NodeConfig
from adapters.synth import World, seed_world
from adapters.witness import WitnessNode
from fedgate.audit_entry import EventEntry, decode_entry
from fedgate.client import FedgateClient
from fedgate.errors import FedgateError
from fedgate.testing import free_port, valid_request
from fedgate.types import MemberId
from fedgate.v1 import request_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from fedgate.web.text import mask_identifier
from gateway.config import (
    AuditConfig,
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)
POLICE = MemberId("police.gd.afc")
BANK = MemberId("bank.icbc")
PBOC = MemberId("pboc.gz")

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # the chromium fixture skips if it is missing


@dataclass
class Centre:
    """A gateway with its auditor console, a bank node behind it, and the police client."""

    fed: Path
    world: World
    gateway: Gateway
    node: BankNode
    police: FedgateClient

    @property
    def url(self) -> str:
        assert self.gateway.console_url is not None
        return self.gateway.console_url


@pytest.fixture
async def centre(gw_federation: Path, tmp_path: Path) -> AsyncIterator[Centre]:
    fed = tmp_path / "fed"
    shutil.copytree(gw_federation, fed)
    world = seed_world(tmp_path / "world", seed=7, customers_per_bank=20, fraud_chains=3)
    node = BankNode.open(
        NodeConfig(
            member_id=BANK,
            federation_dir=fed,
            state_dir=tmp_path / "node",
            listen="127.0.0.1:0",
            backend_path=world.database(BANK),
            monitor_poll_s=3600.0,
        )
    )
    await node.start()
    state = tmp_path / "gateway"
    users = UserStore.in_state_dir(state)
    users.add_user(
        "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
        password=PASSWORD, params=FAST,
    )  # fmt: skip
    users.close()
    # The central bank's witness: evidence bundles must meet the witness policy (1 of 2).
    witness_listen = f"127.0.0.1:{free_port()}"
    witness = WitnessNode(
        federation=fed,
        member=PBOC,
        state=tmp_path / "pboc",
        origins=[AuditConfig().origin],
        listen=witness_listen,
    )
    await witness.start()
    gateway = await Gateway.start(
        GatewayConfig(
            federation=FederationConfig(dir=fed, reload_interval_s=0),
            pipeline=PipelineConfig(state_dir=state),
            server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
            audit=AuditConfig(witnesses=(PBOC,)),
            routing=RoutingConfig(
                timeout_s=5.0, endpoints={BANK: node.endpoint, PBOC: witness_listen}
            ),
            console=ConsoleConfig(listen="127.0.0.1:0"),
        )
    )
    police = FedgateClient.from_federation(fed, POLICE, endpoint=gateway.endpoint)
    try:
        yield Centre(fed, world, gateway, node, police)
    finally:
        await police.close()
        await gateway.stop(0.5)
        await node.stop(grace=None)
        await witness.stop(0)


# -- steps run in the browser thread -------------------------------------------------------------


def new_page(browser: Any, *, lang: str = "zh-CN") -> Any:
    context = browser.new_context(
        locale=lang, viewport={"width": 1366, "height": 860}, accept_downloads=True
    )
    return context.new_page()


class TestAuditorConsoleInTheBrowser:
    async def test_an_auditor_finds_verifies_reveals_and_exports_an_exchange(
        self, chromium: Any, centre: Centre, tmp_path: Path
    ) -> None:
        # The police ask the bank who holds an account; the answer comes back verified.
        hop = next(h for c in centre.world.chains for h in c.hops if h.to_bank == BANK)
        request = valid_request("account_holder", now=datetime.now(UTC), serial=3)
        request.account_holder.account_number = hop.to_account
        answer = await centre.police.ask(request)
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        case = request.case.case_number
        # One officer is refused three times (central-bank statistics are not for the police).
        for serial in (4, 5, 6):
            refused = valid_request("aggregate_stats", now=datetime.now(UTC), serial=serial)
            refused.officer.CopyFrom(request.officer)
            with pytest.raises(FedgateError):
                await centre.police.ask(refused)
        audit = centre.gateway.audit
        await audit.cosigned_covering(audit.size, timeout_s=10.0)
        url = centre.url
        bundle_path = tmp_path / "bundle.json"
        masked_path = tmp_path / "masked.json"
        page = await chromium.run(new_page, chromium.browser)

        def log_in_and_search() -> dict[str, str]:
            page.goto(f"{url}/")
            page.wait_for_url(f"{url}/login?next=/")
            chromium.shot(page, "audit-login.png")
            page.fill("#user", "audit.wang")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{url}/")
            chromium.shot(page, "audit-search.png")
            overview = page.inner_text("main")
            # Keyboard only: focus the case field, type, Enter.
            page.focus("#s-case")
            page.keyboard.type(case)
            page.keyboard.press("Enter")
            page.wait_for_selector("#results")
            chromium.shot(page, "audit-search-case.png")
            return {"overview": overview, "results": page.inner_text("#results")}

        found = await chromium.run(log_in_and_search)
        assert "检索审计日志" in found["overview"]
        assert "控制台登录" in found["overview"]
        assert found["results"].count(case) == 2
        assert mask_identifier(hop.to_account) in found["results"]
        assert hop.to_account not in found["results"]

        request_leaf = answer.receipt.request_leaf_index
        response_leaf = answer.receipt.leaf_index

        def open_exchange() -> dict[str, str]:
            page.click(f"#open-{request_leaf}")
            page.wait_for_url(f"{url}/entries/{request_leaf}")
            chromium.shot(page, "audit-entry.png")
            before = page.inner_text("main")
            rid = f"{request_leaf}-action-account_number"
            page.click(f"#reveal-{rid}")  # opens the reason form
            page.click(f"#reveal-go-{rid}")  # no reason: the browser refuses to send
            still = page.url
            missing = page.evaluate(
                f"() => document.querySelector('#reason-{rid}').validity.valueMissing"
            )
            chromium.shot(page, "audit-entry-reveal-reason.png")
            page.fill(f"#reason-{rid}", "核查止付依据")
            page.click(f"#reveal-go-{rid}")
            page.wait_for_url(f"{url}/entries/{request_leaf}?notice=revealed*")
            chromium.shot(page, "audit-entry-revealed.png")
            revealed = page.inner_text(f"#leg-{request_leaf}")
            answer_leg = page.inner_text(f"#leg-{response_leaf}")
            with page.expect_download() as download:
                page.click("#download")
            masked_name = download.value.suggested_filename
            download.value.save_as(str(masked_path))
            page.click("#full-evidence summary")
            page.fill("#export-reason", "移送检察院")
            with page.expect_download() as download:
                page.click("#download-full")
            download.value.save_as(str(bundle_path))
            return {
                "before": before,
                "revealed": revealed,
                "answer_leg": answer_leg,
                "still": still,
                "missing": str(missing),
                "masked_name": masked_name,
            }

        seen = await chromium.run(open_exchange)
        before = seen["before"]
        assert "请求签名有效，由 police.gd.afc" in before
        assert "答复由 bank.icbc 签名，并绑定到本请求" in before
        assert f"第 {request_leaf} 条记录包含在" in before
        assert f"第 {response_leaf} 条记录包含在" in before
        assert "最新检查点" in before
        assert "验证失败" not in before
        assert hop.to_account not in before
        assert seen["still"] == f"{url}/entries/{request_leaf}"  # nothing sent without a reason
        assert seen["missing"] == "True"
        assert hop.to_account in seen["revealed"]
        assert hop.to_account in seen["answer_leg"]  # one reveal per identifier on the page
        assert seen["masked_name"] == f"fedgate-evidence-{request_leaf}-masked.json"
        masked = masked_path.read_text(encoding="utf-8")
        assert hop.to_account not in masked
        assert mask_identifier(hop.to_account) in masked

        verified = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "fedgate.cli", "audit", "verify-bundle", str(bundle_path),
             "--federation", str(centre.fed)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "OK" in verified.stdout
        assert f"signed by {BANK}" in verified.stdout

        def the_other_pages() -> dict[str, str]:
            texts = {}
            for path, name in (("/log", "audit-log.png"), ("/charts?days=7", "audit-charts.png"),
                               ("/flags", "audit-flags.png")):  # fmt: skip
                page.goto(f"{url}{path}")
                chromium.shot(page, name)
                texts[path] = page.inner_text("main")
            page.goto(f"{url}/charts?days=7")
            texts["bars"] = str(page.locator("svg rect.bar").count())
            page.goto(f"{url}/entries/{response_leaf}?lang=en")
            chromium.shot(page, "audit-entry-en.png")
            texts["english"] = page.inner_text("main")
            return texts

        pages = await chromium.run(the_other_pages)
        assert "由网关密钥签署" in pages["/log"]
        assert "的延续" in pages["/log"] or "首次看到" in pages["/log"]
        assert "pboc.gz" in pages["/log"]
        assert "访问策略不允许" in pages["/charts?days=7"]
        assert int(pages["bars"]) >= 2
        assert "多次被拒" in pages["/flags"]
        assert request.officer.id in pages["/flags"]
        assert "Verified: the answer is signed by bank.icbc" in pages["english"]
        await chromium.run(lambda: page.context.close())

        # The reveal and the export are entries of the real audit log: which entry and field,
        # never the value.
        log = centre.gateway.audit
        events = [decode_entry(await log.get_entry(i)) for i in range(log.size)]
        kinds = [(e.kind, dict(e.detail)) for e in events if isinstance(e, EventEntry)]
        reveals = [d for k, d in kinds if k == "console_reveal"]
        assert len(reveals) == 1  # once, for both legs' copies of the number
        assert reveals[0]["entry"] == str(request_leaf)
        assert reveals[0]["field"] == "action.account_number"
        assert reveals[0]["reason"] == "核查止付依据"
        assert hop.to_account not in repr(kinds)
        assert ("console_export_masked", {"entry": str(request_leaf)}) in kinds
        assert ("console_export", {"entry": str(request_leaf), "reason": "移送检察院"}) in kinds
        assert any(k == "console_login" for k, _ in kinds)
