"""One exchange as the pipeline sees it: what it has learned about a request so far.

``Exchange`` is filled in stage by stage (peer, envelope, request, action, the request leg and
its receipt); ``stage`` names the stage an exchange is in, for refusals and telemetry.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from fedgate.audit_entry import RequestLeg
from fedgate.registry import Member
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit.log import Receipt
from gateway.pipeline.validation import subjects_of
from gateway.telemetry import GatewayTelemetry

__all__ = ["Exchange", "stage"]


@dataclass(slots=True)
class Exchange:
    """What the pipeline has learned about one request so far."""

    received_at: datetime
    stage: str = "transport"
    peer: str = ""
    cert_sha256: str = ""
    member: Member | None = None
    envelope_bytes: bytes = b""
    envelope: envelope_pb2.SignedEnvelope | None = None
    request: request_pb2.Request | None = None
    action: str = ""
    issued_at: datetime | None = None
    rule: str = ""
    request_entry: RequestLeg | None = None
    request_receipt: Receipt | None = None
    request_receipt_proto: envelope_pb2.AuditReceipt | None = None
    body_sha256: bytes = b""
    claimed: bool = False
    """This attempt claimed the request id (``gateway.retries``): its outcome is to be recorded."""

    def request_leg(self, *, decision: str, rule: str) -> RequestLeg:
        r = self.request
        return RequestLeg(
            envelope=self.envelope_bytes,
            peer=self.peer,
            peer_cert_sha256=self.cert_sha256,
            received_at=self.received_at,
            decision=decision,
            rule=rule,
            request_id=r.request_id if r is not None else "",
            requesting_agency=r.requesting_agency if r is not None else "",
            officer_id=r.officer.id if r is not None else "",
            case_number=r.case.case_number if r is not None else "",
            action=self.action,
            target_agency=r.target_agency if r is not None else "",
            subjects=subjects_of(r) if r is not None else (),
        )

    def req(self) -> request_pb2.Request:
        """The decoded request; only after stage 2."""
        assert self.request is not None, "stage order: the request is decoded at stage 2"
        return self.request

    def issued(self) -> datetime:
        """The request's issued-at; only after stage 2."""
        assert self.issued_at is not None, "stage order: issued_at is read at stage 2"
        return self.issued_at


def stage(x: Exchange, telemetry: GatewayTelemetry, name: str) -> AbstractContextManager[None]:
    """Mark ``x`` as at stage ``name``; the block is the stage (an event on the request's span
    when it records). Not a generator: it runs a dozen times per request."""
    x.stage = name
    return telemetry.stage(name)
