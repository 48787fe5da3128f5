"""The console shell over HTTP: CSRF, login and lock-out, session expiry and logout, security
headers, language switch, masking; driven through httpx's ASGI transport."""

from __future__ import annotations

import re
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from fedgate.audit_entry import EventEntry
from fedgate.errors import FedgateError
from fedgate.web.app import LANG_COOKIE, Console, Page
from fedgate.web.auth import MAX_FAILURES, Role, ScryptParams, UserStore
from fedgate.web.headers import CSP
from fedgate.web.i18n import CATALOGUE, choose_language, translate
from fedgate.web.session import SECRET_FILE, Session, SessionCodec, load_secret_key
from fedgate.web.text import mask_identifier

FAST = ScryptParams(n=2**10, r=8, p=1)
PASSWORD = "correct horse battery"
BASE = "http://console.test"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Audit:
    """An audit hook that records events, and fails on demand."""

    def __init__(self) -> None:
        self.events: list[EventEntry] = []
        self.fail = False

    async def __call__(self, entry: EventEntry) -> None:
        if self.fail:
            raise OSError("audit log unreachable")
        self.events.append(entry)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class Shell:
    """A console with one page, one form and one JSON endpoint, and a client for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.audit = Audit()
        self.done: list[str] = []
        self.users = UserStore.in_state_dir(tmp_path, clock=self.clock)
        for user_id, member, role in (
            ("icbc.zhang", "bank.icbc", Role.STAFF),
            ("boc.wang", "bank.boc", Role.STAFF),
            ("spp.audit", "procuratorate.gd", Role.AUDITOR),
        ):
            self.users.add_user(
                user_id,
                member_id=member,
                display_name="张三",
                role=role,
                password=PASSWORD,
                params=FAST,
            )
        self.console = Console(
            title_key="app.staff_title",
            member_id="bank.icbc",
            role=Role.STAFF,
            users=self.users,
            state_dir=tmp_path,
            audit_hook=self.audit,
            clock=self.clock,
            nav=(("/", "queue.title"),),
        )
        c = self.console
        self.app = c.build(
            [
                c.page_route("/", self._home),
                c.action_route("/do", self._do),
                c.json_route("/api/ping", self._ping),
            ]
        )
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)

    async def _home(self, request: Request, page: Page) -> Response:
        return self.console.render(
            page,
            "error.html",
            title=page.t("queue.title"),
            status_code=200,
            message="6222",
            detail="",
        )

    async def _do(self, request: Request, page: Page) -> Response:
        self.done.append(page.field("what"))
        return self.console.redirect("/", notice="answered")

    async def _ping(self, request: Request, page: Page) -> dict[str, str]:
        return {"user": page.session.user_id}

    async def csrf(self, path: str = "/login") -> str:
        response = await self.client.get(path)
        match = re.search(r'name="csrf" value="([^"]+)"', response.text)
        assert match, response.text
        return match.group(1)

    async def login(self, user: str = "icbc.zhang", password: str = PASSWORD) -> httpx.Response:
        token = await self.csrf()
        return await self.client.post(
            "/login", data={"csrf": token, "user": user, "password": password, "next": "/"}
        )


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Shell]:
    s = Shell(tmp_path)
    yield s
    await s.client.aclose()
    s.users.close()


class TestSecurityHeaders:
    @pytest.mark.parametrize("path", ["/login", "/", "/static/console.css", "/no/such/page"])
    async def test_every_response_carries_them(self, shell: Shell, path: str) -> None:
        response = await shell.client.get(path)
        assert response.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"

    async def test_pages_are_not_stored_but_static_files_may_be(self, shell: Shell) -> None:
        await shell.login()
        assert (await shell.client.get("/")).headers["cache-control"] == "no-store"
        assert (await shell.client.get("/api/ping")).headers["cache-control"] == "no-store"
        static = await shell.client.get("/static/console.js")
        assert static.headers["cache-control"] == "no-cache"

    async def test_the_session_cookie_is_http_only_and_strict(self, shell: Shell) -> None:
        response = await shell.login()
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie

    async def test_unknown_page_is_a_clear_404(self, shell: Shell) -> None:
        response = await shell.client.get("/no/such/page")
        assert response.status_code == 404
        assert "没有这个页面或记录" in response.text


class TestCsrf:
    async def test_post_without_token_is_refused_and_nothing_is_done(self, shell: Shell) -> None:
        await shell.login()
        response = await shell.client.post("/do", data={"what": "claim"})
        assert response.status_code == 403
        assert "表单已失效" in response.text
        assert shell.done == []

    async def test_post_with_a_wrong_token_is_refused(self, shell: Shell) -> None:
        await shell.login()
        response = await shell.client.post("/do", data={"what": "claim", "csrf": "x" * 32})
        assert response.status_code == 403
        assert shell.done == []

    async def test_post_from_another_site_is_refused(self, shell: Shell) -> None:
        await shell.login()
        token = await shell.csrf("/")
        response = await shell.client.post(
            "/do", data={"what": "claim", "csrf": token}, headers={"Origin": "http://evil.test"}
        )
        assert response.status_code == 403
        assert "请求来源不符" in response.text
        assert shell.done == []

    async def test_post_from_another_site_by_fetch_metadata_is_refused(self, shell: Shell) -> None:
        await shell.login()
        token = await shell.csrf("/")
        response = await shell.client.post(
            "/do",
            data={"what": "claim", "csrf": token},
            headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        )
        assert response.status_code == 403
        assert shell.done == []

    async def test_post_with_the_token_is_done(self, shell: Shell) -> None:
        await shell.login()
        token = await shell.csrf("/")
        for headers in (
            {"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
            {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
            {},
        ):
            response = await shell.client.post(
                "/do", data={"what": "claim", "csrf": token}, headers=headers
            )
            assert response.status_code == 303
        assert shell.done == ["claim"] * 3

    async def test_login_form_needs_its_token_too(self, shell: Shell) -> None:
        response = await shell.client.post(
            "/login", data={"user": "icbc.zhang", "password": PASSWORD}
        )
        assert response.status_code == 403
        assert shell.audit.events == []

    async def test_the_token_changes_at_login(self, shell: Shell) -> None:
        before = await shell.csrf()
        await shell.login()
        assert await shell.csrf("/") != before


class TestLogin:
    async def test_pages_need_a_login(self, shell: Shell) -> None:
        response = await shell.client.get("/")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/"

    async def test_login_opens_the_console_and_is_audited(self, shell: Shell) -> None:
        response = await shell.login()
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        home = await shell.client.get("/")
        assert home.status_code == 200
        assert "icbc.zhang" in home.text
        assert shell.audit.kinds() == ["console_login"]
        event = shell.audit.events[0]
        assert (event.actor, event.member, event.at) == ("icbc.zhang", "bank.icbc", shell.clock.now)

    async def test_wrong_password_is_refused_and_audited(self, shell: Shell) -> None:
        response = await shell.login(password="wrong horse battery")
        assert response.status_code == 401
        assert "用户名或密码错误" in response.text
        assert shell.audit.kinds() == ["console_login_failed"]
        assert ("reason", "BAD_CREDENTIALS") in shell.audit.events[0].detail
        assert (await shell.client.get("/")).status_code == 303

    async def test_lock_out_after_repeated_failures(self, shell: Shell) -> None:
        for _ in range(MAX_FAILURES - 1):
            assert (await shell.login(password="wrong horse battery")).status_code == 401
        locked = await shell.login(password="wrong horse battery")
        assert locked.status_code == 403
        assert "已被锁定" in locked.text
        right = await shell.login()
        assert right.status_code == 403
        assert shell.audit.kinds()[-2:] == ["console_locked_out", "console_locked_out"]
        shell.clock.now += timedelta(minutes=16)
        assert (await shell.login()).status_code == 303

    @pytest.mark.parametrize("user", ["boc.wang", "spp.audit"])
    async def test_accounts_of_another_agency_or_role_are_refused(
        self, shell: Shell, user: str
    ) -> None:
        response = await shell.login(user=user)
        assert response.status_code == 403
        assert "不能登录本控制台" in response.text
        assert shell.audit.kinds() == ["console_login_refused"]
        assert (await shell.client.get("/")).status_code == 303

    async def test_next_is_only_a_local_path(self, shell: Shell) -> None:
        token = await shell.csrf()
        response = await shell.client.post(
            "/login",
            data={"csrf": token, "user": "icbc.zhang", "password": PASSWORD, "next": "//evil.test"},
        )
        assert response.headers["location"] == "/"

    async def test_no_login_when_the_audit_hook_fails(self, shell: Shell) -> None:
        shell.audit.fail = True
        response = await shell.login()
        assert response.status_code == 503
        assert "审计记录暂时无法写入" in response.text
        assert (await shell.client.get("/")).status_code == 303


class TestSession:
    async def test_idle_session_expires(self, shell: Shell) -> None:
        await shell.login()
        shell.clock.now += timedelta(minutes=29)
        assert (await shell.client.get("/")).status_code == 200
        shell.clock.now += timedelta(minutes=29)
        assert (await shell.client.get("/")).status_code == 200
        shell.clock.now += timedelta(minutes=31)
        response = await shell.client.get("/")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=/&notice=expired"
        login_page = await shell.client.get(response.headers["location"])
        assert "会话已过期" in login_page.text

    async def test_polling_does_not_keep_a_session_alive(self, shell: Shell) -> None:
        await shell.login()
        for _ in range(4):
            shell.clock.now += timedelta(minutes=10)
            response = await shell.client.get("/api/ping")
        assert response.status_code == 401
        assert response.json() == {"error": "login_required"}

    async def test_absolute_expiry_despite_activity(self, shell: Shell) -> None:
        await shell.login()
        for _ in range(12 * 3 + 1):
            shell.clock.now += timedelta(minutes=20)
            response = await shell.client.get("/")
            if response.status_code != 200:
                break
        assert response.status_code == 303
        assert shell.clock.now - datetime(2026, 11, 22, 9, 0, tzinfo=UTC) > timedelta(hours=12)

    async def test_post_with_an_expired_session_does_nothing(self, shell: Shell) -> None:
        await shell.login()
        token = await shell.csrf("/")
        shell.clock.now += timedelta(minutes=31)
        response = await shell.client.post("/do", data={"what": "claim", "csrf": token})
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        assert shell.done == []

    async def test_logout_revokes_the_cookie(self, shell: Shell) -> None:
        await shell.login()
        cookie = shell.client.cookies[shell.console.cookie_name]
        token = await shell.csrf("/")
        response = await shell.client.post("/logout", data={"csrf": token})
        assert response.headers["location"] == "/login?notice=logged_out"
        assert shell.audit.kinds() == ["console_login", "console_logout"]
        shell.client.cookies.set(shell.console.cookie_name, cookie)
        assert (await shell.client.get("/")).status_code == 303

    async def test_forged_cookie_is_ignored(self, shell: Shell) -> None:
        codec = SessionCodec(b"k" * 32, clock=shell.clock)
        forged = codec.login(
            user_id="icbc.zhang", member_id="bank.icbc", role="staff", display_name="x"
        )
        shell.client.cookies.set(shell.console.cookie_name, codec.encode(forged))
        assert (await shell.client.get("/")).status_code == 303


class TestLanguage:
    async def test_chinese_first(self, shell: Shell) -> None:
        page = await shell.client.get("/login")
        assert '<html lang="zh-CN">' in page.text
        assert "用户名" in page.text
        assert "English" in page.text

    async def test_switch_to_english_sticks(self, shell: Shell) -> None:
        page = await shell.client.get("/login?lang=en")
        assert '<html lang="en">' in page.text
        assert "User id" in page.text
        assert shell.client.cookies[LANG_COOKIE] == "en"
        again = await shell.client.get("/login")
        assert "User id" in again.text
        back = await shell.client.get("/login?lang=zh")
        assert "用户名" in back.text

    async def test_errors_are_translated(self, shell: Shell) -> None:
        await shell.login()
        response = await shell.client.post("/do?lang=en", data={"what": "x"})
        assert "The form has expired" in response.text


class TestCatalogue:
    def test_both_languages_have_every_string_with_the_same_placeholders(self) -> None:
        for key, (zh, en) in CATALOGUE.items():
            assert zh, key
            assert en, key
            assert set(re.findall(r"{(\w+)}", zh)) == set(re.findall(r"{(\w+)}", en)), key

    def test_unknown_key_raises(self) -> None:
        with pytest.raises(KeyError):
            translate("zh", "no.such.key")

    @pytest.mark.parametrize(
        ("query", "cookie", "lang"),
        [
            (None, None, "zh"),
            ("en", None, "en"),
            (None, "en", "en"),
            ("zh", "en", "zh"),
            ("fr", None, "zh"),
        ],
    )
    def test_choose_language(self, query: str | None, cookie: str | None, lang: str) -> None:
        assert choose_language(query, cookie) == lang


class TestMaskIdentifier:
    def test_pages_use_the_shared_mask(self) -> None:
        assert mask_identifier("6222021234567890123") == "622****0123"


class TestSecretKey:
    def test_made_private_and_reused(self, tmp_path: Path) -> None:
        key = load_secret_key(tmp_path)
        assert len(key) == 32
        assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
        assert load_secret_key(tmp_path) == key

    def test_a_key_others_can_read_is_refused(self, tmp_path: Path) -> None:
        load_secret_key(tmp_path)
        (tmp_path / SECRET_FILE).chmod(0o644)
        with pytest.raises(FedgateError, match="chmod 600") as refused:
            load_secret_key(tmp_path)
        assert refused.value.reason == "SECRET_KEY_UNSAFE"


class TestSessionCodec:
    def test_round_trip_and_tampering(self) -> None:
        codec = SessionCodec(b"k" * 32)
        session = codec.login(
            user_id="icbc.zhang", member_id="bank.icbc", role="staff", display_name="张三"
        )
        cookie = codec.encode(session)
        assert codec.decode(cookie) == session
        body, mac = cookie.split(".")
        flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
        assert codec.decode(f"{flipped}.{mac}") is None
        assert codec.decode(f"{body}.{mac[:-1]}") is None
        assert codec.decode("") is None
        assert SessionCodec(b"j" * 32).decode(cookie) is None

    def test_anonymous_sessions_carry_a_token_but_no_user(self) -> None:
        session: Session = SessionCodec(b"k" * 32).anonymous()
        assert not session.authenticated
        assert len(session.csrf) >= 32
