"""Staged disclosure for an officer: both stages of a wide personal-data query, in one call.

    first = client.new_request(
        action=bank_pb2.AccountsByIdQuery(id_number=id_number),
        target="",
        targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_BANKS),
        disclosure=request_pb2.Disclosure(stage=request_pb2.DISCLOSURE_STAGE_HITS),
        officer=..., case=..., legal_document=..., purpose=...,
    )
    staged = await run_staged(client, first)
    staged.hit_members          # the members that answered "hit"
    staged.details              # their verified answers with the details

Stage 1 goes to every member of the request's set and asks hit / no hit; stage 2 repeats the
same action, case, officer and (unless another is given) legal document, addressed only to
the members that answered "hit", citing stage 1 by its request id. Every answer of both stages
is verified as for ``FedgateClient.fan_out``; the rules are in ``fedgate.disclosure``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.actions import action_of
from fedgate.client import FanOutItem, FedgateClient
from fedgate.disclosure import DETAILS, hit_of, is_hits
from fedgate.errors import FedgateError, InvalidArgument
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2

__all__ = ["StagedResult", "details_request", "hit_members", "run_staged"]


@dataclass(frozen=True, slots=True)
class StagedResult:
    """Both stages: the stage-1 request and its items, then (when a member hit) the stage-2
    request and its items, or the gateway's refusal of stage 2 as a whole."""

    hits_request: request_pb2.Request
    hits: tuple[FanOutItem, ...]
    details_request: request_pb2.Request | None = None
    details: tuple[FanOutItem, ...] = ()
    details_error: FedgateError | None = None

    @property
    def hit_members(self) -> tuple[MemberId, ...]:
        return hit_members(self.hits)


def hit_members(items: tuple[FanOutItem, ...]) -> tuple[MemberId, ...]:
    """The members whose verified stage-1 answer says "hit", in the order they answered."""
    return tuple(
        item.target
        for item in items
        if item.answer is not None and hit_of(item.answer.response) is True
    )


def details_request(
    client: FedgateClient,
    first: request_pb2.Request,
    members: tuple[MemberId, ...],
    *,
    legal_document: common_pb2.LegalDocument | None = None,
) -> request_pb2.Request:
    """The stage-2 request of ``first``: the same action, officer and case, addressed to
    ``members`` and citing ``first``; raises ``InvalidArgument`` if ``first`` is not a stage-1
    request or ``members`` is empty."""
    if not is_hits(first):
        raise InvalidArgument("stage 2 follows a stage-1 (DISCLOSURE_STAGE_HITS) request")
    if not members:
        raise InvalidArgument("stage 2 needs at least one member that answered hit")
    action = action_of(first)
    remaining = first.answer_deadline.ToDatetime() - first.issued_at.ToDatetime()
    return client.new_request(
        action=getattr(first, action),
        action_name=action,
        officer=first.officer,
        second_officer=first.second_officer if first.HasField("second_officer") else None,
        target="",
        targets=request_pb2.TargetSet(members=members),
        case=first.case,
        legal_document=legal_document if legal_document is not None else first.legal_document,
        purpose=first.purpose,
        urgency=first.urgency,
        deadline=remaining,
        disclosure=request_pb2.Disclosure(stage=DETAILS, hits_request_id=first.request_id),
    )


async def run_staged(
    client: FedgateClient,
    first: request_pb2.Request,
    *,
    timeout: float = 15.0,
    legal_document: common_pb2.LegalDocument | None = None,
) -> StagedResult:
    """Run stage 1 (``first``), then stage 2 to the members that hit. Raises ``FedgateError``
    when the gateway refuses stage 1 as a whole; a refusal of stage 2 as a whole is kept in
    ``details_error`` beside the stage-1 answers."""
    hits = tuple([item async for item in client.fan_out(first, timeout=timeout)])
    members = hit_members(hits)
    if not members:
        return StagedResult(hits_request=first, hits=hits)
    second = details_request(client, first, members, legal_document=legal_document)
    try:
        details = tuple([item async for item in client.fan_out(second, timeout=timeout)])
    except FedgateError as error:
        return StagedResult(
            hits_request=first, hits=hits, details_request=second, details_error=error
        )
    return StagedResult(hits_request=first, hits=hits, details_request=second, details=details)
