"""The auditor console links the two stages of a staged disclosure (issue 15), in a real browser
(Debian's chromium driven by Playwright) against the real gateway and bank nodes: the police ask
every bank hit / no hit, then the details from the banks that hit; an auditor opens the stage-1
exchange, sees which banks hit and the stage-2 request citing it, follows the link to stage 2
and from there back to stage 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.synth import World
from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.staged import run_staged
from fedgate.v1 import bank_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from tests.adapters._live import Live, live_federation
from tests.adapters.test_staged_disclosure_e2e import ALL_BANKS, SLOW_MACHINE_S, wide_request

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)

pytestmark = [pytest.mark.asyncio, pytest.mark.browser, pytest.mark.slow]


async def request_leg_index(live: Live, request_id: str) -> int:
    log = live.gateway.audit
    for index in range(log.size):
        entry = decode_entry(await log.get_entry(index))
        if isinstance(entry, RequestLeg) and entry.request_id == request_id:
            return index
    raise AssertionError(f"no request leg for {request_id}")


async def test_an_auditor_sees_both_stages_linked(
    chromium: Any, fed_dir: Path, world: World, tmp_path: Path
) -> None:
    state = tmp_path / "live"
    users = UserStore.in_state_dir(state / "gateway")
    users.add_user(
        "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
        password=PASSWORD, params=FAST,
    )  # fmt: skip
    users.close()
    victim = world.chains[0].victim
    async with live_federation(
        fed_dir, world, state, console=True, timeout_s=SLOW_MACHINE_S
    ) as live:
        first = wide_request(
            live.police,
            bank_pb2.AccountsByIdQuery(id_number=victim.id_number),
            targets=ALL_BANKS,
        )
        staged = await run_staged(live.police, first, timeout=20.0)
        assert staged.details_request is not None
        assert all(i.answer is not None for i in staged.details)
        stage1 = await request_leg_index(live, first.request_id)
        stage2 = await request_leg_index(live, staged.details_request.request_id)
        url = live.gateway.console_url
        assert url is not None
        page = await chromium.run(lambda: chromium.browser.new_context(locale="en-GB").new_page())

        def look() -> dict[str, Any]:
            page.goto(f"{url}/entries/{stage1}?lang=en")
            page.wait_for_selector("#user")
            page.fill("#user", "audit.wang")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_selector("#staged")
            chromium.shot(page, "audit-staged-stage1.png")
            seen: dict[str, Any] = {
                "stage1": page.inner_text("#staged"),
                "hit": page.inner_text("#staged-hit"),
                "no_hit": page.inner_text("#staged-no-hit"),
                "links": page.eval_on_selector_all(
                    "#staged-stage2 a", "els => els.map(e => e.getAttribute('href'))"
                ),
                "main": page.inner_text("main"),
            }
            page.click("#staged-stage2 a")
            page.wait_for_selector("#staged-cites")
            chromium.shot(page, "audit-staged-stage2.png")
            seen["stage2_url"] = page.url
            seen["stage2"] = page.inner_text("#staged")
            page.click("#staged-stage1")
            page.wait_for_selector("#staged-hit")
            seen["back_url"] = page.url
            return seen

        seen = await chromium.run(look)
    assert "Staged disclosure · stage 1: hit / no hit" in seen["stage1"]
    assert set(seen["hit"].split(", ")) == set(staged.hit_members)
    assert victim.bank_id in seen["hit"]
    assert seen["no_hit"] != "—"  # the seeded victim banks at some banks only
    assert seen["links"] == [f"/entries/{stage2}"]
    assert staged.details_request.request_id in seen["stage1"]
    assert victim.id_number not in seen["main"]  # the subject stays masked
    assert seen["stage2_url"].endswith(f"/entries/{stage2}")
    assert "stage 2: details" in seen["stage2"]
    assert first.request_id in seen["stage2"]
    assert seen["back_url"].endswith(f"/entries/{stage1}")
