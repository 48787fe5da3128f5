"""Routing pieces that need no network: the circuit breaker and the response check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedgate.actions import ORDER_ACTIONS
from fedgate.envelope import Domain, Signer, request_hash, sign_envelope
from fedgate.errors import AgencyFault, AgencyUnavailable
from fedgate.keys import generate_signing_key
from fedgate.registry import Registry
from fedgate.testing import valid_request
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.types import MemberId
from fedgate.v1 import agency_service_pb2, agency_service_pb2_grpc, bank_pb2, request_pb2
from gateway.config import RoutingConfig
from gateway.routing import BreakerState, CircuitBreaker, NodeRouter, check_response


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TestCircuitBreaker:
    def test_opens_after_consecutive_failures_and_lets_one_trial_through(self) -> None:
        clock = Clock()
        breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=clock)
        assert breaker.allow()
        breaker.failure()
        assert breaker.allow()
        breaker.failure()
        assert breaker.state is BreakerState.OPEN
        assert not breaker.allow()
        clock.t = 5.0
        assert breaker.allow()  # the one trial
        assert not breaker.allow()
        breaker.failure()
        assert breaker.state is BreakerState.OPEN
        clock.t = 10.0
        assert breaker.allow()
        breaker.success()
        assert breaker.state is BreakerState.CLOSED
        assert breaker.allow()

    def test_a_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=Clock())
        breaker.failure()
        breaker.success()
        breaker.failure()
        assert breaker.state is BreakerState.CLOSED


class TestCheckResponse:
    @pytest.fixture
    def setting(self, gw_federation: Path) -> tuple[Registry, Signer, bytes, request_pb2.Request]:
        registry = Registry.load_dir(gw_federation)
        bank = MemberCredentials.load(gw_federation, MemberId("bank.icbc"))
        request = valid_request("account_holder", now=datetime.now(UTC))
        return registry, Signer.from_key(bank.signing_key), request.SerializeToString(), request

    def _answer(
        self, request: request_pb2.Request, body: bytes, **kw: object
    ) -> request_pb2.Response:
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=request_hash(body),
            responder="bank.icbc",
            status=request_pb2.RESPONSE_STATUS_OK,
        )
        for k, v in kw.items():
            setattr(response, k, v)
        response.answered_at.FromDatetime(datetime.now(UTC))
        return response

    def _check(self, registry: Registry, envelope, body: bytes, request) -> request_pb2.Response:  # type: ignore[no-untyped-def]
        return check_response(
            envelope,
            registry=registry,
            request_body=body,
            request_id=request.request_id,
            target=MemberId("bank.icbc"),
            action="account_holder",
            now=datetime.now(UTC),
        )

    def test_good_answer(self, setting) -> None:  # type: ignore[no-untyped-def]
        registry, signer, body, request = setting
        envelope = sign_envelope(
            self._answer(request, body).SerializeToString(), signer, Domain.RESPONSE
        )
        assert self._check(registry, envelope, body, request).status == 1

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            ({"request_id": "another"}, "answers request"),
            ({"responder": "bank.ccb"}, "is from"),
            ({"request_hash": b"\x00" * 32}, "request_hash"),
            ({"status": request_pb2.RESPONSE_STATUS_PENDING}, "not an answer"),
        ],
    )
    def test_wrong_answers_are_faults(self, setting, change, match) -> None:  # type: ignore[no-untyped-def]
        registry, signer, body, request = setting
        response = self._answer(request, body, **change)
        envelope = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        with pytest.raises(AgencyFault, match=match):
            self._check(registry, envelope, body, request)

    def test_answer_signed_by_someone_else(self, setting) -> None:  # type: ignore[no-untyped-def]
        registry, _, body, request = setting
        stranger = Signer.from_key(generate_signing_key())
        envelope = sign_envelope(
            self._answer(request, body).SerializeToString(), stranger, Domain.RESPONSE
        )
        with pytest.raises(AgencyFault, match="UNKNOWN_KEY"):
            self._check(registry, envelope, body, request)

    def test_wrong_result_kind(self, setting) -> None:  # type: ignore[no-untyped-def]
        registry, signer, body, request = setting
        response = self._answer(request, body)
        response.freeze.SetInParent()
        envelope = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        with pytest.raises(AgencyFault, match="freeze result"):
            self._check(registry, envelope, body, request)


class TestCheckStageOneAnswer:
    """A stage-1 (hit / no-hit) answer of a staged disclosure carries a HitResult only; an answer
    with details, or with anything that could carry them, is the agency's fault."""

    @pytest.fixture
    def setting(self, gw_federation: Path) -> tuple[Registry, Signer, bytes, request_pb2.Request]:
        registry = Registry.load_dir(gw_federation)
        bank = MemberCredentials.load(gw_federation, MemberId("bank.icbc"))
        request = valid_request("accounts_by_id", now=datetime.now(UTC))
        request.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
        return registry, Signer.from_key(bank.signing_key), request.SerializeToString(), request

    def _check(self, setting, response: request_pb2.Response) -> request_pb2.Response:  # type: ignore[no-untyped-def]
        registry, signer, body, request = setting
        response.request_id = request.request_id
        response.request_hash = request_hash(body)
        response.responder = "bank.icbc"
        response.answered_at.FromDatetime(datetime.now(UTC))
        envelope = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        return check_response(
            envelope,
            registry=registry,
            request_body=body,
            request_id=request.request_id,
            target=MemberId("bank.icbc"),
            action="accounts_by_id",
            now=datetime.now(UTC),
        )

    @pytest.mark.parametrize("hit", [True, False])
    def test_hit_or_no_hit(self, setting, hit: bool) -> None:  # type: ignore[no-untyped-def]
        response = request_pb2.Response(
            status=request_pb2.RESPONSE_STATUS_OK, hit=request_pb2.HitResult(hit=hit)
        )
        assert self._check(setting, response).hit.hit is hit

    def test_a_refusal_without_result(self, setting) -> None:  # type: ignore[no-untyped-def]
        response = request_pb2.Response(status=request_pb2.RESPONSE_STATUS_INVALID, detail="bad")
        assert self._check(setting, response).status == request_pb2.RESPONSE_STATUS_INVALID

    @pytest.mark.parametrize(
        ("response", "match"),
        [
            (
                request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_OK,
                    accounts_by_id=bank_pb2.AccountsByIdResult(holder_name="张三"),
                ),
                r"with details \(accounts_by_id\)",
            ),
            (
                request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_NOT_FOUND,
                    accounts_by_id=bank_pb2.AccountsByIdResult(),
                ),
                r"with details \(accounts_by_id\)",
            ),
            (request_pb2.Response(status=request_pb2.RESPONSE_STATUS_OK), "without a hit result"),
            (
                request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_OK,
                    hit=request_pb2.HitResult(hit=True),
                    detail="6222020000000000013 张三",
                ),
                "with a detail text",
            ),
            (
                request_pb2.Response(
                    status=request_pb2.RESPONSE_STATUS_REFUSED, hit=request_pb2.HitResult()
                ),
                "hit result on a refusal",
            ),
        ],
    )
    def test_details_at_stage_one_are_faults(  # type: ignore[no-untyped-def]
        self, setting, response: request_pb2.Response, match: str
    ) -> None:
        with pytest.raises(AgencyFault, match=match):
            self._check(setting, response)

    def test_a_hit_result_answers_nothing_else(self, setting) -> None:  # type: ignore[no-untyped-def]
        registry, signer, _, _ = setting
        request = valid_request("accounts_by_id", now=datetime.now(UTC))  # not staged
        body = request.SerializeToString()
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=request_hash(body),
            responder="bank.icbc",
            status=request_pb2.RESPONSE_STATUS_OK,
            hit=request_pb2.HitResult(hit=True),
        )
        envelope = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        with pytest.raises(AgencyFault, match="with a hit result"):
            check_response(
                envelope,
                registry=registry,
                request_body=body,
                request_id=request.request_id,
                target=MemberId("bank.icbc"),
                action="accounts_by_id",
                now=datetime.now(UTC),
            )


class _FlakyNode(agency_service_pb2_grpc.AgencyServiceServicer):
    """A real AgencyService that fails ``failures`` calls with ``code``, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE):
        self.failures = failures
        self.code = code
        self.calls = 0

    async def _maybe_fail(self, context: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, "the node is not there")

    async def Handle(self, request: Any, context: Any) -> agency_service_pb2.HandleResponse:
        await self._maybe_fail(context)
        return agency_service_pb2.HandleResponse(response=request.envelope)

    async def GetResult(self, request: Any, context: Any) -> agency_service_pb2.GetResultResponse:
        await self._maybe_fail(context)
        return agency_service_pb2.GetResultResponse()


@pytest.fixture
async def flaky(
    gw_federation: Path,
) -> AsyncIterator[Callable[..., Awaitable[tuple[_FlakyNode, NodeRouter]]]]:
    servers: list[grpc.aio.Server] = []
    routers: list[NodeRouter] = []

    async def start(failures: int, **routing: Any) -> tuple[_FlakyNode, NodeRouter]:
        node = _FlakyNode(failures, routing.pop("code", grpc.StatusCode.UNAVAILABLE))
        server = grpc.aio.server()
        agency_service_pb2_grpc.add_AgencyServiceServicer_to_server(node, server)
        bank = MemberCredentials.load(gw_federation, MemberId("bank.icbc"))
        port = server.add_secure_port("127.0.0.1:0", server_credentials(bank))
        await server.start()
        servers.append(server)
        settings = {"max_attempts": 3, "retry_backoff_s": 0.01, "breaker_failures": 100}
        router = NodeRouter(
            credentials=MemberCredentials.load(gw_federation, MemberId("gateway")),
            endpoint_of=lambda _: f"127.0.0.1:{port}",
            config=RoutingConfig(**{**settings, **routing}),
            max_message_bytes=1 << 22,
        )
        routers.append(router)
        return node, router

    yield start
    for router in routers:
        await router.close()
    for server in servers:
        await server.stop(0)


def _handle() -> agency_service_pb2.HandleRequest:
    return agency_service_pb2.HandleRequest(log_origin="test/log", leaf_index=1)


BANK = MemberId("bank.icbc")


class TestRetries:
    async def test_a_read_is_retried_up_to_max_attempts(self, flaky: Any) -> None:
        node, router = await flaky(failures=10)
        with pytest.raises(AgencyUnavailable, match=r"bank\.icbc is unreachable"):
            await router.handle(BANK, _handle(), action="account_holder", timeout=5)
        assert node.calls == 3

    async def test_a_read_succeeds_on_a_later_attempt(self, flaky: Any) -> None:
        node, router = await flaky(failures=2)
        await router.handle(BANK, _handle(), action="transactions", timeout=5)
        assert node.calls == 3

    @pytest.mark.parametrize("order", sorted(ORDER_ACTIONS))
    async def test_orders_are_never_retried(self, flaky: Any, order: str) -> None:
        node, router = await flaky(failures=1)
        with pytest.raises(AgencyUnavailable):
            await router.handle(BANK, _handle(), action=order, timeout=5)
        assert node.calls == 1

    async def test_a_node_error_is_a_fault_and_not_retried(self, flaky: Any) -> None:
        node, router = await flaky(failures=1, code=grpc.StatusCode.PERMISSION_DENIED)
        with pytest.raises(AgencyFault, match="PERMISSION_DENIED"):
            await router.handle(BANK, _handle(), action="account_holder", timeout=5)
        assert node.calls == 1

    async def test_no_retry_when_the_backoff_would_pass_the_deadline(self, flaky: Any) -> None:
        node, router = await flaky(failures=10, retry_backoff_s=30.0)
        with pytest.raises(AgencyUnavailable):
            await router.handle(BANK, _handle(), action="account_holder", timeout=2)
        assert node.calls == 1

    async def test_result_lookups_are_reads_and_retried(self, flaky: Any) -> None:
        node, router = await flaky(failures=2)
        await router.get_result(BANK, "req-1", timeout=5)
        assert node.calls == 3

    async def test_max_attempts_one_means_no_retry(self, flaky: Any) -> None:
        node, router = await flaky(failures=10, max_attempts=1)
        with pytest.raises(AgencyUnavailable):
            await router.handle(BANK, _handle(), action="account_holder", timeout=5)
        assert node.calls == 1
