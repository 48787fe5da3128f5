"""``fedgate appeal list|show|decide``: the appeals (Art. 32) against a police unit's orders.

Banks and carriers file a restricted person's appeal through the gateway to the unit that gave
the order (their stationed staff's console); the unit lists its appeals here and decides within
the deadline (3 working days by default):

    fedgate appeal list --state pending            # the appeals waiting for this unit
    fedgate appeal show <appeal id> --json
    fedgate appeal decide <appeal id> --uphold --reason 经核查账户确系涉诈 \\
        --doc-number '穗公(反诈)申核字〔2026〕00001号'
    fedgate appeal decide <appeal id> --lift --reason 经核查为正常货款 \\
        --doc-number '穗公(反诈)申核字〔2026〕00002号' \\
        --release-doc-number '穗公(反诈)解字〔2026〕00003号'

A lift first sends the matching release or restore order (stop-payment release, freeze release
or number restore) through the gateway, citing the appealed order, and then the decision citing
that release: the agency lifts the restriction when it executes the release. ``--json`` prints
one JSON object with times in ISO 8601, China time (+08:00). Exit codes as ``fedgate order``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC
from typing import Any

from google.protobuf.message import Message

from fedgate.client import FedgateClient
from fedgate.commands._police import (
    EXIT_CODES_EPILOG,
    ExitCode,
    PoliceParser,
    add_connection_options,
    emit,
    failure_outcome,
    keep_answer,
    local_error,
    open_client,
    parse_request_id,
    sent_store,
)
from fedgate.errors import FedgateError, InvalidArgument, NotFound, RuleViolated
from fedgate.render import format_time
from fedgate.types import CHINA_TIME
from fedgate.v1 import appeal_pb2, bank_pb2, carrier_pb2, common_pb2, request_pb2

__all__ = ["register"]

_STATES = {
    "pending": appeal_pb2.APPEAL_STATE_PENDING,
    "upheld": appeal_pb2.APPEAL_STATE_UPHELD,
    "lifted": appeal_pb2.APPEAL_STATE_LIFTED,
}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``appeal`` command group to the top-level ``fedgate`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        "appeal",
        help="list and decide appeals against this unit's orders (Art. 32)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    sub = group.add_subparsers(
        dest="appeal_command", required=True, metavar="COMMAND", parser_class=PoliceParser
    )
    listing = sub.add_parser("list", help="appeals this member may see, oldest first")
    listing.add_argument("--state", choices=sorted(_STATES), help="only appeals in this state")
    listing.add_argument("--overdue", action="store_true", help="only overdue appeals")
    add_connection_options(listing, timeout=10.0)
    listing.set_defaults(func=lambda args: asyncio.run(_list(args)))

    show = sub.add_parser("show", help="one appeal")
    show.add_argument("appeal_id", type=parse_request_id, metavar="ID", help="the appeal id")
    add_connection_options(show, timeout=10.0)
    show.set_defaults(func=lambda args: asyncio.run(_show(args)))

    decide = sub.add_parser(
        "decide", help="uphold or lift (a lift sends the release or restore first)"
    )
    decide.add_argument("appeal_id", type=parse_request_id, metavar="ID", help="the appeal id")
    outcome = decide.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--uphold", action="store_true", help="the restriction stands")
    outcome.add_argument("--lift", action="store_true", help="lift the restriction")
    decide.add_argument("--reason", required=True, help="why (told to the appellant)")
    decide.add_argument("--doc-number", required=True, help="申诉核查决定 document number")
    decide.add_argument(
        "--release-doc-number", help="--lift: the release notice 解除通知书 number (required)"
    )
    decide.add_argument("--officer-id", help="badge number 警号 ($FEDGATE_OFFICER_ID)")
    decide.add_argument("--officer-name", help="name ($FEDGATE_OFFICER_NAME)")
    add_connection_options(decide, timeout=15.0)
    decide.set_defaults(func=lambda args: asyncio.run(_decide(args)))


def _time(record: Message, field: str) -> str | None:
    if not record.HasField(field):
        return None
    stamp = getattr(record, field)
    return str(stamp.ToDatetime(tzinfo=UTC).astimezone(CHINA_TIME).isoformat())


def _document(record: appeal_pb2.AppealRecord) -> dict[str, Any]:
    return {
        "appeal_id": record.appeal_id,
        "state": _STATE_NAMES.get(record.state, "unknown"),
        "overdue": record.overdue,
        "order_request_id": record.order_request_id,
        "order_action": record.order_action,
        "subject": record.subject,
        "case_number": record.case_number,
        "filed_by": record.filed_by,
        "ordering_agency": record.ordering_agency,
        "appellant": record.appellant,
        "grounds": record.grounds,
        "filed_at": _time(record, "filed_at"),
        "due_at": _time(record, "due_at"),
        "decided_at": _time(record, "decided_at"),
        "decided_by": record.decided_by or None,
        "decided_officer": record.decided_officer or None,
        "decision_reason": record.decision_reason or None,
        "lift_request_id": record.lift_request_id or None,
    }


def _line(record: appeal_pb2.AppealRecord) -> str:
    state = _STATE_NAMES.get(record.state, "unknown") + (" OVERDUE" if record.overdue else "")
    return (
        f"{record.appeal_id}  {state:<16} {record.order_action:<15} {record.subject}  "
        f"{record.filed_by} → {record.ordering_agency}  due {format_time(record.due_at)}"
    )


def _print(args: argparse.Namespace, records: list[appeal_pb2.AppealRecord]) -> None:
    if args.json:
        print(json.dumps({"appeals": [_document(r) for r in records]}, ensure_ascii=False))
        return
    if not records:
        print("no appeals")
    for record in records:
        print(_line(record))


async def _list(args: argparse.Namespace) -> int:
    try:
        client = open_client(args)
    except FedgateError as exc:
        return local_error(args, exc)
    async with client:
        try:
            records = await client.list_appeals(
                state=_STATES.get(args.state or "", appeal_pb2.APPEAL_STATE_UNSPECIFIED),
                overdue_only=args.overdue,
                timeout=args.timeout,
            )
        except FedgateError as exc:
            return emit(args, failure_outcome(exc, ""), client.registry)
    _print(args, records)
    return ExitCode.OK


async def _one(client: FedgateClient, appeal_id: str, timeout: float) -> appeal_pb2.AppealRecord:
    found = await client.list_appeals(appeal_id=appeal_id, timeout=timeout)
    if not found:
        raise NotFound(f"no appeal {appeal_id} that {client.member_id} may see")
    return found[0]


async def _show(args: argparse.Namespace) -> int:
    try:
        client = open_client(args)
    except FedgateError as exc:
        return local_error(args, exc)
    async with client:
        try:
            record = await _one(client, args.appeal_id, args.timeout)
        except FedgateError as exc:
            return emit(args, failure_outcome(exc, args.appeal_id), client.registry)
    if args.json:
        print(json.dumps(_document(record), ensure_ascii=False))
    else:
        print(_line(record))
        print(
            f"  case {record.case_number}; appellant {record.appellant}; grounds: {record.grounds}"
        )
        if record.decided_by:
            print(
                f"  decided by {record.decided_by} ({record.decided_officer}) at "
                f"{format_time(record.decided_at)}: {record.decision_reason}"
            )
    return ExitCode.OK


def _lift_action(record: appeal_pb2.AppealRecord, reason: str) -> tuple[str, Message]:
    """The release or restore order that lifts the appealed order."""
    if record.order_action == "stop_payment":
        return "stop_payment_release", bank_pb2.StopPaymentReleaseOrder(
            account_number=record.subject, reason=reason
        )
    if record.order_action == "freeze":
        return "freeze_release", bank_pb2.FreezeReleaseOrder(
            account_number=record.subject, reason=reason
        )
    if record.order_action in ("number_suspend", "number_block"):
        return "number_restore", carrier_pb2.NumberRestoreOrder(
            phone_number=record.subject, reason=reason
        )
    raise InvalidArgument(f"an appeal against a {record.order_action} cannot be lifted here")


def _officer(args: argparse.Namespace) -> common_pb2.Person:
    officer_id = args.officer_id or os.environ.get("FEDGATE_OFFICER_ID", "")
    name = args.officer_name or os.environ.get("FEDGATE_OFFICER_NAME", "")
    if not officer_id or not name:
        raise InvalidArgument(
            "--officer-id and --officer-name are required (or FEDGATE_OFFICER_ID and "
            "FEDGATE_OFFICER_NAME)"
        )
    return common_pb2.Person(id=officer_id, name=name, role=common_pb2.ROLE_POLICE_INVESTIGATOR)


def _request(
    client: FedgateClient,
    args: argparse.Namespace,
    *,
    name: str,
    action: Message,
    target: str,
    case: str,
    kind: common_pb2.LegalDocumentKind.ValueType,
    number: str,
    original: str = "",
) -> request_pb2.Request:
    return client.new_request(
        action=action,
        action_name=name,
        officer=_officer(args),
        target=target,
        case=common_pb2.CaseInfo(case_number=case, case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD),
        legal_document=common_pb2.LegalDocument(kind=kind, number=number),
        purpose=f"申诉核查 {args.appeal_id}",
        original_request_id=original,
    )


async def _send(
    client: FedgateClient, args: argparse.Namespace, request: request_pb2.Request
) -> request_pb2.Response:
    envelope = client.sign(request)
    sent_store(args).save(request.request_id, envelope)
    submitted = await client.submit(envelope, timeout=args.timeout)
    if submitted.answer is None:
        raise RuleViolated(f"{request.request_id} was queued for staff; follow it as a ticket")
    keep_answer(args, submitted.answer)
    return submitted.answer.response


async def _decide(args: argparse.Namespace) -> int:
    if args.lift and not args.release_doc_number:
        return local_error(args, InvalidArgument("--lift needs --release-doc-number"))
    try:
        client = open_client(args)
        _officer(args)
    except FedgateError as exc:
        return local_error(args, exc)
    async with client:
        lift_id = ""
        try:
            record = await _one(client, args.appeal_id, args.timeout)
            if args.lift:
                name, action = _lift_action(record, args.reason)
                release = _request(
                    client,
                    args,
                    name=name,
                    action=action,
                    target=record.filed_by,
                    case=record.case_number,
                    kind=common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
                    number=args.release_doc_number,
                    original=record.order_request_id,
                )
                answer = await _send(client, args, release)
                if answer.status != request_pb2.RESPONSE_STATUS_OK:
                    raise RuleViolated(
                        f"{record.filed_by} did not execute the {name} {release.request_id}: "
                        f"{answer.detail}; the appeal stays pending"
                    )
                lift_id = release.request_id
            decision = _request(
                client,
                args,
                name="appeal_decision",
                action=appeal_pb2.AppealDecision(
                    appeal_id=args.appeal_id,
                    outcome=(
                        appeal_pb2.APPEAL_OUTCOME_LIFT
                        if args.lift
                        else appeal_pb2.APPEAL_OUTCOME_UPHOLD
                    ),
                    reason=args.reason,
                    lift_request_id=lift_id,
                ),
                target="gateway",
                case=record.case_number,
                kind=common_pb2.LEGAL_DOCUMENT_KIND_APPEAL_DECISION,
                number=args.doc_number,
            )
            await _send(client, args, decision)
            after = await _one(client, args.appeal_id, args.timeout)
        except OSError as exc:
            return local_error(args, exc)
        except (FedgateError, ValueError) as exc:
            return emit(args, failure_outcome(exc, args.appeal_id), client.registry)
    if args.json:
        print(json.dumps(_document(after), ensure_ascii=False))
    else:
        print(_line(after))
        if lift_id:
            print(f"  lifted by {lift_id}")
    return ExitCode.OK
