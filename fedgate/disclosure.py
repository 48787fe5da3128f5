"""Staged disclosure of wide personal-data queries: hit / no-hit first, details second.

A query about one person at many members (every account under an ID at every bank, the live
SIMs under an ID at every carrier) is asked in two stages (``docs/privacy.md``):

1. **hits** (``DISCLOSURE_STAGE_HITS``): a fan-out whose members answer only ``HitResult``,
   whether they hold anything about the subject;
2. **details** (``DISCLOSURE_STAGE_DETAILS``): the same action and subject, sent only to the
   members that answered "hit", citing the stage-1 request by id (``hits_request_id``) and a
   legal document; the gateway checks the citation in its audit log.

The policy decides which actions must go through the two stages: a direct wide query of an
action in ``HIT_ACTIONS`` is authorised as the policy action ``wide_action(action)``
(``accounts_by_id:wide``), which the shipped policy denies by an explicit line.

Contract:

- A node MUST answer a stage-1 request with ``hit_response`` (or a refusal), never the details.
- The gateway MUST record a checked stage-1 answer's response leg with the detail ``HIT`` or
  ``NO_HIT`` (``hit_detail``): the stage-2 check reads that, never the (possibly encrypted or
  unkept) response body.
"""

from __future__ import annotations

from typing import Final

from fedgate.v1 import request_pb2

__all__ = [
    "DETAILS",
    "HIT",
    "HITS",
    "HIT_ACTIONS",
    "NO_HIT",
    "WIDE_ACTIONS",
    "hit_detail",
    "hit_of",
    "hit_response",
    "hits_request_id",
    "is_details",
    "is_hits",
    "stage_name",
    "wide_action",
]

HITS: Final = request_pb2.DISCLOSURE_STAGE_HITS
DETAILS: Final = request_pb2.DISCLOSURE_STAGE_DETAILS

HIT_ACTIONS: Final = frozenset({"accounts_by_id", "sim_count"})
"""The queries a member can answer hit / no-hit: about a person (an ID number), asked wide."""

_WIDE_SUFFIX = ":wide"


def wide_action(action: str) -> str:
    """The policy action of a direct (unstaged) wide query: ``accounts_by_id:wide``."""
    return action + _WIDE_SUFFIX


WIDE_ACTIONS: Final = frozenset(wide_action(a) for a in HIT_ACTIONS)
"""The policy actions of direct wide queries (what the policy allows or denies)."""

HIT: Final = "stage 1: hit"
NO_HIT: Final = "stage 1: no hit"
"""The ``detail`` the gateway gives the response leg of a checked stage-1 answer."""

_STAGE_NAMES: Final[dict[int, str]] = {
    request_pb2.DISCLOSURE_STAGE_UNSPECIFIED: "direct",
    HITS: "hits",
    DETAILS: "details",
}


def is_hits(request: request_pb2.Request) -> bool:
    """Whether ``request`` is a stage-1 (hit / no-hit) request."""
    return request.disclosure.stage == HITS


def is_details(request: request_pb2.Request) -> bool:
    """Whether ``request`` is a stage-2 (details) request."""
    return request.disclosure.stage == DETAILS


def hits_request_id(request: request_pb2.Request) -> str:
    """The stage-1 request a stage-2 request cites ('' for any other request)."""
    return request.disclosure.hits_request_id if is_details(request) else ""


def stage_name(stage: int) -> str:
    """``direct``, ``hits`` or ``details``; ``unknown stage N`` otherwise."""
    return _STAGE_NAMES.get(stage, f"unknown stage {stage}")


def hit_response(hit: bool) -> request_pb2.Response:
    """A node's stage-1 answer: OK with a ``HitResult`` and nothing else."""
    return request_pb2.Response(
        status=request_pb2.RESPONSE_STATUS_OK, hit=request_pb2.HitResult(hit=hit)
    )


def hit_of(response: request_pb2.Response) -> bool | None:
    """Hit (True) or no hit (False) of a stage-1 answer; ``None`` when it carries no
    ``HitResult`` (a refusal, or a faulty answer)."""
    if response.WhichOneof("result") != "hit":
        return None
    return response.hit.hit


def hit_detail(hit: bool) -> str:
    """The response leg detail of a stage-1 answer (``HIT`` or ``NO_HIT``)."""
    return HIT if hit else NO_HIT
