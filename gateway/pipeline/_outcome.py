"""A member's request read back from the audit log: what became of it (``GetOutcome``).

The log is the only record that must survive (STYLE.md 16), so the stored outcome is a view
of it: the request leg says whether the gateway refused or forwarded the request, the response
leg holds the agency's signed answer. An answer is countersigned again (Ed25519 is
deterministic: the same key gives the same bytes as on the day) and comes with a fresh receipt
against the log's latest checkpoint, so the caller verifies it exactly like a live answer.

Contract: the outcome MUST be given only to the member that sent the request; anyone else gets
``NotFound``, exactly as for an id the log does not hold, so that ids cannot be probed.
"""

from __future__ import annotations

from fedgate.audit_entry import RequestLeg, ResponseLeg, decode_entry
from fedgate.checkpoint import parse_checkpoint
from fedgate.envelope import Signer, countersign
from fedgate.errors import InvalidArgument, NotFound
from fedgate.note import parse_note
from fedgate.tlogproof import TlogProof
from fedgate.v1 import envelope_pb2, gateway_service_pb2
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery

__all__ = ["stored_outcome"]

_MAX_LEGS = 64
"""Legs read for one id: the request, its answer, and refused replays of the same id."""


async def stored_outcome(
    *, audit: AuditLog, signer: Signer, request_id: str, caller: str
) -> gateway_service_pb2.GetOutcomeResponse:
    """What the log holds for ``request_id`` sent by ``caller``; raises ``NotFound``."""
    if not 0 < len(request_id) <= 64:
        raise InvalidArgument("request_id must be 1 to 64 characters")
    rows = await audit.search(
        SearchQuery(request_id=request_id, visible_to=caller, limit=_MAX_LEGS)
    )
    requests: list[tuple[int, RequestLeg]] = []
    answers: dict[int, tuple[int, ResponseLeg]] = {}
    for row in rows:
        entry = decode_entry(await audit.open_entry(row.index))
        if isinstance(entry, RequestLeg) and entry.request_id == request_id:
            if entry.requesting_agency == caller:
                requests.append((row.index, entry))
        elif isinstance(entry, ResponseLeg) and entry.request_id == request_id:
            answers[entry.request_leaf_index] = (row.index, entry)
    if not requests:
        raise NotFound(f"no request {request_id} of {caller} in this gateway's log")
    # The request the gateway accepted, if any; otherwise its (first) refusal. A later leg with
    # the same id is a refused replay, which does not change what became of the request.
    index, leg = next(((i, r) for i, r in requests if r.decision != "refused"), requests[0])
    reply = gateway_service_pb2.GetOutcomeResponse(
        request_id=request_id, target_agency=leg.target_agency, action=leg.action
    )
    if leg.decision == "refused":
        reply.state = gateway_service_pb2.OUTCOME_STATE_REFUSED
        reply.refusal = leg.rule
        return reply
    answered = answers.get(index)
    if answered is None:
        reply.state = gateway_service_pb2.OUTCOME_STATE_PENDING
        return reply
    answer_index, answer = answered
    if not answer.response_envelope:
        reply.state = gateway_service_pb2.OUTCOME_STATE_NO_ANSWER
        reply.refusal = f"{answer.status}: {answer.detail}".rstrip(": ")
        return reply
    reply.state = gateway_service_pb2.OUTCOME_STATE_ANSWERED
    signed = envelope_pb2.SignedEnvelope.FromString(answer.response_envelope)
    reply.response.response.CopyFrom(signed)
    reply.response.countersignature.CopyFrom(countersign(signed, signer, leaf_index=answer_index))
    reply.response.receipt.CopyFrom(_receipt(audit, answer_index, request_leaf_index=index))
    return reply


def _receipt(audit: AuditLog, index: int, *, request_leaf_index: int) -> envelope_pb2.AuditReceipt:
    """A receipt for entry ``index`` against the latest checkpoint (which includes it)."""
    note = audit.latest_checkpoint()
    size = parse_checkpoint(parse_note(note).text).size
    proof = audit.inclusion_proof(index, size)
    return envelope_pb2.AuditReceipt(
        log_origin=audit.origin,
        request_leaf_index=request_leaf_index,
        leaf_index=index,
        tree_size=size,
        inclusion_proof=proof,
        checkpoint=note,
        tlog_proof=TlogProof(index=index, proof=tuple(proof), checkpoint_note=note).marshal(),
        leaf_hash=audit.leaf_hash(index),
    )
