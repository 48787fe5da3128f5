"""``fedgate warn pull|list|claim|record|stats``: early warnings as dissuasion tasks (预警劝阻).

``pull`` reads the police member's early warnings from the gateway's alert stream and makes each
verified one a task with a first-contact deadline (10 minutes by default); ``list`` shows the
tasks, most urgent first, with the person's number masked; ``claim`` takes a task and shows the
number to call; ``record`` logs the contact (reached, not_reached, persuaded, already_paid).
Claims and contacts are signed events in the gateway's audit log before the task changes.
The tasks are kept in ``--tasks`` (``$FEDGATE_TASKS``, default ``dissuasion.sqlite`` next to the
federation directory). Exit codes: 0 done, 2 refused or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fedgate.commands._police import DEFAULT_FEDERATION, add_connection_options, open_client
from fedgate.dissuasion import (
    FIRST_CONTACT,
    Outcome,
    Task,
    TaskState,
    TaskStore,
    claim,
    pull_warnings,
    record_contact,
)
from fedgate.errors import FedgateError
from fedgate.logs import mask
from fedgate.protojson import iso_time

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``warn`` command group to the top-level ``fedgate`` parser."""
    group = subparsers.add_parser(
        "warn",
        help="early warnings as dissuasion tasks: pull, list, claim, record, stats",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    sub = group.add_subparsers(dest="warn_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--tasks", type=Path, metavar="FILE", help="the task file")
        p.add_argument(
            "--first-contact-minutes",
            type=float,
            default=FIRST_CONTACT.total_seconds() / 60,
            help="deadline for the first contact after a warning arrives (default 10)",
        )
        add_connection_options(p, timeout=10.0)
        return p

    pull = command("pull", "make the new early warnings tasks")
    pull.add_argument("--wait", type=float, default=1.0, help="stop after this many idle seconds")
    pull.set_defaults(func=lambda a: asyncio.run(_pull(a)))
    listing = command("list", "the tasks, most urgent first")
    listing.add_argument(
        "--state", choices=["open", "claimed", "closed", "all"], default="all", help="filter"
    )
    listing.set_defaults(func=_list)
    take = command("claim", "take a task (shows the number to call)")
    take.add_argument("task_id", metavar="TASK")
    take.add_argument("--officer", required=True, help="your officer id")
    take.set_defaults(func=lambda a: asyncio.run(_claim(a)))
    record = command("record", "log the contact with the person")
    record.add_argument("task_id", metavar="TASK")
    record.add_argument("--officer", required=True, help="your officer id")
    record.add_argument("--outcome", required=True, choices=[o.value for o in Outcome])
    record.set_defaults(func=lambda a: asyncio.run(_record(a)))
    stats = command("stats", "per day: warnings, contacted in time, persuaded, already paid")
    stats.set_defaults(func=_stats)


def _store(args: argparse.Namespace) -> TaskStore:
    chosen = args.tasks or os.environ.get("FEDGATE_TASKS")
    if chosen:
        path = Path(chosen)
    else:
        federation = args.federation or os.environ.get("FEDGATE_FEDERATION") or DEFAULT_FEDERATION
        path = Path(federation).parent / "dissuasion.sqlite"
    return TaskStore(path, first_contact=timedelta(minutes=args.first_contact_minutes))


def _row(task: Task, *, full: bool = False) -> dict[str, object]:
    left = (task.deadline - datetime.now(UTC)).total_seconds()
    return {
        "task": task.task_id,
        "state": task.state.value,
        "from": task.source_agency,
        "risk": task.risk_level,
        "person": task.subject if full else mask(task.subject),
        "name": task.name if full else "",
        "flagged": mask(task.flagged),
        "deadline": iso_time(task.deadline),
        "seconds_left": round(left),
        "officer": task.officer,
        "outcome": task.outcome,
    }


def _print(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    for r in rows:
        late = "" if int(str(r["seconds_left"])) > 0 or r["state"] == "closed" else "  OVERDUE"
        who = f" {r['name']}" if r["name"] else ""
        print(
            f"{r['task']}  {r['state']:<7} risk {r['risk']}  {r['person']}{who}  "
            f"(contacted by {r['flagged']}, from {r['from']})  due {r['deadline']}{late}"
            + (f"  {r['officer']}: {r['outcome']}" if r["outcome"] else "")
        )


async def _pull(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        async with open_client(args) as client:
            result = await pull_warnings(client, store, wait_s=args.wait)
    except FedgateError as exc:
        print(f"fedgate warn: {exc.message}")
        return 2
    finally:
        store.close()
    _print(args, [_row(t) for t in result.new])
    if not args.json:
        print(
            f"{len(result.new)} new task(s), {result.known} known, {result.refused} refused "
            "(signature did not verify)"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        state = None if args.state == "all" else TaskState(args.state)
        _print(args, [_row(t) for t in store.tasks(state=state)])
    finally:
        store.close()
    return 0


async def _claim(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        async with open_client(args) as client:
            task = await claim(client, store, args.task_id, officer=args.officer)
    except FedgateError as exc:
        print(f"fedgate warn: {exc.message}")
        return 2
    finally:
        store.close()
    _print(args, [_row(task, full=True)])
    return 0


async def _record(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        async with open_client(args) as client:
            task = await record_contact(
                client, store, args.task_id, officer=args.officer, outcome=Outcome(args.outcome)
            )
    except FedgateError as exc:
        print(f"fedgate warn: {exc.message}")
        return 2
    finally:
        store.close()
    _print(args, [_row(task)])
    if task.outcome == Outcome.ALREADY_PAID and not args.json:
        print("the person has paid: stop the money now (fedgate order stop-payment …) and chase it")
    return 0


def _stats(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.stats()
    finally:
        store.close()
    for day, warnings, in_time, persuaded, paid in rows:
        if args.json:
            print(
                json.dumps(
                    {
                        "day": day,
                        "warnings": warnings,
                        "contacted_within_deadline": in_time,
                        "persuaded": persuaded,
                        "already_paid": paid,
                    }
                )
            )
        else:
            print(
                f"{day}  warnings {warnings}  contacted in time {in_time}  "
                f"persuaded {persuaded}  already paid {paid}"
            )
    return 0
