"""An agency's answers: build the ``Response`` bound to its request, check it, sign it.

Every answer a node gives — automatic, by staff, refused, expired — is a ``Response`` carrying
the request id, the SHA-256 of the request body as received, the responder, when and by whom it
was answered, and at most one result: the one ``fedgate.actions.RESULT_FIELD`` names for the
request's action. The node serializes it once and signs it under the response domain.
"""

from __future__ import annotations

from datetime import datetime

from fedgate.actions import RESULT_FIELD
from fedgate.envelope import Domain, Signer, request_hash, sign_envelope
from fedgate.errors import FedgateError, FieldViolation, InvalidArgument, NotFound, RuleViolated
from fedgate.v1 import request_pb2

__all__ = [
    "MAX_REASON",
    "STAFF_STATUSES",
    "bind_response",
    "check_result",
    "check_staff_status",
    "outcome_of_error",
    "refusal",
    "sign_response",
]

OK = request_pb2.RESPONSE_STATUS_OK
STAFF_STATUSES = frozenset(
    {
        request_pb2.RESPONSE_STATUS_OK,
        request_pb2.RESPONSE_STATUS_REFUSED,
        request_pb2.RESPONSE_STATUS_NOT_FOUND,
        request_pb2.RESPONSE_STATUS_INVALID,
    }
)
"""The statuses a staff member may answer with (PENDING and EXPIRED are the node's)."""

MAX_REASON = 500
"""The longest reason a staff member may give when rejecting a request."""

_MAX_DETAIL = 2000


def bind_response(
    response: request_pb2.Response,
    *,
    request_id: str,
    request_body: bytes,
    responder: str,
    answered_at: datetime,
    answered_by: str = "",
) -> request_pb2.Response:
    """A copy of ``response`` with the binding fields filled (any values there are replaced)."""
    bound = request_pb2.Response()
    bound.CopyFrom(response)
    bound.request_id = request_id
    bound.request_hash = request_hash(request_body)
    bound.responder = responder
    bound.answered_by = answered_by
    bound.answered_at.FromDatetime(answered_at)
    return bound


def check_result(action: str, response: request_pb2.Response) -> None:
    """Check that the status and result fit ``action``.

    An OK answer MUST carry exactly the result field for the action; any other status MUST
    carry no result and a detail saying why. Raises ``InvalidArgument`` naming the field.
    """
    field = RESULT_FIELD.get(action)
    present = response.WhichOneof("result")
    if response.status == OK:
        if field is None or present != field:
            raise InvalidArgument.for_fields(
                [
                    FieldViolation(
                        "answer.result",
                        f"an OK answer to {action} must carry the {field} result, not {present}",
                    )
                ]
            )
        return
    if present is not None:
        raise InvalidArgument.for_fields(
            [FieldViolation("answer.result", "only an OK answer carries a result")]
        )
    if not response.detail.strip() or len(response.detail) > _MAX_DETAIL:
        raise InvalidArgument.for_fields(
            [FieldViolation("answer.detail", f"say why, in 1 to {_MAX_DETAIL} characters")]
        )


def check_staff_status(answer: request_pb2.Response) -> None:
    """Refuse a staff answer whose status is not one of ``STAFF_STATUSES`` (``InvalidArgument``)."""
    if answer.status not in STAFF_STATUSES:
        raise InvalidArgument.for_fields(
            [FieldViolation("answer.status", "answer OK, REFUSED, NOT_FOUND or INVALID")]
        )


def refusal(reason: str) -> request_pb2.Response:
    """A staff member's REFUSED answer saying why; ``InvalidArgument`` (field ``reason``) unless
    the stripped reason has 1 to ``MAX_REASON`` characters."""
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON:
        raise InvalidArgument.for_fields(
            [FieldViolation("reason", f"say why, in 1 to {MAX_REASON} characters")]
        )
    return request_pb2.Response(status=request_pb2.RESPONSE_STATUS_REFUSED, detail=reason)


def outcome_of_error(error: FedgateError) -> tuple[request_pb2.ResponseStatus.ValueType, str]:
    """The signed status and detail for a backend's ``NotFound``, ``RuleViolated`` or
    ``InvalidArgument``. Re-raises anything else (e.g. ``AgencyUnavailable``): that is a failure
    of the node, not an answer."""
    if isinstance(error, NotFound):
        return request_pb2.RESPONSE_STATUS_NOT_FOUND, error.message
    if isinstance(error, RuleViolated):
        return request_pb2.RESPONSE_STATUS_REFUSED, error.message
    if isinstance(error, InvalidArgument):
        detail = error.message
        if error.violations:
            detail = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
        return request_pb2.RESPONSE_STATUS_INVALID, detail
    raise error


def sign_response(response: request_pb2.Response, signer: Signer) -> bytes:
    """Serialize once, sign under the response domain; the serialized ``SignedEnvelope``."""
    return sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE).SerializeToString()
