"""Fault tests of several gateway instances on one PostgreSQL schema (real processes, real
PostgreSQL, a real bank node and witness, loopback only).

- SIGKILL one of three instances under a steady mix of queries and stop-payment orders: the
  client (one channel over the three addresses) carries on through the other two; after the
  killed one restarts and reconciles, every acknowledged request has both legs, no request ran
  twice, no account was stopped more than twice, every shard verifies and is witnessed.
- PostgreSQL unreachable for a few seconds under load (a loopback proxy in front of the shared
  server is cut: the server itself is never touched): every instance fails closed
  (``AUDIT_UNAVAILABLE``; nothing reaches the node without its request leg in the log), then
  serves again by itself; nothing acknowledged is lost.

Bounded: a few seconds of traffic from 4 tasks per test, at most 3 instance starts each.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from adapters.up.instances import PgTarget
from adapters.witness import WitnessNode
from fedgate.cli import main as fedgate_main
from fedgate.client import Answer, FedgateClient
from fedgate.errors import FedgateError
from fedgate.testing import free_port
from fedgate.types import MemberId
from tests.adapters._scaleout import (
    POLICE,
    Cluster,
    TcpProxy,
    drop_schemas,
    node_requests,
    read_legs,
)

PBOC = MemberId("pboc.gz")
WORKERS = 4


@dataclass
class Traffic:
    """What the client tasks saw: answers (acknowledged) and refusals, with their times."""

    answers: list[tuple[float, Answer]] = field(default_factory=list)
    errors: list[tuple[float, FedgateError]] = field(default_factory=list)

    def answered_between(self, start: float, stop: float) -> list[Answer]:
        return [a for t, a in self.answers if start <= t <= stop]


async def _mix(
    kit: Any, client: FedgateClient, stop: asyncio.Event, traffic: Traffic, seed: int
) -> None:
    """Stop-payments on a few accounts and account queries, until ``stop``."""
    rng = random.Random(seed)
    hops = kit.hops_into("bank.icbc")[:3]
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        hop = rng.choice(hops)
        if rng.random() < 0.4:
            request = kit.stop_request(hop)
        else:
            request = kit.request("account_holder")
            request.account_holder.account_number = hop.to_account
        try:
            answer = await client.ask(request, timeout=5.0)
        except FedgateError as exc:
            traffic.errors.append((loop.time(), exc))
            await asyncio.sleep(0.02)
            continue
        traffic.answers.append((loop.time(), answer))


async def _run(
    kit: Any, client: FedgateClient, traffic: Traffic, *, during: float, seed: int
) -> None:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_mix(kit, client, stop, traffic, seed * 10 + i)) for i in range(WORKERS)
    ]
    await asyncio.sleep(during)
    stop.set()
    await asyncio.gather(*tasks)


def _verify_all(pg: PgTarget, fed_dir: Path) -> int:
    return fedgate_main(
        ["audit", "verify", "--pg", pg.dsn, "--schema", pg.schema, "--federation", str(fed_dir),
         "--quiet"]
    )  # fmt: skip


def _bank_stops(bank_db: Path) -> list[tuple[str, int]]:
    bank = sqlite3.connect(f"file:{bank_db}?mode=ro", uri=True)
    try:
        return bank.execute(
            "SELECT account_number, COUNT(*) + SUM(extensions) FROM stop_payments "
            "GROUP BY account_number"
        ).fetchall()
    finally:
        bank.close()


def _check_acknowledged(traffic: Traffic, cluster: Cluster) -> None:
    """Every acknowledged request has its request leg and an answered response leg; no request
    ran twice; no account stopped more than twice; nothing left open."""
    legs = read_legs(cluster.pg, cluster.origins)
    assert legs.orphans == [], f"request legs without a response leg: {legs.orphans}"
    for _, answer in traffic.answers:
        request_id = answer.response.request_id
        assert len(legs.requests.get(request_id, [])) == 1, request_id
        assert legs.responses.get(request_id), request_id
    for request_id in legs.requests:
        assert legs.executed(request_id) <= 1, request_id
        assert len(legs.requests[request_id]) == 1, f"{request_id} taken twice"
    stops = legs.stops_per_account()
    assert all(n <= 2 for n in stops.values()), stops


def _forwarded_only_when_logged(cluster: Cluster, node_state: Path) -> None:
    """Nothing reached the node without its request leg in the log, at the index it was told."""
    legs = read_legs(cluster.pg, cluster.origins)
    for request_id, origin, index in node_requests(node_state):
        assert (origin, index) in {(o, i) for o, i, _ in legs.requests.get(request_id, [])}, (
            request_id,
            origin,
            index,
        )


@pytest.fixture
async def bank(agency_node: Any) -> Any:
    return await agency_node("bank.icbc")


@pytest.fixture
async def witness(fed_dir: Path, tmp_path: Path) -> AsyncIterator[WitnessNode]:
    origins = [f"fedgate.test/scale/shard-{i}" for i in range(3)]
    node = WitnessNode(
        federation=fed_dir,
        member=PBOC,
        state=tmp_path / "pboc",
        origins=origins,
        listen=f"127.0.0.1:{free_port()}",
    )
    await node.start()
    yield node
    await node.stop(0)


class TestKillOneOfThree:
    async def test_clients_carry_on_and_every_shard_verifies(
        self,
        kit: Any,
        fed_dir: Path,
        tmp_path: Path,
        pg: Any,
        bank: Any,
        witness: WitnessNode,
        world: Any,
    ) -> None:
        target = PgTarget(dsn=pg.dsn, schema=pg.schema)
        cluster = Cluster(
            fed_dir, tmp_path, target, {"bank.icbc": bank.endpoint}, witness_listen=witness.listen
        )
        try:
            for i in range(3):
                await cluster.start(cluster.add(i))
            traffic = Traffic()
            client = FedgateClient.from_federation(fed_dir, POLICE, endpoint=cluster.endpoints)
            try:
                loop = asyncio.get_running_loop()
                load = asyncio.create_task(_run(kit, client, traffic, during=3.0, seed=1))
                await asyncio.sleep(1.0)
                victim = cluster.instances[1]
                await victim.proc.kill()
                killed_at = loop.time()
                await load
                ended_at = loop.time()
            finally:
                await client.close()

            after = traffic.answered_between(killed_at + 0.5, ended_at)
            assert after, "no answer after the kill: the clients did not carry on"
            origins = {a.receipt.log_origin for a in after}
            assert victim.origin not in origins
            assert origins <= set(cluster.origins)
            before = {a.receipt.log_origin for a in traffic.answered_between(0, killed_at)}
            assert len(before) >= 2, before  # the load was spread before the kill

            await cluster.start(victim)  # reconciles its open legs before it serves
            await asyncio.to_thread(_check_acknowledged, traffic, cluster)
            await asyncio.to_thread(
                _forwarded_only_when_logged, cluster, tmp_path / "state" / "bank.icbc"
            )
            assert all(n <= 2 for _, n in _bank_stops(world.database("bank.icbc")))
            assert await asyncio.to_thread(_verify_all, target, fed_dir) == 0
            # Every shard's checkpoints reach the witness.
            deadline = loop.time() + 20
            while any(witness.witness.latest_note(o) is None for o in cluster.origins):
                assert loop.time() < deadline, "a shard was never cosigned"
                await asyncio.sleep(0.1)
            # A receipt is upgraded by the instance that writes its shard, whichever it is.
            client = FedgateClient.from_federation(fed_dir, POLICE, endpoint=cluster.endpoints)
            try:
                for origin in sorted(origins):
                    receipt = next(a.receipt for a in after if a.receipt.log_origin == origin)
                    upgraded = await client.cosign_receipt(receipt, wait_s=5.0)
                    assert upgraded.cosigned_checkpoint.startswith(origin + "\n")
            finally:
                await client.close()
        finally:
            await cluster.stop_all()
            drop_schemas(target)


class TestDatabaseOutage:
    async def test_every_instance_fails_closed_then_recovers(
        self, kit: Any, fed_dir: Path, tmp_path: Path, pg: Any, bank: Any
    ) -> None:
        info = conninfo_to_dict(pg.dsn)
        proxy = await TcpProxy(
            (str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
        ).start()
        proxied = make_conninfo(pg.dsn, host="127.0.0.1", port=str(proxy.port))
        target = PgTarget(dsn=pg.dsn, schema=pg.schema)
        cluster = Cluster(fed_dir, tmp_path, target, {"bank.icbc": bank.endpoint})
        try:
            instances = [cluster.add(i, dsn=proxied, grace_s=3.0) for i in range(2)]
            for instance in instances:
                await cluster.start(instance)
            traffic = Traffic()
            client = FedgateClient.from_federation(fed_dir, POLICE, endpoint=cluster.endpoints)
            loop = asyncio.get_running_loop()
            try:
                load = asyncio.create_task(_run(kit, client, traffic, during=6.0, seed=2))
                await asyncio.sleep(1.0)
                proxy.cut()
                cut_at = loop.time()
                await asyncio.sleep(3.0)
                proxy.restore()
                restored_at = loop.time()
                await load
            finally:
                await client.close()

            reasons = {e.reason for t, e in traffic.errors if cut_at <= t <= restored_at + 1}
            assert "AUDIT_UNAVAILABLE" in reasons, reasons
            # Each instance serves again by itself (bounded), through its own address.
            waiting: set[str] = set()
            for instance in instances:
                single = FedgateClient.from_federation(fed_dir, POLICE, endpoint=instance.endpoint)
                try:
                    deadline = loop.time() + 30
                    while True:
                        request = kit.request("account_holder")
                        request.account_holder.account_number = kit.hops_into("bank.icbc")[
                            0
                        ].to_account
                        try:
                            answer = await single.ask(request, timeout=5.0)
                        except FedgateError as exc:
                            assert loop.time() < deadline, f"{instance.origin} never recovered"
                            waiting.add(exc.reason)
                            await asyncio.sleep(0.2)
                            continue
                        traffic.answers.append((loop.time(), answer))
                        assert answer.receipt.log_origin == instance.origin
                        break
                finally:
                    await single.close()
            assert waiting <= {"AUDIT_UNAVAILABLE"}, waiting
            await asyncio.to_thread(
                _forwarded_only_when_logged, cluster, tmp_path / "state" / "bank.icbc"
            )
            # A drain and restart reconciles what the outage left open; then nothing
            # acknowledged is missing.
            for instance in instances:
                instance.proc.signal(signal.SIGTERM)
                assert await instance.proc.wait(30) == 0, instance.proc.tail()
                await cluster.start(instance)
            await asyncio.to_thread(_check_acknowledged, traffic, cluster)
            assert await asyncio.to_thread(_verify_all, target, fed_dir) == 0
        finally:
            await cluster.stop_all()
            await proxy.close()
            drop_schemas(target)
