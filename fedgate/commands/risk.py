"""``fedgate risk add|extend|remove``: change the shared risk list, as an officer of a police
member (the gateway answers these itself, after appending the change to the list's log).

    fedgate risk add --category phone --value 13312344710 --reason 冒充客服诈骗来电 \\
        --officer-id 440100123 --officer-name 王伟 --case A44010000000020261100001 \\
        --doc-number '穗公(反诈)反制字〔2026〕00001号' --purpose 技术反制

``fedgate risk verify`` replays the whole list from the gateway and verifies every batch.

Categories: phone, account, domain, url, ip, device, app. An entry lapses after 90 days unless
``--expires`` says otherwise (at most 366 days ahead; extend it later). Removal needs a reason.
Exit codes: see ``fedgate.commands._police`` or ``fedgate risk --help``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from google.protobuf.message import Message

from fedgate.checkpoint import parse_checkpoint
from fedgate.commands._police import (
    ActionCommand,
    ExitCode,
    add_connection_options,
    local_error,
    open_client,
    parse_time,
    register_group,
)
from fedgate.errors import FedgateError
from fedgate.evidence import log_verifiers, witness_verifiers
from fedgate.note import parse_note
from fedgate.risklist import (
    CATEGORY_NAMES,
    ListState,
    RiskIndex,
    category_from_name,
    micros,
    verify_batch,
)
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
        help="change the shared risk list (技术反制); verify all of it",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
        commands=COMMANDS,
    )
    group = subparsers.choices["risk"]
    sub = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
    verify = sub.add_parser(
        "verify",
        help="replay the whole list from the gateway and verify every batch (auditors)",
        description="Follow the risk list's log from its first change, checking each batch "
        "against its signed checkpoint, the consistency proof and the witnesses' cosignatures, "
        "and print the size, root, cosigners and the entries in force by category.",
    )
    add_connection_options(verify, timeout=60.0)
    verify.add_argument("--origin", help="the list's origin (default: from the checkpoint)")
    verify.set_defaults(func=lambda a: asyncio.run(_verify(a)))


async def _verify(args: argparse.Namespace) -> int:
    try:
        client = open_client(args)
    except FedgateError as exc:
        return local_error(args, exc)
    async with client:
        try:
            note = await client.risk_checkpoint(timeout=args.timeout)
            origin = args.origin or parse_checkpoint(parse_note(note).text).origin
            verifiers = log_verifiers(client.registry, origin)
            witnesses = witness_verifiers(client.registry)
            state, index = ListState.empty(), RiskIndex()
            cosigned: tuple[str, ...] = ()
            async with asyncio.timeout(args.timeout):
                async for batch in client.follow_risklist():
                    checked = verify_batch(
                        state,
                        first_index=batch.first_index,
                        leaves=list(batch.changes),
                        checkpoint=batch.checkpoint,
                        consistency_proof=list(batch.consistency_proof),
                        origin=origin,
                        log_verifiers=verifiers,
                        witness_verifiers=witnesses,
                    )
                    for change in checked.changes:
                        index.apply(change)
                    state, cosigned = checked.state, checked.cosigned_by
                    if not batch.changes:
                        break
        except (FedgateError, TimeoutError) as exc:
            error = exc if isinstance(exc, FedgateError) else FedgateError("timed out")
            print(f"fedgate risk verify: FAILED: {error.message}")
            return ExitCode.VERIFICATION_FAILED
    now = micros(datetime.now(UTC))
    in_force = {name: index.count(c, now) for c, name in CATEGORY_NAMES.items()}
    print(f"risk list {origin}: {state.size} change(s) verified, root {state.root.hex()}")
    print(f"  cosigned by: {', '.join(cosigned) if cosigned else 'no witness yet'}")
    listed = ", ".join(f"{k} {v}" for k, v in in_force.items() if v)
    print(f"  in force: {listed or 'none'}")
    print("OK")
    return ExitCode.OK
