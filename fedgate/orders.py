"""Who may undo an order: the order an undo cites, and the police hierarchy above it.

An *undo* is a release, extension, renewal, stop or restore of an earlier order. It cites that
order by ``Request.original_request_id`` and is allowed only when

- the cited request is an order of the matching kind (``UNDOES``), for the same target agency
  and the same account or number (``subject_of``); and
- the member sending the undo gave the order, or is a member above it in the registry's police
  hierarchy (``Registry.is_same_or_above``): a city unit may not release the provincial
  centre's freeze, nor a neighbouring unit's; the provincial centre may release the city unit's.

The gateway applies this to the original's request leg found in its audit log; the agency node
applies it again to the requests it executed itself (defence in depth). Both share this module.

Contract:

- ``undo_problem`` MUST return a problem for every undo that breaks a rule above and ``None``
  only when all hold; the problem names its rule (``CITES_ORIGINAL`` or ``ORDERING_UNIT``).
- Only actions in ``UNDOES`` are undos; ``subject_of`` MUST name the one account or number an
  order is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fedgate.logs import mask
from fedgate.registry import Registry
from fedgate.v1 import request_pb2

__all__ = [
    "CITES_ORIGINAL",
    "ORDERING_UNIT",
    "UNDOES",
    "UndoProblem",
    "subject_of",
    "undo_problem",
]

UNDOES: Final[Mapping[str, frozenset[str]]] = {
    "stop_payment_release": frozenset({"stop_payment"}),
    "stop_payment_extend": frozenset({"stop_payment"}),
    "freeze_release": frozenset({"freeze"}),
    "freeze_renew": frozenset({"freeze"}),
    "monitor_stop": frozenset({"monitor_start"}),
    "number_restore": frozenset({"number_suspend", "number_block"}),
}
"""Each undo action and the order kinds it may cite."""

CITES_ORIGINAL: Final = "undo.cites_original_order"
"""Rule: the cited order exists, is of the matching kind, target and account or number."""
ORDERING_UNIT: Final = "undo.by_ordering_unit_or_above"
"""Rule: only the member that gave the order, or one above it, may undo it."""

_SUBJECT_FIELD: Final[Mapping[str, str]] = {
    **{
        a: "account_number"
        for a in (
            "stop_payment",
            "stop_payment_release",
            "stop_payment_extend",
            "freeze",
            "freeze_release",
            "freeze_renew",
            "monitor_start",
            "monitor_stop",
        )
    },
    **{a: "phone_number" for a in ("number_suspend", "number_block", "number_restore")},
}


@dataclass(frozen=True, slots=True)
class UndoProblem:
    """Why an undo is refused: ``rule`` is ``CITES_ORIGINAL`` or ``ORDERING_UNIT``."""

    rule: str
    message: str


def subject_of(request: request_pb2.Request) -> str:
    """The account or phone number an order (or undo) is on; ``""`` for other actions."""
    action = request.WhichOneof("action")
    field = _SUBJECT_FIELD.get(action or "")
    if action is None or field is None:
        return ""
    value: str = getattr(getattr(request, action), field)
    return value


def undo_problem(
    undo: request_pb2.Request, original: request_pb2.Request | None, registry: Registry
) -> UndoProblem | None:
    """Why ``undo`` may not undo ``original`` (``None``: the order it cites was not found),
    or ``None`` when it may. ``undo`` is a validated request of an action in ``UNDOES``."""
    action = undo.WhichOneof("action") or ""
    cited = undo.original_request_id
    kinds = UNDOES.get(action)
    if kinds is None:
        raise ValueError(f"{action!r} is not an undo action")
    if original is None:
        return UndoProblem(CITES_ORIGINAL, f"{cited} is not an order known here")
    kind = original.WhichOneof("action") or ""
    if kind not in kinds:
        return UndoProblem(
            CITES_ORIGINAL,
            f"{cited} is a {kind or 'request without action'}; {action} cites "
            + " or ".join(sorted(kinds)),
        )
    if original.target_agency != undo.target_agency:
        return UndoProblem(
            CITES_ORIGINAL,
            f"{kind} {cited} was sent to {original.target_agency}, not {undo.target_agency}",
        )
    if subject_of(original) != subject_of(undo):
        return UndoProblem(
            CITES_ORIGINAL,
            f"{kind} {cited} is on {mask(subject_of(original))}, not {mask(subject_of(undo))}",
        )
    ordering = original.requesting_agency
    if not registry.is_same_or_above(undo.requesting_agency, ordering):
        return UndoProblem(
            ORDERING_UNIT,
            f"{kind} {cited} was ordered by {ordering}: only {ordering} or a member above it "
            f"({', '.join(registry.ancestors(ordering)) or 'none'}) may {action.replace('_', ' ')} "
            f"it, not {undo.requesting_agency}",
        )
    return None
