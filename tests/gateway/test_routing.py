"""Routing pieces that need no network: the circuit breaker and the response check."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedgate.envelope import Domain, Signer, request_hash, sign_envelope
from fedgate.errors import AgencyFault
from fedgate.keys import generate_signing_key
from fedgate.registry import Registry
from fedgate.testing import valid_request
from fedgate.tls import MemberCredentials
from fedgate.types import MemberId
from fedgate.v1 import request_pb2
from gateway.routing import BreakerState, CircuitBreaker, check_response


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
