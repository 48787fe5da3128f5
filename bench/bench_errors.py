"""The cost of mapping errors once: ``ErrorInterceptor`` on a unary call, against no interceptor.

Two real gRPC servers on loopback (insecure: the cost measured is the interceptor's, not TLS's)
serve the same echo handler, one with ``fedgate.status.ErrorInterceptor`` and one without. Calls
alternate between them in rounds so both see the same machine load. ``error_interceptor_call_us``
is the median round-trip with the interceptor; ``error_interceptor_overhead_ratio`` its median
over the baseline's (1.0 = free).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc
import grpc.aio

from fedgate.status import ErrorInterceptor

__all__ = ["run"]


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _server(interceptors: list[Any]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=interceptors)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _measure(rounds: int, per_round: int) -> tuple[float, float]:
    plain, plain_port = await _server([])
    mapped, mapped_port = await _server([ErrorInterceptor()])
    times: dict[str, list[float]] = {"plain": [], "mapped": []}
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{plain_port}") as a,
            grpc.aio.insecure_channel(f"127.0.0.1:{mapped_port}") as b,
        ):
            calls = {
                "plain": a.unary_unary("/bench.Echo/Call", None, None),
                "mapped": b.unary_unary("/bench.Echo/Call", None, None),
            }
            for call in calls.values():  # warm up both channels
                for _ in range(50):
                    await call(b"x" * 64)
            for _ in range(rounds):
                for name, call in calls.items():
                    for _ in range(per_round):
                        started = time.perf_counter()
                        await call(b"x" * 64)
                        times[name].append(time.perf_counter() - started)
    finally:
        await plain.stop(None)
        await mapped.stop(None)
    plain_us = statistics.median(times["plain"]) * 1e6
    mapped_us = statistics.median(times["mapped"]) * 1e6
    return mapped_us, mapped_us / plain_us


def run(quick: bool) -> dict[str, tuple[float, str]]:
    rounds, per_round = (20, 50) if quick else (100, 100)
    mapped_us, ratio = asyncio.run(_measure(rounds, per_round))
    return {
        "error_interceptor_call_us": (mapped_us, "us"),
        "error_interceptor_overhead_ratio": (ratio, "ratio"),
    }
