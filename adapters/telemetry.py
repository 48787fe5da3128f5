"""Telemetry of the agency nodes, declared once: tracer, instruments, attribute keys, JSON logs.

Each node gets its providers from ``fedgate.otel.Exporters`` (``[telemetry]`` in its config):
``NodeMetrics`` is built from the node's own ``MeterProvider`` so its instruments record for
real; durations are in seconds.

Personal identifiers never reach a log line in clear: ``mask`` and the JSON formatter come from
``fedgate.logs``, shared with the gateway.
"""

from __future__ import annotations

import logging
from typing import Final

from opentelemetry import metrics, trace

from fedgate.logs import configure_logging, mask
from fedgate.otel import SECONDS_BUCKETS

__all__ = [
    "ATTR_ACTION",
    "ATTR_MEMBER",
    "ATTR_MODE",
    "ATTR_OUTCOME",
    "ATTR_REQUESTING_AGENCY",
    "ATTR_REQUEST_ID",
    "NodeMetrics",
    "configure_logging",
    "log_event",
    "logger",
    "mask",
    "tracer",
]

tracer: Final = trace.get_tracer("fedgate.adapters")


class NodeMetrics:
    """A node's instruments, from its ``meter_provider`` (the global one when none is given)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("fedgate.adapters")
        self.request_duration = meter.create_histogram(
            "fedgate.node.request.duration",
            unit="s",
            description="Time from a forwarded request's arrival to the node's signed answer "
            "or ack.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
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
