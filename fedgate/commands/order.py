"""``fedgate order``: order a bank or a carrier to act, as an officer of a police member.

    fedgate order stop-payment --account 6222020000000000013 --name 李强 \\
        --payer-account 6217000000000000014 --payer-name 张芳 --amount 49800 \\
        --transfer-time -20m --officer-id 440100123 --officer-name 王伟 \\
        --case A44010000000020261100001 --doc-number '穗公(反诈)止字〔2026〕00001号' \\
        --purpose 受害人报案，申请紧急止付

Releases, extensions, renewals and monitor stops cite the original order with ``--original``;
so does a refund (资金返还), which cites the freeze it draws on:

    fedgate order refund --account 6222020000000000013 --original <freeze request id> \
        --victim-account 6217000000000000014 --victim-name 张芳 --victim-bank bank.ccb \
        --amount 20000 --reported-loss 49800 --application FH20261104001 \
        --officer-id 440100123 --officer-name 王伟 --case A44010000000020261100001 \
        --doc-number '穗公(反诈)返字〔2026〕00001号' --purpose 返还受害人被骗资金

Every order is signed, checked by the gateway (policy and business rules such as "at most two
stop-payments per account"), logged, and acknowledged by the agency with a signed answer.
Exit codes: see ``fedgate.commands._police`` or ``fedgate order --help``.
"""

from __future__ import annotations

import argparse

from fedgate.commands._police import (
    ActionCommand,
    account_of,
    account_option,
    money,
    parse_account,
    parse_amount,
    parse_time,
    phone_of,
    phone_option,
    register_group,
    timestamp,
)
from fedgate.v1 import approval_pb2, bank_pb2, carrier_pb2, common_pb2
from fedgate.validate import bank_of_card

__all__ = ["COMMANDS", "register"]

_METHODS = {
    "fixed": bank_pb2.FREEZE_METHOD_FIXED_AMOUNT,
    "receive-only": bank_pb2.FREEZE_METHOD_RECEIVE_ONLY,
}


def _account_reason(group: argparse._ActionsContainer) -> None:
    account_option(group)
    group.add_argument("--reason", default="", help="why")


def _phone_reason(group: argparse._ActionsContainer) -> None:
    phone_option(group)
    group.add_argument(
        "--reason", required=True, help="why (told to the subscriber, who may appeal)"
    )


# ----------------------------------------------------------------------------- stop-payment


def _stop_payment_args(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--account", type=parse_account, required=True, help="receiving account to stop 收款账号"
    )
    group.add_argument("--name", required=True, help="its holder's name 收款户名")
    group.add_argument(
        "--payer-account", type=parse_account, required=True, help="the victim's account 付款账号"
    )
    group.add_argument("--payer-name", required=True, help="the victim's name 付款户名")
    group.add_argument("--payer-bank", help="the victim's bank (default: from the card number)")
    group.add_argument(
        "--amount", type=parse_amount, required=True, metavar="YUAN", help="e.g. 1234.56"
    )
    group.add_argument("--currency", default="CNY", help="ISO 4217 code (CNY)")
    group.add_argument(
        "--transfer-time", type=parse_time, required=True, metavar="TIME", help="when sent"
    )
    group.add_argument("--victim-application", default="", help="受害人申请 reference")


def _stop_payment(args: argparse.Namespace) -> bank_pb2.StopPaymentOrder:
    return bank_pb2.StopPaymentOrder(
        account_number=args.account,
        account_name=args.name,
        payer_account=args.payer_account,
        payer_name=args.payer_name,
        payer_bank=args.payer_bank or bank_of_card(args.payer_account) or "",
        amount=money(args.amount, args.currency),
        transfer_time=timestamp(args.transfer_time),
        victim_application=args.victim_application,
    )


# ----------------------------------------------------------------------------- freeze


def _freeze_args(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--account", type=parse_account, required=True, help="account to freeze 账号"
    )
    group.add_argument("--name", required=True, help="its holder's name 户名")
    group.add_argument("--method", choices=sorted(_METHODS), required=True, help="冻结方式")
    group.add_argument("--amount", type=parse_amount, metavar="YUAN", help="fixed amount only")
    group.add_argument("--currency", default="CNY", help="ISO 4217 code (CNY)")
    group.add_argument("--start", type=parse_time, default="now", metavar="TIME", help="(now)")
    group.add_argument("--end", type=parse_time, required=True, metavar="TIME", help="e.g. +90d")
    group.add_argument("--duty-phone", required=True, help="24-hour duty phone 值班电话")
    group.add_argument("--bulk-count", type=int, default=1, help="accounts in this order (1)")
    group.add_argument(
        "--approver-id", help="deprecated, not trusted: cite the approval with --approval"
    )
    group.add_argument("--approver-name", help="approving supervisor's name")
    group.add_argument("--approval-doc", help="审批表号 approval document number")
    group.add_argument("--approved-at", type=parse_time, metavar="TIME", help="when approved")


def _freeze(args: argparse.Namespace) -> bank_pb2.FreezeOrder:
    order = bank_pb2.FreezeOrder(
        account_number=args.account,
        account_name=args.name,
        method=_METHODS[args.method],
        start=timestamp(args.start),
        end=timestamp(args.end),
        duty_phone=args.duty_phone,
        bulk_count=args.bulk_count,
    )
    if args.amount is not None:
        order.amount.CopyFrom(money(args.amount, args.currency))
    if args.approver_id or args.approver_name or args.approval_doc:
        order.approval.approver.CopyFrom(
            common_pb2.Person(
                id=args.approver_id or "",
                name=args.approver_name or "",
                role=common_pb2.ROLE_CENTRE_SUPERVISOR,
            )
        )
        order.approval.document_number = args.approval_doc or ""
        if args.approved_at is not None:
            order.approval.approved_at.FromDatetime(args.approved_at)
    return order


def _refund_args(group: argparse._ActionsContainer) -> None:
    account_option(group)
    group.add_argument(
        "--victim-account",
        type=parse_account,
        required=True,
        help="the victim's account the funds return to 受害人账号",
    )
    group.add_argument("--victim-name", required=True, help="the victim's name 受害人姓名")
    group.add_argument(
        "--victim-bank", required=True, help="the victim's bank (member id, else its name)"
    )
    group.add_argument(
        "--amount", type=parse_amount, required=True, metavar="YUAN", help="amount to return"
    )
    group.add_argument(
        "--reported-loss",
        type=parse_amount,
        required=True,
        metavar="YUAN",
        help="the victim's reported loss in the case 报案损失金额",
    )
    group.add_argument("--currency", default="CNY", help="ISO 4217 code (CNY)")
    group.add_argument(
        "--application", required=True, help="the victim's refund application 受害人申请编号"
    )


def _refund(args: argparse.Namespace) -> bank_pb2.RefundOrder:
    return bank_pb2.RefundOrder(
        account_number=args.account,
        victim_account=args.victim_account,
        victim_name=args.victim_name,
        victim_bank=args.victim_bank,
        amount=money(args.amount, args.currency),
        reported_loss=money(args.reported_loss, args.currency),
        victim_application=args.application,
    )


def _freeze_renew_args(group: argparse._ActionsContainer) -> None:
    account_option(group)
    group.add_argument("--end", type=parse_time, required=True, metavar="TIME", help="new end")


def _monitor_start_args(group: argparse._ActionsContainer) -> None:
    account_option(group)
    group.add_argument("--until", type=parse_time, required=True, metavar="TIME", help="e.g. +30d")


# ----------------------------------------------------------------------------- approval


def _approval_args(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--actions", nargs="+", default=["freeze"], help="order actions approved (freeze)"
    )
    group.add_argument(
        "--max-count", type=int, required=True, help="most accounts one approved order covers"
    )
    group.add_argument(
        "--max-amount", type=parse_amount, metavar="YUAN", help="largest amount one order freezes"
    )
    group.add_argument("--currency", default="CNY", help="ISO 4217 code (CNY)")
    group.add_argument(
        "--expires", type=parse_time, required=True, metavar="TIME", help="e.g. +7d (≤ 30 days)"
    )
    group.add_argument("--approval-doc", required=True, help="审批表号 approval document number")


def _approval(args: argparse.Namespace) -> approval_pb2.ApprovalGrant:
    grant = approval_pb2.ApprovalGrant(
        actions=args.actions,
        max_count=args.max_count,
        expires_at=timestamp(args.expires),
        document_number=args.approval_doc,
    )
    if args.max_amount is not None:
        grant.max_amount.CopyFrom(money(args.max_amount, args.currency))
    return grant


# ----------------------------------------------------------------------------- carrier


def _sms_block_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--sender", required=True, help="sender number or short code")
    group.add_argument("--reason", required=True, help="why")


def _sender_of(args: argparse.Namespace) -> str | None:
    return str(args.sender)


COMMANDS: tuple[ActionCommand, ...] = (
    ActionCommand(
        "approval",
        "approval",
        "a centre supervisor's approval of orders in a case (cite it with --approval) 审批",
        _approval_args,
        _approval,
        None,
        doc_kind="case_filing",
    ),
    ActionCommand(
        "stop-payment",
        "stop_payment",
        "emergency stop-payment on a receiving account 紧急止付",
        _stop_payment_args,
        _stop_payment,
        account_of,
        urgency="emergency",
        doc_kind="stop_payment_notice",
    ),
    ActionCommand(
        "stop-payment-release",
        "stop_payment_release",
        "release a stop-payment 解除止付",
        _account_reason,
        lambda a: bank_pb2.StopPaymentReleaseOrder(account_number=a.account, reason=a.reason),
        account_of,
        doc_kind="release_notice",
    ),
    ActionCommand(
        "stop-payment-extend",
        "stop_payment_extend",
        "extend a stop-payment by 48 hours 延长止付",
        _account_reason,
        lambda a: bank_pb2.StopPaymentExtendOrder(account_number=a.account, reason=a.reason),
        account_of,
        urgency="urgent",
        doc_kind="stop_payment_notice",
    ),
    ActionCommand(
        "freeze",
        "freeze",
        "freeze funds (needs the case-filing decision) 冻结",
        _freeze_args,
        _freeze,
        account_of,
        urgency="urgent",
        doc_kind="case_filing",
    ),
    ActionCommand(
        "freeze-release",
        "freeze_release",
        "release a freeze 解除冻结",
        _account_reason,
        lambda a: bank_pb2.FreezeReleaseOrder(account_number=a.account, reason=a.reason),
        account_of,
        doc_kind="release_notice",
    ),
    ActionCommand(
        "freeze-renew",
        "freeze_renew",
        "renew a freeze before it lapses 续冻",
        _freeze_renew_args,
        lambda a: bank_pb2.FreezeRenewOrder(account_number=a.account, end=timestamp(a.end)),
        account_of,
        doc_kind="case_filing",
    ),
    ActionCommand(
        "refund",
        "refund",
        "return frozen funds to the victim (cites the freeze) 资金返还",
        _refund_args,
        _refund,
        account_of,
        doc_kind="refund_decision",
    ),
    ActionCommand(
        "monitor-start",
        "monitor_start",
        "push an account's new transactions to police 动态查询",
        _monitor_start_args,
        lambda a: bank_pb2.MonitorStartOrder(account_number=a.account, until=timestamp(a.until)),
        account_of,
    ),
    ActionCommand(
        "monitor-stop",
        "monitor_stop",
        "stop live monitoring of an account",
        account_option,
        lambda a: bank_pb2.MonitorStopOrder(account_number=a.account),
        account_of,
    ),
    ActionCommand(
        "number-suspend",
        "number_suspend",
        "suspend a number used in fraud 停机",
        _phone_reason,
        lambda a: carrier_pb2.NumberSuspendOrder(phone_number=a.phone, reason=a.reason),
        phone_of,
        urgency="urgent",
        doc_kind="countermeasure_order",
    ),
    ActionCommand(
        "number-block",
        "number_block",
        "block a number (calls and SMS) 封停",
        _phone_reason,
        lambda a: carrier_pb2.NumberBlockOrder(phone_number=a.phone, reason=a.reason),
        phone_of,
        urgency="urgent",
        doc_kind="countermeasure_order",
    ),
    ActionCommand(
        "number-restore",
        "number_restore",
        "restore a suspended or blocked number 复机",
        _phone_reason,
        lambda a: carrier_pb2.NumberRestoreOrder(phone_number=a.phone, reason=a.reason),
        phone_of,
        doc_kind="release_notice",
    ),
    ActionCommand(
        "sms-block",
        "sms_block",
        "block SMS from a sender 短信拦截",
        _sms_block_args,
        lambda a: carrier_pb2.SmsBlockOrder(sender=a.sender, reason=a.reason),
        _sender_of,
        urgency="urgent",
        doc_kind="countermeasure_order",
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``order`` command group to the top-level ``fedgate`` parser."""
    register_group(
        subparsers,
        name="order",
        help="order a bank or carrier to act (police)",
        description="Order a stop-payment, freeze, monitoring, or a number suspension or block "
        "through the gateway, as an officer of a police member; the acknowledgement is "
        "verified before it is printed.",
        commands=COMMANDS,
    )
