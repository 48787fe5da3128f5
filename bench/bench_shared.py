"""Shared state on PostgreSQL against local state: the same pipeline, side by side in one run.

Two gateway processes in front of one agency node, identical but for ``[shared] store``:
``"local"`` (replay cache, recorded outcomes and quotas in the process's memory) and
``"postgres"`` (the same state in PostgreSQL at ``FEDGATE_PG_DSN``, default the local test
server, in schemas of this run's own, dropped afterwards). Both keep their audit log in SQLite,
so the difference is the shared state alone. The client, in this process, sends pre-signed
account-holder queries (a personal-data query: replay check, outcome claim and record, quota
take) with ``CONCURRENCY`` in flight; phases alternate local / shared so that drift in the
machine's state hits both alike.

- ``pg_shared_state_overhead``: shared-state throughput ÷ local-state throughput (1.0: free).
- ``shared_qps``, ``local_qps``: completed calls per second at the same concurrency (absolute
  figures on the 2-core development VM shared with other work; the ratio is the figure).
- ``shared_state_cpu_us_per_request``, ``local_state_cpu_us_per_request``: the gateway
  process's own CPU time per request (PostgreSQL's server processes not included).

Quotas in PostgreSQL rather than Redis: there is no Redis client among the pinned packages, and
the quota take is one short transaction on rows the instance locks for microseconds; this module
measures what PostgreSQL costs in the pipeline, which is the decision's evidence.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.bench_pipeline import BANK, _channel, _closed_loop, _Envelopes, _Process
from fedgate.pki import init_federation
from gateway.config import SHARED_STORES

__all__ = ["run"]

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_UNLIMITED = {
    "officer_per_minute": 1e9,
    "officer_burst": 10**9,
    "member_per_minute": 1e9,
    "member_burst": 10**9,
}


async def _gateway_main(
    fed: Path, state: Path, node: str, shared: dict[str, str], conn: Any
) -> None:
    from gateway.config import GatewayConfig
    from gateway.server import Gateway

    config = GatewayConfig.from_mapping(
        {
            "federation": {"dir": str(fed), "reload_interval_s": 0},
            "pipeline": {"state_dir": str(state)},
            "server": {"listen": "127.0.0.1:0"},
            "routing": {"endpoints": {BANK: node}},
            "quotas": _UNLIMITED,
            "shared": shared,
        },
        env={},
    )
    gateway = await Gateway.start(config)
    conn.send(gateway.port)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, conn.recv)) == "cpu":
        conn.send(time.process_time())
    await gateway.stop(1.0)


def _gateway_child(fed: str, state: str, node: str, shared: dict[str, str], conn: Any) -> None:
    asyncio.run(_gateway_main(Path(fed), Path(state), node, shared, conn))


class _Gateway(_Process):
    """A gateway process with its own ``[shared]`` section (``_Process``'s protocol)."""

    def __init__(self, fed: Path, state: Path, node: str, shared: dict[str, str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_gateway_child, args=(str(fed), str(state), node, shared, child), daemon=True
        )
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("the gateway process did not start")
        self.endpoint = f"127.0.0.1:{self._conn.recv()}"
        self.pid = self._process.pid


async def _measure(
    quick: bool, fed: Path, local: _Process, shared: _Process
) -> dict[str, tuple[float, str]]:
    envelopes = _Envelopes(fed)
    rounds, seconds = (1, 2.0) if quick else (4, 5.0)
    per_phase = int(seconds * (2_000 if quick else 6_000))
    processes = {"local": local, "shared": shared}
    channels = {name: _channel(fed, p.endpoint) for name, p in processes.items()}
    totals = {name: [0, 0.0, 0.0] for name in processes}
    try:
        for channel in channels.values():  # warm up connections, caches and pools
            await _closed_loop(channel, envelopes.make(200), 0.5)
        for _ in range(rounds):
            for name in ("local", "shared"):
                bodies = envelopes.make(per_phase)
                cpu_before = processes[name].cpu_seconds()
                done, took = await _closed_loop(channels[name], bodies, seconds)
                totals[name][0] += done
                totals[name][1] += took
                totals[name][2] += processes[name].cpu_seconds() - cpu_before
    finally:
        for channel in channels.values():
            await channel.close(None)
    qps = {name: t[0] / t[1] for name, t in totals.items()}
    cpu_us = {name: t[2] / t[0] * 1e6 for name, t in totals.items()}
    return {
        "pg_shared_state_overhead": (qps["shared"] / qps["local"], "ratio"),
        "shared_qps": (qps["shared"], "req/s"),
        "local_qps": (qps["local"], "req/s"),
        "shared_state_cpu_us_per_request": (cpu_us["shared"], "us"),
        "local_state_cpu_us_per_request": (cpu_us["local"], "us"),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """Measure local and shared state side by side; see the module docstring."""
    dsn = os.environ.get("FEDGATE_PG_DSN", DEFAULT_PG_DSN)
    prefix = f"bench_shared_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-shared-") as tmp:
        root = Path(tmp)
        fed = init_federation(root / "fed", now=datetime.now(UTC) - timedelta(hours=1))
        node = _Process("node", fed, root / "node")
        local = shared = None
        try:
            local = _Gateway(fed, root / "local", node.endpoint, {"store": "local"})
            shared = _Gateway(
                fed,
                root / "shared",
                node.endpoint,
                {"store": "postgres", "dsn": dsn, "schema": prefix},
            )
            return asyncio.run(_measure(quick, fed, local, shared))
        finally:
            for process in (shared, local, node):
                if process is not None:
                    process.stop()
            with psycopg.connect(dsn, autocommit=True) as admin:
                for store in SHARED_STORES:
                    admin.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                            sql.Identifier(f"{prefix}_{store}")
                        )
                    )


if __name__ == "__main__":
    for figure, (value, unit) in run(quick=True).items():
        print(f"{figure}: {value:.6g} {unit}")
