"""The auditor console shows a chase as a tree (issue 11), in a real browser (Debian's chromium
driven by Playwright) against the real gateway and bank nodes: the police run a chase; an
auditor opens one of its exchanges, follows the link to the chase and sees every exchange of
it under its parent, each with its receipt and amounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.synth import World
from fedgate.chase import ChaseEngine, NodeKind, Outcome
from fedgate.logs import mask
from fedgate.web.auth import Role, ScryptParams, UserStore
from tests.adapters._live import live_federation
from tests.adapters.test_chase_e2e import authority, victim_transfer

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)

pytestmark = [pytest.mark.asyncio, pytest.mark.browser, pytest.mark.slow]


async def test_an_auditor_sees_the_chase_as_a_tree(
    chromium: Any, fed_dir: Path, world: World, tmp_path: Path
) -> None:
    state = tmp_path / "live"
    users = UserStore.in_state_dir(state / "gateway")
    users.add_user(
        "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
        password=PASSWORD, params=FAST,
    )  # fmt: skip
    users.close()
    chain = world.chains[0]
    async with live_federation(fed_dir, world, state, console=True) as live:
        report = await ChaseEngine(client=live.police, authority=authority(61)).run(
            victim_transfer(chain)
        )
        assert report.stopped
        url = live.gateway.console_url
        assert url is not None
        first = report.nodes[0]
        assert first.query_leaf_index is not None
        page = await chromium.run(lambda: chromium.browser.new_context(locale="zh-CN").new_page())

        def look() -> dict[str, Any]:
            page.goto(f"{url}/entries/{first.query_leaf_index}")
            page.wait_for_selector("#user")
            page.fill("#user", "audit.wang")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_selector("#chase-tree")
            page.click("#chase-tree")
            page.wait_for_selector("ul#chase-tree")
            chromium.shot(page, "audit-chase-tree.png")
            depth = page.evaluate(
                "() => Math.max(...[...document.querySelectorAll('li.chase-step')].map(li => {"
                " let d = 0; for (let e = li; e; e = e.parentElement) if (e.matches && "
                "e.matches('li.chase-step')) d++; return d; }))"
            )
            steps = page.eval_on_selector_all(
                "li.chase-step",
                "els => els.map(e => ({id: e.id, action: e.dataset.action,"
                " text: e.querySelector(':scope > .card').innerText,"
                " children: e.querySelectorAll(':scope > ul > li').length}))",
            )
            return {"main": page.inner_text("main"), "depth": depth, "steps": steps}

        seen = await chromium.run(look)
    main = seen["main"]
    assert report.chase_id in main
    accounts = [n for n in report.nodes if n.kind == NodeKind.ACCOUNT]
    # one step per exchange: each account's query, each stop-payment
    queries = [s for s in seen["steps"] if s["action"] == "transactions"]
    stops = [s for s in seen["steps"] if s["action"] == "stop_payment"]
    assert len(queries) >= len(accounts)
    assert len(stops) == len(report.stopped)
    # the root is the first query, and the tree goes as deep as the main line
    assert f"#{first.query_leaf_index}" in seen["steps"][0]["text"]  # the root's receipt
    assert seen["depth"] >= len(chain.hops)
    for node in report.nodes:
        if node.outcome == Outcome.STOPPED:
            assert node.stop_leaf_index is not None
            (step,) = [s for s in stops if mask(node.account) in s["text"]]
            assert f"#{node.stop_leaf_index}" in step["text"]  # its receipt
            assert "止付生效" in step["text"]
            assert "¥" in step["text"]  # the amount cited
    for account in (n.account for n in accounts):
        assert account not in main  # masked
