"""Appeals (Anti-Telecom and Online Fraud Law Art. 32) as the audit log records them.

A bank or carrier files a restricted person's appeal (action ``appeal``, target: the police unit
that gave the order, citing the order in ``original_request_id``); the unit, or one above it,
decides (action ``appeal_decision``, target: the gateway). Both are ordinary signed exchanges,
checked and answered by the gateway itself (``gateway.pipeline._appeals``). A lift is a release
or restore order through the pipeline, citing the appealed order; the decision cites the lift.

There is no appeals table: an appeal's state is read from the log on demand — the ``ok`` response
legs of ``appeal`` and ``appeal_decision`` found through the search index, and their request legs
— so the agency, the police and the auditors see the same thing, and nothing can be lost or
restored behind the log's back (DESIGN.md: state derived from the log is a projection of it).
Police learn of new appeals by listing them (``GatewayService.ListAppeals``, ``fedgate appeal
list``): the ordering unit polls rather than holding a stream open; the log is the inbox.

The decision is due ``decision_working_days`` working days after the filing was logged (default
3, DOMAIN.md), at the same time of day in China time; Saturdays, Sundays and the configured
``holidays`` are not working days.

Contract:

- ``AppealBook.appeals`` MUST report every appeal whose filing has an ``ok`` response leg, with
  the first ``ok`` decision on it (a later decision is refused by the pipeline); an appeal is
  ``overdue`` when pending after ``due_at`` or decided after it.
- A log that cannot be read raises ``AuditUnavailable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from fedgate.audit_entry import EntryKind, RequestLeg, decode_entry, micros_to_time
from fedgate.envelope import decode_request
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.types import CHINA_TIME
from fedgate.v1 import appeal_pb2, envelope_pb2, request_pb2
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery

__all__ = [
    "DEFAULT_WORKING_DAYS",
    "LIFTS",
    "RESTRICTIONS",
    "Appeal",
    "AppealBook",
    "due_after",
]

DEFAULT_WORKING_DAYS: Final = 3
"""Working days the ordering unit has to decide (DOMAIN.md: "decided within 3 working days by
default (configurable)")."""

RESTRICTIONS: Final = frozenset({"stop_payment", "freeze", "number_suspend", "number_block"})
"""Orders a person may appeal against: an account stopped or frozen, a number suspended or
blocked (Art. 32)."""

LIFTS: Final[dict[str, str]] = {
    "stop_payment": "stop_payment_release",
    "freeze": "freeze_release",
    "number_suspend": "number_restore",
    "number_block": "number_restore",
}
"""For each restriction, the order that lifts it (citing it by ``original_request_id``)."""

_PAGE: Final = 1000


def due_after(filed: datetime, working_days: int, holidays: Iterable[date] = ()) -> datetime:
    """``filed`` plus ``working_days`` working days (China time; weekends and ``holidays``
    skipped), at the same time of day."""
    skip = frozenset(holidays)
    local = filed.astimezone(CHINA_TIME)
    left = working_days
    while left > 0:
        local += timedelta(days=1)
        if local.weekday() < 5 and local.date() not in skip:
            left -= 1
    return local.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Appeal:
    """One appeal: its filing, the order it is against and, once decided, the decision."""

    appeal_id: str
    filing: request_pb2.Request
    filed_at: datetime
    due_at: datetime
    order: request_pb2.Request | None
    decision: request_pb2.Request | None = None
    decided_at: datetime | None = None

    @property
    def state(self) -> int:
        """An ``AppealState`` value."""
        if self.decision is None:
            return appeal_pb2.APPEAL_STATE_PENDING
        if self.decision.appeal_decision.outcome == appeal_pb2.APPEAL_OUTCOME_LIFT:
            return appeal_pb2.APPEAL_STATE_LIFTED
        return appeal_pb2.APPEAL_STATE_UPHELD

    @property
    def filed_by(self) -> str:
        return self.filing.requesting_agency

    @property
    def ordering_agency(self) -> str:
        return self.filing.target_agency

    @property
    def order_request_id(self) -> str:
        return self.filing.original_request_id

    def overdue(self, now: datetime) -> bool:
        """Pending after its due time, or decided after it."""
        decided = self.decided_at if self.decided_at is not None else now
        return decided > self.due_at

    def record(self, now: datetime) -> appeal_pb2.AppealRecord:
        """The appeal as ``ListAppeals`` shows it to the ordering unit and the filing agency
        (the subject in full: the one ordered, the other holds it; the appellant's name to its
        first character). The auditor console masks the subject."""
        filing = self.filing.appeal
        out = appeal_pb2.AppealRecord(
            appeal_id=self.appeal_id,
            order_request_id=self.order_request_id,
            order_action=(self.order.WhichOneof("action") or "") if self.order else "",
            subject=filing.subject,
            filed_by=self.filed_by,
            ordering_agency=self.ordering_agency,
            case_number=self.order.case.case_number if self.order else "",
            state=self.state,  # type: ignore[arg-type]
            overdue=self.overdue(now),
            grounds=filing.grounds,
            appellant=filing.appellant_name[:1] + "*" * max(0, len(filing.appellant_name) - 1),
        )
        out.filed_at.FromDatetime(self.filed_at)
        out.due_at.FromDatetime(self.due_at)
        if self.decision is not None and self.decided_at is not None:
            decision = self.decision.appeal_decision
            out.decision_reason = decision.reason
            out.decided_by = self.decision.requesting_agency
            out.decided_officer = self.decision.officer.id
            out.decided_at.FromDatetime(self.decided_at)
            out.lift_request_id = decision.lift_request_id
        return out


class AppealBook:
    """Reads appeals from the audit log (see the module docstring)."""

    def __init__(
        self,
        *,
        log: AuditLog,
        working_days: int = DEFAULT_WORKING_DAYS,
        holidays: Iterable[date] = (),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if working_days < 1:
            raise ValueError(
                f"appeals.decision_working_days must be at least 1, got {working_days}"
            )
        self._log = log
        self._working_days = working_days
        self._holidays = frozenset(holidays)
        self.now = now

    def due(self, filed: datetime) -> datetime:
        """When a decision on an appeal filed at ``filed`` is due."""
        return due_after(filed, self._working_days, self._holidays)

    async def appeals(self) -> list[Appeal]:
        """Every appeal on record, oldest filing first."""
        decisions: dict[str, tuple[request_pb2.Request, datetime]] = {}
        for decision, at in await self._answered("appeal_decision"):
            decisions.setdefault(decision.appeal_decision.appeal_id, (decision, at))
        return [
            await self._appeal(filing, at, decisions.get(filing.request_id))
            for filing, at in await self._answered("appeal")
        ]

    async def get(self, appeal_id: str) -> Appeal | None:
        """The appeal filed as ``appeal_id``, or ``None``: its filing found by request id (one
        indexed lookup), not by reading every appeal on record."""
        rows = await self._log.search(SearchQuery(request_id=appeal_id, limit=64))
        answered = next(
            (
                row
                for row in rows
                if row.columns[0] == EntryKind.RESPONSE
                and row.columns[6] == "appeal"
                and row.columns[8] == "ok"
            ),
            None,
        )
        if answered is None:
            return None
        filing = await self._leg(answered.columns[11])
        decided = next(
            (
                (decision, at)
                for decision, at in await self._answered("appeal_decision")
                if decision.appeal_decision.appeal_id == appeal_id
            ),
            None,
        )
        return await self._appeal(filing, micros_to_time(answered.columns[2]), decided)

    async def _appeal(
        self,
        filing: request_pb2.Request,
        filed_at: datetime,
        decided: tuple[request_pb2.Request, datetime] | None,
    ) -> Appeal:
        return Appeal(
            appeal_id=filing.request_id,
            filing=filing,
            filed_at=filed_at,
            due_at=self.due(filed_at),
            order=await self._request(filing.original_request_id),
            decision=decided[0] if decided else None,
            decided_at=decided[1] if decided else None,
        )

    async def _answered(self, action: str) -> list[tuple[request_pb2.Request, datetime]]:
        """The requests of ``action`` answered ``ok``, with their response legs' times."""
        found: list[tuple[request_pb2.Request, datetime]] = []
        after = -1
        while True:
            page = await self._log.search(
                SearchQuery(action=action, outcome="ok", after_index=after, limit=_PAGE)
            )
            for row in page:
                if row.columns[0] == EntryKind.RESPONSE:
                    request = await self._leg(row.columns[11])
                    found.append((request, micros_to_time(row.columns[2])))
            if len(page) < _PAGE:
                return found
            after = page[-1].index

    async def _request(self, request_id: str) -> request_pb2.Request | None:
        """The allowed request leg's request of ``request_id``, or ``None``."""
        rows = await self._log.search(SearchQuery(request_id=request_id, limit=64))
        for row in rows:
            if row.columns[0] == EntryKind.REQUEST and row.columns[8] == "allowed":
                return await self._leg(row.index)
        return None

    async def _leg(self, index: int) -> request_pb2.Request:
        try:
            leg = decode_entry(await self._log.get_entry(index))
            if not isinstance(leg, RequestLeg):
                raise AuditUnavailable(f"entry {index} is not a request leg")
            envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
            return decode_request(envelope.body)
        except FedgateError:
            raise
        except Exception as exc:  # an answered request's leg always decodes: the log is damaged
            raise AuditUnavailable(f"the request leg at {index} does not decode: {exc}") from exc
