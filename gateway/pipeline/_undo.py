"""Stage 6 for undos (releases, extensions, renewals, stops, restores): the cited order is found
in the audit log by its request id, and only its ordering unit or a member above may undo it.

The original is the request leg the gateway *allowed* for that request id (the store's
request-id index), with an ``ok`` response leg: an order that was refused, never answered or
refused by the agency was not executed and cannot be undone. The business-rule state
(``rules.sqlite``) is not consulted: the log is the record of what was ordered, by whom.

Contract:

- ``check_undo`` MUST raise ``RuleViolated`` (``RULE undo.cites_original_order: …``) when the
  cited order is not an executed order of the matching kind, target and account or number, and
  ``PolicyDenied`` (``RULE undo.by_ordering_unit_or_above: …``) when the sender is neither the
  ordering member nor above it. A log that cannot be read raises ``AuditUnavailable``.
"""

from __future__ import annotations

from fedgate.audit_entry import EntryKind, RequestLeg, decode_entry
from fedgate.envelope import decode_request
from fedgate.errors import AuditUnavailable, FedgateError, PolicyDenied, RuleViolated
from fedgate.orders import CITES_ORIGINAL, ORDERING_UNIT, UNDOES, undo_problem
from fedgate.registry import Registry
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.log import AuditLog
from gateway.audit.store import SearchQuery

__all__ = ["check_undo", "original_order"]

_MAX_LEGS = 64
"""Entries looked at for one request id: its request leg, refusals of copies, response legs."""


async def original_order(log: AuditLog, request_id: str) -> tuple[request_pb2.Request | None, str]:
    """The executed order logged under ``request_id`` and ``""``, or ``None`` and why not."""
    rows = await log.search(SearchQuery(request_id=request_id, limit=_MAX_LEGS))
    allowed = [
        r.index for r in rows if r.columns[0] == EntryKind.REQUEST and r.columns[8] == "allowed"
    ]
    if not allowed:
        return None, f"{request_id} is not an order the gateway allowed (not in the audit log)"
    executed = any(r.columns[0] == EntryKind.RESPONSE and r.columns[8] == "ok" for r in rows)
    if not executed:
        return None, f"{request_id} was not executed (no OK answer to it in the audit log)"
    try:
        leg = decode_entry(await log.open_entry(allowed[0]))
        if not isinstance(leg, RequestLeg):
            raise AuditUnavailable(f"entry {allowed[0]} is not a request leg")
        envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
        return decode_request(envelope.body), ""
    except FedgateError:
        raise
    except Exception as exc:  # an allowed request leg always decodes: the log is damaged
        raise AuditUnavailable(f"the request leg of {request_id} does not decode: {exc}") from exc


async def check_undo(
    log: AuditLog, registry: Registry, request: request_pb2.Request, action: str
) -> None:
    """Refuse an undo that does not cite an executed order its sender may undo (see above)."""
    if action not in UNDOES:
        return
    original, why_not = await original_order(log, request.original_request_id)
    if original is None:
        raise RuleViolated(f"RULE {CITES_ORIGINAL}: {why_not}")
    problem = undo_problem(request, original, registry)
    if problem is None:
        return
    if problem.rule == ORDERING_UNIT:
        raise PolicyDenied(f"RULE {ORDERING_UNIT}: {problem.message}")
    raise RuleViolated(f"RULE {problem.rule}: {problem.message}")
