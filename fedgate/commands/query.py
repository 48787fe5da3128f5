"""``fedgate query``: ask a bank or a carrier for data, as an officer of a police member.

    fedgate query account-holder --account 6222020000000000013 \\
        --officer-id 440100123 --officer-name 王伟 --case A44010000000020261100001 \\
        --doc-number '穗公(反诈)查字〔2026〕00001号' --purpose 核查涉案账户

Each subcommand builds one action, signs the request, submits it through the gateway and prints
the verified answer (``--json`` for scripts, ``--dry-run`` to see the signed request only).
The target agency defaults to the bank of the card number or the carrier of the mobile number.
``accounts-by-id --all-banks`` and ``sim-count --all-carriers`` ask every bank (carrier) in the
two stages of a staged disclosure (``fedgate.commands._staged``, ``docs/privacy.md``).
Exit codes: see ``fedgate.commands._police`` or ``fedgate query --help``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from fedgate.commands._police import (
    ActionCommand,
    account_of,
    account_option,
    parse_time,
    phone_of,
    phone_option,
    register_group,
    timestamp,
)
from fedgate.v1 import bank_pb2, carrier_pb2, common_pb2

__all__ = ["COMMANDS", "register"]


def _id_number(group: argparse._ActionsContainer) -> None:
    group.add_argument("--id-number", required=True, help="resident ID number 身份证号")


def _window_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--from", dest="start", type=parse_time, required=True, metavar="TIME", help="start"
    )
    group.add_argument("--to", dest="end", type=parse_time, metavar="TIME", help="end (now)")


def _page_options(group: argparse._ActionsContainer) -> None:
    group.add_argument("--page-size", type=int, help="items per page, 1 to 500 (100)")
    group.add_argument("--page-token", help="next_page_token of the previous page")


def _window(args: argparse.Namespace) -> common_pb2.TimeWindow:
    end = args.end if args.end is not None else datetime.now(UTC)
    return common_pb2.TimeWindow(start=timestamp(args.start), end=timestamp(end))


def _page(args: argparse.Namespace) -> common_pb2.PageRequest | None:
    if args.page_size is None and args.page_token is None:
        return None
    return common_pb2.PageRequest(page_size=args.page_size or 0, page_token=args.page_token or "")


# ----------------------------------------------------------------------------- bank


def _account_window_args(group: argparse._ActionsContainer) -> None:
    account_option(group)
    _window_options(group)


def _transactions_args(group: argparse._ActionsContainer) -> None:
    _account_window_args(group)
    _page_options(group)


def _transactions(args: argparse.Namespace) -> bank_pb2.TransactionsQuery:
    query = bank_pb2.TransactionsQuery(account_number=args.account, window=_window(args))
    if (page := _page(args)) is not None:
        query.page.CopyFrom(page)
    return query


def _aggregate_args(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--metric",
        required=True,
        help="stop_payments, freezes, frozen_amount or accounts_flagged",
    )
    _window_options(group)


# ----------------------------------------------------------------------------- carrier


def _call_records_args(group: argparse._ActionsContainer) -> None:
    phone_option(group)
    _window_options(group)
    group.add_argument("--sms", action="store_true", help="include SMS records")
    _page_options(group)


def _call_records(args: argparse.Namespace) -> carrier_pb2.CallRecordsQuery:
    query = carrier_pb2.CallRecordsQuery(
        phone_number=args.phone, window=_window(args), include_sms=args.sms
    )
    if (page := _page(args)) is not None:
        query.page.CopyFrom(page)
    return query


def _location_args(group: argparse._ActionsContainer) -> None:
    phone_option(group)
    group.add_argument("--at", type=parse_time, default="now", metavar="TIME", help="(now)")


COMMANDS: tuple[ActionCommand, ...] = (
    ActionCommand(
        "account-holder",
        "account_holder",
        "who holds an account 主体查询",
        account_option,
        lambda a: bank_pb2.AccountHolderQuery(account_number=a.account),
        account_of,
    ),
    ActionCommand(
        "transactions",
        "transactions",
        "an account's transactions in a window 交易明细查询",
        _transactions_args,
        _transactions,
        account_of,
    ),
    ActionCommand(
        "accounts-by-id",
        "accounts_by_id",
        "every account under a resident ID at one bank 全户查询 (--all-banks: every bank, in "
        "two stages)",
        _id_number,
        lambda a: bank_pb2.AccountsByIdQuery(id_number=a.id_number),
    ),
    ActionCommand(
        "login-records",
        "login_records",
        "an account's device, IP and login records",
        _account_window_args,
        lambda a: bank_pb2.LoginRecordsQuery(account_number=a.account, window=_window(a)),
        account_of,
    ),
    ActionCommand(
        "aggregate-stats",
        "aggregate_stats",
        "aggregate figures for the central bank (no personal data)",
        _aggregate_args,
        lambda a: bank_pb2.AggregateStatsQuery(metric=a.metric, window=_window(a)),
    ),
    ActionCommand(
        "subscriber",
        "subscriber",
        "the registered owner of a number 机主查询",
        phone_option,
        lambda a: carrier_pb2.SubscriberQuery(phone_number=a.phone),
        phone_of,
    ),
    ActionCommand(
        "number-status",
        "number_status",
        "a number's status",
        phone_option,
        lambda a: carrier_pb2.NumberStatusQuery(phone_number=a.phone),
        phone_of,
    ),
    ActionCommand(
        "sim-count",
        "sim_count",
        "how many live SIMs a resident ID has at one carrier 一证通查 (--all-carriers: every "
        "carrier, in two stages)",
        _id_number,
        lambda a: carrier_pb2.SimCountQuery(id_number=a.id_number),
    ),
    ActionCommand(
        "call-records",
        "call_records",
        "call (and SMS) records in a window; needs a second officer 通话记录",
        _call_records_args,
        _call_records,
        phone_of,
        doc_kind="evidence_notice",
    ),
    ActionCommand(
        "location",
        "location",
        "the serving cell of a number at a time; needs a second officer 位置",
        _location_args,
        lambda a: carrier_pb2.LocationQuery(phone_number=a.phone, at=timestamp(a.at)),
        phone_of,
        doc_kind="evidence_notice",
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``query`` command group to the top-level ``fedgate`` parser."""
    register_group(
        subparsers,
        name="query",
        help="ask a bank or carrier for data (police)",
        description="Query a bank or a carrier through the gateway, as an officer of a police "
        "member; the answer is verified (agency signature, binding to the request, gateway "
        "countersignature, audit-log inclusion) before it is printed.",
        commands=COMMANDS,
    )
