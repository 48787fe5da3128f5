"""What the police commands share: options, value parsing, sending, and exit codes.

``fedgate query …`` and ``fedgate order …`` subcommands are :class:`ActionCommand` values: the
options of their action and a function that builds the action message. This module adds the
request header options (officer, case, legal document, urgency, purpose, deadline), signs the
request as the member, keeps a copy of the signed envelope (so that a ticket's answer can be
verified later, by another process), submits it and prints the verified outcome.

The CLI checks syntax only (times, amounts, choices); the gateway validates the request and
its refusal names each bad field, which is printed.

Exit codes (stable, for scripts):

==  =======================================================================================
 0  the agency answered OK
 1  the agency answered REFUSED, NOT_FOUND, INVALID or EXPIRED (or a ticket expired)
 2  usage or local error (bad option, missing credentials, unwritable state)
 3  refused by the gateway: policy, business rule, validation, quota, replay, signature
 4  unavailable: the gateway, the agency or the audit log could not serve the request
 5  the answer FAILED VERIFICATION (forged or bound to another request): do not act on it
10  queued for the agency's staff: a ticket was issued, follow it with ``fedgate ticket``
==  =======================================================================================

The parts live in private modules and are re-exported here: ``_exit`` (exit codes, outcomes,
printing), ``_parse`` (option values), ``_sent`` (the sent-request store); this module holds the
command table machinery, the connection options and the sending.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from google.protobuf.message import Message

from fedgate.actions import (
    ACCEPTED_DOCUMENTS,
    CITING_ACTIONS,
    DOCUMENT_NAMES,
    ORDER_ACTIONS,
    target_kind_of,
)
from fedgate.client import Answer, FedgateClient
from fedgate.commands._exit import (
    EXIT_CODES_EPILOG,
    ExitCode,
    answer_outcome,
    emit,
    exit_code_for_refusal,
    exit_code_for_status,
    failure_outcome,
    local_error,
)
from fedgate.commands._parse import (
    PoliceParser,
    money,
    parse_account,
    parse_amount,
    parse_duration,
    parse_request_id,
    parse_time,
    timestamp,
)
from fedgate.commands._sent import SentStore
from fedgate.commands._staged import run_staged_command
from fedgate.disclosure import HIT_ACTIONS, HITS
from fedgate.errors import FedgateError, InvalidArgument, RegistryError
from fedgate.render import Outcome, request_document
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2
from fedgate.validate import bank_of_card, carrier_of_mobile

__all__ = [
    "CITING_ACTIONS",
    "DEFAULT_FEDERATION",
    "DEFAULT_MEMBER",
    "EXIT_CODES_EPILOG",
    "ActionCommand",
    "ExitCode",
    "PoliceParser",
    "SentStore",
    "account_of",
    "account_option",
    "add_connection_options",
    "answer_outcome",
    "emit",
    "exit_code_for_refusal",
    "exit_code_for_status",
    "failure_outcome",
    "keep_answer",
    "local_error",
    "missing_federation",
    "money",
    "open_client",
    "parse_account",
    "parse_amount",
    "parse_duration",
    "parse_request_id",
    "parse_time",
    "phone_of",
    "phone_option",
    "register_group",
    "sent_store",
    "timestamp",
]

DEFAULT_FEDERATION = "state/federation"
DEFAULT_MEMBER = "police.gd.afc"

_ROLES: dict[str, common_pb2.Role.ValueType] = {
    "investigator": common_pb2.ROLE_POLICE_INVESTIGATOR,
    "duty_officer": common_pb2.ROLE_POLICE_DUTY_OFFICER,
    "supervisor": common_pb2.ROLE_CENTRE_SUPERVISOR,
    "analyst": common_pb2.ROLE_CENTRAL_BANK_ANALYST,
}
_CASE_TYPES: dict[str, common_pb2.CaseType.ValueType] = {
    "telecom_fraud": common_pb2.CASE_TYPE_TELECOM_FRAUD,
    "aiding_cybercrime": common_pb2.CASE_TYPE_AIDING_CYBERCRIME,
    "concealing_proceeds": common_pb2.CASE_TYPE_CONCEALING_PROCEEDS,
    "other": common_pb2.CASE_TYPE_OTHER,
}
_DOC_KINDS: dict[str, common_pb2.LegalDocumentKind.ValueType] = {
    short: kind  # type: ignore[misc]
    for kind, (short, _) in DOCUMENT_NAMES.items()
    if kind != common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT
}
_URGENCIES: dict[str, common_pb2.Urgency.ValueType] = {
    "routine": common_pb2.URGENCY_ROUTINE,
    "urgent": common_pb2.URGENCY_URGENT,
    "emergency": common_pb2.URGENCY_EMERGENCY,
}

_WIDE_FLAGS: dict[str, tuple[str, str]] = {
    "accounts_by_id": ("--all-banks", "every bank"),
    "sim_count": ("--all-carriers", "every carrier"),
}
"""The option that asks every member of the kind, for each action asked in stages."""
assert set(_WIDE_FLAGS) == HIT_ACTIONS
_WIDE_GROUPS = {
    "--all-banks": request_pb2.TARGET_GROUP_ALL_BANKS,
    "--all-carriers": request_pb2.TARGET_GROUP_ALL_CARRIERS,
}

# ----------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class ActionCommand:
    """One ``query``/``order`` subcommand: its action, its options and the action builder.

    ``subject`` returns the card or mobile number the target agency is inferred from when
    ``--target`` is not given (None: ``--target`` is required)."""

    name: str
    action: str
    help: str
    arguments: Callable[[argparse._ActionsContainer], None]
    build: Callable[[argparse.Namespace], Message]
    subject: Callable[[argparse.Namespace], str | None] | None = None
    urgency: str = "routine"
    doc_kind: str = "query_notice"


def account_option(group: argparse._ActionsContainer) -> None:
    """``--account``, the subject of most bank actions."""
    group.add_argument(
        "--account", type=parse_account, required=True, help="card or account number 账号"
    )


def phone_option(group: argparse._ActionsContainer) -> None:
    """``--phone``, the subject of most carrier actions."""
    group.add_argument("--phone", required=True, help="11-digit mobile number 号码")


def account_of(args: argparse.Namespace) -> str | None:
    """The ``subject`` of an action with :func:`account_option`."""
    return str(args.account)


def phone_of(args: argparse.Namespace) -> str | None:
    """The ``subject`` of an action with :func:`phone_option`."""
    return str(args.phone)


def add_connection_options(parser: argparse.ArgumentParser, *, timeout: float | None) -> None:
    """``--federation``, ``--member``, ``--endpoint``, ``--sent-dir``, ``--json``, ``--timeout``."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--federation",
        type=Path,
        metavar="DIR",
        help=f"federation directory (default: $FEDGATE_FEDERATION or {DEFAULT_FEDERATION})",
    )
    group.add_argument(
        "--member", help=f"act as this member (default: $FEDGATE_MEMBER or {DEFAULT_MEMBER})"
    )
    group.add_argument(
        "--endpoint",
        "--gateway",
        action="append",
        metavar="HOST:PORT",
        help="gateway address (default: from the registry); several instances of one gateway:"
        " repeat it or give a comma list, and calls are balanced over those serving",
    )
    group.add_argument(
        "--sent-dir",
        type=Path,
        metavar="DIR",
        help="where signed requests are kept (default: $FEDGATE_SENT_DIR or sent/ next to the"
        " federation directory)",
    )
    group.add_argument("--json", action="store_true", help="print one JSON object")
    shown = "none" if timeout is None else f"{timeout:g}"
    group.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help=f"(default {shown})"
    )


def _add_request_options(parser: argparse.ArgumentParser, command: ActionCommand) -> None:
    target = parser.add_argument_group("target and officer")
    to_gateway = target_kind_of(command.action) == "gateway"
    inferred = " (default: from the card's or number's issuer)" if command.subject else ""
    wide = _WIDE_FLAGS.get(command.action)
    if not to_gateway:  # approvals and risk list changes always go to the gateway
        target.add_argument(
            "--target",
            metavar="MEMBER",
            required=command.subject is None and wide is None,
            help=f"agency{inferred}",
        )
    if wide is not None:
        flag, group = wide
        target.add_argument(
            flag,
            dest="all_members",
            action="store_true",
            help=f"ask {group} in two stages (staged disclosure): hit / no hit from each, then "
            "the details from those that hit, citing the first stage",
        )
    target.add_argument("--officer-id", help="badge number 警号 ($FEDGATE_OFFICER_ID)")
    target.add_argument("--officer-name", help="name ($FEDGATE_OFFICER_NAME)")
    target.add_argument(
        "--officer-role", choices=sorted(_ROLES), help="role ($FEDGATE_OFFICER_ROLE, investigator)"
    )
    target.add_argument("--officer-phone", help="phone ($FEDGATE_OFFICER_PHONE)")
    target.add_argument("--officer-id-number", help="resident ID ($FEDGATE_OFFICER_ID_NUMBER)")
    target.add_argument("--second-officer-id", help="second officer 协查人 badge number")
    target.add_argument("--second-officer-name", help="second officer's name")
    target.add_argument("--second-officer-phone", help="second officer's phone")

    case = parser.add_argument_group("case and legal document")
    case.add_argument("--case", metavar="CASE_NUMBER", help="case number 案件编号 (required)")
    case.add_argument(
        "--case-type", choices=sorted(_CASE_TYPES), default="telecom_fraud", help="(telecom_fraud)"
    )
    case.add_argument("--case-reason", metavar="TEXT", help="案由, the reason of the case")
    kinds = ACCEPTED_DOCUMENTS.get(command.action)
    accepted = (
        "any kind" if kinds is None else ", ".join(DOCUMENT_NAMES[k][0] for k in sorted(kinds))
    )
    case.add_argument(
        "--doc-kind",
        choices=sorted(_DOC_KINDS),
        default=command.doc_kind,
        help=f"the legal document's kind ({command.doc_kind}); {command.action} accepts: "
        f"{accepted}",
    )
    case.add_argument(
        "--doc-number", metavar="TEXT", help="文书号 as printed on the document (required)"
    )
    case.add_argument("--doc-issued", type=parse_time, metavar="TIME", help="when it was issued")
    case.add_argument(
        "--urgency",
        choices=sorted(_URGENCIES),
        default=command.urgency,
        help=f"({command.urgency})",
    )
    case.add_argument("--purpose", metavar="TEXT", help="why the data is needed (required)")
    case.add_argument(
        "--deadline", type=parse_duration, default=timedelta(hours=24), help="answer due in (24h)"
    )
    case.add_argument(
        "--original",
        type=parse_request_id,
        metavar="REQUEST_ID",
        required=command.action in CITING_ACTIONS,
        help="the original order this one cites",
    )
    if command.action in ORDER_ACTIONS:
        case.add_argument(
            "--approval",
            type=parse_request_id,
            metavar="REQUEST_ID",
            help="the supervisor's approval exchange (`fedgate order approval`) this order cites",
        )
    case.add_argument(
        "--dry-run", action="store_true", help="print the signed request as JSON; do not send it"
    )


def register_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    name: str,
    help: str,
    description: str,
    commands: tuple[ActionCommand, ...],
) -> None:
    """Add ``fedgate <name> <command>`` for each of ``commands``."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    sub = group.add_subparsers(
        dest=f"{name}_command", required=True, metavar="COMMAND", parser_class=PoliceParser
    )
    for command in commands:
        parser = sub.add_parser(
            command.name,
            help=command.help,
            description=f"{command.help} (action {command.action})",
            epilog=EXIT_CODES_EPILOG,
            formatter_class=formatter,
        )
        command.arguments(parser.add_argument_group(f"{command.name} options"))
        _add_request_options(parser, command)
        add_connection_options(parser, timeout=15.0)
        parser.set_defaults(func=functools.partial(_run_action, command))


# ----------------------------------------------------------------------------- connection


def _federation(args: argparse.Namespace) -> Path:
    return Path(args.federation or os.environ.get("FEDGATE_FEDERATION") or DEFAULT_FEDERATION)


def sent_store(args: argparse.Namespace) -> SentStore:
    """The sent-request store for these options."""
    chosen = args.sent_dir or os.environ.get("FEDGATE_SENT_DIR")
    return SentStore(Path(chosen) if chosen else _federation(args).parent / "sent")


def missing_federation(path: Path) -> str:
    """What to do when the federation directory is not there: which setting chooses it."""
    return (
        f"no federation directory at {path}: pass --federation DIR or set FEDGATE_FEDERATION "
        f"(the development federation of `make run` is {DEFAULT_FEDERATION}, relative to the "
        "repository)"
    )


def keep_answer(args: argparse.Namespace, answer: Answer) -> None:
    """Keep a verified answer beside its request (``fedgate answers``); a disk that refuses
    costs the copy, not the answer just received, so this warns instead of failing."""
    try:
        sent_store(args).save_answer(answer.response.request_id, answer.signed)
    except OSError as exc:
        print(f"warning: the answer was not kept on disk: {exc}", file=sys.stderr)


def open_client(args: argparse.Namespace) -> FedgateClient:
    """A client for ``--member`` of ``--federation``; raises ``RegistryError``. Call it inside
    a running event loop (the gRPC channel binds to it)."""
    member = MemberId(args.member or os.environ.get("FEDGATE_MEMBER") or DEFAULT_MEMBER)
    federation = _federation(args)
    if not federation.is_dir():
        raise RegistryError(missing_federation(federation))
    try:
        return FedgateClient.from_federation(federation, member, endpoint=args.endpoint)
    except OSError as exc:
        raise RegistryError(f"cannot load the federation: {exc}") from exc
    except ValueError as exc:  # an --endpoint that does not parse or resolve
        raise InvalidArgument(str(exc)) from exc


# ----------------------------------------------------------------------------- sending


def _env(value: str | None, name: str) -> str:
    return value or os.environ.get(name, "")


def _person(args: argparse.Namespace) -> common_pb2.Person:
    """The officer from the options and the environment, checked before anything is signed."""
    role = _env(args.officer_role, "FEDGATE_OFFICER_ROLE") or "investigator"
    if role not in _ROLES:
        raise InvalidArgument(
            f"--officer-role (or FEDGATE_OFFICER_ROLE) {role!r} is not one of "
            f"{', '.join(sorted(_ROLES))}"
        )
    for option, variable in (
        ("officer_id", "FEDGATE_OFFICER_ID"),
        ("officer_name", "FEDGATE_OFFICER_NAME"),
    ):
        if not _env(getattr(args, option), variable).strip():
            flag = "--" + option.replace("_", "-")
            raise InvalidArgument(
                f"{flag} is required: give it, or set {variable} for the session "
                f"(export {variable}=…)"
            )
    return common_pb2.Person(
        id=_env(args.officer_id, "FEDGATE_OFFICER_ID"),
        name=_env(args.officer_name, "FEDGATE_OFFICER_NAME"),
        phone=_env(args.officer_phone, "FEDGATE_OFFICER_PHONE"),
        id_number=_env(args.officer_id_number, "FEDGATE_OFFICER_ID_NUMBER"),
        role=_ROLES[role],
    )


def _second_officer(args: argparse.Namespace) -> common_pb2.Person | None:
    if not (args.second_officer_id or args.second_officer_name):
        return None
    return common_pb2.Person(
        id=args.second_officer_id or "",
        name=args.second_officer_name or "",
        phone=args.second_officer_phone or "",
        role=common_pb2.ROLE_POLICE_INVESTIGATOR,
    )


def _target(command: ActionCommand, args: argparse.Namespace) -> str:
    kind = target_kind_of(command.action)
    if kind == "gateway":  # approvals, risk list changes: the gateway answers them itself
        return "gateway"
    if getattr(args, "all_members", False):
        if args.target:
            raise InvalidArgument(f"give --target or {_WIDE_FLAGS[command.action][0]}, not both")
        return ""
    if args.target:
        return str(args.target)
    if command.action in _WIDE_FLAGS:
        raise InvalidArgument(f"--target or {_WIDE_FLAGS[command.action][0]} is required")
    subject = command.subject(args) if command.subject is not None else None
    found = None
    if subject:
        found = bank_of_card(subject) if kind == "bank" else carrier_of_mobile(subject)
    if found is None:
        what = "card number of a federation bank" if kind == "bank" else "mobile number"
        raise InvalidArgument(f"--target is required: {subject or 'the subject'} is not a {what}")
    return found


def _legal_document(args: argparse.Namespace) -> common_pb2.LegalDocument:
    doc = common_pb2.LegalDocument(kind=_DOC_KINDS[args.doc_kind], number=args.doc_number or "")
    if args.doc_issued is not None:
        doc.issued_at.FromDatetime(args.doc_issued)
    return doc


def _run_action(command: ActionCommand, args: argparse.Namespace) -> int:
    return asyncio.run(_send(command, args))


async def _send(command: ActionCommand, args: argparse.Namespace) -> int:
    try:
        action = command.build(args)
        target = _target(command, args)
        officer = _person(args)
        client = open_client(args)
    except (FedgateError, ValueError) as exc:  # protobuf refuses out-of-range integers
        return local_error(args, exc)
    wide = getattr(args, "all_members", False)
    async with client:
        request = client.new_request(
            action=action,
            action_name=command.action,
            officer=officer,
            second_officer=_second_officer(args),
            target=target,
            case=common_pb2.CaseInfo(
                case_number=args.case or "",
                case_type=_CASE_TYPES[args.case_type],
                reason=args.case_reason or "",
            ),
            legal_document=_legal_document(args),
            purpose=args.purpose or "",
            urgency=_URGENCIES[args.urgency],
            deadline=args.deadline,
            original_request_id=args.original or "",
            approval_request_id=getattr(args, "approval", None) or "",
            targets=(
                request_pb2.TargetSet(group=_WIDE_GROUPS[_WIDE_FLAGS[command.action][0]])
                if wide
                else None
            ),
            disclosure=request_pb2.Disclosure(stage=HITS) if wide else None,
        )
        envelope = client.sign(request)
        if args.dry_run:
            print(request_document(request, envelope))
            return ExitCode.OK
        if wide:
            return await run_staged_command(args, client, request, sent_store(args))
        try:
            sent_store(args).save(request.request_id, envelope)
        except OSError as exc:
            return local_error(args, exc)
        try:
            submitted = await client.submit(envelope, timeout=args.timeout)
        except (FedgateError, ValueError) as exc:
            return emit(args, failure_outcome(exc, request.request_id), client.registry)
        if submitted.answer is not None:
            keep_answer(args, submitted.answer)
            return emit(args, answer_outcome(submitted.answer), client.registry)
        assert submitted.ticket is not None
        hint = f"follow it: fedgate ticket watch {submitted.ticket.ticket_id}"
        queued = Outcome(
            "queued",
            ExitCode.QUEUED,
            request.request_id,
            ticket=submitted.ticket,
            hints=(hint + " (same --federation and --member)",),
        )
        return emit(args, queued, client.registry)
