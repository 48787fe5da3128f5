"""The shell shared by the web consoles: login, sessions, CSRF, security headers, pages, audit.

A console (the staff console of an agency node, the auditor console of the gateway) builds a
``Console`` with its user store, role and audit hook, and adds its own pages through
``page_route`` (GET pages), ``action_route`` (POST forms) and ``json_route`` (polling).

Contract:

- Every POST MUST carry the session's CSRF token in the ``csrf`` form field (synchronizer
  token); a missing or wrong token, or an ``Origin`` of another site, is refused with 403 and
  nothing is done. ``action_route`` is the only way to add a POST route.
- Pages other than login MUST require a logged-in session of this console's role and member;
  an expired session goes back to the login page.
- Every login, failed login, lock-out and logout MUST be given to the audit hook before it
  takes effect; if the hook fails, the login is refused (fail closed).
- Every response carries the security headers (CSP without inline scripts, no framing,
  no-sniff, no referrer); every page but static files is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from fedgate.audit_entry import EventEntry
from fedgate.errors import (
    AgencyUnavailable,
    AuditUnavailable,
    AuthenticationError,
    FedgateError,
    InvalidArgument,
    NotFound,
    PermissionRefused,
    RuleViolated,
)
from fedgate.web.auth import Role, User, UserStore
from fedgate.web.headers import SecurityHeadersMiddleware
from fedgate.web.i18n import LANGUAGES, choose_language, field_label, translate
from fedgate.web.session import Revocations, Session, SessionCodec, load_secret_key
from fedgate.web.text import format_time, mask_identifier, mask_text

__all__ = [
    "LANG_COOKIE",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "AuditHook",
    "Console",
    "CsrfRejected",
    "Handler",
    "Page",
    "log_audit_hook",
]

log = logging.getLogger("fedgate.web")

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"
LANG_COOKIE: Final = "fedgate_lang"

AuditHook = Callable[[EventEntry], Awaitable[None]]
"""Records one console event (login, failure, logout, claim, answer, ...) in the audit log."""


async def log_audit_hook(entry: EventEntry) -> None:
    """The default audit hook: a structured log line (wire a real audit log in production)."""
    log.info(
        "console event %s by %s of %s",
        entry.kind,
        entry.actor,
        entry.member,
        extra={"event": entry.kind, "actor": entry.actor, "detail": dict(entry.detail)},
    )


class CsrfRejected(PermissionRefused):
    """A POST without this session's CSRF token, or from another site's page."""

    reason = "CSRF"


class Page:
    """What a handler knows about its request: language, session, form, and what to change."""

    __slots__ = ("end_session", "form", "lang", "new_session", "request", "session")

    def __init__(
        self, request: Request, lang: str, session: Session, form: FormData | None
    ) -> None:
        self.request = request
        self.lang = lang
        self.session = session
        self.form = form
        self.new_session: Session | None = None
        self.end_session = False

    def t(self, key: str, /, **params: object) -> str:
        return translate(self.lang, key, **params)

    def field(self, name: str) -> str:
        """A text form field, stripped; empty when absent."""
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else ""


Handler = Callable[[Request, Page], Awaitable[Response]]

_STATUS_OF: tuple[tuple[type[FedgateError], int], ...] = (
    (NotFound, 404),
    (CsrfRejected, 403),
    (RuleViolated, 409),
    (PermissionRefused, 403),
    (AuthenticationError, 401),
    (InvalidArgument, 400),
    (AgencyUnavailable, 503),
    (AuditUnavailable, 503),
)


_EXPLAINED: Final = {
    400: "error.explain.400",
    401: "error.explain.401",
    403: "error.explain.403",
    404: "error.not_found",
    409: "notice.conflict",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = format_time
    env.filters["mask"] = mask_identifier
    env.filters["mask_text"] = mask_text
    return env


_ENV: Final = _environment()


class Console:
    """One console's shell. Build it, add pages, then ``build()`` the ASGI app."""

    def __init__(
        self,
        *,
        title_key: str,
        member_id: str,
        role: Role,
        users: UserStore,
        state_dir: Path,
        audit_hook: AuditHook = log_audit_hook,
        clock: Callable[[], datetime] | None = None,
        secure_cookies: bool = False,
        any_member: bool = False,
        home: str = "/",
        nav: Sequence[tuple[str, str]] = (),
        session_key: bytes | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.title_key = title_key
        self.member_id = member_id
        self.role = role
        self.users = users
        self.home = home
        self.nav = tuple(nav)
        self._audit_hook = audit_hook
        self._clock = clock or (lambda: datetime.now(UTC))
        self._secure = secure_cookies
        self._any_member = any_member
        key = session_key if session_key is not None else load_secret_key(state_dir)
        self.codec = SessionCodec(key, clock=self._clock, revocations=revocations)
        # Cookies ignore ports: each console names its own, so consoles of several members on
        # one host do not overwrite each other's sessions. __Host- (HTTPS only) pins the origin.
        suffix = "".join(c if c.isalnum() else "_" for c in f"{member_id}_{role.value}")
        self.cookie_name = f"__Host-fedgate_{suffix}" if secure_cookies else f"fedgate_{suffix}"

    # ------------------------------------------------------------------ routes

    def page_route(self, path: str, handler: Handler, *, public: bool = False) -> Route:
        """A GET page; it needs a logged-in session unless ``public``."""
        return Route(path, self._wrap(handler, public=public, post=False), methods=["GET"])

    def action_route(self, path: str, handler: Handler, *, public: bool = False) -> Route:
        """A POST form handler: CSRF-checked, then (unless ``public``) login-checked."""
        return Route(path, self._wrap(handler, public=public, post=True), methods=["POST"])

    def json_route(self, path: str, handler: Callable[[Request, Page], Awaitable[Any]]) -> Route:
        """A GET JSON endpoint for polling: it needs a session but does not keep it alive."""

        async def endpoint(request: Request) -> Response:
            try:
                session = await self.codec.open(request.cookies.get(self.cookie_name))
            except AuditUnavailable as exc:
                return JSONResponse({"error": exc.reason}, status_code=503)
            if session is None or not self._session_ok(session):
                return JSONResponse({"error": "login_required"}, status_code=401)
            lang = self._lang(request)
            try:
                return JSONResponse(await handler(request, Page(request, lang, session, None)))
            except FedgateError as exc:
                return JSONResponse({"error": exc.reason}, status_code=self._status(exc))

        return Route(path, endpoint, methods=["GET"])

    def build(self, routes: Iterable[BaseRoute]) -> ASGIApp:
        """The console's ASGI app: login and logout, static files, ``routes``."""
        all_routes: list[BaseRoute] = [
            self.page_route("/login", self._login_form, public=True),
            self.action_route("/login", self._login, public=True),
            self.action_route("/logout", self._logout),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
            *routes,
        ]
        app = Starlette(
            routes=all_routes,
            exception_handlers={HTTPException: self._http_error},  # type: ignore[dict-item]
        )
        return SecurityHeadersMiddleware(app)

    # ------------------------------------------------------------------ rendering

    def context(self, page: Page, *, title: str = "", **values: Any) -> dict[str, Any]:
        """The shell's template context (language, session, CSRF, nav) plus ``values``."""
        request = page.request
        other = "en" if page.lang == "zh" else "zh"
        query = {k: v for k, v in request.query_params.items() if k not in ("lang", "notice")}
        query["lang"] = other
        shown = page.new_session or page.session
        return {
            "lang": page.lang,
            "t": page.t,
            "label": lambda name: field_label(page.lang, name),
            "title": title,
            "console_title": page.t(self.title_key),
            "member_id": self.member_id,
            "session": shown if shown.authenticated and not page.end_session else None,
            "csrf": shown.csrf,
            "nav": [(href, key, request.url.path == href) for href, key in self.nav],
            "path": request.url.path,
            "switch_url": f"{request.url.path}?{urlencode(query)}",
            "notice": _catalogued("notice", request.query_params.get("notice"), page),
            "error_notice": _catalogued("notice", request.query_params.get("error"), page),
            "home": self.home,
            "now": self._clock(),
            **values,
        }

    def render(
        self, page: Page, template: str, *, status: int = 200, title: str = "", **values: Any
    ) -> HTMLResponse:
        """A whole page from ``template`` with the shell's context."""
        html = _ENV.get_template(template).render(self.context(page, title=title, **values))
        return HTMLResponse(html, status_code=status)

    def fragment(self, page: Page, template: str, **values: Any) -> str:
        """Part of a page (e.g. the queue's rows for polling), with the shell's context."""
        return _ENV.get_template(template).render(self.context(page, **values))

    def redirect(self, url: str, *, notice: str = "", error: str = "") -> RedirectResponse:
        """303 See Other to ``url`` (after a POST), with a catalogued notice to show there."""
        params = {k: v for k, v in (("notice", notice), ("error", error)) if v}
        target = f"{url}?{urlencode(params)}" if params else url
        return RedirectResponse(target, status_code=303)

    def error_page(self, page: Page, status: int, message: str, detail: str = "") -> HTMLResponse:
        """A clear error page: the status, a message for people, optionally the technical
        detail (never for 5xx, which may hold internals)."""
        return self.render(
            page,
            "error.html",
            status=status,
            title=page.t(f"error.{status}"),
            status_code=status,
            message=message,
            detail=detail,
        )

    # ------------------------------------------------------------------ audit

    async def audit(self, kind: str, *, actor: str, member: str = "", **detail: str) -> None:
        """Give one event to the audit hook; raises ``AuditUnavailable`` if it fails."""
        entry = EventEntry(
            kind=kind,
            actor=actor,
            member=member or self.member_id,
            at=self._clock(),
            detail=tuple((k, v) for k, v in detail.items()),
        )
        try:
            await self._audit_hook(entry)
        except Exception as exc:
            log.error("console audit hook failed for %s: %s", kind, type(exc).__name__)
            raise AuditUnavailable(f"cannot audit the console event {kind}") from exc

    # ------------------------------------------------------------------ internals

    def _lang(self, request: Request) -> str:
        return choose_language(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE))

    def _session_ok(self, session: Session) -> bool:
        return (
            session.authenticated
            and session.role == self.role.value
            and (self._any_member or session.member_id == self.member_id)
        )

    @staticmethod
    def _status(exc: FedgateError) -> int:
        for kind, status in _STATUS_OF:
            if isinstance(exc, kind):
                return status
        return 500

    def _check_post(self, request: Request, session: Session, form: FormData) -> None:
        # Defence in depth beside the token. Browsers say where a request comes from in
        # Sec-Fetch-Site; Origin is "null" under our no-referrer policy, so it is compared only
        # when it names a site (host and port only: a TLS-terminating proxy changes the scheme).
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin", "null")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin != "null" and origin.partition("://")[2] != request.headers.get("host", "")
        ):
            raise CsrfRejected("the form was posted from another site", reason="ORIGIN")
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), session.csrf.encode()
        ):
            raise CsrfRejected("the form's CSRF token is missing or wrong")

    def _wrap(self, handler: Handler, *, public: bool, post: bool) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            lang = self._lang(request)
            cookie = request.cookies.get(self.cookie_name)
            try:
                decoded = await self.codec.open(cookie)
            except AuditUnavailable:
                # Fail closed: a session whose revocation cannot be checked is not taken.
                page = Page(request, lang, self.codec.anonymous(), None)
                return self.error_page(page, 503, page.t("error.audit"))
            session = decoded or self.codec.anonymous()
            page = Page(request, lang, session, None)
            if not public and not self._session_ok(session):
                # Not logged in (or expired): nothing is done, POSTs included.
                response: Response = self._to_login(request, expired=cookie is not None)
                return self._finish(page, response, decoded, touch=False)
            try:
                if post:
                    try:
                        form = await request.form(max_files=0, max_fields=200)
                    except Exception as exc:  # malformed body: python-multipart's own errors
                        raise InvalidArgument("the form could not be read") from exc
                    page.form = form
                    self._check_post(request, session, form)
                response = await handler(request, page)
            except CsrfRejected as exc:
                message = page.t("error.origin" if exc.reason == "ORIGIN" else "error.csrf")
                response = self.error_page(page, 403, message)
            except FedgateError as exc:
                status = self._status(exc)
                if status >= 500:
                    log.warning("console request failed: %s (%s)", exc.reason, type(exc).__name__)
                    key = "error.audit" if isinstance(exc, AuditUnavailable) else "error.internal"
                    response = self.error_page(page, status, page.t(key))
                else:
                    key = _EXPLAINED.get(status, "error.internal")
                    response = self.error_page(page, status, page.t(key), exc.message)
            except Exception:
                log.exception("console handler failed")
                response = self.error_page(page, 500, page.t("error.internal"))
            return self._finish(page, response, decoded, touch=not public)

        return endpoint

    def _finish(
        self, page: Page, response: Response, decoded: Session | None, *, touch: bool
    ) -> Response:
        if page.end_session:
            response.delete_cookie(self.cookie_name, path="/", secure=self._secure)
        elif page.new_session is not None:
            self._set_cookie(response, page.new_session)
        elif decoded is None:
            self._set_cookie(response, page.session)
        elif touch and decoded.authenticated:
            self._set_cookie(response, self.codec.touch(decoded))
        lang_query = page.request.query_params.get("lang")
        if lang_query in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE, lang_query, max_age=365 * 86400, samesite="lax", secure=self._secure
            )
        return response

    def _set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            self.cookie_name,
            self.codec.encode(session),
            path="/",
            httponly=True,
            samesite="strict",
            secure=self._secure,
        )

    def _to_login(self, request: Request, *, expired: bool) -> Response:
        params = {"next": request.url.path} if request.method == "GET" else {}
        if expired:
            params["notice"] = "expired"
        query = f"?{urlencode(params, safe='/', quote_via=quote)}" if params else ""
        return RedirectResponse(f"/login{query}", status_code=303)

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        try:
            session = await self.codec.open(request.cookies.get(self.cookie_name))
        except AuditUnavailable:
            session = None  # the error page then shows no session
        page = Page(request, self._lang(request), session or self.codec.anonymous(), None)
        status = exc.status_code if exc.status_code in (400, 404, 405) else 500
        key = "error.not_found" if status == 404 else f"error.{status}"
        return self.error_page(page, status, page.t(key))

    # ------------------------------------------------------------------ login / logout

    async def _login_form(self, request: Request, page: Page) -> Response:
        if self._session_ok(page.session):
            return RedirectResponse(self.home, status_code=303)
        return self._login_page(page, status=200, message="")

    def _login_page(self, page: Page, *, status: int, message: str, user: str = "") -> Response:
        return self.render(
            page,
            "login.html",
            status=status,
            title=page.t("login.title"),
            message=message,
            user=user,
            next=_safe_next(page.request.query_params.get("next", ""), self.home),
        )

    async def _login(self, request: Request, page: Page) -> Response:
        user_id = page.field("user")[:64]
        password = page.form.get("password") if page.form is not None else None
        password = password if isinstance(password, str) else ""
        remote = request.client.host if request.client else ""
        try:
            user: User = await asyncio.to_thread(self.users.verify_login, user_id, password)
        except PermissionRefused as exc:
            await self.audit("console_locked_out", actor=user_id, reason=exc.reason, remote=remote)
            return self._login_page(page, status=403, message=page.t("login.locked"), user=user_id)
        except AuthenticationError as exc:
            await self.audit(
                "console_login_failed", actor=user_id, reason=exc.reason, remote=remote
            )
            return self._login_page(page, status=401, message=page.t("login.failed"), user=user_id)
        session = self.codec.login(
            user_id=user.user_id,
            member_id=user.member_id,
            role=user.role.value,
            display_name=user.display_name,
        )
        if not self._session_ok(session):
            await self.audit(
                "console_login_refused",
                actor=user.user_id,
                member=user.member_id,
                reason="WRONG_CONSOLE",
                role=user.role.value,
                remote=remote,
            )
            message = page.t(
                "login.not_here", member=user.member_id, role=page.t(f"role.{user.role}")
            )
            return self._login_page(page, status=403, message=message, user=user_id)
        await self.audit("console_login", actor=user.user_id, member=user.member_id, remote=remote)
        page.new_session = session
        return RedirectResponse(_safe_next(page.field("next"), self.home), status_code=303)

    async def _logout(self, request: Request, page: Page) -> Response:
        session = page.session
        await self.audit("console_logout", actor=session.user_id, member=session.member_id)
        await self.codec.revoke(session)
        page.end_session = True
        return self.redirect("/login", notice="logged_out")


def _safe_next(target: str, home: str) -> str:
    """A local path to go to after login; anything else (other sites, ``//host``) is home."""
    if target.startswith("/") and not target.startswith(("//", "/\\")) and "\n" not in target:
        return target
    return home


def _catalogued(prefix: str, key: str | None, page: Page) -> str:
    """The catalogued text for a notice named in the URL; unknown names show nothing."""
    if not key or not key.isidentifier():
        return ""
    try:
        return page.t(f"{prefix}.{key}")
    except KeyError:
        return ""
