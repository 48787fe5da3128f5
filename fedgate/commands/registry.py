"""``fedgate registry``: show and verify the signed member registry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedgate.errors import FedgateError, RegistryError
from fedgate.pki import FederationLayout
from fedgate.registry import Registry, SigningKey, cert_fingerprint
from fedgate.render import table

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``registry`` command group to the top-level ``fedgate`` parser."""
    group = subparsers.add_parser(
        "registry",
        help="show or verify the signed member registry",
        description="Read the member registry (registry.json) and check its signature.",
    )
    sub = group.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="list members, keys and revocations")
    _dir_argument(show)
    show.add_argument("--json", action="store_true", help="print the payload as JSON")
    show.set_defaults(func=_show)

    verify = sub.add_parser(
        "verify",
        help="check the registry signature (exit 1 if it fails)",
        description="Check registry.json against trust/admin.pub, and that the member "
        "certificates present in the directory are the registered ones.",
    )
    _dir_argument(verify)
    verify.set_defaults(func=_verify)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, required=True, dest="dir", help="the federation directory"
    )


def _show(args: argparse.Namespace) -> int:
    registry = Registry.load_dir(args.dir)  # a FedgateError is printed by ``cli.main``, exit 2
    if args.json:
        print(json.dumps(json.loads(registry.to_payload()), indent=2, ensure_ascii=False))
        return 0
    now = datetime.now(UTC)
    print(f"registry serial {registry.serial}, issued {_time(registry.issued_at)}")
    policy = registry.effective_witness_policy()
    explicit = "" if registry.witness_policy is not None else " (default: none in the registry)"
    print(f"witness policy {policy or 'none: no witness'}{explicit}")
    print()
    members = [
        (
            m.id,
            m.kind.value,
            m.parent or "-",
            m.endpoint,
            "REVOKED" if registry.revocation_of(m.id) else "active",
            ",".join(m.roles),
            f"{m.name_zh} / {m.name_en}",
        )
        for m in registry.entries
    ]
    _table(("MEMBER", "KIND", "UNDER", "ENDPOINT", "STATUS", "ROLES", "NAME"), members)
    print()
    keys = [
        (m.id, k.key_id, _time(k.not_before), _time(k.not_after), _key_status(registry, k, now))
        for m in registry.entries
        for k in m.signing_keys
    ]
    _table(("MEMBER", "SIGNING KEY", "NOT BEFORE", "NOT AFTER", "STATUS"), keys)
    if registry.revocations:
        print()
        rows = [(r.kind, r.subject, _time(r.at), r.reason) for r in registry.revocations]
        _table(("REVOKED", "SUBJECT", "AT", "REASON"), rows)
    return 0


def _verify(args: argparse.Namespace) -> int:
    layout = FederationLayout(args.dir)
    try:
        registry = Registry.load_dir(args.dir)
        for m in registry.entries:
            path = layout.tls_cert(m.id)
            if path.exists() and _pem_fingerprint(path) != m.cert_fingerprint:
                raise RegistryError(
                    f"{path} is not the certificate the registry lists for {m.id}: copy the "
                    "member's files from the administrator's federation directory"
                )
    except FedgateError as exc:
        print(f"fedgate: error: {exc.message}", file=sys.stderr)
        return 1
    print(
        f"{layout.registry}: signature OK, serial {registry.serial}, "
        f"{len(registry.members())} members in good standing, "
        f"{len(registry.revocations)} revocation(s)"
    )
    return 0


def _pem_fingerprint(path: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the certificate {path}: {exc}") from exc
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _key_status(registry: Registry, key: SigningKey, now: datetime) -> str:
    if registry.revocation_of(key.key_id) is not None:
        return "REVOKED"
    if now < key.not_before:
        return "not yet valid"
    return "valid" if key.valid_at(now) else "expired"


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    print("\n".join(table(header, rows, indent="")))
