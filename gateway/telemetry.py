"""The gateway's telemetry, declared once: tracer, meter, instruments, attribute keys, logs.

- Traces: one span per request (``gateway.Submit``); each pipeline stage is an event on it
  (``gateway.stage.<name>``, stamped at the stage's start, with its duration in
  ``fedgate.stage.duration_s``), not a span of its own: twelve child spans cost more CPU than
  the rest of the pipeline's bookkeeping. ``opentelemetry-instrumentation-grpc``'s interceptors
  (set up in ``gateway.server`` through ``fedgate.otel``) continue the caller's trace and carry it
  to the agency node, so the node's spans join the same trace. Exported over OTLP when
  ``[telemetry] otlp_endpoint`` is set, sampled parent-based (``trace_sample_ratio`` of the
  traces the gateway starts; a caller's decision is followed). A request that is not sampled
  costs a non-recording span and one check per stage, nothing more.
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
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from fedgate.logs import JsonLogFormatter, configure_logging, mask_identifiers, masked_span
from fedgate.otel import SECONDS_BUCKETS
from gateway.diagnostics import StageClock

__all__ = [
    "ATTR_ACTION",
    "ATTR_LEG",
    "ATTR_OUTCOME",
    "ATTR_PEER",
    "ATTR_REASON",
    "ATTR_STAGE",
    "ATTR_STAGE_DURATION",
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
ATTR_STAGE_DURATION: Final = "fedgate.stage.duration_s"

_UNTIMED: Final = contextlib.nullcontext()
"""What a stage runs in when its request's span does not record: nothing to time."""
_NO_SPAN: Final = contextlib.nullcontext(trace.INVALID_SPAN)
"""The span of every request when no tracer is configured (``nullcontext`` keeps no state)."""


class _TimedStage:
    """A stage of a recorded request: an event on the request's span, at the stage's start,
    with its duration."""

    __slots__ = ("_name", "_span", "_start")

    def __init__(self, span: trace.Span, name: str) -> None:
        self._span = span
        self._name = name
        self._start = 0

    def __enter__(self) -> None:
        self._start = time.time_ns()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._span.add_event(
            f"gateway.stage.{self._name}",
            {ATTR_STAGE: self._name, ATTR_STAGE_DURATION: (time.time_ns() - self._start) / 1e9},
            timestamp=self._start,
        )


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
        # Without a tracer provider (none given, none set globally) every span is a no-op, yet
        # making one and making it current costs ~15 µs per request: then none is made.
        self._tracing = not isinstance(
            tracers, trace.ProxyTracerProvider | trace.NoOpTracerProvider
        )
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
        # Attribute sets made once each: a metric record is on every request's path.
        self._request_attributes: dict[tuple[str, str, str], dict[str, str]] = {}
        self._leg_attributes: dict[str, dict[str, str]] = {}
        self.clock: StageClock | None = None
        """Set while the tail is diagnosed (``gateway.diagnostics``): every stage is marked."""

    def span(
        self,
        name: str,
        *,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Mapping[str, str] | None = None,
        parent: otel_context.Context | None = None,
    ) -> contextlib.AbstractContextManager[trace.Span]:
        """A span that is current for the block; exceptions are recorded on it. Without a
        tracer provider, the invalid span and nothing made current (one shared context
        manager: a generator's, made per request, cost 1.2 µs against 0.2)."""
        if not self._tracing:
            return _NO_SPAN
        return self._span(name, kind, attributes, parent)

    @contextlib.contextmanager
    def _span(
        self,
        name: str,
        kind: trace.SpanKind,
        attributes: Mapping[str, str] | None,
        parent: otel_context.Context | None,
    ) -> Iterator[trace.Span]:
        with masked_span(
            self.tracer, name, context=parent, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span

    def stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        """One pipeline stage of the current request: the event ``gateway.stage.<name>`` on the
        request's span when that span records; nothing at all when it does not (no tracer
        configured, or not sampled). Without a tracer the current span is not even looked up
        (a dozen context look-ups per request)."""
        clock = self.clock
        if clock is not None:
            clock.mark(name)
        if not self._tracing:
            return _UNTIMED
        span = trace.get_current_span()
        if not span.is_recording():
            return _UNTIMED
        return _TimedStage(span, name)

    def record_request(self, seconds: float, *, action: str, target: str, outcome: str) -> None:
        key = (action, target, outcome)
        attributes = self._request_attributes.get(key)
        if attributes is None:  # a few dozen combinations: actions x members x outcomes
            attributes = {ATTR_ACTION: action, ATTR_TARGET: target, ATTR_OUTCOME: outcome}
            self._request_attributes[key] = attributes
        self.request_duration.record(seconds, attributes)

    def record_refusal(self, *, reason: str, stage: str) -> None:
        self.refusals.add(1, {ATTR_REASON: reason, ATTR_STAGE: stage})

    def record_audit_append(self, seconds: float, *, leg: str) -> None:
        attributes = self._leg_attributes.get(leg)
        if attributes is None:
            attributes = self._leg_attributes[leg] = {ATTR_LEG: leg}
        self.audit_append_duration.record(seconds, attributes)
