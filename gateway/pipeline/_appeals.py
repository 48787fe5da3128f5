"""Appeals in the pipeline: stage 6 checks a filing and a decision against the log, stage 9
answers both (the gateway's own signed ``AppealResult``, logged and countersigned).

Filing (``appeal``, from a bank or carrier to a police unit) — rule ids in the refusals:

- ``appeal.cites_own_restriction``: ``original_request_id`` is an executed stop-payment, freeze,
  suspension or block (``gateway.appeals.RESTRICTIONS``) that was sent to the filing agency, on
  the subject the appeal names;
- ``appeal.to_ordering_unit``: the appeal is addressed to the unit that gave the order;
- ``appeal.one_pending_per_order``: no other appeal against that order is pending.

Decision (``appeal_decision``, from police to the gateway):

- ``appeal_decision.cites_pending_appeal``: ``appeal_id`` is a filed appeal not yet decided;
- ``appeal_decision.by_ordering_unit_or_above`` (``PolicyDenied``): the sender gave the order or
  is above the unit that did;
- ``appeal_decision.lift_cites_release``: a LIFT cites an executed release or restore
  (``gateway.appeals.LIFTS``) of the appealed order, by its ``original_request_id``.

Contract: ``check_appeal`` MUST raise for every filing or decision that breaks a rule above,
naming it (``RULE <id>: …``); a log that cannot be read raises ``AuditUnavailable``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fedgate.errors import PolicyDenied, RuleViolated
from fedgate.logs import mask
from fedgate.orders import subject_of
from fedgate.registry import Registry
from fedgate.v1 import appeal_pb2, gateway_service_pb2, request_pb2
from gateway.appeals import LIFTS, RESTRICTIONS, AppealBook
from gateway.audit.log import AuditLog
from gateway.pipeline._exchange import Exchange, stage
from gateway.pipeline._own import OwnAnswers
from gateway.pipeline._undo import original_order

__all__ = ["Appeals", "check_appeal"]


def _rule(rule: str, message: str) -> RuleViolated:
    return RuleViolated(f"RULE {rule}: {message}")


async def _check_filing(log: AuditLog, book: AppealBook, request: request_pb2.Request) -> None:
    cited = request.original_request_id
    order, why_not = await original_order(log, cited)
    rule = "appeal.cites_own_restriction"
    if order is None:
        raise _rule(rule, why_not)
    kind = order.WhichOneof("action") or ""
    if kind not in RESTRICTIONS:
        raise _rule(
            rule, f"{cited} is a {kind}; an appeal cites a {' or '.join(sorted(RESTRICTIONS))}"
        )
    if order.target_agency != request.requesting_agency:
        raise _rule(
            rule,
            f"{kind} {cited} was sent to {order.target_agency}; only it files appeals against "
            f"it, not {request.requesting_agency}",
        )
    if subject_of(order) != request.appeal.subject:
        raise _rule(
            rule,
            f"{kind} {cited} is on {mask(subject_of(order))}, not {mask(request.appeal.subject)}",
        )
    if order.requesting_agency != request.target_agency:
        raise _rule(
            "appeal.to_ordering_unit",
            f"{kind} {cited} was ordered by {order.requesting_agency}: send the appeal there, "
            f"not to {request.target_agency}",
        )
    for appeal in await book.appeals():
        if appeal.order_request_id == cited and appeal.decision is None:
            raise _rule(
                "appeal.one_pending_per_order",
                f"appeal {appeal.appeal_id} against {cited} is still pending",
            )


async def _check_decision(
    log: AuditLog, book: AppealBook, registry: Registry, request: request_pb2.Request
) -> None:
    decision = request.appeal_decision
    appeal = await book.get(decision.appeal_id)
    rule = "appeal_decision.cites_pending_appeal"
    if appeal is None:
        raise _rule(rule, f"{decision.appeal_id} is not an appeal on record")
    if appeal.decision is not None:
        raise _rule(
            rule,
            f"appeal {appeal.appeal_id} was decided by {appeal.decision.requesting_agency} "
            f"({appeal_pb2.AppealState.Name(appeal.state).removeprefix('APPEAL_STATE_').lower()})",  # type: ignore[arg-type]
        )
    if not registry.is_same_or_above(request.requesting_agency, appeal.ordering_agency):
        raise PolicyDenied(
            f"RULE appeal_decision.by_ordering_unit_or_above: appeal {appeal.appeal_id} is "
            f"against an order of {appeal.ordering_agency}: only it or a member above it "
            f"decides, not {request.requesting_agency}"
        )
    if decision.outcome != appeal_pb2.APPEAL_OUTCOME_LIFT:
        return
    rule = "appeal_decision.lift_cites_release"
    lift, why_not = await original_order(log, decision.lift_request_id)
    if lift is None:
        raise _rule(rule, why_not)
    kind = appeal.order.WhichOneof("action") if appeal.order is not None else None
    expected = LIFTS.get(kind or "", "")
    if lift.WhichOneof("action") != expected:
        raise _rule(
            rule,
            f"{decision.lift_request_id} is a {lift.WhichOneof('action')}; lifting a {kind} "
            f"takes a {expected}",
        )
    if lift.original_request_id != appeal.order_request_id:
        raise _rule(
            rule,
            f"{expected} {decision.lift_request_id} cites {lift.original_request_id}, not the "
            f"appealed order {appeal.order_request_id}",
        )


async def check_appeal(
    log: AuditLog,
    book: AppealBook,
    registry: Registry,
    request: request_pb2.Request,
    action: str,
) -> None:
    """Refuse a filing or decision that breaks a rule of the module docstring."""
    if action == "appeal":
        await _check_filing(log, book, request)
    elif action == "appeal_decision":
        await _check_decision(log, book, registry, request)


class Appeals:
    """Answers filings and decisions: the gateway's own signed ``AppealResult``."""

    def __init__(self, own: OwnAnswers, book: AppealBook, now: Callable[[], datetime]) -> None:
        self._own = own
        self.book = book
        self._now = now

    async def answer(self, x: Exchange) -> gateway_service_pb2.SubmitResponse:
        """Put the filing or decision in ``x`` (its request leg durable) on record, answer it."""
        own, request = self._own, x.req()
        pending = own.pending(x)
        with stage(x, own.telemetry, "route"):
            now = self._now()
            result = appeal_pb2.AppealResult(reference=own.reference(x))
            if x.action == "appeal":
                result.appeal_id = request.request_id
                result.order_request_id = request.original_request_id
                result.ordering_agency = request.target_agency
                result.state = appeal_pb2.APPEAL_STATE_PENDING
                result.due_at.FromDatetime(self.book.due(now))
            else:
                decision = request.appeal_decision
                appeal = await self.book.get(decision.appeal_id)
                assert appeal is not None, "checked at stage 6"
                result.appeal_id = appeal.appeal_id
                result.order_request_id = appeal.order_request_id
                result.ordering_agency = appeal.ordering_agency
                result.due_at.FromDatetime(appeal.due_at)
                result.state = (
                    appeal_pb2.APPEAL_STATE_LIFTED
                    if decision.outcome == appeal_pb2.APPEAL_OUTCOME_LIFT
                    else appeal_pb2.APPEAL_STATE_UPHELD
                )
            answer = own.response(x, status=request_pb2.RESPONSE_STATUS_OK, appeal=result)
        return await own.finish(pending, answer)
