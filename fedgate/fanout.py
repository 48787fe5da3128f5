"""Fan-out: one signed request addressed to a set of members.

A fan-out request leaves ``target_agency`` empty and names its members in ``target_set``: a
group (every bank, every carrier in good standing) or a list. The set is part of the signed
body, so nobody can widen it in transit. The gateway resolves it against the registry when
the request arrives; every agency node resolves it again and answers only if it is in it.
A fan-out about a person (``accounts_by_id``, ``sim_count``) is asked in the two stages of a
staged disclosure where the policy says so (``fedgate.disclosure``).

Contract:

- ``resolve_targets`` MUST refuse a request that names both a ``target_agency`` and a
  ``target_set``, a set naming both a group and members, an empty set, duplicates, more than
  ``MAX_FANOUT`` members, and an action that is not a query (orders are per account at one
  member, and the business rules count them per member): ``InvalidArgument`` naming the field.
- A node MUST answer a fan-out request only when ``addressed_to`` says it is in the set.
"""

from __future__ import annotations

from fedgate.actions import BANK_QUERIES, CARRIER_QUERIES, action_of
from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.federation import MemberKind
from fedgate.registry import Registry
from fedgate.types import MemberId
from fedgate.v1 import request_pb2

__all__ = ["FANOUT_ACTIONS", "MAX_FANOUT", "addressed_to", "is_fanout", "resolve_targets"]

MAX_FANOUT = 32
"""At most this many members in one listed target set."""

FANOUT_ACTIONS = (BANK_QUERIES | CARRIER_QUERIES) - {"aggregate_stats"}
"""Actions a fan-out may carry: the personal-data queries (never orders)."""

_GROUP_KIND = {
    request_pb2.TARGET_GROUP_ALL_BANKS: MemberKind.BANK,
    request_pb2.TARGET_GROUP_ALL_CARRIERS: MemberKind.CARRIER,
}


def is_fanout(request: request_pb2.Request) -> bool:
    """Whether the request is addressed to a target set rather than one member."""
    return request.HasField("target_set")


def _bad(field: str, why: str) -> InvalidArgument:
    return InvalidArgument.for_fields([FieldViolation(field, why)])


def resolve_targets(request: request_pb2.Request, registry: Registry) -> tuple[MemberId, ...]:
    """The members a fan-out request is addressed to, in registry order for a group and in
    the order listed otherwise. Raises ``InvalidArgument`` naming the field (see the module
    contract); a listed member that is unknown or revoked is refused by the caller's policy
    stage per member, not here."""
    if request.target_agency:
        raise _bad("target_agency", "must be empty when target_set names the members")
    if not request.HasField("target_set"):
        raise _bad("target_set", "required for a fan-out: a group or a list of members")
    action = action_of(request)
    if action not in FANOUT_ACTIONS:
        raise _bad(
            action or "action",
            f"a fan-out carries one of the queries {sorted(FANOUT_ACTIONS)}; send orders "
            "to one member at a time",
        )
    targets = request.target_set
    if targets.group != request_pb2.TARGET_GROUP_UNSPECIFIED:
        if targets.members:
            raise _bad("target_set.members", "must be empty when target_set.group is set")
        kind = _GROUP_KIND.get(targets.group)
        if kind is None:
            raise _bad("target_set.group", f"unknown group {targets.group}")
        found = tuple(m.id for m in registry.members_of_kind(kind))
        if not found:
            raise _bad("target_set.group", f"no {kind.value} member is in good standing")
        return found
    members = list(targets.members)
    if not 1 <= len(members) <= MAX_FANOUT:
        raise _bad("target_set.members", f"names 1 to {MAX_FANOUT} members, got {len(members)}")
    if len(set(members)) != len(members):
        raise _bad("target_set.members", "names a member twice")
    return tuple(MemberId(m) for m in members)


def addressed_to(request: request_pb2.Request, member: MemberId, registry: Registry) -> bool:
    """Whether ``member`` is the request's target, or one of its fan-out set."""
    if not is_fanout(request):
        return request.target_agency == member
    try:
        return member in resolve_targets(request, registry)
    except InvalidArgument:
        return False
