"""Agency → police reports sent through the gateway as signed requests from the agency.

A report (case report, abnormal account opening, case-linked account, abnormal event, early
warning, a monitored account's new transaction) is an ordinary ``Request`` signed by the
agency's key, acting through its node's system officer under the agency-staff role, with the
legal document kind ``AGENCY_REPORT``; the gateway checks, audits and delivers it like any
other exchange.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import Message

from fedgate.client import GATEWAY_ID, FedgateClient, Submitted
from fedgate.errors import AgencyUnavailable, FedgateError, QuotaExceeded
from fedgate.federation import MemberKind
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from fedgate.v1 import common_pb2

__all__ = ["ReportSender", "is_transient"]

_ROLE = {
    MemberKind.BANK: common_pb2.ROLE_BANK_STAFF,
    MemberKind.CARRIER: common_pb2.ROLE_CARRIER_STAFF,
    MemberKind.CENTRAL_BANK: common_pb2.ROLE_CENTRAL_BANK_ANALYST,
}


def is_transient(error: FedgateError) -> bool:
    """Whether sending again later may succeed: over quota, or the gateway or its log was
    unavailable or too slow (``AgencyUnavailable``, ``AgencyFault``, ``AuditUnavailable`` and
    ``Expired`` carry these codes)."""
    return isinstance(error, QuotaExceeded) or error.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


class ReportSender:
    """Sends an agency's reports to police members through the gateway."""

    def __init__(
        self,
        *,
        credentials: MemberCredentials,
        registry: Registry | TrustHolder,
        gateway_endpoint: str,
        gateway_id: MemberId = GATEWAY_ID,
    ) -> None:
        current = registry.registry if isinstance(registry, TrustHolder) else registry
        member = current.member(credentials.member_id)
        role = _ROLE.get(member.kind)
        if role is None:
            raise AgencyUnavailable(f"{member.id} ({member.kind}) does not send agency reports")
        self._role = role
        self._name = member.name_zh
        self._client = FedgateClient(
            credentials=credentials,
            registry=registry,
            gateway_endpoint=gateway_endpoint,
            gateway_id=gateway_id,
        )

    @property
    def client(self) -> FedgateClient:
        return self._client

    @property
    def role(self) -> common_pb2.Role.ValueType:
        """The role the agency's people act under (bank or carrier staff)."""
        return self._role

    def system_officer(self) -> common_pb2.Person:
        """The node itself as the acting person (staff id ``<member>.node``)."""
        member_id = self._client.member_id
        return common_pb2.Person(
            id=f"{member_id}.node"[-32:], name=f"{self._name}系统", role=self._role
        )

    async def send(
        self,
        *,
        target: MemberId,
        report: Message,
        case: common_pb2.CaseInfo,
        reference: str,
        officer: common_pb2.Person | None = None,
        purpose: str = "向公安机关报送涉诈线索",
        urgency: common_pb2.Urgency.ValueType = common_pb2.URGENCY_URGENT,
        original_request_id: str = "",
        action_name: str | None = None,
        now: datetime | None = None,
        timeout: float = 15.0,
        document_kind: common_pb2.LegalDocumentKind.ValueType = (
            common_pb2.LEGAL_DOCUMENT_KIND_AGENCY_REPORT
        ),
    ) -> Submitted:
        """Sign and submit one report; returns the gateway's verified answer or ticket.

        ``reference`` is the agency's document number for the report (1 to 64 characters);
        ``document_kind`` its kind (an appeal files the person's written appeal, ``APPEAL``).
        Raises ``FedgateError`` (``is_transient`` tells whether to try again later).
        """
        issued = now or datetime.now(UTC)
        document = common_pb2.LegalDocument(kind=document_kind, number=reference[:64])
        document.issued_at.FromDatetime(issued)
        request = self._client.new_request(
            action=report,
            officer=officer or self.system_officer(),
            target=target,
            case=case,
            legal_document=document,
            purpose=purpose,
            urgency=urgency,
            deadline=timedelta(hours=24),
            original_request_id=original_request_id,
            action_name=action_name,
        )
        return await self._client.submit(request, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()
