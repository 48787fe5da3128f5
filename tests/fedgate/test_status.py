"""Error mapping: every FedgateError survives a real gRPC round trip with its details."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from fedgate import errors
from fedgate.errors import FedgateError, FieldViolation
from fedgate.status import (
    ErrorInterceptor,
    abort_with,
    error_detail,
    error_from_rpc,
    rpc_status_of,
)

CASES: list[FedgateError] = [
    errors.SignatureInvalid("bad signature"),
    errors.Replayed("seen before"),
    errors.Stale("too old"),
    errors.PolicyDenied("no rule"),
    errors.RuleViolated("third stop-payment"),
    errors.QuotaExceeded("slow down", retry_after_s=2.5),
    errors.AgencyUnavailable("node down"),
    errors.AgencyFault("bad answer"),
    errors.AuditUnavailable("log down"),
    errors.InvalidArgument.for_fields(
        [FieldViolation("stop_payment.account_number", "fails the Luhn check")]
    ),
    errors.Expired("deadline passed"),
]


@pytest.fixture
async def server_for() -> AsyncIterator[dict[str, FedgateError]]:
    table: dict[str, FedgateError] = {}

    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await abort_with(context, table["error"])

    handler = grpc.method_handlers_generic_handler(
        "test.Fail",
        {"Call": grpc.unary_unary_rpc_method_handler(fail)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    table["port"] = port  # type: ignore[assignment]
    yield table
    await server.stop(None)


class TestRoundTrip:
    @pytest.mark.parametrize("error", CASES, ids=lambda e: e.reason)
    async def test_error_survives_the_wire(
        self, server_for: dict[str, FedgateError], error: FedgateError
    ) -> None:
        server_for["error"] = error
        port = server_for["port"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Fail/Call")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"")
        assert info.value.code() == error.code
        rebuilt = error_from_rpc(info.value)
        assert type(rebuilt) is type(error)
        assert rebuilt.reason == error.reason
        assert rebuilt.message == error.message
        if isinstance(error, errors.InvalidArgument):
            assert isinstance(rebuilt, errors.InvalidArgument)
            assert rebuilt.violations == error.violations
        if isinstance(error, errors.QuotaExceeded):
            assert isinstance(rebuilt, errors.QuotaExceeded)
            assert rebuilt.retry_after_s == pytest.approx(2.5)


class TestInBand:
    def test_error_detail_carries_fields(self) -> None:
        error = errors.InvalidArgument.for_fields([FieldViolation("officer.id", "empty")])
        detail = error_detail(error)
        assert detail.reason == "INVALID_ARGUMENT"
        assert detail.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [(f.field, f.description) for f in detail.field_errors] == [("officer.id", "empty")]

    def test_status_has_error_info(self) -> None:
        status = rpc_status_of(errors.PolicyDenied("nope"))
        assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert len(status.details) == 1


class TestErrorInterceptor:
    """``ErrorInterceptor`` on a real server: handlers raise, callers see one mapping."""

    @pytest.fixture
    async def port(self) -> AsyncIterator[int]:
        async def unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            if request == b"fedgate":
                raise errors.Replayed("seen before")
            if request == b"ok":
                return b"fine"
            raise RuntimeError("db at /srv/secret.sqlite, card 6222021234567890123")

        async def stream(
            request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            yield b"first"
            raise KeyError("internal-key-name")

        handler = grpc.method_handlers_generic_handler(
            "test.Boom",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary),
                "Stream": grpc.unary_stream_rpc_method_handler(stream),
            },
        )
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        yield port
        await server.stop(None)

    async def test_unexpected_error_is_internal_without_text(
        self, port: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Boom/Unary")(
                    b"bug", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
                )
        error = info.value
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == f"internal error; trace id {trace_id}"
        assert error_from_rpc(error).reason == "INTERNAL"
        logged = [r for r in caplog.records if r.name == "fedgate.status"]
        assert logged, "the error is logged"
        assert trace_id in logged[-1].getMessage()
        assert logged[-1].exc_info is not None

    async def test_fedgate_error_keeps_its_status(self, port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Boom/Unary")(b"fedgate")
            assert await channel.unary_unary("/test.Boom/Unary")(b"ok") == b"fine"
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_from_rpc(info.value).reason == "REPLAYED"

    async def test_stream_failing_midway_is_internal(self, port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/test.Boom/Stream")(b"")
            got: list[bytes] = []

            async def drain() -> None:
                async for item in call:
                    got.append(item)

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain()
        assert got == [b"first"]
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "internal-key-name" not in (info.value.details() or "")
        assert "KeyError" not in (info.value.details() or "")
