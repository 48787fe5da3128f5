"""Who is in the federation: member kinds, member specs and the default development federation.

A ``MemberSpec`` is what an administrator asks for when issuing a member (``fedgate pki issue``);
the signed member registry (``fedgate.registry``) is what every process trusts afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fedgate.errors import InvalidArgument
from fedgate.types import MemberId

__all__ = [
    "DEFAULT_MEMBERS",
    "DEFAULT_ROLES",
    "LOOPBACK_HOST",
    "MEMBER_URI_PREFIX",
    "MemberKind",
    "MemberSpec",
    "check_member_id",
    "member_server_name",
    "member_uri",
]

LOOPBACK_HOST = "127.0.0.1"
MEMBER_URI_PREFIX = "fedgate://member/"
"""A member's TLS certificate names it with the SAN URI ``fedgate://member/<id>``."""

# Dot-separated lowercase labels, each a valid DNS label: a member id names a directory
# (members/<id>/) and a TLS server name (<id>.member.fedgate.invalid), so nothing else is allowed.
_MEMBER_ID = re.compile(
    r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?(?:\.[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?)*"
)
_MAX_MEMBER_ID = 100


class MemberKind(StrEnum):
    POLICE = "police"
    BANK = "bank"
    CARRIER = "carrier"
    CENTRAL_BANK = "central_bank"
    AUDITOR = "auditor"
    GATEWAY = "gateway"
    TELECOM_REGULATOR = "telecom_regulator"
    CYBERSPACE_ADMIN = "cyberspace_admin"


DEFAULT_ROLES: Mapping[MemberKind, tuple[str, ...]] = {
    MemberKind.POLICE: ("police_investigator", "police_duty_officer"),
    MemberKind.BANK: ("bank_staff",),
    MemberKind.CARRIER: ("carrier_staff",),
    MemberKind.CENTRAL_BANK: ("central_bank_analyst", "witness"),
    MemberKind.AUDITOR: ("auditor", "witness"),
    MemberKind.GATEWAY: ("gateway",),
    MemberKind.TELECOM_REGULATOR: ("regulator_staff",),
    MemberKind.CYBERSPACE_ADMIN: ("regulator_staff",),
}
"""Roles a new member of each kind gets when the administrator names none."""


def check_member_id(value: str) -> MemberId:
    """Return ``value`` as a ``MemberId``; raises ``InvalidArgument`` unless it is well formed
    (dot-separated lowercase DNS labels such as ``bank.icbc``)."""
    if len(value) > _MAX_MEMBER_ID or _MEMBER_ID.fullmatch(value) is None:
        raise InvalidArgument(
            f"invalid member id {value!r}: use dot-separated lowercase labels of letters, digits "
            "and '-', such as 'bank.icbc'"
        )
    return MemberId(value)


def member_uri(member_id: MemberId) -> str:
    """The SAN URI naming a member in its TLS certificate: ``fedgate://member/<id>``."""
    return MEMBER_URI_PREFIX + member_id


def member_server_name(member_id: MemberId) -> str:
    """The TLS server name unique to a member, ``<id>.member.fedgate.invalid`` (a reserved
    name that never resolves): a client that expects this name talks to that member only."""
    return f"{member_id}.member.fedgate.invalid"


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member as the administrator describes it. Raises ``InvalidArgument`` when malformed."""

    id: MemberId
    name_zh: str
    name_en: str
    kind: MemberKind
    roles: tuple[str, ...]
    port: int
    parent: MemberId | None = None
    """The supervising police member (a city unit's provincial centre), or ``None``."""

    def __post_init__(self) -> None:
        check_member_id(self.id)
        if self.parent is not None:
            check_member_id(self.parent)
            if self.kind != MemberKind.POLICE or self.parent == self.id:
                raise InvalidArgument(
                    f"member {self.id}: only a police member has a parent, and not itself"
                )
        if not self.name_zh.strip() or not self.name_en.strip():
            raise InvalidArgument(f"member {self.id}: name_zh and name_en must not be empty")
        if not isinstance(self.kind, MemberKind):
            raise InvalidArgument(f"member {self.id}: kind {self.kind!r} is not a MemberKind")
        if not self.roles or any(not r or not r.isidentifier() for r in self.roles):
            raise InvalidArgument(
                f"member {self.id}: roles must be a non-empty list of identifiers, got {self.roles}"
            )
        if not 1 <= self.port <= 65535:
            raise InvalidArgument(f"member {self.id}: port {self.port} is not in 1..65535")

    @property
    def endpoint(self) -> str:
        """Where the member's server listens by default: ``127.0.0.1:<port>``."""
        return f"{LOOPBACK_HOST}:{self.port}"


def _spec(
    member_id: str,
    name_zh: str,
    name_en: str,
    kind: MemberKind,
    roles: tuple[str, ...],
    port: int,
    parent: str | None = None,
) -> MemberSpec:
    return MemberSpec(
        MemberId(member_id),
        name_zh,
        name_en,
        kind,
        roles,
        port,
        MemberId(parent) if parent is not None else None,
    )


_P, _B, _C = MemberKind.POLICE, MemberKind.BANK, MemberKind.CARRIER
_BANK, _CARRIER = DEFAULT_ROLES[_B], DEFAULT_ROLES[_C]

DEFAULT_MEMBERS: tuple[MemberSpec, ...] = (
    _spec("gateway", "反诈联邦网关", "fedgate gateway", MemberKind.GATEWAY, ("gateway",), 20051),
    _spec(
        "police.gd.afc",
        "广东省公安厅反诈中心",
        "Guangdong Provincial Anti-Fraud Centre",
        _P,
        ("police_investigator", "police_duty_officer", "centre_supervisor"),
        20052,
    ),
    _spec(
        "police.gz.unit",
        "广州市公安局反诈中心",
        "Guangzhou Municipal Anti-Fraud Unit",
        _P,
        ("police_investigator", "police_duty_officer"),
        20053,
        parent="police.gd.afc",
    ),
    _spec("bank.icbc", "中国工商银行", "Industrial and Commercial Bank of China", _B, _BANK, 20054),
    _spec("bank.ccb", "中国建设银行", "China Construction Bank", _B, _BANK, 20055),
    _spec("bank.abc", "中国农业银行", "Agricultural Bank of China", _B, _BANK, 20056),
    _spec("bank.gzrcb", "广州农村商业银行", "Guangzhou Rural Commercial Bank", _B, _BANK, 20057),
    _spec("carrier.cmcc", "中国移动", "China Mobile", _C, _CARRIER, 20058),
    _spec("carrier.cucc", "中国联通", "China Unicom", _C, _CARRIER, 20059),
    _spec("carrier.ctcc", "中国电信", "China Telecom", _C, _CARRIER, 20060),
    _spec(
        "pboc.gz",
        "中国人民银行广东省分行",
        "PBOC Guangdong Branch",
        MemberKind.CENTRAL_BANK,
        ("central_bank_analyst", "witness"),
        20061,
    ),
    _spec(
        "audit.office",
        "审计监督办公室",
        "Audit Office",
        MemberKind.AUDITOR,
        ("auditor", "witness"),
        20062,
    ),
    _spec(
        "regulator.gdca",
        "广东省通信管理局",
        "Guangdong Communications Administration (telecom regulator)",
        MemberKind.TELECOM_REGULATOR,
        ("regulator_staff",),
        20063,
    ),
    _spec(
        "regulator.gdcac",
        "广东省互联网信息办公室",
        "Guangdong Cyberspace Administration",
        MemberKind.CYBERSPACE_ADMIN,
        ("regulator_staff",),
        20064,
    ),
)
"""The development federation that ``fedgate pki init`` creates: one gateway, two police units,
four banks, three carriers, the central bank's provincial branch, an audit office, the telecom
regulator (通管局) and the cyberspace administration (网信办).

Ports 20051–20064 (consoles 1000 above): below Linux's ephemeral range (32768–60999), where any
outgoing connection may hold a port, so a restart never finds one taken by a stranger."""
