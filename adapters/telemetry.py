"""Telemetry of the agency nodes, declared once: tracer, meter, attribute keys, JSON logs.

Personal identifiers never reach a log line in clear: ``mask`` keeps the first three and the
last four characters of card, ID and phone numbers, and ``JsonFormatter`` writes one JSON
object per line with whatever ``extra={"fields": {...}}`` a call passes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import metrics, trace

__all__ = [
    "ATTR_ACTION",
    "ATTR_MEMBER",
    "ATTR_MODE",
    "ATTR_OUTCOME",
    "ATTR_REQUESTING_AGENCY",
    "ATTR_REQUEST_ID",
    "JsonFormatter",
    "configure_logging",
    "log_event",
    "logger",
    "mask",
    "meter",
    "request_duration",
    "tracer",
]

tracer: Final = trace.get_tracer("fedgate.adapters")
meter: Final = metrics.get_meter("fedgate.adapters")

request_duration: Final = meter.create_histogram(
    "fedgate.node.request.duration",
    unit="ms",
    description="Time from a forwarded request's arrival to the node's signed answer or ack.",
)

ATTR_MEMBER: Final = "fedgate.member"
ATTR_ACTION: Final = "fedgate.action"
ATTR_REQUEST_ID: Final = "fedgate.request_id"
ATTR_REQUESTING_AGENCY: Final = "fedgate.requesting_agency"
ATTR_MODE: Final = "fedgate.mode"
ATTR_OUTCOME: Final = "fedgate.outcome"

logger: Final = logging.getLogger("fedgate.adapters")


def mask(value: str) -> str:
    """``6222021234567890123`` → ``622************0123``; short values are fully masked."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            doc.update(fields)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            doc["trace_id"] = format(span.trace_id, "032x")
            doc["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``fedgate`` loggers to stderr as JSON lines (for node processes)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("fedgate")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def log_event(message: str, level: int = logging.INFO, /, **fields: object) -> None:
    """Log ``message`` with structured fields (callers mask identifiers first)."""
    logger.log(level, message, extra={"fields": fields})
