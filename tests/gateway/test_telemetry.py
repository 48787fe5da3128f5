"""Telemetry: one trace spans the gateway's stages and the agency node; metrics carry units;
the Prometheus endpoint serves them; JSON logs mask personal identifiers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind

from fedgate.client import FedgateClient
from fedgate.config import ConfigError
from fedgate.otel import Exporters, sampler
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2
from gateway.config import GatewayConfig, PipelineConfig, TelemetryConfig
from gateway.server import Gateway
from gateway.telemetry import GatewayTelemetry, JsonLogFormatter, mask_identifiers

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

STAGES = [
    "transport",
    "decode",
    "signature",
    "freshness",
    "validation",
    "authorization",
    "quotas",
    "audit_request",
    "route",
    "response_check",
    "audit_response",
    "countersign",
]


@dataclasses.dataclass
class Observed:
    harness: GatewayHarness
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@contextlib.asynccontextmanager
async def _observing(
    start_harness: Callable[..., Awaitable[GatewayHarness]],
    federation: Path,
    state: Path,
    tracer_provider: TracerProvider,
) -> AsyncIterator[Observed]:
    """A gateway whose spans (through ``tracer_provider``) and metrics are kept in memory."""
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    h = await start_harness(
        federation,
        state,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    try:
        yield Observed(h, exporter, reader)
    finally:
        await h.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def observed(
    gw_federation: Path,
    tmp_path_factory: pytest.TempPathFactory,
    harness_factory: Callable[..., Awaitable[GatewayHarness]],
) -> AsyncIterator[Observed]:
    state = tmp_path_factory.mktemp("telemetry")
    async with _observing(harness_factory, gw_federation, state, TracerProvider()) as o:
        yield o


def _metric(reader: InMemoryMetricReader, name: str):  # type: ignore[no-untyped-def]
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    return metric
    raise AssertionError(f"no metric {name}")


class TestTraces:
    async def test_one_trace_spans_every_stage_and_the_node(self, observed: Observed) -> None:
        h = observed.harness
        observed.spans.clear()
        assert (await h.client().submit(h.request())).answer is not None
        spans = observed.spans.get_finished_spans()
        submit = next(s for s in spans if s.name == "gateway.Submit")
        by_id = {s.context.span_id: s for s in spans}
        # the gRPC instrumentation's server span is the root, around the pipeline's span
        assert submit.parent is not None
        root = by_id[submit.parent.span_id]
        assert (root.kind, root.name) == (SpanKind.SERVER, "/fedgate.v1.GatewayService/Submit")
        trace_id = root.context.trace_id
        # the stages are events on the one pipeline span, in order, each with its duration
        events = [e for e in submit.events if e.name.startswith("gateway.stage.")]
        assert [e.name for e in events] == [f"gateway.stage.{stage}" for stage in STAGES]
        assert [e.attributes["fedgate.stage"] for e in events] == STAGES
        assert all(e.attributes["fedgate.stage.duration_s"] >= 0 for e in events)
        assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
        gateway_spans = [s.name for s in spans if s.name.startswith("gateway.")]
        assert gateway_spans == ["gateway.Submit"], "no span per stage"
        node = next(s for s in spans if s.name == "node.Handle")
        assert node.context.trace_id == trace_id

        def ancestors(span: Any) -> list[Any]:
            chain = []
            while span.parent is not None and span.parent.span_id in by_id:
                span = by_id[span.parent.span_id]
                chain.append(span)
            return chain

        # pipeline span -> instrumented client call -> instrumented server call -> node.Handle
        kinds = [(s.kind, s.name) for s in ancestors(node)[:3]]
        assert kinds == [
            (SpanKind.SERVER, "/fedgate.v1.AgencyService/Handle"),
            (SpanKind.CLIENT, "/fedgate.v1.AgencyService/Handle"),
            (SpanKind.INTERNAL, "gateway.Submit"),
        ]
        assert ancestors(node)[2] is submit
        assert h.node.metadata[-1]["traceparent"].split("-")[1] == f"{trace_id:032x}"

    async def test_spans_carry_no_personal_data(self, observed: Observed) -> None:
        h = observed.harness
        observed.spans.clear()
        request = h.request()
        await h.client().submit(request)
        account = request.account_holder.account_number
        for span in observed.spans.get_finished_spans():
            assert account not in json.dumps(dict(span.attributes or {}))


class TestWithoutTracer:
    async def test_a_span_is_the_invalid_one_made_current_nowhere_and_errors_pass_through(
        self,
    ) -> None:
        telemetry = GatewayTelemetry(tracer_provider=NoOpTracerProvider())
        before = otel_context.get_current()
        with telemetry.span("gateway.Submit") as span:
            assert span is trace.INVALID_SPAN
            assert otel_context.get_current() is before  # nothing made current
        with pytest.raises(ValueError, match="boom"), telemetry.span("gateway.Submit"):
            raise ValueError("boom")
        with telemetry.span("gateway.Submit") as again:  # the shared one, reusable
            assert again is trace.INVALID_SPAN

    async def test_with_a_tracer_each_block_is_its_own_recorded_span(self) -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        telemetry = GatewayTelemetry(tracer_provider=provider)
        seen: list[bool] = []

        with telemetry.span("gateway.Submit") as first:
            seen.append(first.is_recording() and trace.get_current_span() is first)

        def fail() -> None:
            with telemetry.span("gateway.Submit") as span:
                seen.append(span.is_recording() and trace.get_current_span() is span)
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            fail()
        assert seen == [True, True]
        ok, failed = exporter.get_finished_spans()
        assert ok.name == failed.name == "gateway.Submit"
        assert ok.context is not None
        assert failed.context is not None
        assert ok.context.span_id != failed.context.span_id
        assert ok.status.is_ok
        assert not failed.status.is_ok


class TestMetrics:
    async def test_request_duration_by_action_target_and_outcome(self, observed: Observed) -> None:
        h = observed.harness
        await h.client().submit(h.request())
        metric = _metric(observed.metrics, "fedgate.gateway.request.duration")
        assert metric.unit == "s"
        attributes = [dict(p.attributes or {}) for p in metric.data.data_points]
        assert {
            "fedgate.action": "account_holder",
            "fedgate.target": "bank.icbc",
            "fedgate.outcome": "ok",
        } in attributes

    async def test_refusals_by_reason_and_audit_latency(self, observed: Observed) -> None:
        h = observed.harness
        envelope = h.sign(h.request())
        envelope.signature = bytes(64)
        await h.refusal(envelope)
        refusals = _metric(observed.metrics, "fedgate.gateway.refusals")
        assert refusals.unit == "{refusal}"
        points = {
            (p.attributes or {}).get("fedgate.reason"): p.value for p in refusals.data.data_points
        }
        assert points.get("SIGNATURE_INVALID", 0) >= 1
        latency = _metric(observed.metrics, "fedgate.gateway.audit.append.duration")
        assert latency.unit == "s"
        legs = {(p.attributes or {}).get("fedgate.audit.leg") for p in latency.data.data_points}
        assert legs == {"request", "response"}


class TestPrometheus:
    async def test_exporter_text_has_units_and_buckets(self) -> None:
        exporters = Exporters.start(service="test", prometheus_listen="127.0.0.1:0")
        try:
            telemetry = GatewayTelemetry(meter_provider=exporters.meter_provider)
            telemetry.record_request(
                0.003, action="account_holder", target="bank.icbc", outcome="ok"
            )
            telemetry.record_refusal(reason="STALE", stage="freshness")
            assert exporters.metrics_port
            status, text = await _get(exporters.metrics_port, "/metrics")
        finally:
            exporters.shutdown()
        assert status == 200
        assert "# TYPE fedgate_gateway_request_duration_seconds histogram" in text
        assert 'fedgate_action="account_holder"' in text
        assert re.search(
            r'_bucket\{fedgate_action="account_holder"[^}]*le="\+Inf"[^}]*\} 1\.0', text
        )
        assert "# TYPE fedgate_gateway_refusals_total counter" in text
        assert re.search(
            r'_total\{fedgate_reason="STALE",fedgate_stage="freshness"[^}]*\} 1\.0', text
        )

    async def test_configured_gateway_serves_metrics_on_loopback(
        self, observed: Observed, tmp_path: Path
    ) -> None:
        h = observed.harness
        config = dataclasses.replace(
            h.config(),
            pipeline=PipelineConfig(state_dir=tmp_path / "state"),
            telemetry=TelemetryConfig(prometheus_listen="127.0.0.1:0"),
        )
        gateway = await Gateway.start(config)
        try:
            async with FedgateClient.from_federation(
                h.federation, MemberId("police.gd.afc"), endpoint=gateway.endpoint
            ) as client:
                assert (await client.submit(h.request())).answer is not None
            assert gateway.prometheus_port
            port = gateway.prometheus_port
            status, reply = await _get(port, "/metrics")
        finally:
            await gateway.stop(0.5)
        assert status == 200
        assert "fedgate_gateway_request_duration_seconds_count" in reply
        assert "fedgate_gateway_audit_append_duration_seconds_bucket" in reply
        with pytest.raises(OSError):  # stopped with the gateway
            await _get(port, "/metrics")


class TestTailDiagnostics:
    async def test_configured_gateway_times_every_stage_of_each_request(
        self, observed: Observed, tmp_path: Path
    ) -> None:
        h = observed.harness
        config = dataclasses.replace(
            h.config(),
            pipeline=PipelineConfig(state_dir=tmp_path / "state"),
            telemetry=TelemetryConfig(diagnose_tail_ms=50),
        )
        gateway = await Gateway.start(config)
        try:
            diagnostics = gateway.diagnostics
            assert diagnostics is not None
            async with FedgateClient.from_federation(
                h.federation, MemberId("police.gd.afc"), endpoint=gateway.endpoint
            ) as client:
                assert (await client.submit(h.request())).answer is not None
        finally:
            await gateway.stop(0.5)
        (times,) = diagnostics.stages.slowest(1.0)
        assert [name for name, _ in times.stages] == STAGES
        assert sum(seconds for _, seconds in times.stages) <= times.total_s

    async def test_the_threshold_is_not_negative(self, observed: Observed) -> None:
        with pytest.raises(ConfigError, match=r"telemetry\.diagnose_tail_ms"):
            dataclasses.replace(
                observed.harness.config(), telemetry=TelemetryConfig(diagnose_tail_ms=-1)
            ).validate()


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        reply = (await asyncio.wait_for(reader.read(), timeout=10)).decode()
    finally:
        writer.close()
    head, _, body = reply.partition("\r\n\r\n")
    return int(head.split()[1]), body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def unsampled(
    gw_federation: Path,
    tmp_path_factory: pytest.TempPathFactory,
    harness_factory: Callable[..., Awaitable[GatewayHarness]],
) -> AsyncIterator[Observed]:
    """A gateway whose own traces are never sampled (ratio 0), parent-based."""
    state = tmp_path_factory.mktemp("unsampled")
    provider = TracerProvider(sampler=sampler(0.0))
    async with _observing(harness_factory, gw_federation, state, provider) as o:
        yield o


class TestSampling:
    async def test_an_unsampled_request_records_no_span_but_its_metrics(
        self, unsampled: Observed
    ) -> None:
        h = unsampled.harness
        unsampled.spans.clear()
        assert (await h.client().submit(h.request())).answer is not None
        assert unsampled.spans.get_finished_spans() == ()
        metric = _metric(unsampled.metrics, "fedgate.gateway.request.duration")
        assert sum(p.count for p in metric.data.data_points) >= 1

    async def test_a_callers_sampled_flag_is_followed(self, unsampled: Observed) -> None:
        h = unsampled.harness
        unsampled.spans.clear()
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        raw = gateway_service_pb2.SubmitRequest(envelope=h.sign(h.request())).SerializeToString()
        creds = MemberCredentials.load(h.federation, MemberId("police.gd.afc"))
        async with grpc.aio.secure_channel(
            h.endpoint, channel_credentials(creds), options=channel_options(MemberId("gateway"))
        ) as channel:
            call = channel.unary_unary("/fedgate.v1.GatewayService/Submit")
            reply = gateway_service_pb2.SubmitResponse.FromString(
                await call(
                    raw,
                    timeout=10,
                    metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),),
                )
            )
        assert reply.HasField("response")
        spans = unsampled.spans.get_finished_spans()
        submit = next(s for s in spans if s.name == "gateway.Submit")
        assert f"{submit.context.trace_id:032x}" == trace_id
        assert "gateway.stage.countersign" in {e.name for e in submit.events}
        node = next(s for s in spans if s.name == "node.Handle")
        assert node.context.trace_id == submit.context.trace_id

    async def test_the_ratio_is_checked(self, unsampled: Observed) -> None:
        config = dataclasses.replace(
            unsampled.harness.config(), telemetry=TelemetryConfig(trace_sample_ratio=1.5)
        )
        with pytest.raises(ConfigError, match=r"telemetry\.trace_sample_ratio"):
            config.validate()
        with pytest.raises(ValueError, match="sample_ratio"):
            Exporters.start(service="test", sample_ratio=-0.1)
        doc = {
            "federation": {"dir": str(unsampled.harness.federation)},
            "pipeline": {"state_dir": str(unsampled.harness.state_dir)},
            "telemetry": {"trace_sample_ratio": 1},
        }
        assert GatewayConfig.from_mapping(doc, env={}).telemetry.trace_sample_ratio == 1


class TestLogs:
    async def test_identifiers_are_masked(self) -> None:
        text = mask_identifiers(
            "card 6222020031492469742, phone 13812345678, id 44010619880517001X"
        )
        assert "6222020031492469742" not in text
        assert "13812345678" not in text
        assert "44010619880517001X" not in text
        assert "138****5678" in text

    async def test_json_lines_mask_messages_and_fields(self) -> None:
        record = logging.LogRecord(
            "gateway", logging.INFO, __file__, 1, "asked about %s", ("13812345678",), None
        )
        record.fields = {"account": "6222020031492469742", "peer": "police.gd.afc"}
        line = json.loads(JsonLogFormatter().format(record))
        assert line["message"] == "asked about 138****5678"
        assert line["fields"]["account"] == "622****9742"
        assert line["fields"]["peer"] == "police.gd.afc"
        assert line["level"] == "INFO"
