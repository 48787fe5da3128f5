"""``fedgate policy``: explain one access decision, or run the policy truth tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Imported here, not only where it decides: without the [gateway] extra this module fails to
# import, so `fedgate` leaves the group out instead of offering a command that cannot run.
import casbin  # noqa: F401

from gateway.policy import (
    DEFAULT_MEMBER_KINDS,
    CasbinDecider,
    IndexedDecider,
    PolicyConfigError,
    PolicyDecider,
    PolicyRequest,
    TruthRow,
    default_policy_dir,
    load_truth_table,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``policy`` command group to the top-level ``fedgate`` parser."""
    group = subparsers.add_parser(
        "policy",
        help="explain access decisions or test the policy",
        description="Work with the Casbin access policy in the policy folder "
        "(model.conf, policy.csv, tests/*.csv).",
    )
    sub = group.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    explain = sub.add_parser(
        "explain",
        help="show whether a request is allowed, and by which rule (exit 1 if denied)",
        description="Decide one request against the policy and say why. Members' kinds come "
        "from the default federation.",
    )
    explain.add_argument("--role", required=True, help="the role asserted in the request")
    explain.add_argument(
        "--member", required=True, help="the requesting member, e.g. police.gz.unit"
    )
    explain.add_argument("--action", required=True, help="the request kind, e.g. stop_payment")
    explain.add_argument("--target", required=True, help="the target member, e.g. bank.icbc")
    _dir_argument(explain)
    explain.set_defaults(func=_explain)

    test = sub.add_parser(
        "test",
        help="run every truth table in the policy folder's tests/ (exit 1 on any failure)",
        description="Check each row (role,member,action,target,allow|deny[,rule]) of "
        "tests/*.csv with both the pycasbin and the indexed decider.",
    )
    _dir_argument(test)
    test.set_defaults(func=_test)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help="folder holding model.conf and policy.csv (default: the shipped policies/)",
    )


def _folder(args: argparse.Namespace) -> Path:
    folder: Path | None = args.policy_dir
    return folder if folder is not None else default_policy_dir()


def _explain(args: argparse.Namespace) -> int:
    folder = _folder(args)
    try:
        decider = IndexedDecider.from_files(folder / "model.conf", folder / "policy.csv")
    except PolicyConfigError as exc:
        print(f"fedgate: error: {exc.message}", file=sys.stderr)
        return 2
    req = PolicyRequest.of(
        role=args.role, member=args.member, action=args.action, target=args.target
    )
    decision = decider.decide(req)
    member_kind = req.member_kind or "not a member"
    target_kind = req.target_kind or "not a member"
    print(f"request: {req.role} at {req.member} ({member_kind}) {req.action} -> ", end="")
    print(f"{req.target} ({target_kind})")
    print("ALLOWED" if decision.allowed else "DENIED")
    print(f"rule:    {', '.join(decision.rule) if decision.rule else '(none)'}")
    print(f"why:     {decision.explanation}")
    return 0 if decision.allowed else 1


def _test(args: argparse.Namespace) -> int:
    folder = _folder(args)
    try:
        deciders: dict[str, PolicyDecider] = {
            "casbin": CasbinDecider.from_files(folder / "model.conf", folder / "policy.csv"),
            "indexed": IndexedDecider.from_files(folder / "model.conf", folder / "policy.csv"),
        }
        tables = sorted((folder / "tests").glob("*.csv"))
        rows = [row for table in tables for row in load_truth_table(table)]
    except PolicyConfigError as exc:
        print(f"fedgate: error: {exc.message}", file=sys.stderr)
        return 2
    if not rows:
        print(f"fedgate: error: no truth-table rows in {folder / 'tests'}", file=sys.stderr)
        return 2
    failed = 0
    for row in rows:
        problems = _check(row, deciders)
        if problems:
            failed += 1
            print(f"FAIL {row}")
            for problem in problems:
                print(f"     {problem}")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _check(row: TruthRow, deciders: dict[str, PolicyDecider]) -> list[str]:
    req = row.request(DEFAULT_MEMBER_KINDS)
    decisions = {name: decider.decide(req) for name, decider in deciders.items()}
    problems = [
        f"{name}: {mismatch}"
        for name, decision in decisions.items()
        if (mismatch := row.mismatch(decision)) is not None
    ]
    answers = {(d.allowed, d.rule) for d in decisions.values()}
    if len(answers) > 1:
        problems.append(f"deciders disagree: {decisions}")
    return problems
