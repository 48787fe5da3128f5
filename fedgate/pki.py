"""The federation PKI: the CA, member TLS certificates, signing keys and the signed registry.

A federation directory looks like this (``FederationLayout`` names each path)::

    ca/ca.pem  ca/ca.key                 federation CA (EC P-256), key 0600
    trust/ca.pem  trust/admin.pub        public trust anchors every process loads
    admin/admin.key                      registry administrator's Ed25519 key, 0600
    members/<id>/tls.pem  tls.key        member TLS certificate (EC P-256) and key, 0600
    members/<id>/signing.key  .pub       member Ed25519 signing key, 0600
    registry.json                        member registry signed by the administrator
    rosters/<member>.json                a police member's officer roster, signed by the member

Contract:

- Private key files MUST be created 0600 and every directory 0700.
- ``init_federation`` MUST NOT touch a directory that is not empty.
- Every change MUST re-sign the registry with a higher serial; ``registry.json`` is replaced
  atomically, written last, and changes are serialized by a lock file.
- Keys are never removed from the registry: signatures made in the past stay verifiable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgate.errors import FedgateError, InvalidArgument, NotFound, RegistryError
from fedgate.federation import (
    DEFAULT_MEMBERS,
    MemberKind,
    MemberSpec,
    member_server_name,
    member_uri,
)
from fedgate.files import read_private_file, write_atomically
from fedgate.keys import generate_signing_key, key_id_of, load_private_key, raw_public_key
from fedgate.keys import save_private_key as save_signing_key
from fedgate.registry import (
    WITNESS_ROLE,
    Member,
    Registry,
    Revocation,
    SigningKey,
    WitnessPolicy,
    cert_fingerprint,
    load_admin_public_key,
    sign_registry,
)
from fedgate.roster import Officer, Roster, development_officers, roster_path, sign_roster
from fedgate.types import KeyId, MemberId
from fedgate.validate import BANK_BINS

__all__ = [
    "CA_VALIDITY",
    "CLOCK_SKEW_ALLOWANCE",
    "ROTATION_OVERLAP",
    "FederationLayout",
    "init_federation",
    "issue_member",
    "revoke_key",
    "revoke_member",
    "set_witness_policy",
    "sign_member_roster",
]

CA_VALIDITY = timedelta(days=3650)
ROTATION_OVERLAP = timedelta(days=1)
"""On re-issue, a member's previous signing keys stay valid this long (in-flight messages)."""
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
"""Certificates are back-dated this much so that a peer with a slow clock accepts them."""


@dataclass(frozen=True, slots=True)
class FederationLayout:
    """The paths of a federation directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def trust_ca(self) -> Path:
        return self.root / "trust" / "ca.pem"

    @property
    def admin_public_key(self) -> Path:
        return self.root / "trust" / "admin.pub"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin" / "admin.key"

    @property
    def registry(self) -> Path:
        return self.root / "registry.json"

    def member_dir(self, member_id: MemberId) -> Path:
        return self.root / "members" / member_id

    def tls_cert(self, member_id: MemberId) -> Path:
        return self.member_dir(member_id) / "tls.pem"

    def tls_key(self, member_id: MemberId) -> Path:
        return self.member_dir(member_id) / "tls.key"

    def signing_key(self, member_id: MemberId) -> Path:
        return self.member_dir(member_id) / "signing.key"

    def signing_public_key(self, member_id: MemberId) -> Path:
        return self.member_dir(member_id) / "signing.pub"


def init_federation(
    directory: Path,
    *,
    members: Sequence[MemberSpec] = DEFAULT_MEMBERS,
    now: datetime | None = None,
    validity_days: int = 365,
) -> Path:
    """Create a federation (CA, admin key, every member's keys, signed registry) in an empty or
    missing ``directory`` and return it. Raises ``InvalidArgument`` if the directory is not
    empty or the member list has duplicate ids or ports."""
    now = _now(now)
    _check_validity(validity_days)
    _check_unique(members)
    layout = FederationLayout(Path(directory))
    _prepare_empty_root(layout.root)
    with _locked(layout):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _build_ca(ca_key, now)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        _write(layout.ca_key, _ec_key_pem(ca_key), private=True)
        _write(layout.ca_cert, ca_pem)
        _write(layout.trust_ca, ca_pem)
        admin_key = generate_signing_key()
        save_signing_key(admin_key, layout.admin_key)
        _write(layout.admin_public_key, _ed_public_pem(admin_key))
        until = now + timedelta(days=validity_days)
        entries = tuple(
            _new_member(layout, spec, ca_key, ca_cert, now, until, ()) for spec in members
        )
        witnesses = tuple(spec.id for spec in members if WITNESS_ROLE in spec.roles)
        policy = WitnessPolicy(quorum=1, witnesses=witnesses) if witnesses else None
        registry = Registry(1, now, entries, (), witness_policy=policy)
        for spec in members:
            if spec.kind == MemberKind.POLICE:
                officers = development_officers(
                    unit=spec.name_zh,
                    supervisors="centre_supervisor" in spec.roles,
                    valid_from=now,
                    valid_to=until,
                )
                _write_roster(layout, Roster(spec.id, 1, now, officers), registry)
        _secure_tree(layout.root)
        _write_registry(layout, registry, admin_key)
    return layout.root


def issue_member(
    directory: Path,
    spec: MemberSpec,
    *,
    now: datetime | None = None,
    validity_days: int = 365,
    overlap: timedelta = ROTATION_OVERLAP,
) -> None:
    """Add a member, or re-issue an existing one (rotation), and re-sign the registry.

    Re-issue replaces the member's TLS certificate (the old one is refused at once) and adds a
    new signing key valid from ``now``; earlier keys stay listed but their windows are closed at
    ``now + overlap`` at the latest. Raises ``InvalidArgument`` for a revoked member, a changed
    kind or a port another member uses, and ``RegistryError`` if the registry does not verify.
    """
    now = _now(now)
    _check_validity(validity_days)
    if overlap < timedelta(0):
        raise InvalidArgument(f"overlap must not be negative, got {overlap}")
    layout = FederationLayout(Path(directory))
    with _locked(layout):
        registry, admin_key = _open(layout, now)
        if registry.revocation_of(spec.id) is not None:
            raise InvalidArgument(
                f"member {spec.id} was revoked; a revoked member id is never re-issued, choose "
                "a new id"
            )
        existing = registry.find(spec.id)
        if existing is not None and existing.kind != spec.kind:
            raise InvalidArgument(
                f"member {spec.id} is a {existing.kind}; its kind cannot change to {spec.kind}"
            )
        for other in registry.entries:
            if other.id != spec.id and other.endpoint == spec.endpoint:
                raise InvalidArgument(
                    f"endpoint {spec.endpoint} is already used by {other.id}: choose another port"
                )
        previous: tuple[SigningKey, ...] = ()
        if existing is not None:
            cutoff = now + overlap
            previous = tuple(
                replace(k, not_after=cutoff) if k.not_after > cutoff else k
                for k in existing.signing_keys
            )
        ca_key = _load_ca_key(layout)
        ca_cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
        member = _new_member(
            layout, spec, ca_key, ca_cert, now, now + timedelta(days=validity_days), previous
        )
        entries = (
            tuple(member if m.id == spec.id else m for m in registry.entries)
            if existing is not None
            else (*registry.entries, member)
        )
        updated = replace(registry, serial=registry.serial + 1, issued_at=now, entries=entries)
        if spec.kind == MemberKind.POLICE:
            # The member's roster, signed again with its new key (a new member starts empty).
            _write_roster(layout, _next_roster(layout, registry, spec.id, now), updated)
        _secure_tree(layout.root)
        _write_registry(layout, updated, admin_key)


def sign_member_roster(
    directory: Path,
    member_id: MemberId,
    officers: Sequence[Officer],
    *,
    now: datetime | None = None,
) -> Roster:
    """Sign ``officers`` as the police member's new roster (serial one above the current one)
    with the member's signing key in ``directory`` and write ``rosters/<member>.json``.
    Raises ``InvalidArgument`` for a member that is not police, ``RegistryError`` when the
    registry or the member's key cannot be used."""
    now = _now(now)
    layout = FederationLayout(Path(directory))
    with _locked(layout):
        registry = Registry.load_dir(layout.root, now=now)
        member = registry.member(member_id)
        if member.kind != MemberKind.POLICE:
            raise InvalidArgument(f"{member_id} is a {member.kind}: only police publish rosters")
        roster = replace(_next_roster(layout, registry, member_id, now), officers=tuple(officers))
        _write_roster(layout, roster, registry)
    return roster


def revoke_member(
    directory: Path, member_id: MemberId, *, reason: str, now: datetime | None = None
) -> None:
    """Revoke a member and re-sign the registry. Raises ``NotFound`` for an unknown member and
    ``InvalidArgument`` for an empty reason or a member already revoked."""
    _revoke(directory, member_id, "member", reason, now)


def revoke_key(directory: Path, key_id: KeyId, *, reason: str, now: datetime | None = None) -> None:
    """Revoke one signing key and re-sign the registry. Raises ``NotFound`` for an unknown key
    and ``InvalidArgument`` for an empty reason or a key already revoked."""
    _revoke(directory, key_id, "key", reason, now)


def set_witness_policy(
    directory: Path, policy: WitnessPolicy, *, now: datetime | None = None
) -> None:
    """Replace the registry's witness policy and re-sign it. Raises ``RegistryError`` for a
    policy naming a member without the witness role or a quorum out of range."""
    now = _now(now)
    layout = FederationLayout(Path(directory))
    with _locked(layout):
        registry, admin_key = _open(layout, now)
        updated = dataclasses.replace(
            registry, serial=registry.serial + 1, issued_at=now, witness_policy=policy
        )
        _write_registry(layout, updated, admin_key)


# -- private helpers -------------------------------------------------------------------------


def _revoke(directory: Path, subject: str, kind: str, reason: str, now: datetime | None) -> None:
    # Registry times are whole seconds: a revocation made now is dated at the next whole second
    # (never the one before), so nothing signed earlier in this second looks signed after it.
    at = _now(now) if now is not None else _ceil_second(datetime.now(UTC))
    now = _now(now)
    if not reason.strip():
        raise InvalidArgument("a revocation needs a reason")
    layout = FederationLayout(Path(directory))
    with _locked(layout):
        registry, admin_key = _open(layout, now)
        if kind == "member":
            if registry.find(subject) is None:
                raise NotFound(f"no member {subject!r} in the registry")
            revocation = Revocation(subject, "member", at, reason.strip())
        else:
            if not any(k.key_id == subject for m in registry.entries for k in m.signing_keys):
                raise NotFound(f"no signing key {subject!r} in the registry")
            revocation = Revocation(subject, "key", at, reason.strip())
        if registry.revocation_of(subject) is not None:
            raise InvalidArgument(f"{kind} {subject} is already revoked")
        updated = dataclasses.replace(
            registry,
            serial=registry.serial + 1,
            issued_at=now,
            revocations=(*registry.revocations, revocation),
        )
        _write_registry(layout, updated, admin_key)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None:
        raise InvalidArgument(f"now must be timezone-aware, got {now.isoformat()}")
    return now.astimezone(UTC)


def _ceil_second(at: datetime) -> datetime:
    floor = at.replace(microsecond=0)
    return floor if floor == at else floor + timedelta(seconds=1)


def _check_validity(validity_days: int) -> None:
    if validity_days < 1:
        raise InvalidArgument(f"validity_days must be at least 1, got {validity_days}")


def _check_unique(members: Sequence[MemberSpec]) -> None:
    ids = [m.id for m in members]
    ports = [m.port for m in members]
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"duplicate member ids in {ids}")
    if len(set(ports)) != len(ports):
        raise InvalidArgument(f"duplicate member ports in {sorted(ports)}")


def _prepare_empty_root(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise InvalidArgument(f"{root} exists and is not a directory")
        if (root / "registry.json").exists() or (root / "ca").exists():
            raise InvalidArgument(
                f"{root} already holds a federation: use `fedgate pki issue` to add or re-issue "
                "members, or choose an empty directory"
            )
        if any(root.iterdir()):
            raise InvalidArgument(f"{root} is not empty: choose an empty or new directory")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)


@contextlib.contextmanager
def _locked(layout: FederationLayout) -> Iterator[None]:
    """Serialize changes to one federation directory between processes."""
    if not layout.root.is_dir():
        raise RegistryError(
            f"{layout.root} is not a federation directory: create one with "
            "`fedgate pki init --dir DIR`"
        )
    fd = os.open(layout.root / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open(layout: FederationLayout, now: datetime) -> tuple[Registry, Ed25519PrivateKey]:
    """The current registry (verified) and the administrator key that signed it."""
    registry = Registry.load_dir(layout.root, now=now)
    try:
        admin_key = load_private_key(layout.admin_key)
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"cannot load the administrator key {layout.admin_key}: {exc}; only the "
            "administrator's copy of the federation directory can change the registry"
        ) from exc
    trusted = load_admin_public_key(layout.admin_public_key)
    if key_id_of(admin_key) != key_id_of(trusted):
        raise RegistryError(
            f"{layout.admin_key} is not the key of {layout.admin_public_key}: refusing to sign a "
            "registry that no member would accept"
        )
    return registry, admin_key


def _load_ca_key(layout: FederationLayout) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(read_private_file(layout.ca_key), password=None)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot load the federation CA key {layout.ca_key}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RegistryError(f"{layout.ca_key} is not an EC private key")
    return key


def _new_member(
    layout: FederationLayout,
    spec: MemberSpec,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
    until: datetime,
    previous: tuple[SigningKey, ...],
) -> Member:
    """Make and write a member's TLS key, certificate and signing key; return its entry."""
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = _build_leaf(spec, tls_key, ca_key, ca_cert, now, until)
    signing = generate_signing_key()
    _write(layout.tls_key(spec.id), _ec_key_pem(tls_key), private=True)
    _write(layout.tls_cert(spec.id), cert.public_bytes(serialization.Encoding.PEM))
    save_signing_key(signing, layout.signing_key(spec.id))
    _write(layout.signing_public_key(spec.id), _ed_public_pem(signing))
    key = SigningKey(key_id_of(signing), raw_public_key(signing), now, until)
    return Member(
        id=spec.id,
        name_zh=spec.name_zh,
        name_en=spec.name_en,
        kind=spec.kind,
        roles=spec.roles,
        endpoint=spec.endpoint,
        cert_fingerprint=cert_fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        signing_keys=(*previous, key),
        parent=spec.parent,
        issuer_prefixes=BANK_BINS.get(spec.id, ()) if spec.kind == MemberKind.BANK else (),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgate federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _build_ca(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = _name("fedgate federation CA")
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_leaf(
    spec: MemberSpec,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
    until: datetime,
) -> x509.Certificate:
    public = key.public_key()
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(member_uri(spec.id)),
            x509.DNSName(member_server_name(spec.id)),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(spec.id))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(min(until, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _ec_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ed_public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _secure_tree(root: Path) -> None:
    """Make the federation root and every directory below it 0700."""
    os.chmod(root, 0o700)
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o700)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Atomically replace ``path`` (0600 if private, else 0644), creating 0700 directories."""
    write_atomically(path, data, mode=0o600 if private else 0o644)


def _next_roster(
    layout: FederationLayout, registry: Registry, member_id: MemberId, now: datetime
) -> Roster:
    """The member's current roster (if it verifies) with the next serial, issued ``now``."""
    member = registry.find(member_id)
    try:
        if member is None:
            raise NotFound(f"no member {member_id}")
        current = Roster.carried_forward(
            roster_path(layout.root, member_id).read_bytes(), member=member
        )
    except (OSError, ValueError, KeyError, TypeError, FedgateError):
        return Roster(member_id, 1, now, ())
    return Roster(member_id, current.serial + 1, now, current.officers)


def _write_roster(layout: FederationLayout, roster: Roster, registry: Registry) -> None:
    """Sign ``roster`` with its member's newest signing key and write it."""
    key = load_private_key(layout.signing_key(roster.member))
    member = next(m for m in registry.entries if m.id == roster.member)
    if key_id_of(key) != member.signing_keys[-1].key_id:
        raise RegistryError(f"{layout.signing_key(roster.member)} is not {roster.member}'s key")
    _write(roster_path(layout.root, roster.member), sign_roster(roster, key))


def _write_registry(layout: FederationLayout, registry: Registry, admin: Ed25519PrivateKey) -> None:
    _write(layout.registry, sign_registry(registry, admin))
