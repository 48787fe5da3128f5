"""The gateway process: builds the pipeline from its configuration and serves it over mTLS.

One gRPC (asyncio) server on one port serves ``GatewayService``, ``AlertService``,
``grpc.health.v1.Health`` and server reflection, with client certificates from the federation
CA required (``fedgate.tls.server_credentials``). ``Gateway.start`` returns a running gateway;
``stop`` marks it NOT_SERVING, refuses new calls and drains the calls in flight for up to the
grace period before closing the audit log and the state databases.

The member registry is re-read when ``registry.json`` changes (every
``federation.reload_interval_s``), so a revocation takes effect without a restart.

The audit log is one shard (``audit.origin``) in SQLite (``audit.store = "sqlite"``, the
default) or in a PostgreSQL database that several gateway instances share, each with its own
origin (``audit.store = "postgres"``). Either way the replay cache is rebuilt from that shard
before the gateway serves.

With ``console.listen`` set, the auditor web console (``gateway.console``) is served in the same
event loop, over the same audit log (either store); its logins, reveals and exports are entries
of that log.

    python -m gateway.server --config gateway.toml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fedgate.checkpoint import CosignatureVerifier
from fedgate.envelope import Signer
from fedgate.errors import FedgateError
from fedgate.keys import public_key_from_raw
from fedgate.note import NoteSigner
from fedgate.pki import FederationLayout
from fedgate.registry import Registry
from fedgate.risklist import risklist_origin
from fedgate.tls import MemberCredentials, channel_credentials, channel_options, server_credentials
from fedgate.trust import TrustHolder
from fedgate.types import MemberId
from fedgate.v1 import (
    alert_service_pb2,
    audit_service_pb2,
    audit_service_pb2_grpc,
    event_service_pb2,
    event_service_pb2_grpc,
    risklist_pb2_grpc,
)
from fedgate.witness import GrpcWitnessClient
from gateway.alerts import AlertHub, AlertServicer
from gateway.audit.insights import PgShard
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase, open_pg_store
from gateway.audit.service import AuditServicer
from gateway.audit.sqlite_store import SqliteDatabase, open_sqlite_store
from gateway.audit.store import AuditStore
from gateway.config import ConfigError, GatewayConfig
from gateway.console import Countermeasures, RunningAuditorConsole, start_auditor_console
from gateway.events import EventServicer
from gateway.pipeline import Pipeline
from gateway.policy import ReloadingDecider, load_default_decider
from gateway.quotas import QuotaConfig, Quotas
from gateway.replay import (
    MemoryReplayCache,
    PgReplayCache,
    Rebuilt,
    ReplayCache,
    ReplayStore,
    rebuild_from_audit,
)
from gateway.risklist import SERVICE_NAME as RISKLIST_SERVICE_NAME
from gateway.risklist import CentreStats, RiskListLog, RiskListServicer
from gateway.routing import NodeRouter
from gateway.rules import BusinessRules
from gateway.service import SERVICE_NAME, GatewayServicer
from gateway.telemetry import GatewayTelemetry, PrometheusEndpoint, configure_logging
from gateway.tickets import Tickets, TicketStore

__all__ = ["SERVICE_NAMES", "Gateway", "main", "run_gateway"]

_log = logging.getLogger(__name__)

ALERT_SERVICE_NAME = alert_service_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name
AUDIT_SERVICE_NAME = audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
EVENT_SERVICE_NAME = event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
SERVICE_NAMES = (
    SERVICE_NAME,
    ALERT_SERVICE_NAME,
    AUDIT_SERVICE_NAME,
    EVENT_SERVICE_NAME,
    RISKLIST_SERVICE_NAME,
)
"""The fedgate services a gateway serves (besides health and reflection)."""


def _registry_stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(slots=True)
class _Parts:
    audit: AuditLog
    replay: ReplayStore
    rules: BusinessRules
    tickets: Tickets
    alerts: AlertHub
    router: NodeRouter
    risklist: RiskListLog
    stats: CentreStats
    witness_channels: tuple[grpc.aio.Channel, ...] = ()


def _witness_clients(
    config: GatewayConfig,
    registry: Registry,
    credentials: MemberCredentials,
    endpoints: dict[str, str],
) -> tuple[tuple[grpc.aio.Channel, ...], list[GrpcWitnessClient]]:
    """An mTLS channel and a cosignature-checking client for each configured witness."""
    channels: list[grpc.aio.Channel] = []
    clients: list[GrpcWitnessClient] = []
    for name in config.audit.witnesses:
        witness = registry.member(MemberId(name))
        if "witness" not in witness.roles:
            raise ConfigError(f"audit.witnesses: {name} does not hold the witness role")
        key = max(witness.signing_keys, key=lambda k: k.not_before)
        channel = grpc.aio.secure_channel(
            endpoints.get(name) or witness.endpoint,
            channel_credentials(credentials),
            options=channel_options(witness.id),
        )
        channels.append(channel)
        verifier = CosignatureVerifier(name=name, public_key=public_key_from_raw(key.public_key))
        clients.append(GrpcWitnessClient(channel, verifier=verifier))
    return tuple(channels), clients


async def _open_audit_store(config: GatewayConfig) -> AuditStore:
    """The writer store of this instance's shard, as configured; raises ``AuditUnavailable``."""
    audit = config.audit
    if audit.store == "postgres":
        state_path = config.audit_state_path
        if state_path is None:  # the config always names one for PostgreSQL
            raise ConfigError('audit.state_path is required with audit.store = "postgres"')
        return await open_pg_store(
            audit.dsn, origin=audit.origin, schema=audit.schema, state_path=state_path
        )
    return await open_sqlite_store(
        config.audit_path, origin=audit.origin, state_path=config.audit_state_path
    )


def _console_source(config: GatewayConfig) -> Path | PgShard:
    """Where the auditor console reads this instance's shard: the SQLite file or PostgreSQL."""
    audit = config.audit
    if audit.store == "postgres":
        return PgShard(dsn=audit.dsn, origin=audit.origin, schema=audit.schema)
    return config.audit_path


def _rebuild_replay(config: GatewayConfig, replay: ReplayStore) -> Rebuilt:
    """Rebuild ``replay`` from the configured shard through a reader of its own (blocking)."""
    audit = config.audit
    source: SqliteDatabase | PgDatabase
    if audit.store == "postgres":
        source = PgDatabase(audit.dsn, origin=audit.origin, schema=audit.schema, writer=False)
    else:
        source = SqliteDatabase(config.audit_path, origin=audit.origin, writer=False)
    try:
        return rebuild_from_audit(
            replay,
            source,
            origin=audit.origin,
            skew=timedelta(seconds=config.pipeline.clock_skew_s),
        )
    finally:
        source.close()


async def _open_replay_cache(config: GatewayConfig, audit: AuditLog) -> ReplayStore:
    """The replay cache, rebuilt from the audit log's window before anything is checked.

    Always rebuilt, whatever ``replay_synchronous``: with ``"normal"`` a power loss may have
    taken the last commits (``gateway.replay`` argues why the log has them all). Closes the
    audit log and the cache if that fails: the gateway MUST NOT serve without the rebuild.
    """
    pipeline = config.pipeline
    window = timedelta(seconds=pipeline.replay_window_s)
    replay: ReplayStore
    try:
        if pipeline.replay_store == "memory":
            replay = MemoryReplayCache(window=window)
        elif pipeline.replay_store == "postgres":
            dsn, schema = config.audit.dsn, config.replay_schema
            replay = await asyncio.to_thread(
                lambda: PgReplayCache(dsn=dsn, schema=schema, window=window)
            )
        else:
            replay = ReplayCache.open(
                config.replay_path,
                window=window,
                synchronous="FULL" if pipeline.replay_synchronous == "full" else "NORMAL",
            )
    except BaseException:
        await audit.close()
        raise
    try:
        rebuilt = await asyncio.to_thread(_rebuild_replay, config, replay)
    except BaseException:
        replay.close()
        await audit.close()
        raise
    _log.info(
        "replay cache rebuilt from the audit log: %d requests from %d request legs in %.1f ms",
        rebuilt.remembered,
        rebuilt.legs,
        rebuilt.seconds * 1000,
        extra={
            "fields": {
                "requests": rebuilt.remembered,
                "request_legs": rebuilt.legs,
                "ms": round(rebuilt.seconds * 1000, 1),
            }
        },
    )
    return replay


class Gateway:
    """A running gateway. Build with ``await Gateway.start(config)``; stop with ``stop()``."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        server: grpc.aio.Server,
        port: int,
        pipeline: Pipeline,
        parts: _Parts,
        health: health_aio.HealthServicer,
        decider: ReloadingDecider,
        prometheus: PrometheusEndpoint | None,
        prometheus_port: int | None,
    ) -> None:
        self.config = config
        self.port = port
        self.pipeline = pipeline
        self.prometheus_port = prometheus_port
        self._server = server
        self._parts = parts
        self._health = health
        self._decider = decider
        self._prometheus = prometheus
        self._reload_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.console: RunningAuditorConsole | None = None

    @property
    def console_url(self) -> str | None:
        """The auditor console's URL, when it is served."""
        return self.console.url if self.console is not None else None

    @property
    def audit(self) -> AuditLog:
        return self._parts.audit

    @property
    def risklist(self) -> RiskListLog:
        return self._parts.risklist

    @property
    def endpoint(self) -> str:
        host = self.config.server.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(
        cls,
        config: GatewayConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        audit_store: AuditStore | None = None,
    ) -> Gateway:
        """Open every store, build the pipeline and start serving on ``server.listen``.

        ``audit_store`` replaces the store named by ``[audit]`` (tests inject failing stores
        through this seam); it MUST keep the shard the config names (the SQLite file at
        ``config.audit_path``, or ``audit.origin`` at ``audit.dsn``), which the replay cache is
        rebuilt from before the gateway serves. Raises ``FedgateError`` (``ConfigError``,
        ``RegistryError``, ``AuditUnavailable``) when something cannot be opened.
        """
        config.validate()
        fed = config.federation
        member_id = MemberId(fed.member_id)
        registry = Registry.load_dir(fed.dir)
        credentials = MemberCredentials.load(fed.dir, member_id)
        registry.member(member_id)
        signer = Signer.from_key(credentials.signing_key)
        prometheus: PrometheusEndpoint | None = None
        if config.telemetry.prometheus_listen and meter_provider is None:
            reader = InMemoryMetricReader()
            meter_provider = MeterProvider(metric_readers=[reader])
            host, _, port_text = config.telemetry.prometheus_listen.rpartition(":")
            prometheus = PrometheusEndpoint(reader=reader, host=host, port=int(port_text))
        telemetry = GatewayTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        state = config.pipeline.state_dir
        state.mkdir(parents=True, exist_ok=True)
        members = {m.id: m.kind.value for m in registry.members()}
        decider = load_default_decider(
            config.policy.dir,
            members=members,
            check_interval_ms=config.policy.reload_interval_ms,
        )
        store = audit_store or await _open_audit_store(config)
        endpoints = dict(config.routing.endpoints)
        witness_channels, witnesses = _witness_clients(config, registry, credentials, endpoints)
        audit = await AuditLog.open(
            store=store,
            origin=config.audit.origin,
            signer=NoteSigner(name=config.audit.origin, private_key=credentials.signing_key),
            witnesses=witnesses,
            state_path=config.audit_state_path,
        )
        replay = await _open_replay_cache(config, audit)
        rules = BusinessRules.open(config.rules_path)
        quotas = Quotas(QuotaConfig.from_mapping(config.quotas))
        trust = TrustHolder(registry)

        def endpoint_of(target: MemberId) -> str:
            return endpoints.get(target) or trust.registry.member(target).endpoint

        router = NodeRouter(
            credentials=credentials,
            endpoint_of=endpoint_of,
            config=config.routing,
            max_message_bytes=config.server.max_receive_bytes,
        )
        tickets = Tickets(
            store=TicketStore.open(config.tickets_path),
            router=router,
            poll_interval_s=config.tickets.poll_interval_s,
            node_timeout_s=config.routing.timeout_s,
        )
        alerts = AlertHub.open(config.alerts_path, keep=config.alerts.keep)
        list_origin = risklist_origin(config.audit.origin)
        risklist = RiskListLog.open(
            config.risklist_path,
            origin=list_origin,
            signer=NoteSigner(name=list_origin, private_key=credentials.signing_key),
            witnesses=witnesses,
        )
        risklist.start()
        pipeline = Pipeline(
            trust=trust,
            decider=decider,
            replay=replay,
            rules=rules,
            quotas=quotas,
            audit=audit,
            router=router,
            tickets=tickets,
            alerts=alerts,
            signer=signer,
            gateway_id=member_id,
            origin=config.audit.origin,
            clock_skew=timedelta(seconds=config.pipeline.clock_skew_s),
            telemetry=telemetry,
            keep_response_bodies=config.audit.keep_response_bodies,
            risklist=risklist,
        )

        def member_kind(member: str) -> str:
            found = pipeline.registry.find(member)
            return found.kind.value if found is not None else ""

        stats = CentreStats(state / "countermeasure-stats.sqlite", member_kind=member_kind)
        parts = _Parts(
            audit, replay, rules, tickets, alerts, router, risklist, stats, witness_channels
        )
        limit = config.server.max_receive_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                GatewayServicer(pipeline=pipeline, tickets=tickets).handler(),
                AlertServicer(hub=alerts, authenticate=pipeline.authenticate).handler(),
            )
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(audit, trust, lambda: decider), server
        )
        event_service_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(
                log=audit,
                registry=trust,
                skew=timedelta(seconds=config.pipeline.clock_skew_s),
            ),
            server,
        )
        risklist_pb2_grpc.add_RiskListServiceServicer_to_server(
            RiskListServicer(log=risklist, authenticate=pipeline.authenticate), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        port = server.add_secure_port(config.server.listen, server_credentials(credentials))
        if port == 0:
            raise ConfigError(f"server.listen {config.server.listen} could not be bound")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        prometheus_port = await prometheus.start() if prometheus is not None else None
        gateway = cls(
            config=config,
            server=server,
            port=port,
            pipeline=pipeline,
            parts=parts,
            health=health,
            decider=decider,
            prometheus=prometheus,
            prometheus_port=prometheus_port,
        )
        if fed.reload_interval_s > 0:
            gateway._reload_task = asyncio.create_task(gateway._watch_registry())
        if config.console.listen:
            host, _, console_port = config.console.listen.rpartition(":")
            try:
                gateway.console = await start_auditor_console(
                    log=audit,
                    audit_db=_console_source(config),
                    registry=trust,
                    state_dir=state,
                    users_dir=config.console_users_dir,
                    host=host.strip("[]"),
                    port=int(console_port),
                    member_id=member_id,
                    secure_cookies=config.console.secure_cookies,
                    countermeasures=Countermeasures(
                        stats=parts.stats, audit=audit, risklist=risklist
                    ),
                )
            except BaseException:
                await gateway.stop(0)
                raise
        _log.info(
            "gateway serving",
            extra={
                "fields": {
                    "endpoint": gateway.endpoint,
                    "origin": config.audit.origin,
                    "console": gateway.console_url or "",
                }
            },
        )
        return gateway

    async def _watch_registry(self) -> None:
        path = FederationLayout(self.config.federation.dir).registry
        stamp = _registry_stamp(path)
        while True:
            await asyncio.sleep(self.config.federation.reload_interval_s)
            current = _registry_stamp(path)
            if current == stamp:
                continue
            stamp = current
            self.reload_registry()

    def reload_registry(self) -> bool:
        """Load registry.json again and put it in force for every component at once (the one
        ``TrustHolder``); keep the current one if the new one does not verify or is older."""
        trust = self.pipeline.trust
        if not trust.reload(self.config.federation.dir):
            return False
        registry = trust.registry
        self._decider.set_members({m.id: m.kind.value for m in registry.members()})
        _log.info("registry reloaded", extra={"fields": {"serial": registry.serial}})
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, drain the ones in flight (``grace`` seconds, default from the
        config), then close every store. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
        if self.console is not None:
            # First, so that no console event is appended once the log starts closing.
            await self.console.stop()
            self.console = None
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.config.server.grace_period_s if grace is None else grace)
        if self._prometheus is not None:
            await self._prometheus.stop()
        parts = self._parts
        await parts.router.close()
        await parts.audit.close()
        await parts.risklist.close()
        parts.stats.close()
        for channel in parts.witness_channels:
            await channel.close(None)
        parts.replay.close()
        parts.rules.close()
        parts.tickets.close()
        parts.alerts.close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def run_gateway(config: GatewayConfig) -> None:
    """Run a gateway until SIGINT or SIGTERM, then shut down gracefully."""
    gateway = await Gateway.start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        _log.info("shutting down: draining calls in flight")
        await gateway.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.server --config FILE``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="fedgate-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the gateway's TOML file")
    args = parser.parse_args(argv)
    try:
        config = GatewayConfig.load(args.config)
    except ConfigError as exc:
        print(f"fedgate gateway: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(config.telemetry.log_level, json_logs=config.telemetry.log_json)
    try:
        asyncio.run(run_gateway(config))
    except FedgateError as exc:
        print(f"fedgate gateway: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        _log.exception("the gateway stopped on an error")
        print(f"fedgate gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
