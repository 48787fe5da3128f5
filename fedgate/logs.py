"""Masking of personal identifiers and JSON log lines: one implementation for every process.

Card numbers, resident ID numbers and phone numbers never reach a log line, a trace or a page
in clear unless a person with the right to see them asks: ``mask`` hides the middle of one
value, ``mask_identifiers`` every such value inside a text, and ``JsonLogFormatter`` applies
the latter to every string it writes. ``masked_span`` is a tracer span whose exceptions are
recorded with identifiers masked (the SDK's own recording copies the message in clear).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import traceback
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "JsonLogFormatter",
    "configure_logging",
    "current_span_context",
    "mask",
    "mask_identifiers",
    "masked_span",
    "record_masked_exception",
]

_SEPARATOR: Final = "[ \\-\u00a0\u2009\u3000]"
_IDENTIFIER: Final = re.compile(
    rf"(?<![0-9A-Za-z])(\d(?:{_SEPARATOR}?\d){{10,}}(?:{_SEPARATOR}?[Xx])?)(?![0-9A-Za-z])"
)
"""Eleven digits or more, in one run or in groups split by single spaces or hyphens (``6222
0212 3456 7891 234``, ``138-1234-5678``), a resident ID's final ``X`` included; no upper bound
(a 20-digit account is masked too). A false alarm (a long number that is no identifier) is
masked as well: hiding too much is the safe side."""
_SEPARATORS: Final = re.compile(_SEPARATOR)


def mask(value: str) -> str:
    """``6222021234567891234`` → ``622****1234``: the first 3 and last 4 characters of values of
    11 characters or more (cards, mobiles, ID numbers), 2 and 2 of 8 to 10 characters, nothing of
    shorter ones. The stars are always four, so the length is hidden too."""
    n = len(value)
    if n >= 11:
        return f"{value[:3]}****{value[-4:]}"
    if n >= 8:
        return f"{value[:2]}****{value[-2:]}"
    return "****"


def mask_identifiers(text: str) -> str:
    """``text`` with every resident ID, card and mobile number in it masked by ``mask``, also
    when written in groups (the separators are dropped: ``6222 0212 3456 7891 234`` →
    ``622****1234``) or longer than any real one."""
    return _IDENTIFIER.sub(lambda m: mask(_SEPARATORS.sub("", m.group(1))), text)


def _masked(value: object) -> object:
    if isinstance(value, str):
        return mask_identifiers(value)
    if isinstance(value, Mapping):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_identifiers(str(value))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, ``fields`` (from
    ``extra={"fields": {...}}``), trace and span ids; every string masked."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_identifiers(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            doc["fields"] = _masked(fields)
        span_context = current_span_context()
        if span_context is not None:
            doc["trace_id"] = format(span_context.trace_id, "032x")
            doc["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            doc["exception"] = mask_identifiers(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class _MaskedTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_identifiers(super().format(record))


def configure_logging(level: str | int = "INFO", *, json_logs: bool = True) -> None:
    """Send the root logger to stderr, as JSON lines or plain text, masked either way."""
    handler = logging.StreamHandler()
    if json_logs:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(_MaskedTextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def current_span_context() -> Any:
    """The current span's context when OpenTelemetry is installed and a span is recording
    (the gateway and nodes); ``None`` in the SDK, which does not depend on it."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def record_masked_exception(span: Span, exc: BaseException) -> None:
    """Record ``exc`` on ``span`` as the SDK would (an ``exception`` event, ERROR status), with
    every identifier in its message and stack trace masked. (OpenTelemetry is imported here, not
    at the top: the SDK alone does not depend on it.)"""
    from opentelemetry import trace

    if not span.is_recording():
        return
    message = mask_identifiers(str(exc))
    span.add_event(
        "exception",
        {
            "exception.type": type(exc).__qualname__,
            "exception.message": message,
            "exception.stacktrace": mask_identifiers("".join(traceback.format_exception(exc))),
        },
    )
    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {message}"))


@contextlib.contextmanager
def masked_span(tracer: Tracer, name: str, **kwargs: Any) -> Iterator[Span]:
    """``tracer.start_as_current_span(name, **kwargs)``, its exceptions recorded masked."""
    with tracer.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False, **kwargs
    ) as span:
        try:
            yield span
        except Exception as exc:
            record_masked_exception(span, exc)
            raise
