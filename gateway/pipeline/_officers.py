"""Stage 6 for police members: the acting officers are on the member's signed roster.

A police member's requests name the acting officer (``officer``) and, for call records and
location, a second officer (``second_officer``). Both MUST be on the sending member's officer
roster (``fedgate.roster``), valid at the time the gateway received the request, and hold there
the role they act under: a badge number or role that only the request asserts is refused.

Contract:

- ``check_officers`` MUST raise ``PolicyDenied`` naming the officer and the member when the
  member has no roster in force, the officer (or second officer) is not on it, is outside the
  validity window, or does not hold the role on it. Members that are not police are not checked
  here (their staff are not officers).
"""

from __future__ import annotations

from datetime import datetime

from fedgate.actions import role_name
from fedgate.errors import PolicyDenied
from fedgate.federation import MemberKind
from fedgate.registry import Member, _format_time
from fedgate.roster import Officer, Roster
from fedgate.trust import Trust
from fedgate.v1 import common_pb2, request_pb2

__all__ = ["POLICE_ROLES", "check_officers", "rostered_officer"]

POLICE_ROLES = frozenset({"police_investigator", "police_duty_officer", "centre_supervisor"})
"""The roles a police officer may act under."""


def rostered_officer(
    roster: Roster | None, member: Member, person: common_pb2.Person, at: datetime, what: str
) -> Officer:
    """The officer ``person`` as ``roster`` lists it, if valid at ``at`` and holding the role
    ``person`` acts under; raises ``PolicyDenied`` naming ``what`` (e.g. ``officer``)."""
    if roster is None:
        raise PolicyDenied(
            f"{member.id} has no officer roster in force: its officers cannot be checked"
        )
    officer = roster.officer(person.id)
    if officer is None:
        raise PolicyDenied(
            f"{what} {person.id!r} is not on the officer roster of {member.id} "
            f"(roster serial {roster.serial})"
        )
    if not officer.valid_at(at):
        raise PolicyDenied(
            f"{what} {person.id} is on the roster of {member.id} from "
            f"{_format_time(officer.valid_from)} until {_format_time(officer.valid_to)}, "
            f"not at {_format_time(at)}"
        )
    role = role_name(person.role)
    if role not in officer.roles:
        raise PolicyDenied(
            f"{what} {person.id} does not hold the role {role} on the roster of {member.id} "
            f"(roles: {', '.join(officer.roles)})"
        )
    return officer


def check_officers(
    trust: Trust, member: Member, request: request_pb2.Request, *, at: datetime
) -> None:
    """Refuse a police member's request whose officers are not on its roster (see above)."""
    if member.kind != MemberKind.POLICE:
        return
    roster = trust.rosters.get(member.id)
    rostered_officer(roster, member, request.officer, at, "officer")
    if request.HasField("second_officer") and request.second_officer.id:
        second = request.second_officer
        if role_name(second.role) not in POLICE_ROLES:
            return  # the business rule names this refusal (second officer under a police role)
        rostered_officer(roster, member, second, at, "second_officer")
