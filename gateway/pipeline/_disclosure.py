"""Stage 6 for staged disclosure (``fedgate.disclosure``): which wide queries must be staged,
and whether a details request cites a stage-1 hit.

- ``check_wide``: a fan-out of an action in ``HIT_ACTIONS`` that is not staged is a direct wide
  query, authorised per member as the policy action ``<action>:wide``. The shipped policy denies
  it by an explicit line, so the refusal names that line.
- ``check_details``: a stage-2 request's ``hits_request_id`` is looked up in the audit log (the
  store's request-id index, like ``_undo``): the request leg the gateway *allowed* under that
  id, and the response leg of the member now asked.

Contract:

- ``check_details`` MUST raise ``RuleViolated`` (``RULE disclosure.cites_stage_one: …``) when
  the cited request is not an allowed stage-1 request of the same action and subject, and
  ``RULE disclosure.cites_a_hit: …`` when the member asked did not answer it "hit" (no answer,
  no hit, a refusal, a faulty answer). It MUST raise ``PolicyDenied``
  (``RULE disclosure.same_member_and_case: …``) when another member, or another case, asked
  stage 1. A log that cannot be read raises ``AuditUnavailable``.
- The hit is read from the response leg's detail (``fedgate.disclosure.HIT``, written by the
  gateway from a checked answer), never from a response body.
"""

from __future__ import annotations

from fedgate.actions import action_of
from fedgate.audit_entry import EntryKind, RequestLeg, decode_entry
from fedgate.disclosure import HIT, hits_request_id, is_details, wide_action
from fedgate.envelope import decode_request
from fedgate.errors import AuditUnavailable, FedgateError, PolicyDenied, RuleViolated
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery
from gateway.pipeline._audit_legs import RECONCILED
from gateway.policy import Decision, PolicyDecider, PolicyRequest

__all__ = [
    "CITES_A_HIT",
    "CITES_STAGE_ONE",
    "SAME_MEMBER_AND_CASE",
    "check_details",
    "check_wide",
    "stage_one",
]

CITES_STAGE_ONE = "disclosure.cites_stage_one"
CITES_A_HIT = "disclosure.cites_a_hit"
SAME_MEMBER_AND_CASE = "disclosure.same_member_and_case"

_MAX_ANSWERS = 16
"""Response legs looked at for one member and one stage-1 request (its answer, a reconciled
copy, a timeout)."""


def check_wide(decider: PolicyDecider, asked: PolicyRequest) -> Decision:
    """The policy decision for ``asked`` as a direct wide query (``<action>:wide``); raises
    ``PolicyDenied`` naming the rule (and the way to ask) when it is not allowed."""
    wide = PolicyRequest(
        role=asked.role,
        member=asked.member,
        member_kind=asked.member_kind,
        action=wide_action(asked.action),
        target=asked.target,
        target_kind=asked.target_kind,
    )
    decision = decider.decide(wide)
    if not decision.allowed:
        raise PolicyDenied(
            f"{asked.action} asked of several members at once must go through staged "
            f"disclosure (stage 1 hits, then details from the members that hit): "
            f"{wide.action} at {asked.target}: {decision.explanation}"
        )
    return decision


async def stage_one(log: AuditLog, request_id: str) -> request_pb2.Request | None:
    """The stage-1 request the gateway allowed under ``request_id``, or ``None`` (no allowed
    request leg under that id, or one that is not a stage-1 request)."""
    rows = await log.search(
        SearchQuery(request_id=request_id, leg=EntryKind.REQUEST, outcome="allowed", limit=1)
    )
    if not rows:
        return None
    try:
        leg = decode_entry(await log.get_entry(rows[0].index))
        if not isinstance(leg, RequestLeg):
            raise AuditUnavailable(f"entry {rows[0].index} is not a request leg")
        envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
        first = decode_request(envelope.body)
    except FedgateError:
        raise
    except Exception as exc:  # an allowed request leg always decodes: the log is damaged
        raise AuditUnavailable(f"the request leg of {request_id} does not decode: {exc}") from exc
    return first if first.disclosure.stage == request_pb2.DISCLOSURE_STAGE_HITS else None


async def check_details(log: AuditLog, request: request_pb2.Request, action: str) -> None:
    """Refuse a stage-2 request (addressed to one member) that does not cite a stage-1 hit of
    that member for the same requesting member, case, action and subject (see above)."""
    if not is_details(request):
        return
    cited = hits_request_id(request)
    first = await stage_one(log, cited)
    if first is None:
        raise RuleViolated(
            f"RULE {CITES_STAGE_ONE}: {cited} is not a stage-1 (hits) request the gateway allowed"
        )
    if (first.requesting_agency, first.case.case_number) != (
        request.requesting_agency,
        request.case.case_number,
    ):
        raise PolicyDenied(
            f"RULE {SAME_MEMBER_AND_CASE}: stage 1 {cited} was asked by "
            f"{first.requesting_agency} in case {first.case.case_number}, not by "
            f"{request.requesting_agency} in case {request.case.case_number}"
        )
    first_action = action_of(first)
    if first_action != action or getattr(first, first_action) != getattr(request, action):
        what = "about another subject" if first_action == action else "another action"
        raise RuleViolated(
            f"RULE {CITES_STAGE_ONE}: stage 1 {cited} asked {first_action} {what}: stage 2 "
            f"repeats its action and subject ({action} here)"
        )
    target = request.target_agency
    answers = await log.search(
        SearchQuery(request_id=cited, leg=EntryKind.RESPONSE, target=target, limit=_MAX_ANSWERS)
    )
    if any(r.columns[8] == "ok" and r.columns[9] in (HIT, RECONCILED + HIT) for r in answers):
        return
    said = "; ".join(sorted({f"{r.columns[8]} ({r.columns[9]})" for r in answers}))
    raise RuleViolated(
        f"RULE {CITES_A_HIT}: {target} did not answer hit to stage 1 {cited}"
        + (f": it answered {said}" if said else ": it was not asked or gave no answer")
    )
