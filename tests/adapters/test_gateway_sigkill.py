"""Fault test: the gateway process is SIGKILLed 5 times during a bounded burst of orders and
queries (real gateway and bank node processes, a real witness). After each restart every
allowed request leg has its response leg, ``fedgate audit verify`` passes, every receipt handed
out so far is provable in the log, and no account was stopped more than twice.

Bounded: 5 rounds of at most 0.7 s of traffic from 4 workers; 6 gateway starts dominate
(about 30-60 s on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.config import NodeConfig
from adapters.witness import WitnessNode
from fedgate import merkle
from fedgate.audit_entry import RequestLeg, ResponseLeg, decode_entry
from fedgate.cli import main as fedgate_main
from fedgate.client import FedgateClient
from fedgate.cosigned import open_log_checkpoint
from fedgate.errors import FedgateError
from fedgate.evidence import log_verifiers
from fedgate.registry import Registry
from fedgate.testing import free_port
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2
from gateway.audit.sqlite_store import SqliteDatabase

ORIGIN = "fedgate.test/sigkill/shard-0"
ROUNDS = 5
WORKERS = 4
POLICE = MemberId("police.gd.afc")
BANK = MemberId("bank.icbc")
PBOC = MemberId("pboc.gz")


def _free() -> str:
    return f"127.0.0.1:{free_port()}"


class Proc:
    """A child process started with ``python -m``, killed and restarted by the test."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, fed_dir: Path, endpoint: str, server_name: str) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", *self.args, stdout=log, stderr=log
            )
        creds = MemberCredentials.load(fed_dir, POLICE)
        async with grpc.aio.secure_channel(
            endpoint, channel_credentials(creds), options=channel_options(MemberId(server_name))
        ) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.args} exited: {self.log.read_text()[-3000:]}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.args} did not come up: {self.log.read_text()[-3000:]}")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), 10) == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def federation(
    fed_dir: Path, world: Any, tmp_path: Path
) -> AsyncIterator[tuple[Proc, str, Path, Path]]:
    node_endpoint, gateway_endpoint = _free(), _free()
    node_config = NodeConfig(
        member_id=BANK,
        federation_dir=fed_dir,
        state_dir=tmp_path / "node",
        listen=node_endpoint,
        staff=("icbc.zhang",),
        backend_path=world.database("bank.icbc"),
        gateway_endpoint=gateway_endpoint,
    )
    (tmp_path / "node.toml").write_text(node_config.to_toml(), encoding="utf-8")
    node = Proc(["adapters", "--config", str(tmp_path / "node.toml")], tmp_path / "node.log")
    witness = WitnessNode(
        federation=fed_dir, member=PBOC, state=tmp_path / "pboc", origins=[ORIGIN], listen=_free()
    )
    await witness.start()
    state = tmp_path / "gateway"
    config = tmp_path / "gateway.toml"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f'listen = "{gateway_endpoint}"',
                "grace_period_s = 1.0",
                "[federation]",
                f'dir = "{fed_dir}"',
                "reload_interval_s = 0",
                "[pipeline]",
                f'state_dir = "{state}"',
                "[audit]",
                f'origin = "{ORIGIN}"',
                'witnesses = ["pboc.gz"]',
                "[routing]",
                "timeout_s = 5.0",
                f'endpoints = {{ "bank.icbc" = "{node_endpoint}", '
                f'"pboc.gz" = "{witness.listen}" }}',
                "[quotas]",
                "officer_per_minute = 100000",
                "officer_burst = 10000",
                "member_per_minute = 100000",
                "member_burst = 10000",
                "[telemetry]",
                'log_level = "WARNING"',
            ]
        ),
        encoding="utf-8",
    )
    gateway = Proc(["gateway.server", "--config", str(config)], tmp_path / "gateway.log")
    try:
        await node.start(fed_dir, node_endpoint, "bank.icbc")
        yield gateway, gateway_endpoint, state / "audit.sqlite", world.database("bank.icbc")
    finally:
        await gateway.stop()
        await node.stop()
        await witness.stop(0)


async def _burst(
    kit: Any, client: FedgateClient, hops: list[Any], stop: asyncio.Event, receipts: list[Any]
) -> None:
    """One worker: stop-payments on a few accounts and account queries until ``stop``."""
    rng = random.Random()
    while not stop.is_set():
        hop = rng.choice(hops)
        if rng.random() < 0.6:
            request = kit.stop_request(hop)
        else:
            request = kit.request("account_holder")
            request.account_holder.account_number = hop.to_account
        try:
            answer = await client.ask(request, timeout=5.0)
        except (FedgateError, grpc.aio.AioRpcError):
            await asyncio.sleep(0.01)  # refused, or the gateway is down: go on
            continue
        receipts.append(answer.receipt)


def _legs(db_path: Path) -> tuple[dict[int, RequestLeg], dict[int, list[ResponseLeg]], list[bytes]]:
    db = SqliteDatabase(db_path, origin=ORIGIN, writer=False)
    try:
        size = db.next_index()
        leaves = db.leaves(0, size)
        hashes = db.leaf_hashes(0, size)
    finally:
        db.close()
    requests: dict[int, RequestLeg] = {}
    responses: dict[int, list[ResponseLeg]] = {}
    for i, leaf in enumerate(leaves):
        entry = decode_entry(leaf)
        if isinstance(entry, RequestLeg) and entry.decision == "allowed":
            requests[i] = entry
        elif isinstance(entry, ResponseLeg):
            responses.setdefault(entry.request_leaf_index, []).append(entry)
    return requests, responses, hashes


def _stops_per_account(
    requests: dict[int, RequestLeg], responses: dict[int, list[ResponseLeg]]
) -> Counter[str]:
    stops: Counter[str] = Counter()
    for i, request in requests.items():
        if request.action == "stop_payment" and any(r.status == "ok" for r in responses[i]):
            stops[request.subjects[0]] += 1
    return stops


class TestGatewaySigkill:
    async def test_five_kills_during_a_burst_lose_nothing(
        self, kit: Any, fed_dir: Path, federation: tuple[Proc, str, Path, Path]
    ) -> None:
        gateway, endpoint, audit_db, bank_db = federation
        registry = Registry.load_dir(fed_dir)
        hops = list(kit.hops_into("bank.icbc"))[:3]
        receipts: list[envelope_pb2.AuditReceipt] = []
        reconciled = 0
        rng = random.Random(10)
        for round_ in range(ROUNDS + 1):
            await gateway.start(fed_dir, endpoint, "gateway")
            # Straight after a restart, before any new traffic: the invariants.
            requests, responses, hashes = _legs(audit_db)
            missing = sorted(set(requests) - set(responses))
            assert missing == [], f"request legs without a response leg: {missing}"
            reconciled += sum(
                r.detail.startswith("reconciled: ") for rs in responses.values() for r in rs
            )
            verified = await asyncio.to_thread(
                fedgate_main,
                ["audit", "verify", "--db", str(audit_db), "--federation", str(fed_dir),
                 "--quiet"],
            )  # fmt: skip
            assert verified == 0
            tree = merkle.MerkleTree.from_leaf_hashes(hashes)
            keys = log_verifiers(registry, ORIGIN)
            for receipt in receipts:
                cp = open_log_checkpoint(receipt.checkpoint, origin=ORIGIN, log_keys=keys)
                assert cp.size == receipt.tree_size <= tree.size
                assert tree.root(cp.size) == cp.root_hash
                assert hashes[receipt.leaf_index] == receipt.leaf_hash
                merkle.verify_inclusion(
                    receipt.leaf_hash,
                    receipt.leaf_index,
                    receipt.tree_size,
                    list(receipt.inclusion_proof),
                    cp.root_hash,
                )
            stops = _stops_per_account(requests, responses)
            assert all(n <= 2 for n in stops.values()), stops
            if round_ == ROUNDS:
                break
            # A burst, cut by SIGKILL after a random moment.
            client = FedgateClient.from_federation(fed_dir, POLICE, endpoint=endpoint)
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(_burst(kit, client, hops, stop, receipts))
                for _ in range(WORKERS)
            ]
            await asyncio.sleep(rng.uniform(0.2, 0.7))
            await gateway.kill()
            stop.set()
            await asyncio.gather(*workers)
            await client.close()

        assert receipts, "the burst got no answer at all"
        # The bank itself never stopped an account more than twice.
        bank = sqlite3.connect(f"file:{bank_db}?mode=ro", uri=True)
        try:
            per_account = bank.execute(
                "SELECT account_number, COUNT(*) + SUM(extensions) FROM stop_payments "
                "GROUP BY account_number"
            ).fetchall()
        finally:
            bank.close()
        assert all(n <= 2 for _, n in per_account), per_account
        print(f"\n{len(receipts)} answers, {reconciled} response legs reconciled after kills")
