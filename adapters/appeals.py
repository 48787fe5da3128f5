"""Appeals (Art. 32) filed by an agency's stationed staff, through the gateway.

A person whose account was stopped or frozen, or whose number was suspended or blocked, appeals
at the bank or carrier. The staff member records the appeal in the staff console (who appeals,
the order, the grounds); ``NodeAppealDesk.file`` finds that order among the ones this node
executed (its subject, case and ordering unit come from the stored request, so staff cannot
mistype them), signs the filing with the agency's key as the staff member and sends it through
the gateway to the police unit that gave the order. ``appeals`` reads back, from the gateway, the
appeals this agency filed and where they stand (``GatewayService.ListAppeals``).

Contract:

- ``file`` MUST refuse (``InvalidArgument`` naming ``order_request_id``) an order this node did
  not execute, or one that is not a stop-payment, freeze, suspension or block; gateway refusals
  are raised as the ``FedgateError`` the gateway sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from adapters.node import AgencyNode
from fedgate.envelope import decode_request
from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.orders import subject_of
from fedgate.types import MemberId, RequestId
from fedgate.v1 import appeal_pb2, common_pb2, request_pb2

__all__ = ["APPEALABLE", "AppealDesk", "AppealForm", "NodeAppealDesk"]

APPEALABLE: Final = frozenset({"stop_payment", "freeze", "number_suspend", "number_block"})
"""Orders a person may appeal against (the gateway checks the same)."""


@dataclass(frozen=True, slots=True)
class AppealForm:
    """What the staff member types: the order appealed against, who appeals, and why."""

    order_request_id: str
    appellant_name: str
    appellant_id_number: str
    appellant_phone: str
    grounds: str


class AppealDesk(Protocol):
    """The staff console's seam to file appeals and see them."""

    async def file(self, form: AppealForm, staff_id: str) -> appeal_pb2.AppealResult:
        """File one appeal as ``staff_id``; raises ``FedgateError``."""
        ...

    async def appeals(self) -> Sequence[appeal_pb2.AppealRecord]:
        """The appeals this agency filed, oldest first; raises ``FedgateError``."""
        ...


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.for_fields([FieldViolation(field, description)])


class NodeAppealDesk:
    """``AppealDesk`` over an agency node: its store of executed orders and its gateway link."""

    def __init__(self, node: AgencyNode) -> None:
        self._node = node

    def _order(self, order_request_id: str) -> request_pb2.Request:
        entry = self._node.store.get(RequestId(order_request_id))
        answer = None if entry is None else entry.signed_response
        executed = (
            answer is not None
            and request_pb2.Response.FromString(answer.body).status
            == request_pb2.RESPONSE_STATUS_OK
        )
        if entry is None or not executed:
            raise _invalid("order_request_id", "not an order this agency executed")
        order = decode_request(entry.request_envelope.body)
        if order.WhichOneof("action") not in APPEALABLE:
            raise _invalid(
                "order_request_id", "not a stop-payment, freeze, number suspension or block"
            )
        return order

    async def file(self, form: AppealForm, staff_id: str) -> appeal_pb2.AppealResult:
        order = await self._node.run_blocking(lambda: self._order(form.order_request_id))
        sender = self._node.report_sender()
        filing = appeal_pb2.AppealFiling(
            appellant_name=form.appellant_name,
            appellant_id_number=form.appellant_id_number,
            appellant_phone=form.appellant_phone,
            subject=subject_of(order),
            grounds=form.grounds,
            recorded_by=staff_id,
        )
        filing.received_at.FromDatetime(self._node.now())
        submitted = await sender.send(
            target=MemberId(order.requesting_agency),
            report=filing,
            case=common_pb2.CaseInfo(
                case_number=order.case.case_number, case_type=order.case.case_type
            ),
            reference=f"申诉〔{form.order_request_id[:8]}〕{staff_id}",
            officer=common_pb2.Person(id=staff_id, name=staff_id, role=sender.role),
            purpose="转递当事人申诉（反电信网络诈骗法第三十二条）",
            original_request_id=order.request_id,
            action_name="appeal",
            document_kind=common_pb2.LEGAL_DOCUMENT_KIND_APPEAL,
        )
        assert submitted.answer is not None, "the gateway answers appeals itself"
        return submitted.answer.response.appeal

    async def appeals(self) -> Sequence[appeal_pb2.AppealRecord]:
        return await self._node.report_sender().client.list_appeals()
