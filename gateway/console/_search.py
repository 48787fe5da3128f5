"""The auditor console's search form: the query string checked, and one hit as the list shows it.

Times are typed in China time (``<input type=datetime-local>``); the subject is matched exactly
against the searchable column; subjects in the list are masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from fedgate.audit_entry import EntryKind, micros_to_time, time_to_micros
from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.logs import mask_identifiers
from fedgate.web.text import BEIJING, mask_identifier
from gateway.audit.store import IndexedRow, SearchQuery

__all__ = [
    "EVENT_KINDS",
    "MAX_TEXT",
    "OUTCOMES",
    "PAGE_SIZE",
    "ResultRow",
    "SearchForm",
    "input_time",
    "result_row",
]

PAGE_SIZE: Final = 50

_KINDS: Final[dict[str, int]] = {
    "": 0,
    "request": EntryKind.REQUEST,
    "response": EntryKind.RESPONSE,
    "event": EntryKind.EVENT,
}
"""The ``kind`` filter: which leg (0: any)."""
_KIND_NAMES: Final = {v: k for k, v in _KINDS.items() if v}
OUTCOMES: Final = (
    "allowed",
    "refused",
    "ok",
    "not_found",
    "pending",
    "expired",
    "invalid",
    "node_fault",
    "unavailable",
    "gateway_fault",
)
EVENT_KINDS: Final = (
    "console_login",
    "console_login_failed",
    "console_locked_out",
    "console_login_refused",
    "console_logout",
    "console_reveal",
    "console_export",
)
"""The console events offered in the action filter (others are found by typing nothing)."""
MAX_TEXT: Final = 64
_TIME_FORMATS: Final = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")


def input_time(at: datetime) -> str:
    """A time as ``<input type=datetime-local>`` writes it, in China time."""
    return at.astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M")


def _parse_time(raw: str, name: str) -> int | None:
    if not raw:
        return None
    for fmt in _TIME_FORMATS:
        try:
            return time_to_micros(datetime.strptime(raw, fmt).replace(tzinfo=BEIJING))
        except ValueError:
            continue
    raise InvalidArgument.for_fields(
        [FieldViolation(name, "give a date and time, e.g. 2026-11-22T14:03 (China time)")]
    )


@dataclass(frozen=True, slots=True)
class SearchForm:
    """The search page's query string, checked."""

    values: Mapping[str, str]
    query: SearchQuery
    leg: int
    before: int | None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SearchForm:
        """Raises ``InvalidArgument`` naming each bad field."""
        names = ("officer", "member", "case", "subject", "action", "outcome", "kind", "since")
        values = {n: params.get(n, "").strip() for n in (*names, "until", "before")}
        violations = [
            FieldViolation(n, f"at most {MAX_TEXT} characters")
            for n, v in values.items()
            if len(v) > MAX_TEXT
        ]
        if values["kind"] not in _KINDS:
            violations.append(FieldViolation("kind", "request, response or event"))
        before: int | None = None
        if values["before"]:
            if not values["before"].isdigit():
                violations.append(FieldViolation("before", "an entry number"))
            else:
                before = int(values["before"])
        since = until = None
        for name in ("since", "until"):
            try:
                parsed = _parse_time(values[name], name)
            except InvalidArgument as exc:
                violations.extend(exc.violations)
                continue
            if name == "since":
                since = parsed
            else:
                until = parsed
        if violations:
            raise InvalidArgument.for_fields(violations)
        query = SearchQuery(
            officer_id=values["officer"],
            member=values["member"],
            case_number=values["case"],
            action=values["action"],
            subject=values["subject"].replace(" ", ""),
            outcome=values["outcome"],
            since_us=since,
            until_us=until,
            limit=PAGE_SIZE + 1,
        )
        return cls(values, query, int(_KINDS.get(values["kind"], 0)), before)


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One search hit as the list shows it (subjects masked)."""

    index: int
    time: datetime
    kind: str
    requester: str
    target: str
    officer: str
    case_number: str
    action: str
    subjects: str
    outcome: str
    reason: str
    details: tuple[tuple[str, str], ...] = ()
    """An event's details as ``(key, value)`` pairs (the log keeps ``k=v; k=v``)."""
    origin: str = ""
    """The shard the entry is in (its log's origin)."""
    url: str = ""
    """The entry's page."""
    anchor: str = ""
    """The row's element id suffix, unique across shards."""


def event_details(text: str) -> tuple[tuple[str, str], ...]:
    """``request_id=…; action=…`` as pairs, in their order; pieces without ``=`` are dropped."""
    pairs = []
    for piece in text.split("; "):
        key, sep, value = piece.partition("=")
        if sep and key:
            pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def result_row(hit: IndexedRow) -> ResultRow:
    c = hit.columns
    kind = _KIND_NAMES.get(c[0], "event")
    text = mask_identifiers(c[9])  # free text: an agency's detail, a refusal's rule
    reason = text if len(text) <= 90 else text[:88] + "…"
    return ResultRow(
        index=hit.index,
        time=micros_to_time(c[2]),
        kind=kind,
        requester=c[3],
        target=c[7],
        officer=c[4],
        case_number=c[5],
        action=c[6],
        subjects="，".join(mask_identifier(s) for s in c[10]),
        outcome=c[8],
        reason=reason,
        details=event_details(c[9]) if kind == "event" else (),
    )
