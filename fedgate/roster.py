"""A police member's signed officer roster: who may act for it, under which roles, and when.

``rosters/<member>.json`` in the federation directory is one JSON object::

    {"format": "fedgate-roster/v1", "key_id": "<member signing key id>",
     "payload": "<base64 of the payload bytes>", "signature": "<base64 Ed25519 signature>"}

The payload is canonical JSON (sorted keys, no spaces, UTF-8)::

    {"format": "fedgate-roster/v1", "member": "police.gz.unit", "serial": 3,
     "issued_at": "2026-12-01T08:00:00Z",
     "officers": [{"id": "440100123", "name": "王伟", "unit": "…",
                   "roles": ["police_investigator"],
                   "valid_from": "2026-01-01T00:00:00Z", "valid_to": "2027-01-01T00:00:00Z"}]}

The signature is the member's own Ed25519 signature, with a signing key the registry lists for
that member, valid at ``issued_at``, over ``b"fedgate/v1/roster\\n" + payload``.

Contract:

- Loading MUST verify the signature over the payload bytes exactly as stored, with a key the
  registry gives the member named in the payload (``Registry.signing_key``: not revoked, valid
  at ``issued_at``); an unverified payload is never parsed; the wrapper MUST be canonical.
- An officer id appears once; every officer has at least one role and ``valid_from < valid_to``.
- ``TrustHolder`` refuses a roster whose serial is lower than the one in force (rollback).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.errors import FedgateError, RegistryError, UnknownKey
from fedgate.federation import MemberKind
from fedgate.keys import key_id_of, public_key_from_raw, sign_bytes, verify_bytes
from fedgate.note import b64decode_strict
from fedgate.registry import Member, Registry, SigningKey, canonical_json
from fedgate.registry import _format_time as format_time
from fedgate.registry import _Reader as Reader
from fedgate.types import KeyId, MemberId

__all__ = [
    "ROSTERS_DIR",
    "ROSTER_DOMAIN",
    "ROSTER_FORMAT",
    "Officer",
    "Roster",
    "development_officers",
    "load_rosters",
    "officers_from_json",
    "roster_path",
    "sign_roster",
]

ROSTER_FORMAT = "fedgate-roster/v1"
ROSTER_DOMAIN = b"fedgate/v1/roster\n"
ROSTERS_DIR = "rosters"

_HINT = "ask the member to sign its roster again (`fedgate pki roster`)"


def roster_path(directory: Path, member_id: MemberId) -> Path:
    """``<federation>/rosters/<member>.json``."""
    return directory / ROSTERS_DIR / f"{member_id}.json"


@dataclass(frozen=True, slots=True)
class Officer:
    """One officer on a roster: badge number, name, unit, roles and validity window."""

    id: str
    name: str
    unit: str
    roles: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime

    def valid_at(self, at: datetime) -> bool:
        """Whether ``valid_from <= at < valid_to``."""
        return self.valid_from <= at < self.valid_to


@dataclass(frozen=True, slots=True)
class Roster:
    """A verified officer roster of one police member. Raises ``RegistryError`` at
    construction when inconsistent (duplicate officer, no roles, empty window, naive time)."""

    member: MemberId
    serial: int
    issued_at: datetime
    officers: tuple[Officer, ...]
    key_id: KeyId | None = field(default=None, compare=False)
    """The member's key that signed it (set by ``from_signed``)."""
    _by_id: dict[str, Officer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.serial < 1:
            raise RegistryError(f"roster of {self.member}: serial must be at least 1")
        if self.issued_at.tzinfo is None:
            raise RegistryError(f"roster of {self.member}: issued_at must be timezone-aware")
        by_id: dict[str, Officer] = {}
        for o in self.officers:
            if o.id in by_id:
                raise RegistryError(f"roster of {self.member} lists officer {o.id} twice")
            if not o.roles or any(not r.isidentifier() for r in o.roles):
                raise RegistryError(f"roster of {self.member}: officer {o.id} has no valid roles")
            if o.valid_from.tzinfo is None or o.valid_to.tzinfo is None:
                raise RegistryError(f"roster of {self.member}: officer {o.id} has naive times")
            if o.valid_from >= o.valid_to:
                raise RegistryError(f"roster of {self.member}: officer {o.id} is never valid")
            by_id[o.id] = o
        object.__setattr__(self, "_by_id", by_id)

    def officer(self, officer_id: str) -> Officer | None:
        """The officer with this badge number, or ``None``."""
        return self._by_id.get(officer_id)

    def to_payload(self) -> bytes:
        """The canonical JSON payload bytes the member signs."""
        return canonical_json(
            {
                "format": ROSTER_FORMAT,
                "member": self.member,
                "serial": self.serial,
                "issued_at": format_time(self.issued_at),
                "officers": [
                    {
                        "id": o.id,
                        "name": o.name,
                        "unit": o.unit,
                        "roles": list(o.roles),
                        "valid_from": format_time(o.valid_from),
                        "valid_to": format_time(o.valid_to),
                    }
                    for o in self.officers
                ],
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Roster:
        """Parse verified payload bytes; raises ``RegistryError`` when malformed."""
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"roster payload is not UTF-8 JSON: {exc}") from exc
        r = Reader(doc, "roster")
        if r.text("format") != ROSTER_FORMAT:
            raise RegistryError(f"roster payload format is not {ROSTER_FORMAT}")
        return cls(
            member=MemberId(r.text("member")),
            serial=r.integer("serial"),
            issued_at=r.time("issued_at"),
            officers=tuple(_officer_from_json(o) for o in r.items("officers")),
        )

    @classmethod
    def from_signed(cls, data: bytes, *, registry: Registry, source: str = "roster") -> Roster:
        """Verify and parse a roster file's bytes against the member's keys in ``registry``;
        raises ``RegistryError`` (or ``MemberRefused``/``KeyNotValid``/``UnknownKey``)."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{source} is not valid JSON ({exc}): {_HINT}") from exc
        if not isinstance(doc, dict) or set(doc) != {"format", "payload", "key_id", "signature"}:
            raise RegistryError(
                f"{source} must be an object with exactly the fields format, key_id, payload and "
                f"signature: {_HINT}"
            )
        if doc["format"] != ROSTER_FORMAT:
            raise RegistryError(f"{source} has format {doc['format']!r}, not {ROSTER_FORMAT}")
        if not all(isinstance(doc[k], str) for k in ("key_id", "payload", "signature")):
            raise RegistryError(f"{source}: key_id, payload and signature must be strings")
        try:
            payload = b64decode_strict(doc["payload"])
            signature = b64decode_strict(doc["signature"])
        except ValueError as exc:
            raise RegistryError(f"{source}: {exc}: {_HINT}") from exc
        key_id = KeyId(doc["key_id"])
        listed = _listed_key(registry, key_id)
        if listed is None:
            raise UnknownKey(f"{source} is signed with key {key_id!r}, not in the member registry")
        if not verify_bytes(
            public_key_from_raw(listed.public_key), signature, ROSTER_DOMAIN + payload
        ):
            raise RegistryError(f"{source} signature does not verify: {_HINT}")
        # Verified: now parse, and check the key was its member's, valid and not revoked.
        claimed = cls.from_payload(payload)
        owner, _ = registry.signing_key(key_id, at=claimed.issued_at)
        if owner.id != claimed.member:
            raise RegistryError(
                f"{source} is the roster of {claimed.member} but is signed by {owner.id}'s key"
            )
        if data != canonical_json(doc) + b"\n":
            raise RegistryError(f"{source} was edited outside fedgate: {_HINT}")
        return replace(claimed, key_id=KeyId(doc["key_id"]))

    @classmethod
    def carried_forward(cls, data: bytes, *, member: Member) -> Roster:
        """For the member re-signing its roster: the roster in ``data`` if one of ``member``'s
        listed keys signed it, revoked or not (a revoked key's roster is not trusted by anyone,
        but its officers and serial carry over to the roster signed with the new key)."""
        doc = json.loads(data.decode("utf-8"))
        payload = b64decode_strict(doc["payload"])
        signature = b64decode_strict(doc["signature"])
        for key in member.signing_keys:
            public = public_key_from_raw(key.public_key)
            if key.key_id == doc["key_id"] and verify_bytes(
                public, signature, ROSTER_DOMAIN + payload
            ):
                roster = cls.from_payload(payload)
                if roster.member == member.id:
                    return roster
        raise RegistryError(f"no key of {member.id} signed this roster")

    def still_valid(self, registry: Registry) -> bool:
        """Whether the key that signed this roster is still its member's, not revoked, and
        the member in good standing, in ``registry``."""
        if self.key_id is None:
            return False
        try:
            owner, _ = registry.signing_key(self.key_id, at=self.issued_at)
        except FedgateError:
            return False
        return owner.id == self.member


def sign_roster(roster: Roster, key: Ed25519PrivateKey) -> bytes:
    """The bytes of a roster file holding ``roster`` signed by the member's ``key``."""
    payload = roster.to_payload()
    return (
        canonical_json(
            {
                "format": ROSTER_FORMAT,
                "key_id": key_id_of(key),
                "payload": base64.b64encode(payload).decode("ascii"),
                "signature": base64.b64encode(sign_bytes(key, ROSTER_DOMAIN + payload)).decode(),
            }
        )
        + b"\n"
    )


def load_rosters(
    directory: Path, registry: Registry, *, members: Iterable[MemberId] | None = None
) -> tuple[dict[MemberId, Roster], dict[MemberId, str]]:
    """The verified rosters in ``<directory>/rosters/`` of the police members in good standing
    (or of ``members``), and, for each roster that is missing or does not verify, why."""
    wanted = (
        tuple(members)
        if members is not None
        else tuple(m.id for m in registry.members_of_kind(MemberKind.POLICE))
    )
    rosters: dict[MemberId, Roster] = {}
    problems: dict[MemberId, str] = {}
    for member_id in wanted:
        path = roster_path(directory, member_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems[member_id] = f"cannot read {path}: {exc.strerror or exc}"
            continue
        try:
            roster = Roster.from_signed(data, registry=registry, source=str(path))
        except FedgateError as exc:
            problems[member_id] = exc.message
            continue
        if roster.member != member_id:
            problems[member_id] = f"{path} is the roster of {roster.member}"
            continue
        rosters[member_id] = roster
    return rosters, problems


def officers_from_json(data: bytes, *, source: str = "officers") -> tuple[Officer, ...]:
    """Officers from a JSON list of objects with the fields of a roster's ``officers``
    (``id``, ``name``, ``unit``, ``roles``, ``valid_from``, ``valid_to`` as UTC ``…Z`` times);
    raises ``RegistryError`` naming what is wrong."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{source} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, list):
        raise RegistryError(f"{source} must be a JSON list of officers")
    return tuple(_officer_from_json(o) for o in doc)


def _listed_key(registry: Registry, key_id: KeyId) -> SigningKey | None:
    for member in registry.entries:
        for key in member.signing_keys:
            if key.key_id == key_id:
                return key
    return None


def _officer_from_json(value: object) -> Officer:
    r = Reader(value, "roster officer")
    officer_id = r.text("id")
    r = Reader(value, f"roster officer {officer_id}")
    return Officer(
        id=officer_id,
        name=r.text("name"),
        unit=r.text("unit"),
        roles=tuple(Reader.as_str(v, f"officer {officer_id} roles") for v in r.items("roles")),
        valid_from=r.time("valid_from"),
        valid_to=r.time("valid_to"),
    )


def development_officers(
    *, unit: str, supervisors: bool, valid_from: datetime, valid_to: datetime
) -> tuple[Officer, ...]:
    """The officers ``fedgate pki init`` puts on a development roster: the badge numbers the
    test suite, ``fedgate.testing``, the CLI defaults and the demo use: 440100100–440100299,
    440100500–440100799 and 440100999 as investigators and duty officers (440100500–440100799
    also as centre supervisors when the member has supervisors), 4401001100–4401001299 as
    investigators (second officers) and 440199999."""
    base = ("police_investigator", "police_duty_officer")
    officers: list[Officer] = []

    def add(badge: str, roles: Sequence[str], n: int) -> None:
        name = _SURNAMES[n % len(_SURNAMES)] + _GIVEN[(n // 7) % len(_GIVEN)]
        officers.append(Officer(badge, name, unit, tuple(roles), valid_from, valid_to))

    for n in (*range(100, 300), *range(500, 800), 999):
        boss = supervisors and 500 <= n < 800
        add(f"440100{n:03d}", (*base, "centre_supervisor") if boss else base, n)
    for n in range(1100, 1300):
        add(f"440100{n}", ("police_investigator",), n)
    add("440199999", base, 9)
    return tuple(officers)


_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "勇", "军", "杰", "涛", "明", "超")
