"""The running half of an agency node: the state-directory lock, the gRPC server
(``AgencyService``, ``StaffService``, health, reflection) on one mTLS port, the background
tasks (registry reload, queue expiry and reminders, the agency's own jobs) and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider

from adapters import telemetry
from adapters._answering import AnsweringNode
from adapters.agency_service import AgencyServicer
from adapters.queue import RequestStore
from adapters.reports import ReportSender
from adapters.staff import StaffServicer
from fedgate.errors import AgencyUnavailable, FedgateError
from fedgate.otel import server_interceptors
from fedgate.pki import FederationLayout
from fedgate.registry import Registry
from fedgate.status import ErrorInterceptor
from fedgate.tls import MemberCredentials, server_credentials
from fedgate.v1 import (
    agency_service_pb2,
    agency_service_pb2_grpc,
    staff_service_pb2,
    staff_service_pb2_grpc,
)

if TYPE_CHECKING:
    from adapters.node import AgencyNode

__all__ = ["Background", "NodeLifecycle"]

Background = Callable[["AgencyNode"], Coroutine[Any, Any, None]]


class NodeLifecycle(AnsweringNode):
    """Start, serve and stop; a base of ``adapters.node.AgencyNode`` only, which sets every
    attribute declared here."""

    credentials: MemberCredentials
    tracer_provider: TracerProvider | None
    port: int
    _registry_stamp: tuple[int, int, int] | None
    _background: tuple[Background, ...]
    _tick_s: float
    _server: grpc.aio.Server | None
    _health: health_aio.HealthServicer | None
    _tasks: list[asyncio.Task[None]]
    _lock_fd: int | None
    _reports: ReportSender | None

    @property
    def _node(self) -> AgencyNode:
        # Every NodeLifecycle is an AgencyNode (see the class docstring); the servicer and the
        # background jobs take the whole node.
        return cast("AgencyNode", self)

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
        self._tasks += [asyncio.create_task(job(self._node)) for job in self._background]

    async def _serve(self) -> None:
        server = grpc.aio.server(
            interceptors=[*server_interceptors(self.tracer_provider), ErrorInterceptor()]
        )
        agency_service_pb2_grpc.add_AgencyServiceServicer_to_server(
            AgencyServicer(self._node), server
        )
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
        listen = self.config.listen or self.registry.member(self.member_id).endpoint
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
        current = self.registry.serial
        # One swap for every reader (re-verification, the report sender, the staff service);
        # an older signed registry could bring back a revoked member or key, so it is refused.
        if not self._trust.swap(registry):
            telemetry.log_event(
                "older registry refused", logging.ERROR, serial=registry.serial, current=current
            )
            return False
        telemetry.log_event("registry reloaded", serial=registry.serial)
        return True

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

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
