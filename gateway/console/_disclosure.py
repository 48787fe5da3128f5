"""The two stages of a staged disclosure (``fedgate.disclosure``) linked, for the entry page.

A stage-2 (details) exchange links to the stage-1 (hit / no-hit) exchange it cites; a stage-1
exchange lists the stage-2 exchanges that cite it, and which members answered "hit". The links
are found in the log: the cited request id through the store's request-id index, and the
stage-2 requests among the request legs of the same case and action that follow stage 1
(bounded, newest last).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import EntryKind, RequestLeg, decode_entry
from fedgate.disclosure import HIT, NO_HIT, stage_name
from fedgate.envelope import decode_request
from fedgate.errors import FedgateError
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.reader import LogView
from gateway.audit.store import SearchQuery

__all__ = ["StageLink", "StagedView", "staged_view"]

_MAX_FOLLOWERS: Final = 50
"""Request legs of the same case and action looked at for the stage-2 requests of a stage 1."""


@dataclass(frozen=True, slots=True)
class StageLink:
    """Another exchange of the same staged disclosure: its request id and request leg index
    (-1 when the cited request is not in the log)."""

    request_id: str
    index: int
    decision: str = ""


@dataclass(frozen=True, slots=True)
class StagedView:
    """``stage`` is ``hits`` or ``details``. For hits: the members that answered hit and no
    hit, and the stage-2 exchanges citing it; for details: the stage 1 it cites."""

    stage: str
    cites: StageLink | None = None
    followed_by: tuple[StageLink, ...] = ()
    hit: tuple[str, ...] = ()
    no_hit: tuple[str, ...] = ()


def _request_of(leg: RequestLeg) -> request_pb2.Request | None:
    try:
        return decode_request(envelope_pb2.SignedEnvelope.FromString(leg.envelope).body)
    except (ProtobufDecodeError, FedgateError):
        return None


async def _request_leg_index(log: LogView, request_id: str) -> tuple[int, str]:
    rows = await log.search(SearchQuery(request_id=request_id, leg=EntryKind.REQUEST, limit=1))
    return (rows[0].index, rows[0].columns[8]) if rows else (-1, "")


async def staged_view(log: LogView, request_index: int) -> StagedView | None:
    """The staged-disclosure links of the exchange whose request leg is at ``request_index``;
    ``None`` when it is not part of a staged disclosure. Raises ``AuditUnavailable``."""
    if not 0 <= request_index < log.size:
        return None
    leg = decode_entry(await log.get_entry(request_index))
    if not isinstance(leg, RequestLeg):
        return None
    request = _request_of(leg)
    if request is None or not request.HasField("disclosure"):
        return None
    stage = stage_name(request.disclosure.stage)
    if stage == "details":
        cited = request.disclosure.hits_request_id
        index, decision = await _request_leg_index(log, cited)
        return StagedView(stage, cites=StageLink(cited, index, decision))
    answers = await log.search(
        SearchQuery(request_id=request.request_id, leg=EntryKind.RESPONSE, limit=_MAX_FOLLOWERS)
    )
    # A reconciled answer's detail is prefixed; the hit is what the detail ends with.
    said = {r.columns[7]: r.columns[9] for r in answers}
    followers = await log.search(
        SearchQuery(
            case_number=request.case.case_number,
            action=request.WhichOneof("action") or "",
            leg=EntryKind.REQUEST,
            after_index=request_index,
            limit=_MAX_FOLLOWERS,
        )
    )
    links: list[StageLink] = []
    for row in followers:
        follower = decode_entry(await log.get_entry(row.index))
        if not isinstance(follower, RequestLeg):
            continue
        second = _request_of(follower)
        if second is not None and second.disclosure.hits_request_id == request.request_id:
            links.append(StageLink(second.request_id, row.index, row.columns[8]))
    return StagedView(
        stage,
        followed_by=tuple(links),
        hit=tuple(sorted(m for m, d in said.items() if d.endswith(HIT))),
        no_hit=tuple(sorted(m for m, d in said.items() if d.endswith(NO_HIT))),
    )
