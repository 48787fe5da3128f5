"""The chase and fan-out, end to end through a gateway process and one process per bank and
carrier (4 banks, 3 carriers: eight processes on this machine's two cores, with the police
client and the load generator in this process).

- ``chase_recall``: over every planted chain of a generated world, accounts holding the
  victim's money (the world's truth file) that the chase stopped ÷ all of them (goal 1.0);
- ``chase_innocent_stops``: accounts the chase stopped that hold none of it (goal 0);
- ``chase_5hop_p95_ms``: from the start of the chase of a 5-hop chain (with its split, merge,
  cash-out, merchant and mules' own spending) to its last stop-payment answered and verified,
  p95 over the world's 5-hop chains (goal ≤ 1000 ms); ``chase_5hop_p50_ms`` beside it;
- ``fanout_all_p99_ms``: one ``accounts_by_id`` fan-out to every bank and one ``sim_count``
  fan-out to every carrier sent together (3 pairs a second: 21 member exchanges a second, the
  stop-payment bench's order rate), until all seven answers are verified, p99 under the
  stop-payment bench's background load (100 ``account_holder`` queries/s through the same
  gateway to ``bank.icbc``, as there; goal ≤ 100 ms); ``fanout_all_unloaded_p99_ms``
  without it; ``fanout_background_achieved_per_s`` the background answered per second.

Each chain is chased once by the recall run (every chain of the world); the 5-hop timing
chases the 5-hop chains a second time (a second stop-payment on an account is allowed).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.config import ActionMode, NodeConfig
from adapters.synth import FraudChain, World, seed_world, victim_transfer
from adapters.up import Federation, ProcessSpec, start, stop, wait_healthy
from bench.bench_e2e import _Background
from fedgate.chase import Authority, ChaseEngine, ChaseReport
from fedgate.client import FedgateClient
from fedgate.federation import MemberKind
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.testing import chase_authority
from fedgate.testing import free_port as _free_port
from fedgate.testing import percentile as _percentile
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, carrier_pb2, request_pb2

__all__ = ["run"]

BANKS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb")
CARRIERS = ("carrier.cmcc", "carrier.cucc", "carrier.ctcc")
POLICE = MemberId("police.gd.afc")
GATEWAY = MemberId("gateway")
BACKGROUND_RATE = 100.0
FANOUT_RATE = 3.0
"""Fan-out pairs per second: 21 member exchanges a second, the stop-payment bench's order rate
(20/s) on top of the same background load."""


def _progress(message: str) -> None:
    print(f"#   {message}", file=sys.stderr, flush=True)


def _processes(root: Path, fed: Path, world: World) -> tuple[ProcessSpec, ...]:
    members = (*BANKS, *CARRIERS)
    ports = {m: _free_port() for m in (*members, GATEWAY)}
    gateway_endpoint = f"127.0.0.1:{ports[GATEWAY]}"
    python = sys.executable
    specs: list[ProcessSpec] = []
    for member in members:
        node_dir = root / "nodes" / member
        node_dir.mkdir(parents=True)
        toml = node_dir / "node.toml"
        toml.write_text(
            NodeConfig(
                member_id=MemberId(member),
                federation_dir=fed,
                state_dir=node_dir,
                listen=f"127.0.0.1:{ports[member]}",
                gateway_endpoint=gateway_endpoint,
                backend_path=world.database(member),
                modes={"transactions": ActionMode.AUTOMATIC},
                monitor_poll_s=3600.0,
            ).to_toml(),
            encoding="utf-8",
        )
        kind = MemberKind.BANK if member in BANKS else MemberKind.CARRIER
        specs.append(
            ProcessSpec(
                member=MemberId(member),
                kind=kind,
                argv=(python, "-m", "adapters", "--config", str(toml)),
                endpoint=f"127.0.0.1:{ports[member]}",
                console=None,
                log=root / "logs" / f"{member}.log",
            )
        )
    gateway_dir = root / "gateway"
    gateway_dir.mkdir()
    endpoints = ", ".join(f'"{m}" = "127.0.0.1:{ports[m]}"' for m in members)
    (gateway_dir / "gateway.toml").write_text(
        "\n".join(
            [
                "[server]",
                f'listen = "{gateway_endpoint}"',
                "[federation]",
                f'dir = "{fed}"',
                "[pipeline]",
                'state_dir = "."',
                "[audit]",
                'origin = "fedgate.local/bench-chase/shard-0"',
                "[routing]",
                f"endpoints = {{ {endpoints} }}",
                "[quotas]",
                "officer_per_minute = 60000",
                "officer_burst = 10000",
                "member_per_minute = 600000",
                "member_burst = 10000",
                "[telemetry]",
                'log_level = "WARNING"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    specs.append(
        ProcessSpec(
            member=GATEWAY,
            kind=MemberKind.GATEWAY,
            argv=(python, "-m", "gateway.server", "--config", str(gateway_dir / "gateway.toml")),
            endpoint=gateway_endpoint,
            console=None,
            log=root / "logs" / "gateway.log",
        )
    )
    return tuple(specs)


def _authority(serial: int) -> Authority:
    return chase_authority(serial, officer_serial=serial % 50)


async def _chase(client: FedgateClient, chain: FraudChain, serial: int) -> ChaseReport:
    engine = ChaseEngine(client=client, authority=_authority(serial), deadline_s=30.0)
    return await engine.run(victim_transfer(chain))


def _fanout_requests(
    client: FedgateClient, world: World, serial: int
) -> tuple[request_pb2.Request, request_pb2.Request]:
    auth = _authority(1000 + serial)
    person = world.chains[serial % len(world.chains)].victim.id_number
    common = {
        "officer": auth.officer,
        "target": "",
        "case": auth.case,
        "legal_document": auth.query_document,
        "purpose": "全网核查涉案人员名下账户和号码",
        # A wide query about a person is staged (docs/privacy.md): this is stage 1, which
        # every member answers; the details go only to the members that hit.
        "disclosure": request_pb2.Disclosure(stage=request_pb2.DISCLOSURE_STAGE_HITS),
    }
    banks = client.new_request(
        action=bank_pb2.AccountsByIdQuery(id_number=person),
        targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_BANKS),
        **common,  # type: ignore[arg-type]
    )
    carriers = client.new_request(
        action=carrier_pb2.SimCountQuery(id_number=person),
        targets=request_pb2.TargetSet(group=request_pb2.TARGET_GROUP_ALL_CARRIERS),
        **common,  # type: ignore[arg-type]
    )
    return banks, carriers


async def _fanouts(client: FedgateClient, world: World, count: int, first: int) -> list[float]:
    """Latencies (ms) of ``count`` fan-out pairs sent every 1/FANOUT_RATE s; every one of the
    seven answers must arrive, verified."""
    latencies: list[float] = []

    async def drain(request: request_pb2.Request) -> int:
        answered = 0
        async for item in client.fan_out(request, timeout=10):
            if item.answer is None:
                raise RuntimeError(f"{item.target}: {item.error or item.no_answer}")
            answered += 1
        return answered

    async def one(serial: int) -> None:
        started = time.perf_counter()
        banks, carriers = _fanout_requests(client, world, serial)
        counts = await asyncio.gather(drain(banks), drain(carriers))
        latencies.append((time.perf_counter() - started) * 1000)
        if sum(counts) != len(BANKS) + len(CARRIERS):
            raise RuntimeError(f"fan-out answered by {sum(counts)} members, not 7")

    tasks: list[asyncio.Task[None]] = []
    begin = time.perf_counter()
    for i in range(count):
        delay = begin + i / FANOUT_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(first + i)))
    await asyncio.gather(*tasks)
    return latencies


async def _measure(
    fed: Path, endpoint: str, world: World, fanouts: int
) -> dict[str, tuple[float, str]]:
    client = FedgateClient.from_federation(fed, POLICE, endpoint=endpoint)
    accounts = [h.to_account for c in world.chains for h in c.hops if h.to_bank == "bank.icbc"]
    background = _Background(fed, endpoint, accounts)
    try:
        truth = stopped = innocent = 0
        five: list[float] = []
        for n, chain in enumerate(world.chains):
            report = await _chase(client, chain, n + 1)
            held = {h.account for h in chain.holdings}
            got = {node.account for node in report.stopped}
            truth += len(held)
            stopped += len(held & got)
            innocent += len(got - held)
        _progress(f"chased {len(world.chains)} chains")
        for n, chain in enumerate(c for c in world.chains if len(c.hops) == 5):
            report = await _chase(client, chain, 500 + n)
            if not report.stopped:
                raise RuntimeError("a 5-hop chase stopped nothing")
            five.append(report.seconds * 1000)
        _progress(f"timed {len(five)} 5-hop chases")
        await _fanouts(client, world, 5, 0)  # warm up
        unloaded = await _fanouts(client, world, fanouts, 100)
        seconds = 1.0 + fanouts / FANOUT_RATE + 10
        bodies = background.bodies(int(BACKGROUND_RATE * seconds))
        stop_event = asyncio.Event()
        load = asyncio.create_task(background.run(bodies, stop_event))
        await asyncio.sleep(1.0)
        try:
            loaded = await _fanouts(client, world, fanouts, 100 + fanouts)
        finally:
            stop_event.set()
            achieved = await load
    finally:
        await client.close()
        await background.close()
    return {
        "chase_recall": (stopped / truth if truth else 0.0, "ratio"),
        "chase_innocent_stops": (float(innocent), "accounts"),
        "chase_5hop_p50_ms": (statistics.median(five), "ms"),
        "chase_5hop_p95_ms": (_percentile(five, 0.95), "ms"),
        "fanout_all_p50_ms": (statistics.median(loaded), "ms"),
        "fanout_all_p99_ms": (_percentile(loaded, 0.99), "ms"),
        "fanout_all_unloaded_p50_ms": (statistics.median(unloaded), "ms"),
        "fanout_background_achieved_per_s": (achieved.answered / achieved.seconds, "requests/s"),
        "fanout_all_unloaded_p99_ms": (_percentile(unloaded, 0.99), "ms"),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """Measure the figures of the module docstring (quick: 18 chains, 20 fan-out pairs a side,
    whose p99 is then their worst, as it already was at 50; full: 60 chains, 300 a side)."""
    chains, fanouts = (18, 20) if quick else (60, 300)
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-chase-") as tmp:
        root = Path(tmp)
        now = datetime.now(UTC)
        fed = init_federation(root / "federation", now=now - timedelta(hours=1))
        _progress(f"seeding a world with {chains} chains")
        world = seed_world(root / "world", seed=19, customers_per_bank=300, fraud_chains=chains)
        processes = _processes(root, fed, world)
        federation = Federation(
            state=root, registry=Registry.load_dir(fed), world=world, processes=processes
        )
        children = start(federation)
        try:
            asyncio.run(wait_healthy(federation, children, timeout=90, progress=_progress))
            return asyncio.run(_measure(fed, processes[-1].endpoint, world, fanouts))
        finally:
            stop(children)


if __name__ == "__main__":
    for figure, (value, unit) in run(quick="--full" not in sys.argv).items():
        print(f"{figure}: {value:.6g} {unit}")
