"""The staff console: the web pages an agency's stationed staff answer queries with.

Served by each agency node (see ``adapters.console_node``), it shows only that node's queue and
lets in only that agency's staff accounts. Pages: the queue (urgency, case, action, officer, a
live countdown to each deadline; new queries appear by polling ``/api/queue``), a query's page
(claim or release; for the claimant, the request in full, the backend's data beside it, and the
answer forms), and the staff member's own answers.

It talks to the queue through the ``StaffQueue`` seam (in-process, not gRPC), so it can be run
against a fake or the node's real queue.

Contract:

- Identifiers (account, ID and phone numbers) MUST be masked everywhere except on a query's
  page shown to the staff member who holds its claim; showing them there is audited.
- Every claim, release, answer and refusal MUST be audited (after it is done, with its outcome).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from adapters.answers import MAX_REASON
from adapters.appeals import AppealDesk, AppealForm
from fedgate.actions import RESULT_FIELD
from fedgate.errors import FedgateError, FieldViolation, InvalidArgument, RuleViolated
from fedgate.types import MemberId, RequestId
from fedgate.v1 import appeal_pb2, common_pb2, request_pb2, ticket_pb2
from fedgate.web.app import AuditHook, Console, Page, log_audit_hook
from fedgate.web.auth import Role, UserStore
from fedgate.web.protoview import (
    MAX_FORM_ROWS,
    FormField,
    FormTable,
    describe,
    enum_name,
    form_fields,
    form_tables,
    parse_form,
    subjects,
)
from fedgate.web.text import mask_identifier

__all__ = [
    "EXPIRING",
    "Preview",
    "QueueCase",
    "StaffConsole",
    "StaffQueue",
]

EXPIRING = timedelta(minutes=15)
"""Open queries due within this long stand out (the node's default reminder time)."""

WAITING = ticket_pb2.TICKET_STATE_WAITING
CLAIMED = ticket_pb2.TICKET_STATE_CLAIMED


@dataclass(frozen=True, slots=True)
class QueueCase:
    """One query in the queue as the console shows it. ``status`` and ``detail`` are those of
    the signed answer once there is one (``status`` 0 before)."""

    request_id: RequestId
    request: request_pb2.Request
    action: str
    state: int
    received_at: datetime
    deadline: datetime
    claimed_by: str = ""
    answered_by: str = ""
    answered_at: datetime | None = None
    status: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Preview:
    """The backend's data shown beside a claimed query: ``result`` (what the backend would
    answer to a read), ``context`` (a read-only look-up of an order's subject) or ``none``."""

    kind: str
    response: request_pb2.Response | None = None


class StaffQueue(Protocol):
    """What the console needs from an agency node's queue. Raises ``NotFound`` for an unknown
    query, ``RuleViolated`` when its state does not allow the step, ``PermissionRefused`` for
    someone who is not this agency's staff, ``InvalidArgument`` for an unacceptable answer."""

    @property
    def member_id(self) -> MemberId: ...

    def member_name(self, member_id: str, lang: str) -> str:
        """``广东省公安厅反诈中心（police.gd.afc）``: a member as people read it, in ``lang``
        (``zh`` or ``en``); the id alone for a member the registry does not list."""
        ...

    async def list_open(self) -> Sequence[QueueCase]:
        """Waiting and claimed queries, earliest deadline first."""
        ...

    async def get(self, request_id: str) -> QueueCase: ...

    async def claim(self, request_id: str, staff_id: str) -> QueueCase: ...

    async def release(self, request_id: str, staff_id: str) -> QueueCase: ...

    async def preview(self, request_id: str, staff_id: str) -> Preview:
        """The backend's data for a query the staff member holds (never executes an order)."""
        ...

    async def confirm(self, request_id: str, staff_id: str) -> QueueCase:
        """Answer with what the backend says now (for an order: execute it), signed."""
        ...

    async def answer(
        self, request_id: str, staff_id: str, answer: request_pb2.Response
    ) -> QueueCase:
        """Answer by hand (status OK with the result, or NOT_FOUND with a detail), signed."""
        ...

    async def reject(self, request_id: str, staff_id: str, reason: str) -> QueueCase: ...

    async def history(self, staff_id: str, *, limit: int = 200) -> Sequence[QueueCase]:
        """The queries this staff member answered or refused, latest first."""
        ...


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One row of the queue table (identifiers already masked)."""

    request_id: str
    urgency: int
    case_number: str
    action: str
    subject: str
    officer: str
    agency: str
    deadline: datetime
    deadline_iso: str
    left: str
    expiring: bool
    overdue: bool
    state: int
    claimed_by: str
    mine: bool


def _left(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class StaffConsole:
    """The staff console of one agency: ``app`` is its ASGI application."""

    def __init__(
        self,
        *,
        queue: StaffQueue,
        users: UserStore,
        state_dir: Path,
        audit_hook: AuditHook = log_audit_hook,
        clock: Callable[[], datetime] | None = None,
        secure_cookies: bool = False,
        poll_seconds: float = 5.0,
        session_key: bytes | None = None,
        appeals: AppealDesk | None = None,
    ) -> None:
        self._queue = queue
        self._appeals = appeals
        self._clock = clock or (lambda: datetime.now(UTC))
        self._poll_ms = int(poll_seconds * 1000)
        self.shell = Console(
            title_key="app.staff_title",
            member_id=queue.member_id,
            role=Role.STAFF,
            users=users,
            state_dir=state_dir,
            audit_hook=audit_hook,
            clock=self._clock,
            secure_cookies=secure_cookies,
            nav=(
                ("/", "queue.title"),
                ("/history", "history.title"),
                *((("/appeals", "appeals.title"),) if appeals is not None else ()),
            ),
            session_key=session_key,
        )
        s = self.shell
        self.app: ASGIApp = s.build(
            [
                s.page_route("/", self._queue_page),
                s.json_route("/api/queue", self._queue_json),
                s.page_route("/history", self._history_page),
                s.page_route("/items/{rid}", self._item_page),
                s.action_route("/items/{rid}/claim", self._claim),
                s.action_route("/items/{rid}/release", self._release),
                s.action_route("/items/{rid}/confirm", self._confirm),
                s.action_route("/items/{rid}/answer", self._answer),
                s.action_route("/items/{rid}/reject", self._reject),
                *(
                    (
                        s.page_route("/appeals", self._appeals_page),
                        s.action_route("/appeals", self._file_appeal),
                    )
                    if appeals is not None
                    else ()
                ),
            ]
        )

    # ------------------------------------------------------------------ queue

    def _row(self, case: QueueCase, user: str, now: datetime, lang: str) -> QueueRow:
        request = case.request
        found = (
            subjects(getattr(request, case.action))
            if request.WhichOneof("action") == case.action
            else ()
        )
        left = case.deadline - now
        return QueueRow(
            request_id=case.request_id,
            urgency=int(request.urgency),
            case_number=request.case.case_number,
            action=case.action,
            subject="，".join(mask_identifier(v) for _, v in found),
            officer=f"{request.officer.name}（{request.officer.id}）",
            agency=self._queue.member_name(request.requesting_agency, lang),
            deadline=case.deadline,
            deadline_iso=case.deadline.astimezone(UTC).isoformat(timespec="seconds"),
            left=_left(left),
            expiring=timedelta(0) <= left < EXPIRING,
            overdue=left < timedelta(0),
            state=case.state,
            claimed_by=case.claimed_by,
            mine=case.claimed_by == user,
        )

    async def _rows(self, page: Page) -> tuple[tuple[QueueRow, ...], str]:
        cases = await self._queue.list_open()
        now = self._clock()
        rows = tuple(self._row(c, page.session.user_id, now, page.lang) for c in cases)
        digest = hashlib.sha256(
            "|".join(f"{r.request_id}:{r.state}:{r.claimed_by}" for r in rows).encode()
        ).hexdigest()[:16]
        return rows, digest

    def _queue_values(self, page: Page, rows: Sequence[QueueRow]) -> dict[str, Any]:
        mine = sum(1 for r in rows if r.mine)
        return {
            "rows": rows,
            "summary": page.t("queue.summary", count=len(rows), mine=mine),
            "soon_ms": int(EXPIRING.total_seconds() * 1000),
        }

    async def _queue_page(self, request: Request, page: Page) -> Response:
        rows, version = await self._rows(page)
        return self.shell.render(
            page,
            "staff_queue.html",
            title=page.t("queue.title"),
            version=version,
            poll_ms=self._poll_ms,
            **self._queue_values(page, rows),
        )

    async def _queue_json(self, request: Request, page: Page) -> dict[str, Any]:
        rows, version = await self._rows(page)
        values = self._queue_values(page, rows)
        html = self.shell.fragment(page, "staff_queue_rows.html", **values)
        return {
            "version": version,
            "count": len(rows),
            "summary": values["summary"],
            "announce": page.t("queue.new_items", count=len(rows)),
            "rows": html,
        }

    async def _history_page(self, request: Request, page: Page) -> Response:
        cases = await self._queue.history(page.session.user_id)
        rows = [
            {
                "request_id": c.request_id,
                "case_number": c.request.case.case_number,
                "action": c.action,
                "answered_at": c.answered_at,
                "status": c.status,
                "detail": c.detail,
            }
            for c in cases
        ]
        return self.shell.render(
            page, "staff_history.html", title=page.t("history.title"), rows=rows
        )

    # ------------------------------------------------------------------ one query

    async def _item_page(
        self,
        request: Request,
        page: Page,
        *,
        status: int = 200,
        problem: str = "",
        typed: dict[str, str] | None = None,
        open_section: str = "",
    ) -> Response:
        rid = request.path_params["rid"]
        case = await self._queue.get(rid)
        user = page.session.user_id
        mine = case.state == CLAIMED and case.claimed_by == user
        preview = Preview("none")
        result_field = RESULT_FIELD.get(case.action, "")
        fields: tuple[FormField, ...] = ()
        tables: tuple[FormTable, ...] = ()
        if mine:
            preview = await self._queue.preview(rid, user)
            await self.shell.audit("console_reveal", actor=user, request_id=rid, action=case.action)
            prefill = None
            if (
                preview.kind == "result"
                and preview.response is not None
                and preview.response.WhichOneof("result") == result_field
            ):
                prefill = getattr(preview.response, result_field)
            if result_field:
                result_type = request_pb2.Response.DESCRIPTOR.fields_by_name[result_field]
                assert result_type.message_type is not None
                fields = form_fields(result_type.message_type, prefill, page.lang)
                tables = form_tables(result_type.message_type, prefill, page.lang)
            if typed:
                fields = tuple(_retyped(f, typed) for f in fields)
                tables = tuple(_retyped_table(t, typed) for t in tables)
        r = case.request
        action_view = (
            describe(getattr(r, case.action), page.lang, reveal=mine)
            if r.WhichOneof("action") == case.action
            else ()
        )
        shown = preview.response.WhichOneof("result") if preview.response is not None else None
        preview_view = (
            describe(getattr(preview.response, shown), page.lang, reveal=True)
            if preview.response is not None and shown is not None
            else ()
        )
        preview_detail = preview.response.detail if preview.response is not None else ""
        preview_ok = (
            preview.response is not None
            and preview.response.status == request_pb2.RESPONSE_STATUS_OK
        )
        return self.shell.render(
            page,
            "staff_item.html",
            status=status,
            title=page.t("item.title"),
            case=case,
            r=r,
            mine=mine,
            waiting=case.state == WAITING,
            action_view=action_view,
            officer=_person(r.officer, reveal=mine),
            second_officer=_person(r.second_officer, reveal=mine)
            if r.HasField("second_officer")
            else "",
            preview=preview,
            preview_view=preview_view,
            preview_detail=preview_detail,
            preview_ok=preview_ok,
            is_order=preview.kind == "context",
            fields=fields,
            tables=tables,
            requesting_agency=self._queue.member_name(r.requesting_agency, page.lang),
            problem=problem,
            open_section=open_section,
            reason=(typed or {}).get("reason", ""),
            detail=(typed or {}).get("detail", ""),
            case_type=page.t(
                f"case_type.{enum_name(common_pb2.CaseType.DESCRIPTOR, r.case.case_type)}"
            ),
            legal_kind=page.t(
                "legal_document."
                + enum_name(common_pb2.LegalDocumentKind.DESCRIPTOR, r.legal_document.kind)
            ),
            left=_left(case.deadline - self._clock()),
            deadline_iso=case.deadline.astimezone(UTC).isoformat(timespec="seconds"),
            soon_ms=int(EXPIRING.total_seconds() * 1000),
        )

    async def _claim(self, request: Request, page: Page) -> Response:
        rid = request.path_params["rid"]
        user = page.session.user_id
        try:
            case = await self._queue.claim(rid, user)
        except RuleViolated:
            await self.shell.audit("console_claim_refused", actor=user, request_id=rid)
            return self.shell.redirect("/", error="conflict")
        await self.shell.audit("console_claim", actor=user, request_id=rid, action=case.action)
        return self.shell.redirect(f"/items/{rid}", notice="claimed")

    async def _release(self, request: Request, page: Page) -> Response:
        rid = request.path_params["rid"]
        user = page.session.user_id
        try:
            case = await self._queue.release(rid, user)
        except RuleViolated:
            return self.shell.redirect("/", error="conflict")
        await self.shell.audit("console_release", actor=user, request_id=rid, action=case.action)
        return self.shell.redirect("/", notice="released")

    async def _answered(self, page: Page, case: QueueCase, how: str) -> Response:
        await self.shell.audit(
            "console_answer",
            actor=page.session.user_id,
            request_id=case.request_id,
            action=case.action,
            case=case.request.case.case_number,
            status=_status_name(case.status),
            how=how,
        )
        notice = "rejected" if how == "reject" else "answered"
        return self.shell.redirect("/", notice=notice)

    async def _confirm(self, request: Request, page: Page) -> Response:
        rid = request.path_params["rid"]
        try:
            case = await self._queue.confirm(rid, page.session.user_id)
        except RuleViolated:
            return self.shell.redirect("/", error="conflict")
        return await self._answered(page, case, "confirm")

    async def _answer(self, request: Request, page: Page) -> Response:
        rid = request.path_params["rid"]
        user = page.session.user_id
        case = await self._queue.get(rid)
        outcome = page.field("outcome")
        typed = {k: v for k, v in (page.form or {}).items() if isinstance(v, str)}
        try:
            if outcome == "not_found":
                detail = page.field("detail")
                if not 1 <= len(detail) <= MAX_REASON:
                    raise InvalidArgument.for_fields(
                        [FieldViolation("detail", page.t("item.not_found_hint"))]
                    )
                answer = request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_NOT_FOUND, detail=detail
                )
            elif outcome == "ok":
                answer = _manual_answer(case, page.field, now=self._clock())
            else:
                raise InvalidArgument.for_fields([FieldViolation("outcome", "ok or not_found")])
            done = await self._queue.answer(rid, user, answer)
        except InvalidArgument as exc:
            section = "not_found" if outcome == "not_found" else "manual"
            return await self._item_page(
                request,
                page,
                status=400,
                problem=_problem(exc),
                typed=typed,
                open_section=section,
            )
        except RuleViolated:
            return self.shell.redirect("/", error="conflict")
        return await self._answered(page, done, "manual")

    async def _reject(self, request: Request, page: Page) -> Response:
        rid = request.path_params["rid"]
        reason = page.field("reason")
        if not 1 <= len(reason) <= MAX_REASON:
            problem = page.t("item.reject_reason")
            return await self._item_page(
                request,
                page,
                status=400,
                problem=problem,
                typed={"reason": reason},
                open_section="reject",
            )
        try:
            case = await self._queue.reject(rid, page.session.user_id, reason)
        except RuleViolated:
            return self.shell.redirect("/", error="conflict")
        return await self._answered(page, case, "reject")

    # ------------------------------------------------------------------ appeals (Art. 32)

    async def _appeals_page(
        self,
        request: Request,
        page: Page,
        *,
        status: int = 200,
        problem: str = "",
        typed: dict[str, str] | None = None,
    ) -> Response:
        assert self._appeals is not None
        now = self._clock()
        try:
            records = await self._appeals.appeals()
            unavailable = ""
        except FedgateError as exc:
            records, unavailable = (), exc.message
        rows = [
            {
                "appeal_id": r.appeal_id,
                "state": appeal_pb2.AppealState.Name(r.state).removeprefix("APPEAL_STATE_").lower(),
                "overdue": r.overdue,
                "order_action": r.order_action,
                "subject": mask_identifier(r.subject),
                "ordering_agency": self._queue.member_name(r.ordering_agency, page.lang),
                "filed_at": r.filed_at.ToDatetime(tzinfo=UTC),
                "due_at": r.due_at.ToDatetime(tzinfo=UTC),
                "decision_reason": r.decision_reason,
            }
            for r in reversed(records)
        ]
        return self.shell.render(
            page,
            "staff_appeals.html",
            status=status,
            title=page.t("appeals.title"),
            rows=rows,
            problem=problem,
            typed=typed or {},
            unavailable=unavailable,
            now=now,
        )

    async def _file_appeal(self, request: Request, page: Page) -> Response:
        assert self._appeals is not None
        names = ("order_request_id", "appellant_name", "appellant_id_number")
        typed = {n: page.field(n) for n in (*names, "appellant_phone", "grounds")}
        missing = [n for n in (*names, "appellant_phone", "grounds") if not typed[n]]
        user = page.session.user_id
        try:
            if missing:
                raise InvalidArgument.for_fields(
                    [FieldViolation(n, page.t("appeals.required")) for n in missing]
                )
            result = await self._appeals.file(AppealForm(**typed), user)
        except FedgateError as exc:
            await self.shell.audit(
                "console_appeal_refused",
                actor=user,
                request_id=typed["order_request_id"][:64],
                reason=exc.reason,
            )
            detail = _problem(exc) if isinstance(exc, InvalidArgument) else exc.message
            return await self._appeals_page(request, page, status=400, problem=detail, typed=typed)
        await self.shell.audit(
            "console_appeal",
            actor=user,
            request_id=result.appeal_id,
            order=result.order_request_id,
            to=result.ordering_agency,
        )
        return self.shell.redirect("/appeals", notice="appeal_filed")


def _status_name(status: int) -> str:
    name = request_pb2.ResponseStatus.Name(status)  # type: ignore[arg-type]
    return name.removeprefix("RESPONSE_STATUS_").lower()


def _manual_answer(
    case: QueueCase, get: Callable[[str], str], *, now: datetime
) -> request_pb2.Response:
    field = RESULT_FIELD.get(case.action)
    if field is None:
        raise InvalidArgument(f"the action {case.action} has no result to fill in")
    answer = request_pb2.Response(status=request_pb2.RESPONSE_STATUS_OK)
    result = getattr(answer, field)
    result.SetInParent()
    parse_form(result, get, now=now)
    return answer


def _retyped(field: FormField, typed: dict[str, str]) -> FormField:
    """The form field showing what the user typed (after a refused submission)."""
    if field.kind == "checkbox":
        return replace(field, value="on" if typed.get(field.name) == "on" else "")
    if field.kind == "money":
        return replace(
            field,
            value=typed.get(field.name, ""),
            currency=typed.get(f"{field.name}.currency", field.currency),
        )
    return replace(field, value=typed.get(field.name, ""))


def _retyped_table(table: FormTable, typed: dict[str, str]) -> FormTable:
    """The rows as the user typed them, as many as were sent (after a refused answer)."""
    sent = typed.get(table.count_name, "")
    count = min(int(sent), MAX_FORM_ROWS) if sent.isdigit() else len(table.rows)
    if not table.rows:
        return table
    rows = []
    for i in range(count):
        base = table.rows[min(i, len(table.rows) - 1)]
        renamed = (replace(f, name=f"r.{table.name}.{i}.{f.name.rsplit('.', 1)[1]}") for f in base)
        rows.append(tuple(_retyped(f, typed) for f in renamed))
    return replace(table, rows=tuple(rows))


def _problem(exc: InvalidArgument) -> str:
    if exc.violations:
        return "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
    return exc.message


def _person(person: Any, *, reveal: bool) -> str:
    text = f"{person.name}（{person.id}）"
    if person.phone:
        phone = person.phone if reveal else mask_identifier(person.phone)
        text += f" · {phone}"
    return text
