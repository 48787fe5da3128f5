"""``fedgate staff``: stationed staff work their agency's queue from a terminal.

    fedgate staff queue   --federation DIR --member bank.icbc --staff icbc.zhang
    fedgate staff show    REQUEST_ID ...
    fedgate staff claim   REQUEST_ID ...
    fedgate staff release REQUEST_ID ...
    fedgate staff answer  REQUEST_ID --result-json '{"accountNumber": "...", ...}' ...
    fedgate staff answer  REQUEST_ID --status not_found --detail "no such account" ...
    fedgate staff reject  REQUEST_ID --reason "the legal document is not legible" ...

The command calls the agency node's ``StaffService`` with the agency's member credentials from
the federation directory and the staff id in the ``x-fedgate-staff`` metadata; the node signs
the answer. ``--result-json``/``--result-file`` hold the result message of the query's action
in the protobuf JSON mapping (e.g. ``AccountHolderResult`` for ``account_holder``).

Exit codes: 0 done, 1 the node refused (the reason is printed), 2 usage or local error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from fedgate.actions import RESULT_FIELD
from fedgate.commands.users import add_user_parser
from fedgate.envelope import decode_request, decode_response
from fedgate.errors import FedgateError, FieldViolation, InvalidArgument, RegistryError
from fedgate.federation import check_member_id
from fedgate.protojson import message_dict
from fedgate.registry import Registry
from fedgate.render import format_time, table
from fedgate.status import error_from_rpc
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import (
    common_pb2,
    envelope_pb2,
    request_pb2,
    staff_service_pb2,
    staff_service_pb2_grpc,
    ticket_pb2,
)
from fedgate.web.auth import Role
from fedgate.web.protoview import mask_tree

__all__ = ["STAFF_METADATA", "register"]

STAFF_METADATA = "x-fedgate-staff"
_STATES = {
    "open": ticket_pb2.TICKET_STATE_UNSPECIFIED,
    "waiting": ticket_pb2.TICKET_STATE_WAITING,
    "claimed": ticket_pb2.TICKET_STATE_CLAIMED,
    "answered": ticket_pb2.TICKET_STATE_ANSWERED,
    "expired": ticket_pb2.TICKET_STATE_EXPIRED,
}
_ANSWER_STATUS = {
    "ok": request_pb2.RESPONSE_STATUS_OK,
    "not_found": request_pb2.RESPONSE_STATUS_NOT_FOUND,
    "refused": request_pb2.RESPONSE_STATUS_REFUSED,
    "invalid": request_pb2.RESPONSE_STATUS_INVALID,
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``staff`` command group to the top-level ``fedgate`` parser."""
    staff = subparsers.add_parser(
        "staff",
        help="stationed staff: list, claim, answer and reject queued queries",
        description="Work the agency node's staff queue with the agency's credentials.",
    )
    sub = staff.add_subparsers(dest="staff_command", required=True, metavar="COMMAND")
    add_user_parser(sub, Role.STAFF)

    queue = sub.add_parser("queue", help="list the queue, earliest deadline first")
    _common(queue)
    queue.add_argument(
        "--state", choices=sorted(_STATES), default="open", help="which items (default: open)"
    )
    queue.add_argument("--json", action="store_true", help="print the items as JSON")
    queue.set_defaults(func=_queue)

    show = sub.add_parser("show", help="print one query in full (the request as JSON)")
    _common(show, with_id=True)
    show.set_defaults(func=_show)

    claim = sub.add_parser("claim", help="claim a waiting query")
    _common(claim, with_id=True)
    claim.set_defaults(func=_claim)

    release = sub.add_parser("release", help="give a claimed query back to the queue")
    _common(release, with_id=True)
    release.set_defaults(func=_release)

    answer = sub.add_parser(
        "answer",
        help="answer a query (claims it first if it is waiting)",
        description="Answer with the action's result in protobuf JSON (--result-json or "
        "--result-file), or with --status not_found|refused|invalid and --detail.",
    )
    _common(answer, with_id=True)
    given = answer.add_mutually_exclusive_group(required=True)
    given.add_argument("--result-json", help="the result message as JSON")
    given.add_argument("--result-file", type=Path, help="a file holding the result as JSON")
    given.add_argument("--status", choices=sorted(set(_ANSWER_STATUS) - {"ok"}))
    answer.add_argument("--detail", default="", help="why (required with --status)")
    answer.set_defaults(func=_answer)

    reject = sub.add_parser("reject", help="refuse a query, with the reason shown to police")
    _common(reject, with_id=True)
    reject.add_argument("--reason", required=True, help="why, 1 to 500 characters")
    reject.set_defaults(func=_reject)


def _common(parser: argparse.ArgumentParser, *, with_id: bool = False) -> None:
    if with_id:
        parser.add_argument("request_id", help="the query's request id")
    parser.add_argument(
        "--federation",
        type=Path,
        metavar="DIR",
        help="federation directory (default: $FEDGATE_FEDERATION or state/federation)",
    )
    parser.add_argument("--member", required=True, help="your agency's member id")
    parser.add_argument("--staff", required=True, help="your staff id, e.g. icbc.zhang")
    parser.add_argument("--endpoint", help="the node's HOST:PORT (default: from the registry)")


class _Session:
    """A blocking StaffService connection as one staff member of one agency."""

    def __init__(self, args: argparse.Namespace) -> None:
        member = check_member_id(args.member)
        federation = Path(
            args.federation or os.environ.get("FEDGATE_FEDERATION") or "state/federation"
        )
        if not federation.is_dir():
            raise RegistryError(
                f"no federation directory at {federation}: pass --federation DIR or set "
                "FEDGATE_FEDERATION"
            )
        registry = Registry.load_dir(federation)
        credentials = MemberCredentials.load(federation, member)
        endpoint = args.endpoint or registry.member(member).endpoint
        self._channel = grpc.secure_channel(
            endpoint, channel_credentials(credentials), options=channel_options(MemberId(member))
        )
        self.stub = staff_service_pb2_grpc.StaffServiceStub(self._channel)
        self.metadata = ((STAFF_METADATA, str(args.staff)),)

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=15.0)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def close(self) -> None:
        self._channel.close()


def _run(args: argparse.Namespace, work: Any) -> int:
    try:
        session = _Session(args)
    except FedgateError as exc:
        print(f"fedgate: error: {exc.message}", file=sys.stderr)
        return 2
    try:
        result: int = work(session)
        return result
    except FedgateError as exc:
        print(f"fedgate: refused ({exc.reason}): {exc.message}", file=sys.stderr)
        for v in getattr(exc, "violations", ()):
            print(f"  {v.field}: {v.description}", file=sys.stderr)
        return 1
    finally:
        session.close()


# ---------------------------------------------------------------------- commands


def _queue(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        items = _list(session, _STATES[args.state])
        if args.json:
            print(json.dumps([_item_json(i) for i in items], ensure_ascii=False, indent=2))
            return 0
        if not items:
            print(f"the {args.state} queue of {args.member} is empty")
            return 0
        rows = [_item_row(i) for i in items]
        header = ("REQUEST ID", "ACTION", "FROM", "OFFICER", "CASE", "URGENCY", "DEADLINE",
                  "STATE", "CLAIMED BY")  # fmt: skip
        print("\n".join(table(header, rows, indent="")))
        return 0

    return _run(args, work)


def _show(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        for state in (s for name, s in _STATES.items() if name != "open"):
            for item in _list(session, state):
                if item.request_id == args.request_id:
                    doc = _item_json(item, full=True)
                    if item.claimed_by != args.staff:
                        # As on the staff console: identifiers in clear only to the holder of
                        # the claim (a claim is audited), masked for everyone else.
                        doc = mask_tree(doc)
                    print(json.dumps(doc, ensure_ascii=False, indent=2))
                    return 0
        print(f"fedgate: no queued request {args.request_id} at {args.member}", file=sys.stderr)
        return 1

    return _run(args, work)


def _claim(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        reply = session.call(
            "ClaimQueueItem", staff_service_pb2.ClaimQueueItemRequest(request_id=args.request_id)
        )
        print(f"claimed {args.request_id} ({reply.item.action}) for {args.staff}")
        return 0

    return _run(args, work)


def _release(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        session.call(
            "ReleaseQueueItem",
            staff_service_pb2.ReleaseQueueItemRequest(request_id=args.request_id),
        )
        print(f"released {args.request_id}: it is waiting again")
        return 0

    return _run(args, work)


def _answer(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        claimed = session.call(
            "ClaimQueueItem", staff_service_pb2.ClaimQueueItemRequest(request_id=args.request_id)
        )
        answer = _build_answer(args, claimed.item.action)
        reply = session.call(
            "AnswerQueueItem",
            staff_service_pb2.AnswerQueueItemRequest(request_id=args.request_id, answer=answer),
        )
        _print_signed(reply.response)
        return 0

    return _run(args, work)


def _reject(args: argparse.Namespace) -> int:
    def work(session: _Session) -> int:
        reply = session.call(
            "RejectQueueItem",
            staff_service_pb2.RejectQueueItemRequest(
                request_id=args.request_id, reason=args.reason
            ),
        )
        _print_signed(reply.response)
        return 0

    return _run(args, work)


# ---------------------------------------------------------------------- helpers


def _build_answer(args: argparse.Namespace, action: str) -> request_pb2.Response:
    if args.status is not None:
        if not args.detail.strip():
            raise InvalidArgument.for_fields([FieldViolation("--detail", "say why")])
        return request_pb2.Response(status=_ANSWER_STATUS[args.status], detail=args.detail)
    text = args.result_json
    if text is None:
        try:
            text = Path(args.result_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {args.result_file}: {exc}") from exc
    field = RESULT_FIELD.get(action)
    if field is None:
        raise InvalidArgument(f"no result type is known for the action {action!r}")
    answer = request_pb2.Response(status=request_pb2.RESPONSE_STATUS_OK, detail=args.detail)
    result = getattr(answer, field)
    try:
        parsed = json_format.Parse(text, type(result)())
    except json_format.ParseError as exc:
        raise InvalidArgument.for_fields(
            [FieldViolation("--result-json", f"not a {type(result).__name__}: {exc}")]
        ) from exc
    result.SetInParent()
    result.CopyFrom(parsed)
    return answer


def _list(session: _Session, state: int) -> list[staff_service_pb2.QueueItem]:
    items: list[staff_service_pb2.QueueItem] = []
    token = ""
    while True:
        page = session.call(
            "ListQueue",
            staff_service_pb2.ListQueueRequest(
                state=state,  # type: ignore[arg-type]
                page=_page(token),
            ),
        )
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


def _page(token: str) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=500, page_token=token)


def _when(item: staff_service_pb2.QueueItem, field: str) -> str:
    if not item.HasField(field):  # type: ignore[arg-type]
        return ""
    return format_time(getattr(item, field).ToDatetime(tzinfo=UTC))


def _item_row(item: staff_service_pb2.QueueItem) -> tuple[str, ...]:
    urgency = item.urgency and _enum_name(item, "urgency", "URGENCY_")
    return (
        item.request_id,
        item.action,
        item.requesting_agency,
        f"{item.officer.name} ({item.officer.id})",
        item.case.case_number,
        urgency or "",
        _when(item, "deadline"),
        _enum_name(item, "state", "TICKET_STATE_"),
        item.claimed_by,
    )


def _enum_name(item: staff_service_pb2.QueueItem, field: str, prefix: str) -> str:
    descriptor = item.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None
    return str(descriptor.values_by_number[getattr(item, field)].name).removeprefix(prefix).lower()


def _item_json(item: staff_service_pb2.QueueItem, *, full: bool = False) -> dict[str, Any]:
    doc = message_dict(item)
    doc.pop("request", None)
    if full:
        doc["request"] = message_dict(decode_request(item.request.body))
    return doc


def _print_signed(signed: envelope_pb2.SignedEnvelope) -> None:
    response = decode_response(signed.body)
    status = request_pb2.ResponseStatus.Name(response.status).removeprefix("RESPONSE_STATUS_")
    print(f"signed answer to {response.request_id}")
    rows = [
        ("status", status.lower()),
        ("responder", response.responder),
        ("answered by", response.answered_by),
        ("answered at", format_time(response.answered_at.ToDatetime(tzinfo=UTC))),
        ("result", response.WhichOneof("result") or "-"),
        ("detail", response.detail or "-"),
        ("signing key", signed.key_id),
        ("request hash", response.request_hash.hex()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
