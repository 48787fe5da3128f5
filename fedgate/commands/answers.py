"""``fedgate answers list|show|fetch|upgrade|export``: read again what the federation answered.

Every request ``fedgate query``/``fedgate order`` sends is kept in the sent directory
(``--sent-dir``, ``$FEDGATE_SENT_DIR``, default ``sent/`` next to the federation directory), and
every answer that passed verification is kept beside it with its countersignature and audit
receipt. ``show`` and ``export`` verify the kept answer again against the kept request before
printing it (a file changed on disk fails verification, exit code 5). ``fetch`` asks the
gateway for its stored outcome of the request (``GatewayService.GetOutcome``), verifies it and
keeps it: for a terminal that lost its copy, or a ticket answered since.

Receipts come back before the federation's witnesses cosign the log (answers never wait for
them). ``show``, ``export`` and ``fetch`` upgrade a kept receipt that no witness cosigned yet
with the witnesses' cosigned checkpoint and a consistency proof (``AuditService.
GetCosignedCheckpoint``), check the upgrade against the registry's witness policy and keep it
in place of the old receipt; ``upgrade`` does the same for every kept answer (or the ids given).
Without the gateway the kept answer is still shown, verified, with a hint.

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
from fedgate.protojson import message_dict
from fedgate.registry import Registry
from fedgate.render import Outcome, format_time, render_json, table, verification_of
from fedgate.types import CHINA_TIME
from fedgate.v1 import envelope_pb2, gateway_service_pb2, request_pb2

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``answers`` command group to the top-level ``fedgate`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        "answers",
        help="list, show, fetch, upgrade and export the answers to requests this member sent",
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
    upgrade = sub.add_parser(
        "upgrade",
        help="add the witnesses' cosignatures to the kept receipts that have none yet",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    upgrade.add_argument(
        "request_ids", type=parse_request_id, nargs="*", metavar="ID",
        help="request ids (default: every kept answer whose receipt no witness cosigned yet)",
    )  # fmt: skip
    add_connection_options(upgrade, timeout=10.0)
    upgrade.set_defaults(func=_upgrade)
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
        answer, hints = await _with_witnesses(client, store, answer, timeout=args.timeout)
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
    return json.dumps(message_dict(decode_request(body)), ensure_ascii=False, indent=2)


# ----------------------------------------------------------------------------- witnesses


_SHOW_WAIT_S = 2.0
"""How long the gateway may wait for its witnesses when an answer is shown: reading an answer
should not stall on a slow witness (``upgrade`` allows the gateway's maximum)."""
_UPGRADE_WAIT_S = 5.0
_UPGRADE_TIMEOUT_S = 10.0


def _witnessed(answer: Answer, registry: Registry) -> bool:
    """Whether a witness's verified cosignature is on the receipt (an upgraded receipt's, or
    one the gateway already returned cosigned)."""
    return any(w.verified for w in verification_of(answer, registry=registry).witnesses)


async def _with_witnesses(
    client: FedgateClient,
    store: SentStore,
    answer: Answer,
    *,
    timeout: float | None,
    wait_s: float = _SHOW_WAIT_S,
) -> tuple[Answer, tuple[str, ...]]:
    """``answer`` with its receipt upgraded by the witnesses' cosigned checkpoint (verified,
    and kept in place of the old one) once they have cosigned; unchanged, with a hint saying
    why, while they have not or the gateway cannot be reached."""
    if _witnessed(answer, client.registry):
        return answer, ()
    request_id = answer.response.request_id
    try:
        receipt = await client.cosign_receipt(
            answer.receipt, wait_s=wait_s, timeout=timeout or _UPGRADE_TIMEOUT_S
        )
    except FedgateError as exc:
        return answer, (
            f"no witness has cosigned this receipt yet ({exc.message}); it is upgraded the "
            f"next time it is shown, or with: fedgate answers upgrade {request_id}",
        )
    signed = envelope_pb2.SignedResponse()
    signed.CopyFrom(answer.signed)
    signed.receipt.CopyFrom(receipt)
    store.save_answer(request_id, signed)
    return Answer(response=answer.response, signed=signed), ()


def _upgrade(args: argparse.Namespace) -> int:
    return asyncio.run(_upgrade_async(args))


async def _upgrade_async(args: argparse.Namespace) -> int:
    store = sent_store(args)
    try:
        wanted = list(args.request_ids) or [
            rid for rid in store.request_ids() if store.load_answer(rid) is not None
        ]
        client = open_client(args)
    except (FedgateError, OSError) as exc:
        return local_error(args, exc)
    rows: list[dict[str, Any]] = []
    failed = False
    async with client:
        for request_id in wanted:
            try:
                body, signed = _kept(store, request_id)
                answer = _verified(client, body, signed)
            except (FedgateError, ValueError) as exc:
                rows.append({"request_id": request_id, "state": "failed", "detail": str(exc)})
                failed = True
                continue
            if _witnessed(answer, client.registry):
                if args.request_ids:
                    rows.append({"request_id": request_id, "state": "already", "detail": ""})
                continue
            try:
                upgraded, hints = await _with_witnesses(
                    client, store, answer, timeout=args.timeout, wait_s=_UPGRADE_WAIT_S
                )
            except OSError as exc:
                return local_error(args, exc)
            witnesses = [
                w.name for w in verification_of(upgraded, registry=client.registry).witnesses
            ]
            rows.append(
                {
                    "request_id": request_id,
                    "state": "upgraded" if not hints else "not_yet",
                    "detail": ", ".join(witnesses) if not hints else hints[0],
                }
            )
    if args.json:
        print(json.dumps({"directory": str(store.directory), "receipts": rows},
                         ensure_ascii=False, indent=2))  # fmt: skip
    elif not rows:
        print(f"every kept receipt in {store.directory} is already cosigned by the witnesses")
    else:
        words = {"upgraded": "cosigned by", "not_yet": "not yet:", "already": "already cosigned",
                 "failed": "FAILED:"}  # fmt: skip
        for row in rows:
            print(f"{row['request_id']}  {words[row['state']]} {row['detail']}".rstrip())
    if failed:
        return ExitCode.VERIFICATION_FAILED
    return ExitCode.OK if all(r["state"] != "not_yet" for r in rows) else ExitCode.UNAVAILABLE


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
                answer, hints = await _with_witnesses(client, store, answer, timeout=args.timeout)
            except OSError as exc:
                return local_error(args, exc)
            return emit(args, answer_outcome(answer, hints=hints), client.registry)
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
