"""``fedgate answers list|show|fetch|export``: read again what the federation answered.

Every request ``fedgate query``/``fedgate order`` sends is kept in the sent directory
(``--sent-dir``, ``$FEDGATE_SENT_DIR``, default ``sent/`` next to the federation directory), and
every answer that passed verification is kept beside it with its countersignature and audit
receipt. ``show`` and ``export`` verify the kept answer again against the kept request before
printing it (a file changed on disk fails verification, exit code 5). ``fetch`` asks the
gateway for its stored outcome of the request (``GatewayService.GetOutcome``), verifies it and
keeps it: for a terminal that lost its copy, or a ticket answered since.

Times are China Standard Time in text and ISO 8601 with offset in ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToJson

from fedgate.client import Answer, FedgateClient, verify_signed_response
from fedgate.commands._police import (
    EXIT_CODES_EPILOG,
    ExitCode,
    PoliceParser,
    add_connection_options,
    answer_outcome,
    emit,
    failure_outcome,
    local_error,
    open_client,
    parse_request_id,
    sent_store,
)
from fedgate.commands._sent import SentStore
from fedgate.envelope import decode_request
from fedgate.errors import FedgateError, NotFound, VerificationError
from fedgate.render import Outcome, format_time, render_json, table, verification_of
from fedgate.types import CHINA_TIME
from fedgate.v1 import envelope_pb2, gateway_service_pb2, request_pb2

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``answers`` command group to the top-level ``fedgate`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        "answers",
        help="list, show, fetch and export the answers to requests this member sent",
        description=__doc__,
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    sub = group.add_subparsers(
        dest="answers_command", required=True, metavar="COMMAND", parser_class=PoliceParser
    )
    listing = sub.add_parser("list", help="the requests kept here and their answers")
    listing.add_argument(
        "--last",
        action="store_true",
        help="print only the id of the latest request (for scripts: ID=$(fedgate answers list"
        " --last))",
    )
    add_connection_options(listing, timeout=None)
    listing.set_defaults(func=_list)
    for name, help_text, func in (
        ("show", "verify the kept answer again and print it", _show),
        ("fetch", "ask the gateway for its stored outcome, verify it and keep it", _fetch),
        ("export", "the request and its answer as one JSON document, verified", _export),
    ):
        parser = sub.add_parser(name, help=help_text, epilog=EXIT_CODES_EPILOG,
                                formatter_class=formatter)  # fmt: skip
        parser.add_argument("request_id", type=parse_request_id, metavar="ID", help="request id")
        add_connection_options(parser, timeout=10.0)
        if name == "export":
            parser.add_argument(
                "--out", type=Path, metavar="FILE", help="write here (default: standard output)"
            )
        parser.set_defaults(func=func)


# ----------------------------------------------------------------------------- list


def _list(args: argparse.Namespace) -> int:
    store = sent_store(args)
    rows: list[dict[str, Any]] = []
    try:
        for request_id in store.request_ids():
            body = store.load(request_id)
            if body is None:
                continue
            request = decode_request(body)
            signed = store.load_answer(request_id)
            status = "—"
            if signed is not None:
                response = request_pb2.Response.FromString(signed.response.body)
                status = request_pb2.ResponseStatus.Name(response.status).removeprefix(
                    "RESPONSE_STATUS_"
                )
            issued = request.issued_at.ToDatetime(tzinfo=CHINA_TIME)
            rows.append(
                {
                    "request_id": request_id,
                    "issued_at": issued.isoformat(timespec="seconds"),
                    "action": request.WhichOneof("action") or "",
                    "target": request.target_agency,
                    "case": request.case.case_number,
                    "answer": status,
                }
            )
    except (FedgateError, OSError) as exc:
        return local_error(args, exc)
    if args.last:
        if not rows:
            return local_error(args, NotFound(f"no requests kept in {store.directory}"))
        print(rows[-1]["request_id"])
        return ExitCode.OK
    if args.json:
        print(json.dumps({"directory": str(store.directory), "requests": rows},
                         ensure_ascii=False, indent=2))  # fmt: skip
        return ExitCode.OK
    if not rows:
        print(f"no requests kept in {store.directory}")
        return ExitCode.OK
    lines = table(
        ("request id", "sent (China time)", "action", "target", "case", "answer"),
        [
            (r["request_id"], format_time(_parse_iso(r["issued_at"])), r["action"], r["target"],
             r["case"], r["answer"])
            for r in rows
        ],
    )  # fmt: skip
    print("\n".join(lines))
    return ExitCode.OK


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ----------------------------------------------------------------------------- show, export


def _kept(store: SentStore, request_id: str) -> tuple[bytes, envelope_pb2.SignedResponse]:
    body = store.load(request_id)
    if body is None:
        raise NotFound(f"request {request_id} is not kept in {store.directory} (pass --sent-dir)")
    signed = store.load_answer(request_id)
    if signed is None:
        raise NotFound(
            f"no answer to {request_id} is kept in {store.directory}; "
            f"ask the gateway for it: fedgate answers fetch {request_id}"
        )
    return body, signed


def _verified(client: FedgateClient, body: bytes, signed: envelope_pb2.SignedResponse) -> Answer:
    request = decode_request(body)
    return verify_signed_response(
        signed,
        request_body=body,
        request_id=request.request_id,
        target=request.target_agency,
        registry=client.registry,
        gateway_id=client.gateway_id,
    )


def _show(args: argparse.Namespace) -> int:
    return asyncio.run(_show_or_export(args, export=False))


def _export(args: argparse.Namespace) -> int:
    return asyncio.run(_show_or_export(args, export=True))


async def _show_or_export(args: argparse.Namespace, *, export: bool) -> int:
    store = sent_store(args)
    try:
        body, signed = _kept(store, args.request_id)
        client = open_client(args)
    except (FedgateError, OSError) as exc:
        return local_error(args, exc)
    async with client:
        try:
            answer = _verified(client, body, signed)
        except (FedgateError, ValueError) as exc:
            error = VerificationError(f"the answer kept for {args.request_id} fails: {exc}")
            outcome = Outcome(
                "verification_failed", ExitCode.VERIFICATION_FAILED, args.request_id, error=error
            )
            return emit(args, outcome, client.registry)
        hints: tuple[str, ...] = ()
        if not verification_of(answer, registry=client.registry).witnesses:
            hints = (
                "no witness had cosigned this receipt yet; fedgate answers fetch "
                f"{args.request_id} asks the gateway for one against its latest checkpoint",
            )
        outcome = answer_outcome(answer, hints=hints)
        if not export:
            return emit(args, outcome, client.registry)
        doc = json.loads(render_json(outcome, registry=client.registry))
        doc["request"] = json.loads(render_json_request(body))
        doc["request_envelope_b64"] = base64.b64encode(
            store.path(args.request_id).read_bytes()
        ).decode()
        doc["signed_response_b64"] = base64.b64encode(signed.SerializeToString()).decode()
        text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        try:
            if args.out is None:
                sys.stdout.write(text)
            else:
                args.out.write_text(text, encoding="utf-8")
                print(f"wrote {args.out}", file=sys.stderr)
        except OSError as exc:
            return local_error(args, exc)
        return outcome.exit_code


def render_json_request(body: bytes) -> str:
    """The decoded request as JSON (protobuf field names)."""
    return MessageToJson(decode_request(body), preserving_proto_field_name=True)


# ----------------------------------------------------------------------------- fetch


def _fetch(args: argparse.Namespace) -> int:
    return asyncio.run(_fetch_async(args))


async def _fetch_async(args: argparse.Namespace) -> int:
    store = sent_store(args)
    try:
        body = store.load(args.request_id)
        if body is None:
            raise NotFound(
                f"request {args.request_id} is not kept in {store.directory}: its answer cannot "
                "be verified here (pass --sent-dir)"
            )
        client = open_client(args)
    except (FedgateError, OSError) as exc:
        return local_error(args, exc)
    async with client:
        try:
            reply, answer = await client.get_outcome(
                args.request_id, request_body=body, timeout=args.timeout
            )
        except (FedgateError, ValueError) as exc:
            return emit(args, failure_outcome(exc, args.request_id), client.registry)
        if answer is not None:
            try:
                store.save_answer(args.request_id, answer.signed)
            except OSError as exc:
                return local_error(args, exc)
            return emit(args, answer_outcome(answer), client.registry)
        return emit(args, _unanswered(reply), client.registry)


def _unanswered(reply: gateway_service_pb2.GetOutcomeResponse) -> Outcome:
    rid = reply.request_id
    if reply.state == gateway_service_pb2.OUTCOME_STATE_REFUSED:
        refusal = FedgateError(f"the gateway refused it: {reply.refusal}")
        return Outcome("refused", ExitCode.REFUSED, rid, error=refusal)
    if reply.state == gateway_service_pb2.OUTCOME_STATE_PENDING:
        hint = f"not answered yet; follow it: fedgate ticket watch {rid}"
        return Outcome("queued", ExitCode.QUEUED, rid, hints=(hint,))
    gone = FedgateError(f"the agency gave no answer: {reply.refusal}")
    return Outcome("unavailable", ExitCode.UNAVAILABLE, rid, error=gone)
