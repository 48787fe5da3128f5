"""Telemetry export for the gateway and the agency nodes, through OpenTelemetry's own parts.

- Traces: a ``TracerProvider`` (resource ``service.name``) with a batching OTLP/gRPC exporter
  when an endpoint is configured (off by default: spans are then only made for an injected
  provider, e.g. in tests). Sampling is parent-based: a caller's sampled flag is followed, and
  a trace started here is recorded with probability ``sample_ratio``; a request that is not
  recorded gets a non-recording span, which costs next to nothing.
- Propagation: ``opentelemetry-instrumentation-grpc``'s asyncio server interceptor and client
  interceptors (W3C ``traceparent`` in gRPC metadata), never hand-written injection.
- Metrics: a ``MeterProvider`` always (so instruments record for real), exposed through
  ``opentelemetry-exporter-prometheus`` on a loopback HTTP port when one is configured, from a
  registry of this process's own (several gateways in one test process never share one).
- Units: every duration is in seconds (``unit="s"``).

Needs the ``[gateway]`` or ``[node]`` extra; the SDK never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import TracerProvider as ApiTracerProvider

__all__ = [
    "SECONDS_BUCKETS",
    "Exporters",
    "client_interceptors",
    "sampler",
    "server_interceptors",
]

SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10)
"""Histogram bucket bounds (seconds) for every duration fedgate records."""


def sampler(ratio: float) -> Sampler:
    """Parent-based: follow the caller's sampled flag; record ``ratio`` of the traces started
    here (by trace id, so every process of a trace decides alike)."""
    return ParentBased(TraceIdRatioBased(ratio))


@dataclass(slots=True)
class Exporters:
    """One process's providers and exporters. ``shutdown`` flushes spans and frees the port."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider
    metrics_port: int | None = None
    _http: Any = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        *,
        service: str,
        otlp_endpoint: str = "",
        prometheus_listen: str = "",
        sample_ratio: float = 1.0,
    ) -> Exporters:
        """Providers for ``service`` (``fedgate-gateway``, ``fedgate-node``): OTLP traces to
        ``otlp_endpoint`` (``host:port``, plaintext gRPC to a local collector; empty: no
        tracer provider), sampled parent-based with ``sample_ratio`` (0 to 1) for the traces
        this process starts, and Prometheus metrics on ``prometheus_listen`` (``host:port``,
        port 0 picks one; empty: metrics recorded but not served). Raises ``ValueError`` for a
        ratio outside 0 to 1, ``OSError`` if the metrics port cannot be bound."""
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be between 0 and 1, got {sample_ratio}")
        resource = Resource.create({"service.name": service})
        tracer_provider: TracerProvider | None = None
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider = TracerProvider(resource=resource, sampler=sampler(sample_ratio))
            exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
            tracer_provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=500)
            )
        if not prometheus_listen:
            return cls(tracer_provider, MeterProvider(resource=resource))
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=registry)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        host, _, port = prometheus_listen.rpartition(":")
        try:
            server, thread = start_http_server(int(port), host.strip("[]"), registry=registry)
        except BaseException:
            meter_provider.shutdown()
            if tracer_provider is not None:
                tracer_provider.shutdown()
            raise
        exporters = cls(tracer_provider, meter_provider, int(server.server_port))
        exporters._http = (server, thread)
        return exporters

    def shutdown(self) -> None:
        """Stop serving metrics, then flush and stop both providers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
            self.tracer_provider = None
        self.meter_provider.shutdown()


def server_interceptors(tracer_provider: ApiTracerProvider | None) -> list[Any]:
    """The asyncio server interceptors that continue a caller's trace (none without tracing)."""
    if tracer_provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=tracer_provider)]  # type: ignore[no-untyped-call]


def client_interceptors(tracer_provider: ApiTracerProvider | None) -> list[Any]:
    """The asyncio client interceptors that send the current trace context (none without
    tracing)."""
    if tracer_provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]
