"""Telemetry of the agency nodes, declared once: tracer, meter, attribute keys, JSON logs.

Personal identifiers never reach a log line in clear: ``mask`` and the JSON formatter come from
``fedgate.logs``, shared with the gateway.
"""

from __future__ import annotations

import logging
from typing import Final

from opentelemetry import metrics, trace

from fedgate.logs import configure_logging, mask

__all__ = [
    "ATTR_ACTION",
    "ATTR_MEMBER",
    "ATTR_MODE",
    "ATTR_OUTCOME",
    "ATTR_REQUESTING_AGENCY",
    "ATTR_REQUEST_ID",
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


def log_event(message: str, level: int = logging.INFO, /, **fields: object) -> None:
    """Log ``message`` with structured fields (callers mask identifiers first)."""
    logger.log(level, message, extra={"fields": fields})
