"""Warning and dissuasion (预警劝阻) at a police member: early warnings become tasks.

Early warnings arrive on the police member's alert stream (``AlertService``). ``pull_warnings``
checks each one (the reporting agency's signature over the report, by a registry key valid when
it was issued) and makes it a ``Task`` with a first-contact deadline (10 minutes by default).
An officer claims a task and records the contact: ``reached``, ``not_reached`` (the task stays
open for another attempt), ``persuaded`` or ``already_paid`` (the victim has paid: the money
must be chased and stopped).

Contract:

- every claim and every contact MUST be appended to the gateway's audit log (a signed event of
  this member, ``dissuasion_claimed`` / ``dissuasion_contact``, with the task, the outcome and
  whether the deadline was met, never the person's number or name) BEFORE the task changes:
  if the log cannot be written, the task is left as it was and the error raised;
- a warning whose signature does not verify MUST NOT become a task (it is counted in
  ``PullResult.refused``);
- a warning is a task once (by the report's request id), however often it is pulled.

The tasks live in a SQLite file of the police side (``TaskStore``); ``stats`` counts them per
day (warnings, contacted within the deadline, persuaded, already paid): counts only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

from fedgate.client import FedgateClient
from fedgate.envelope import Domain, decode_request, verify_envelope
from fedgate.errors import FedgateError, InvalidArgument, NotFound, PermissionRefused
from fedgate.storage import Schema, open_store
from fedgate.types import KeyId
from fedgate.v1 import alert_service_pb2

__all__ = [
    "FIRST_CONTACT",
    "STORE",
    "Outcome",
    "PullResult",
    "Task",
    "TaskState",
    "TaskStore",
    "claim",
    "pull_warnings",
    "record_contact",
]

FIRST_CONTACT: Final = timedelta(minutes=10)
"""Default time from the warning's arrival to the first contact with the person."""


class Outcome(StrEnum):
    REACHED = "reached"
    NOT_REACHED = "not_reached"
    PERSUADED = "persuaded"
    ALREADY_PAID = "already_paid"


class TaskState(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Task:
    """One dissuasion task: a likely victim to contact before they pay."""

    task_id: str
    sequence: int
    source_agency: str
    subject: str
    name: str
    flagged: str
    risk_level: int
    received_at: datetime
    deadline: datetime
    state: TaskState
    officer: str = ""
    outcome: str = ""
    contacted_at: datetime | None = None

    @property
    def contacted_in_time(self) -> bool:
        return self.contacted_at is not None and self.contacted_at <= self.deadline


@dataclass(frozen=True, slots=True)
class PullResult:
    """What one pull did: new tasks, warnings already known, warnings refused (bad signature)."""

    new: tuple[Task, ...]
    known: int
    refused: int
    last_sequence: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT PRIMARY KEY,
    sequence      INTEGER NOT NULL,
    source_agency TEXT NOT NULL,
    subject       TEXT NOT NULL,
    name          TEXT NOT NULL,
    flagged       TEXT NOT NULL,
    risk_level    INTEGER NOT NULL,
    received_us   INTEGER NOT NULL,
    deadline_us   INTEGER NOT NULL,
    state         TEXT NOT NULL,
    officer       TEXT NOT NULL DEFAULT '',
    outcome       TEXT NOT NULL DEFAULT '',
    contacted_us  INTEGER
);
CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY CHECK (id = 1), sequence INTEGER);
"""
STORE = Schema(store="dissuasion task store", version=1, create=_SCHEMA)
_COLUMNS = (
    "SELECT task_id, sequence, source_agency, subject, name, flagged, risk_level, received_us, "
    "deadline_us, state, officer, outcome, contacted_us FROM tasks"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class TaskStore:
    """The police side's dissuasion tasks (SQLite, WAL, ``synchronous=FULL``)."""

    def __init__(self, path: Path, *, first_contact: timedelta = FIRST_CONTACT) -> None:
        self._db = open_store(path, STORE, error=FedgateError)
        self._lock = threading.Lock()
        self.first_contact = first_contact

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def last_sequence(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT sequence FROM cursor").fetchone()
        return int(row[0]) if row else 0

    def add(self, task: Task, *, sequence: int) -> bool:
        """Store ``task`` (False if known already) and move the cursor to ``sequence``."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO tasks (task_id, sequence, source_agency, subject, name, "
                "flagged, risk_level, received_us, deadline_us, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.task_id,
                    task.sequence,
                    task.source_agency,
                    task.subject,
                    task.name,
                    task.flagged,
                    task.risk_level,
                    _us(task.received_at),
                    _us(task.deadline),
                    task.state.value,
                ),
            )
            self._move_cursor(sequence)
            return cursor.rowcount == 1

    def _move_cursor(self, sequence: int) -> None:
        self._db.execute(
            "INSERT INTO cursor (id, sequence) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET "
            "sequence = max(sequence, excluded.sequence)",
            (sequence,),
        )

    def skip_to(self, sequence: int) -> None:
        with self._lock, self._db:
            self._move_cursor(sequence)

    def get(self, task_id: str) -> Task:
        with self._lock:
            row = self._db.execute(_COLUMNS + " WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"no dissuasion task {task_id}")
        return _task(row)

    def tasks(self, *, state: TaskState | None = None) -> list[Task]:
        """Tasks, most urgent first (earliest deadline)."""
        with self._lock:
            if state is None:
                rows = self._db.execute(_COLUMNS + " ORDER BY deadline_us").fetchall()
            else:
                rows = self._db.execute(
                    _COLUMNS + " WHERE state = ? ORDER BY deadline_us", (state.value,)
                ).fetchall()
        return [_task(r) for r in rows]

    def set_state(
        self, task_id: str, state: TaskState, officer: str, outcome: str, at: datetime | None
    ) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE tasks SET state = ?, officer = ?, outcome = ?, contacted_us = ? "
                "WHERE task_id = ?",
                (state.value, officer, outcome, None if at is None else _us(at), task_id),
            )

    def stats(self) -> list[tuple[str, int, int, int, int]]:
        """Per UTC day of arrival: (day, warnings, contacted within the deadline, persuaded,
        already paid). Counts only."""
        out: dict[str, list[int]] = {}
        for t in self.tasks():
            row = out.setdefault(t.received_at.date().isoformat(), [0, 0, 0, 0])
            row[0] += 1
            row[1] += t.contacted_in_time and t.outcome != Outcome.NOT_REACHED
            row[2] += t.outcome == Outcome.PERSUADED
            row[3] += t.outcome == Outcome.ALREADY_PAID
        return [(day, *counts) for day, counts in sorted(out.items())]  # type: ignore[misc]


def _task(row: Sequence[object]) -> Task:
    tid, seq, src, subject, name, flagged, risk, rec, dl, state, officer, outcome, contacted = row
    return Task(
        task_id=str(tid),
        sequence=int(seq),  # type: ignore[call-overload]
        source_agency=str(src),
        subject=str(subject),
        name=str(name),
        flagged=str(flagged),
        risk_level=int(risk),  # type: ignore[call-overload]
        received_at=_at(int(rec)),  # type: ignore[call-overload]
        deadline=_at(int(dl)),  # type: ignore[call-overload]
        state=TaskState(str(state)),
        officer=str(officer),
        outcome=str(outcome),
        contacted_at=None if contacted is None else _at(int(contacted)),  # type: ignore[call-overload]
    )


def _check(client: FedgateClient, alert: alert_service_pb2.SubscribeAlertsResponse) -> Task:
    """The task for one alert; raises ``FedgateError`` if the report does not verify."""
    request = decode_request(alert.report.body)
    issued = request.issued_at.ToDatetime(tzinfo=UTC)
    owner, key = client.registry.signing_key(KeyId(alert.report.key_id), at=issued)
    if owner.id != alert.source_agency or request.requesting_agency != alert.source_agency:
        raise PermissionRefused(f"the warning is not signed by its source {alert.source_agency}")
    verify_envelope(alert.report, key, Domain.REQUEST)
    if request.WhichOneof("action") != "early_warning":
        raise InvalidArgument("not an early warning")
    w = request.early_warning
    received = alert.received_at.ToDatetime(tzinfo=UTC)
    return Task(
        task_id=request.request_id,
        sequence=alert.sequence,
        source_agency=alert.source_agency,
        subject=w.subject,
        name=w.name,
        flagged=w.flagged,
        risk_level=w.risk_level,
        received_at=received,
        deadline=received,  # replaced by the store's first-contact time below
        state=TaskState.OPEN,
    )


async def pull_warnings(
    client: FedgateClient, store: TaskStore, *, wait_s: float = 1.0, limit: int = 1000
) -> PullResult:
    """Read the early warnings after the store's cursor (until none comes for ``wait_s``, or
    ``limit``) and make each verified one a task."""
    new: list[Task] = []
    known = refused = 0
    last = store.last_sequence
    async for alert in client.alerts(kinds=("early_warning",), after=last, idle_s=wait_s):
        last = max(last, alert.sequence)
        try:
            task = _check(client, alert)
        except FedgateError:
            refused += 1
            store.skip_to(alert.sequence)
            continue
        task = replace(task, deadline=task.received_at + store.first_contact)
        if store.add(task, sequence=alert.sequence):
            new.append(task)
        else:
            known += 1
        if len(new) + known + refused >= limit:
            break
    return PullResult(tuple(new), known, refused, last)


async def claim(
    client: FedgateClient,
    store: TaskStore,
    task_id: str,
    *,
    officer: str,
    now: datetime | None = None,
) -> Task:
    """``officer`` takes the task (logged first); raises ``PermissionRefused`` if another
    officer holds it or it is closed, ``NotFound`` for an unknown task."""
    task = store.get(task_id)
    at = now or datetime.now(UTC)
    if task.state == TaskState.CLOSED or (task.officer and task.officer != officer):
        raise PermissionRefused(
            f"task {task_id} is {task.state.value}{' by ' + task.officer if task.officer else ''}"
        )
    await client.record_event(
        kind="dissuasion_claimed",
        actor=officer,
        at=at,
        detail=[("task", task_id), ("source", task.source_agency)],
    )
    store.set_state(task_id, TaskState.CLAIMED, officer, task.outcome, task.contacted_at)
    return store.get(task_id)


async def record_contact(
    client: FedgateClient,
    store: TaskStore,
    task_id: str,
    *,
    officer: str,
    outcome: Outcome,
    now: datetime | None = None,
) -> Task:
    """Record the contact (logged first); ``not_reached`` leaves the task claimed for another
    attempt, any other outcome closes it. Only the officer who claimed it may record."""
    task = store.get(task_id)
    at = now or datetime.now(UTC)
    if task.state != TaskState.CLAIMED or task.officer != officer:
        raise PermissionRefused(
            f"task {task_id} must be claimed by {officer} first (it is {task.state.value}"
            f"{' by ' + task.officer if task.officer else ''})"
        )
    in_time = at <= task.deadline
    await client.record_event(
        kind="dissuasion_contact",
        actor=officer,
        at=at,
        detail=[
            ("task", task_id),
            ("source", task.source_agency),
            ("outcome", outcome.value),
            ("within_deadline", "yes" if in_time else "no"),
        ],
    )
    if outcome == Outcome.NOT_REACHED:
        store.set_state(task_id, TaskState.CLAIMED, officer, outcome.value, task.contacted_at)
    else:
        store.set_state(task_id, TaskState.CLOSED, officer, outcome.value, at)
    return store.get(task_id)
