"""Per-officer and per-member token buckets against bulk harvesting (pipeline stage 7).

A request takes one token from its officer's bucket and one from its member's bucket; when
either is empty it is refused with ``QuotaExceeded`` and a ``retry_after_s``. With
``personal_data_only`` (the default) only ``PERSONAL_DATA_ACTIONS`` count at all.

Emergency stop-payments (``stop_payment`` with ``URGENCY_EMERGENCY``) are never throttled below
``emergency_floor_per_minute``: when the main buckets are empty they draw from a separate
bucket per officer refilled at the floor rate (holding 10 seconds' worth, at least one).

Shared (``[shared] store = "postgres"``): ``PgQuotas`` keeps the same buckets in one
PostgreSQL table that every gateway instance uses, so that an officer's quota is one quota
however many instances serve them. Each check is one transaction that locks the request's bucket
rows (``SELECT … FOR UPDATE``, in key order, so two checks never deadlock) and refills them by
the database's clock (one clock for every host). PostgreSQL rather than Redis: the gateway
already depends on it for the audit shards and the other shared state, the check touches two or
three rows, and ``bench/bench_shared.py`` measures its cost in the pipeline
(``pg_shared_state_overhead``); a second server to run, secure and back up was not needed.

Each check is O(1). Memory is bounded: a bucket idle long enough to have refilled completely is
indistinguishable from a new one and is dropped; past ``max_buckets`` per kind the least
recently used bucket is dropped as well (which can only be lenient to that one key, and the
member bucket still holds).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Final, Protocol

from fedgate.actions import PERSONAL_DATA_ACTIONS
from fedgate.errors import QuotaExceeded
from fedgate.storage import Schema
from fedgate.v1 import common_pb2
from gateway.config import ConfigError
from gateway.shared import PgPool

__all__ = ["PgQuotas", "QuotaConfig", "QuotaStore", "Quotas"]

_FLOOR_SECONDS: Final = 10.0
_DEFAULT_MAX_BUCKETS: Final = 100_000


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """Rates (tokens per minute) and bursts (bucket sizes) of the quotas."""

    officer_per_minute: float = 60
    officer_burst: int = 20
    member_per_minute: float = 3000
    member_burst: int = 500
    personal_data_only: bool = True
    emergency_floor_per_minute: float = 30
    """Emergency stop-payments per officer per minute that are never refused (0: no floor)."""

    def __post_init__(self) -> None:
        for name in ("officer_per_minute", "member_per_minute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"quotas.{name} must be a positive number, got {value!r}")
        floor = self.emergency_floor_per_minute
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not floor >= 0:
            raise ConfigError(
                f"quotas.emergency_floor_per_minute must be a number ≥ 0, got {floor!r}"
            )
        for name in ("officer_burst", "member_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"quotas.{name} must be an integer ≥ 1, got {value!r}")
        if not isinstance(self.personal_data_only, bool):
            raise ConfigError(
                f"quotas.personal_data_only must be true or false, got {self.personal_data_only!r}"
            )
        for name in ("officer_per_minute", "member_per_minute", "emergency_floor_per_minute"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"quotas.{name} must be finite")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> QuotaConfig:
        """The config from the TOML ``[quotas]`` table; ``ConfigError`` names a bad or unknown key.

        Missing keys keep their defaults.
        """
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"quotas.{key} is not a quota setting; known: {', '.join(sorted(known))}"
                )
        return cls(**data)  # type: ignore[arg-type]  # types are checked in __post_init__


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class _Buckets:
    """Token buckets of one kind (same rate and capacity), least recently used first."""

    __slots__ = ("_buckets", "_idle", "capacity", "max_buckets", "rate")

    def __init__(self, *, per_minute: float, capacity: float, max_buckets: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.max_buckets = max_buckets
        # After this long untouched a bucket is full again: forgetting it changes nothing.
        self._idle = capacity / self.rate
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def level(self, key: str, now: float) -> _Bucket:
        """The bucket of ``key`` refilled up to ``now`` (created full), now the most recent."""
        bucket = self._buckets.pop(key, None)
        self._evict(now)
        if bucket is None:
            bucket = _Bucket(self.capacity, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
            bucket.updated = max(bucket.updated, now)
        self._buckets[key] = bucket
        return bucket

    def wait(self, bucket: _Bucket) -> float:
        """Seconds until ``bucket`` holds a whole token."""
        return max(0.0, (1.0 - bucket.tokens) / self.rate)

    def _evict(self, now: float) -> None:
        """Drop buckets that are full again, then the least recent ones beyond the bound."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.updated < self._idle and len(buckets) < self.max_buckets:
                break
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class QuotaStore(Protocol):
    """What the pipeline's stage 7 needs: take a token for a request, or refuse it."""

    async def take(self, *, member: str, officer_id: str, action: str, urgency: int) -> None:
        """Take a token or raise ``QuotaExceeded`` (``AuditUnavailable`` if the shared state
        cannot be reached: fail closed)."""
        ...

    def close(self) -> None: ...


class Quotas:
    """The quota check of the pipeline, in this process. Thread-safe; O(1) per check."""

    def __init__(
        self,
        config: QuotaConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = _DEFAULT_MAX_BUCKETS,
    ) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._officers = _Buckets(
            per_minute=config.officer_per_minute,
            capacity=config.officer_burst,
            max_buckets=max_buckets,
        )
        self._members = _Buckets(
            per_minute=config.member_per_minute,
            capacity=config.member_burst,
            max_buckets=max_buckets,
        )
        floor = config.emergency_floor_per_minute
        self._floor = (
            _Buckets(
                per_minute=floor,
                capacity=max(1.0, floor / 60.0 * _FLOOR_SECONDS),
                max_buckets=max_buckets,
            )
            if floor > 0
            else None
        )

    def bucket_count(self) -> int:
        """Buckets held in memory, all kinds together."""
        with self._lock:
            floor = len(self._floor) if self._floor is not None else 0
            return len(self._officers) + len(self._members) + floor

    async def take(self, *, member: str, officer_id: str, action: str, urgency: int) -> None:
        """``check`` for the pipeline (no I/O: it does not wait)."""
        self.check(member=member, officer_id=officer_id, action=action, urgency=urgency)

    def close(self) -> None:
        """Nothing to release: the buckets are in memory."""

    def check(
        self,
        *,
        member: str,
        officer_id: str,
        action: str,
        urgency: int,
        now: float | None = None,
    ) -> None:
        """Take a token for this request or raise ``QuotaExceeded`` with ``retry_after_s``.

        ``now`` (seconds on the clock's scale) defaults to the injected clock.
        """
        cfg = self.config
        if cfg.personal_data_only and action not in PERSONAL_DATA_ACTIONS:
            return
        emergency = action == "stop_payment" and urgency == common_pb2.URGENCY_EMERGENCY
        officer_key = f"{member}\x00{officer_id}"
        with self._lock:
            at = self._clock() if now is None else now
            officer = self._officers.level(officer_key, at)
            agency = self._members.level(member, at)
            if officer.tokens >= 1.0 and agency.tokens >= 1.0:
                officer.tokens -= 1.0
                agency.tokens -= 1.0
                return
            officer_empty = officer.tokens < 1.0
            wait = max(self._officers.wait(officer), self._members.wait(agency))
            if emergency and self._floor is not None:
                floor = self._floor.level(officer_key, at)
                if floor.tokens >= 1.0:
                    floor.tokens -= 1.0
                    return
                wait = min(wait, self._floor.wait(floor))
        raise _over_quota(cfg, member, officer_id, officer_empty=officer_empty, wait=wait)


def _over_quota(
    cfg: QuotaConfig, member: str, officer_id: str, *, officer_empty: bool, wait: float
) -> QuotaExceeded:
    kind = "personal-data query" if cfg.personal_data_only else "request"
    if officer_empty:
        message = (
            f"officer {officer_id} of {member} is over the {kind} quota "
            f"({cfg.officer_per_minute:g}/min)"
        )
    else:
        message = f"member {member} is over its {kind} quota ({cfg.member_per_minute:g}/min)"
    # Rounded up to the millisecond, so that retrying after it finds a token.
    return QuotaExceeded(message, retry_after_s=math.ceil(wait * 1000) / 1000)


_PG_STORE = Schema(
    store="shared quotas",
    version=1,
    create="""
CREATE TABLE IF NOT EXISTS quota_buckets (
    key     TEXT PRIMARY KEY,
    tokens  DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_buckets_by_update ON quota_buckets (updated);
""",
)
# New buckets start full, at the database's time (one clock for every instance). An existing
# one is locked by the no-op update, so that a concurrent prune cannot delete it before the
# locking read below; keys are always given in one order (officer, member, floor): no deadlock.
_PG_CREATE = (
    "INSERT INTO quota_buckets (key, tokens, updated)"
    " SELECT k, c, EXTRACT(EPOCH FROM clock_timestamp())"
    " FROM unnest(%s::text[], %s::float8[]) AS t(k, c)"
    " ON CONFLICT (key) DO UPDATE SET tokens = quota_buckets.tokens"
)
_PG_LOCK = (
    "SELECT key, tokens, updated, EXTRACT(EPOCH FROM clock_timestamp())::float8"
    " FROM quota_buckets WHERE key = ANY(%s) ORDER BY key FOR UPDATE"
)
_PG_SET = "UPDATE quota_buckets SET tokens = %s, updated = %s WHERE key = %s"
_PG_PRUNE = "DELETE FROM quota_buckets WHERE updated < %s"
_SEP: Final = "\x1f"  # unit separator: in no member or officer id, allowed in PostgreSQL text
_PRUNE_EVERY_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class _Kind:
    prefix: str
    rate: float  # tokens per second
    capacity: float

    def level(self, tokens: float, updated: float, now: float) -> float:
        return min(self.capacity, tokens + max(0.0, now - updated) * self.rate)

    def wait(self, tokens: float) -> float:
        return max(0.0, (1.0 - tokens) / self.rate)


class PgQuotas:
    """The quotas of ``Quotas`` shared by every gateway instance on one PostgreSQL database.

    ``take`` MUST take a token from the officer's and the member's bucket atomically across
    instances (both or neither; row locks), so that N instances grant what one would. Buckets
    idle long enough to be full again are deleted every 30 seconds. Database failures raise
    ``AuditUnavailable``.
    """

    def __init__(self, config: QuotaConfig, *, dsn: str, schema: str, connections: int = 4) -> None:
        self.config = config
        self._pool = PgPool(
            dsn=dsn, schema=schema, store=_PG_STORE, what="shared quotas", connections=connections
        )
        self._officer = _Kind("o", config.officer_per_minute / 60.0, config.officer_burst)
        self._member = _Kind("m", config.member_per_minute / 60.0, config.member_burst)
        floor = config.emergency_floor_per_minute
        self._floor = (
            _Kind("f", floor / 60.0, max(1.0, floor / 60.0 * _FLOOR_SECONDS)) if floor > 0 else None
        )
        kinds = [self._officer, self._member] + ([self._floor] if self._floor else [])
        self._idle_s = max(k.capacity / k.rate for k in kinds)
        self._next_prune = 0.0

    async def take(self, *, member: str, officer_id: str, action: str, urgency: int) -> None:
        """As ``QuotaStore.take``."""
        cfg = self.config
        if cfg.personal_data_only and action not in PERSONAL_DATA_ACTIONS:
            return
        emergency = action == "stop_payment" and urgency == common_pb2.URGENCY_EMERGENCY
        officer_key = _SEP.join(("o", member, officer_id))
        member_key = _SEP.join(("m", member))
        floor_key = _SEP.join(("f", member, officer_id))
        kinds = {officer_key: self._officer, member_key: self._member}
        if emergency and self._floor is not None:
            kinds[floor_key] = self._floor
        # Pipelined: BEGIN, the creation of missing buckets and the locking read go in one round
        # trip; the updates and COMMIT in a second.
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute(
                _PG_CREATE, (list(kinds), [float(kind.capacity) for kind in kinds.values()])
            )
            rows = await (await conn.execute(_PG_LOCK, (list(kinds),))).fetchall()
            now = float(rows[0][3])
            levels = {str(k): kinds[str(k)].level(float(t), float(u), now) for k, t, u, _ in rows}
            take: list[str] = []
            if levels[officer_key] >= 1.0 and levels[member_key] >= 1.0:
                take = [officer_key, member_key]
            elif floor_key in levels and levels[floor_key] >= 1.0:
                take = [floor_key]
            for key in take:
                await conn.execute(_PG_SET, (levels[key] - 1.0, now, key))
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_EVERY_S
                await conn.execute(_PG_PRUNE, (now - self._idle_s,))
        if take:
            return
        officer_empty = levels[officer_key] < 1.0
        wait = max(self._officer.wait(levels[officer_key]), self._member.wait(levels[member_key]))
        if floor_key in levels and self._floor is not None:
            wait = min(wait, self._floor.wait(levels[floor_key]))
        raise _over_quota(cfg, member, officer_id, officer_empty=officer_empty, wait=wait)

    def close(self) -> None:
        self._pool.close()
