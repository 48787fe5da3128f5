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

The state that decides requests is this process's own (``[shared] store = "local"``, the
default) or shared with every instance on one PostgreSQL database (``"postgres"``): the replay
cache, the recorded outcomes of safe retries (``gateway.retries``), the business-rule state
(``gateway.rules_pg``), the quotas (``gateway.quotas.PgQuotas``), the tickets
(``gateway.tickets.PgTickets``), the alert streams (``gateway.alerts.PgAlertHub``) and the
auditor console's logouts (``gateway.sessions``).

With ``console.listen`` set, the auditor web console (``gateway.console``) is served in the same
event loop, over the same audit log (either store); its logins, reveals and exports are entries
of that log.

    python -m gateway.server --config gateway.toml
    python -m gateway.server --config gateway.toml --workers 2     # gateway.workers

On SIGTERM (or SIGINT) the gateway drains: health turns NOT_SERVING (clients that check it
send elsewhere), new calls are refused, the calls in flight finish within
``server.grace_period_s`` with their response legs written, the log commits what is pending and
records its last checkpoint, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import metrics, trace
from psycopg import sql

from fedgate.checkpoint import CosignatureVerifier
from fedgate.envelope import Signer
from fedgate.errors import FedgateError, KeyUnavailable
from fedgate.kek import write_kek_file
from fedgate.keys import public_key_from_raw
from fedgate.note import NoteSigner
from fedgate.otel import Exporters, client_interceptors, server_interceptors
from fedgate.pki import FederationLayout
from fedgate.registry import Registry
from fedgate.risklist import risklist_origin
from fedgate.roster import ROSTERS_DIR
from fedgate.status import ErrorInterceptor
from fedgate.storage import open_sqlite
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
from fedgate.web.serve import EmbeddedServer
from fedgate.web.session import load_secret_key
from fedgate.witness import GrpcWitnessClient
from gateway import workers
from gateway.alerts import AlertHub, Alerts, AlertServicer, PgAlertHub
from gateway.appeals import AppealBook
from gateway.audit import (
    BodyVault,
    FileKeyWrapper,
    OpenedReader,
    RetentionPolicy,
    holds_sealed_bodies,
    retention_loop,
    run_retention,
)
from gateway.audit.insights import PgShard
from gateway.audit.log import AuditLog
from gateway.audit.pg_store import PgDatabase, PgMonthRetention, open_pg_store
from gateway.audit.service import AuditServicer
from gateway.audit.sqlite_store import SqliteDatabase, open_sqlite_store
from gateway.audit.store import AuditStore
from gateway.audit.tileserver import tile_app
from gateway.config import ConfigError, GatewayConfig
from gateway.console import Countermeasures, RunningAuditorConsole, start_auditor_console
from gateway.diagnostics import TailDiagnostics
from gateway.events import EventServicer
from gateway.pipeline import Pipeline
from gateway.policy import ReloadingDecider, load_default_decider
from gateway.quotas import PgQuotas, QuotaConfig, Quotas, QuotaStore
from gateway.replay import (
    MemoryReplayCache,
    PgReplayCache,
    Rebuilt,
    ReplayCache,
    ReplayStore,
    local_outcomes,
    rebuild_from_audit,
)
from gateway.retries import OutcomeStore, PgOutcomes
from gateway.risklist import SERVICE_NAME as RISKLIST_SERVICE_NAME
from gateway.risklist import CentreStats, RiskListLog, RiskListServicer
from gateway.routing import NodeRouter
from gateway.rules import BusinessRules
from gateway.rules_pg import open_shared_rules
from gateway.rules_rebuild import rebuild_rules
from gateway.service import SERVICE_NAME, GatewayServicer
from gateway.sessions import PgRevocations
from gateway.telemetry import GatewayTelemetry, configure_logging
from gateway.tickets import PgTickets, SqliteTickets, Tickets, TicketStore

__all__ = ["SERVICE_NAMES", "Gateway", "main", "run_gateway", "settle_heap"]

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


def _trust_stamp(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when ``registry.json`` or a roster in ``rosters/`` is replaced."""
    files = [FederationLayout(directory).registry]
    with contextlib.suppress(OSError):
        files += sorted((directory / ROSTERS_DIR).glob("*.json"))
    return tuple((p.name, *_registry_stamp(p)) for p in files)


@dataclass(slots=True)
class _Parts:
    audit: AuditLog
    replay: ReplayStore
    rules: BusinessRules
    outcomes: OutcomeStore
    quotas: QuotaStore
    tickets: Tickets
    alerts: Alerts
    router: NodeRouter
    risklist: RiskListLog
    stats: CentreStats


@dataclass(frozen=True, slots=True)
class _Identity:
    member_id: MemberId
    trust: TrustHolder
    credentials: MemberCredentials
    signer: Signer

    @property
    def registry(self) -> Registry:
        return self.trust.registry


def _load_identity(config: GatewayConfig) -> _Identity:
    """Step 1: the registry with the officer rosters (the one ``TrustHolder`` every component
    reads) and this gateway's own credentials (nothing to close)."""
    fed = config.federation
    member_id = MemberId(fed.member_id)
    trust = TrustHolder.load(fed.dir)
    credentials = MemberCredentials.load(fed.dir, member_id)
    trust.registry.member(member_id)
    return _Identity(member_id, trust, credentials, Signer.from_key(credentials.signing_key))


def _witness_clients(
    config: GatewayConfig,
    registry: Registry,
    credentials: MemberCredentials,
    endpoints: dict[str, str],
    resources: contextlib.AsyncExitStack,
) -> list[GrpcWitnessClient]:
    """An mTLS channel (closed by ``resources``) and a cosignature-checking client for each
    configured witness."""
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
        resources.push_async_callback(channel.close, None)
        verifier = CosignatureVerifier(name=name, public_key=public_key_from_raw(key.public_key))
        clients.append(GrpcWitnessClient(channel, verifier=verifier))
    policy = registry.effective_witness_policy()
    if policy is not None and len(set(config.audit.witnesses) & set(policy.witnesses)) < (
        policy.quorum
    ):
        # Not fatal (a development gateway may run without witnesses), but nothing it logs can
        # then be proved to the registry's witness policy: say so where operators look.
        _log.warning(
            "audit.witnesses (%s) cannot meet the registry's witness policy %s: evidence "
            "bundles and cosigned receipts of this log will be refused",
            ", ".join(config.audit.witnesses) or "none",
            policy,
        )
    return clients


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


def _open_vault(config: GatewayConfig) -> BodyVault | None:
    """The encrypted bodies of this instance's shard when ``audit.kek_path`` is set (blocking).

    Without a KEK, a shard that already holds sealed bodies is refused (``KeyUnavailable``):
    writing clear entries into it, or rebuilding state from entries it cannot open, would
    both be wrong. Raises ``KeyUnavailable`` for a missing or wrong KEK."""
    audit = config.audit
    pg = audit.store == "postgres"
    if audit.kek_path is None:
        if pg:
            sealed = holds_sealed_bodies(
                lambda: _pg_schema_connection(audit.dsn, audit.schema),
                origin=audit.origin,
                pg=True,
            )
        else:
            sealed = config.audit_path.exists() and holds_sealed_bodies(
                lambda: open_sqlite(config.audit_path, read_only=True),
                origin=audit.origin,
                pg=False,
            )
        if sealed:
            raise KeyUnavailable(
                "the audit log holds sealed bodies but audit.kek_path is not set: configure "
                "the key-encryption key they were sealed with"
            )
        return None
    wrapper = FileKeyWrapper.load(audit.kek_path)
    if pg:
        return BodyVault.open_pg(
            audit.dsn, schema=audit.schema, wrapper=wrapper, origin=audit.origin
        )
    return BodyVault.open_sqlite(config.audit_path, wrapper=wrapper, origin=audit.origin)


def _pg_schema_connection(dsn: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def _retention_policy(config: GatewayConfig) -> RetentionPolicy:
    audit = config.audit
    return RetentionPolicy(
        close_after_idle=timedelta(days=audit.close_after_idle_days),
        keep_after_close=timedelta(days=audit.keep_after_close_days),
        interval=timedelta(seconds=audit.retention_interval_s),
    )


def _month_retention(config: GatewayConfig) -> PgMonthRetention | None:
    """PostgreSQL: the monthly partitions of the leaves, retired with the case keys."""
    audit = config.audit
    if audit.store != "postgres":
        return None
    return PgMonthRetention(audit.dsn, schema=audit.schema)


async def run_retention_once(config: GatewayConfig, *, now: datetime) -> list[str]:
    """``fedgate audit retention``: open this instance's shard as its writer (the gateway MUST
    be stopped: the store's lock refuses a second writer), run the retention job once as of
    ``now``, close. Returns the case keys destroyed (none without ``audit.kek_path``: a
    PostgreSQL log then only detaches its months past retention). Raises ``ConfigError`` for a
    SQLite log without ``audit.kek_path`` (nothing to retire), ``KeyUnavailable``,
    ``AuditUnavailable``."""
    months = _month_retention(config)
    if config.audit.kek_path is None and months is None:
        raise ConfigError(
            "audit.kek_path is not set and the log is not on PostgreSQL: this log keeps no "
            "sealed bodies and no months to retire"
        )
    identity = _load_identity(config)
    store = await _open_audit_store(config)
    try:
        vault = await asyncio.to_thread(_open_vault, config)
    except BaseException:
        await store.close()
        raise
    try:
        log = await AuditLog.open(
            store=store,
            origin=config.audit.origin,
            signer=NoteSigner(
                name=config.audit.origin, private_key=identity.credentials.signing_key
            ),
            state_path=config.audit_state_path,
            vault=vault,
        )
    except BaseException:
        try:
            await store.close()
        finally:
            if vault is not None:
                vault.close()
        raise
    try:
        return await run_retention(
            log,
            vault,
            _retention_policy(config),
            actor=identity.member_id,
            now=now,
            months=months,
        )
    finally:
        await log.close()


def _console_source(config: GatewayConfig) -> Path | PgShard:
    """Where the auditor console reads this instance's shard: the SQLite file or PostgreSQL."""
    audit = config.audit
    if audit.store == "postgres":
        return PgShard(dsn=audit.dsn, origin=audit.origin, schema=audit.schema)
    return config.audit_path


def _shard_reader(config: GatewayConfig) -> SqliteDatabase | PgDatabase:
    """A reader of the configured shard, of its own (blocking)."""
    audit = config.audit
    if audit.store == "postgres":
        return PgDatabase(audit.dsn, origin=audit.origin, schema=audit.schema, writer=False)
    return SqliteDatabase(config.audit_path, origin=audit.origin, writer=False)


def _rebuild_rules(config: GatewayConfig, vault: BodyVault | None) -> BusinessRules:
    """The business-rule state, rebuilt in memory from the configured shard (blocking); when
    shared, the shared projection with this shard's executed orders recorded again.

    Never read from a file (``gateway.rules_rebuild``): the gateway MUST NOT serve with a state
    that could miss an executed order the log holds.
    """
    if config.is_shared:
        rules = open_shared_rules(dsn=config.shared_dsn, schema=config.shared_schema("rules"))
    else:
        rules = BusinessRules.in_memory()
    source = _shard_reader(config)
    try:
        opened = source if vault is None else OpenedReader(source, vault)
        rebuilt = rebuild_rules(rules, opened, origin=config.audit.origin)
    except BaseException:
        rules.close()
        raise
    finally:
        source.close()
    _log.info(
        "business-rule state rebuilt from the audit log: %d executed orders in %.1f ms",
        rebuilt.orders,
        rebuilt.seconds * 1000,
        extra={"fields": {"orders": rebuilt.orders, "ms": round(rebuilt.seconds * 1000, 1)}},
    )
    if rebuilt.sealed_elsewhere:
        _log.warning(
            "%d executed orders answered here have their request leg sealed in another "
            "instance's shard: counted when answered, not recorded again from the log",
            rebuilt.sealed_elsewhere,
            extra={"fields": {"sealed_elsewhere": rebuilt.sealed_elsewhere}},
        )
    return rules


def _rebuild_replay(config: GatewayConfig, replay: ReplayStore, vault: BodyVault | None) -> Rebuilt:
    """Rebuild ``replay`` from the configured shard through a reader of its own (blocking)."""
    audit = config.audit
    source = _shard_reader(config)
    try:
        return rebuild_from_audit(
            replay,
            source if vault is None else OpenedReader(source, vault),
            origin=audit.origin,
            skew=timedelta(seconds=config.pipeline.clock_skew_s),
        )
    finally:
        source.close()


async def _open_replay_cache(
    config: GatewayConfig, resources: contextlib.AsyncExitStack, vault: BodyVault | None
) -> ReplayStore:
    """The replay cache (closed by ``resources``), rebuilt from the audit log's window before
    anything is checked.

    Always rebuilt, whatever ``replay_synchronous``: with ``"normal"`` a power loss may have
    taken the last commits (``gateway.replay`` argues why the log has them all). If that fails
    the start fails: the gateway MUST NOT serve without the rebuild.
    """
    pipeline = config.pipeline
    window = timedelta(seconds=pipeline.replay_window_s)
    replay: ReplayStore
    if config.replay_kind == "memory":
        replay = MemoryReplayCache(window=window)
    elif config.replay_kind == "postgres":
        dsn, schema = config.shared_dsn, config.replay_schema
        replay = await asyncio.to_thread(
            lambda: PgReplayCache(dsn=dsn, schema=schema, window=window)
        )
    else:
        replay = ReplayCache.open(
            config.replay_path,
            window=window,
            synchronous="FULL" if pipeline.replay_synchronous == "full" else "NORMAL",
        )
    resources.callback(replay.close)
    rebuilt = await asyncio.to_thread(_rebuild_replay, config, replay, vault)
    _log.info(
        "replay cache rebuilt from the audit log: %d requests from %d request legs in %.4f s",
        rebuilt.remembered,
        rebuilt.legs,
        rebuilt.seconds,
        extra={
            "fields": {
                "requests": rebuilt.remembered,
                "request_legs": rebuilt.legs,
                "seconds": round(rebuilt.seconds, 4),
            }
        },
    )
    return replay


async def _open_parts(
    config: GatewayConfig,
    identity: _Identity,
    resources: contextlib.AsyncExitStack,
    *,
    audit_store: AuditStore | None,
    tracer_provider: trace.TracerProvider | None,
) -> _Parts:
    """Steps 2-4: the audit log (with its witnesses), the replay cache rebuilt from it, the rules,
    tickets and alerts stores and the router; each closed by ``resources``."""
    store = audit_store or await _open_audit_store(config)
    endpoints = dict(config.routing.endpoints)
    vault: BodyVault | None = None
    try:
        vault = await asyncio.to_thread(_open_vault, config)
        witnesses = _witness_clients(
            config, identity.registry, identity.credentials, endpoints, resources
        )
        audit = await AuditLog.open(
            store=store,
            origin=config.audit.origin,
            signer=NoteSigner(
                name=config.audit.origin, private_key=identity.credentials.signing_key
            ),
            witnesses=witnesses,
            state_path=config.audit_state_path,
            vault=vault,
        )
    except BaseException:
        try:
            await store.close()
        finally:
            if vault is not None:
                vault.close()
        raise
    resources.push_async_callback(audit.close)
    replay = await _open_replay_cache(config, resources, vault)
    rules = await asyncio.to_thread(_rebuild_rules, config, vault)
    resources.callback(rules.close)
    outcomes, quotas = await asyncio.to_thread(_open_shared_parts, config, replay)
    resources.callback(outcomes.close)
    resources.callback(quotas.close)

    def endpoint_of(target: MemberId) -> str:
        return endpoints.get(target) or identity.trust.registry.member(target).endpoint

    router = NodeRouter(
        credentials=identity.credentials,
        endpoint_of=endpoint_of,
        config=config.routing,
        max_message_bytes=config.server.max_receive_bytes,
        interceptors=client_interceptors(tracer_provider),
    )
    resources.push_async_callback(router.close)
    ticket_store, alerts = await asyncio.to_thread(_open_tickets_and_alerts, config)
    resources.push_async_callback(alerts.aclose)
    tickets = Tickets(
        store=ticket_store,
        router=router,
        poll_interval_s=config.tickets.poll_interval_s,
        node_timeout_s=config.routing.timeout_s,
    )
    resources.callback(tickets.close)
    list_origin = risklist_origin(config.audit.origin)
    risklist = RiskListLog.open(
        config.risklist_path,
        origin=list_origin,
        signer=NoteSigner(name=list_origin, private_key=identity.credentials.signing_key),
        witnesses=witnesses,
    )
    risklist.start()
    resources.push_async_callback(risklist.close)

    def member_kind(member: str) -> str:
        found = identity.trust.registry.find(member)
        return found.kind.value if found is not None else ""

    stats = CentreStats(
        config.pipeline.state_dir / "countermeasure-stats.sqlite", member_kind=member_kind
    )
    resources.callback(stats.close)
    return _Parts(audit, replay, rules, outcomes, quotas, tickets, alerts, router, risklist, stats)


def _open_tickets_and_alerts(config: GatewayConfig) -> tuple[TicketStore, Alerts]:
    """The tickets and the alerts: this process's SQLite files, or tables every instance
    shares (blocking)."""
    if not config.is_shared:
        hub = AlertHub.open(config.alerts_path, keep=config.alerts.keep)
        try:
            return SqliteTickets.open(config.tickets_path), hub
        except BaseException:
            hub.close()
            raise
    dsn = config.shared_dsn
    shared = PgAlertHub(dsn=dsn, schema=config.shared_schema("alerts"), keep=config.alerts.keep)
    try:
        tickets = PgTickets(
            dsn=dsn, schema=config.shared_schema("tickets"), origin=config.audit.origin
        )
    except BaseException:
        shared.close()
        raise
    return tickets, shared


def _console_sessions(
    config: GatewayConfig, resources: contextlib.AsyncExitStack
) -> dict[str, Any]:
    """How the auditor console keeps sessions (blocking): as one process does (the key file
    in the state directory, logouts in memory), or, when shared, as every instance does: the
    key file beside the console accounts (``console.users_dir``, which the instances share)
    and the logouts in PostgreSQL (``gateway.sessions``)."""
    if not config.is_shared:
        return {}
    key = load_secret_key(config.console_users_dir)
    revocations = PgRevocations(dsn=config.shared_dsn, schema=config.shared_schema("sessions"))
    resources.callback(revocations.close)
    return {"session_key": key, "revocations": revocations}


def _open_shared_parts(
    config: GatewayConfig, replay: ReplayStore
) -> tuple[OutcomeStore, QuotaStore]:
    """The recorded outcomes and the quotas: this process's (kept by the in-memory replay cache
    when that is the one in force), or shared ones (blocking)."""
    quota_config = QuotaConfig.from_mapping(config.quotas)
    if not config.is_shared:
        return local_outcomes(replay), Quotas(quota_config)
    dsn = config.shared_dsn
    outcomes = PgOutcomes(dsn=dsn, schema=config.shared_schema("outcomes"))
    try:
        return outcomes, PgQuotas(quota_config, dsn=dsn, schema=config.shared_schema("quotas"))
    except BaseException:
        outcomes.close()
        raise


def _grpc_server(
    config: GatewayConfig,
    pipeline: Pipeline,
    parts: _Parts,
    decider: ReloadingDecider,
    tracer_provider: trace.TracerProvider | None,
    trust: TrustHolder,
    *,
    share_port: bool,
) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    """Step 5: the gRPC server with every service, health and reflection (not yet bound), and
    OpenTelemetry's interceptor continuing callers' traces when tracing is on.

    ``SO_REUSEPORT`` (which gRPC sets unless told otherwise) only when ``share_port``: the
    workers of one address share it on purpose (``gateway.workers``), but a second gateway
    started by mistake on a taken port MUST fail to bind rather than take half its calls."""
    limit = config.server.max_receive_bytes
    server = grpc.aio.server(
        # OpenTelemetry's outermost (the span is current), then the one error boundary.
        interceptors=[*server_interceptors(tracer_provider), ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if share_port else 0),
        ],
    )
    server.add_generic_rpc_handlers(
        (
            GatewayServicer(pipeline=pipeline, tickets=parts.tickets).handler(),
            AlertServicer(hub=parts.alerts, authenticate=pipeline.authenticate).handler(),
        )
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(parts.audit, trust, lambda: decider), server
    )
    risklist_pb2_grpc.add_RiskListServiceServicer_to_server(
        RiskListServicer(log=parts.risklist, authenticate=pipeline.authenticate), server
    )
    event_service_pb2_grpc.add_EventServiceServicer_to_server(
        EventServicer(
            log=parts.audit,
            registry=trust,
            skew=timedelta(seconds=config.pipeline.clock_skew_s),
        ),
        server,
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
    return server, health


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
        resources: contextlib.AsyncExitStack,
        prometheus_port: int | None,
        telemetry: GatewayTelemetry,
    ) -> None:
        self.config = config
        self.port = port
        self.pipeline = pipeline
        self.prometheus_port = prometheus_port
        self._server = server
        self._parts = parts
        self._health = health
        self._decider = decider
        self._resources = resources
        self._reload_task: asyncio.Task[None] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._telemetry = telemetry
        self.console: RunningAuditorConsole | None = None
        self.tiles: EmbeddedServer | None = None
        self.diagnostics: TailDiagnostics | None = None
        """What the slow requests wait for, while ``diagnose_tail`` runs."""

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
        share_port: bool = False,
    ) -> Gateway:
        """Open every store, build the pipeline and start serving on ``server.listen``
        (with other workers of ``gateway.workers`` when ``share_port``).

        ``audit_store`` replaces the store named by ``[audit]`` (tests inject failing stores
        through this seam); it MUST keep the shard the config names (the SQLite file at
        ``config.audit_path``, or ``audit.origin`` at ``audit.dsn``), which the replay cache is
        rebuilt from before the gateway serves. Raises ``FedgateError`` (``ConfigError``,
        ``RegistryError``, ``AuditUnavailable``) when something cannot be opened.

        A start that fails at any step MUST leave nothing behind: every store, channel, port and
        thread opened by the earlier steps is closed, in the reverse order, before it raises.
        """
        config.validate()
        identity = _load_identity(config)
        async with contextlib.AsyncExitStack() as resources:
            gateway = await cls._start(
                config,
                identity,
                resources,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                audit_store=audit_store,
                share_port=share_port,
            )
            # Started: from now on ``stop`` owns the resources.
            gateway._resources = resources.pop_all()
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

    @classmethod
    async def _start(
        cls,
        config: GatewayConfig,
        identity: _Identity,
        resources: contextlib.AsyncExitStack,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        audit_store: AuditStore | None,
        share_port: bool,
    ) -> Gateway:
        """The steps of ``start``; each registers what it opens with ``resources``."""
        prometheus_port: int | None = None
        if config.telemetry.otlp_endpoint or config.telemetry.prometheus_listen:
            exporters = Exporters.start(
                service="fedgate-gateway",
                otlp_endpoint=config.telemetry.otlp_endpoint,
                prometheus_listen=config.telemetry.prometheus_listen,
                sample_ratio=config.telemetry.trace_sample_ratio,
            )
            resources.callback(exporters.shutdown)  # last: flushes the spans of the drain
            tracer_provider = tracer_provider or exporters.tracer_provider
            meter_provider = meter_provider or exporters.meter_provider
            prometheus_port = exporters.metrics_port
        telemetry = GatewayTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        config.pipeline.state_dir.mkdir(parents=True, exist_ok=True)
        decider = load_default_decider(
            config.policy.dir,
            members={m.id: m.kind.value for m in identity.registry.members()},
            check_interval_ms=config.policy.reload_interval_ms,
        )
        parts = await _open_parts(
            config,
            identity,
            resources,
            audit_store=audit_store,
            tracer_provider=tracer_provider,
        )
        pipeline = Pipeline(
            trust=identity.trust,
            decider=decider,
            replay=parts.replay,
            rules=parts.rules,
            quotas=parts.quotas,
            outcomes=parts.outcomes,
            audit=parts.audit,
            router=parts.router,
            tickets=parts.tickets,
            alerts=parts.alerts,
            signer=identity.signer,
            gateway_id=identity.member_id,
            origin=config.audit.origin,
            clock_skew=timedelta(seconds=config.pipeline.clock_skew_s),
            telemetry=telemetry,
            keep_response_bodies=config.audit.keep_response_bodies,
            reconcile_timeout_s=config.routing.timeout_s,
            risklist=parts.risklist,
            appeals=AppealBook(
                log=parts.audit,
                working_days=config.appeals.decision_working_days,
                holidays=config.appeals.holiday_dates(),
            ),
        )
        # Before serving: nothing is in flight, so every open request leg was cut off.
        await pipeline.reconciler.run_once(grace=timedelta(0))
        server, health = _grpc_server(
            config, pipeline, parts, decider, tracer_provider, identity.trust, share_port=share_port
        )
        try:
            port = server.add_secure_port(
                config.server.listen, server_credentials(identity.credentials)
            )
        except RuntimeError as exc:  # grpcio's "Failed to bind": say which option
            raise ConfigError(
                f"server.listen {config.server.listen} could not be bound (in use?)"
            ) from exc
        if port == 0:
            raise ConfigError(f"server.listen {config.server.listen} could not be bound")
        await server.start()
        resources.push_async_callback(server.stop, 0)
        for name in ("", *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        gateway = cls(
            config=config,
            server=server,
            port=port,
            pipeline=pipeline,
            parts=parts,
            health=health,
            decider=decider,
            resources=resources,
            prometheus_port=prometheus_port,
            telemetry=telemetry,
        )
        if config.telemetry.diagnose_tail_ms > 0:
            gateway.diagnose_tail(config.telemetry.diagnose_tail_ms / 1000)  # ``stop`` ends it
        if config.federation.reload_interval_s > 0:
            # Stamp now, so that a change made right after start-up is not missed.
            stamp = _trust_stamp(config.federation.dir)
            gateway._reload_task = asyncio.create_task(gateway._watch_registry(stamp))
            resources.push_async_callback(_cancel, gateway._reload_task)
        if config.pipeline.reconcile_interval_s > 0:
            gateway._reconcile_task = asyncio.create_task(
                pipeline.reconciler.run(
                    interval_s=config.pipeline.reconcile_interval_s,
                    # An exchange may still be waiting for its node for the routing timeout.
                    grace=timedelta(seconds=2 * config.routing.timeout_s + 5),
                ),
                name="reconcile",
            )
            resources.push_async_callback(_cancel, gateway._reconcile_task)
        vault, months = parts.audit.vault, _month_retention(config)
        if (vault is not None or months is not None) and config.audit.retention_interval_s > 0:
            retention = asyncio.create_task(
                retention_loop(
                    parts.audit,
                    vault,
                    _retention_policy(config),
                    actor=identity.member_id,
                    months=months,
                ),
                name="retention",
            )
            resources.push_async_callback(_cancel, retention)
        if config.audit.tiles_listen:
            host, _, tiles_port = config.audit.tiles_listen.rpartition(":")
            tiles = EmbeddedServer(
                tile_app(parts.audit), host=host.strip("[]"), port=int(tiles_port)
            )
            await tiles.start()
            resources.push_async_callback(tiles.stop)  # before the log it reads closes
            gateway.tiles = tiles
        if config.console.listen:
            host, _, console_port = config.console.listen.rpartition(":")
            gateway.console = await start_auditor_console(
                log=parts.audit,
                audit_db=_console_source(config),
                registry=identity.trust,
                state_dir=config.pipeline.state_dir,
                users_dir=config.console_users_dir,
                host=host.strip("[]"),
                port=int(console_port),
                member_id=identity.member_id,
                secure_cookies=config.console.secure_cookies,
                countermeasures=Countermeasures(
                    stats=parts.stats, audit=parts.audit, risklist=parts.risklist
                ),
                appeals=pipeline.appeals,
                **await asyncio.to_thread(_console_sessions, config, resources),
            )
        return gateway

    def diagnose_tail(self, threshold_s: float) -> TailDiagnostics:
        """Start watching the event loop for stalls over ``threshold_s`` and timing every
        request's stages (``gateway.diagnostics``); returns what records them. Idempotent."""
        if self.diagnostics is None:
            self.diagnostics = TailDiagnostics(threshold_s=threshold_s)
            self.diagnostics.loop.start()
            self._telemetry.clock = self.diagnostics.stages
        return self.diagnostics

    async def stop_diagnosing(self) -> None:
        """Stop what ``diagnose_tail`` started (what it recorded stays readable)."""
        diagnostics = self.diagnostics
        if diagnostics is not None:
            self._telemetry.clock = None
            await diagnostics.loop.stop()

    async def _watch_registry(self, stamp: tuple[tuple[str, int, int, int], ...]) -> None:
        directory = self.config.federation.dir
        while True:
            await asyncio.sleep(self.config.federation.reload_interval_s)
            current = await asyncio.to_thread(_trust_stamp, directory)
            if current == stamp:
                continue
            stamp = current
            # Verifying the registry and every roster is CPU work: off the event loop.
            if await asyncio.to_thread(self.pipeline.trust.reload, directory):
                self._registry_reloaded()

    def reload_registry(self) -> bool:
        """Load registry.json again and put it in force for every component at once (the one
        ``TrustHolder``); keep the current one if the new one does not verify or is older."""
        if not self.pipeline.trust.reload(self.config.federation.dir):
            return False
        self._registry_reloaded()
        return True

    def _registry_reloaded(self) -> None:
        trust = self.pipeline.trust
        registry = trust.registry
        self._decider.set_members({m.id: m.kind.value for m in registry.members()})
        rosters = {m: r.serial for m, r in trust.rosters.items()}
        _log.info(
            "registry reloaded",
            extra={"fields": {"serial": registry.serial, "rosters": rosters}},
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, drain the ones in flight (``grace`` seconds, default from the
        config), then close every store, channel and port in the reverse order of opening.
        Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.stop_diagnosing()
        for task in (self._reload_task, self._reconcile_task):
            if task is not None:
                await _cancel(task)
        if self.console is not None:
            # First, so that no console event is appended once the log starts closing.
            await self.console.stop()
            self.console = None
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.config.server.grace_period_s if grace is None else grace)
        await self._resources.aclose()  # the tile server included
        self.tiles = None

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


_GC_THRESHOLDS = (1_000, 10, 100)
"""The collector's thresholds once serving: a young collection every 1,000 net allocations
(700 by default), a full one at most every 1,000 young ones (about a million allocations, as
often as with the 10,000 before; at (1,000, 10, 10) one came every ~25,000 requests and took
15 ms with the tail diagnostics' records in the old generation). What makes a young collection
necessary at all is gRPC's: each call leaves a reference cycle of ~5 objects (the aio server's
``_find_method_handler`` coroutine scope and its ``query_handlers`` closure, with the call
details and metadata) that only the collector frees. A young collection's pause grows with the
objects it walks: at 10,000 it was 4–8 ms of the loop's CPU (a generation-1 one 8–11 ms), the
longest stalls the loop made itself; at 1,000 it is 0.4 ms (generation 1: 0.7–1.4 ms), for
1–3 µs more collector CPU per request in full runs (3.4–4.3 → 5.2–6.0 µs; 4.1 → 8.8–9.9 in
quick ones), measured on the pipeline bench's gateway, 2026-12-05.
Fewer would cost more: each collection also walks the requests in flight."""


def settle_heap() -> None:
    """Take what start-up built out of the cyclic garbage collector's view (``gc.freeze``) and
    set its thresholds (``_GC_THRESHOLDS``). Call it once, in the serving process, after the
    start.

    Measured on the pipeline benchmark's gateway (2026-12-05): every full collection walked the
    55–87 k objects start-up leaves (modules, protobuf descriptors, registry, policy, gRPC) in
    26–54 ms of CPU, a pause for every request in flight every few hundred requests, and the
    collector cost 60–140 µs of CPU per request in all; after this call, 2 ms per full
    collection and under 10 µs per request. Objects frozen here that later become cyclic
    garbage are never freed, so it is not for processes that start many gateways (tests).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def run_gateway(config: GatewayConfig, *, share_port: bool = False) -> None:
    """Run a gateway until SIGINT or SIGTERM, then drain (``Gateway.stop``) and return.

    The signals are caught before the start, so a SIGTERM that arrives while the gateway is
    still rebuilding its state stops it as soon as it serves, drained like any other."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = await Gateway.start(config, share_port=share_port)
    settle_heap()
    try:
        await stop.wait()
    finally:
        _log.info(
            "shutting down: NOT_SERVING, draining calls in flight",
            extra={"fields": {"origin": config.audit.origin}},
        )
        await gateway.stop()
        _log.info("drained", extra={"fields": {"origin": config.audit.origin}})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.server --config FILE [--workers N] [--listen ADDR ...]``; returns the
    exit status (2 for a config it refuses)."""
    parser = argparse.ArgumentParser(prog="fedgate-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the gateway's TOML file")
    parser.add_argument(
        "--workers",
        type=int,
        help="run N worker processes, each its own instance and audit shard (gateway.workers)",
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="listen here instead of server.listen; repeat for one worker per address",
    )
    parser.add_argument("--instance", type=int, help=argparse.SUPPRESS)  # a supervisor's worker
    parser.add_argument("--share-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--init-kek",
        action="store_true",
        help="write a new key-encryption key at audit.kek_path (mode 0600) if none is there, "
        "and exit",
    )
    args = parser.parse_args(argv)
    try:
        config = GatewayConfig.load(args.config)
        if args.instance is not None:
            config = workers.worker_config(
                config,
                index=args.instance,
                listen=args.listen[0] if args.listen else config.server.listen,
            )
            plan = None
        else:
            plan = workers.plan_workers(config, workers=args.workers, listens=args.listen)
    except ConfigError as exc:
        print(f"fedgate gateway: {exc.message}", file=sys.stderr)
        return 2
    if args.init_kek:
        if config.audit.kek_path is None:
            print("fedgate gateway: set audit.kek_path first", file=sys.stderr)
            return 2
        wrote = write_kek_file(config.audit.kek_path)
        done = "wrote" if wrote else "kept the existing"
        print(f"{done} key-encryption key {config.audit.kek_path}")
        return 0
    configure_logging(config.telemetry.log_level, json_logs=config.telemetry.log_json)
    if plan is not None and len(plan.listens) > 1:
        try:
            return workers.run_supervisor(args.config, config, plan)
        except ConfigError as exc:
            print(f"fedgate gateway: {exc.message}", file=sys.stderr)
            return 2
    if plan is not None:
        config = replace(config, server=replace(config.server, listen=plan.listens[0]))
    try:
        asyncio.run(run_gateway(config, share_port=args.share_port))
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
