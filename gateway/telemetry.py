"""The gateway's telemetry, declared once: tracer, meter, instruments, attribute keys, logs.

- Traces: one span per request (``gateway.Submit``) with a child span per pipeline stage
  (``gateway.stage.<name>``); ``opentelemetry-instrumentation-grpc``'s interceptors (set up in
  ``gateway.server`` through ``fedgate.otel``) continue the caller's trace and carry it to the
  agency node, so the node's spans join the same trace. Exported over OTLP when
  ``[telemetry] otlp_endpoint`` is set.
- Metrics (every one with a unit; durations in seconds): request duration by action, target
  and outcome; refusals by reason and stage; audit append latency by leg. Served by
  ``opentelemetry-exporter-prometheus`` when ``[telemetry] prometheus_listen`` is set.
- Logs: ``JsonLogFormatter`` writes one JSON object per line with personal identifiers (resident
  ID numbers, card numbers, mobile numbers) masked, and the trace id when there is one.

Span and metric attributes never carry personal data: only member ids, action names, outcomes
and reasons. Exporters are optional; without providers the OpenTelemetry no-op ones are used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from fedgate.logs import JsonLogFormatter, configure_logging, mask_identifiers, masked_span
from fedgate.otel import SECONDS_BUCKETS

__all__ = [
    "ATTR_ACTION",
    "ATTR_LEG",
    "ATTR_OUTCOME",
    "ATTR_PEER",
    "ATTR_REASON",
    "ATTR_STAGE",
    "ATTR_TARGET",
    "GatewayTelemetry",
    "JsonLogFormatter",
    "configure_logging",
    "mask_identifiers",
]

INSTRUMENTATION_NAME: Final = "fedgate.gateway"

ATTR_ACTION: Final = "fedgate.action"
ATTR_TARGET: Final = "fedgate.target"
ATTR_PEER: Final = "fedgate.peer"
ATTR_OUTCOME: Final = "fedgate.outcome"
ATTR_REASON: Final = "fedgate.reason"
ATTR_STAGE: Final = "fedgate.stage"
ATTR_LEG: Final = "fedgate.audit.leg"


class GatewayTelemetry:
    """Tracer, meter and instruments of one gateway; built once and shared by every stage."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        tracers = tracer_provider or trace.get_tracer_provider()
        meters = meter_provider or metrics.get_meter_provider()
        self.tracer = tracers.get_tracer(INSTRUMENTATION_NAME)
        self.meter = meters.get_meter(INSTRUMENTATION_NAME)
        self.request_duration = self.meter.create_histogram(
            "fedgate.gateway.request.duration",
            unit="s",
            description="Time from receiving a request to answering or refusing it",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.refusals = self.meter.create_counter(
            "fedgate.gateway.refusals",
            unit="{refusal}",
            description="Requests refused, by reason and pipeline stage",
        )
        self.audit_append_duration = self.meter.create_histogram(
            "fedgate.gateway.audit.append.duration",
            unit="s",
            description="Time for one durable audit append (request or response leg)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Mapping[str, str] | None = None,
        parent: otel_context.Context | None = None,
    ) -> Iterator[trace.Span]:
        """A span that is current for the block; exceptions are recorded on it."""
        with masked_span(
            self.tracer, name, context=parent, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[trace.Span]:
        """The span of one pipeline stage: ``gateway.stage.<name>``; none when the request's
        span is not recorded (no tracer configured, or not sampled), which keeps the cost of
        tracing at zero when it is off."""
        if not trace.get_current_span().is_recording():
            yield trace.INVALID_SPAN
            return
        with masked_span(
            self.tracer, f"gateway.stage.{name}", attributes={ATTR_STAGE: name}
        ) as span:
            yield span

    def record_request(self, seconds: float, *, action: str, target: str, outcome: str) -> None:
        self.request_duration.record(
            seconds, {ATTR_ACTION: action, ATTR_TARGET: target, ATTR_OUTCOME: outcome}
        )

    def record_refusal(self, *, reason: str, stage: str) -> None:
        self.refusals.add(1, {ATTR_REASON: reason, ATTR_STAGE: stage})

    def record_audit_append(self, seconds: float, *, leg: str) -> None:
        self.audit_append_duration.record(seconds, {ATTR_LEG: leg})
