"""Stage 6 for refunds (资金返还): the freeze a refund draws on, found in the audit log.

A refund cites the freeze in force in ``original_request_id``. The log holds that freeze's
request leg (``_undo.original_order``: allowed, with an ``ok`` answer), so the gateway knows
what it froze and who froze it; the business-rule state (``gateway.rules``, rule
``refund.cites_freeze_in_force`` and the loss limits) knows whether it is still in force and how
much was refunded already.

Contract:

- ``check_refund`` MUST refuse (``RuleViolated``, ``RULE refund.cites_freeze_in_force: …``) a
  refund whose cited request is not an executed freeze on the same account at the same bank in
  the same case and currency; (``PolicyDenied``, ``RULE refund.by_ordering_unit_or_above: …``)
  one sent by a member that neither gave the freeze nor is above the one that did; and
  (``RuleViolated``, ``RULE refund.max_frozen_amount: …``) one that, with the refunds already
  executed from a fixed-amount freeze, would take more than it froze. A receive-only freeze
  holds the whole balance, which only the bank knows: the bank refuses beyond it.
"""

from __future__ import annotations

from fedgate.errors import PolicyDenied, RuleViolated
from fedgate.logs import mask
from fedgate.registry import Registry
from fedgate.render import format_money
from fedgate.v1 import bank_pb2, common_pb2, request_pb2
from gateway.audit.log import AuditLog
from gateway.pipeline._undo import original_order
from gateway.rules import BusinessRules

__all__ = ["check_refund"]

_CITES = "refund.cites_freeze_in_force"
_ORDERING_UNIT = "refund.by_ordering_unit_or_above"
_MAX_FROZEN = "refund.max_frozen_amount"


def _money(currency: str, minor: int) -> str:
    return format_money(common_pb2.Money(currency=currency, minor_units=minor))


async def check_refund(
    log: AuditLog,
    registry: Registry,
    rules: BusinessRules,
    request: request_pb2.Request,
    action: str,
) -> None:
    """Refuse a refund that does not draw on a freeze its sender may refund from (see above)."""
    if action != "refund":
        return
    order, cited = request.refund, request.original_request_id
    freeze, why_not = await original_order(log, cited)
    if freeze is None:
        raise RuleViolated(f"RULE {_CITES}: {why_not.replace('an order', 'a freeze')}")
    kind = freeze.WhichOneof("action")
    if kind != "freeze":
        raise RuleViolated(f"RULE {_CITES}: {cited} is a {kind}, not a freeze")
    frozen = freeze.freeze
    if (freeze.target_agency, frozen.account_number) != (
        request.target_agency,
        order.account_number,
    ):
        raise RuleViolated(
            f"RULE {_CITES}: freeze {cited} is on account {mask(frozen.account_number)} at "
            f"{freeze.target_agency}, not {mask(order.account_number)} at {request.target_agency}"
        )
    if freeze.case.case_number != request.case.case_number:
        raise RuleViolated(
            f"RULE {_CITES}: freeze {cited} is in case {freeze.case.case_number}, "
            f"not {request.case.case_number}"
        )
    if not registry.is_same_or_above(request.requesting_agency, freeze.requesting_agency):
        raise PolicyDenied(
            f"RULE {_ORDERING_UNIT}: freeze {cited} was ordered by {freeze.requesting_agency}: "
            f"only it or a member above it may order a refund from it, not "
            f"{request.requesting_agency}"
        )
    if frozen.method != bank_pb2.FREEZE_METHOD_FIXED_AMOUNT:
        return
    held = frozen.amount
    if held.currency != order.amount.currency:
        raise RuleViolated(
            f"RULE {_CITES}: freeze {cited} froze {held.currency}, not {order.amount.currency}"
        )
    refunded = rules.refunded_from(cited)
    if refunded + order.amount.minor_units > held.minor_units:
        raise RuleViolated(
            f"RULE {_MAX_FROZEN}: {_money(order.amount.currency, order.amount.minor_units)} "
            f"would exceed the {_money(held.currency, held.minor_units)} freeze {cited} froze: "
            f"{_money(held.currency, refunded)} already refunded, at most "
            f"{_money(held.currency, max(0, held.minor_units - refunded))} remains"
        )
