"""The gateway's telemetry, declared once: tracer, meter, instruments, attribute keys, logs.

- Traces: one span per request (``gateway.Submit``) with a child span per pipeline stage
  (``gateway.stage.<name>``); the W3C trace context of the routing span is sent to the agency
  node in gRPC metadata (``traceparent``), so the node's spans join the same trace.
- Metrics (every one with a unit): request duration by action, target and outcome; refusals by
  reason and stage; audit append latency by leg. ``PrometheusEndpoint`` serves them as
  Prometheus text on a loopback port, written with the standard library (no exporter package).
- Logs: ``JsonLogFormatter`` writes one JSON object per line with personal identifiers (resident
  ID numbers, card numbers, mobile numbers) masked, and the trace id when there is one.

Span and metric attributes never carry personal data: only member ids, action names, outcomes
and reasons. Exporters are optional; without providers the OpenTelemetry no-op ones are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fedgate.logs import JsonLogFormatter, configure_logging, mask_identifiers, masked_span

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
    "PrometheusEndpoint",
    "configure_logging",
    "extract_context",
    "mask_identifiers",
    "render_prometheus",
]

INSTRUMENTATION_NAME: Final = "fedgate.gateway"

ATTR_ACTION: Final = "fedgate.action"
ATTR_TARGET: Final = "fedgate.target"
ATTR_PEER: Final = "fedgate.peer"
ATTR_OUTCOME: Final = "fedgate.outcome"
ATTR_REASON: Final = "fedgate.reason"
ATTR_STAGE: Final = "fedgate.stage"
ATTR_LEG: Final = "fedgate.audit.leg"

_SECONDS_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_PROPAGATOR: Final = TraceContextTextMapPropagator()


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
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
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
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
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

    def outgoing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The current trace context as gRPC metadata (W3C ``traceparent``/``tracestate``)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return tuple(carrier.items())

    def record_request(self, seconds: float, *, action: str, target: str, outcome: str) -> None:
        self.request_duration.record(
            seconds, {ATTR_ACTION: action, ATTR_TARGET: target, ATTR_OUTCOME: outcome}
        )

    def record_refusal(self, *, reason: str, stage: str) -> None:
        self.refusals.add(1, {ATTR_REASON: reason, ATTR_STAGE: stage})

    def record_audit_append(self, seconds: float, *, leg: str) -> None:
        self.audit_append_duration.record(seconds, {ATTR_LEG: leg})


def extract_context(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The trace context a caller sent in gRPC metadata (for agency nodes and tests)."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    return _PROPAGATOR.extract(carrier)


# -- Prometheus text exposition -------------------------------------------------------------

_UNIT_SUFFIX: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}


def _metric_name(name: str, unit: str) -> str:
    base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    suffix = _UNIT_SUFFIX.get(unit, "")
    if unit and not unit.startswith("{") and not suffix:
        suffix = re.sub(r"[^a-zA-Z0-9_]", "_", unit)
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(attributes: Mapping[str, Any], extra: tuple[str, str] | None = None) -> str:
    pairs = [(re.sub(r"[^a-zA-Z0-9_]", "_", k), str(v)) for k, v in sorted(attributes.items())]
    if extra is not None:
        pairs.append(extra)
    if not pairs:
        return ""
    escaped = (f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_prometheus(data: MetricsData | None) -> str:
    """Prometheus text format (0.0.4) of one collection."""
    lines: list[str] = []
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name = _metric_name(metric.name, metric.unit or "")
                points = metric.data
                if isinstance(points, Histogram):
                    lines.append(f"# HELP {name} {metric.description}")
                    lines.append(f"# TYPE {name} histogram")
                    for hp in points.data_points:
                        running = 0
                        bounds = [*hp.explicit_bounds, math.inf]
                        for bound, count in zip(bounds, hp.bucket_counts, strict=True):
                            running += count
                            le = ("le", _number(bound))
                            lines.append(
                                f"{name}_bucket{_labels(hp.attributes or {}, le)} {running}"
                            )
                        labels = _labels(hp.attributes or {})
                        lines.append(f"{name}_sum{labels} {_number(hp.sum)}")
                        lines.append(f"{name}_count{labels} {hp.count}")
                elif isinstance(points, Sum):
                    family = f"{name}_total" if points.is_monotonic else name
                    kind = "counter" if points.is_monotonic else "gauge"
                    lines.append(f"# HELP {family} {metric.description}")
                    lines.append(f"# TYPE {family} {kind}")
                    for sp in points.data_points:
                        lines.append(f"{family}{_labels(sp.attributes or {})} {_number(sp.value)}")
                elif isinstance(points, Gauge):
                    lines.append(f"# HELP {name} {metric.description}")
                    lines.append(f"# TYPE {name} gauge")
                    for gp in points.data_points:
                        lines.append(f"{name}{_labels(gp.attributes or {})} {_number(gp.value)}")
    return "\n".join(lines) + "\n"


class PrometheusEndpoint:
    """``GET /metrics`` on a loopback port, rendering ``reader``'s metrics on each scrape."""

    def __init__(self, *, reader: InMemoryMetricReader, host: str = "127.0.0.1", port: int = 0):
        self._reader = reader
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if (
                len(request_line) >= 2
                and request_line[0] == "GET"
                and (request_line[1].split("?")[0] == "/metrics")
            ):
                body = render_prometheus(self._reader.get_metrics_data()).encode()
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
