"""The signed member registry: who is in the federation, with which keys and certificates.

``registry.json`` is one JSON object::

    {"format": "fedgate-registry/v1", "key_id": "<admin key id>",
     "payload": "<base64 of the payload bytes>", "signature": "<base64 Ed25519 signature>"}

The payload is canonical JSON (sorted keys, no spaces, UTF-8). The signature is the registry
administrator's Ed25519 signature over ``b"fedgate/v1/registry\\n" + payload``.

Contract:

- Loading MUST verify the signature over the payload bytes exactly as stored; nothing is
  re-serialized before verifying, and an unverified payload is never parsed.
- Loading MUST refuse the file when any byte of it was changed: the wrapper must be in its
  canonical form and base64 fields in their canonical encoding, so no edit passes unnoticed.
- A revoked member MUST be refused by ``member``, ``signing_key`` and ``check_certificate``;
  a revoked key, or a key used outside its validity window, MUST be refused by ``signing_key``.
- The police hierarchy: a member's optional ``parent`` (its supervising member, e.g. a city unit
  under the provincial centre) MUST name another listed police member, and parents MUST NOT form
  a cycle; ``is_same_or_above`` answers who may undo whose orders. A member without a parent
  is written without the field, so registries signed before the hierarchy still verify.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.errors import InvalidArgument, KeyNotValid, MemberRefused, RegistryError, UnknownKey
from fedgate.federation import MemberKind, check_member_id
from fedgate.keys import key_id_of, public_key_from_raw, sign_bytes, verify_bytes
from fedgate.note import b64decode_strict
from fedgate.types import KeyId, MemberId

__all__ = [
    "ADMIN_PUBLIC_KEY_FILE",
    "MAX_FUTURE_SKEW",
    "REGISTRY_DOMAIN",
    "REGISTRY_FILE",
    "REGISTRY_FORMAT",
    "WITNESS_ROLE",
    "Member",
    "Registry",
    "Revocation",
    "SigningKey",
    "WitnessPolicy",
    "canonical_json",
    "cert_fingerprint",
    "load_admin_public_key",
    "sign_registry",
]

REGISTRY_FORMAT = "fedgate-registry/v1"
REGISTRY_DOMAIN = b"fedgate/v1/registry\n"
REGISTRY_FILE = "registry.json"
ADMIN_PUBLIC_KEY_FILE = "trust/admin.pub"
MAX_FUTURE_SKEW = timedelta(minutes=10)
"""A registry issued further than this in the future of the local clock is refused."""

_RESIGN_HINT = "restore the file from the administrator or re-run `fedgate pki issue`"


def canonical_json(value: object) -> bytes:
    """Sorted keys, no spaces, UTF-8 (not ASCII-escaped)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@functools.lru_cache(maxsize=1024)
def cert_fingerprint(cert_der: bytes) -> str:
    """Lowercase hex SHA-256 of a certificate's DER bytes.

    Remembered for the last 1,024 certificates: the gateway asks twice per request (stage 1
    and the registry's check) for the few certificates of its callers, and the DER bytes come
    from one cached object per peer, whose hash Python keeps."""
    return hashlib.sha256(cert_der).hexdigest()


def _format_time(at: datetime) -> str:
    if at.tzinfo is None:
        raise InvalidArgument(f"naive datetime {at.isoformat()}: registry times must be aware")
    spec = "seconds" if at.microsecond == 0 else "microseconds"
    return at.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None:
        raise InvalidArgument(f"{what} must be a timezone-aware datetime, got {at.isoformat()}")
    return at


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 signing key of a member and the window in which it may sign."""

    key_id: KeyId
    public_key: bytes
    not_before: datetime
    not_after: datetime

    def valid_at(self, at: datetime) -> bool:
        """Whether ``not_before <= at < not_after``."""
        return self.not_before <= at < self.not_after


@dataclass(frozen=True, slots=True)
class Member:
    """One federation member as the registry lists it."""

    id: MemberId
    name_zh: str
    name_en: str
    kind: MemberKind
    roles: tuple[str, ...]
    endpoint: str
    cert_fingerprint: str
    signing_keys: tuple[SigningKey, ...]
    parent: MemberId | None = None
    """The supervising member (police only), e.g. the provincial centre of a city unit."""
    issuer_prefixes: tuple[str, ...] = ()
    """For a bank: the issuer prefixes (BINs) of its card numbers; empty otherwise."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revoked member (``subject`` is its member id) or key (``subject`` is its key id)."""

    subject: str
    kind: Literal["member", "key"]
    at: datetime
    reason: str


WITNESS_ROLE = "witness"


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """How many of which witnesses must cosign a checkpoint before it counts: ``quorum`` of
    ``witnesses`` (member ids holding the ``witness`` role). Bundles, receipts and log views
    cosigned by fewer are refused (``fedgate.evidence``, ``fedgate.client``)."""

    quorum: int
    witnesses: tuple[MemberId, ...]

    def __post_init__(self) -> None:
        if len(set(self.witnesses)) != len(self.witnesses):
            raise RegistryError(f"witness_policy lists a witness twice: {list(self.witnesses)}")
        if not 1 <= self.quorum <= len(self.witnesses):
            raise RegistryError(
                f"witness_policy quorum {self.quorum} is not between 1 and the "
                f"{len(self.witnesses)} witnesses it names"
            )

    def shortfall(self, cosigners: Iterable[str]) -> str | None:
        """Why a checkpoint cosigned by ``cosigners`` (names) is below the policy, or ``None``."""
        counted = sorted(set(cosigners) & set(self.witnesses))
        if len(counted) >= self.quorum:
            return None
        return (
            f"cosigned by {len(counted)} of the witnesses the policy names "
            f"({', '.join(counted) or 'none'}); the witness policy requires {self}"
        )

    def __str__(self) -> str:
        return f"{self.quorum} of {len(self.witnesses)} ({', '.join(self.witnesses)})"


@dataclass(frozen=True, slots=True)
class Registry:
    """A verified member registry. ``entries`` lists every member, revoked ones included;
    ``members()`` lists the members in good standing.

    Raises ``RegistryError`` at construction when the contents are inconsistent (duplicate ids,
    a key id that is not its key's, a revocation naming nobody, naive times).
    """

    serial: int
    issued_at: datetime
    entries: tuple[Member, ...]
    revocations: tuple[Revocation, ...] = ()
    witness_policy: WitnessPolicy | None = None
    """Which witnesses must cosign (``None`` in registries signed before it existed: see
    ``effective_witness_policy``)."""
    _members: dict[MemberId, Member] = field(init=False, repr=False, compare=False)
    _keys: dict[KeyId, tuple[Member, SigningKey]] = field(init=False, repr=False, compare=False)
    _revoked: dict[str, Revocation] = field(init=False, repr=False, compare=False)
    _parsed: dict[KeyId, Ed25519PublicKey] = field(init=False, repr=False, compare=False)
    """Each signing key parsed once, on first use: a new key object per call also missed the
    verifier cache of ``fedgate.keys`` (re-parsed and re-hashed on every verify)."""

    def __post_init__(self) -> None:
        if self.serial < 1:
            raise RegistryError(f"registry serial must be at least 1, got {self.serial}")
        if self.issued_at.tzinfo is None:
            raise RegistryError("registry issued_at must be timezone-aware")
        members: dict[MemberId, Member] = {}
        keys: dict[KeyId, tuple[Member, SigningKey]] = {}
        for m in self.entries:
            if m.id in members:
                raise RegistryError(f"member {m.id} is listed twice in the registry")
            members[m.id] = m
            for k in m.signing_keys:
                _check_key(m, k)
                if k.key_id in keys:
                    raise RegistryError(f"signing key {k.key_id} is listed twice in the registry")
                keys[k.key_id] = (m, k)
        _check_hierarchy(members)
        revoked: dict[str, Revocation] = {}
        for r in self.revocations:
            known = members if r.kind == "member" else keys
            if r.subject not in known:
                raise RegistryError(f"revocation of unknown {r.kind} {r.subject!r} in registry")
            if r.at.tzinfo is None:
                raise RegistryError(f"revocation of {r.subject} has a naive time")
            revoked.setdefault(r.subject, r)
        if self.witness_policy is not None:
            for w in self.witness_policy.witnesses:
                listed = members.get(w)
                if listed is None or WITNESS_ROLE not in listed.roles:
                    raise RegistryError(
                        f"witness_policy names {w!r}, which is not a member with the witness role"
                    )
        object.__setattr__(self, "_members", members)
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_revoked", revoked)
        object.__setattr__(self, "_parsed", {})

    # -- lookups ---------------------------------------------------------------------------

    def find(self, member_id: str) -> Member | None:
        """The listed member with this id, revoked or not, or ``None``."""
        return self._members.get(MemberId(member_id))

    def revocation_of(self, subject: str) -> Revocation | None:
        """The revocation of a member id or key id, or ``None`` when it is not revoked."""
        return self._revoked.get(subject)

    def member(self, member_id: str) -> Member:
        """The member in good standing; raises ``MemberRefused`` if unknown or revoked."""
        m = self._members.get(MemberId(member_id))
        if m is None:
            raise MemberRefused(
                f"{member_id!r} is not a member of the federation (registry serial {self.serial})"
            )
        revocation = self._revoked.get(m.id)
        if revocation is not None:
            raise MemberRefused(
                f"member {m.id} was revoked at {_format_time(revocation.at)}: {revocation.reason}"
            )
        return m

    def ancestors(self, member_id: str) -> tuple[MemberId, ...]:
        """The members above ``member_id`` (its parent, the parent's parent, …), nearest first;
        empty for an unknown member or one without a parent."""
        chain: list[MemberId] = []
        m = self._members.get(MemberId(member_id))
        while m is not None and m.parent is not None:
            chain.append(m.parent)
            m = self._members.get(m.parent)
        return tuple(chain)

    def is_same_or_above(self, member_id: str, of: str) -> bool:
        """Whether ``member_id`` is ``of`` or a member above it in the police hierarchy."""
        return member_id == of or MemberId(member_id) in self.ancestors(of)

    def members(self) -> tuple[Member, ...]:
        """Every member in good standing, in registry order."""
        return tuple(m for m in self.entries if m.id not in self._revoked)

    def members_of_kind(self, kind: MemberKind) -> tuple[Member, ...]:
        """The members in good standing of one kind, in registry order."""
        return tuple(m for m in self.members() if m.kind == kind)

    def bank_of_account(self, account_number: str) -> Member | None:
        """The bank in good standing whose issuer prefix (longest match) starts the account
        number, or ``None`` when no member issues it (the money left the federation)."""
        best: Member | None = None
        best_len = 0
        for m in self.members_of_kind(MemberKind.BANK):
            for prefix in m.issuer_prefixes:
                if len(prefix) > best_len and account_number.startswith(prefix):
                    best, best_len = m, len(prefix)
        return best

    def signing_key(self, key_id: KeyId, *, at: datetime) -> tuple[Member, Ed25519PublicKey]:
        """The member owning ``key_id`` and the key, if it may sign at ``at``.

        Raises ``UnknownKey`` if no member lists the key, ``MemberRefused`` if its member is
        revoked, ``KeyNotValid`` if the key is revoked or ``at`` is outside its window.
        """
        _aware(at, "at")
        found = self._keys.get(key_id)
        if found is None:
            raise UnknownKey(f"signing key {key_id!r} is not in the member registry")
        owner, key = found
        self.member(owner.id)
        revocation = self._revoked.get(key_id)
        if revocation is not None:
            raise KeyNotValid(
                f"signing key {key_id} of {owner.id} was revoked at "
                f"{_format_time(revocation.at)}: {revocation.reason}"
            )
        if not key.valid_at(at):
            raise KeyNotValid(
                f"signing key {key_id} of {owner.id} is valid from {_format_time(key.not_before)} "
                f"until {_format_time(key.not_after)}, not at {_format_time(at)}"
            )
        parsed = self._parsed.get(key_id)
        if parsed is None:  # a race parses twice, harmlessly: setdefault keeps one
            parsed = self._parsed.setdefault(key_id, public_key_from_raw(key.public_key))
        return owner, parsed

    def check_certificate(self, member_id: str, cert_der: bytes) -> Member:
        """The member, if it is in good standing and ``cert_der`` is the certificate the registry
        lists for it; raises ``MemberRefused`` otherwise (e.g. a certificate issued outside the
        registry, or an old certificate after re-issue)."""
        m = self.member(member_id)
        presented = cert_fingerprint(cert_der)
        if not hmac.compare_digest(presented, m.cert_fingerprint):
            raise MemberRefused(
                f"the TLS certificate presented for {m.id} (sha256 {presented[:16]}…) is not the "
                f"one in the member registry (sha256 {m.cert_fingerprint[:16]}…): use the "
                "certificate from the latest `fedgate pki issue` and reload the registry"
            )
        return m

    def effective_witness_policy(self) -> WitnessPolicy | None:
        """The registry's witness policy; for a registry without one, 1 of every member with the
        witness role; ``None`` only when the federation has no witness at all."""
        if self.witness_policy is not None:
            return self.witness_policy
        witnesses = tuple(m.id for m in self.entries if WITNESS_ROLE in m.roles)
        return WitnessPolicy(quorum=1, witnesses=witnesses) if witnesses else None

    # -- encoding --------------------------------------------------------------------------

    def to_payload(self) -> bytes:
        """The canonical JSON payload bytes that the administrator signs."""
        return canonical_json(
            {
                "format": REGISTRY_FORMAT,
                "serial": self.serial,
                "issued_at": _format_time(self.issued_at),
                "members": [_member_to_json(m) for m in self.entries],
                "revocations": [
                    {
                        "subject": r.subject,
                        "kind": r.kind,
                        "at": _format_time(r.at),
                        "reason": r.reason,
                    }
                    for r in self.revocations
                ],
                # Only when set: registries signed before the field existed keep their bytes.
                **(
                    {}
                    if self.witness_policy is None
                    else {
                        "witness_policy": {
                            "quorum": self.witness_policy.quorum,
                            "witnesses": list(self.witness_policy.witnesses),
                        }
                    }
                ),
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Registry:
        """Parse verified payload bytes; raises ``RegistryError`` when malformed."""
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"registry payload is not UTF-8 JSON: {exc}") from exc
        r = _Reader(doc, "payload")
        if r.text("format") != REGISTRY_FORMAT:
            raise RegistryError(f"registry payload format is not {REGISTRY_FORMAT}")
        try:
            return cls(
                serial=r.integer("serial"),
                issued_at=r.time("issued_at"),
                entries=tuple(_member_from_json(m) for m in r.items("members")),
                revocations=tuple(_revocation_from_json(v) for v in r.items("revocations")),
                witness_policy=_policy_from_json(doc.get("witness_policy")),
            )
        except InvalidArgument as exc:
            raise RegistryError(f"registry payload is malformed: {exc.message}") from exc

    @classmethod
    def from_signed(
        cls,
        data: bytes,
        *,
        admin_public_key: Ed25519PublicKey,
        now: datetime | None = None,
        source: str = REGISTRY_FILE,
    ) -> Registry:
        """Verify and parse the bytes of a ``registry.json``; raises ``RegistryError``.

        ``source`` names the file in messages. A registry issued more than ``MAX_FUTURE_SKEW``
        after ``now`` (default: the current time) is refused: one of the clocks is wrong.
        """
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{source} is not valid JSON ({exc}): {_RESIGN_HINT}") from exc
        if not isinstance(doc, dict) or set(doc) != {"format", "payload", "key_id", "signature"}:
            raise RegistryError(
                f"{source} must be an object with exactly the fields format, key_id, payload and "
                f"signature: {_RESIGN_HINT}"
            )
        if doc["format"] != REGISTRY_FORMAT:
            raise RegistryError(
                f"{source} has format {doc['format']!r}; this fedgate reads {REGISTRY_FORMAT}"
            )
        expected_key = key_id_of(admin_public_key)
        if doc["key_id"] != expected_key:
            raise RegistryError(
                f"{source} was signed by administrator key {doc['key_id']!r}, but the trusted "
                f"administrator key ({ADMIN_PUBLIC_KEY_FILE}) is {expected_key}: {_RESIGN_HINT}"
            )
        payload = _b64decode_strict(doc["payload"], f"{source} payload")
        signature = _b64decode_strict(doc["signature"], f"{source} signature")
        if not verify_bytes(admin_public_key, signature, REGISTRY_DOMAIN + payload):
            raise RegistryError(
                f"{source} signature does not verify with {ADMIN_PUBLIC_KEY_FILE}: the file was "
                f"altered or signed by another administrator; {_RESIGN_HINT}"
            )
        if data != _wrapper_bytes(doc):
            # The signed part is intact but the wrapper was edited: refuse anyway, so that a
            # changed byte anywhere in the file is noticed.
            raise RegistryError(f"{source} was edited outside fedgate: {_RESIGN_HINT}")
        registry = cls.from_payload(payload)
        now = datetime.now(UTC) if now is None else _aware(now, "now")
        if registry.issued_at > now + MAX_FUTURE_SKEW:
            raise RegistryError(
                f"{source} (serial {registry.serial}) was issued at "
                f"{_format_time(registry.issued_at)}, after this machine's clock "
                f"({_format_time(now)}): check the clocks of both machines"
            )
        return registry

    @classmethod
    def load(
        cls, path: Path, *, admin_public_key: Ed25519PublicKey, now: datetime | None = None
    ) -> Registry:
        """Read, verify and parse a ``registry.json``; raises ``RegistryError``."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RegistryError(
                f"cannot read the member registry {path}: {exc.strerror or exc}; create one with "
                "`fedgate pki init --dir DIR`"
            ) from exc
        return cls.from_signed(data, admin_public_key=admin_public_key, now=now, source=str(path))

    @classmethod
    def load_dir(cls, directory: Path, *, now: datetime | None = None) -> Registry:
        """Load ``<directory>/registry.json`` with ``<directory>/trust/admin.pub``."""
        admin = load_admin_public_key(directory / ADMIN_PUBLIC_KEY_FILE)
        return cls.load(directory / REGISTRY_FILE, admin_public_key=admin, now=now)


def sign_registry(registry: Registry, admin_key: Ed25519PrivateKey) -> bytes:
    """The bytes of a ``registry.json`` holding ``registry`` signed by ``admin_key``."""
    payload = registry.to_payload()
    return _wrapper_bytes(
        {
            "format": REGISTRY_FORMAT,
            "key_id": key_id_of(admin_key),
            "payload": base64.b64encode(payload).decode("ascii"),
            "signature": base64.b64encode(
                sign_bytes(admin_key, REGISTRY_DOMAIN + payload)
            ).decode(),
        }
    )


def load_admin_public_key(path: Path) -> Ed25519PublicKey:
    """The registry administrator's Ed25519 public key (PEM); raises ``RegistryError``."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise RegistryError(
            f"cannot read the administrator public key {path}: {exc.strerror or exc}; copy "
            "trust/ from the federation directory made by `fedgate pki init`"
        ) from exc
    except ValueError as exc:
        raise RegistryError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise RegistryError(f"{path} is not an Ed25519 public key")
    return key


# -- private helpers -------------------------------------------------------------------------


def _wrapper_bytes(doc: Mapping[str, object]) -> bytes:
    return canonical_json(doc) + b"\n"


def _b64decode_strict(value: object, what: str) -> bytes:
    """Decode base64, refusing anything but the one canonical encoding of the bytes."""
    if not isinstance(value, str):
        raise RegistryError(f"{what} is not a base64 string: {_RESIGN_HINT}")
    try:
        return b64decode_strict(value)
    except ValueError as exc:
        raise RegistryError(f"{what} is {exc}: {_RESIGN_HINT}") from exc


def _check_key(member: Member, key: SigningKey) -> None:
    if len(key.public_key) != 32:
        raise RegistryError(f"signing key {key.key_id} of {member.id} is not 32 bytes")
    if key.key_id != key_id_of(key.public_key):
        raise RegistryError(f"signing key id {key.key_id} of {member.id} does not match its key")
    if key.not_before.tzinfo is None or key.not_after.tzinfo is None:
        raise RegistryError(f"signing key {key.key_id} of {member.id} has naive validity times")
    if key.not_before >= key.not_after:
        raise RegistryError(f"signing key {key.key_id} of {member.id} has an empty validity window")


def _check_hierarchy(members: Mapping[MemberId, Member]) -> None:
    for m in members.values():
        if m.parent is None:
            continue
        parent = members.get(m.parent)
        if parent is None:
            raise RegistryError(f"member {m.id} names parent {m.parent!r}, which is not listed")
        if m.kind != MemberKind.POLICE or parent.kind != MemberKind.POLICE:
            raise RegistryError(
                f"member {m.id} names parent {m.parent}: only police members form a hierarchy"
            )
        seen = {m.id}
        up: Member | None = parent
        while up is not None:
            if up.id in seen:
                raise RegistryError(f"the parents of member {m.id} form a cycle")
            seen.add(up.id)
            up = members.get(up.parent) if up.parent is not None else None


def _member_to_json(m: Member) -> dict[str, object]:
    extra: dict[str, object] = {} if m.parent is None else {"parent": m.parent}
    return {
        **extra,
        "id": m.id,
        "name_zh": m.name_zh,
        "name_en": m.name_en,
        "kind": m.kind.value,
        "roles": list(m.roles),
        "endpoint": m.endpoint,
        "cert_fingerprint": m.cert_fingerprint,
        "signing_keys": [
            {
                "key_id": k.key_id,
                "public_key": base64.b64encode(k.public_key).decode("ascii"),
                "not_before": _format_time(k.not_before),
                "not_after": _format_time(k.not_after),
            }
            for k in m.signing_keys
        ],
        # Only when present, so that registries without prefixes keep their exact bytes.
        **({"issuer_prefixes": list(m.issuer_prefixes)} if m.issuer_prefixes else {}),
    }


def _member_from_json(value: object) -> Member:
    r = _Reader(value, "member")
    member_id = check_member_id(r.text("id"))
    r = _Reader(value, f"member {member_id}")
    kind = r.text("kind")
    try:
        member_kind = MemberKind(kind)
    except ValueError as exc:
        raise RegistryError(f"member {member_id} has unknown kind {kind!r}") from exc
    fingerprint = r.text("cert_fingerprint")
    if len(fingerprint) != 64 or fingerprint.strip("0123456789abcdef"):
        raise RegistryError(f"member {member_id} cert_fingerprint is not a hex SHA-256")
    return Member(
        id=member_id,
        name_zh=r.text("name_zh"),
        name_en=r.text("name_en"),
        kind=member_kind,
        roles=tuple(_Reader.as_str(v, f"member {member_id} roles") for v in r.items("roles")),
        endpoint=r.text("endpoint"),
        cert_fingerprint=fingerprint,
        signing_keys=tuple(_key_from_json(k, member_id) for k in r.items("signing_keys")),
        parent=check_member_id(r.text("parent")) if r.has("parent") else None,
        issuer_prefixes=_issuer_prefixes(value, member_id),
    )


def _issuer_prefixes(value: object, member_id: MemberId) -> tuple[str, ...]:
    raw = value.get("issuer_prefixes", []) if isinstance(value, dict) else []
    if not isinstance(raw, list):
        raise RegistryError(f"member {member_id} issuer_prefixes is not a list")
    prefixes = tuple(_Reader.as_str(v, f"member {member_id} issuer_prefixes") for v in raw)
    if any(not p.isascii() or not p.isdigit() or not 1 <= len(p) <= 11 for p in prefixes):
        raise RegistryError(f"member {member_id} issuer_prefixes must be 1 to 11 digits each")
    return prefixes


def _key_from_json(value: object, member_id: MemberId) -> SigningKey:
    r = _Reader(value, f"member {member_id} signing key")
    return SigningKey(
        key_id=KeyId(r.text("key_id")),
        public_key=_b64decode_strict(r.text("public_key"), f"member {member_id} public_key"),
        not_before=r.time("not_before"),
        not_after=r.time("not_after"),
    )


def _policy_from_json(value: object) -> WitnessPolicy | None:
    if value is None:
        return None
    r = _Reader(value, "witness_policy")
    return WitnessPolicy(
        quorum=r.integer("quorum"),
        witnesses=tuple(
            check_member_id(_Reader.as_str(w, "witness_policy witnesses"))
            for w in r.items("witnesses")
        ),
    )


def _revocation_from_json(value: object) -> Revocation:
    r = _Reader(value, "revocation")
    kind = r.text("kind")
    if kind not in ("member", "key"):
        raise RegistryError(f"revocation kind must be 'member' or 'key', got {kind!r}")
    return Revocation(
        subject=r.text("subject"),
        kind=cast(Literal["member", "key"], kind),
        at=r.time("at"),
        reason=r.text("reason"),
    )


@dataclass(frozen=True, slots=True)
class _Reader:
    """Typed field access on a parsed JSON object; every failure is a ``RegistryError``."""

    doc: object
    where: str

    def _get(self, key: str) -> Any:
        if not isinstance(self.doc, dict):
            raise RegistryError(f"registry {self.where} is not a JSON object")
        if key not in self.doc:
            raise RegistryError(f"registry {self.where} is missing the field {key!r}")
        return self.doc[key]

    def has(self, key: str) -> bool:
        return isinstance(self.doc, dict) and key in self.doc

    @staticmethod
    def as_str(value: object, where: str) -> str:
        if not isinstance(value, str):
            raise RegistryError(f"registry {where} must be a string")
        return value

    def text(self, key: str) -> str:
        return self.as_str(self._get(key), f"{self.where} field {key!r}")

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise RegistryError(f"registry {self.where} field {key!r} must be an integer")
        return value

    def items(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, list):
            raise RegistryError(f"registry {self.where} field {key!r} must be a list")
        return value

    def time(self, key: str) -> datetime:
        text = self.text(key)
        try:
            at = datetime.fromisoformat(text)
        except ValueError as exc:
            raise RegistryError(f"registry {self.where} field {key!r} is not a time") from exc
        if not text.endswith("Z") or at.tzinfo is None:
            raise RegistryError(f"registry {self.where} field {key!r} must be a UTC time (…Z)")
        return at.astimezone(UTC)
