"""Several gateway instances on one PostgreSQL database: what a second process buys, and how
long clients go without an answer when one of three instances is killed.

What runs where (this machine has 2 cores, shared by every process below and by the other
engineers' work): one bank node process (``python -m adapters``, automatic answers on the
seeded reference backend), three gateway processes (``python -m gateway.server``, each its own
audit shard in one PostgreSQL schema on 127.0.0.1:5432 and the replay cache shared there, every
config written by ``adapters.up.instances``), and this process, the load.

- ``gateway_scaling_2proc``: answers per second of two gateway processes ÷ one, under the same
  closed-loop load (``CONCURRENCY`` ``account_holder`` queries in flight, signed here, sent
  raw, answers not verified so the client costs little), phases alternating one / two / two /
  one in the same run. Two processes can only help as far as the cores are free: the node, the
  load and PostgreSQL take their share of the same two cores, so the ratio says how much of
  the gateway's own work a second process could take on this machine, not what two hosts do.
  ``gateway_throughput_1proc_per_s`` and ``_2proc_per_s`` are the absolute figures beside it;
  ``gateway_cpu_ms_per_answer_1proc`` and ``_2proc`` (user + system CPU of the gateway
  processes per answer, from ``/proc``) say whether the work itself grows when it is split:
  on a machine whose cores are taken by others, they are the steadier figure.
- ``failover_gap_ms``: p99 over ``RUNS`` runs (nearest rank: with 10 runs, the worst) of the
  longest time the client (``FedgateClient`` over the three addresses, 8 queries in flight,
  every answer verified) sees no successful answer, from just before one instance is SIGKILLed
  until two seconds later. The killed instance is started again between runs.

Any refused query outside a kill window fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import grpc
import grpc.aio
import psycopg
from psycopg import sql

from adapters.config import NodeConfig
from adapters.synth import seed_world
from adapters.up import Federation, ProcessSpec, _free_ports, start, stop, wait_healthy
from adapters.up.instances import PgTarget, write_instance_config
from bench.bench_e2e import _active_accounts
from fedgate.client import FedgateClient, gateway_service_config, gateway_target
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.errors import FedgateError
from fedgate.federation import MemberKind
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.testing import percentile, valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, request_pb2

__all__ = ["run"]

BANK = MemberId("bank.icbc")
POLICE = MemberId("police.gd.afc")
GATEWAY = MemberId("gateway")
CONCURRENCY = 32
FAILOVER_CONCURRENCY = 8
RUNS = 10
KILL_AFTER_S = 1.0
WATCH_AFTER_KILL_S = 2.0
_SUBMIT = "/fedgate.v1.GatewayService/Submit"
_OK = request_pb2.RESPONSE_STATUS_OK
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _progress(message: str) -> None:
    print(f"#   {message}", file=sys.stderr, flush=True)


def _processes(root: Path, fed: Path, pg: PgTarget, world_db: Path) -> list[ProcessSpec]:
    # Below the ephemeral range: no outgoing connection (to PostgreSQL, between the
    # processes) can take one of them before its server binds it.
    ports = iter(_free_ports(4))
    node_endpoint = f"127.0.0.1:{next(ports)}"
    node_dir = root / "node"
    node_dir.mkdir()
    (node_dir / "node.toml").write_text(
        NodeConfig(
            member_id=BANK,
            federation_dir=fed,
            state_dir=node_dir,
            listen=node_endpoint,
            staff=("icbc.zhang",),
            backend_path=world_db,
        ).to_toml(),
        encoding="utf-8",
    )
    python = sys.executable
    specs = [
        ProcessSpec(
            member=BANK,
            kind=MemberKind.BANK,
            argv=(python, "-m", "adapters", "--config", str(node_dir / "node.toml")),
            endpoint=node_endpoint,
            console=None,
            log=root / "logs" / "node.log",
        )
    ]
    for i in range(3):
        endpoint = f"127.0.0.1:{next(ports)}"
        config = write_instance_config(
            root / f"gateway-{i}" / "gateway.toml",
            listen=endpoint,
            federation_dir=fed,
            state_dir=root / f"gateway-{i}",
            origin=f"fedgate.local/bench-scaleout/shard-{i}",
            pg=pg,
            extra={
                "server": {"grace_period_s": 2.0},
                "federation": {"reload_interval_s": 0},
                "routing": {"endpoints": {BANK: node_endpoint}},
                "quotas": {
                    "officer_per_minute": 600000,
                    "officer_burst": 100000,
                    "member_per_minute": 600000,
                    "member_burst": 100000,
                },
                "telemetry": {"log_level": "WARNING"},
            },
        )
        specs.append(
            ProcessSpec(
                member=GATEWAY,
                kind=MemberKind.GATEWAY,
                argv=(python, "-m", "gateway.server", "--config", str(config)),
                endpoint=endpoint,
                console=None,
                log=root / "logs" / f"gateway-{i}.log",
                name=f"gateway-{i}",
            )
        )
    return specs


class _Queries:
    """Signed ``account_holder`` queries, made as they are needed."""

    def __init__(self, fed: Path, accounts: list[str]) -> None:
        self._signer = Signer.from_key(MemberCredentials.load(fed, POLICE).signing_key)
        self._accounts = accounts
        self._serial = 0

    def request(self) -> request_pb2.Request:
        self._serial += 1
        return valid_request(
            "account_holder",
            now=datetime.now(UTC),
            requesting_agency=POLICE,
            target=BANK,
            serial=self._serial,
            account_number=self._accounts[self._serial % len(self._accounts)],
        )

    def body(self) -> bytes:
        envelope = sign_envelope(self.request().SerializeToString(), self._signer, Domain.REQUEST)
        return gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString()


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def _throughput(
    fed: Path, endpoints: list[str], queries: _Queries, seconds: float
) -> tuple[int, float]:
    """Answers, and the seconds they took, under ``CONCURRENCY`` queries in flight over
    ``endpoints``."""
    creds = MemberCredentials.load(fed, POLICE)
    channel = grpc.aio.secure_channel(
        gateway_target(endpoints),
        channel_credentials(creds),
        options=[*channel_options(GATEWAY), ("grpc.service_config", gateway_service_config())],
    )
    call = channel.unary_unary(_SUBMIT, None, None)
    answered = 0
    try:
        await channel.channel_ready()
        for _ in range(3 * len(endpoints)):  # every subchannel connected before the clock
            await call(queries.body(), timeout=10)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal answered
            while time.perf_counter() < deadline:
                raw: bytes = await call(queries.body(), timeout=10)
                reply = gateway_service_pb2.SubmitResponse.FromString(raw)
                status = request_pb2.Response.FromString(reply.response.response.body).status
                if status != _OK:
                    raise RuntimeError(f"a query was answered with status {status}")
                answered += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return answered, time.perf_counter() - begin
    finally:
        await channel.close(None)


async def _gap_around_kill(
    fed: Path, endpoints: list[str], queries: _Queries, victim: int
) -> float:
    """The longest stretch (ms) without a successful answer, from the kill to 2 s after it."""
    client = FedgateClient.from_federation(fed, POLICE, endpoint=endpoints)
    answers: list[float] = []
    stop_at = float("inf")
    try:
        for _ in range(2 * len(endpoints)):
            await client.ask(queries.request(), timeout=10)

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                try:
                    await client.ask(queries.request(), timeout=5)
                except FedgateError:
                    await asyncio.sleep(0.01)
                    continue
                answers.append(time.perf_counter())

        tasks = [asyncio.create_task(worker()) for _ in range(FAILOVER_CONCURRENCY)]
        await asyncio.sleep(KILL_AFTER_S)
        killed_at = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        stop_at = killed_at + WATCH_AFTER_KILL_S
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    marks = [killed_at, *sorted(t for t in answers if t > killed_at), stop_at]
    return max(b - a for a, b in itertools.pairwise(marks)) * 1000


def _drop(pg: PgTarget) -> None:
    with psycopg.connect(pg.dsn, autocommit=True, connect_timeout=3) as conn:
        for schema in (pg.schema, f"{pg.schema}_replay"):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """Measure the figures of the module docstring (quick: 3 s phases, one of each, 2 kills;
    full: 10 s phases in the order 1, 2, 2, 1 and 10 kills)."""
    phase_s, order, runs = (3.0, (1, 2), 2) if quick else (10.0, (1, 2, 2, 1), RUNS)
    pg = PgTarget(
        dsn=os.environ.get("FEDGATE_PG_DSN", DEFAULT_PG_DSN),
        schema=f"bench_scaleout_{uuid.uuid4().hex[:10]}",
    )
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-scaleout-") as tmp:
        root = Path(tmp)
        fed = init_federation(root / "federation", now=datetime.now(UTC) - timedelta(hours=1))
        world = seed_world(
            root / "world",
            seed=7,
            banks=(BANK, "bank.ccb"),
            carriers=("carrier.cmcc",),
            customers_per_bank=300,
            fraud_chains=0,
        )
        accounts = _active_accounts(world.database(BANK))
        specs = _processes(root, fed, pg, world.database(BANK))
        federation = Federation(
            state=root, registry=Registry.load_dir(fed), world=world, processes=tuple(specs)
        )
        children = start(federation)
        try:
            try:
                asyncio.run(wait_healthy(federation, children, timeout=120, progress=_progress))
            except FedgateError:
                for spec in specs:
                    _progress(f"{spec.key}: {spec.log.read_text(errors='replace')[-1500:]}")
                raise
            queries = _Queries(fed, accounts)
            gateways = [s.endpoint for s in specs[1:]]
            gateway_pids = [c.pid for c in children[1:]]
            rates: dict[int, list[float]] = {1: [], 2: []}
            cpu: dict[int, list[float]] = {1: [], 2: []}
            for processes in order:
                before = _cpu_s(gateway_pids)
                answered, took = asyncio.run(
                    _throughput(fed, gateways[:processes], queries, phase_s)
                )
                used = _cpu_s(gateway_pids) - before
                rate = answered / took
                _progress(
                    f"{processes} gateway process(es): {rate:.1f} answers/s, gateways' CPU "
                    f"{1000 * used / answered:.2f} ms per answer"
                )
                rates[processes].append(rate)
                cpu[processes].append(1000 * used / answered)
            one = sum(rates[1]) / len(rates[1])
            two = sum(rates[2]) / len(rates[2])
            gaps: list[float] = []
            for i in range(runs):
                victim = 1 + i % 3
                gap = asyncio.run(_gap_around_kill(fed, gateways, queries, children[victim].pid))
                _progress(f"kill {i + 1}/{runs} ({specs[victim].key}): longest gap {gap:.0f} ms")
                gaps.append(gap)
                children[victim].wait()
                with specs[victim].log.open("ab") as log:
                    children[victim] = _restart(specs[victim], log)
                asyncio.run(wait_healthy(federation, children, timeout=120, progress=_progress))
        finally:
            stop(children)
            with contextlib.suppress(psycopg.Error):
                _drop(pg)
    return {
        "gateway_scaling_2proc": (two / one, "x"),
        "gateway_throughput_1proc_per_s": (one, "answers/s"),
        "gateway_throughput_2proc_per_s": (two, "answers/s"),
        "gateway_cpu_ms_per_answer_1proc": (sum(cpu[1]) / len(cpu[1]), "ms"),
        "gateway_cpu_ms_per_answer_2proc": (sum(cpu[2]) / len(cpu[2]), "ms"),
        "failover_gap_ms": (percentile(gaps, 0.99), "ms"),
    }


def _restart(spec: ProcessSpec, log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        spec.argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    for figure, (value, unit) in run(quick="--full" not in sys.argv).items():
        print(f"{figure}: {value:.6g} {unit}")
