"""Reconciliation: every allowed request leg gets its response leg, even across a crash.

An exchange cut off between stage 8 (request leg durable) and stage 11 (response leg durable):
the gateway killed, the caller's call cancelled, the log failing for a moment; leaves a
request leg without a response leg, while the node may well have executed the order. The
``Reconciler`` finds such legs in the log and asks the node (``AgencyService.GetResult``, a
read, idempotent by request id):

- the node answered (or its staff did, or the request expired there): the signed answer is
  checked like any answer (stage 10), logged as the response leg (stage 11) with its detail
  starting ``reconciled: ``, and an executed order is recorded in the business rules;
- the node queued it for staff: a response leg ``pending`` (reconciled) is written and a ticket
  opened, whose id is the request id, so the police system can follow it by ticket;
- the node never got it (``NOT_FOUND``): a response leg ``unavailable`` saying so;
- the node cannot be reached: the leg stays open and is tried again at the next pass.

Agency reports stop at the gateway (stage 9 is the gateway's own acknowledgement): a report
whose exchange was cut off was never delivered, and its response leg says so.

Contract: ``run_once(grace=0)`` MUST be run, and have returned, before the gateway serves
(nothing is in flight then); afterwards ``run`` passes every ``interval_s`` and reconciles only
legs older than ``grace`` (an exchange still in flight is left alone). The open legs are found
through the search index, from ``horizon`` before the start and then incrementally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.actions import REPORT_ACTIONS
from fedgate.audit_entry import (
    EntryKind,
    IndexColumns,
    RequestLeg,
    ResponseLeg,
    decode_entry,
    time_to_micros,
)
from fedgate.envelope import decode_request
from fedgate.errors import AgencyFault, AgencyUnavailable, FedgateError
from fedgate.render import format_time
from fedgate.tlogproof import TlogProof
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, ticket_pb2
from gateway.audit.log import AuditLog, Receipt
from gateway.audit.store import SearchQuery
from gateway.pipeline._audit_legs import RECONCILED, AuditLegs
from gateway.pipeline._forwarding import Forwarder
from gateway.routing import NodeRouter
from gateway.tickets import PendingRequest, Tickets

__all__ = ["ReconcileReport", "Reconciler"]

_log = logging.getLogger("gateway.pipeline")

_PAGE: Final = 256
"""Rows read per search while scanning. Each page is built on the log's reader thread and then
walked on the event loop; at 2,000 rows a page held the loop for 5.5 ms (11.9 ms of stall while
the bench served, 2026-12-05) and its rows, all alive at once, filled the collector's young
generation. At 256 neither is over ~1 ms, for one more indexed query per 256 rows."""


@dataclass(frozen=True, slots=True)
class _Open:
    """An allowed request leg without a response leg (yet)."""

    index: int
    request_id: str
    requester: MemberId
    target: MemberId
    action: str
    received_us: int


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """One pass: legs found open, reconciled (a response leg written), and left open (the node
    could not be reached, or the leg is younger than the grace)."""

    open: int
    reconciled: int
    left_open: int


class Reconciler:
    """Writes the missing response legs of cut-off exchanges; see the module docstring."""

    def __init__(
        self,
        *,
        audit: AuditLog,
        router: NodeRouter,
        tickets: Tickets,
        forwarder: Forwarder,
        legs: AuditLegs,
        node_timeout_s: float,
        horizon: timedelta = timedelta(days=2),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._audit = audit
        self._router = router
        self._tickets = tickets
        self._forwarder = forwarder
        self._legs = legs
        self._timeout = node_timeout_s
        self._horizon = horizon
        self._now = now
        self._after = -1
        self._since_us: int | None = None
        self._open: dict[int, IndexColumns] = {}
        """Open request legs by leaf index: the search row's columns as they came (an ``_Open``
        is built only for a leg that is due, not for each of the thousands a pass sees)."""
        self._lock = asyncio.Lock()

    @property
    def open_legs(self) -> int:
        """Request legs known to be open after the last pass."""
        return len(self._open)

    async def _scan(self) -> None:
        """Read the entries appended since the last scan; track open request legs."""
        if self._since_us is None:
            self._since_us = time_to_micros(self._now() - self._horizon)
        while True:
            page = await self._audit.search(
                SearchQuery(since_us=self._since_us, after_index=self._after, limit=_PAGE)
            )
            opened, closed = self._open, self._open.pop
            for row in page:
                c = row.columns
                if c[0] == EntryKind.REQUEST:
                    if c[8] == "allowed":
                        opened[row.index] = c
                elif c[0] == EntryKind.RESPONSE:
                    closed(c[11], None)
            if page:
                self._after = page[-1].index
            if len(page) < _PAGE:
                return

    async def run_once(self, *, grace: timedelta) -> ReconcileReport:
        """One pass: scan, then reconcile every open leg older than ``grace``. Raises
        ``AuditUnavailable`` when the log cannot be read or written."""
        async with self._lock:
            await self._scan()
            found = len(self._open)
            cutoff = time_to_micros(self._now() - grace)
            due = [
                _Open(i, c[1], MemberId(c[3]), MemberId(c[7]), c[6], c[2])
                for i, c in self._open.items()
                if c[2] <= cutoff
            ]
            done = 0
            for leg in due:
                if await self._reconcile(leg):
                    self._open.pop(leg.index, None)
                    done += 1
            if due:
                _log.warning(
                    "reconciled %d of %d request legs without a response leg",
                    done,
                    len(due),
                    extra={"fields": {"reconciled": done, "due": len(due), "open": found}},
                )
            return ReconcileReport(open=found, reconciled=done, left_open=len(self._open))

    async def run(self, *, interval_s: float, grace: timedelta) -> None:
        """``run_once`` every ``interval_s`` until cancelled; failures are logged, not fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.run_once(grace=grace)
            except FedgateError as exc:
                _log.error("reconciliation pass failed: %s", exc.message)

    async def _pending(self, leg: _Open) -> PendingRequest | None:
        """The pending request of ``leg`` from its request leg; ``None`` if it is unreadable."""
        try:
            entry = decode_entry(await self._audit.open_entry(leg.index))
            if not isinstance(entry, RequestLeg):
                return None
            envelope = envelope_pb2.SignedEnvelope.FromString(entry.envelope)
            request = decode_request(envelope.body)
        except (FedgateError, ProtobufDecodeError):
            return None
        deadline = datetime.now(UTC)
        if request.HasField("answer_deadline"):
            with contextlib.suppress(ValueError, OverflowError):
                deadline = request.answer_deadline.ToDatetime(tzinfo=UTC)
        return PendingRequest(
            request_id=leg.request_id,
            requester=leg.requester,
            target=leg.target,
            action=leg.action,
            request_body=envelope.body,
            request_leaf_index=leg.index,
            request_receipt=envelope_pb2.AuditReceipt(),
            deadline=deadline,
        )

    async def _without_answer(self, pending: PendingRequest, status: str, detail: str) -> None:
        leg = ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=pending.target,
            received_at=self._now(),
            status=status,
            response_hash=b"",
            responder_signature=b"",
            detail=f"{RECONCILED}{detail}",
        )
        await self._legs.append(leg, "response")

    async def _reconcile(self, leg: _Open) -> bool:
        """Write ``leg``'s response leg; ``False`` if the node cannot be reached now."""
        pending = await self._pending(leg)
        if pending is None:
            # An allowed leg always decodes (stage 2 passed); never leave it open silently.
            _log.error("request leg %d (%s) cannot be read back", leg.index, leg.request_id)
            return False
        if leg.action in REPORT_ACTIONS:
            await self._without_answer(
                pending,
                "unavailable",
                "the gateway stopped before acknowledging this report; it was not delivered",
            )
            return True
        try:
            result = await self._router.get_result(
                leg.target, leg.request_id, timeout=self._timeout
            )
        except AgencyUnavailable:
            return False
        except AgencyFault as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, grpc.aio.AioRpcError)
                and cause.code() == grpc.StatusCode.NOT_FOUND
            ):
                await self._without_answer(
                    pending,
                    "unavailable",
                    f"{leg.target} never received the request, so it was not executed",
                )
            else:
                await self._without_answer(pending, "node_fault", exc.message)
            return True
        if result.HasField("response") and result.response.body:
            # A wrong answer is logged as a node fault (reconciled) by finish: that is its leg.
            with contextlib.suppress(AgencyFault):
                await self._forwarder.finish(
                    pending, result.response, responder=leg.target, reconciled=True
                )
            return True
        if result.state in (ticket_pb2.TICKET_STATE_WAITING, ticket_pb2.TICKET_STATE_CLAIMED):
            due = pending.deadline
            if result.HasField("deadline"):
                with contextlib.suppress(ValueError, OverflowError):
                    due = result.deadline.ToDatetime(tzinfo=UTC)
            await self._without_answer(
                pending,
                "pending",
                f"queued for staff; due {format_time(due)}; follow it by ticket {leg.request_id}",
            )
            await self._tickets.open(
                PendingRequest(
                    request_id=pending.request_id,
                    requester=pending.requester,
                    target=pending.target,
                    action=pending.action,
                    request_body=pending.request_body,
                    request_leaf_index=pending.request_leaf_index,
                    request_receipt=self._request_receipt(leg.index),
                    deadline=due,
                )
            )
            return True
        await self._without_answer(
            pending, "expired", f"{leg.target} did not answer before the deadline"
        )
        return True

    def _request_receipt(self, index: int) -> envelope_pb2.AuditReceipt:
        """The request leg's receipt against the log's latest checkpoint."""
        size = self._audit.size
        note = self._audit.latest_checkpoint()
        proof = tuple(self._audit.inclusion_proof(index, size))
        receipt = Receipt(
            origin=self._audit.origin,
            index=index,
            tree_size=size,
            inclusion_proof=proof,
            checkpoint=note,
            tlog_proof=TlogProof(index=index, proof=proof, checkpoint_note=note).marshal(),
        )
        wire = receipt.to_proto(request_leaf_index=index)
        wire.leaf_hash = self._audit.leaf_hash(index)
        return wire
