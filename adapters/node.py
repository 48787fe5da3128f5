"""The agency node runtime shared by every agency: ``AgencyService`` for the gateway,
``StaffService`` for the agency's own staff, health and reflection, on one mTLS port.

An ``AgencyBackend`` (bank, carrier) says which actions it serves and answers one request;
the runtime does everything around it.

Contract:

- ``AgencyService`` MUST refuse every caller but the gateway presenting its registered
  certificate, and MUST verify the forwarded envelope again: signature by a registry key valid
  at the request's issued-at, signer = ``requesting_agency``, ``target_agency`` = this member.
- A request id MUST be executed at most once: concurrent and repeated deliveries wait for the
  first and get the same signed answer bytes (or the same queue acknowledgement); the answer is
  durable (``adapters.queue``) before it is returned. The same id with another body is refused
  (``REPLAYED``).
- Every answer MUST be signed with the agency's key and bound to the request by its hash;
  backend refusals (``NotFound``, ``RuleViolated``, ``InvalidArgument``) are signed answers
  (``NOT_FOUND``, ``REFUSED``, ``INVALID``), not gRPC errors.
- Manual actions are queued for staff with a deadline (the request's, else the configured
  default) and a reminder; an item not answered by its deadline gets a signed ``EXPIRED`` answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Tracer, TracerProvider

from adapters import telemetry
from adapters._sqlite import utc_now
from adapters.agency_service import AgencyServicer
from adapters.answers import bind_response, outcome_of_error, sign_response
from adapters.config import ActionMode, NodeConfig
from adapters.queue import ANSWERED, Entry, RequestStore
from adapters.reports import ReportSender
from adapters.staff import StaffServicer
from fedgate.actions import action_of
from fedgate.client import GATEWAY_ID, Submitted
from fedgate.envelope import Domain, Signer, decode_request, request_hash, verify_envelope
from fedgate.errors import (
    AgencyUnavailable,
    FedgateError,
    InvalidArgument,
    NotFound,
    PeerMismatch,
    PermissionRefused,
    RegistryError,
    Replayed,
    RuleViolated,
)
from fedgate.pki import FederationLayout
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.types import KeyId, MemberId, RequestId
from fedgate.v1 import (
    agency_service_pb2,
    agency_service_pb2_grpc,
    common_pb2,
    envelope_pb2,
    request_pb2,
    staff_service_pb2,
    staff_service_pb2_grpc,
)

__all__ = [
    "GATEWAY_ID",
    "AgencyBackend",
    "AgencyNode",
    "CoreNode",
    "open_reference_backend",
    "utc_now",
]

_T = TypeVar("_T")
_C = TypeVar("_C")


def open_reference_backend(config: NodeConfig, factory: Callable[[Path], _T]) -> _T:
    """The reference backend at ``backend.path``, built by ``factory``; ``InvalidArgument``
    naming the option when the path is missing or the database unusable."""
    if config.backend_path is None:
        raise InvalidArgument("backend.path is required for the reference backend")
    try:
        return factory(config.backend_path)
    except ValueError as exc:
        raise InvalidArgument(f"backend.path: {exc}") from exc


Context = grpc.aio.ServicerContext[Any, Any]
Background = Callable[["AgencyNode"], Coroutine[Any, Any, None]]


class AgencyBackend(Protocol):
    """One agency kind's answers. ``answer`` blocks (it runs in a worker thread) and returns a
    ``Response`` with ``status`` and the result set; the runtime binds and signs it. It raises
    ``NotFound``, ``RuleViolated`` or ``InvalidArgument`` for answers the agency gives as
    refusals, ``AgencyUnavailable`` when it cannot answer now."""

    @property
    def actions(self) -> frozenset[str]: ...

    def answer(self, request: request_pb2.Request, *, now: datetime) -> request_pb2.Response: ...


class AgencyNode:
    """An agency node; serving between ``start`` and ``stop`` (a stopped node is not started
    again: build a new one on the same state directory). Build with ``from_config``.

    Raises ``InvalidArgument`` when the credentials are another member's and
    ``RegistryError`` when the signing key is not this member's registered key now.
    """

    def __init__(
        self,
        *,
        config: NodeConfig,
        registry: Registry,
        credentials: MemberCredentials,
        backend: AgencyBackend,
        clock: Callable[[], datetime] = utc_now,
        tracer_provider: TracerProvider | None = None,
        background: Sequence[Background] = (),
        gateway_id: MemberId = GATEWAY_ID,
        tick_s: float = 1.0,
    ) -> None:
        if credentials.member_id != config.member_id:
            raise InvalidArgument(
                f"credentials are {credentials.member_id}'s, the config is for {config.member_id}"
            )
        self.config = config
        self._registry = registry
        self._registry_stamp: tuple[int, int, int] | None = None
        self.credentials = credentials
        self.backend = backend
        self.gateway_id = gateway_id
        self._clock = clock
        self._signer = Signer.from_key(credentials.signing_key)
        owner, _ = registry.signing_key(self._signer.key_id, at=clock())
        if owner.id != config.member_id:
            raise RegistryError(
                f"the signing key of {config.member_id} is registered to {owner.id}"
            )
        self._tracer: Tracer = (
            tracer_provider.get_tracer("fedgate.adapters")
            if tracer_provider is not None
            else telemetry.tracer
        )
        self._background = tuple(background)
        self._tick_s = tick_s
        self._store: RequestStore | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock_fd: int | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._reports: ReportSender | None = None
        self.port = 0

    @classmethod
    def from_config(cls, config: NodeConfig, backend: AgencyBackend, **kwargs: Any) -> AgencyNode:
        """Load the registry and this member's credentials from the federation directory."""
        registry = Registry.load_dir(config.federation_dir)
        registry.member(config.member_id)
        credentials = MemberCredentials.load(config.federation_dir, config.member_id)
        return cls(
            config=config, registry=registry, credentials=credentials, backend=backend, **kwargs
        )

    # ------------------------------------------------------------------ QueueHost

    @property
    def member_id(self) -> MemberId:
        return self.config.member_id

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def staff(self) -> frozenset[str]:
        return frozenset(self.config.staff)

    @property
    def store(self) -> RequestStore:
        if self._store is None:
            raise AgencyUnavailable(f"the node of {self.member_id} is not started")
        return self._store

    @property
    def signer(self) -> Signer:
        return self._signer

    def now(self) -> datetime:
        return self._clock()

    def sign(self, response: request_pb2.Response) -> bytes:
        return sign_response(response, self._signer)

    async def run_blocking(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.to_thread(fn)

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """Where to reach the node on loopback (the bound port, also when listening on 0)."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Open the state, bind the port and serve. Raises ``AgencyUnavailable`` if another
        process holds the state directory or the address cannot be bound."""
        state = Path(self.config.state_dir)
        self._lock_state(state)
        self.reload_registry()  # remember the file the registry was loaded from
        try:
            self._store = RequestStore.in_state_dir(state)
            await self._serve()
        except BaseException:
            await self.stop(grace=None)
            raise
        self._tasks = [asyncio.create_task(self._housekeeping())]
        self._tasks += [asyncio.create_task(job(self)) for job in self._background]

    async def _serve(self) -> None:
        server = grpc.aio.server()
        agency_service_pb2_grpc.add_AgencyServiceServicer_to_server(AgencyServicer(self), server)
        staff_service_pb2_grpc.add_StaffServiceServicer_to_server(StaffServicer(self), server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (
            agency_service_pb2.DESCRIPTOR.services_by_name["AgencyService"].full_name,
            staff_service_pb2.DESCRIPTOR.services_by_name["StaffService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        listen = self.config.listen or self._registry.member(self.member_id).endpoint
        try:
            self.port = server.add_secure_port(listen, server_credentials(self.credentials))
        except RuntimeError as exc:
            raise AgencyUnavailable(f"cannot listen on {listen}: {exc}") from exc
        await server.start()
        self._server = server
        for name in ("", *names[:2]):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        host = listen.rsplit(":", 1)[0]
        telemetry.log_event("node serving", member=self.member_id, endpoint=f"{host}:{self.port}")

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving and background work; close the state."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._reports is not None:
            await self._reports.close()
            self._reports = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def reload_registry(self) -> bool:
        """Re-read ``registry.json`` if it changed (so revocations apply without a restart);
        a registry that does not verify is refused and the current one kept. Returns whether
        a new registry was taken."""
        path = FederationLayout(Path(self.config.federation_dir)).registry
        try:
            stat = path.stat()
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._registry_stamp is None:
            self._registry_stamp = stamp
        if stamp == self._registry_stamp:
            return False
        self._registry_stamp = stamp
        try:
            registry = Registry.load_dir(Path(self.config.federation_dir))
        except FedgateError as exc:
            telemetry.log_event("new registry refused", logging.ERROR, error=exc.message)
            return False
        if registry.serial < self._registry.serial:
            # An older signed registry could bring back a revoked member or key.
            telemetry.log_event(
                "older registry refused",
                logging.ERROR,
                serial=registry.serial,
                current=self._registry.serial,
            )
            return False
        self._registry = registry
        telemetry.log_event("registry reloaded", serial=self._registry.serial)
        return True

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> AgencyNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _lock_state(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise AgencyUnavailable(
                f"another node process is using the state directory {state}"
            ) from exc
        self._lock_fd = fd

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self.run_blocking(self.reload_registry)
                await self.expire_due()
                await self.send_reminders()
            except FedgateError as exc:
                telemetry.log_event("housekeeping failed", logging.ERROR, error=exc.message)
            await asyncio.sleep(self._tick_s)

    # ------------------------------------------------------------------ AgencyService

    async def handle(
        self, envelope: envelope_pb2.SignedEnvelope, *, log_origin: str = "", leaf_index: int = 0
    ) -> agency_service_pb2.HandleResponse:
        """Answer or queue one forwarded request (see the module contract). Raises
        ``FedgateError`` when the request is not acceptable or the backend is unavailable."""
        request = self.verify_request(envelope)
        action = action_of(request)
        rid = RequestId(request.request_id)
        rhash = request_hash(envelope.body)
        async with self._exclusive(rid):
            existing = await self.run_blocking(lambda: self.store.get(rid))
            if existing is not None:
                if existing.request_hash != rhash:
                    raise Replayed(f"request id {rid} was already used for another request")
                return _handle_response(existing)
            received = self.now()
            base = Entry(
                request_id=rid,
                request_hash=rhash,
                envelope=envelope.SerializeToString(),
                action=action,
                manual=False,
                state=ANSWERED,
                received_at=received,
                deadline=None,
                remind_at=None,
                claimed_by="",
                answered_by="",
                answered_at=None,
                response=None,
                log_origin=log_origin,
                leaf_index=leaf_index,
            )
            if action in self.backend.actions and self.config.mode_of(action) is ActionMode.MANUAL:
                deadline = self._deadline(request, received)
                remind = max(received, deadline - self.config.reminder)
                entry = await self.run_blocking(
                    lambda: self.store.enqueue(
                        replace(base, manual=True, deadline=deadline, remind_at=remind)
                    )
                )
                return _handle_response(entry)
            response = await self.run_blocking(lambda: self._automatic(request, action, envelope))
            answered_at = self.now()
            signed = self.sign(
                bind_response(
                    response,
                    request_id=rid,
                    request_body=envelope.body,
                    responder=self.member_id,
                    answered_at=answered_at,
                )
            )
            entry = await self.run_blocking(
                lambda: self.store.record_answer(
                    replace(base, answered_at=answered_at, response=signed)
                )
            )
            return _handle_response(entry)

    def _automatic(
        self, request: request_pb2.Request, action: str, envelope: envelope_pb2.SignedEnvelope
    ) -> request_pb2.Response:
        if action not in self.backend.actions:
            return request_pb2.Response(
                status=request_pb2.RESPONSE_STATUS_INVALID,
                detail=f"{self.member_id} does not serve the action {action}",
            )
        try:
            return self.backend.answer(request, now=self.now())
        except (NotFound, RuleViolated, InvalidArgument) as exc:
            status, detail = outcome_of_error(exc)
            return request_pb2.Response(status=status, detail=detail)

    def _deadline(self, request: request_pb2.Request, received: datetime) -> datetime:
        if request.HasField("answer_deadline"):
            return request.answer_deadline.ToDatetime(tzinfo=UTC)
        return received + self.config.queue_deadline

    def verify_request(self, envelope: envelope_pb2.SignedEnvelope) -> request_pb2.Request:
        """Decode and verify a forwarded envelope; raises the ``FedgateError`` naming what fails."""
        request = decode_request(envelope.body)
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        if not request.HasField("issued_at"):
            raise InvalidArgument("issued_at is missing")
        signer, key = self._registry.signing_key(
            KeyId(envelope.key_id), at=request.issued_at.ToDatetime(tzinfo=UTC)
        )
        verify_envelope(envelope, key, Domain.REQUEST)
        if signer.id != request.requesting_agency:
            raise PeerMismatch(
                f"the request names {request.requesting_agency!r} but is signed by {signer.id}"
            )
        if request.target_agency != self.member_id:
            raise PermissionRefused(
                f"the request is for {request.target_agency!r}; this node is {self.member_id}"
            )
        return request

    async def get_result(self, request_id: str) -> agency_service_pb2.GetResultResponse:
        """The state and answer of a request; ``NotFound`` if this node never accepted it."""
        await self.expire_due()
        entry = await self.run_blocking(lambda: self.store.get(request_id))
        if entry is None:
            raise NotFound(f"{self.member_id} has no request {request_id}")
        reply = agency_service_pb2.GetResultResponse(state=entry.state)  # type: ignore[arg-type]
        if entry.deadline is not None:
            reply.deadline.FromDatetime(entry.deadline)
        signed = entry.signed_response
        if signed is not None:
            reply.response.CopyFrom(signed)
        return reply

    # ------------------------------------------------------------------ reports to police

    def report_sender(self) -> ReportSender:
        """The node's connection to the gateway for agency reports (made on first use)."""
        if self._reports is None:
            endpoint = (
                self.config.gateway_endpoint or self._registry.member(self.gateway_id).endpoint
            )
            self._reports = ReportSender(
                credentials=self.credentials,
                registry=self._registry,
                gateway_endpoint=endpoint,
                gateway_id=self.gateway_id,
            )
        return self._reports

    async def send_report(
        self,
        *,
        target: MemberId,
        report: Message,
        case: common_pb2.CaseInfo,
        reference: str,
        **options: Any,
    ) -> Submitted:
        """Send a report (case report, abnormal account opening, case-linked account, abnormal
        event, early warning) to a police member through the gateway, signed by this agency.
        ``options`` are those of ``ReportSender.send``. Raises ``FedgateError``."""
        return await self.report_sender().send(
            target=target, report=report, case=case, reference=reference, **options
        )

    # ------------------------------------------------------------------ queue upkeep

    async def expire_due(self) -> tuple[Entry, ...]:
        """Answer EXPIRED, signed, for every queued item past its deadline (by the clock)."""
        now = self.now()

        def sign(entry: Entry) -> bytes:
            body = entry.request_envelope.body
            assert entry.deadline is not None
            expired = request_pb2.Response(
                status=request_pb2.RESPONSE_STATUS_EXPIRED,
                detail=f"{self.member_id}'s staff did not answer before the deadline "
                f"{entry.deadline.isoformat(timespec='seconds')}",
            )
            return self.sign(
                bind_response(
                    expired,
                    request_id=entry.request_id,
                    request_body=body,
                    responder=self.member_id,
                    answered_at=now,
                )
            )

        expired = await self.run_blocking(lambda: self.store.expire_due(now, sign))
        for entry in expired:
            telemetry.log_event(
                "queued request expired",
                member=self.member_id,
                request_id=entry.request_id,
                action=entry.action,
            )
        return expired

    async def send_reminders(self) -> tuple[Entry, ...]:
        """Log a reminder, once, for each open item whose reminder time has come."""
        due = await self.run_blocking(lambda: self.store.due_reminders(self.now()))
        for entry in due:
            assert entry.deadline is not None
            telemetry.log_event(
                "queued request due soon",
                logging.WARNING,
                member=self.member_id,
                request_id=entry.request_id,
                action=entry.action,
                claimed_by=entry.claimed_by,
                deadline=entry.deadline.isoformat(timespec="seconds"),
            )
        return due

    @contextlib.asynccontextmanager
    async def _exclusive(self, request_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(request_id, (asyncio.Lock(), 0))
        self._locks[request_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[request_id]
            if users == 1:
                del self._locks[request_id]
            else:
                self._locks[request_id] = (lock, users - 1)

    # ------------------------------------------------------------------ telemetry

    def span(self, name: str, context: Context) -> Any:
        """A server span continuing the W3C trace context in the call's metadata."""
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return self._tracer.start_as_current_span(
            name,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={telemetry.ATTR_MEMBER: self.member_id},
        )


class CoreNode(AgencyNode, Generic[_C]):
    """An agency node answering from one backend system, ``core`` (core banking, a subscriber
    system). ``open`` builds it from its configuration; a core it opened itself (the reference
    backend) is the node's and is closed by ``stop``. Subclasses pass ``backend`` built on
    ``core`` and say how to open their reference backend."""

    def __init__(self, *, core: _C, owns_core: bool = False, **kwargs: Any) -> None:
        self.core = core
        self._owns_core = owns_core
        super().__init__(**kwargs)

    @classmethod
    def reference_backend(
        cls, path: Path, *, config: NodeConfig, clock: Callable[[], datetime]
    ) -> _C:
        """The reference backend on the database at ``path``; ``ValueError`` if unusable."""
        raise NotImplementedError

    @classmethod
    def open(
        cls,
        config: NodeConfig,
        *,
        core: _C | None = None,
        clock: Callable[[], datetime] = utc_now,
        **kwargs: Any,
    ) -> Self:
        """A node from its configuration; opens the reference backend at ``backend.path``
        unless ``core`` is given. Raises ``InvalidArgument`` naming the option."""
        registry = Registry.load_dir(config.federation_dir)
        credentials = MemberCredentials.load(config.federation_dir, config.member_id)
        owns = core is None
        if core is None:
            core = open_reference_backend(
                config, lambda path: cls.reference_backend(path, config=config, clock=clock)
            )
        return cls(
            config=config,
            registry=registry,
            credentials=credentials,
            core=core,
            clock=clock,
            owns_core=owns,
            **kwargs,
        )

    async def stop(self, grace: float | None = 1.0) -> None:
        await super().stop(grace)
        close = getattr(self.core, "close", None)
        if self._owns_core and callable(close):
            close()


def _handle_response(entry: Entry) -> agency_service_pb2.HandleResponse:
    signed = entry.signed_response
    if signed is not None:
        return agency_service_pb2.HandleResponse(response=signed)
    queued = agency_service_pb2.Queued(request_id=entry.request_id)
    assert entry.deadline is not None
    queued.deadline.FromDatetime(entry.deadline)
    return agency_service_pb2.HandleResponse(queued=queued)
