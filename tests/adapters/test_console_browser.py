"""The staff console in a real browser (Debian's chromium driven by Playwright) against a real
bank node: a query from the police appears live, a staff member claims and confirms it, and the
police side gets the signed answer; another bank's staff see nothing; Chinese renders.

Playwright's sync API runs in one dedicated thread (one browser for the module); the tests'
event loop keeps serving the node and the console meanwhile. Screenshots of each page go to
``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.console_node import start_staff_console
from fedgate.v1 import request_pb2
from fedgate.web.app import Console
from fedgate.web.auth import Role, ScryptParams, UserStore
from fedgate.web.serve import EmbeddedServer
from fedgate.web.text import mask_identifier

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # the chromium fixture skips if it is missing


def add_staff(state_dir: Path, member: str, *users: str) -> None:
    store = UserStore.in_state_dir(state_dir)
    for user in users:
        store.add_user(
            user, member_id=member, display_name="张三", role=Role.STAFF, password=PASSWORD,
            params=FAST,
        )  # fmt: skip
    store.close()


# -- steps run in the browser thread -------------------------------------------------------------


def new_page(browser: Any, *, javascript: bool = True) -> Any:
    context = browser.new_context(
        locale="zh-CN", viewport={"width": 1366, "height": 860}, java_script_enabled=javascript
    )
    return context.new_page()


def login(page: Any, url: str, user: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#user", user)
    page.fill("#password", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/")


class TestStaffConsoleInTheBrowser:
    async def test_staff_answer_a_police_query(
        self, chromium: Any, bank_node: Any, kit: Any
    ) -> None:
        icbc = await bank_node("bank.icbc", manual={"account_holder"})
        ccb = await bank_node("bank.ccb", manual={"account_holder"}, staff=("ccb.zhao",))
        add_staff(Path(icbc.config.state_dir), "bank.icbc", "icbc.zhang")
        add_staff(Path(ccb.config.state_dir), "bank.ccb", "ccb.zhao")
        icbc_web = await start_staff_console(icbc, poll_seconds=0.3)
        ccb_web = await start_staff_console(ccb, poll_seconds=0.3)
        page = await chromium.run(new_page, chromium.browser)
        try:
            url = icbc_web.url

            def open_empty_queue() -> str:
                page.goto(f"{url}/")
                chromium.shot(page, "staff-login.png")
                login(page, url, "icbc.zhang")
                page.evaluate("() => { window.fedgateMarker = 'no reload'; }")
                chromium.shot(page, "staff-queue-empty.png")
                return str(page.inner_text("#queue tbody"))

            assert "队列为空" in await chromium.run(open_empty_queue)

            # The police submit a query; it appears on the open page by itself.
            _, hop = kit.hop_into("bank.icbc")
            request = kit.request("account_holder")
            request.account_holder.account_number = hop.to_account
            envelope = kit.sign(request)
            link = kit.link(icbc)
            assert (await link.handle(envelope)).HasField("queued")
            rid = request.request_id

            def see_it_arrive() -> tuple[str, str, str]:
                page.wait_for_selector(f"#row-{rid}", timeout=10_000)
                marker = page.evaluate("() => window.fedgateMarker")
                first = page.inner_text(f"#row-{rid} .countdown")
                page.wait_for_function(
                    "([sel, text]) => document.querySelector(sel).textContent !== text",
                    arg=[f"#row-{rid} .countdown", first],
                    timeout=5_000,
                )
                second = page.inner_text(f"#row-{rid} .countdown")
                chromium.shot(page, "staff-queue.png")
                return str(marker), str(page.inner_text(f"#row-{rid}")), f"{first}|{second}"

            marker, row, countdowns = await chromium.run(see_it_arrive)
            assert marker == "no reload"
            assert mask_identifier(hop.to_account) in row
            assert hop.to_account not in row
            assert "主体查询" in row
            first, second = countdowns.split("|")
            assert first.startswith("剩余 ")
            assert first != second

            def claim_and_confirm() -> tuple[str, str]:
                page.click(f"#claim-{rid}")
                page.wait_for_url(f"{url}/items/{rid}?notice=claimed")
                chromium.shot(page, "staff-item.png")
                details = str(page.inner_text("main"))
                page.click("#confirm")
                page.wait_for_url(f"{url}/?notice=answered")
                chromium.shot(page, "staff-answered.png")
                page.goto(f"{url}/history")
                chromium.shot(page, "staff-history.png")
                return details, str(page.inner_text("main"))

            details, history = await chromium.run(claim_and_confirm)
            assert hop.to_account in details
            assert hop.to_name in details
            assert request.case.case_number in history

            result = await link.get_result(rid)
            response = kit.verify_signed(envelope, result.response)
            assert response.status == request_pb2.RESPONSE_STATUS_OK
            assert response.answered_by == "icbc.zhang"
            assert response.account_holder.account_name == hop.to_name

            # Another bank's staff, even without JavaScript, see an empty queue and no query.
            def other_bank() -> tuple[str, str]:
                other = new_page(chromium.browser, javascript=False)
                login(other, ccb_web.url, "ccb.zhao")
                queue = str(other.inner_text("main"))
                chromium.shot(other, "staff-other-bank.png")
                other.goto(f"{ccb_web.url}/items/{rid}")
                missing = str(other.inner_text("main"))
                other.context.close()
                return queue, missing

            queue, missing = await chromium.run(other_bank)
            assert "队列为空" in queue
            assert "没有这个页面或记录" in missing

            def english() -> str:
                page.goto(f"{url}/?lang=en")
                chromium.shot(page, "staff-queue-en.png")
                return str(page.inner_text("header"))

            assert "Staff console" in await chromium.run(english)
        finally:
            await chromium.run(lambda: page.context.close())
            await icbc_web.stop()
            await ccb_web.stop()

    async def test_chinese_text_renders_with_a_cjk_font(
        self, chromium: Any, tmp_path: Path
    ) -> None:
        users = UserStore.in_state_dir(tmp_path)
        shell = Console(
            title_key="app.staff_title",
            member_id="bank.icbc",
            role=Role.STAFF,
            users=users,
            state_dir=tmp_path,
        )
        server = EmbeddedServer(shell.build([]))
        await server.start()

        def measure() -> dict[str, Any]:
            page = new_page(chromium.browser)
            page.goto(f"{server.url}/login")
            heading = page.locator("h1")
            chromium.shot(page, "cjk-login.png")
            real = heading.screenshot(path=str(chromium.shots / "cjk-heading.png"))
            # The same heading in code points no font has: what missing glyphs look like.
            page.evaluate(
                "() => { const h = document.querySelector('h1');"
                " h.textContent = '\\u{10FFFD}'.repeat([...h.textContent].length); }"
            )
            tofu = heading.screenshot()
            glyphs = page.evaluate(
                """() => {
                  const font = getComputedStyle(document.body).fontFamily;
                  const draw = (text) => {
                    const canvas = document.createElement('canvas');
                    canvas.width = 64; canvas.height = 64;
                    const ctx = canvas.getContext('2d');
                    ctx.font = '48px ' + font;
                    ctx.fillStyle = '#000';
                    ctx.fillText(text, 4, 52);
                    const data = ctx.getImageData(0, 0, 64, 64).data;
                    let inked = 0;
                    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
                    return {inked, url: canvas.toDataURL()};
                  };
                  return {zhong: draw('中'), wen: draw('文'), tofu: draw('\\u{10FFFD}')};
                }"""
            )
            page.context.close()
            return {"real": real, "tofu": tofu, "glyphs": glyphs}

        try:
            seen = await chromium.run(measure)
        finally:
            await server.stop()
            users.close()
        glyphs = seen["glyphs"]
        assert seen["real"] != seen["tofu"], "the Chinese heading renders as missing glyphs"
        # Two different characters drawn in the page's font look different, and neither looks
        # like a missing glyph; both actually put ink on the canvas.
        assert glyphs["zhong"]["url"] != glyphs["wen"]["url"]
        assert glyphs["zhong"]["url"] != glyphs["tofu"]["url"]
        assert glyphs["wen"]["url"] != glyphs["tofu"]["url"]
        assert glyphs["zhong"]["inked"] > 100
        assert glyphs["wen"]["inked"] > 100


class TestStaffAnswerByHand:
    async def test_wide_tables_rows_by_hand_and_history(
        self, chromium: Any, bank_node: Any, kit: Any
    ) -> None:
        icbc = await bank_node("bank.icbc", manual={"transactions"})
        add_staff(Path(icbc.config.state_dir), "bank.icbc", "icbc.zhang")
        web = await start_staff_console(icbc, poll_seconds=0.3)
        _, hop = kit.hop_into("bank.icbc")
        request = kit.request("transactions", account_number=hop.to_account)
        envelope = kit.sign(request)
        link = kit.link(icbc)
        assert (await link.handle(envelope)).HasField("queued")
        rid = request.request_id
        page = await chromium.run(new_page, chromium.browser)
        url = web.url
        try:

            def claim_and_measure() -> dict[str, Any]:
                login(page, url, "icbc.zhang")
                page.wait_for_selector(f"#claim-{rid}", timeout=10_000)
                page.click(f"#claim-{rid}")
                page.wait_for_url(f"{url}/items/{rid}?notice=claimed")
                chromium.shot(page, "staff-item-transactions-1366.png")
                return dict(
                    page.evaluate(
                        """() => {
                          const table = document.querySelector('section.answer table.data');
                          const wrap = table.closest('.table-wrap');
                          const cells = [...table.querySelectorAll('td, th')];
                          const lineHeight = parseFloat(getComputedStyle(table).lineHeight) ||
                            1.55 * parseFloat(getComputedStyle(table).fontSize);
                          const tall = cells.filter(c => !c.matches(':last-child')).filter(
                            c => c.getBoundingClientRect().height > 2.2 * lineHeight
                          ).map(c => c.textContent.trim());
                          return {
                            columns: table.querySelectorAll('thead th').length,
                            rows: table.querySelectorAll('tbody tr').length,
                            tableWidth: table.scrollWidth, wrapWidth: wrap.clientWidth,
                            tall: tall,
                          };
                        }"""
                    )
                )

            measured = await chromium.run(claim_and_measure)
            assert measured["columns"] >= 9
            assert measured["rows"] >= 1
            assert measured["tableWidth"] <= measured["wrapWidth"] + 1, measured  # no column hidden
            assert measured["tall"] == [], measured  # nothing wrapped a character per line

            backend_rows = measured["rows"]
            added = backend_rows + 1  # the first blank row, 1-based as shown
            i = backend_rows  # its 0-based input index

            def add_a_row_without_direction() -> str:
                page.click("summary:has-text('人工填写答复')")
                page.fill(f"#f-r-transactions-{i}-transaction_id", "HAND-0001")
                page.fill(f"#f-r-transactions-{i}-time", "2026-11-20T10:15")
                page.fill(f"#f-r-transactions-{i}-amount", "123.45")
                page.fill(f"#f-r-transactions-{i}-counterparty_account", "6222020000000000013")
                page.fill(f"#f-r-transactions-{i}-counterparty_name", "李四")
                page.click("#send-manual")
                page.wait_for_selector("#problem")
                chromium.shot(page, "staff-manual-row-refused.png")
                return str(page.inner_text("#problem"))

            problem = await chromium.run(add_a_row_without_direction)
            assert f"transactions[{added}].direction" in problem

            def fix_and_send() -> None:
                # what was typed is still there; choose the direction and send
                assert page.input_value(f"#f-r-transactions-{i}-amount") == "123.45"
                page.select_option(f"#f-r-transactions-{i}-direction", "out")
                page.click("#send-manual")
                page.wait_for_url(f"{url}/?notice=answered")

            await chromium.run(fix_and_send)
            result = await link.get_result(rid)
            response = kit.verify_signed(envelope, result.response)
            assert response.status == request_pb2.RESPONSE_STATUS_OK
            rows = response.transactions.transactions
            assert len(rows) == backend_rows + 1
            mine = rows[-1]
            assert (mine.transaction_id, mine.direction) == ("HAND-0001", "out")
            assert (mine.amount.currency, mine.amount.minor_units) == ("CNY", 12345)
            assert mine.counterparty_name == "李四"

            def open_from_history() -> str:
                page.goto(f"{url}/history")
                page.click(f"#open-{rid}")
                page.wait_for_url(f"{url}/items/{rid}")
                chromium.shot(page, "staff-history-opened.png")
                return str(page.inner_text("main"))

            opened = await chromium.run(open_from_history)
            assert request.case.case_number in opened
            assert "广东省公安厅反诈中心（police.gd.afc）" in opened  # the member by its name
        finally:
            await chromium.run(lambda: page.context.close())
            await web.stop()
