"""The auditor console: the web pages auditors review the audit log with, served by the gateway.

Only auditor accounts (``fedgate audit add-user``) of members that hold the ``auditor`` role in
the member registry may log in, and only while the member is in good standing (the registry is
read on every request, so a revocation ends sessions at once). Pages:

- ``/`` search by officer, member, case number, subject identifier (exact), action, outcome,
  kind of entry and time, newest first, paged (``LogInsights.newest``: indexed columns only);
- ``/entries/{index}`` the whole exchange of an entry: the signed request decoded, the decision
  and matched rule, the signed response, the receipt, with the signature and inclusion checks
  run on every view (``gateway.console._exchange``); identifiers masked until revealed;
- ``POST /entries/{index}/reveal`` reveal one masked identifier (every place the page shows it)
  for a stated reason; ``POST /entries/{index}/evidence`` download the evidence bundle: masked
  by default (``gateway.console._evidence``), in full (``export_evidence``) with a reason;
- ``/chases/{index}`` the chase the exchange at ``index`` belongs to, as the tree its workflow
  links draw (``gateway.console._chase``): each exchange, its receipt, its amounts;
- ``/log`` the latest checkpoint, witness cosignatures and the console's consistency check;
- ``/charts`` requests per day by member and by action, refusals by reason (inline SVG);
- ``/flags`` patterns worth a closer look (``gateway.console._flags``);
- ``/appeals`` appeals (Art. 32) from the log (``gateway.appeals``): pending, overdue, upheld and
  lifted, each linked to its filing, decision and lifting order; subjects masked.

On PostgreSQL the console covers every shard of the schema (``gateway.console._shards``): the
list, charts, flags and log page span them all, and another instance's shard serves the entry,
chase, reveal and evidence pages under ``/shards/{key}/``.

Contract:

- Identifier values MUST be masked on every page until the auditor reveals one with a
  CSRF-checked POST stating a reason; the reveal MUST be appended to the audit log (which entry,
  which fields, the reason, never the value) before anything is shown, once for all the places
  the page shows that value, and lasts ``REVEAL_FOR`` for that session only.
- An evidence download MUST be masked unless the auditor states a reason, which MUST be in the
  audit log (``console_export``) before the full bundle leaves.
- Every login, failure, lock-out, logout, reveal and evidence export MUST be in the audit log
  before it takes effect (the shell's audit hook appends ``EventEntry``s to the real log); if it
  cannot be written, nothing is done.
- Every page is ``Cache-Control: no-store`` (the shell's headers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp

from fedgate.actions import ACTIONS, ORDER_ACTIONS, REPORT_ACTIONS
from fedgate.audit_entry import EventEntry, micros_to_time
from fedgate.errors import FieldViolation, InvalidArgument, NotFound, VerificationError
from fedgate.registry import Registry
from fedgate.v1 import appeal_pb2
from fedgate.web.app import AuditHook, Console, Page
from fedgate.web.auth import Role, UserStore
from fedgate.web.serve import EmbeddedServer
from fedgate.web.session import Revocations, Session
from fedgate.web.text import BEIJING, mask_identifier
from gateway.appeals import AppealBook
from gateway.audit.insights import GROUPINGS, LogInsights, PgShard, TimeWindow, day_start_us
from gateway.audit.log import AuditLog
from gateway.audit.service import export_evidence
from gateway.console._charts import OTHER, day_chart, reason_chart
from gateway.console._chase import chase_of, load_chase
from gateway.console._countermeasures import Countermeasures
from gateway.console._disclosure import staged_view
from gateway.console._evidence import masked_bundle
from gateway.console._exchange import ExchangeView, load_exchange
from gateway.console._flags import (
    FOLLOW_UP,
    REFUSALS_MINIMUM,
    VOLUME_FACTOR,
    VOLUME_MINIMUM,
    WORK_END,
    WORK_START,
    find_flags,
)
from gateway.console._officers import OfficerMatch, OfficerNames, looks_like_badge
from gateway.console._search import (
    EVENT_KINDS,
    MAX_TEXT,
    OUTCOMES,
    PAGE_SIZE,
    SearchForm,
    input_time,
    result_row,
)
from gateway.console._shards import Shard, Shards
from gateway.console._state import LogWatch

__all__ = [
    "AUDITOR_ROLE",
    "PAGE_SIZE",
    "REVEAL_FOR",
    "AuditorConsole",
    "RunningAuditorConsole",
    "start_auditor_console",
]

_logger = logging.getLogger("fedgate.gateway.console")

AUDITOR_ROLE: Final = "auditor"
"""The registry role a member needs for its auditor accounts to log in."""
REVEAL_FOR: Final = timedelta(minutes=10)
MIN_REASON: Final = 4
MAX_REASON: Final = 500
"""Bounds of the reason an auditor gives to reveal an identifier or export it in full."""
WINDOWS: Final = (1, 7, 30, 90)
"""The time windows (days) the charts and flags offer."""
DEFAULT_DAYS: Final = 30


class _Grants:
    """Which masked fields each session has revealed in which shard, until when (in memory: a
    restart masks everything again)."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._until: dict[tuple[str, str, int, str], float] = {}

    def add(self, sid: str, shard: str, leg: int, key: str) -> None:
        now = self._clock().timestamp()
        self._until = {k: u for k, u in self._until.items() if u > now}
        self._until[(sid, shard, leg, key)] = now + REVEAL_FOR.total_seconds()

    def of(self, sid: str, shard: str) -> set[tuple[int, str]]:
        now = self._clock().timestamp()
        return {
            (leg, key)
            for (s, origin, leg, key), u in self._until.items()
            if s == sid and origin == shard and u > now
        }


class _AuditorShell(Console):
    """The shell with one more condition on every session: the account's member must hold the
    ``auditor`` role in the current registry (so a login of any other member is refused and
    audited as ``console_login_refused``, and a revocation ends its sessions)."""

    def __init__(self, *, allowed: Callable[[str], bool], **options: Any) -> None:
        super().__init__(**options)
        self._allowed = allowed

    def _session_ok(self, session: Session) -> bool:
        return super()._session_ok(session) and self._allowed(session.member_id)


def _label(page: Page, prefix: str, key: str) -> str:
    """A catalogued label for ``key`` (``prefix.key``), else the key itself."""
    try:
        return page.t(f"{prefix}.{key}")
    except KeyError:
        return key


def action_label(page: Page, action: str) -> str:
    """An action's or a console event's name in the page's language."""
    for prefix in ("action", "event"):
        try:
            return page.t(f"{prefix}.{action}")
        except KeyError:
            continue
    return action or "—"


def _action_groups(page: Page) -> list[tuple[str, list[tuple[str, str]]]]:
    """The action filter's options: queries, orders, agency reports and console events, each
    group sorted by its label in the page's language."""
    groups = (
        ("audit.search.queries", ACTIONS - ORDER_ACTIONS - REPORT_ACTIONS),
        ("audit.search.orders", ORDER_ACTIONS),
        ("audit.search.reports", REPORT_ACTIONS),
        ("audit.search.events", frozenset(EVENT_KINDS)),
    )
    return [
        (page.t(title), sorted(((a, action_label(page, a)) for a in names), key=lambda p: p[1]))
        for title, names in groups
    ]


def _event_text(page: Page, details: tuple[tuple[str, str], ...]) -> str:
    """An event's details as a person reads them: ``请求 01a24258… · 事项 主体查询 · 理由 …``."""
    shown = []
    for key, value in details:
        if key == "action":
            text = action_label(page, value)
        elif key in ("request_id", "session"):
            text = value[:8] + "…" if len(value) > 9 else value
        elif key == "field":
            text = _label(page, "field", value.rsplit(".", 1)[-1])
        elif key == "places":
            text = str(len([p for p in value.split(",") if p]))
        else:
            text = value
        shown.append(f"{_label(page, 'event_detail', key)} {text}")
    return " · ".join(shown)


class AuditorConsole:
    """The auditor console over one audit log: ``app`` is its ASGI application.

    ``registry`` returns the current member registry; ``audit_hook`` defaults to appending
    each console event to ``log`` itself.
    """

    def __init__(
        self,
        *,
        log: AuditLog,
        insights: LogInsights,
        registry: Callable[[], Registry],
        users: UserStore,
        state_dir: Path,
        member_id: str = "gateway",
        audit_hook: AuditHook | None = None,
        clock: Callable[[], datetime] | None = None,
        secure_cookies: bool = False,
        session_key: bytes | None = None,
        countermeasures: Countermeasures | None = None,
        appeals: AppealBook | None = None,
        revocations: Revocations | None = None,
        shared: PgShard | None = None,
    ) -> None:
        self._log = log
        self._countermeasures = countermeasures
        self._appeals = appeals or AppealBook(log=log, now=clock or (lambda: datetime.now(UTC)))
        self._insights = insights
        self._registry = registry
        self._clock = clock or (lambda: datetime.now(UTC))
        self._grants = _Grants(self._clock)
        self._officers: dict[str, OfficerNames] = {}
        watch = LogWatch(
            log=log, insights=insights, registry=registry, state_dir=state_dir, clock=self._clock
        )
        self.shards = Shards(
            home=Shard("", log, insights, watch),
            source=shared,
            registry=registry,
            state_dir=state_dir,
            clock=clock,
        )
        self.shell = _AuditorShell(
            allowed=self.is_auditor_member,
            title_key="app.auditor_title",
            member_id=member_id,
            role=Role.AUDITOR,
            users=users,
            state_dir=state_dir,
            audit_hook=audit_hook or self._append,
            clock=self._clock,
            secure_cookies=secure_cookies,
            any_member=True,
            nav=(
                ("/", "audit.nav.search"),
                ("/log", "audit.nav.log"),
                ("/charts", "audit.nav.charts"),
                ("/flags", "audit.nav.flags"),
                *((("/countermeasures", "audit.nav.countermeasures"),) if countermeasures else ()),
                ("/appeals", "audit.nav.appeals"),
            ),
            session_key=session_key,
            revocations=revocations,
        )
        s = self.shell
        self.app: ASGIApp = s.build(
            [
                s.page_route("/", self._search_page),
                s.page_route("/entries/{index:int}", self._entry_page),
                s.page_route("/chases/{index:int}", self._chase_page),
                s.action_route("/entries/{index:int}/reveal", self._reveal),
                s.action_route("/entries/{index:int}/evidence", self._evidence),
                # Another instance's shard (PostgreSQL): the same pages under its key.
                s.page_route("/shards/{shard}/entries/{index:int}", self._entry_page),
                s.page_route("/shards/{shard}/chases/{index:int}", self._chase_page),
                s.action_route("/shards/{shard}/entries/{index:int}/reveal", self._reveal),
                s.action_route("/shards/{shard}/entries/{index:int}/evidence", self._evidence),
                s.page_route("/log", self._log_page),
                s.page_route("/charts", self._charts_page),
                s.page_route("/flags", self._flags_page),
                s.page_route("/countermeasures", self._countermeasures_page),
                s.page_route("/appeals", self._appeals_page),
            ]
        )

    async def _append(self, entry: EventEntry) -> None:
        await self._log.append(entry)

    def is_auditor_member(self, member_id: str) -> bool:
        """Whether ``member_id`` is in good standing and holds the auditor role now."""
        registry = self._registry()
        member = registry.find(member_id)
        return (
            member is not None
            and registry.revocation_of(member_id) is None
            and AUDITOR_ROLE in member.roles
        )

    def _member_label(self, page: Page, member_id: str) -> str:
        if member_id == OTHER:
            return page.t("chart.other")
        member = self._registry().find(member_id)
        if member is None:
            return member_id or "—"
        return f"{member.name_en if page.lang == 'en' else member.name_zh} ({member_id})"

    # ------------------------------------------------------------------ search

    def _search_values(self, page: Page) -> dict[str, Any]:
        registry = self._registry()
        return {
            "members": sorted((m.id, self._member_label(page, m.id)) for m in registry.entries),
            "action_groups": _action_groups(page),
            "event_text": lambda details: _event_text(page, details),
            "outcomes": [(o, page.t(f"outcome.{o}")) for o in OUTCOMES],
            "kinds": [(k, page.t(f"kind.{k}")) for k in ("request", "response", "event")],
            "action_label": lambda a: action_label(page, a),
            "log_size": sum(shard.log.size for shard in self.shards.all),
            "page_size": PAGE_SIZE,
            "federated": self.shards.federated,
        }

    async def _officer_matches(self, text: str) -> list[OfficerMatch]:
        """The officers of that name in every shard's request legs."""
        found: dict[tuple[str, str], OfficerMatch] = {}
        for shard in await self.shards.every():
            names = self._officers.setdefault(shard.key, OfficerNames(shard.log))
            for match in await names.find(text):
                found.setdefault((match.member, match.officer_id), match)
        return sorted(found.values(), key=lambda x: (x.name, x.member, x.officer_id))

    async def _search_page(self, request: Request, page: Page) -> Response:
        params = dict(request.query_params)
        officer = params.get("officer", "").strip()
        matches: list[OfficerMatch] = []
        if officer and not looks_like_badge(officer):
            # A name: search by the badge number of the one officer of that name, or offer
            # the choice when several officers (or none) answer to it.
            matches = await self._officer_matches(officer)
            if len(matches) == 1:
                params["officer"] = matches[0].officer_id
                if not params.get("member"):
                    params["member"] = matches[0].member
            else:
                return self.shell.render(
                    page,
                    "audit_search.html",
                    title=page.t("audit.search.title"),
                    form={k: str(v)[:MAX_TEXT] for k, v in params.items()},
                    problem="",
                    officer_name=officer,
                    officer_matches=[
                        (m, self._search_link(officer=m.officer_id, member=m.member))
                        for m in matches
                    ],
                    rows=(),
                    searched=True,
                    older="",
                    newest="",
                    **self._search_values(page),
                )
        try:
            cursor = self.shards.parse_cursor(request.query_params.getlist("before"))
            params.pop("before", None)
            form = SearchForm.parse(params)
        except InvalidArgument as exc:
            return self.shell.render(
                page,
                "audit_search.html",
                status=400,
                title=page.t("audit.search.title"),
                form={k: str(v)[:MAX_TEXT] for k, v in params.items()},
                problem="; ".join(f"{v.field}: {v.description}" for v in exc.violations),
                rows=(),
                searched=True,
                older="",
                newest="",
                **self._search_values(page),
            )
        hits, following = await self.shards.newest(
            form.query, cursor=cursor, leg=form.leg, page=PAGE_SIZE
        )
        rows = [
            replace(
                result_row(h.row),
                origin=h.shard.origin,
                url=h.shard.entry_url(h.row.index),
                anchor=f"{h.shard.key}-{h.row.index}" if h.shard.key else str(h.row.index),
            )
            for h in hits
        ]
        kept = {k: v for k, v in form.values.items() if v and k != "before"}
        older = ""
        if following is not None and rows:
            pages = [("before", v) for v in self.shards.cursor_values(following)]
            older = "/?" + urlencode([*kept.items(), *pages])
        newest = "/?" + urlencode(kept) if cursor else ""
        return self.shell.render(
            page,
            "audit_search.html",
            title=page.t("audit.search.title"),
            form=form.values,
            problem="",
            rows=rows,
            searched=bool(kept) or bool(cursor),
            older=older,
            newest=newest,
            **self._search_values(page),
        )

    # ------------------------------------------------------------------ one exchange

    async def _shard(self, request: Request) -> Shard:
        """The shard a page's path names (this instance's without ``/shards/{key}``), with
        the entry it names in its view (a shard read from elsewhere is reloaded for an entry
        newer than its view)."""
        shard = await self.shards.shard(str(request.path_params.get("shard", "")))
        index = int(request.path_params.get("index", 0))
        if shard.reader is not None and index >= shard.log.size:
            await shard.reader.refresh(force=True)
        return shard

    async def _exchange(
        self, shard: Shard, index: int, page: Page, *, revealed: bool
    ) -> ExchangeView:
        return await load_exchange(
            shard.log,
            shard.insights,
            self._registry(),
            index,
            t=page.t,
            lang=page.lang,
            revealed=self._grants.of(page.session.sid, shard.origin) if revealed else (),
        )

    async def _entry_page(self, request: Request, page: Page) -> Response:
        index = int(request.path_params["index"])
        shard = await self._shard(request)
        try:
            view = await self._exchange(shard, index, page, revealed=True)
        except VerificationError as exc:
            _logger.error(
                "audit entry %d of %s does not decode: %s", index, shard.origin, exc.message
            )
            return self.shell.error_page(page, 500, page.t("entry.damaged"))
        in_chase = await chase_of(shard.log, index)
        request_leg = next((leg.index for leg in view.legs if leg.kind == "request"), -1)
        return self.shell.render(
            page,
            "audit_entry.html",
            title=page.t("entry.title", index=index),
            view=view,
            chase_url=f"{shard.base}/chases/{index}" if in_chase is not None else "",
            staged=await staged_view(shard.log, request_leg),
            action_name=action_label(page, view.action),
            registry_label=lambda m: self._member_label(page, m),
            base=shard.base,
            origin=shard.origin,
            federated=self.shards.federated,
        )

    async def _chase_page(self, request: Request, page: Page) -> Response:
        index = int(request.path_params["index"])
        shard = await self._shard(request)
        if not 0 <= index < shard.log.size:
            raise NotFound(f"no entry {index}: the log has {shard.log.size} entries")
        chase = await load_chase(shard.log, shard.insights, index)
        if chase is None:
            raise NotFound(f"entry {index} is not part of a chase")
        return self.shell.render(
            page,
            "audit_chase.html",
            title=page.t("chase.title"),
            chase=chase,
            action_label=lambda a: action_label(page, a),
            base=shard.base,
        )

    def _reason(self, page: Page) -> str:
        """The reason typed for a reveal or a full export; ``InvalidArgument`` naming ``reason``
        unless it has ``MIN_REASON`` to ``MAX_REASON`` characters."""
        reason = page.field("reason").strip()
        if not MIN_REASON <= len(reason) <= MAX_REASON:
            raise InvalidArgument.for_fields(
                [FieldViolation("reason", page.t("entry.reason_required", low=MIN_REASON))]
            )
        return reason

    async def _reveal(self, request: Request, page: Page) -> Response:
        index = int(request.path_params["index"])
        shard = await self._shard(request)
        key = page.field("field")
        leg_text = page.field("leg")
        view = await self._exchange(shard, index, page, revealed=False)
        leg = int(leg_text) if leg_text.isdigit() else -1
        if (leg, key) not in view.revealable:
            raise InvalidArgument.for_fields(
                [FieldViolation("field", f"entry {leg_text[:20]} has no masked field {key[:60]!r}")]
            )
        reason = self._reason(page)
        # One identifier, one reveal: every place on the page that shows the same value opens
        # with it, under one audited event (not one per field and leg).
        same = sorted(view.same_value.get((leg, key), frozenset({(leg, key)})))
        session = page.session
        await self.shell.audit(
            "console_reveal",
            actor=session.user_id,
            member=session.member_id,
            entry=str(leg),
            field=key,
            places=",".join(f"{i}:{k}" for i, k in same),
            reason=reason,
            request_id=view.request_id,
            **self._shard_detail(shard),
        )
        for i, k in same:
            self._grants.add(session.sid, shard.origin, i, k)
        anchor = f"f-{leg}-{key.replace('.', '-')}"
        return RedirectResponse(
            f"{shard.entry_url(index)}?notice=revealed#{anchor}", status_code=303
        )

    @staticmethod
    def _shard_detail(shard: Shard) -> dict[str, str]:
        """The ``shard`` detail of a console event about another instance's shard (its
        origin); none for this instance's own, whose events read as they always did."""
        return {"shard": shard.origin} if shard.key else {}

    async def _evidence(self, request: Request, page: Page) -> Response:
        index = int(request.path_params["index"])
        shard = await self._shard(request)
        log = shard.log
        if not 0 <= index < log.size:
            raise NotFound(f"no entry {index}: the log has {log.size} entries")
        session = page.session
        full = page.field("full") == "1"
        prefix = f"fedgate-evidence-{shard.key}-" if shard.key else "fedgate-evidence-"
        if full:
            reason = self._reason(page)
            await self.shell.audit(
                "console_export",
                actor=session.user_id,
                member=session.member_id,
                entry=str(index),
                reason=reason,
                **self._shard_detail(shard),
            )
            bundle = await export_evidence(log, index)
            name = f"{prefix}{index}.json"
        else:
            await self.shell.audit(
                "console_export_masked",
                actor=session.user_id,
                member=session.member_id,
                entry=str(index),
                **self._shard_detail(shard),
            )
            view = await self._exchange(shard, index, page, revealed=False)
            bundle = masked_bundle(log, view)
            name = f"{prefix}{index}-masked.json"
        return Response(
            bundle,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # ------------------------------------------------------------------ the log

    async def _log_page(self, request: Request, page: Page) -> Response:
        states = [await shard.watch.state() for shard in await self.shards.every()]
        return self.shell.render(
            page,
            "audit_log.html",
            title=page.t("audit.log.title"),
            states=states,
            roots=[
                s.checkpoint.root_hash.hex() if s.checkpoint is not None else "" for s in states
            ],
        )

    # ------------------------------------------------------------------ charts and flags

    def _window(self, request: Request) -> tuple[int, date, TimeWindow]:
        raw = request.query_params.get("days", "")
        days = int(raw) if raw.isdigit() and int(raw) in WINDOWS else DEFAULT_DAYS
        today = self._clock().astimezone(BEIJING).date()
        first = today - timedelta(days=days - 1)
        return days, first, TimeWindow(day_start_us(first), day_start_us(today + timedelta(1)))

    async def _charts_page(self, request: Request, page: Page) -> Response:
        days, first, window = self._window(request)
        by = request.query_params.get("by", "requester")
        by = by if by in GROUPINGS[:2] else "requester"

        def bar_title(day: date, name: str, count: int) -> str:
            return page.t("chart.bar", day=day.isoformat(), name=name, count=count)

        members = day_chart(
            await self.shards.per_day(window, by),
            first=first,
            days=days,
            label=lambda k: self._member_label(page, k),
            title=bar_title,
        )
        actions = day_chart(
            await self.shards.per_day(window, "action"),
            first=first,
            days=days,
            label=lambda k: page.t("chart.other") if k == OTHER else action_label(page, k),
            title=bar_title,
        )
        refusals = reason_chart(
            await self.shards.refusals(window), label=lambda k: _label(page, "reason", k)
        )
        return self.shell.render(
            page,
            "audit_charts.html",
            title=page.t("audit.charts.title"),
            days=days,
            windows=WINDOWS,
            by=by,
            first=first,
            members=members,
            actions=actions,
            refusals=refusals,
        )

    async def _countermeasures_page(self, request: Request, page: Page) -> Response:
        if self._countermeasures is None:
            raise NotFound("this gateway keeps no risk list")
        days, first, _ = self._window(request)
        charts = await self._countermeasures.charts(
            first=first,
            days=days,
            label=lambda prefix, key: (
                self._member_label(page, key) if prefix == "member" else _label(page, prefix, key)
            ),
            title=lambda day, name, count: page.t(
                "chart.bar", day=day.isoformat(), name=name, count=count
            ),
        )
        return self.shell.render(
            page,
            "audit_countermeasures.html",
            title=page.t("audit.counter.title"),
            days=days,
            windows=WINDOWS,
            first=first,
            charts=charts,
        )

    def _search_link(self, **values: object) -> str:
        return "/?" + urlencode({k: v for k, v in values.items() if v})

    def _day_link(self, member: str, officer: str, day: date, **more: str) -> str:
        start = datetime.combine(day, datetime.min.time(), BEIJING)
        return self._search_link(
            member=member,
            officer=officer,
            since=input_time(start),
            until=input_time(start + timedelta(days=1)),
            **more,
        )

    async def _flags_page(self, request: Request, page: Page) -> Response:
        days, _, window = self._window(request)
        flags = await find_flags(self.shards, window, now=self._clock())
        return self.shell.render(
            page,
            "audit_flags.html",
            title=page.t("audit.flags.title"),
            days=days,
            windows=WINDOWS,
            flags=flags,
            day_link=self._day_link,
            micros=micros_to_time,
            entry_url=self.shards.entry_url,
            case_link=lambda case: self._search_link(case=case),
            member_label=lambda m: self._member_label(page, m),
            thresholds={
                "factor": f"{VOLUME_FACTOR:g}",
                "minimum": VOLUME_MINIMUM,
                "start": f"{WORK_START:02d}:00",
                "end": f"{WORK_END:02d}:00",
                "follow_days": FOLLOW_UP.days,
                "refusals": REFUSALS_MINIMUM,
            },
        )

    async def _appeals_page(self, request: Request, page: Page) -> Response:
        now = self._clock()
        appeals = await self._appeals.appeals()
        wanted = request.query_params.get("state", "")
        rows = []
        counts = {"pending": 0, "overdue": 0, "upheld": 0, "lifted": 0}
        for appeal in reversed(appeals):
            record = appeal.record(now)
            state = appeal_pb2.AppealState.Name(record.state).removeprefix("APPEAL_STATE_").lower()
            counts[state] += 1
            if record.overdue:
                counts["overdue"] += 1
            if wanted and wanted != state and not (wanted == "overdue" and record.overdue):
                continue
            rows.append(
                {
                    "appeal_id": record.appeal_id,
                    "state": state,
                    "overdue": record.overdue,
                    "order_action": record.order_action,
                    "order_request_id": record.order_request_id,
                    "subject": mask_identifier(record.subject),
                    "case_number": record.case_number,
                    "filed_by": self._member_label(page, record.filed_by),
                    "ordering_agency": self._member_label(page, record.ordering_agency),
                    "filed_at": appeal.filed_at,
                    "due_at": appeal.due_at,
                    "decided_at": appeal.decided_at,
                    "decided_by": record.decided_by,
                    "lift_request_id": record.lift_request_id,
                    "case_link": self._search_link(case=record.case_number),
                }
            )
        return self.shell.render(
            page,
            "audit_appeals.html",
            title=page.t("audit.appeals.title"),
            rows=rows,
            counts=counts,
            wanted=wanted,
        )


class RunningAuditorConsole:
    """An auditor console being served: its ``url``; ``stop`` it before closing the log."""

    def __init__(
        self,
        server: EmbeddedServer,
        users: UserStore,
        insights: LogInsights,
        console: AuditorConsole,
    ) -> None:
        self.server = server
        self.console = console
        self._users = users
        self._insights = insights

    @property
    def url(self) -> str:
        return self.server.url

    async def stop(self) -> None:
        try:
            await self.server.stop()
        finally:
            self._users.close()
            try:
                await self.console.shards.close()
            finally:
                await self._insights.close()


async def start_auditor_console(
    *,
    log: AuditLog,
    audit_db: Path | PgShard,
    registry: Callable[[], Registry],
    state_dir: Path,
    users_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    member_id: str = "gateway",
    secure_cookies: bool = False,
    clock: Callable[[], datetime] | None = None,
    countermeasures: Countermeasures | None = None,
    appeals: AppealBook | None = None,
    session_key: bytes | None = None,
    revocations: Revocations | None = None,
) -> RunningAuditorConsole:
    """Serve the auditor console of ``log`` (kept in the SQLite file or PostgreSQL shard
    ``audit_db``; on PostgreSQL every other shard in its schema too, read-only) on
    ``host:port`` in the running loop (``port`` 0: any free port). Accounts come from
    ``users.sqlite`` in ``users_dir`` (default ``state_dir``, where ``fedgate audit add-user
    --state`` writes). Sessions are signed with ``session_key`` (default the key file in
    ``state_dir``) and logouts kept in ``revocations`` (default this process's memory).
    Raises ``AgencyUnavailable`` when the address cannot be bound, ``AuditUnavailable`` when
    the database cannot be read."""
    insights = await LogInsights.open(audit_db, catch_up=log.catch_up_soon)
    users: UserStore | None = None
    try:
        users = UserStore.in_state_dir(users_dir or state_dir)
        console = AuditorConsole(
            log=log,
            insights=insights,
            registry=registry,
            users=users,
            state_dir=state_dir,
            member_id=member_id,
            clock=clock,
            secure_cookies=secure_cookies,
            countermeasures=countermeasures,
            appeals=appeals,
            session_key=session_key,
            revocations=revocations,
            shared=audit_db if isinstance(audit_db, PgShard) else None,
        )
        server = EmbeddedServer(console.app, host=host, port=port)
        await server.start()
    except BaseException:
        if users is not None:
            users.close()
        await insights.close()
        raise
    _logger.info("auditor console at %s", server.url)
    return RunningAuditorConsole(server, users, insights, console)
