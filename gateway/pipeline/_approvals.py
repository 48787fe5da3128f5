"""Supervisors' approvals: their own logged exchange, and the check of an order that cites one.

An approval (action ``approval``, target the gateway) went through stages 1–8 like any request:
its officer is on the member's roster with the role ``centre_supervisor`` (the policy allows
``approval`` to that role only). At stage 9 the gateway answers it itself: a signed
``ApprovalResult``, logged as the response leg and countersigned (``Approvals.grant``).

An order that needs approval (``BusinessRules.approval_needed``: bulk freezes) cites it in
``approval_request_id``; ``check_approval`` finds the approval's request leg in the audit log.

Contract:

- ``check_approval`` MUST refuse (``RuleViolated``, rule ``freeze.bulk_requires_approval``)
  an order that cites no approval, or one that is not an executed ``approval`` exchange, is
  for another case, does not cover the order (action, count, amount), has expired, was given
  by the ordering officer, or by a member that is neither the ordering member nor above it.
  The self-asserted ``FreezeOrder.approval`` is never consulted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fedgate.errors import RuleViolated
from fedgate.registry import Registry, _format_time
from fedgate.v1 import approval_pb2, bank_pb2, gateway_service_pb2, request_pb2
from gateway.audit.log import AuditLog
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._own import OwnAnswers
from gateway.pipeline._undo import original_order

__all__ = ["APPROVAL_RULE", "Approvals", "check_approval"]

APPROVAL_RULE = "freeze.bulk_requires_approval"


class Approvals:
    """Answers approvals: the gateway's own signed acknowledgement, logged and countersigned."""

    def __init__(self, own: OwnAnswers) -> None:
        self._own = own

    async def grant(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Put the approval in ``x`` (its request leg durable) on record and answer it."""
        own, request = self._own, x.req()
        pending = own.pending(x, target=own.gateway_id)
        with stage(x, own.telemetry, "route"):
            answer = own.response(
                x,
                status=request_pb2.RESPONSE_STATUS_OK,
                approval=approval_pb2.ApprovalResult(
                    approval_request_id=request.request_id,
                    expires_at=request.approval.expires_at,
                    reference=own.reference(x),
                ),
            )
        return await own.finish(pending, answer)


def _refuse(why: str, problem: str) -> RuleViolated:
    return RuleViolated(
        f"RULE {APPROVAL_RULE}: {why} need a centre supervisor's approval: {problem}"
    )


def _order_amount(request: request_pb2.Request, action: str) -> tuple[str, int] | None:
    if action == "freeze" and request.freeze.method == bank_pb2.FREEZE_METHOD_FIXED_AMOUNT:
        return request.freeze.amount.currency, request.freeze.amount.minor_units
    return None


def _order_count(request: request_pb2.Request, action: str) -> int:
    return max(1, request.freeze.bulk_count) if action == "freeze" else 1


async def check_approval(
    log: AuditLog,
    registry: Registry,
    request: request_pb2.Request,
    *,
    action: str,
    why: str,
    now: datetime,
) -> None:
    """Refuse an order needing approval (``why``) whose cited approval does not cover it."""
    cited = request.approval_request_id
    if not cited:
        raise _refuse(why, "cite the approval exchange in approval_request_id")
    approval, why_not = await original_order(log, cited)
    if approval is None:
        raise _refuse(why, why_not.replace("an order", "an approval"))
    if approval.WhichOneof("action") != "approval":
        raise _refuse(why, f"{cited} is a {approval.WhichOneof('action')}, not an approval")
    grant = approval.approval
    if approval.case.case_number != request.case.case_number:
        raise _refuse(
            why,
            f"approval {cited} is for case {approval.case.case_number}, "
            f"not {request.case.case_number}",
        )
    if action not in grant.actions:
        raise _refuse(why, f"approval {cited} covers {', '.join(grant.actions)}, not {action}")
    count = _order_count(request, action)
    if count > grant.max_count:
        raise _refuse(
            why, f"approval {cited} covers at most {grant.max_count} accounts, not {count}"
        )
    amount = _order_amount(request, action)
    if grant.HasField("max_amount") and amount is not None:
        ceiling = grant.max_amount
        if amount[0] != ceiling.currency or amount[1] > ceiling.minor_units:
            raise _refuse(
                why,
                f"approval {cited} covers at most {ceiling.minor_units} {ceiling.currency} "
                f"(minor units), not {amount[1]} {amount[0]}",
            )
    expires = grant.expires_at.ToDatetime(tzinfo=UTC)
    if expires <= now:
        raise _refuse(why, f"approval {cited} expired at {_format_time(expires)}")
    if approval.officer.id == request.officer.id:
        raise _refuse(why, f"officer {request.officer.id} cannot approve their own order")
    if not registry.is_same_or_above(approval.requesting_agency, request.requesting_agency):
        raise _refuse(
            why,
            f"approval {cited} was given by {approval.requesting_agency}, which is neither "
            f"{request.requesting_agency} nor a member above it",
        )
