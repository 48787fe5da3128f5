"""Telemetry leaves the processes through OpenTelemetry's own exporters: a real gateway process
and a real node process send OTLP/gRPC to a small receiver built on ``opentelemetry-proto``'s
service definitions; one request's spans share one trace across both, and no identifier of the
request is in clear in any span. The node's metrics are real (served by the Prometheus exporter).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from adapters.config import NodeConfig
from fedgate.client import FedgateClient
from fedgate.config import dump_toml
from fedgate.testing import free_port
from fedgate.types import MemberId

pytestmark = pytest.mark.slow


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, Any]]:
        """``(service.name, span)`` for every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource_spans.scope_spans:
                    found.extend((service, span) for span in scope.spans)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = grpc.aio.server()
    collected = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collected, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def _spawn(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(sys.executable, *args, stderr=out)


async def _stop(proc: asyncio.subprocess.Process, log: Path) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, _text(log)


def _text(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


async def _scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    await writer.drain()
    text = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return text


async def test_one_request_is_one_trace_across_gateway_and_node(
    kit: Any, fed_dir: Path, world: Any, tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    collected, otlp = receiver
    node_endpoint, gateway_endpoint = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    node_metrics = free_port()
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(
        NodeConfig(
            member_id=MemberId("bank.icbc"),
            federation_dir=fed_dir,
            state_dir=tmp_path / "node",
            listen=node_endpoint,
            gateway_endpoint=gateway_endpoint,
            backend_path=world.database("bank.icbc"),
            otlp_endpoint=otlp,
            prometheus_listen=f"127.0.0.1:{node_metrics}",
        ).to_toml(),
        encoding="utf-8",
    )
    gateway_toml = tmp_path / "gateway.toml"
    gateway_toml.write_text(
        dump_toml(
            {
                "server": {"listen": gateway_endpoint, "grace_period_s": 2.0},
                "federation": {"dir": fed_dir},
                "pipeline": {"state_dir": tmp_path / "gateway"},
                "routing": {"endpoints": {"bank.icbc": node_endpoint}},
                "telemetry": {"otlp_endpoint": otlp, "trace_sample_ratio": 1.0},
            }
        ),
        encoding="utf-8",
    )
    node_log, gateway_log = tmp_path / "node.log", tmp_path / "gateway.log"
    node = await _spawn(["-m", "adapters", "--config", str(node_toml)], node_log)
    gateway = await _spawn(["-m", "gateway.server", "--config", str(gateway_toml)], gateway_log)
    _, hop = kit.hop_into("bank.icbc")
    request = kit.request("account_holder")
    request.account_holder.account_number = hop.to_account
    try:
        async with FedgateClient.from_federation(
            fed_dir, MemberId("police.gd.afc"), endpoint=gateway_endpoint
        ) as client:
            for attempt in range(100):  # both processes start: bounded wait, 0.2 s apart
                try:
                    answer = await client.ask(request, timeout=5)
                    break
                except Exception:
                    if attempt == 99 or node.returncode is not None:
                        raise
                    await asyncio.sleep(0.2)
                    request = kit.request("account_holder")
                    request.account_holder.account_number = hop.to_account
        assert answer.response.responder == "bank.icbc"
        metrics = await _scrape(node_metrics)
    finally:
        await _stop(gateway, gateway_log)  # a clean stop flushes the batched spans
        await _stop(node, node_log)

    assert "fedgate_node_request_duration_seconds_count" in metrics
    assert 'fedgate_action="account_holder"' in metrics

    spans = collected.spans()
    node_handle = [
        span
        for service, span in spans
        if service == "fedgate-node" and span.name == "AgencyService/Handle"
    ]
    trace_ids = {span.trace_id for span in node_handle}
    submit = [
        span
        for service, span in spans
        if service == "fedgate-gateway" and span.trace_id in trace_ids
    ]
    assert node_handle, [(s, sp.name) for s, sp in spans]
    assert any(span.name == "gateway.Submit" for span in submit)
    pipeline = next(span for span in submit if span.name == "gateway.Submit")
    assert "gateway.stage.route" in {event.name for event in pipeline.events}
    # the node's server span is a child of the gateway's client span
    client_ids = {span.span_id for span in submit if span.kind == span.SPAN_KIND_CLIENT}
    node_server = [
        span
        for service, span in spans
        if service == "fedgate-node"
        and span.kind == span.SPAN_KIND_SERVER
        and span.trace_id in trace_ids
    ]
    assert node_server
    assert all(span.parent_span_id in client_ids for span in node_server)
    # no identifier of the request in clear, anywhere in any span
    exported = b"".join(r.SerializeToString() for r in collected.requests)
    for secret in (hop.to_account, request.officer.id, request.officer.name):
        assert secret.encode() not in exported, secret
