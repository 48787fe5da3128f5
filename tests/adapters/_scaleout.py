"""Several gateway instances on one PostgreSQL schema, as processes: the harness of the
scale-out tests (drain, failover, database outage) and of ``bench/bench_scaleout.py``.

Every instance's config is written by ``adapters.up.instances.write_instance_config`` (the one
place that says what instances share). ``TcpProxy`` is a loopback proxy the tests can slow down
or cut: in front of a node (a slow exchange) or of PostgreSQL (an outage that never touches the
shared server itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from adapters.up.instances import PgTarget, write_instance_config
from fedgate.audit_entry import RequestLeg, ResponseLeg, decode_entry
from fedgate.testing import free_port
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from gateway.audit.pg_store import PgDatabase
from gateway.config import SHARED_STORES

POLICE = MemberId("police.gd.afc")


class Proc:
    """A child process started with ``python -m``, signalled and restarted by the test."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.args = list(args)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", *self.args, stdout=log, stderr=log, env=self.env
            )

    async def wait_serving(self, fed_dir: Path, endpoint: str, server: str, *, within: float = 60):
        """Poll the health check (bounded) until SERVING; fail with the log if it exits."""
        creds = MemberCredentials.load(fed_dir, POLICE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with grpc.aio.secure_channel(
            endpoint, channel_credentials(creds), options=channel_options(MemberId(server))
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while loop.time() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"{self.args} exited: {self.tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.args} did not come up: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert await self.wait(10) == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class TcpProxy:
    """A loopback TCP proxy to ``target`` that can delay what comes back, or be cut.

    ``delay_s`` holds every chunk from the target that long before passing it on (a slow
    peer); ``cut()`` closes every connection and refuses new ones until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.delay_s = 0.0
        self._open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, delay=False),
            self._pipe(up_reader, writer, delay=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delay: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if delay and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def cut(self) -> None:
        self._open = False
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self._open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def drop_schemas(pg: PgTarget) -> None:
    """Drop the stores that derive their schema from the audit schema (the fixture drops the
    audit schema itself)."""
    with psycopg.connect(pg.dsn, autocommit=True, connect_timeout=3) as conn:
        for store in SHARED_STORES:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(f"{pg.schema}_{store}")
                )
            )


@dataclass
class Instance:
    index: int
    endpoint: str
    origin: str
    config: Path
    proc: Proc


@dataclass
class Cluster:
    """N gateway instances (processes) on one PostgreSQL schema, in front of agency nodes."""

    fed_dir: Path
    root: Path
    pg: PgTarget
    endpoints_of_members: dict[str, str]
    witness_listen: str | None = None
    instances: list[Instance] = field(default_factory=list)

    def add(self, index: int, *, dsn: str | None = None, grace_s: float = 10.0) -> Instance:
        endpoint = f"127.0.0.1:{free_port()}"
        origin = f"fedgate.test/scale/shard-{index}"
        endpoints = dict(self.endpoints_of_members)
        if self.witness_listen:
            endpoints["pboc.gz"] = self.witness_listen
        config = write_instance_config(
            self.root / f"gw{index}" / "gateway.toml",
            listen=endpoint,
            federation_dir=self.fed_dir,
            state_dir=self.root / f"gw{index}",
            origin=origin,
            pg=PgTarget(dsn=dsn or self.pg.dsn, schema=self.pg.schema),
            witnesses=["pboc.gz"] if self.witness_listen else [],
            extra={
                "server": {"grace_period_s": grace_s},
                "federation": {"reload_interval_s": 0},
                "routing": {"timeout_s": 5.0, "endpoints": endpoints},
                "quotas": {
                    "officer_per_minute": 100000,
                    "officer_burst": 10000,
                    "member_per_minute": 100000,
                    "member_burst": 10000,
                },
                "telemetry": {"log_level": "INFO"},
            },
        )
        proc = Proc(["gateway.server", "--config", str(config)], self.root / f"gw{index}.log")
        instance = Instance(index, endpoint, origin, config, proc)
        self.instances.append(instance)
        return instance

    @property
    def endpoints(self) -> list[str]:
        return [i.endpoint for i in self.instances]

    @property
    def origins(self) -> list[str]:
        return [i.origin for i in self.instances]

    async def start(self, instance: Instance) -> None:
        await instance.proc.start()
        await instance.proc.wait_serving(self.fed_dir, instance.endpoint, "gateway")

    async def stop_all(self) -> None:
        for instance in self.instances:
            await instance.proc.stop()


@dataclass
class Legs:
    """Every shard's allowed request legs and response legs, by request id."""

    requests: dict[str, list[tuple[str, int, RequestLeg]]]
    responses: dict[str, list[ResponseLeg]]
    orphans: list[tuple[str, int]]

    def executed(self, request_id: str) -> int:
        return sum(r.status == "ok" for r in self.responses.get(request_id, []))

    def stops_per_account(self) -> Counter[str]:
        stops: Counter[str] = Counter()
        for request_id, legs in self.requests.items():
            for _, _, leg in legs:
                if leg.action == "stop_payment" and self.executed(request_id):
                    stops[leg.subjects[0]] += 1
        return stops


def read_legs(pg: PgTarget, origins: Sequence[str]) -> Legs:
    """Read every leg of ``origins`` (blocking)."""
    requests: dict[str, list[tuple[str, int, RequestLeg]]] = {}
    responses: dict[str, list[ResponseLeg]] = {}
    answered: set[tuple[str, int]] = set()
    allowed: list[tuple[str, int]] = []
    for origin in origins:
        db = PgDatabase(pg.dsn, origin=origin, schema=pg.schema, writer=False)
        try:
            leaves = db.leaves(0, db.next_index())
        finally:
            db.close()
        for i, leaf in enumerate(leaves):
            entry = decode_entry(leaf)
            if isinstance(entry, RequestLeg) and entry.decision == "allowed":
                requests.setdefault(entry.request_id, []).append((origin, i, entry))
                allowed.append((origin, i))
            elif isinstance(entry, ResponseLeg):
                responses.setdefault(entry.request_id, []).append(entry)
                answered.add((origin, entry.request_leaf_index))
    orphans = [leg for leg in allowed if leg not in answered]
    return Legs(requests, responses, orphans)


def node_requests(node_state: Path) -> list[tuple[str, str, int]]:
    """What a node was asked: (request id, log origin, leaf index) of each request it took."""
    db = sqlite3.connect(f"file:{node_state / 'node.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT request_id, log_origin, leaf_index FROM requests").fetchall()
    finally:
        db.close()
    return [(str(r), str(o), int(i)) for r, o, i in rows]
