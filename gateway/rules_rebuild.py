"""The business-rule state as a projection of the audit log, rebuilt at start-up.

Every order the rules count (stop-payments and their extensions and releases, freezes, renewals
and releases, monitors) reaches the state only through ``BusinessRules.record_outcome``, after
its response leg ``ok`` is durable in the log (stage 11 before the outcome is recorded; a leg
reconciled after a crash is an ``ok`` response leg like any other). So the log holds every
outcome the state ever held, and ``rebuild_rules`` replays them, in log order, into an empty
state: a state file lost, locked or restored from an old copy can no longer let a third
stop-payment through, because there is no such file (``BusinessRules.in_memory``).

The response legs are found through the search index (action and outcome), and each one's
request leg is read back for the order's fields: only orders are read, however long the log.
A ticket answered through this instance but opened through another has its request leg in the
other instance's shard (``ResponseLeg.request_origin``): its index row carries the request's
columns (so the search finds it) and ``request_leaf_index`` -1, and the request leg is read
from that shard of the same database (``shard_leaf``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.actions import ORDER_ACTIONS
from fedgate.audit_entry import EntryKind, RequestLeg, ResponseLeg, decode_entry, micros_to_time
from fedgate.envelope import decode_request
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.sealed import sealed_digest
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.store import IndexedRow, SearchQuery
from gateway.rules import BusinessRules

__all__ = ["OrderSource", "RulesRebuilt", "rebuild_rules"]

_PAGE: Final = 5_000


class OrderSource(Protocol):
    """A reader of one log shard (``SqliteDatabase``, ``PgDatabase``)."""

    def search(self, query: SearchQuery) -> list[IndexedRow]: ...

    def leaves(self, start: int, stop: int) -> list[bytes]: ...

    def shard_leaf(self, origin: str, index: int) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RulesRebuilt:
    """What ``rebuild_rules`` did: executed orders replayed and how long it took."""

    orders: int
    seconds: float
    sealed_elsewhere: int = 0
    """Orders answered here whose request leg, in another shard, is sealed with that shard's
    bodies (this instance's vault opens its own shard's only): recorded when answered, not
    again here (docs/operations.md)."""


def _executed(source: OrderSource) -> list[IndexedRow]:
    """The ``ok`` response legs of every order action, in log order."""
    rows: list[IndexedRow] = []
    for action in sorted(ORDER_ACTIONS):
        after = -1
        while True:
            page = source.search(
                SearchQuery(action=action, outcome="ok", after_index=after, limit=_PAGE)
            )
            rows += [r for r in page if r.columns[0] == EntryKind.RESPONSE]
            if len(page) < _PAGE:
                break
            after = page[-1].index
    rows.sort(key=lambda r: r.index)
    return rows


def _request_leaf(source: OrderSource, row: IndexedRow, origin: str) -> tuple[str, int, bytes]:
    """The shard, index and leaf of ``row``'s request leg (in another shard for a ticket
    answered through this instance but opened through another)."""
    index = row.columns[11]
    if index >= 0:
        found: Sequence[bytes] = source.leaves(index, index + 1)
        if not found:
            raise AuditUnavailable(
                f"audit shard {origin!r}: entry {row.index} answers request entry {index}, "
                "which is missing"
            )
        return origin, index, found[0]
    own = source.leaves(row.index, row.index + 1)
    try:
        leg = decode_entry(own[0]) if own else None
    except FedgateError as exc:
        raise AuditUnavailable(
            f"audit shard {origin!r}: the response leg {row.index} is unreadable: {exc}"
        ) from exc
    if not isinstance(leg, ResponseLeg) or not leg.request_origin:
        raise AuditUnavailable(
            f"audit shard {origin!r}: entry {row.index} is indexed as a response leg naming "
            "a request leg in another shard, but it names none"
        )
    index = leg.request_leaf_index
    leaf = source.shard_leaf(leg.request_origin, index)
    if leaf is None:
        raise AuditUnavailable(
            f"audit shard {origin!r}: entry {row.index} answers entry {index} of audit shard "
            f"{leg.request_origin!r}, which this database does not hold"
        )
    return leg.request_origin, index, leaf


def _request_of(source: OrderSource, row: IndexedRow, origin: str) -> request_pb2.Request | None:
    """The order ``row`` answers; ``None`` when its request leg is in another shard and sealed
    there (this instance cannot open it)."""
    own = origin
    origin, index, leaf = _request_leaf(source, row, origin)
    try:
        leg = decode_entry(leaf)
        if not isinstance(leg, RequestLeg) or leg.request_id != row.columns[1]:
            raise AuditUnavailable(
                f"audit shard {origin!r}: entry {index} is not the request leg of {row.columns[1]}"
            )
        if origin != own and sealed_digest(leg.envelope) is not None:
            return None
        envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
        return decode_request(envelope.body)
    except (FedgateError, ProtobufDecodeError) as exc:
        if isinstance(exc, AuditUnavailable):
            raise
        raise AuditUnavailable(
            f"audit shard {origin!r}: the request leg {index} of an executed order is "
            f"unreadable: {exc}"
        ) from exc


def rebuild_rules(rules: BusinessRules, source: OrderSource, *, origin: str) -> RulesRebuilt:
    """Record again, in log order, every order the log shows executed (response leg ``ok``).

    ``source`` MUST read the shard the pipeline appends to, and nothing may be checked against
    ``rules`` until this returns. Each outcome is recorded at the time of its response leg, as
    it was the first time. Blocking: run it off the event loop. Raises ``AuditUnavailable``
    when the log cannot be read or an executed order's request leg is unreadable (fail closed:
    the gateway does not decide limits on a state it cannot vouch for).
    """
    started = time.perf_counter()
    rows = _executed(source)
    sealed = 0
    for row in rows:
        request = _request_of(source, row, origin)
        if request is None:
            sealed += 1
            continue
        rules.record_outcome(
            request,
            action=row.columns[6],
            status=request_pb2.RESPONSE_STATUS_OK,
            now=micros_to_time(row.columns[2]),
        )
    return RulesRebuilt(
        orders=len(rows) - sealed, seconds=time.perf_counter() - started, sealed_elsewhere=sealed
    )
