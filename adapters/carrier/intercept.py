"""Interception on the carrier's call/SMS path, against the local risk list replica.

``world_feed`` generates a bounded, seeded feed of calls and SMS from the synthetic world: this
carrier's subscribers calling each other and other numbers, the world's fraud numbers calling and
texting subscribers, and now and then a subscriber calling a fraud number back.

``Interceptor.process`` decides each event in memory:

- a call or SMS whose caller is listed (phone number category, in force at the event's time)
  MUST be blocked and counted (per day and kind);
- a subscriber of this carrier called or texted by a listed number, or calling one, is a likely
  victim: an ``EarlyWarning`` is produced for them, at most ONE per subscriber per ``window``
  (default 24 hours), however many calls they get.

Counts are kept per day (China Standard Time) in the node's state (SQLite), so the statistics
outlive restarts; they hold numbers of events only, never a number or a name.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final

from fedgate.errors import AgencyUnavailable, InvalidArgument
from fedgate.risklist import RiskIndex, micros
from fedgate.storage import Schema, open_sqlite, open_store
from fedgate.types import CHINA_TIME
from fedgate.v1 import report_pb2, risklist_pb2

__all__ = ["COUNTS_FILE", "CallEvent", "InterceptionStats", "Interceptor", "Verdict", "world_feed"]

COUNTS_FILE = "interceptions.sqlite"
"""The daily interception counts in a carrier node's state directory."""

PHONE = risklist_pb2.RISK_CATEGORY_PHONE_NUMBER
DEFAULT_WINDOW = timedelta(hours=24)
_MAX_WARNED = 1_000_000
"""Subscribers remembered for de-duplication; the oldest are forgotten beyond this."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One call or SMS as the switch sees it. ``kind`` is ``voice`` or ``sms``."""

    at: datetime
    kind: str
    caller: str
    callee: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the path did with one event, and the warning it raised (if any)."""

    blocked: bool
    warning: report_pb2.EarlyWarning | None


def world_feed(
    database: Path,
    fraud_numbers: Sequence[str],
    *,
    count: int,
    seed: int,
    start: datetime,
    per_second: float = 50.0,
    fraud_share: float = 0.05,
) -> Iterator[CallEvent]:
    """``count`` events from ``start``, ``per_second`` on average, from the carrier's reference
    database at ``database`` and the world's ``fraud_numbers``. Deterministic for a seed."""
    db = open_sqlite(database, read_only=True)
    try:
        subscribers = [r[0] for r in db.execute("SELECT number FROM subscribers ORDER BY number")]
    finally:
        db.close()
    if not subscribers:
        raise AgencyUnavailable(f"{database} has no subscribers to generate calls for")
    rng = random.Random(seed)  # noqa: S311 - synthetic traffic, not secrets
    at = start
    for _ in range(count):
        at += timedelta(seconds=rng.expovariate(per_second))
        kind = "sms" if rng.random() < 0.4 else "voice"
        subscriber = rng.choice(subscribers)
        roll = rng.random()
        if fraud_numbers and roll < fraud_share:
            yield CallEvent(at, kind, rng.choice(fraud_numbers), subscriber)
        elif fraud_numbers and roll < fraud_share * 1.2:
            yield CallEvent(at, "voice", subscriber, rng.choice(fraud_numbers))
        else:
            yield CallEvent(at, kind, subscriber, rng.choice(subscribers))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS interception_counts (
    day     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    seen    INTEGER NOT NULL,
    blocked INTEGER NOT NULL,
    warned  INTEGER NOT NULL,
    PRIMARY KEY (day, kind)
);
"""

STORE = Schema(store="interception counts", version=1, create=_SCHEMA)


class InterceptionStats:
    """The stored daily counts, read for ``aggregate_stats`` (the telecom regulator's figures).

    ``total`` adds up the days (China time) the window touches, first and last day included:
    ``calls_intercepted`` (blocked voice calls), ``sms_intercepted`` (blocked SMS),
    ``early_warnings`` (warnings raised)."""

    _SQL: Final = {
        "calls_intercepted": "SELECT coalesce(sum(blocked), 0) FROM interception_counts "
        "WHERE kind = 'voice' AND day >= ? AND day <= ?",
        "sms_intercepted": "SELECT coalesce(sum(blocked), 0) FROM interception_counts "
        "WHERE kind = 'sms' AND day >= ? AND day <= ?",
        "early_warnings": "SELECT coalesce(sum(warned), 0) FROM interception_counts "
        "WHERE day >= ? AND day <= ?",
    }

    def __init__(self, path: Path) -> None:
        self._path = path

    def total(self, metric: str, first: date, last: date) -> int:
        """Raises ``InvalidArgument`` for an unknown metric, ``AgencyUnavailable`` when the
        counts cannot be read."""
        statement = self._SQL.get(metric)
        if statement is None:
            raise InvalidArgument(f"aggregate_stats.metric: {metric!r} is not a carrier figure")
        db = open_store(self._path, STORE, error=AgencyUnavailable)
        try:
            (count,) = db.execute(statement, (first.isoformat(), last.isoformat())).fetchone()
        except sqlite3.Error as exc:
            raise AgencyUnavailable(f"cannot read the interception counts: {exc}") from exc
        finally:
            db.close()
        return int(count)


class Interceptor:
    """The carrier's call/SMS check (see the module's contract). ``is_subscriber`` tells whether
    a number is this carrier's; ``name_of`` gives a subscriber's registered name for the
    warning (police need to reach the person)."""

    def __init__(
        self,
        *,
        index: RiskIndex,
        is_subscriber: Callable[[str], bool],
        name_of: Callable[[str], str],
        counts_path: Path,
        window: timedelta = DEFAULT_WINDOW,
    ) -> None:
        self._phones = index.table(PHONE)
        self._is_subscriber = is_subscriber
        self._name_of = name_of
        self._window_us = int(window.total_seconds() * 1_000_000)
        self._warned: dict[str, int] = {}
        self._pending: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._db = open_store(counts_path, STORE, error=AgencyUnavailable)

    def _listed(self, number: str, at_us: int) -> bool:
        return self._phones.get(number, 0) > at_us

    def process(self, event: CallEvent) -> Verdict:
        """Block or pass one event; count it; maybe warn (see the contract)."""
        at_us = micros(event.at)
        day = event.at.astimezone(CHINA_TIME).date().isoformat()
        blocked = self._listed(event.caller, at_us)
        victim, flagged = "", ""
        if blocked and self._is_subscriber(event.callee):
            victim, flagged = event.callee, event.caller
        elif self._listed(event.callee, at_us) and self._is_subscriber(event.caller):
            victim, flagged = event.caller, event.callee
        warning = None
        if victim:
            last = self._warned.get(victim)
            if last is None or at_us - last >= self._window_us:
                if len(self._warned) >= _MAX_WARNED:
                    self._warned.pop(next(iter(self._warned)))
                self._warned.pop(victim, None)
                self._warned[victim] = at_us
                warning = report_pb2.EarlyWarning(
                    subject=victim,
                    name=self._name_of(victim),
                    flagged=flagged,
                    # calling a fraud number back is the most urgent: the person is engaging
                    risk_level=5 if victim == event.caller else (4 if event.kind == "voice" else 3),
                )
                warning.contact_time.FromDatetime(event.at)
        with self._lock:
            self._pending[(day, event.kind, "seen")] += 1
            if blocked:
                self._pending[(day, event.kind, "blocked")] += 1
            if warning is not None:
                self._pending[(day, event.kind, "warned")] += 1
        return Verdict(blocked=blocked, warning=warning)

    def flush(self) -> None:
        """Add the counts gathered since the last flush to the stored daily counts."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            keys = {(day, kind) for day, kind, _ in pending}
            try:
                with self._db:
                    for day, kind in sorted(keys):
                        self._db.execute(
                            "INSERT INTO interception_counts (day, kind, seen, blocked, warned) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, kind) DO UPDATE SET "
                            "seen = seen + excluded.seen, blocked = blocked + excluded.blocked, "
                            "warned = warned + excluded.warned",
                            (
                                day,
                                kind,
                                pending[(day, kind, "seen")],
                                pending[(day, kind, "blocked")],
                                pending[(day, kind, "warned")],
                            ),
                        )
            except sqlite3.Error as exc:
                self._pending.update(pending)  # keep them for the next flush
                raise AgencyUnavailable(f"cannot store interception counts: {exc}") from exc

    def daily_counts(self) -> list[tuple[str, str, int, int, int]]:
        """(day, kind, seen, blocked, warned) for every stored day, oldest first."""
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT day, kind, seen, blocked, warned FROM interception_counts "
                "ORDER BY day, kind"
            ).fetchall()
        return [(str(d), str(k), int(s), int(b), int(w)) for d, k, s, b, w in rows]

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
