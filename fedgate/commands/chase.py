"""``fedgate chase``: follow a victim's money across the banks and stop it, live.

    fedgate chase --payer-account 6222020000000000013 --payer-name 李娜 \\
        --to-account 6217000000000000015 --to-name 张伟 --amount 50000 \\
        --time '2026-12-04 10:21:05' --case A44010000000020261200001 \\
        --query-doc '穗公(反诈)查字〔2026〕00001号' --stop-doc '穗公(反诈)止字〔2026〕00001号' \\
        --application SQ2026000001

From the victim's transfer, the chase asks each receiving account's bank for its transactions,
traces the victim's money (``docs/chase.md``: lowest intermediate balance, own money first),
stops every account still holding some, and follows every hop in parallel. The tree is printed
as hops are found, then a summary: traced, stopped, lost (cash, merchants, banks outside the
federation), unresolved, time. ``--json`` prints the same as one JSON object.

Exit codes: 0 every account holding traced money was stopped; 1 some could not be (a limit, a
refusal, a bank down: see the tree); 2 usage or local error; 3 the gateway refused the chase's
first request; 4 the gateway or the first bank was unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from fedgate.chase import Authority, ChaseEngine, ChaseNode, ChaseReport, NodeKind, Outcome
from fedgate.chase import VictimTransfer as Transfer
from fedgate.commands._police import (
    DEFAULT_MEMBER,
    ExitCode,
    add_connection_options,
    local_error,
    open_client,
    parse_amount,
    parse_time,
)
from fedgate.commands._police import _person as officer_of
from fedgate.errors import FedgateError, InvalidArgument
from fedgate.logs import mask
from fedgate.render import format_money, format_time
from fedgate.v1 import common_pb2

__all__ = ["LiveTree", "register", "render_node", "render_summary"]

_MARK = {
    Outcome.STOPPED: "stopped ✓",
    Outcome.LIMIT: "already stopped twice ✗",
    Outcome.REFUSED: "stop refused ✗",
    Outcome.PASSED_ON: "passed it all on",
    Outcome.UNREACHABLE: "bank unreachable ✗",
    Outcome.CASH_OUT: "dead end: cash-out",
    Outcome.MERCHANT: "dead end: merchant",
    Outcome.LEFT: "left the federation",
    Outcome.PENDING: "…",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chase",
        help="follow a victim's money across the banks and stop it (紧急止付 chase)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t = parser.add_argument_group("the victim's transfer")
    t.add_argument("--payer-account", required=True, help="the victim's account")
    t.add_argument("--payer-name", required=True, help="the victim's name")
    t.add_argument("--payer-bank", help="the victim's bank (default: from the card's BIN)")
    t.add_argument("--to-account", required=True, help="the account the victim paid")
    t.add_argument("--to-name", required=True, help="its holder's name, as the receipt shows")
    t.add_argument("--amount", type=parse_amount, required=True, help="yuan, e.g. 50000.00")
    t.add_argument("--time", type=parse_time, required=True, help="when the victim paid")
    a = parser.add_argument_group("officer, case and documents")
    a.add_argument("--officer-id", help="badge number 警号 ($FEDGATE_OFFICER_ID)")
    a.add_argument("--officer-name", help="name ($FEDGATE_OFFICER_NAME)")
    a.add_argument("--officer-role", help="role ($FEDGATE_OFFICER_ROLE, investigator)")
    a.add_argument("--officer-phone", help="phone ($FEDGATE_OFFICER_PHONE)")
    a.add_argument("--officer-id-number", help="resident ID ($FEDGATE_OFFICER_ID_NUMBER)")
    a.add_argument("--case", required=True, metavar="CASE_NUMBER", help="case number 案件编号")
    a.add_argument("--case-reason", default="电信网络诈骗，受害人报案后紧急止付", help="案由")
    a.add_argument("--query-doc", required=True, help="查询通知书 number, for the queries")
    a.add_argument("--stop-doc", required=True, help="止付通知书 number, for the stop-payments")
    a.add_argument(
        "--application", required=True, help="the victim's stop-payment application reference"
    )
    a.add_argument("--deadline", type=float, default=60.0, help="seconds for the whole chase (60)")
    a.add_argument("--show-accounts", action="store_true", help="print account numbers unmasked")
    add_connection_options(parser, timeout=None)
    parser.set_defaults(func=_run, member_default=DEFAULT_MEMBER)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_chase(args, sys.stdout))


def _document(
    kind: common_pb2.LegalDocumentKind.ValueType, number: str
) -> common_pb2.LegalDocument:
    return common_pb2.LegalDocument(kind=kind, number=number)


async def _chase(args: argparse.Namespace, out: TextIO) -> int:
    try:
        if args.amount <= 0:
            raise InvalidArgument("--amount must be positive")
        client = open_client(args)
        officer = officer_of(args)
    except (FedgateError, ValueError) as exc:
        return local_error(args, exc)
    async with client:
        payer_bank = args.payer_bank
        if not payer_bank:
            found = client.registry.bank_of_account(args.payer_account)
            payer_bank = found.id if found is not None else "outside the federation"
        transfer = Transfer(
            payer_account=args.payer_account,
            payer_name=args.payer_name,
            payer_bank=payer_bank,
            payee_account=args.to_account,
            payee_name=args.to_name,
            amount_minor=args.amount,
            time=args.time,
        )
        authority = Authority(
            officer=officer,
            case=common_pb2.CaseInfo(
                case_number=args.case,
                case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
                reason=args.case_reason,
            ),
            query_document=_document(common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, args.query_doc),
            stop_document=_document(
                common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE, args.stop_doc
            ),
            victim_application=args.application,
        )
        live = LiveTree(out, unmasked=args.show_accounts) if not args.json else None
        engine = ChaseEngine(
            client=client,
            authority=authority,
            deadline_s=args.deadline,
            on_event=live.update if live is not None else None,
        )
        if live is not None:
            print(
                f"chase of {format_money(_money(transfer.amount_minor))} paid by "
                f"{_account(transfer.payer_account, args.show_accounts)} at "
                f"{format_time(transfer.time)}",
                file=out,
            )
        report = await engine.run(transfer)
    if args.json:
        print(json.dumps(report.to_json(unmasked=args.show_accounts), ensure_ascii=False), file=out)
    else:
        for line in render_summary(report):
            print(line, file=out)
    return _exit_code(report)


def _exit_code(report: ChaseReport) -> int:
    first = report.nodes[0] if report.nodes else None
    if first is not None and first.outcome == Outcome.UNREACHABLE and len(report.nodes) == 1:
        return ExitCode.UNAVAILABLE
    if first is not None and first.outcome == Outcome.REFUSED and not first.query_leaf_index:
        return ExitCode.REFUSED
    if report.unresolved_minor > 0:
        return ExitCode.AGENCY_DECLINED
    return ExitCode.OK


def _money(minor: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor)


def _account(number: str, unmasked: bool) -> str:
    return number if unmasked else mask(number)


def render_node(node: ChaseNode, depth: int, *, unmasked: bool = False) -> str:
    """One line of the tree: where, how much traced, how much held, what became of it."""
    indent = "   " * depth + ("└─ " if depth else "")
    where = node.bank or "—"
    if node.kind == NodeKind.ACCOUNT:
        what = f"{where} {_account(node.account, unmasked)}"
        traced, held = format_money(_money(node.traced_in)), format_money(_money(node.held))
        amounts = f"{traced} traced, holds {held}"
    elif node.kind == NodeKind.CASH:
        what, amounts = "cash", format_money(_money(node.traced_in))
    elif node.kind == NodeKind.MERCHANT:
        what, amounts = node.name or "merchant", format_money(_money(node.traced_in))
    else:
        what = f"{where} {_account(node.account, unmasked)}"
        amounts = format_money(_money(node.traced_in))
    line = f"{indent}{what}  {amounts}  {_MARK[node.outcome]}"
    if node.outcome in (Outcome.LIMIT, Outcome.REFUSED, Outcome.UNREACHABLE) and node.detail:
        line += f"  ({node.detail})"
    return line


def render_summary(report: ChaseReport) -> list[str]:
    """The closing lines: traced, stopped, lost, unresolved, time."""

    def m(minor: int) -> str:
        return format_money(_money(minor))

    lost = {
        kind: sum(n.traced_in for n in report.nodes if n.outcome == kind)
        for kind in (Outcome.CASH_OUT, Outcome.MERCHANT, Outcome.LEFT)
    }
    return [
        "",
        f"chase {report.chase_id}",
        f"  traced      {m(report.traced_minor)}",
        f"  stopped     {m(report.stopped_minor)} in {len(report.stopped)} account(s)",
        f"  lost        {m(report.lost_minor)} (cash-out {m(lost[Outcome.CASH_OUT])}, merchants "
        f"{m(lost[Outcome.MERCHANT])}, left the federation {m(lost[Outcome.LEFT])})",
        f"  unresolved  {m(report.unresolved_minor)}",
        f"  time        {report.seconds:.2f} s",
    ]


class LiveTree:
    """Prints each node once it has an outcome, indented under its parent; again if more
    traced money reaches it later (a merge)."""

    def __init__(self, out: TextIO, *, unmasked: bool) -> None:
        self._out = out
        self._unmasked = unmasked
        self._depth: dict[int, int] = {}
        self._shown: dict[int, tuple[int, int, Outcome]] = {}

    def update(self, node: ChaseNode) -> None:
        if node.outcome == Outcome.PENDING:
            return
        depth = 0 if node.parent_id is None else self._depth.get(node.parent_id, 0) + 1
        self._depth[node.node_id] = depth
        state = (node.traced_in, node.held, node.outcome)
        if self._shown.get(node.node_id) == state:
            return
        again = node.node_id in self._shown
        self._shown[node.node_id] = state
        line = render_node(node, depth, unmasked=self._unmasked)
        print(line + ("  (updated: more traced money arrived)" if again else ""), file=self._out)
        self._out.flush()
