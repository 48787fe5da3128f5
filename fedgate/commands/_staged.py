"""``fedgate query accounts-by-id --all-banks`` / ``sim-count --all-carriers``: both stages of a
staged disclosure (``fedgate.disclosure``) in one command.

Stage 1 asks every bank (carrier) hit / no hit and prints a table of the answers; stage 2 asks
the members that hit for the details, citing stage 1, and prints each verified answer as
``fedgate query`` does. ``--json`` prints one object: ``stage1`` (request id, one row per
member) and ``stage2`` (request id, the stage it cites, one answer document per member, or the
gateway's refusal), or ``null`` when no member hit.

Exit code: the worst outcome of either stage, in the order 5 (an answer failed verification),
3 (refused), 4 (unavailable), 10 (queued for staff), 1 (no member hit, or one declined), 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fedgate.client import FanOutItem, FedgateClient
from fedgate.commands._exit import (
    ExitCode,
    answer_outcome,
    exit_code_for_refusal,
    failure_outcome,
)
from fedgate.commands._sent import SentStore
from fedgate.disclosure import hit_of
from fedgate.errors import AgencyUnavailable, FedgateError
from fedgate.registry import Registry
from fedgate.render import Outcome, render_json, render_text, table
from fedgate.staged import details_request, hit_members
from fedgate.v1 import request_pb2

__all__ = ["run_staged_command"]

_WORST_FIRST = (
    ExitCode.VERIFICATION_FAILED,
    ExitCode.REFUSED,
    ExitCode.UNAVAILABLE,
    ExitCode.QUEUED,
    ExitCode.AGENCY_DECLINED,
)


def _worst(codes: list[int]) -> int:
    return next((c for c in _WORST_FIRST if c in codes), ExitCode.OK)


def _name(member: str, registry: Registry) -> str:
    found = registry.find(member)
    return f"{member} ({found.name_zh})" if found is not None else member


def _item_outcome(item: FanOutItem, request_id: str) -> Outcome:
    """One member's item as a police command's outcome (its exit code and its printing)."""
    if item.answer is not None:
        return answer_outcome(item.answer)
    if item.ticket is not None:
        hint = f"follow it: fedgate ticket watch {item.ticket.ticket_id}"
        return Outcome("queued", ExitCode.QUEUED, request_id, ticket=item.ticket, hints=(hint,))
    if item.error is not None:
        code = exit_code_for_refusal(item.error)
        return Outcome("refused", code, request_id, error=item.error)
    error = AgencyUnavailable(item.no_answer)
    return Outcome("unavailable", ExitCode.UNAVAILABLE, request_id, error=error)


def _hit_cell(item: FanOutItem) -> tuple[str, str, int]:
    """(answer text, receipt text, exit code) of one stage-1 item."""
    if item.answer is not None:
        hit = hit_of(item.answer.response)
        receipt = f"entry {item.answer.receipt.leaf_index}"
        if hit is None:  # a refusal by the member (NOT_FOUND, INVALID …): no hit
            status = request_pb2.ResponseStatus.Name(item.answer.response.status)
            return f"no hit ({status.removeprefix('RESPONSE_STATUS_')})", receipt, 0
        return ("HIT" if hit else "no hit"), receipt, 0
    outcome = _item_outcome(item, "")
    if item.ticket is not None:  # a node that sends stage 1 to staff: not ours, but possible
        return f"queued: ticket {item.ticket.ticket_id}", "—", outcome.exit_code
    if item.error is not None:
        return f"refused: {item.error.reason}: {item.error.message}", "—", outcome.exit_code
    return f"no answer: {item.no_answer}", "—", outcome.exit_code


def _stage1_json(items: tuple[FanOutItem, ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for item in items:
        row: dict[str, Any] = {"member": item.target}
        if item.answer is not None:
            row["hit"] = hit_of(item.answer.response) is True
            row["status"] = request_pb2.ResponseStatus.Name(item.answer.response.status)
            row["leaf_index"] = item.answer.receipt.leaf_index
        elif item.error is not None:
            row["error"] = {"reason": item.error.reason, "message": item.error.message}
        else:
            row["no_answer"] = item.no_answer
        rows.append(row)
    return rows


async def run_staged_command(
    args: argparse.Namespace,
    client: FedgateClient,
    first: request_pb2.Request,
    sent: SentStore,
) -> int:
    """Run both stages of ``first`` (a stage-1 fan-out) and print them; the exit code."""
    registry = client.registry
    doc: dict[str, Any] = {"outcome": "staged", "stage1": None, "stage2": None}
    out: list[str] = []
    codes: list[int] = []
    try:
        sent.save(first.request_id, client.sign(first))
        hits = tuple([item async for item in client.fan_out(first, timeout=args.timeout)])
    except (FedgateError, ValueError) as exc:
        return _finish(args, doc, out, failure_outcome(exc, first.request_id))
    rows = []
    for item in hits:
        text, receipt, code = _hit_cell(item)
        rows.append((_name(item.target, registry), text, receipt))
        codes.append(code)
    members = hit_members(hits)
    out += [
        f"stage 1 — hit / no hit at {len(hits)} members (request {first.request_id})",
        *table(("member", "answer", "receipt"), rows),
        "",
    ]
    doc["stage1"] = {"request_id": first.request_id, "members": _stage1_json(hits)}
    if not members:
        out.append("no member hit: no details were asked (stage 2 not sent)")
        codes.append(ExitCode.AGENCY_DECLINED)
        return _finish(args, doc, out, None, codes)
    second = details_request(client, first, members)
    out.append(
        f"stage 2 — details from {len(members)} member(s) that hit, citing stage 1 "
        f"(request {second.request_id})"
    )
    doc["stage2"] = {
        "request_id": second.request_id,
        "hits_request_id": first.request_id,
        "members": [],
    }
    try:
        sent.save(second.request_id, client.sign(second))
        details = tuple([item async for item in client.fan_out(second, timeout=args.timeout)])
    except (FedgateError, ValueError) as exc:
        return _finish(args, doc, out, failure_outcome(exc, second.request_id), codes)
    for item in details:
        outcome = _item_outcome(item, second.request_id)
        codes.append(outcome.exit_code)
        text, err = render_text(outcome, registry=registry)
        out += ["", f"— {_name(item.target, registry)}", text.rstrip("\n")]
        out += [err.rstrip("\n")] if err else []
        member_doc = json.loads(render_json(outcome, registry=registry))
        doc["stage2"]["members"].append({"member": item.target, **member_doc})
    return _finish(args, doc, out, None, codes)


def _finish(
    args: argparse.Namespace,
    doc: dict[str, Any],
    out: list[str],
    failure: Outcome | None,
    codes: list[int] | None = None,
) -> int:
    """Print what was gathered (and ``failure``, the refusal of a stage as a whole)."""
    codes = list(codes or [])
    err = ""
    if failure is not None:
        codes.append(failure.exit_code)
        key = "stage2" if doc["stage1"] is not None else "stage1"
        failed = json.loads(render_json(failure))
        doc[key] = {**(doc[key] or {}), "request_id": failure.request_id, **failed}
        _, err = render_text(failure)
    code = _worst(codes)
    doc["exit_code"] = code
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2), flush=True)
        return code
    text = "\n".join(out)
    sys.stdout.write(text.rstrip("\n") + "\n" if text else "")
    sys.stdout.flush()
    sys.stderr.write(err)
    return code
