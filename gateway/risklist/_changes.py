"""Who may change which risk list entry, and the change a request makes.

``check_lister`` runs at pipeline stage 6, after the Casbin policy allowed the action for the
member's kind; it decides on the value itself:

- police list anything, always for a case (``case.case_number`` required);
- a bank lists only accounts it issued (the card's BIN is the bank's, ``BANK_BINS``);
- a carrier lists only numbers in its own ranges (``CARRIER_PREFIXES``);
- the telecom regulator lists phone numbers of any carrier;
- the cyberspace administration lists domains, URLs, IP addresses and apps.

``build_change`` runs after the request leg is durable, against the list as it stands: an
extension or removal needs an entry in force, and only the member that listed it or a police
member may extend or remove it; an add of an entry already in force is refused (extend it).
Refusals there are signed answers (``ChangeRefused`` → REFUSED or NOT_FOUND), logged like any.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fedgate.errors import FedgateError, PolicyDenied
from fedgate.federation import MemberKind
from fedgate.registry import Member
from fedgate.risklist import CATEGORY_NAMES, DEFAULT_TTL, canonical_value, micros
from fedgate.v1 import common_pb2, request_pb2, risklist_pb2
from fedgate.validate import bank_of_card, carrier_of_mobile
from gateway.risklist._log import EntryKey

__all__ = ["RULE_IDS", "ChangeRefused", "build_change", "check_lister", "key_of"]

C = risklist_pb2
RULE_IDS = {
    "risk_list.police_case": "police list for a case: case.case_number is required",
    "risk_list.bank_own_accounts": "a bank lists accounts it issued, and only accounts",
    "risk_list.carrier_own_numbers": "a carrier lists numbers in its own ranges, and only numbers",
    "risk_list.telecom_regulator_numbers": "the telecom regulator lists phone numbers",
    "risk_list.cyberspace_internet": "the cyberspace administration lists domains, URLs, IP "
    "addresses and apps",
    "risk_list.member_kind": "only police, banks, carriers and the two regulators change the list",
}
_INTERNET = frozenset(
    {
        C.RISK_CATEGORY_DOMAIN,
        C.RISK_CATEGORY_URL,
        C.RISK_CATEGORY_IP_ADDRESS,
        C.RISK_CATEGORY_APP_PACKAGE,
    }
)


class ChangeRefused(FedgateError):
    """``build_change`` refused; ``status`` is the signed answer's status."""

    def __init__(self, message: str, *, status: request_pb2.ResponseStatus.ValueType) -> None:
        super().__init__(message)
        self.status = status


def _target(request: request_pb2.Request) -> risklist_pb2.RiskListAdd:
    action = request.WhichOneof("action")
    return getattr(request, action or "risk_list_add")  # type: ignore[no-any-return]


def key_of(request: request_pb2.Request) -> EntryKey:
    """(category, canonical value) named by a risk list request (validated already)."""
    a = _target(request)
    return a.category, canonical_value(a.category, a.value)


def _deny(rule: str, detail: str) -> PolicyDenied:
    return PolicyDenied(f"RULE {rule}: {detail}")


def check_lister(request: request_pb2.Request, member: Member) -> str:
    """Refuse (``PolicyDenied`` naming the rule) a risk list change ``member`` may not make;
    returns the rule id that allowed it."""
    category, value = key_of(request)
    what = CATEGORY_NAMES.get(category, "?")
    kind = member.kind
    if kind == MemberKind.POLICE:
        if not request.case.case_number:
            raise _deny("risk_list.police_case", "police list entries for a case: set the case")
        return "risk_list.police_case"
    if kind == MemberKind.BANK:
        if category != C.RISK_CATEGORY_BANK_ACCOUNT or bank_of_card(value) != member.id:
            raise _deny(
                "risk_list.bank_own_accounts",
                f"{member.id} may list only accounts it issued, not this {what}",
            )
        return "risk_list.bank_own_accounts"
    if kind == MemberKind.CARRIER:
        if category != C.RISK_CATEGORY_PHONE_NUMBER or carrier_of_mobile(value) != member.id:
            raise _deny(
                "risk_list.carrier_own_numbers",
                f"{member.id} may list only numbers of its own ranges, not this {what}",
            )
        return "risk_list.carrier_own_numbers"
    if kind == MemberKind.TELECOM_REGULATOR:
        if category != C.RISK_CATEGORY_PHONE_NUMBER:
            raise _deny("risk_list.telecom_regulator_numbers", f"not a phone number: a {what}")
        return "risk_list.telecom_regulator_numbers"
    if kind == MemberKind.CYBERSPACE_ADMIN:
        if category not in _INTERNET:
            raise _deny("risk_list.cyberspace_internet", f"not an internet identifier: a {what}")
        return "risk_list.cyberspace_internet"
    raise _deny("risk_list.member_kind", f"a {kind.value} member does not change the risk list")


def _legal_basis(request: request_pb2.Request) -> str:
    doc = request.legal_document
    kind = common_pb2.LegalDocumentKind.Name(doc.kind).removeprefix("LEGAL_DOCUMENT_KIND_")
    return f"{kind.lower()} {doc.number}".strip()


def build_change(
    request: request_pb2.Request,
    entries: dict[EntryKey, risklist_pb2.RiskListChange],
    *,
    now: datetime,
    request_hash: bytes,
) -> risklist_pb2.RiskListChange:
    """The change ``request`` makes to the list ``entries`` at ``now``; raises
    ``ChangeRefused``."""
    action = request.WhichOneof("action")
    a = _target(request)
    key = key_of(request)
    previous = entries.get(key)
    in_force = (
        previous is not None
        and previous.kind != C.RISK_CHANGE_KIND_REMOVE
        and micros(previous.entry.expires_at.ToDatetime(tzinfo=UTC)) > micros(now)
    )
    change = risklist_pb2.RiskListChange(
        reason=a.reason,
        request_id=request.request_id,
        request_hash=request_hash,
        requested_by=request.requesting_agency,
    )
    change.changed_at.FromDatetime(now)
    expires = (
        a.expires_at.ToDatetime(tzinfo=now.tzinfo)
        if action != "risk_list_remove" and a.HasField("expires_at")
        else now + DEFAULT_TTL
    )
    what = f"{CATEGORY_NAMES.get(key[0], '?')} entry"
    if action == "risk_list_add":
        if in_force:
            assert previous is not None
            raise ChangeRefused(
                f"the {what} is already listed by {previous.entry.issuing_agency}: extend it",
                status=request_pb2.RESPONSE_STATUS_REFUSED,
            )
        change.kind = C.RISK_CHANGE_KIND_ADD
        entry = change.entry
        entry.category = a.category
        entry.value = key[1]
        entry.reason = a.reason
        entry.case_number = request.case.case_number
        entry.legal_basis = _legal_basis(request)
        entry.issuing_agency = request.requesting_agency
        entry.officer_id = request.officer.id
        entry.added_at.FromDatetime(now)
        entry.expires_at.FromDatetime(expires)
        return change
    if not in_force:
        raise ChangeRefused(
            f"the {what} is not on the list (never listed, removed or lapsed)",
            status=request_pb2.RESPONSE_STATUS_NOT_FOUND,
        )
    assert previous is not None
    issuer = previous.entry.issuing_agency
    if request.requesting_agency != issuer and not _is_police(request):
        raise ChangeRefused(
            f"the {what} was listed by {issuer}: only it or the police may change it",
            status=request_pb2.RESPONSE_STATUS_REFUSED,
        )
    change.entry.CopyFrom(previous.entry)
    if action == "risk_list_extend":
        change.kind = C.RISK_CHANGE_KIND_EXTEND
        change.entry.expires_at.FromDatetime(expires)
    else:
        change.kind = C.RISK_CHANGE_KIND_REMOVE
    return change


def _is_police(request: request_pb2.Request) -> bool:
    return request.officer.role in (
        common_pb2.ROLE_POLICE_INVESTIGATOR,
        common_pb2.ROLE_POLICE_DUTY_OFFICER,
        common_pb2.ROLE_CENTRE_SUPERVISOR,
    )
