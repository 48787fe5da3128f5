"""The patterns the auditor console flags for a closer look, and their thresholds.

Four patterns, all computed from the audit log's searchable columns (``LogInsights``):

- **volume**: an officer's personal-data queries on one day exceed ``VOLUME_FACTOR`` times the
  median of that officer's other active days (in the window and the ``BASELINE_DAYS`` before
  it; 0 when there are none) and number at least ``VOLUME_MINIMUM``;
- **off hours**: queries before ``WORK_START`` or from ``WORK_END`` on, China time;
- **no order**: personal-data queries in a case that no order in the same case followed within
  ``FOLLOW_UP`` (judged only once that time has passed, so recent queries are not flagged);
- **refusals**: at least ``REFUSALS_MINIMUM`` refusals (by the gateway or the agency) for one
  officer in one day.

Volume and off-hours count *allowed* requests only: since the gateway checks every police officer
against the member's signed roster, those are real officers' requests; a refused request (an
officer not on the roster, say) counts towards the refusals flag under the badge it named.

A flag is a reason to read the entries, not a finding: each links to the search that shows them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Protocol

from fedgate.actions import IDEMPOTENT_READS, ORDER_ACTIONS, PERSONAL_DATA_ACTIONS
from fedgate.audit_entry import micros_to_time, time_to_micros
from gateway.audit.insights import (
    US_PER_DAY,
    CaseWithoutOrder,
    OfficerDay,
    TimeWindow,
    day_of,
)

__all__ = [
    "BASELINE_DAYS",
    "FOLLOW_UP",
    "REFUSALS_MINIMUM",
    "VOLUME_FACTOR",
    "VOLUME_MINIMUM",
    "WORK_END",
    "WORK_START",
    "Flags",
    "VolumeFlag",
    "find_flags",
]

VOLUME_FACTOR: Final = 3.0
VOLUME_MINIMUM: Final = 20
BASELINE_DAYS: Final = 30
WORK_START: Final = 7
WORK_END: Final = 21
FOLLOW_UP: Final = timedelta(days=7)
REFUSALS_MINIMUM: Final = 3


@dataclass(frozen=True, slots=True)
class VolumeFlag:
    """An officer-day far above the officer's usual volume; ``baseline`` is the median of the
    officer's other active days (``days`` of them)."""

    member: str
    officer_id: str
    day: date
    count: int
    baseline: float
    days: int
    first_index: int
    origin: str = ""
    """The shard ``first_index`` is in (empty: the one read)."""


@dataclass(frozen=True, slots=True)
class Flags:
    """Everything flagged in one window, latest first within each pattern."""

    window: TimeWindow
    volume: tuple[VolumeFlag, ...]
    off_hours: tuple[OfficerDay, ...]
    without_order: tuple[CaseWithoutOrder, ...]
    without_order_until: datetime
    """Queries after this are too recent to judge."""
    refusals: tuple[OfficerDay, ...]

    @property
    def count(self) -> int:
        return len(self.volume) + len(self.off_hours) + len(self.without_order) + len(self.refusals)


def _volume(rows: list[OfficerDay], since: date) -> list[VolumeFlag]:
    by_officer: dict[tuple[str, str], list[OfficerDay]] = defaultdict(list)
    for row in rows:
        by_officer[(row.member, row.officer_id)].append(row)
    flags: list[VolumeFlag] = []
    for days in by_officer.values():
        for row in days:
            if row.day < since or row.count < VOLUME_MINIMUM:
                continue
            others = [d.count for d in days if d.day != row.day]
            baseline = float(statistics.median(others)) if others else 0.0
            if row.count > VOLUME_FACTOR * baseline:
                flags.append(
                    VolumeFlag(
                        row.member,
                        row.officer_id,
                        row.day,
                        row.count,
                        baseline,
                        len(others),
                        row.first_index,
                        row.origin,
                    )
                )
    flags.sort(key=lambda f: (f.day, f.count), reverse=True)
    return flags


class FlagSource(Protocol):
    """Where the flags are counted: one shard's ``LogInsights``, or every shard's
    (``gateway.console._shards.Shards``)."""

    async def officer_days(
        self, window: TimeWindow, actions: Collection[str]
    ) -> list[OfficerDay]: ...

    async def off_hours(
        self, window: TimeWindow, actions: Collection[str], *, start_hour: int, end_hour: int
    ) -> list[OfficerDay]: ...

    async def without_order(
        self,
        window: TimeWindow,
        *,
        queries: Collection[str],
        orders: Collection[str],
        within_us: int,
    ) -> list[CaseWithoutOrder]: ...

    async def refusal_days(self, window: TimeWindow, *, minimum: int) -> list[OfficerDay]: ...


async def find_flags(insights: FlagSource, window: TimeWindow, *, now: datetime) -> Flags:
    """The four patterns in ``window`` (see the module docstring)."""
    baseline = TimeWindow(window.since_us - BASELINE_DAYS * US_PER_DAY, window.until_us)
    history = await insights.officer_days(baseline, PERSONAL_DATA_ACTIONS)
    volume = _volume(history, day_of(window.since_us))
    off_hours = await insights.off_hours(
        window, IDEMPOTENT_READS, start_hour=WORK_START, end_hour=WORK_END
    )
    judged_until = min(window.until_us, time_to_micros(now - FOLLOW_UP))
    without_order = (
        await insights.without_order(
            TimeWindow(window.since_us, judged_until),
            queries=PERSONAL_DATA_ACTIONS,
            orders=ORDER_ACTIONS,
            within_us=int(FOLLOW_UP.total_seconds() * 1_000_000),
        )
        if judged_until > window.since_us
        else []
    )
    refusals = await insights.refusal_days(window, minimum=REFUSALS_MINIMUM)
    return Flags(
        window=window,
        volume=tuple(volume),
        off_hours=tuple(off_hours),
        without_order=tuple(without_order),
        without_order_until=micros_to_time(judged_until),
        refusals=tuple(refusals),
    )
