"""Retention of personal data: destroying case keys when their time is up (crypto-shredding).

A case is **closed** when nothing has been logged under it for ``close_after_idle`` (its last
order, answer, renewal, release or reveal): the log has no other reliable signal, since orders
lapse on their own and a case can be re-opened by the next request. Its data key is destroyed
``keep_after_close`` after that, i.e. once ``close_after_idle + keep_after_close`` have passed
since the last activity. Entries outside any case are keyed by month and age the same way.

``run_retention`` is the one job (the gateway runs it every ``interval``; ``fedgate audit
retention`` runs it once). A sealed log (``audit.kek_path``) destroys case keys; a PostgreSQL
log, sealed or not, also detaches whole months of leaves past retention, which is how an
unsealed log's personal data leaves the store. For each key due it MUST first append a
``body_key_destroyed`` event (which case, which rule, when it closed) and only then erase the
key: a deletion that could not be logged does not happen. A key that comes back into use
before the job reaches it is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from fedgate.audit_entry import EventEntry, time_to_micros
from fedgate.auditverify import RETIRED_EVENT
from fedgate.errors import FedgateError
from gateway.audit._bodies import BodyVault
from gateway.audit._partition import RetiredMonth

__all__ = [
    "KEY_DESTROYED_EVENT",
    "MonthRetirer",
    "RetentionPolicy",
    "retention_loop",
    "run_retention",
]

KEY_DESTROYED_EVENT = "body_key_destroyed"

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """When case keys are destroyed; ``rule`` names it in the log and in reveals."""

    close_after_idle: timedelta = timedelta(days=365)
    keep_after_close: timedelta = timedelta(days=3 * 365)
    interval: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        for name in ("close_after_idle", "keep_after_close", "interval"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"retention {name} must not be negative")

    @property
    def rule(self) -> str:
        idle, keep = self.close_after_idle.days, self.keep_after_close.days
        return f"retention/closed-after-{idle}d-idle+kept-{keep}d"


class _Appender(Protocol):
    """What the job needs of the log (``AuditLog``)."""

    async def append(self, entry: EventEntry) -> object: ...


class MonthRetirer(Protocol):
    """The months of a PostgreSQL log partitioned by month (``pg_store.PgMonthRetention``)."""

    def due(self, cutoff_us: int) -> list[RetiredMonth]: ...

    def retire(self, month: RetiredMonth, *, rule: str, now_us: int) -> str: ...


async def run_retention(
    log: _Appender,
    vault: BodyVault | None,
    policy: RetentionPolicy,
    *,
    actor: str,
    now: datetime,
    months: MonthRetirer | None = None,
) -> list[str]:
    """Destroy every case key of ``vault`` (none without one) whose retention ended by ``now``;
    returns their refs. Then, with ``months``, detach each month of leaves whose every entry is
    past retention, logging a ``leaves_retired`` event first. Raises ``AuditUnavailable`` when
    a deletion cannot be logged (that key or month is then kept)."""
    cutoff = now - policy.close_after_idle - policy.keep_after_close
    destroyed = [] if vault is None else await _destroy_keys(log, vault, policy, actor, now, cutoff)
    if months is not None:
        await _retire_months(log, months, policy, actor=actor, now=now, cutoff=cutoff)
    return destroyed


async def _destroy_keys(
    log: _Appender,
    vault: BodyVault,
    policy: RetentionPolicy,
    actor: str,
    now: datetime,
    cutoff: datetime,
) -> list[str]:
    destroyed: list[str] = []
    for ref in await asyncio.to_thread(vault.keys_idle_since, cutoff):
        key = await asyncio.to_thread(vault.case_key, ref)
        if key is None or key.destroyed is not None or key.last_used >= cutoff:
            continue
        closed = key.last_used + policy.close_after_idle
        await log.append(
            EventEntry(
                kind=KEY_DESTROYED_EVENT,
                actor=actor,
                member=actor,
                at=now,
                detail=(
                    ("case", ref),
                    ("rule", policy.rule),
                    ("last_activity", key.last_used.astimezone(UTC).date().isoformat()),
                    ("closed", closed.astimezone(UTC).date().isoformat()),
                ),
            )
        )
        await asyncio.to_thread(_destroy, vault, ref, policy.rule, now)
        destroyed.append(ref)
    if destroyed:
        _log.info("retention destroyed %d case keys under %s", len(destroyed), policy.rule)
    return destroyed


async def _retire_months(
    log: _Appender,
    months: MonthRetirer,
    policy: RetentionPolicy,
    *,
    actor: str,
    now: datetime,
    cutoff: datetime,
) -> None:
    now_us, cutoff_us = time_to_micros(now), time_to_micros(cutoff)
    for month in await asyncio.to_thread(months.due, cutoff_us):
        await log.append(
            EventEntry(
                kind=RETIRED_EVENT,  # what ``fedgate audit verify`` looks for
                actor=actor,
                member=actor,
                at=now,
                detail=(
                    ("month", month.name),
                    ("rule", policy.rule),
                    ("entries", _span_list(month.ranges)),
                    ("retired", _span_list(month.through)),
                ),
            )
        )
        table = await asyncio.to_thread(months.retire, month, rule=policy.rule, now_us=now_us)
        _log.info("retention detached the leaves of %s (table %s)", month.name, table)


def _span_list(ranges: tuple[tuple[str, int, int], ...]) -> str:
    """``origin first..last; ...``: the form ``fedgate audit verify`` reads back."""
    return "; ".join(f"{o} {a}..{b - 1}" for o, a, b in ranges)


def _destroy(vault: BodyVault, ref: str, rule: str, now: datetime) -> None:
    vault.destroy(ref, rule=rule, now=now)


async def retention_loop(
    log: _Appender,
    vault: BodyVault | None,
    policy: RetentionPolicy,
    *,
    actor: str,
    months: MonthRetirer | None = None,
) -> None:
    """Run the retention job every ``policy.interval`` until cancelled. A failed run (the log
    or the bodies unavailable) is logged and tried again at the next interval: keys are kept
    meanwhile, never destroyed unlogged."""
    while True:
        try:
            await run_retention(
                log, vault, policy, actor=actor, now=datetime.now(UTC), months=months
            )
        except FedgateError as exc:
            _log.error("retention run failed, keys kept until the next run: %s", exc.message)
        await asyncio.sleep(policy.interval.total_seconds())
