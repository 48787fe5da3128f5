"""How the pipeline writes an exchange into the audit log, failing closed.

``AuditLegs`` appends request and response legs (any failure of the log is
``AuditUnavailable``), logs refusals and missing answers before their errors are returned, and
makes the wire receipts of the legs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fedgate import merkle
from fedgate.audit_entry import AuditEntry, EventEntry, ResponseLeg, encode_entry
from fedgate.errors import AuditUnavailable, FedgateError
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.log import AuditLog, Receipt
from gateway.pipeline._exchange import Exchange
from gateway.telemetry import GatewayTelemetry
from gateway.tickets import PendingRequest

__all__ = ["RECONCILED", "TICKET_READ_REFUSED", "AuditLegs"]

TICKET_READ_REFUSED = "ticket_read_refused"
"""The event kind of a refused ticket read (another member's ticket, or none)."""

RECONCILED = "reconciled: "
"""The start of the ``detail`` of every response leg written by reconciliation (``_reconcile``):
the answer was fetched from the node after the exchange that forwarded it was cut off."""

# The pipeline's own logger: operators configure it by that name.
_log = logging.getLogger("gateway.pipeline")


_NO_RECEIPT = envelope_pb2.AuditReceipt()


class AuditLegs:
    """The pipeline's writer of audit legs."""

    def __init__(
        self,
        *,
        audit: AuditLog,
        telemetry: GatewayTelemetry,
        keep_response_bodies: bool,
        now: Callable[[], datetime],
    ) -> None:
        self._audit = audit
        self._telemetry = telemetry
        self._keep_bodies = keep_response_bodies
        self._now = now

    async def append(self, entry: AuditEntry, leg: str) -> Receipt:
        """Append durably; any failure of the log is ``AuditUnavailable`` (fail closed)."""
        started = time.perf_counter()
        try:
            return await self._audit.append(entry)
        except AuditUnavailable:
            raise
        except Exception as exc:
            _log.exception("audit append of the %s leg failed", leg)
            raise AuditUnavailable(
                f"the audit log cannot record the {leg} leg, so the gateway refuses the work"
            ) from exc
        finally:
            self._telemetry.record_audit_append(time.perf_counter() - started, leg=leg)

    async def refuse(self, x: Exchange, error: FedgateError) -> FedgateError:
        """Log the refusal as a request leg; returns the error to raise (``AuditUnavailable``
        if even that cannot be logged)."""
        self._telemetry.record_refusal(reason=error.reason, stage=x.stage)
        _log.info(
            "refused at %s: %s",
            x.stage,
            error.reason,
            extra={"fields": {"peer": x.peer, "reason": error.reason, "stage": x.stage}},
        )
        leg = x.request_leg(decision="refused", rule=f"{error.reason}: {error.message}")
        try:
            await self.append(leg, "request")
        except AuditUnavailable as exc:
            return exc
        return error

    async def no_answer(
        self, pending: PendingRequest, status: str, error: FedgateError, stage: str
    ) -> FedgateError:
        """Log a response leg ``status`` without an answer; returns the error to raise
        (``AuditUnavailable`` if even that cannot be logged)."""
        return await self._unanswered(
            pending.request_id, pending.request_leaf_index, pending.target, status, error, stage
        )

    async def gateway_fault(self, x: Exchange, error: FedgateError) -> FedgateError:
        """Log a ``gateway_fault`` response leg for ``x`` (its request leg is durable) after an
        unexpected error; returns the error to raise (``AuditUnavailable`` if even that cannot
        be logged)."""
        request, receipt = x.req(), x.request_receipt
        assert receipt is not None
        return await self._unanswered(
            request.request_id,
            receipt.index,
            MemberId(request.target_agency),
            "gateway_fault",
            error,
            x.stage,
        )

    async def _unanswered(
        self,
        request_id: str,
        request_leaf_index: int,
        responder: MemberId,
        status: str,
        error: FedgateError,
        stage: str,
    ) -> FedgateError:
        """The response leg of an exchange that ends without an answer (``status``), logged;
        returns the error to raise (``AuditUnavailable`` if even that cannot be logged)."""
        self._telemetry.record_refusal(reason=error.reason, stage=stage)
        leg = ResponseLeg(
            request_id=request_id,
            request_leaf_index=request_leaf_index,
            responder=responder,
            received_at=self._now(),
            status=status,
            response_hash=b"",
            responder_signature=b"",
            detail=f"{error.reason}: {error.message}",
        )
        try:
            await self.append(leg, "response")
        except AuditUnavailable as exc:
            return exc
        return error

    async def record_expiry(self, pending: PendingRequest, *, detail: str) -> None:
        """Log a response leg ``expired`` without an answer; raises ``AuditUnavailable``."""
        leg = ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=pending.target,
            received_at=self._now(),
            status="expired",
            response_hash=b"",
            responder_signature=b"",
            detail=detail,
            request_origin=self.request_origin(pending),
        )
        await self.append(leg, "response")

    def request_origin(self, pending: PendingRequest) -> str:
        """The shard of ``pending``'s request leg as a response leg names it: empty when it is
        this instance's own (always, but for a ticket opened by another instance)."""
        origin = pending.request_origin
        return "" if not origin or origin == self._audit.origin else origin

    async def record_refused_ticket_read(
        self, *, ticket_id: str, caller: MemberId, owner: MemberId | None
    ) -> None:
        """Log a ``ticket_read_refused`` event: ``caller`` asked for a ticket not its own
        (``owner``, or ``none`` when no such ticket exists); raises ``AuditUnavailable``."""
        self._telemetry.record_refusal(reason="NOT_FOUND", stage="ticket")
        _log.info(
            "ticket read refused",
            extra={"fields": {"peer": caller, "owner": owner or "none"}},
        )
        event = EventEntry(
            kind=TICKET_READ_REFUSED,
            actor=caller,
            member=caller,
            at=self._now(),
            detail=(
                ("ticket_id", ticket_id if len(ticket_id) <= 128 else ticket_id[:127] + "…"),
                ("owner", owner or "none"),
                ("reason", "NOT_FOUND"),
            ),
        )
        await self.append(event, "event")

    def answer_leg(
        self,
        pending: PendingRequest,
        answer: envelope_pb2.SignedEnvelope,
        responder: MemberId,
        received_at: datetime,
        status: str,
        why: request_pb2.Response | FedgateError,
        *,
        reconciled: bool = False,
    ) -> ResponseLeg:
        """The response leg of ``answer``, with ``why``'s detail (marked ``RECONCILED`` when
        the answer was fetched from the node after the exchange was cut off)."""
        signature = answer.signature if len(answer.signature) == 64 else b""
        detail = why.detail if isinstance(why, request_pb2.Response) else f"{why.reason}: {why}"
        if reconciled:
            detail = f"{RECONCILED}{detail}"
        return ResponseLeg(
            request_id=pending.request_id,
            request_leaf_index=pending.request_leaf_index,
            responder=responder,
            received_at=received_at,
            status=status,
            response_hash=hashlib.sha256(answer.body).digest(),
            responder_signature=signature,
            responder_key_id=answer.key_id,
            detail=detail,
            response_envelope=answer.SerializeToString() if self._keep_bodies else b"",
            request_origin=self.request_origin(pending),
        )

    def pending(
        self, x: Exchange, *, target: MemberId, with_receipt: bool = True
    ) -> PendingRequest:
        """The exchange ``x`` (its request leg durable) as the request an answer will finish:
        the one shape the gateway-answered actions (reports, approvals, risk list changes) and
        forwarded requests share. ``with_receipt=False`` leaves the request leg's receipt empty
        (the hot path: a forwarded request needs it only if it is queued for staff)."""
        request, receipt, envelope = x.req(), x.request_receipt, x.envelope
        assert receipt is not None
        assert envelope is not None
        return PendingRequest(
            request_id=request.request_id,
            requester=MemberId(x.peer),
            target=target,
            action=x.action,
            request_body=envelope.body,
            request_leaf_index=receipt.index,
            request_receipt=self.request_receipt(x) if with_receipt else _NO_RECEIPT,
            deadline=request.answer_deadline.ToDatetime(tzinfo=UTC),
        )

    def request_receipt(self, x: Exchange) -> envelope_pb2.AuditReceipt:
        """The request leg's receipt on the wire, made on first need (tickets, alerts)."""
        if x.request_receipt_proto is None:
            assert x.request_receipt is not None
            assert x.request_entry is not None
            x.request_receipt_proto = self.receipt_proto(
                x.request_receipt, x.request_entry, x.request_receipt.index
            )
        return x.request_receipt_proto

    @staticmethod
    def receipt_proto(
        receipt: Receipt, entry: AuditEntry, request_leaf_index: int
    ) -> envelope_pb2.AuditReceipt:
        """``receipt`` on the wire, with the leaf hash of ``entry`` if the receipt lacks it."""
        proto = receipt.to_proto(request_leaf_index=request_leaf_index)
        if isinstance(entry, ResponseLeg) and entry.request_origin:
            proto.request_log_origin = entry.request_origin
        if not proto.leaf_hash:
            proto.leaf_hash = merkle.leaf_hash(encode_entry(entry))
        return proto
