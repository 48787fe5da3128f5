"""The gateway's configuration: one TOML file, every value overridable from the environment.

    [server]     listen, max_receive_bytes, grace_period_s
    [federation] dir, member_id, reload_interval_s
    [pipeline]   state_dir, clock_skew_s, replay_window_s, replay_store, replay_synchronous,
                 reconcile_interval_s
    [shared]     store ("local" | "postgres"), dsn, schema: the state several instances share
    [audit]      origin, store ("sqlite" | "postgres"), path (SQLite), dsn and schema
                 (PostgreSQL), state_path, keep_response_bodies, witnesses, kek_path,
                 close_after_idle_days, keep_after_close_days, retention_interval_s
    [routing]    timeout_s, max_attempts, retry_backoff_s, breaker_failures, breaker_reset_s,
                 endpoints (member id -> host:port, overriding the registry)
    [policy]     dir, reload_interval_ms
    [quotas]     passed as is to ``gateway.quotas.QuotaConfig.from_mapping``
    [tickets]    path, poll_interval_s
    [alerts]     path, keep
    [telemetry]  prometheus_listen (loopback host:port, empty = off), otlp_endpoint (host:port of
                 an OTLP/gRPC collector, empty = off), trace_sample_ratio, log_level, log_json,
                 diagnose_tail_ms (0 = off)
    [console]    listen (the auditor web console's host:port, empty = off), users_dir,
                 secure_cookies

Read by the one rule of ``fedgate.config``: defaults are the dataclass fields below; an
environment variable ``FEDGATE_GATEWAY__<SECTION>__<KEY>`` replaces one value (its text read as
a TOML value when it parses as one: ``5``, ``true``, ``{ "bank.icbc" = "..." }``); relative
paths are relative to the config file's folder; every mistake, unknown options included,
raises ``ConfigError`` naming the option. Adding an option is adding a field.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from fedgate.config import ConfigError, build, read_toml, with_env
from fedgate.envelope import MAX_BODY_BYTES
from gateway.audit.pg_store import DEFAULT_SCHEMA

__all__ = [
    "ENV_PREFIX",
    "SHARED_STORES",
    "AlertsConfig",
    "AppealsConfig",
    "AuditConfig",
    "ConfigError",
    "ConsoleConfig",
    "FederationConfig",
    "GatewayConfig",
    "PipelineConfig",
    "PolicyConfig",
    "RoutingConfig",
    "ServerConfig",
    "SharedConfig",
    "TelemetryConfig",
    "TicketsConfig",
]

ENV_PREFIX = "FEDGATE_GATEWAY__"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:20051"
    max_receive_bytes: int = 4 * MAX_BODY_BYTES
    """gRPC's own cut-off. Bodies over 1 MiB but under this reach the pipeline and are refused
    there, audited; anything larger is refused by gRPC before the application sees it."""
    grace_period_s: float = 10.0
    """How long a shutdown waits for in-flight requests."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    dir: Path
    """The federation directory: registry.json, trust/, members/<member_id>/."""
    member_id: str = "gateway"
    reload_interval_s: float = 5.0
    """How often registry.json is checked for a new signed version (0: never)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    state_dir: Path
    clock_skew_s: float = 300.0
    replay_window_s: float = 900.0
    """How long request ids and nonces are remembered; at least twice the skew."""
    replay_store: str = ""
    """``"memory"`` (no fsync or thread of its own, rebuilt from the audit log at every start),
    ``"sqlite"`` (``replay.sqlite`` in the state directory), or ``"postgres"`` (shared by every
    gateway instance, in the schema ``<shared schema>_replay``); see ``gateway.replay``. Empty
    (the default) follows ``[shared] store``: ``"memory"`` when local, ``"postgres"`` when
    shared (which implies it; ``"memory"`` or ``"sqlite"`` with a shared store is refused)."""
    replay_synchronous: str = "normal"
    """``"normal"`` or ``"full"``: the SQLite replay cache's ``synchronous`` setting. With
    ``"normal"`` what a power loss takes from the cache is rebuilt from the audit log at
    start-up (``gateway.replay``); ``"full"`` adds an fsync to every request."""
    reconcile_interval_s: float = 30.0
    """How often request legs left without a response leg are reconciled with their node
    (besides once at start-up, before serving); 0 turns the periodic pass off."""


SHARED_STORES: Final = ("replay", "outcomes", "rules", "quotas", "tickets", "alerts", "sessions")
"""The stores of ``[shared] store = "postgres"``, each in the schema ``shared_schema(store)``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedConfig:
    """The one switch for the state that gateway instances must share to act as one: replay
    protection, recorded outcomes (safe retries), business-rule state and quotas."""

    store: str = "local"
    """``"local"`` (default: this process alone, in memory and SQLite, as a single gateway
    needs) or ``"postgres"`` (every instance on one PostgreSQL database shares the state)."""
    dsn: str = field(default="", repr=False)
    """PostgreSQL connection string (libpq) of the shared state; default ``audit.dsn``. It may
    hold a password: kept out of ``repr`` and logs; prefer ``FEDGATE_GATEWAY__SHARED__DSN``."""
    schema: str = ""
    """Prefix of the PostgreSQL schemas of the shared stores (``<schema>_replay``,
    ``_outcomes``, ``_rules``, ``_quotas``: a schema holds one store); default
    ``audit.schema``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    origin: str = "fedgate.example/gateway/shard-0"
    """This instance's log shard. Instances sharing a PostgreSQL database MUST each have
    their own (the store refuses a second writer on one shard)."""
    store: str = "sqlite"
    """``"sqlite"`` (one file, the embedded default) or ``"postgres"`` (a shard in a database
    that several gateway instances share). The auditor console reads either."""
    path: Path | None = None
    """The SQLite audit store; default ``<state_dir>/audit.sqlite``."""
    dsn: str = field(default="", repr=False)
    """PostgreSQL connection string (libpq), required with ``store = "postgres"``. It may hold
    a password: kept out of ``repr`` and logs; prefer ``FEDGATE_GATEWAY__AUDIT__DSN``."""
    schema: str = DEFAULT_SCHEMA
    """The PostgreSQL schema holding every shard."""
    state_path: Path | None = None
    """Where the log records the last checkpoint it signed (its rollback tripwire); a local
    file of this instance. Default ``<path>.state`` beside the SQLite file, or
    ``<state_dir>/audit-<origin>.state`` (origin made file-safe) for PostgreSQL."""
    keep_response_bodies: bool = True
    """Keep each agency's signed response envelope, so that auditors can check the agency's
    signature (after a reveal, or offline from an unsealed log). With ``kek_path`` it is kept
    encrypted beside the log, never in clear; turn off to keep only its hash and signature."""
    kek_path: Path | None = None
    """The key-encryption key file (mode 0600; ``python -m gateway.server --init-kek`` or
    ``fedgate up`` writes one) that wraps the per-case data keys. With it, every entry holding
    personal data is sealed (docs/privacy.md); without it, the log stores entries whole (a
    development setup) and a log that was sealed is refused."""
    close_after_idle_days: int = 365
    """A case counts as closed when nothing was logged under it for this many days."""
    keep_after_close_days: int = 1095
    """Its data key is destroyed (its bodies crypto-shredded) this many days after it closed:
    3 years, the PIPL Art. 56 minimum for records of processing (docs/privacy.md)."""
    retention_interval_s: float = 3600.0
    """How often the gateway runs the retention job (0: only ``fedgate audit retention``)."""
    witnesses: tuple[str, ...] = ()
    """Members (with the ``witness`` role) asked to cosign each new checkpoint, at their registry
    endpoint or ``[routing] endpoints``. Appends never wait for them."""
    tiles_listen: str = ""
    """``host:port`` serving the log read-only as C2SP tiles (checkpoint, tiles, entry
    bundles) for witnesses and auditors; empty = off. Plain HTTP on a loopback address: the
    entries hold personal data, so reach it through an authenticating proxy."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    timeout_s: float = 10.0
    """Deadline for one call to an agency node when the caller sets none (or a longer one)."""
    max_attempts: int = 3
    """Attempts for idempotent reads on a transient failure; orders are sent once."""
    retry_backoff_s: float = 0.05
    breaker_failures: int = 5
    """Consecutive failures that open a node's circuit breaker."""
    breaker_reset_s: float = 5.0
    """How long an open breaker refuses before letting one trial call through."""
    endpoints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    dir: Path | None = None
    """Folder with model.conf and policy.csv; default the policies/ shipped with fedgate."""
    reload_interval_ms: float = 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TicketsConfig:
    path: Path | None = None
    """Default ``<state_dir>/tickets.sqlite``."""
    poll_interval_s: float = 1.0
    """How often WatchTicket asks the agency node for news."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsConfig:
    path: Path | None = None
    """Default ``<state_dir>/alerts.sqlite``."""
    keep: int = 100_000
    """Alerts kept for resuming subscribers; older ones are dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AppealsConfig:
    decision_working_days: int = 3
    """Working days the ordering unit has to decide an appeal (Art. 32; DOMAIN.md default 3)."""
    holidays: tuple[str, ...] = ()
    """Public holidays (ISO dates, e.g. "2026-10-01") that are not working days; Saturdays and
    Sundays never are."""

    def holiday_dates(self) -> tuple[date, ...]:
        """``holidays`` as dates (checked by ``GatewayConfig.validate``)."""
        return tuple(date.fromisoformat(d) for d in self.holidays)


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    prometheus_listen: str = ""
    """``127.0.0.1:9464`` serves /metrics there; empty turns it off. Loopback only."""
    otlp_endpoint: str = ""
    """``host:port`` of an OpenTelemetry collector (OTLP over plaintext gRPC, typically a local
    agent) that receives the gateway's spans; empty (the default) exports no traces."""
    trace_sample_ratio: float = 0.1
    """Of the traces the gateway starts, the share recorded and exported (0 to 1); a caller's
    sampled flag is always followed. Unrecorded requests cost next to nothing."""
    log_level: str = "INFO"
    log_json: bool = True
    diagnose_tail_ms: float = 0.0
    """Above 0: record event-loop stalls longer than this many milliseconds (with the loop
    thread's stack) and every request's stage times (``gateway.diagnostics``), logging the
    longest stall at most every 10 s. 0 (the default): off, and it costs nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleConfig:
    listen: str = ""
    """The auditor web console's ``host:port`` (plain HTTP); empty turns it off. Loopback
    only unless ``secure_cookies`` says a TLS-terminating proxy is in front."""
    users_dir: Path | None = None
    """Where ``users.sqlite`` (``fedgate audit add-user --state``) is; default the state dir."""
    secure_cookies: bool = False
    """Mark cookies Secure (``__Host-``): set when browsers reach the console over HTTPS."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    federation: FederationConfig
    pipeline: PipelineConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    quotas: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    appeals: AppealsConfig = field(default_factory=AppealsConfig)
    shared: SharedConfig = field(default_factory=SharedConfig)

    @property
    def is_shared(self) -> bool:
        """Whether the state is shared with other instances on PostgreSQL (``[shared]``)."""
        return self.shared.store == "postgres"

    @property
    def shared_dsn(self) -> str:
        """The DSN of the shared state: ``shared.dsn``, else ``audit.dsn``."""
        return self.shared.dsn or self.audit.dsn

    def shared_schema(self, store: str) -> str:
        """The PostgreSQL schema of one shared store (one of ``SHARED_STORES``):
        ``<shared.schema or audit.schema>_<store>``."""
        return f"{self.shared.schema or self.audit.schema}_{store}"

    @property
    def replay_kind(self) -> str:
        """The replay cache in force: ``pipeline.replay_store``, or what ``[shared]`` implies."""
        if self.pipeline.replay_store:
            return self.pipeline.replay_store
        return "postgres" if self.is_shared else "memory"

    @property
    def audit_path(self) -> Path:
        return self.audit.path or self.pipeline.state_dir / "audit.sqlite"

    @property
    def audit_state_path(self) -> Path | None:
        """The log's state file; ``None`` leaves it to the SQLite store (``<db>.state``)."""
        if self.audit.state_path is not None or self.audit.store != "postgres":
            return self.audit.state_path
        slug = _UNSAFE_IN_FILE_NAME.sub("-", self.audit.origin).strip("-.") or "shard"
        return self.pipeline.state_dir / f"audit-{slug}.state"

    @property
    def console_users_dir(self) -> Path:
        return self.console.users_dir or self.pipeline.state_dir

    @property
    def replay_schema(self) -> str:
        """The PostgreSQL schema of the shared replay cache (``shared_schema("replay")``)."""
        return self.shared_schema("replay")

    @property
    def replay_path(self) -> Path:
        return self.pipeline.state_dir / "replay.sqlite"

    @property
    def tickets_path(self) -> Path:
        return self.tickets.path or self.pipeline.state_dir / "tickets.sqlite"

    @property
    def risklist_path(self) -> Path:
        """The risk list's log (``<state_dir>/risklist.sqlite``); its origin is
        ``<audit.origin>/risklist``."""
        return self.pipeline.state_dir / "risklist.sqlite"

    @property
    def alerts_path(self) -> Path:
        return self.alerts.path or self.pipeline.state_dir / "alerts.sqlite"

    @classmethod
    def load(cls, path: Path, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Read ``path`` (TOML), apply ``env`` overrides (default ``os.environ``), validate."""
        doc = read_toml(path, what="the gateway config")
        return cls.from_mapping(doc, base_dir=Path(path).resolve().parent, env=env)

    @classmethod
    def from_mapping(
        cls,
        doc: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> GatewayConfig:
        """Build from parsed TOML (a mapping of sections), with ``env`` overrides applied
        (``fedgate.config``: each section is read into its dataclass, whose fields hold the
        defaults)."""
        merged = with_env(doc, os.environ if env is None else env, ENV_PREFIX)
        config = build(cls, merged, base=base_dir or Path.cwd())
        config = replace(
            config,
            telemetry=replace(config.telemetry, log_level=config.telemetry.log_level.upper()),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first option that is out of range."""
        _host_port(self.server.listen, "server.listen")
        if self.server.max_receive_bytes < MAX_BODY_BYTES + 1024:
            raise ConfigError(
                f"server.max_receive_bytes must be at least {MAX_BODY_BYTES + 1024} (the 1 MiB "
                f"body limit plus the envelope), got {self.server.max_receive_bytes}"
            )
        _positive(self.server.grace_period_s, "server.grace_period_s", allow_zero=True)
        if not self.federation.member_id:
            raise ConfigError("federation.member_id must not be empty")
        _positive(self.federation.reload_interval_s, "federation.reload_interval_s", True)
        _positive(self.pipeline.clock_skew_s, "pipeline.clock_skew_s")
        if not 1 <= self.appeals.decision_working_days <= 30:
            raise ConfigError(
                "appeals.decision_working_days must be 1 to 30, got "
                f"{self.appeals.decision_working_days}"
            )
        for day in self.appeals.holidays:
            try:
                date.fromisoformat(day)
            except ValueError:
                raise ConfigError(
                    f"appeals.holidays: {day!r} is not an ISO date such as 2026-10-01"
                ) from None
        _positive(self.pipeline.reconcile_interval_s, "pipeline.reconcile_interval_s", True)
        if self.pipeline.replay_window_s < 2 * self.pipeline.clock_skew_s:
            raise ConfigError(
                f"pipeline.replay_window_s ({self.pipeline.replay_window_s}) must be at least "
                f"twice pipeline.clock_skew_s ({self.pipeline.clock_skew_s}): a request id must "
                "be remembered for as long as its issued-at can pass the freshness check"
            )
        if self.pipeline.replay_store not in ("", "memory", "sqlite", "postgres"):
            raise ConfigError(
                f'pipeline.replay_store must be "memory", "sqlite" or "postgres", '
                f"got {self.pipeline.replay_store!r}"
            )
        self._validate_shared()
        if self.pipeline.replay_synchronous not in ("normal", "full"):
            raise ConfigError(
                f'pipeline.replay_synchronous must be "normal" or "full", '
                f"got {self.pipeline.replay_synchronous!r}"
            )
        if not self.audit.origin or "\n" in self.audit.origin:
            raise ConfigError("audit.origin must be one non-empty line")
        self._validate_audit_store()
        _positive(self.routing.timeout_s, "routing.timeout_s")
        if not 1 <= self.routing.max_attempts <= 10:
            raise ConfigError(
                f"routing.max_attempts must be 1..10, got {self.routing.max_attempts}"
            )
        _positive(self.routing.retry_backoff_s, "routing.retry_backoff_s", allow_zero=True)
        if self.routing.breaker_failures < 1:
            raise ConfigError("routing.breaker_failures must be at least 1")
        _positive(self.routing.breaker_reset_s, "routing.breaker_reset_s")
        for member, endpoint in self.routing.endpoints.items():
            _host_port(endpoint, f"routing.endpoints.{member}")
        _positive(self.policy.reload_interval_ms, "policy.reload_interval_ms", allow_zero=True)
        _positive(self.tickets.poll_interval_s, "tickets.poll_interval_s")
        if self.alerts.keep < 1:
            raise ConfigError("alerts.keep must be at least 1")
        if self.telemetry.prometheus_listen:
            host, _ = _host_port(self.telemetry.prometheus_listen, "telemetry.prometheus_listen")
            if not _is_loopback(host):
                raise ConfigError(
                    f"telemetry.prometheus_listen must be a loopback address (metrics are not "
                    f"authenticated), got {host!r}"
                )
        if self.console.listen:
            host, _ = _host_port(self.console.listen, "console.listen")
            if not _is_loopback(host) and not self.console.secure_cookies:
                raise ConfigError(
                    f"console.listen must be a loopback address (the console speaks plain "
                    f"HTTP), got {host!r}; put it behind an HTTPS proxy and set "
                    "console.secure_cookies = true to serve it elsewhere"
                )
        if self.audit.tiles_listen:
            host, _ = _host_port(self.audit.tiles_listen, "audit.tiles_listen")
            if not _is_loopback(host):
                raise ConfigError(
                    f"audit.tiles_listen must be a loopback address (the tiles hold personal "
                    f"data and are served over plain HTTP), got {host!r}"
                )
        if not 0.0 <= self.telemetry.trace_sample_ratio <= 1.0:
            raise ConfigError(
                "telemetry.trace_sample_ratio must be between 0 and 1, got "
                f"{self.telemetry.trace_sample_ratio}"
            )
        _positive(self.telemetry.diagnose_tail_ms, "telemetry.diagnose_tail_ms", allow_zero=True)
        if self.telemetry.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"telemetry.log_level {self.telemetry.log_level!r} is not a level")

    def _validate_shared(self) -> None:
        shared = self.shared
        if shared.store not in ("local", "postgres"):
            raise ConfigError(f'shared.store must be "local" or "postgres", got {shared.store!r}')
        if shared.schema and not _SCHEMA_NAME.fullmatch(shared.schema + "_outcomes"):
            raise ConfigError(
                f"shared.schema must be a plain PostgreSQL name (letters, digits, _; at most 53), "
                f"got {shared.schema!r}"
            )
        if shared.store == "local":
            if shared.dsn:  # the operator believes the state is shared: say it is not
                raise ConfigError('shared.dsn is set but shared.store is "local"')
            if self.pipeline.replay_store == "postgres" and self.audit.store != "postgres":
                raise ConfigError(
                    'pipeline.replay_store = "postgres" shares the audit store\'s database: set '
                    'audit.store = "postgres" (and audit.dsn) as well, or use [shared] '
                    'store = "postgres" with shared.dsn'
                )
            return
        if self.pipeline.replay_store in ("memory", "sqlite"):
            raise ConfigError(
                f'pipeline.replay_store = "{self.pipeline.replay_store}" is not shared, but '
                'shared.store = "postgres" says the instances share their state: leave '
                'pipeline.replay_store unset (or "postgres")'
            )
        if not self.shared_dsn.strip():
            raise ConfigError(
                'shared.dsn is required with shared.store = "postgres" (unless audit.store = '
                '"postgres" gives audit.dsn)'
            )

    def _validate_audit_store(self) -> None:
        audit = self.audit
        _positive(audit.close_after_idle_days, "audit.close_after_idle_days", allow_zero=True)
        _positive(audit.keep_after_close_days, "audit.keep_after_close_days", allow_zero=True)
        _positive(audit.retention_interval_s, "audit.retention_interval_s", allow_zero=True)
        if audit.store not in ("sqlite", "postgres"):
            raise ConfigError(f'audit.store must be "sqlite" or "postgres", got {audit.store!r}')
        if audit.store == "sqlite":
            # A DSN here means the operator believes the log is shared: say it is not.
            if audit.dsn:
                raise ConfigError('audit.dsn is set but audit.store is "sqlite"')
            return
        if not audit.dsn.strip():
            raise ConfigError('audit.dsn is required with audit.store = "postgres"')
        if audit.path is not None:
            raise ConfigError(
                'audit.path names a SQLite file; not used with audit.store = "postgres"'
            )
        if not _SCHEMA_NAME.fullmatch(audit.schema):
            raise ConfigError(
                f"audit.schema must be a plain PostgreSQL name (letters, digits, _; at most 63), "
                f"got {audit.schema!r}"
            )


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _positive(value: float, option: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "greater than 0"
        raise ConfigError(f"{option} must be {bound}, got {value}")


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{option} must be host:port, got {value!r}")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
