"""Several gateway instances from one config file: worker processes on one address or several.

    python -m gateway.server --config gateway.toml --workers 2                  # one address
    python -m gateway.server --config gateway.toml --listen 10.0.0.5:20051 \\
                                                   --listen 10.0.0.5:20052        # one each

A supervisor process starts one worker process per instance (``python -m gateway.server
--instance I``), forwards SIGTERM and SIGINT to them (each drains, see ``Gateway.stop``),
restarts a worker that dies on its own, and exits 0 once every worker has drained and exited 0.
Workers on one address share its port through ``SO_REUSEPORT`` (gRPC sets it when asked,
``grpc.so_reuseport``); the kernel spreads new connections over them.

Each worker is a whole gateway instance (``worker_config``): its own audit shard (origin
``<audit.origin>/worker-<I>``), its own state directory (``<state_dir>/worker-<I>``: the log's
rollback tripwire, tickets, alerts, its risk-list log), and the console, tile and Prometheus
ports of the config moved up by ``I``. Console accounts stay in the config's state directory,
so that ``fedgate audit add-user --state DIR`` serves every worker.

Several instances MUST share what a single one keeps to itself, or a second instance would
accept a replay the first refused: ``check_shared`` refuses to start workers unless the audit
log and the shared state are on PostgreSQL (``audit.store`` and ``[shared] store``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig

__all__ = [
    "WorkerPlan",
    "check_shared",
    "plan_workers",
    "run_supervisor",
    "worker_config",
    "worker_origin",
]

_log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits before restarting a worker that died on its own, growing with each death in a row."""
CONFIG_ERROR_STATUS = 2
"""A worker's exit status for a config it refuses: restarting it cannot help."""


def worker_origin(origin: str, index: int) -> str:
    """The audit shard (log origin) of worker ``index`` of a gateway whose origin is ``origin``."""
    return f"{origin}/worker-{index}"


def _moved(address: str, by: int) -> str:
    if not address:
        return address
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + by}"


def check_shared(config: GatewayConfig) -> None:
    """Raise ``ConfigError`` unless ``config`` may run as one of several instances.

    The shared state and the audit shards MUST be in the shared PostgreSQL database; options
    that name one file for the whole gateway MUST be left to each worker's state directory."""
    if config.audit.store != "postgres":
        raise ConfigError(
            'several gateway instances need audit.store = "postgres" (one shard each in a '
            "shared database), not " + repr(config.audit.store)
        )
    if not config.is_shared:
        raise ConfigError(
            'several gateway instances need shared.store = "postgres": state of their own '
            "would let one instance accept a replay or an order another already refused"
        )
    for option, value in (
        ("audit.state_path", config.audit.state_path),
        ("tickets.path", config.tickets.path),
        ("alerts.path", config.alerts.path),
    ):
        if value is not None:
            raise ConfigError(
                f"{option} names one file for every worker: leave it unset (each worker keeps "
                "its own in its state directory)"
            )


def worker_config(config: GatewayConfig, *, index: int, listen: str) -> GatewayConfig:
    """The config of worker ``index`` listening on ``listen`` (see the module docstring)."""
    if index < 0:
        raise ConfigError(f"--instance must be 0 or more, got {index}")
    check_shared(config)
    worker = replace(
        config,
        server=replace(config.server, listen=listen),
        pipeline=replace(config.pipeline, state_dir=config.pipeline.state_dir / f"worker-{index}"),
        audit=replace(
            config.audit,
            origin=worker_origin(config.audit.origin, index),
            tiles_listen=_moved(config.audit.tiles_listen, index),
        ),
        console=replace(
            config.console,
            listen=_moved(config.console.listen, index),
            users_dir=config.console_users_dir,
        ),
        telemetry=replace(
            config.telemetry, prometheus_listen=_moved(config.telemetry.prometheus_listen, index)
        ),
    )
    worker.validate()
    return worker


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """Where each worker listens, and whether it shares its port with another worker."""

    listens: tuple[str, ...]

    def shares_port(self, index: int) -> bool:
        return self.listens.count(self.listens[index]) > 1


def plan_workers(
    config: GatewayConfig, *, workers: int | None, listens: Sequence[str]
) -> WorkerPlan:
    """The workers ``--workers`` and ``--listen`` ask for: N workers on one address (the config's
    ``server.listen`` unless one ``--listen``), or one worker per ``--listen``. Raises
    ``ConfigError`` naming the flag."""
    count = workers if workers is not None else max(1, len(listens))
    if count < 1:
        raise ConfigError(f"--workers must be at least 1, got {count}")
    if len(listens) > 1 and len(listens) != count:
        raise ConfigError(
            f"--workers {count} does not match the {len(listens)} --listen addresses: give one "
            "address (every worker shares it) or one per worker"
        )
    chosen = (
        tuple(listens)
        if len(listens) > 1
        else (listens[0] if listens else config.server.listen,) * count
    )
    plan = WorkerPlan(chosen)
    for i, address in enumerate(chosen):
        if plan.shares_port(i) and address.rpartition(":")[2] == "0":
            raise ConfigError(
                f"--listen {address}: workers sharing an address need a fixed port, not 0"
            )
    return plan


class _Worker:
    def __init__(self, argv: list[str], index: int) -> None:
        self.argv = argv
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.deaths = 0
        self.restart_at: float | None = None
        self.spawned_at = 0.0

    def spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)  # noqa: S603 - ours
        self.restart_at = None
        self.spawned_at = time.monotonic()
        _log.info(
            "gateway worker started",
            extra={"fields": {"worker": self.index, "pid": self.proc.pid}},
        )


def run_supervisor(config_path: Path, config: GatewayConfig, plan: WorkerPlan) -> int:
    """Run one worker process per entry of ``plan`` until SIGTERM or SIGINT; returns the exit
    status (0 when every worker drained and exited 0).

    Every worker's config is checked here first (``worker_config``), so that a bad config stops
    the start with its message rather than in N restarting children."""
    for i, listen in enumerate(plan.listens):
        worker_config(config, index=i, listen=listen)
    workers = []
    for i, listen in enumerate(plan.listens):
        argv = [
            sys.executable,
            "-m",
            "gateway.server",
            "--config",
            str(config_path),
            "--instance",
            str(i),
            "--listen",
            listen,
        ]
        if plan.shares_port(i):
            argv.append("--share-port")
        workers.append(_Worker(argv, i))
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.spawn()
        status = _supervise(workers, stopping)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_all(workers, grace=config.server.grace_period_s + 10.0)
    codes = [w.proc.returncode for w in workers if w.proc is not None]
    # -SIGTERM: the worker was still starting (its handler not yet installed), so it held no
    # exchange; every worker that served drains and exits 0.
    if status == 0 and any(code not in (0, -signal.SIGTERM) for code in codes):
        status = 1
    return status


def _supervise(workers: list[_Worker], stopping: threading.Event) -> int:
    """Watch the workers until told to stop; restart those that die on their own."""
    while not stopping.wait(0.2):
        now = time.monotonic()
        for worker in workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                if proc is not None and now - worker.spawned_at > 30:
                    worker.deaths = 0  # up for a while: the next death starts the backoff anew
                continue
            if worker.restart_at is None:
                if proc.returncode == CONFIG_ERROR_STATUS:
                    _log.error("gateway worker %d refused its config: stopping", worker.index)
                    return CONFIG_ERROR_STATUS
                wait = RESTART_BACKOFF_S[min(worker.deaths, len(RESTART_BACKOFF_S) - 1)]
                worker.deaths += 1
                worker.restart_at = now + wait
                _log.warning(
                    "gateway worker %d exited with status %s: restarting in %.1f s",
                    worker.index,
                    proc.returncode,
                    wait,
                    extra={"fields": {"worker": worker.index, "status": proc.returncode}},
                )
            elif now >= worker.restart_at:
                worker.spawn()
    return 0


def _stop_all(workers: list[_Worker], *, grace: float) -> None:
    """SIGTERM every worker (each drains), wait up to ``grace`` seconds, then SIGKILL."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
