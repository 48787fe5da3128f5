"""The shared risk list: local lookups, and propagation from the gateway to every member.

- ``risklist_lookups_per_s``: ``RiskIndex.listed`` (the call the carrier's call/SMS path and
  the bank's transfer path make) on one thread, over a list of 1,000,000 phone numbers, half of
  the looked-up numbers listed and half not, in a shuffled order, divided by the CPU time of
  the looking-up thread (per core: wall time on a shared, loaded machine would count the time
  other processes held the core). Goal ≥ 1,000,000 per core.
- ``risklist_propagation_p99_ms`` (and ``_p50_ms``): from just before police sign a
  ``risk_list_add`` to the moment the LAST of the members' replicas has verified and applied
  it. The gateway runs in its own process (``Gateway.start``, default configuration, durable
  SQLite); every bank and carrier of the default federation follows it from this process, each
  with its own mTLS connection, its own SQLite replica (``synchronous=FULL``) and full batch
  verification (checkpoint signature, consistency proof, recomputed root). Entries are added
  one after the other at ``RATE`` per second. Goal p99 ≤ 1,000 ms.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.risklist import Follower, Replica
from adapters.risklist.replica import ReplicaKeys
from fedgate.client import FedgateClient
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.risklist import RiskIndex, VerifiedBatch, micros, risklist_origin
from fedgate.testing import mobile_number, valid_request
from fedgate.tls import MemberCredentials
from fedgate.types import MemberId
from fedgate.v1 import request_pb2, risklist_pb2

__all__ = ["run"]

PHONE = risklist_pb2.RISK_CATEGORY_PHONE_NUMBER
MEMBERS = (
    "bank.icbc",
    "bank.ccb",
    "bank.abc",
    "bank.gzrcb",
    "carrier.cmcc",
    "carrier.cucc",
    "carrier.ctcc",
)
RATE = 20.0
ORIGIN = "fedgate.example/gateway/shard-0"


def _lookups(entries: int, lookups: int) -> float:
    index = RiskIndex()
    now = micros(datetime.now(UTC))
    expires = now + 10**12
    base = 13_000_000_000
    for i in range(entries):
        index.put(PHONE, str(base + 2 * i), expires)
    rng = random.Random(7)
    probes = [str(base + rng.randrange(2 * entries)) for _ in range(lookups)]
    listed = index.listed
    hits = 0
    started = time.thread_time()  # CPU time of this thread: lookups per core-second
    for value in probes:
        if listed(PHONE, value, now):
            hits += 1
    elapsed = time.thread_time() - started
    if not lookups * 0.4 < hits < lookups * 0.6:
        raise AssertionError(f"expected about half the probes listed, got {hits}/{lookups}")
    return lookups / elapsed


async def _gateway_main(fed: Path, state: Path, conn: Any) -> None:
    from gateway.config import GatewayConfig
    from gateway.server import Gateway

    config = GatewayConfig.from_mapping(
        {
            "federation": {"dir": str(fed), "reload_interval_s": 0},
            "pipeline": {"state_dir": str(state)},
            "server": {"listen": "127.0.0.1:0"},
            "audit": {"origin": ORIGIN},
        },
        env={},
    )
    gateway = await Gateway.start(config)
    conn.send(gateway.port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await gateway.stop(1.0)


def _gateway(fed: str, state: str, conn: Any) -> None:
    asyncio.run(_gateway_main(Path(fed), Path(state), conn))


async def _propagation(fed: Path, root: Path, endpoint: str, count: int) -> list[float]:
    registry = Registry.load_dir(fed)
    keys = ReplicaKeys.from_registry(registry, origin=risklist_origin(ORIGIN))
    applied: dict[str, list[float]] = {}

    def record(batch: VerifiedBatch) -> None:
        at = time.perf_counter()
        for change in batch.changes:
            applied.setdefault(change.request_id, []).append(at)

    followers = []
    for member in MEMBERS:
        replica = Replica.open(root / f"replica-{member}.sqlite", keys=keys)
        replica.on_applied(record)
        f = Follower(
            replica=replica,
            endpoint=endpoint,
            credentials=MemberCredentials.load(fed, MemberId(member)),
        )
        f.start()
        followers.append(f)
    client = FedgateClient.from_federation(fed, MemberId("police.gd.afc"), endpoint=endpoint)
    sent: dict[str, float] = {}
    try:
        for i in range(count):
            request = valid_request("risk_list_add", now=datetime.now(UTC), serial=i)
            request.risk_list_add.value = mobile_number("carrier.cucc", 100_000 + i)
            sent[request.request_id] = time.perf_counter()
            answer = await client.ask(request)
            if answer.response.status != request_pb2.RESPONSE_STATUS_OK:
                raise AssertionError(f"listing refused: {answer.response.detail}")
            await asyncio.sleep(
                max(0.0, 1 / RATE - (time.perf_counter() - sent[request.request_id]))
            )
        deadline = time.monotonic() + 30
        while any(len(applied.get(r, ())) < len(MEMBERS) for r in sent):
            if time.monotonic() > deadline:
                raise AssertionError("not every member applied every change within 30 s")
            await asyncio.sleep(0.05)
    finally:
        await client.close()
        for f in followers:
            await f.stop()
            f.replica.close()
    return [(max(applied[r]) - t0) * 1000 for r, t0 in sent.items()]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def run(quick: bool) -> dict[str, tuple[float, str]]:
    figures: dict[str, tuple[float, str]] = {}
    rate = _lookups(1_000_000, 300_000 if quick else 5_000_000)
    figures["risklist_lookups_per_s"] = (rate, "lookups/s")
    count = 30 if quick else 300
    with tempfile.TemporaryDirectory(prefix="bench-risklist-") as tmp:
        root = Path(tmp)
        fed = init_federation(root / "fed", now=datetime.now(UTC) - timedelta(hours=1))
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_gateway, args=(str(fed), str(root / "gw"), child))
        proc.start()
        try:
            if not parent.poll(60):
                raise AssertionError("the gateway did not start within 60 s")
            port = parent.recv()
            latencies = asyncio.run(_propagation(fed, root, f"127.0.0.1:{port}", count))
        finally:
            parent.send("stop")
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    figures["risklist_propagation_p50_ms"] = (_percentile(latencies, 0.50), "ms")
    figures["risklist_propagation_p99_ms"] = (_percentile(latencies, 0.99), "ms")
    return figures
