"""The one place that maps fedgate errors to and from ``google.rpc.Status``.

Servers raise ``FedgateError`` subclasses; ``abort_with`` turns one into a gRPC
status with an ``ErrorInfo`` (stable reason, domain ``fedgate``), a
``BadRequest`` listing field violations, and a ``RetryInfo`` for quota refusals.
Clients call ``error_from_rpc`` to get the same error class back.

``ErrorInterceptor`` is the one server-side boundary every gRPC server of fedgate (gateway,
agency nodes, witnesses) installs: a ``FedgateError`` that escapes a handler leaves as its
status; anything else leaves as ``INTERNAL`` with no internal text, only a trace id, and is
logged with that trace id.

- A handler's unexpected exception MUST NOT reach the caller's status message (no exception
  text, no class name): only ``internal error; trace id <id>``.
- The same trace id MUST be in the error log line, so an operator finds the cause.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from fedgate import errors
from fedgate.errors import FedgateError, FieldViolation
from fedgate.logs import current_span_context
from fedgate.v1 import status_pb2 as fedgate_status_pb2

__all__ = [
    "ERROR_DOMAIN",
    "ErrorInterceptor",
    "abort_with",
    "error_detail",
    "error_from_detail",
    "error_from_rpc",
    "internal_error",
    "log_unexpected",
    "rpc_status_of",
    "trace_id_of",
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
    if isinstance(error, errors.QuotaExceeded | errors.InProgress):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(error.retry_after_s * 1000)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


async def abort_with(
    context: grpc.aio.ServicerContext[object, object], error: FedgateError
) -> NoReturn:
    """Abort the call with ``error`` mapped to a rich status."""
    status = rpc_status_of(error)
    # The rich status travels in the standard trailer (what grpcio-status would write), so the
    # SDK needs no package beyond grpcio and the google.rpc messages.
    trailer = ((_DETAILS_KEY, status.SerializeToString()),)
    await context.abort(error.code, error.message, trailing_metadata=trailer)
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
    if issubclass(cls, errors.QuotaExceeded | errors.InProgress):
        return cls(message, retry_after_s=retry_after, reason=reason)
    if issubclass(cls, errors.InvalidArgument):
        return cls(message, violations=tuple(violations), reason=reason)
    return cls(message, reason=reason)


# -- the server-side boundary ----------------------------------------------------------------

_log = logging.getLogger("fedgate.status")
_Context = grpc.aio.ServicerContext[Any, Any]


def trace_id_of(metadata: Sequence[tuple[str, str | bytes]] | None = None) -> str:
    """The current trace id (32 hex digits): the current span's, else the caller's W3C
    ``traceparent`` in ``metadata``, else a fresh random one (to tie a log line to an error)."""
    span_context = current_span_context()
    if span_context is not None:
        return format(span_context.trace_id, "032x")
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            parts = value.split("-")
            if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
                try:
                    int(parts[1], 16)
                except ValueError:
                    break
                return parts[1].lower()
    return secrets.token_hex(16)


def internal_error(trace_id: str, *, stage: str = "") -> FedgateError:
    """The ``INTERNAL`` error a caller sees for a bug: where (a pipeline stage, if given) and the
    trace id, no internal text."""
    where = f" at stage {stage}" if stage else ""
    return FedgateError(f"internal error{where}; trace id {trace_id}")


def log_unexpected(where: str, trace_id: str) -> None:
    """Log the exception being handled, with ``trace_id``, at ERROR (masked by the formatter)."""
    _log.exception(
        "unexpected error in %s (trace id %s)",
        where,
        trace_id,
        extra={"fields": {"where": where, "trace_id": trace_id}},
    )


async def _map_error(
    exc: Exception, context: _Context, details: grpc.HandlerCallDetails
) -> NoReturn:
    if isinstance(exc, FedgateError):
        await abort_with(context, exc)
    trace_id = trace_id_of(details.invocation_metadata)
    log_unexpected(details.method, trace_id)
    await abort_with(context, internal_error(trace_id))


def _wrap_unary(behavior: Any, details: grpc.HandlerCallDetails) -> Any:
    async def wrapped(request: Any, context: _Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _map_error(exc, context, details)

    return wrapped


def _wrap_stream(behavior: Any, details: grpc.HandlerCallDetails) -> Any:
    async def wrapped(request: Any, context: _Context) -> AsyncIterator[Any]:
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a handler writing with ``context.write`` and returning nothing
                await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _map_error(exc, context, details)

    return wrapped


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps whatever a handler raises, once: ``FedgateError`` → its status, anything else →
    ``INTERNAL`` with a trace id and no internal text (logged with the same trace id)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        d = handler_call_details
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, d), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, d), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, d), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, d), **kw
            )
        return handler  # pragma: no cover - grpc has no fifth kind


def error_from_detail(detail: fedgate_status_pb2.ErrorDetail) -> FedgateError:
    """Rebuild the fedgate error an in-band ``ErrorDetail`` carries (streams, batches)."""
    cls = _all_error_classes().get(detail.reason, None)
    if cls is None:
        error = FedgateError(detail.message, reason=detail.reason or "UNKNOWN")
        return error
    if issubclass(cls, errors.QuotaExceeded | errors.InProgress):
        return cls(detail.message, retry_after_s=1.0, reason=detail.reason)
    if issubclass(cls, errors.InvalidArgument):
        violations = tuple(FieldViolation(v.field, v.description) for v in detail.field_errors)
        return cls(detail.message, violations=violations, reason=detail.reason)
    return cls(detail.message, reason=detail.reason)
