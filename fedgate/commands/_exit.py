"""Exit codes of the police commands and the mapping of answers and errors to them.

The codes are stable (scripts rely on them); their meaning is tabled in
``fedgate.commands._police`` and printed by ``EXIT_CODES_EPILOG`` under each command's help.
An error rebuilt from the gateway's status is a refusal or an outage; any other error while
reading an answer is a failed verification.
"""

from __future__ import annotations

import argparse
import enum
import sys

import grpc

from fedgate.client import Answer
from fedgate.errors import (
    AgencyFault,
    AgencyUnavailable,
    AuditUnavailable,
    Expired,
    FedgateError,
    KeyUnavailable,
    LogInconsistent,
    StoreVersionError,
)
from fedgate.registry import Registry
from fedgate.render import Outcome, render_json, render_text
from fedgate.v1 import request_pb2

__all__ = [
    "EXIT_CODES_EPILOG",
    "ExitCode",
    "answer_outcome",
    "emit",
    "exit_code_for_refusal",
    "exit_code_for_status",
    "failure_outcome",
    "local_error",
]


class ExitCode(enum.IntEnum):
    OK = 0
    AGENCY_DECLINED = 1
    USAGE = 2
    REFUSED = 3
    UNAVAILABLE = 4
    VERIFICATION_FAILED = 5
    QUEUED = 10


EXIT_CODES_EPILOG = """\
exit codes:
   0  the agency answered OK
   1  the agency answered REFUSED, NOT_FOUND, INVALID or EXPIRED (or the ticket expired)
   2  usage or local error (bad option, missing credentials, unwritable state)
   3  refused by the gateway: policy, business rule, validation, quota, replay, signature
   4  unavailable: the gateway, the agency or the audit log could not serve the request
   5  the answer FAILED VERIFICATION (forged or mis-bound): do not act on it
  10  queued for the agency's staff: follow the ticket with `fedgate ticket watch ID`

times: ISO 8601 (2026-11-27T10:00:00+08:00; without an offset China Standard Time is meant),
`now`, or relative to now (-30d, +2h, -15m, +90s, -1w). Amounts: yuan, up to 2 decimals.
environment: FEDGATE_FEDERATION, FEDGATE_MEMBER, FEDGATE_SENT_DIR, FEDGATE_OFFICER_ID,
FEDGATE_OFFICER_NAME, FEDGATE_OFFICER_ROLE, FEDGATE_OFFICER_PHONE, FEDGATE_OFFICER_ID_NUMBER.
"""


def exit_code_for_status(status: request_pb2.ResponseStatus.ValueType) -> ExitCode:
    """The exit code for a verified answer with ``status``."""
    if status == request_pb2.RESPONSE_STATUS_OK:
        return ExitCode.OK
    if status == request_pb2.RESPONSE_STATUS_PENDING:
        return ExitCode.QUEUED
    return ExitCode.AGENCY_DECLINED


_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DATA_LOSS,
    }
)


def exit_code_for_refusal(error: FedgateError) -> ExitCode:
    """The exit code for an error the gateway returned (not one raised locally)."""
    if isinstance(error, Expired):
        return ExitCode.AGENCY_DECLINED
    if isinstance(
        error,
        AgencyUnavailable
        | AgencyFault
        | AuditUnavailable
        | KeyUnavailable
        | LogInconsistent
        | StoreVersionError,
    ):
        return ExitCode.UNAVAILABLE
    if error.code in _UNAVAILABLE_CODES:
        return ExitCode.UNAVAILABLE
    return ExitCode.REFUSED


_KIND = {
    ExitCode.AGENCY_DECLINED: "expired",
    ExitCode.UNAVAILABLE: "unavailable",
    ExitCode.REFUSED: "refused",
}


def failure_outcome(error: Exception, request_id: str) -> Outcome:
    """What a failed submit/get/watch means: an error rebuilt from the gateway's status is a
    refusal or an outage; anything raised locally is a failed verification of the answer."""
    if isinstance(error, FedgateError) and isinstance(error.__cause__, grpc.RpcError):
        code = exit_code_for_refusal(error)
        return Outcome(_KIND[code], code, request_id, error=error)
    return Outcome("verification_failed", ExitCode.VERIFICATION_FAILED, request_id, error=error)


def answer_outcome(answer: Answer, *, hints: tuple[str, ...] = ()) -> Outcome:
    """The outcome of a verified answer."""
    code = exit_code_for_status(answer.response.status)
    return Outcome("answered", code, answer.response.request_id, answer=answer, hints=hints)


def emit(
    args: argparse.Namespace,
    outcome: Outcome,
    registry: Registry | None = None,
    *,
    stream: bool = False,
) -> int:
    """Print ``outcome`` (text, or JSON with ``--json``; one line each when ``stream``)."""
    if args.json:
        print(render_json(outcome, registry=registry, indent=None if stream else 2), flush=True)
    else:
        out, err = render_text(outcome, registry=registry)
        sys.stdout.write(out)
        sys.stdout.flush()
        sys.stderr.write(err)
    return outcome.exit_code


def local_error(args: argparse.Namespace, error: Exception) -> int:
    """Print a local error (exit code 2)."""
    return emit(args, Outcome("error", ExitCode.USAGE, error=error))
