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

The node is built from three parts: ``adapters._answering`` (handling a forwarded request and the
staff queue's upkeep), ``adapters._lifecycle`` (state lock, server, background tasks) and this
module (construction, reports to police, telemetry, ``CoreNode``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import grpc
from google.protobuf.message import Message
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from adapters import telemetry
from adapters._answering import AgencyBackend
from adapters._lifecycle import Background, NodeLifecycle
from adapters._sqlite import utc_now
from adapters.config import NodeConfig
from adapters.reports import ReportSender
from fedgate.client import GATEWAY_ID, Submitted
from fedgate.envelope import Signer
from fedgate.errors import InvalidArgument, RegistryError
from fedgate.logs import masked_span
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from fedgate.v1 import common_pb2

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


class AgencyNode(NodeLifecycle):
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
        meter_provider: MeterProvider | None = None,
        background: Sequence[Background] = (),
        gateway_id: MemberId = GATEWAY_ID,
        tick_s: float = 1.0,
    ) -> None:
        if credentials.member_id != config.member_id:
            raise InvalidArgument(
                f"credentials are {credentials.member_id}'s, the config is for {config.member_id}"
            )
        self.config = config
        self._trust = TrustHolder(registry)
        self._registry_stamp = None
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
        self.tracer_provider = tracer_provider
        self.metrics = telemetry.NodeMetrics(meter_provider)
        self._tracer: Tracer = (
            tracer_provider.get_tracer("fedgate.adapters")
            if tracer_provider is not None
            else telemetry.tracer
        )
        self._background = tuple(background)
        self._tick_s = tick_s
        self._store = None
        self._server = None
        self._health = None
        self._tasks = []
        self._lock_fd = None
        self._locks = {}
        self._reports = None
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

    async def __aenter__(self) -> AgencyNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ reports to police

    def report_sender(self) -> ReportSender:
        """The node's connection to the gateway for agency reports (made on first use)."""
        if self._reports is None:
            endpoint = (
                self.config.gateway_endpoint or self.registry.member(self.gateway_id).endpoint
            )
            self._reports = ReportSender(
                credentials=self.credentials,
                registry=self._trust,
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

    # ------------------------------------------------------------------ telemetry

    def span(self, name: str, context: Context) -> Any:
        """The node's span of one call, under the gRPC instrumentation's server span (which
        continues the gateway's trace: ``fedgate.otel.server_interceptors``), its exceptions
        recorded with identifiers masked."""
        return masked_span(self._tracer, name, attributes={telemetry.ATTR_MEMBER: self.member_id})


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
