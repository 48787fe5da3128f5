"""Routing to agency nodes: mTLS channels, deadlines, bounded retries, circuit breakers, and the
check of what a node answers.

Contract:

- Every call to a node MUST go over mTLS with the gateway's own certificate, accepting only the
  target member's certificate (``channel_options(target)``), with a deadline no later than the
  caller's. A node that cannot be reached MUST give ``AgencyUnavailable`` within that deadline.
- Only ``IDEMPOTENT_READS`` are retried (on ``UNAVAILABLE``, at most ``max_attempts`` times in
  all); an order is sent exactly once, because a node that did not answer may still have acted.
- Each node has a circuit breaker: after ``breaker_failures`` consecutive transport failures it
  refuses at once for ``breaker_reset_s``, then lets one trial call through.
- ``check_response`` MUST refuse (``AgencyFault``) an answer that is not signed by the target
  with a key valid now, or whose request hash, request id or responder is not the request's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio

from fedgate.actions import IDEMPOTENT_READS, RESULT_FIELD
from fedgate.disclosure import HIT_ACTIONS, is_hits
from fedgate.envelope import (
    Domain,
    decode_request,
    decode_response,
    verify_envelope,
    verify_response_binding,
)
from fedgate.errors import AgencyFault, AgencyUnavailable, FedgateError, SignatureInvalid
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import KeyId, MemberId
from fedgate.v1 import agency_service_pb2, agency_service_pb2_grpc, envelope_pb2, request_pb2
from gateway.config import RoutingConfig

if TYPE_CHECKING:
    from fedgate.v1.agency_service_pb2_grpc import AgencyServiceAsyncStub

__all__ = ["BreakerState", "CircuitBreaker", "NodeRouter", "check_response"]

_T = TypeVar("_T")
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE})
_NODE_DOWN = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_ANSWER_STATUSES = frozenset(
    {
        request_pb2.RESPONSE_STATUS_OK,
        request_pb2.RESPONSE_STATUS_REFUSED,
        request_pb2.RESPONSE_STATUS_NOT_FOUND,
        request_pb2.RESPONSE_STATUS_EXPIRED,
        request_pb2.RESPONSE_STATUS_INVALID,
    }
)


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker: closed → open (refuse) → half-open (one trial) → closed."""

    def __init__(
        self, *, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        """Whether a call may go out now (claims the one trial when half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_s:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def retry_after_s(self) -> float:
        return max(0.0, self._reset_s - (self._clock() - self._opened_at))

    def success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self.state = BreakerState.CLOSED

    def failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()


class NodeRouter:
    """Calls agency nodes for the gateway. ``endpoint_of(member)`` says where a node listens."""

    def __init__(
        self,
        *,
        credentials: MemberCredentials,
        endpoint_of: Callable[[MemberId], str],
        config: RoutingConfig,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._credentials = channel_credentials(credentials)
        self._interceptors = list(interceptors)
        self._endpoint_of = endpoint_of
        self._config = config
        self._max_bytes = max_message_bytes
        self._clock = clock
        self._channels: dict[
            tuple[MemberId, str], tuple[grpc.aio.Channel, AgencyServiceAsyncStub]
        ] = {}
        """One channel per (member, endpoint), with its stub: a stub made per call cost more
        than the rest of the routing stage."""
        self._breakers: dict[MemberId, CircuitBreaker] = {}

    def breaker(self, target: MemberId) -> CircuitBreaker:
        found = self._breakers.get(target)
        if found is None:
            found = CircuitBreaker(
                failures=self._config.breaker_failures,
                reset_s=self._config.breaker_reset_s,
                clock=self._clock,
            )
            self._breakers[target] = found
        return found

    def _stub(self, target: MemberId) -> AgencyServiceAsyncStub:
        endpoint = self._endpoint_of(target)
        found = self._channels.get((target, endpoint))
        if found is None:
            options: list[tuple[str, str | int]] = [
                *channel_options(target),
                ("grpc.max_receive_message_length", self._max_bytes),
                ("grpc.max_send_message_length", self._max_bytes),
                # A node that comes back is reached again within a second, not minutes.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            channel = grpc.aio.secure_channel(
                endpoint, self._credentials, options=options, interceptors=self._interceptors
            )
            found = channel, agency_service_pb2_grpc.AgencyServiceStub(channel)
            self._channels[(target, endpoint)] = found
        return found[1]

    def timeout_for(self, caller_remaining_s: float | None) -> float:
        """The deadline for a node call: the configured one, never past the caller's."""
        if caller_remaining_s is None:
            return self._config.timeout_s
        return min(self._config.timeout_s, caller_remaining_s)

    async def handle(
        self,
        target: MemberId,
        request: agency_service_pb2.HandleRequest,
        *,
        action: str,
        timeout: float,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agency_service_pb2.HandleResponse:
        """Forward one request; raises ``AgencyUnavailable`` or ``AgencyFault``."""
        attempts = self._config.max_attempts if action in IDEMPOTENT_READS else 1
        stub = self._stub(target)
        return await self._call(
            target,
            lambda t: stub.Handle(request, timeout=t, metadata=tuple(metadata)),
            attempts=attempts,
            timeout=timeout,
        )

    async def get_result(
        self,
        target: MemberId,
        request_id: str,
        *,
        timeout: float,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> agency_service_pb2.GetResultResponse:
        """Ask a node for a queued request's state (a read: retried)."""
        stub = self._stub(target)
        message = agency_service_pb2.GetResultRequest(request_id=request_id)
        return await self._call(
            target,
            lambda t: stub.GetResult(message, timeout=t, metadata=tuple(metadata)),
            attempts=self._config.max_attempts,
            timeout=timeout,
        )

    async def _call(
        self,
        target: MemberId,
        call: Callable[[float], Awaitable[_T]],
        *,
        attempts: int,
        timeout: float,
    ) -> _T:
        deadline = self._clock() + timeout
        breaker = self.breaker(target)
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(attempts):
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            if not breaker.allow():
                raise AgencyUnavailable(
                    f"{target} is failing: its circuit breaker is open "
                    f"(retry in {breaker.retry_after_s():.1f} s)"
                )
            try:
                answer = await call(remaining)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _NODE_DOWN:
                    breaker.success()  # the node is up; it answered with an error
                    raise AgencyFault(
                        f"{target} refused the forwarded request: {exc.code().name}: "
                        f"{exc.details() or ''}"
                    ) from exc
                breaker.failure()
                last = exc
                if exc.code() not in _TRANSIENT or attempt + 1 >= attempts:
                    break
                backoff = self._config.retry_backoff_s * (2**attempt)
                if deadline - self._clock() <= backoff:
                    break
                await asyncio.sleep(backoff)
                continue
            breaker.success()
            return answer
        if last is not None and last.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise AgencyUnavailable(f"{target} did not answer within {timeout:.1f} s") from last
        detail = f": {last.details()}" if last is not None and last.details() else ""
        raise AgencyUnavailable(f"{target} is unreachable{detail}") from last

    async def close(self) -> None:
        channels, self._channels = [channel for channel, _ in self._channels.values()], {}
        for channel in channels:
            await channel.close(None)


def check_response(
    envelope: envelope_pb2.SignedEnvelope,
    *,
    registry: Registry,
    request_body: bytes,
    request_id: str,
    target: MemberId,
    action: str,
    now: datetime,
) -> request_pb2.Response:
    """Stage 10: the decoded response, if the target signed it (key valid ``now``) and it answers
    exactly this request. Raises ``AgencyFault`` naming what is wrong."""
    try:
        response = decode_response(envelope.body)
        member, key = registry.signing_key(KeyId(envelope.key_id), at=now)
        if member.id != target:
            raise SignatureInvalid(f"the answer is signed by {member.id}, not by {target}")
        verify_envelope(envelope, key, Domain.RESPONSE)
        verify_response_binding(
            response, request_body=request_body, request_id=request_id, responder=target
        )
    except FedgateError as exc:
        raise AgencyFault(f"{target} answered wrongly ({exc.reason}): {exc.message}") from exc
    if response.status not in _ANSWER_STATUSES:
        raise AgencyFault(
            f"{target} answered with status "
            f"{request_pb2.ResponseStatus.Name(response.status)}, which is not an answer"
        )
    result = response.WhichOneof("result")
    if action in HIT_ACTIONS and is_hits(decode_request(request_body)):
        _check_hits_answer(response, target=target, action=action)
    elif result is not None and result != RESULT_FIELD.get(action):
        raise AgencyFault(f"{target} answered a {action} request with a {result} result")
    return response


def _check_hits_answer(response: request_pb2.Response, *, target: MemberId, action: str) -> None:
    """A stage-1 answer of a staged disclosure (``fedgate.disclosure``) says hit or no hit
    and nothing else; raises ``AgencyFault`` for one that carries details."""
    result = response.WhichOneof("result")
    asked = f"{target} answered a stage-1 (hit / no-hit) {action} request"
    if result not in (None, "hit"):
        raise AgencyFault(f"{asked} with details ({result}): stage 1 discloses hit / no hit only")
    if response.status != request_pb2.RESPONSE_STATUS_OK:
        if result is not None:
            raise AgencyFault(f"{asked} with a hit result on a refusal")
        return
    if result is None:
        raise AgencyFault(f"{asked} OK without a hit result")
    if response.detail:
        raise AgencyFault(f"{asked} with a detail text: stage 1 discloses hit / no hit only")
