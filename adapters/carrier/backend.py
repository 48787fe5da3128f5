"""The seam between a carrier's agency node and its subscriber system.

:class:`SubscriberSystem` has one synchronous method per carrier action; the
node runs them in worker threads and turns the frozen dataclasses below into
protobuf. Times are timezone-aware datetimes.

Errors raised by an implementation:

- ``fedgate.errors.InvalidArgument`` for malformed input, naming the field; a
  number outside this carrier's ranges is invalid (field ``phone_number``);
- ``fedgate.errors.NotFound`` for a number in range that is not assigned;
- ``fedgate.errors.RuleViolated`` when an order cannot apply (e.g. restoring
  a number that is not suspended);
- ``fedgate.errors.AgencyUnavailable`` when the system cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

__all__ = [
    "LOCATION_MAX_AGE",
    "CallDirection",
    "CallRecord",
    "CallRecordPage",
    "CellLocation",
    "NumberState",
    "NumberStatus",
    "RecordKind",
    "RegistrationChannel",
    "SmsBlock",
    "Subscriber",
    "SubscriberSystem",
]

LOCATION_MAX_AGE = timedelta(hours=24)
"""A location older than this before the asked time is not an answer."""


class RegistrationChannel(StrEnum):
    """Where the SIM was registered to its owner."""

    STORE = "store"
    """营业厅, the carrier's own shop."""
    ONLINE = "online"
    """线上, online with remote identity verification."""
    AGENT = "agent"
    """代理点, a third-party agent."""


class NumberState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    """停机: out of service on an order, restorable."""
    BLOCKED = "blocked"
    """封停: shut down as fraud-linked, restorable only by a restore order."""
    CANCELLED = "cancelled"
    """销号: no longer assigned to the owner."""


class RecordKind(StrEnum):
    VOICE = "voice"
    SMS = "sms"


class CallDirection(StrEnum):
    OUT = "out"
    IN = "in"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """The registered owner of a number (机主信息)."""

    number: str
    carrier_id: str
    name: str
    id_number: str
    registered_at: datetime
    channel: RegistrationChannel
    status: NumberState


@dataclass(frozen=True, slots=True)
class NumberStatus:
    """A number's state, since when, and the order (if any) that put it there."""

    number: str
    carrier_id: str
    state: NumberState
    since: datetime
    reason: str
    order_ref: str


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call or SMS seen from ``number``'s side; ``duration_s`` is 0 for an SMS."""

    id: int
    number: str
    ts: datetime
    kind: RecordKind
    direction: CallDirection
    other_number: str
    duration_s: int
    cell_id: str


@dataclass(frozen=True, slots=True)
class CallRecordPage:
    """Records in time order; ``next_page_token`` is empty on the last page."""

    records: tuple[CallRecord, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class CellLocation:
    """The serving cell last seen for a number at or before the asked time (coarse)."""

    number: str
    cell_id: str
    lat: float
    lon: float
    radius_m: int
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class SmsBlock:
    """A sender whose SMS the carrier no longer delivers."""

    sender: str
    order_ref: str
    reason: str
    since: datetime


class SubscriberSystem(Protocol):
    """What a carrier's node needs from its subscriber system. Blocking and thread-safe."""

    @property
    def carrier_id(self) -> str:
        """The carrier's member id, e.g. ``carrier.cmcc``."""
        ...

    def subscriber(self, number: str) -> Subscriber:
        """The registered owner of a number."""
        ...

    def number_status(self, number: str) -> NumberStatus:
        """A number's state and the order that set it."""
        ...

    def sim_count(self, id_number: str) -> int:
        """How many live (not cancelled) numbers are registered under an ID; the count only."""
        ...

    def call_records(
        self,
        number: str,
        start: datetime,
        end: datetime,
        *,
        page_size: int,
        page_token: str,
        include_sms: bool,
    ) -> CallRecordPage:
        """Records with ``start <= ts < end`` in time order, one page at a time."""
        ...

    def location(self, number: str, at: datetime) -> CellLocation:
        """The cell last seen at or before ``at``; ``NotFound`` if none within 24 hours."""
        ...

    def suspend(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Suspend an active number; ``RuleViolated`` from any other state."""
        ...

    def block(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Block an active or suspended number as fraud-linked."""
        ...

    def restore(self, number: str, *, order_ref: str, reason: str, now: datetime) -> NumberStatus:
        """Restore a suspended or blocked number to service."""
        ...

    def block_sms_sender(
        self, sender: str, *, order_ref: str, reason: str, now: datetime
    ) -> SmsBlock:
        """Stop delivering SMS from ``sender``; ``RuleViolated`` if it is already blocked."""
        ...
