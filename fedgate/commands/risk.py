"""``fedgate risk add|extend|remove``: change the shared risk list, as an officer of a police
member (the gateway answers these itself, after appending the change to the list's log).

    fedgate risk add --category phone --value 13312344710 --reason 冒充客服诈骗来电 \\
        --officer-id 440100123 --officer-name 王伟 --case A44010000000020261100001 \\
        --doc-number '穗公(反诈)反制字〔2026〕00001号' --purpose 技术反制

Categories: phone, account, domain, url, ip, device, app. An entry lapses after 90 days unless
``--expires`` says otherwise (at most 366 days ahead; extend it later). Removal needs a reason.
Exit codes: see ``fedgate.commands._police`` or ``fedgate risk --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from google.protobuf.message import Message

from fedgate.commands._police import ActionCommand, parse_time, register_group
from fedgate.risklist import CATEGORY_NAMES, category_from_name
from fedgate.v1 import risklist_pb2

__all__ = ["COMMANDS", "register"]


def _entry_args(*, expiry: bool) -> Callable[[argparse._ActionsContainer], None]:
    def add(group: argparse._ActionsContainer) -> None:
        group.add_argument(
            "--category", required=True, choices=list(CATEGORY_NAMES.values()), help="what"
        )
        group.add_argument("--value", required=True, help="the number, account, domain, URL …")
        group.add_argument("--reason", required=True, help="why (told to whoever appeals)")
        if expiry:
            group.add_argument(
                "--expires", type=parse_time, metavar="TIME", help="when it lapses (default 90 d)"
            )

    return add


def _build(kind: type[Message]) -> Callable[[argparse.Namespace], Message]:
    def build(args: argparse.Namespace) -> Message:
        message = kind(
            category=category_from_name(args.category), value=args.value, reason=args.reason
        )
        expires = getattr(args, "expires", None)
        if expires is not None:
            message.expires_at.FromDatetime(expires)  # type: ignore[attr-defined]
        return message

    return build


COMMANDS: tuple[ActionCommand, ...] = (
    ActionCommand(
        name="add",
        action="risk_list_add",
        help="list a number, account, domain, URL, IP, device or app 列入风险名单",
        arguments=_entry_args(expiry=True),
        build=_build(risklist_pb2.RiskListAdd),
        urgency="urgent",
        doc_kind="countermeasure_order",
    ),
    ActionCommand(
        name="extend",
        action="risk_list_extend",
        help="move a listed entry's expiry 延期",
        arguments=_entry_args(expiry=True),
        build=_build(risklist_pb2.RiskListExtend),
        doc_kind="countermeasure_order",
    ),
    ActionCommand(
        name="remove",
        action="risk_list_remove",
        help="take an entry off the list (a reason is required) 移出",
        arguments=_entry_args(expiry=False),
        build=_build(risklist_pb2.RiskListRemove),
        doc_kind="release_notice",
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``risk`` command group to the top-level ``fedgate`` parser."""
    register_group(
        subparsers,
        name="risk",
        help="change the shared risk list (技术反制)",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
        commands=COMMANDS,
    )
