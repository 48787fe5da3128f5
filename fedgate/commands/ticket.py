"""``fedgate ticket get|watch ID``: follow a request that an agency's staff answer by hand.

An answer is bound to the exact bytes of the request sent, so it is verified against the copy
``fedgate query``/``fedgate order`` kept in the sent directory (``--sent-dir``,
``$FEDGATE_SENT_DIR``, default ``sent/`` next to the federation directory). Without that copy
the answer cannot be verified and the command says so (exit code 2) instead of printing it.

``watch`` prints each state change and ends with the answer, the expiry, or ``--timeout``
(still waiting: exit code 10); with ``--json`` it prints one JSON object per line.
Exit codes: see ``fedgate ticket --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncGenerator

from fedgate.client import Answer, FedgateClient
from fedgate.commands._police import (
    EXIT_CODES_EPILOG,
    ExitCode,
    PoliceParser,
    add_connection_options,
    answer_outcome,
    emit,
    failure_outcome,
    keep_answer,
    local_error,
    open_client,
    parse_request_id,
    sent_store,
)
from fedgate.errors import AgencyFault, FedgateError, ResponseBindingError, VerificationError
from fedgate.render import Outcome
from fedgate.v1 import ticket_pb2

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ticket`` command group to the top-level ``fedgate`` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    group = subparsers.add_parser(
        "ticket",
        help="follow a request answered by an agency's staff",
        description="Get or watch a ticket (the request id) issued for a manual answer; the "
        "answer is verified against the signed request kept when it was sent.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    sub = group.add_subparsers(
        dest="ticket_command", required=True, metavar="COMMAND", parser_class=PoliceParser
    )
    get = sub.add_parser(
        "get",
        help="the ticket's state, and its answer once there is one",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    get.add_argument("ticket_id", type=parse_request_id, metavar="ID", help="ticket (request) id")
    add_connection_options(get, timeout=10.0)
    get.set_defaults(func=lambda args: asyncio.run(_get(args)))
    watch = sub.add_parser(
        "watch",
        help="follow the ticket until it is answered or expires",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=formatter,
    )
    watch.add_argument("ticket_id", type=parse_request_id, metavar="ID", help="ticket (request) id")
    add_connection_options(watch, timeout=None)
    watch.set_defaults(func=lambda args: asyncio.run(_watch(args)))


def _watch_hint(ticket_id: str) -> tuple[str, ...]:
    return (f"follow it: fedgate ticket watch {ticket_id} (same --federation and --member)",)


def _ticket_outcome(ticket: ticket_pb2.Ticket) -> Outcome:
    """The outcome of a ticket that came without an answer."""
    if ticket.state == ticket_pb2.TICKET_STATE_EXPIRED:
        return Outcome("expired", ExitCode.AGENCY_DECLINED, ticket.ticket_id, ticket=ticket)
    if ticket.state in (ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_CLAIMED):
        hints = _watch_hint(ticket.ticket_id)
        return Outcome("queued", ExitCode.QUEUED, ticket.ticket_id, ticket=ticket, hints=hints)
    error = AgencyFault(f"ticket {ticket.ticket_id} is answered but the gateway sent no answer")
    return Outcome(
        "unavailable", ExitCode.UNAVAILABLE, ticket.ticket_id, ticket=ticket, error=error
    )


def _check_bound(answer: Answer, ticket_id: str) -> Answer:
    if answer.response.request_id != ticket_id:
        raise ResponseBindingError(
            f"the answer is for request {answer.response.request_id}, not ticket {ticket_id}"
        )
    return answer


def _failed(
    args: argparse.Namespace,
    error: Exception,
    client: FedgateClient,
    *,
    remembered: bool,
    stream: bool = False,
) -> int:
    outcome = failure_outcome(error, args.ticket_id)
    if outcome.kind == "verification_failed" and not remembered:
        # Not evidence of forgery: this machine simply lacks the request the answer is bound to.
        store = sent_store(args)
        return local_error(
            args,
            VerificationError(
                f"cannot verify the answer to {args.ticket_id}: the signed request is not in "
                f"{store.directory} (sent from elsewhere? pass --sent-dir)"
            ),
        )
    return emit(args, outcome, client.registry, stream=stream)


def _open(args: argparse.Namespace) -> tuple[FedgateClient, bool]:
    body = sent_store(args).load(args.ticket_id)
    client = open_client(args)
    if body is not None:
        client.remember(body)
    return client, body is not None


async def _get(args: argparse.Namespace) -> int:
    try:
        client, remembered = _open(args)
    except FedgateError as exc:
        return local_error(args, exc)
    async with client:
        try:
            ticket, answer = await client.get_ticket(args.ticket_id, timeout=args.timeout)
            if answer is not None:
                _check_bound(answer, args.ticket_id)
        except (FedgateError, ValueError) as exc:
            return _failed(args, exc, client, remembered=remembered)
        if answer is not None:
            keep_answer(args, answer)
            return emit(args, answer_outcome(answer), client.registry)
        return emit(args, _ticket_outcome(ticket), client.registry)


def _updates(
    client: FedgateClient, ticket_id: str
) -> AsyncGenerator[tuple[ticket_pb2.Ticket, Answer | None], None]:
    updates = client.watch_ticket(ticket_id)
    assert isinstance(updates, AsyncGenerator)  # an async generator function, typed loosely
    return updates


async def _watch(args: argparse.Namespace) -> int:
    try:
        client, remembered = _open(args)
    except FedgateError as exc:
        return local_error(args, exc)
    last: ticket_pb2.Ticket | None = None
    async with client:
        try:
            async with (
                asyncio.timeout(args.timeout),
                contextlib.aclosing(_updates(client, args.ticket_id)) as updates,
            ):
                async for ticket, answer in updates:
                    if answer is not None:
                        outcome = answer_outcome(_check_bound(answer, args.ticket_id))
                        keep_answer(args, answer)
                        return emit(args, outcome, client.registry, stream=True)
                    last = ticket
                    outcome = _ticket_outcome(ticket)
                    if outcome.kind != "queued":
                        return emit(args, outcome, client.registry, stream=True)
                    waiting = Outcome("waiting", ExitCode.QUEUED, ticket.ticket_id, ticket=ticket)
                    emit(args, waiting, client.registry, stream=True)
        except TimeoutError:
            still = Outcome(
                "queued",
                ExitCode.QUEUED,
                args.ticket_id,
                ticket=last,
                hints=(f"still waiting after {args.timeout:g} s",),
            )
            return emit(args, still, client.registry, stream=True)
        except (FedgateError, ValueError) as exc:
            return _failed(args, exc, client, remembered=remembered, stream=True)
    ended = AgencyFault(f"the gateway ended the watch of {args.ticket_id} before an answer")
    outcome = Outcome("unavailable", ExitCode.UNAVAILABLE, args.ticket_id, ticket=last, error=ended)
    return emit(args, outcome, None, stream=True)
