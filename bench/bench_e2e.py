"""Emergency stop-payment end to end, police client → gateway → bank node → back, with and
without 100 requests/s of other traffic through the same gateway, side by side in one run.

What runs where (this machine has 2 cores, shared by all three processes):

- **gateway** — its own process, ``python -m gateway.server --config gateway.toml`` (the full
  pipeline, mTLS, durable SQLite audit log, JSON logs to a file), as ``fedgate up`` starts it;
- **bank node** — its own process, ``python -m adapters --config node.toml``: a ``BankNode``
  on the seeded reference backend of ``bank.icbc`` (stop-payments automatic, answers durable);
- **this process** — the police client and the load generator, in one event loop: the orders
  go through ``FedgateClient.ask`` as ``police.gd.afc`` (sign, submit, then the full answer
  check: bank signature, request binding, gateway countersignature, receipt inclusion proof
  against the signed checkpoint); the background load is ``account_holder`` queries from
  ``police.gz.unit`` on its own connection, spread over every active account of the bank,
  signed ahead of each phase and sent open-loop on a fixed schedule (not waiting for answers).

Both servers listen on free loopback ports: the gateway's ``[routing] endpoints`` and the
node's ``listen`` override the registry's defaults. The gateway's quotas are raised for the
run (the default per-member quota of 3000 personal-data queries a minute would refuse a
sustained 100/s); everything else is the default configuration.

Before the servers start, one real incoming transfer (payer, amount, time ten minutes ago) is
recorded in the bank's backend for every account that will be stopped, so that each order
matches a transfer (name, account, amount, payer and time) and hits a distinct account.

Orders are sent open-loop at ``ORDER_RATE`` per second; a latency runs from just before the
client signs the order to the verified answer. Phases alternate unloaded / loaded so that
drift in the machine's state hits both alike; under load, the background starts a second
before the first order and stops after the last answer.

- ``stop_payment_e2e_p50_ms`` / ``_p99_ms``: under the background load (goal p99 ≤ 50 ms).
- ``stop_payment_e2e_unloaded_p50_ms`` / ``_p99_ms``: the same orders with no other traffic.
- ``background_load_achieved_per_s``: background answers received per second while loaded.

Percentiles are nearest-rank (``fedgate.testing.percentile``): in quick mode (60 orders a
side) p99 is the slowest order.
Any refused order or background query fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio

from adapters.bank.backend import Direction
from adapters.bank.reference import ReferenceBank
from adapters.config import ActionMode, NodeConfig
from adapters.synth import World, seed_world
from adapters.up import Federation, ProcessSpec, start, stop, wait_healthy
from fedgate.client import FedgateClient
from fedgate.config import dump_toml
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.federation import MemberKind
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.testing import card_number, free_port, percentile, valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, request_pb2

__all__ = ["run"]

BANK = MemberId("bank.icbc")
PAYER_BANK = "bank.ccb"
POLICE = MemberId("police.gd.afc")
BACKGROUND_POLICE = MemberId("police.gz.unit")
GATEWAY = MemberId("gateway")
BACKGROUND_RATE = 100.0
"""Background requests per second."""
ORDER_RATE = 20.0
"""Stop-payments per second (on top of the background when loaded)."""
LEAD_S = 1.0
"""The background runs this long before the first order of a loaded phase."""
WARMUP_ORDERS = 10
_SUBMIT = "/fedgate.v1.GatewayService/Submit"
_OK = request_pb2.RESPONSE_STATUS_OK


@dataclass(frozen=True, slots=True)
class _Victim:
    """A victim's transfer into one account, recorded in the bank before the run."""

    account: str
    holder: str
    currency: str
    payer_account: str
    payer_name: str
    amount_minor: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class _Load:
    """What the background generator did in one loaded phase."""

    answered: int
    seconds: float


def _progress(message: str) -> None:
    print(f"#   {message}", file=sys.stderr, flush=True)


def _active_accounts(database: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT account_number FROM accounts WHERE status = 'active' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [number for (number,) in rows]


def _plant_transfers(world: World, accounts: list[str], now: datetime) -> list[_Victim]:
    """Record one incoming transfer per account in the bank's backend (before the node opens
    the file) and return what a matching stop-payment must say."""
    victims: list[_Victim] = []
    bank = ReferenceBank(path=world.database(BANK), bank_id=BANK)
    try:
        holders = [bank.account_holder(account) for account in accounts]
        for i, holder in enumerate(holders):
            payer_name = holders[(i + 1) % len(holders)].name
            payer_account = card_number(PAYER_BANK, 50_000 + i)
            tx = bank.record_transaction(
                holder.account_number,
                direction=Direction.IN,
                amount_minor=1_000_000 + 137 * i,
                counterparty_account=payer_account,
                counterparty_name=payer_name,
                counterparty_bank=PAYER_BANK,
                ts=now - timedelta(minutes=10),
            )
            victims.append(
                _Victim(
                    account=holder.account_number,
                    holder=holder.name,
                    currency=tx.currency,
                    payer_account=payer_account,
                    payer_name=payer_name,
                    amount_minor=tx.amount_minor,
                    ts=tx.ts,
                )
            )
    finally:
        bank.close()
    return victims


def _order(victim: _Victim, serial: int) -> request_pb2.Request:
    request = valid_request("stop_payment", now=datetime.now(UTC), target=BANK, serial=serial)
    order = request.stop_payment
    order.account_number, order.account_name = victim.account, victim.holder
    order.payer_account, order.payer_name = victim.payer_account, victim.payer_name
    order.payer_bank = PAYER_BANK
    order.amount.currency, order.amount.minor_units = victim.currency, victim.amount_minor
    order.transfer_time.FromDatetime(victim.ts)
    return request


def _write_configs(root: Path, fed: Path, world: World) -> tuple[ProcessSpec, ProcessSpec]:
    gateway_endpoint = f"127.0.0.1:{free_port()}"
    node_endpoint = f"127.0.0.1:{free_port()}"
    gateway_dir, node_dir = root / "gateway", root / "node"
    gateway_dir.mkdir()
    node_dir.mkdir()
    gateway_toml = gateway_dir / "gateway.toml"
    gateway_toml.write_text(
        dump_toml(
            {
                "server": {"listen": gateway_endpoint},
                "federation": {"dir": fed},
                "pipeline": {"state_dir": "."},
                "audit": {"origin": "fedgate.local/bench/shard-0"},
                "routing": {"endpoints": {BANK: node_endpoint}},
                "quotas": {
                    "officer_per_minute": 6000,
                    "officer_burst": 1000,
                    "member_per_minute": 600000,
                    "member_burst": 10000,
                },
                "telemetry": {"log_level": "INFO"},
            }
        ),
        encoding="utf-8",
    )
    node_toml = node_dir / "node.toml"
    node_toml.write_text(
        NodeConfig(
            member_id=BANK,
            federation_dir=fed,
            state_dir=node_dir,
            listen=node_endpoint,
            staff=("icbc.zhang",),
            gateway_endpoint=gateway_endpoint,
            backend_path=world.database(BANK),
            modes={"transactions": ActionMode.MANUAL},
        ).to_toml(),
        encoding="utf-8",
    )
    python = sys.executable
    logs = root / "logs"
    return (
        ProcessSpec(
            member=BANK,
            kind=MemberKind.BANK,
            argv=(python, "-m", "adapters", "--config", str(node_toml)),
            endpoint=node_endpoint,
            console=None,
            log=logs / "node.log",
        ),
        ProcessSpec(
            member=GATEWAY,
            kind=MemberKind.GATEWAY,
            argv=(python, "-m", "gateway.server", "--config", str(gateway_toml)),
            endpoint=gateway_endpoint,
            console=None,
            log=logs / "gateway.log",
        ),
    )


class _Background:
    """Signed ``account_holder`` queries sent open-loop at ``BACKGROUND_RATE``."""

    def __init__(self, fed: Path, endpoint: str, accounts: list[str]) -> None:
        creds = MemberCredentials.load(fed, BACKGROUND_POLICE)
        self._signer = Signer.from_key(creds.signing_key)
        self._channel = grpc.aio.secure_channel(
            endpoint, channel_credentials(creds), options=channel_options(GATEWAY)
        )
        self._call = self._channel.unary_unary(_SUBMIT, None, None)
        self._accounts = accounts
        self._serial = 0

    def bodies(self, count: int) -> list[bytes]:
        out = []
        now = datetime.now(UTC)
        for _ in range(count):
            self._serial += 1
            request = valid_request(
                "account_holder",
                now=now,
                requesting_agency=BACKGROUND_POLICE,
                target=BANK,
                serial=self._serial,
                account_number=self._accounts[self._serial % len(self._accounts)],
            )
            envelope = sign_envelope(request.SerializeToString(), self._signer, Domain.REQUEST)
            out.append(gateway_service_pb2.SubmitRequest(envelope=envelope).SerializeToString())
        return out

    async def run(self, bodies: list[bytes], stop_event: asyncio.Event | None = None) -> _Load:
        """Send ``bodies`` every 1/rate seconds (until ``stop_event`` when given, which must
        come before they run out); raises if any is refused."""
        tasks: list[asyncio.Task[None]] = []
        answered = 0

        async def one(body: bytes) -> None:
            nonlocal answered
            raw: bytes = await self._call(body, timeout=10)
            reply = gateway_service_pb2.SubmitResponse.FromString(raw)
            status = request_pb2.Response.FromString(reply.response.response.body).status
            if status != _OK:
                raise RuntimeError(f"a background query was answered with status {status}")
            answered += 1

        stopping = stop_event or asyncio.Event()
        begin = time.perf_counter()
        for i, body in enumerate(bodies):
            delay = begin + i / BACKGROUND_RATE - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                break
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        if stop_event is not None and not stop_event.is_set():
            raise RuntimeError("the background load ran out of signed queries")
        return _Load(answered=answered, seconds=time.perf_counter() - begin)

    async def close(self) -> None:
        await self._channel.close(None)


async def _orders(client: FedgateClient, requests: list[request_pb2.Request]) -> list[float]:
    """Latencies (ms) of ``requests`` sent every 1/ORDER_RATE seconds, each answer verified."""
    latencies: list[float] = []

    async def one(request: request_pb2.Request) -> None:
        started = time.perf_counter()
        answer = await client.ask(request, timeout=10)
        latencies.append((time.perf_counter() - started) * 1000)
        response = answer.response
        if response.status != _OK or not response.HasField("stop_payment"):
            raise RuntimeError(f"stop-payment refused: {response.status} {response.detail}")

    tasks: list[asyncio.Task[None]] = []
    begin = time.perf_counter()
    for i, request in enumerate(requests):
        delay = begin + i / ORDER_RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request)))
    await asyncio.gather(*tasks)
    return latencies


async def _measure(
    fed: Path, endpoint: str, victims: list[_Victim], accounts: list[str], phases: int
) -> dict[str, tuple[float, str]]:
    background = _Background(fed, endpoint, accounts)
    client = FedgateClient.from_federation(fed, POLICE, endpoint=endpoint)
    unloaded: list[float] = []
    loaded: list[float] = []
    loads: list[_Load] = []
    try:
        serial = 0

        def orders(batch: list[_Victim]) -> list[request_pb2.Request]:
            nonlocal serial
            out = []
            for victim in batch:
                serial += 1
                out.append(_order(victim, serial))
            return out

        warm, rest = victims[:WARMUP_ORDERS], victims[WARMUP_ORDERS:]
        await _orders(client, orders(warm))  # connections, caches
        await background.run(background.bodies(50))
        per_phase = len(rest) // (2 * phases)
        for phase in range(2 * phases):
            batch = orders(rest[phase * per_phase : (phase + 1) * per_phase])
            if phase % 2 == 0:
                unloaded += await _orders(client, batch)
                continue
            seconds = LEAD_S + len(batch) / ORDER_RATE + 10
            bodies = background.bodies(int(BACKGROUND_RATE * seconds))
            stop_event = asyncio.Event()
            load = asyncio.create_task(background.run(bodies, stop_event))
            await asyncio.sleep(LEAD_S)
            try:
                loaded += await _orders(client, batch)
            finally:
                stop_event.set()
                loads.append(await load)
    finally:
        await client.close()
        await background.close()
    achieved = sum(x.answered for x in loads) / sum(x.seconds for x in loads)
    return {
        "stop_payment_e2e_p50_ms": (percentile(loaded, 0.5), "ms"),
        "stop_payment_e2e_p99_ms": (percentile(loaded, 0.99), "ms"),
        "stop_payment_e2e_unloaded_p50_ms": (percentile(unloaded, 0.5), "ms"),
        "stop_payment_e2e_unloaded_p99_ms": (percentile(unloaded, 0.99), "ms"),
        "background_load_achieved_per_s": (achieved, "requests/s"),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    """Measure the figures of the module docstring (quick: 60 orders loaded, 60 unloaded;
    full: 1000 of each, in four alternating phases)."""
    per_side, phases = (60, 1) if quick else (1000, 2)
    with tempfile.TemporaryDirectory(prefix="fedgate-bench-e2e-") as tmp:
        root = Path(tmp)
        now = datetime.now(UTC)
        fed = init_federation(root / "federation", now=now - timedelta(hours=1))
        world = seed_world(
            root / "world",
            seed=5,
            banks=(BANK, PAYER_BANK),
            carriers=("carrier.cmcc",),
            customers_per_bank=600 if quick else 2000,
            fraud_chains=0,
        )
        accounts = _active_accounts(world.database(BANK))
        needed = WARMUP_ORDERS + 2 * per_side
        if len(accounts) < needed:
            raise RuntimeError(f"the seeded bank has {len(accounts)} accounts, {needed} needed")
        _progress(f"recording {needed} victim transfers in {BANK}'s backend")
        victims = _plant_transfers(world, random.Random(5).sample(accounts, needed), now)
        node, gateway = _write_configs(root, fed, world)
        federation = Federation(
            state=root,
            registry=Registry.load_dir(fed),
            world=world,
            processes=(node, gateway),
        )
        children = start(federation)
        try:
            asyncio.run(wait_healthy(federation, children, timeout=60, progress=_progress))
            return asyncio.run(_measure(fed, gateway.endpoint, victims, accounts, phases))
        finally:
            stop(children)


if __name__ == "__main__":
    for figure, (value, unit) in run(quick="--full" not in sys.argv).items():
        print(f"{figure}: {value:.6g} {unit}")
