"""The carrier node: every carrier action answered from a ``SubscriberSystem`` backend.

Queries (registered owner, number status, live SIM count, call and SMS records, location) and
orders (suspend, block, restore, SMS block) each map to one backend call; each order runs once
per request id (the runtime's ledger, and the backend refuses an order reference twice) and is
acknowledged with a signed ``NumberOrderResult``. A number outside the carrier's ranges is a
signed ``INVALID`` answer naming ``phone_number``; a number in range but unassigned is
``NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from adapters.carrier.backend import (
    CallRecord,
    NumberState,
    NumberStatus,
    RecordKind,
    SubscriberSystem,
)
from adapters.carrier.intercept import COUNTS_FILE, InterceptionStats
from adapters.config import NodeConfig
from adapters.node import CoreNode
from fedgate.actions import CARRIER_ACTIONS
from fedgate.disclosure import hit_response, is_hits
from fedgate.errors import FieldViolation, InvalidArgument, NotFound
from fedgate.types import CHINA_TIME
from fedgate.v1 import bank_pb2, carrier_pb2, request_pb2

__all__ = ["CarrierAgency", "CarrierNode"]

OK = request_pb2.RESPONSE_STATUS_OK
_DEFAULT_PAGE = 100
_WIRE_STATUS = {NumberState.CANCELLED: "closed"}
_ORDER_KIND = {
    "number_suspend": carrier_pb2.NUMBER_ORDER_KIND_SUSPEND,
    "number_block": carrier_pb2.NUMBER_ORDER_KIND_BLOCK,
    "number_restore": carrier_pb2.NUMBER_ORDER_KIND_RESTORE,
}


def _status(state: NumberState) -> str:
    """The wire status: ``active``, ``suspended``, ``blocked`` or ``closed``."""
    return _WIRE_STATUS.get(state, state.value)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(parent: Any, name: str, path: str) -> datetime:
    if not parent.HasField(name):
        raise InvalidArgument.for_fields([FieldViolation(path, "is required")])
    stamp: timestamp_pb2.Timestamp = getattr(parent, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _record_pb(record: CallRecord) -> carrier_pb2.CallRecord:
    return carrier_pb2.CallRecord(
        time=_stamp(record.ts),
        kind="call" if record.kind is RecordKind.VOICE else "sms",
        direction=record.direction.value,
        counterparty=record.other_number,
        duration_s=record.duration_s,
        cell_id=record.cell_id,
    )


class CarrierAgency:
    """Answers carrier actions from ``core``; blocking, thread-safe as the backend is."""

    def __init__(self, core: SubscriberSystem, *, stats: InterceptionStats | None = None) -> None:
        self.core = core
        self._stats = stats
        self._handlers: dict[str, Callable[[request_pb2.Request, datetime], request_pb2.Response]]
        self._handlers = {
            "subscriber": self._subscriber,
            "number_status": self._number_status,
            "sim_count": self._sim_count,
            "call_records": self._call_records,
            "location": self._location,
            "number_suspend": self._number_order,
            "number_block": self._number_order,
            "number_restore": self._number_order,
            "sms_block": self._sms_block,
        }
        assert set(self._handlers) == CARRIER_ACTIONS
        if stats is not None:  # the telecom regulator's interception statistics
            self._handlers["aggregate_stats"] = self._aggregate_stats

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def answer(self, request: request_pb2.Request, *, now: datetime) -> request_pb2.Response:
        action = request.WhichOneof("action")
        if is_hits(request):
            return self._hits(request, action)
        handler = self._handlers.get(action or "")
        if handler is None:
            raise InvalidArgument(f"{self.core.carrier_id} does not serve {action}")
        return handler(request, now)

    def _hits(self, request: request_pb2.Request, action: str | None) -> request_pb2.Response:
        """Stage 1 of a staged disclosure: whether a live SIM is registered under the ID,
        not how many (``fedgate.disclosure``)."""
        if action != "sim_count":
            raise InvalidArgument.for_fields(
                [FieldViolation("disclosure.stage", "stage 1 is for sim_count only")]
            )
        try:
            return hit_response(self.core.sim_count(request.sim_count.id_number) > 0)
        except NotFound:
            return hit_response(False)

    def _aggregate_stats(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        assert self._stats is not None
        q = request.aggregate_stats
        start = q.window.start.ToDatetime(tzinfo=UTC).astimezone(CHINA_TIME).date()
        end = q.window.end.ToDatetime(tzinfo=UTC).astimezone(CHINA_TIME).date()
        count = self._stats.total(q.metric, start, end)
        return request_pb2.Response(
            status=OK,
            aggregate_stats=bank_pb2.AggregateStatsResult(metric=q.metric, count=count),
        )

    def _subscriber(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        s = self.core.subscriber(request.subscriber.phone_number)
        return request_pb2.Response(
            status=OK,
            subscriber=carrier_pb2.SubscriberResult(
                phone_number=s.number,
                name=s.name,
                id_number=s.id_number,
                registered_at=_stamp(s.registered_at),
                channel=s.channel.value,
                status=_status(s.status),
            ),
        )

    def _number_status(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        s = self.core.number_status(request.number_status.phone_number)
        return request_pb2.Response(
            status=OK,
            number_status=carrier_pb2.NumberStatusResult(
                phone_number=s.number, status=_status(s.state), since=_stamp(s.since)
            ),
        )

    def _sim_count(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        id_number = request.sim_count.id_number
        count = self.core.sim_count(id_number)
        return request_pb2.Response(
            status=OK,
            sim_count=carrier_pb2.SimCountResult(id_number=id_number, live_sims=count),
        )

    def _call_records(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.call_records
        page = self.core.call_records(
            q.phone_number,
            _time(q.window, "start", "call_records.window.start"),
            _time(q.window, "end", "call_records.window.end"),
            page_size=q.page.page_size or _DEFAULT_PAGE,
            page_token=q.page.page_token,
            include_sms=q.include_sms,
        )
        return request_pb2.Response(
            status=OK,
            call_records=carrier_pb2.CallRecordsResult(
                phone_number=q.phone_number,
                records=[_record_pb(r) for r in page.records],
                next_page_token=page.next_page_token,
            ),
        )

    def _location(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.location
        loc = self.core.location(q.phone_number, _time(q, "at", "location.at"))
        return request_pb2.Response(
            status=OK,
            location=carrier_pb2.LocationResult(
                phone_number=loc.number,
                cell_id=loc.cell_id,
                latitude=loc.lat,
                longitude=loc.lon,
                observed_at=_stamp(loc.observed_at),
            ),
        )

    def _number_order(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        action = request.WhichOneof("action")
        assert action in _ORDER_KIND
        order = getattr(request, action)
        execute = {
            "number_suspend": self.core.suspend,
            "number_block": self.core.block,
            "number_restore": self.core.restore,
        }[action]
        status: NumberStatus = execute(
            order.phone_number, order_ref=request.request_id, reason=order.reason, now=now
        )
        return request_pb2.Response(
            status=OK,
            number_order=carrier_pb2.NumberOrderResult(
                subject=status.number,
                kind=_ORDER_KIND[action],
                status=_status(status.state),
                effective_at=_stamp(status.since),
            ),
        )

    def _sms_block(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.sms_block
        block = self.core.block_sms_sender(
            q.sender, order_ref=request.request_id, reason=q.reason, now=now
        )
        return request_pb2.Response(
            status=OK,
            number_order=carrier_pb2.NumberOrderResult(
                subject=block.sender,
                kind=carrier_pb2.NUMBER_ORDER_KIND_BLOCK,
                status="sms_blocked",
                effective_at=_stamp(block.since),
            ),
        )


class CarrierNode(CoreNode[SubscriberSystem]):
    """The agency node of a carrier (``CarrierAgency`` on the shared runtime)."""

    def __init__(self, *, core: SubscriberSystem, **kwargs: Any) -> None:
        config: NodeConfig = kwargs["config"]
        stats = InterceptionStats(Path(config.state_dir) / COUNTS_FILE)
        super().__init__(core=core, backend=CarrierAgency(core, stats=stats), **kwargs)

    @classmethod
    def reference_backend(
        cls, path: Path, *, config: NodeConfig, clock: Callable[[], datetime]
    ) -> SubscriberSystem:
        from adapters.carrier.reference import ReferenceCarrier

        return ReferenceCarrier(path=path, carrier_id=config.member_id, clock=clock)
