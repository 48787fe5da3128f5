"""``fedgate pki``: create a federation, issue or re-issue members, revoke members and keys,
set the witness policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgate.errors import FedgateError, InvalidArgument
from fedgate.federation import DEFAULT_ROLES, MemberKind, MemberSpec, check_member_id
from fedgate.pki import (
    FederationLayout,
    init_federation,
    issue_member,
    revoke_key,
    revoke_member,
    set_witness_policy,
    sign_member_roster,
)
from fedgate.registry import Registry, WitnessPolicy
from fedgate.roster import officers_from_json, roster_path
from fedgate.types import KeyId

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` command group to the top-level ``fedgate`` parser."""
    pki = subparsers.add_parser(
        "pki",
        help="federation PKI: CA, member certificates, signing keys",
        description="Create and change the federation PKI and its signed member registry.",
    )
    sub = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")

    init = sub.add_parser(
        "init",
        help="create a federation in an empty directory",
        description="Create the CA, the administrator key, every default member's TLS "
        "certificate and signing key, and the signed registry, in an empty directory.",
    )
    _dir_argument(init)
    init.add_argument(
        "--validity-days", type=int, default=365, help="member key lifetime (default 365)"
    )
    init.set_defaults(func=_init)

    issue = sub.add_parser(
        "issue",
        help="add a member, or re-issue (rotate) an existing one",
        description="Add a member, or give an existing member a new certificate and signing "
        "key (its earlier keys stay valid for one more day). Options left out keep the "
        "registered values of an existing member.",
    )
    _dir_argument(issue)
    issue.add_argument("--member", required=True, help="member id, e.g. bank.boc")
    issue.add_argument("--kind", choices=[k.value for k in MemberKind])
    issue.add_argument("--name-zh", help="Chinese name")
    issue.add_argument("--name-en", help="English name")
    issue.add_argument("--roles", nargs="+", help="roles (default: the kind's usual roles)")
    issue.add_argument("--port", type=int, help="loopback port (default: next free one)")
    issue.add_argument(
        "--parent",
        help="police only: the supervising member, e.g. police.gd.afc (default: unchanged)",
    )
    issue.add_argument("--validity-days", type=int, default=365, help="key lifetime (default 365)")
    issue.set_defaults(func=_issue)

    revoke = sub.add_parser(
        "revoke",
        help="revoke a member or one signing key",
        description="Revoke a member (all its keys and its certificate) or one signing key.",
    )
    _dir_argument(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--member", help="member id to revoke")
    which.add_argument("--key", help="signing key id to revoke")
    revoke.add_argument("--reason", required=True, help="why (kept in the registry)")
    revoke.set_defaults(func=_revoke)

    roster = sub.add_parser(
        "roster",
        help="sign a police member's officer roster",
        description="Sign a police member's officer roster with the member's signing key (serial "
        "one above the current one) and write rosters/<member>.json. OFFICERS is a JSON list of "
        '{"id", "name", "unit", "roles", "valid_from", "valid_to"} (times as UTC ...Z).',
    )
    _dir_argument(roster)
    roster.add_argument("--member", required=True, help="police member id, e.g. police.gz.unit")
    roster.add_argument("--officers", type=Path, required=True, help="JSON file of officers")
    roster.set_defaults(func=_roster)
    policy = sub.add_parser(
        "witness-policy",
        help="set how many of which witnesses must cosign the log's checkpoints",
        description="Set the registry's witness policy: QUORUM of the named witnesses (members "
        "with the witness role) must cosign a checkpoint for evidence bundles, cosigned "
        "receipts and `fedgate audit verify --checkpoint` to accept it.",
    )
    _dir_argument(policy)
    policy.add_argument("--quorum", type=int, required=True, help="k: cosignatures required")
    policy.add_argument(
        "--witness", action="append", required=True, help="a witness member id (repeatable)"
    )
    policy.set_defaults(func=_witness_policy)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, required=True, dest="dir", help="the federation directory"
    )


def _error(exc: FedgateError) -> int:
    print(f"fedgate: error: {exc.message}", file=sys.stderr)
    return 2


def _init(args: argparse.Namespace) -> int:
    try:
        root = init_federation(args.dir, validity_days=args.validity_days)
        registry = Registry.load_dir(root)
    except FedgateError as exc:
        return _error(exc)
    print(f"created a federation of {len(registry.members())} members in {root}")
    print(f"  trust anchors (give to every member): {root / 'trust'}")
    print(f"  keep private: {root / 'ca' / 'ca.key'}, {root / 'admin' / 'admin.key'}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    try:
        member_id = check_member_id(args.member)
        registry = Registry.load_dir(args.dir)
        existing = registry.find(member_id)
        kind = MemberKind(args.kind) if args.kind else (existing.kind if existing else None)
        name_zh = args.name_zh or (existing.name_zh if existing else None)
        name_en = args.name_en or (existing.name_en if existing else None)
        if kind is None or name_zh is None or name_en is None:
            raise InvalidArgument(
                f"{member_id} is a new member: --kind, --name-zh and --name-en are required"
            )
        roles = tuple(args.roles) if args.roles else None
        if roles is None:
            roles = existing.roles if existing else DEFAULT_ROLES[kind]
        port = args.port
        if port is None:
            ports = [_port(m.endpoint) for m in registry.entries]
            port = _port(existing.endpoint) if existing else max(ports, default=20050) + 1
        parent = (
            check_member_id(args.parent) if args.parent else (existing.parent if existing else None)
        )
        spec = MemberSpec(member_id, name_zh, name_en, kind, roles, port, parent)
        issue_member(args.dir, spec, validity_days=args.validity_days)
        member = Registry.load_dir(args.dir).member(member_id)
    except FedgateError as exc:
        return _error(exc)
    verb = "re-issued" if existing else "issued"
    key = member.signing_keys[-1]
    print(f"{verb} {member.id} ({member.kind}) at {member.endpoint}")
    print(f"  signing key {key.key_id}, certificate sha256 {member.cert_fingerprint}")
    print(f"  files: {FederationLayout(args.dir).member_dir(member.id)}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        if args.member is not None:
            member_id = check_member_id(args.member)
            revoke_member(args.dir, member_id, reason=args.reason)
            what = f"member {member_id}"
        else:
            revoke_key(args.dir, KeyId(args.key), reason=args.reason)
            what = f"signing key {args.key}"
        serial = Registry.load_dir(args.dir).serial
    except FedgateError as exc:
        return _error(exc)
    print(f"revoked {what}; registry serial is now {serial}: distribute registry.json")
    return 0


def _roster(args: argparse.Namespace) -> int:
    try:
        member_id = check_member_id(args.member)
        try:
            data = args.officers.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"--officers: cannot read {args.officers}: {exc}") from exc
        officers = officers_from_json(data, source=str(args.officers))
        signed = sign_member_roster(args.dir, member_id, officers)
    except FedgateError as exc:
        return _error(exc)
    print(
        f"signed the roster of {member_id}: {len(signed.officers)} officers, serial "
        f"{signed.serial}: distribute {roster_path(args.dir, member_id)}"
    )
    return 0


def _port(endpoint: str) -> int:
    _, _, port = endpoint.rpartition(":")
    return int(port) if port.isdigit() else 0


def _witness_policy(args: argparse.Namespace) -> int:
    try:
        chosen = WitnessPolicy(
            quorum=args.quorum, witnesses=tuple(check_member_id(w) for w in args.witness)
        )
        set_witness_policy(args.dir, chosen)
        registry = Registry.load_dir(args.dir)
    except FedgateError as exc:
        return _error(exc)
    print(f"registry serial {registry.serial}: witness policy {registry.witness_policy}")
    return 0
