"""The one place that maps fedgate errors to and from ``google.rpc.Status``.

Servers raise ``FedgateError`` subclasses; ``abort_with`` turns one into a gRPC
status with an ``ErrorInfo`` (stable reason, domain ``fedgate``), a
``BadRequest`` listing field violations, and a ``RetryInfo`` for quota refusals.
Clients call ``error_from_rpc`` to get the same error class back.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from fedgate import errors
from fedgate.errors import FedgateError, FieldViolation
from fedgate.v1 import status_pb2 as fedgate_status_pb2

__all__ = [
    "ERROR_DOMAIN",
    "abort_with",
    "error_detail",
    "error_from_detail",
    "error_from_rpc",
    "rpc_status_of",
]

ERROR_DOMAIN = "fedgate"
_DETAILS_KEY = "grpc-status-details-bin"


def _all_error_classes() -> dict[str, type[FedgateError]]:
    classes: dict[str, type[FedgateError]] = {}
    pending: list[type[FedgateError]] = [FedgateError]
    while pending:
        cls = pending.pop()
        classes.setdefault(cls.reason, cls)
        pending.extend(cls.__subclasses__())
    return classes


def rpc_status_of(error: FedgateError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``error``, with its details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    status.details.add().Pack(info)
    if isinstance(error, errors.InvalidArgument) and error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad)
    if isinstance(error, errors.QuotaExceeded):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(error.retry_after_s * 1000)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


async def abort_with(
    context: grpc.aio.ServicerContext[object, object], error: FedgateError
) -> NoReturn:
    """Abort the call with ``error`` mapped to a rich status."""
    status = rpc_status.to_status(rpc_status_of(error))
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def error_detail(error: FedgateError) -> fedgate_status_pb2.ErrorDetail:
    """The same error as an in-band ``ErrorDetail`` (for streams and batches)."""
    detail = fedgate_status_pb2.ErrorDetail(
        code=error.code.value[0], reason=error.reason, message=error.message
    )
    if isinstance(error, errors.InvalidArgument):
        for v in error.violations:
            detail.field_errors.add(field=v.field, description=v.description)
    return detail


def _status_from_metadata(exc: grpc.RpcError) -> status_pb2.Status | None:
    trailing = getattr(exc, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def error_from_rpc(exc: grpc.RpcError) -> FedgateError:
    """Rebuild the fedgate error a server raised from a failed call (sync or aio)."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else None
    message = details or code.name
    reason: str | None = None
    violations: list[FieldViolation] = []
    retry_after = 1.0
    status = _status_from_metadata(exc)
    if status is not None:
        for any_detail in status.details:
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                reason = info.reason
            elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                any_detail.Unpack(info_retry)
                retry_after = info_retry.retry_delay.ToMilliseconds() / 1000
    cls = _all_error_classes().get(reason or "", None)
    if cls is None:
        error = FedgateError(message, reason=reason or code.name)
        error.code = code
        return error
    if issubclass(cls, errors.QuotaExceeded):
        return cls(message, retry_after_s=retry_after, reason=reason)
    if issubclass(cls, errors.InvalidArgument):
        return cls(message, violations=tuple(violations), reason=reason)
    return cls(message, reason=reason)


def error_from_detail(detail: fedgate_status_pb2.ErrorDetail) -> FedgateError:
    """Rebuild the fedgate error an in-band ``ErrorDetail`` carries (streams, batches)."""
    cls = _all_error_classes().get(detail.reason, None)
    if cls is None:
        error = FedgateError(detail.message, reason=detail.reason or "UNKNOWN")
        return error
    if issubclass(cls, errors.QuotaExceeded):
        return cls(detail.message, retry_after_s=1.0, reason=detail.reason)
    if issubclass(cls, errors.InvalidArgument):
        violations = tuple(FieldViolation(v.field, v.description) for v in detail.field_errors)
        return cls(detail.message, violations=violations, reason=detail.reason)
    return cls(detail.message, reason=detail.reason)
