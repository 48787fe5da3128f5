"""The bank node alone: police-signed requests delivered with the gateway's certificate over
loopback mTLS to a ``BankNode`` on a seeded reference bank (no gateway in the path).

``node_stop_payment_p50_ms`` / ``_p99_ms``: one automatic stop-payment at a time, from sending
the envelope to holding the bank's signed answer (verify, execute in SQLite, sign, store the
answer durably). ``node_account_holder_per_s``: holder lookups with 32 in flight.
``node_queue_enqueue_p50_ms``: a manual query put durably in the staff queue.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from adapters.bank.backend import Direction
from adapters.bank.node import BankNode
from adapters.config import ActionMode, NodeConfig
from adapters.synth import seed_world
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.pki import init_federation
from fedgate.testing import percentile, valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import agency_service_pb2, agency_service_pb2_grpc, request_pb2

__all__ = ["run"]

BANK = MemberId("bank.icbc")


def _accounts(database: Path, count: int) -> list[str]:
    conn = sqlite3.connect(database)
    try:
        rows = conn.execute(
            "SELECT account_number FROM accounts WHERE status = 'active' ORDER BY id LIMIT ?",
            (count,),
        ).fetchall()
    finally:
        conn.close()
    return [number for (number,) in rows]


async def _measure(quick: bool, root: Path) -> dict[str, tuple[float, str]]:
    fed = init_federation(root / "fed")
    world = seed_world(root / "world", seed=3, customers_per_bank=300, fraud_chains=0)
    config = NodeConfig(
        member_id=BANK,
        federation_dir=fed,
        state_dir=root / "state",
        listen="127.0.0.1:0",
        staff=("icbc.zhang",),
        backend_path=world.database(BANK),
        modes={"transactions": ActionMode.MANUAL},
    )
    node = BankNode.open(config)
    await node.start()
    police = Signer.from_key(MemberCredentials.load(fed, MemberId("police.gd.afc")).signing_key)
    gateway = MemberCredentials.load(fed, MemberId("gateway"))
    channel = grpc.aio.secure_channel(
        node.endpoint, channel_credentials(gateway), options=channel_options(BANK)
    )
    stub = agency_service_pb2_grpc.AgencyServiceStub(channel)

    async def deliver(request: request_pb2.Request) -> agency_service_pb2.HandleResponse:
        body = request.SerializeToString()
        envelope = sign_envelope(body, police, Domain.REQUEST)
        reply: agency_service_pb2.HandleResponse = await stub.Handle(
            agency_service_pb2.HandleRequest(envelope=envelope, leaf_index=1), timeout=10
        )
        return reply

    try:
        accounts = _accounts(world.database(BANK), 60 if quick else 250)
        now = datetime.now(UTC)
        orders: list[request_pb2.Request] = []
        for i, account in enumerate(accounts):
            holder = node.core.account_holder(account)
            payer = f"62170000{i:011d}"
            tx = node.core.record_transaction(
                account,
                direction=Direction.IN,
                amount_minor=10_000 + i,
                counterparty_account=payer,
                counterparty_name="受害人",
                counterparty_bank="bank.ccb",
                ts=now - timedelta(minutes=10),
            )
            for _ in range(2):  # an account may be stopped twice
                order = valid_request("stop_payment", now=datetime.now(UTC), target=BANK)
                sp = order.stop_payment
                sp.account_number, sp.account_name = account, holder.name
                sp.payer_account, sp.payer_name, sp.payer_bank = payer, "受害人", "bank.ccb"
                sp.amount.minor_units = tx.amount_minor
                sp.transfer_time.FromDatetime(tx.ts)
                orders.append(order)
        for order in orders[:10]:  # warm up
            await deliver(order)
        latencies: list[float] = []
        for order in orders[10:]:
            started = time.perf_counter()
            reply = await deliver(order)
            latencies.append((time.perf_counter() - started) * 1000)
            status = request_pb2.Response.FromString(reply.response.body).status
            assert status == request_pb2.RESPONSE_STATUS_OK, reply

        lookups = 500 if quick else 3000
        queries = []
        for i in range(lookups):
            query = valid_request("account_holder", now=datetime.now(UTC), target=BANK)
            query.account_holder.account_number = accounts[i % len(accounts)]
            queries.append(query)
        pending = iter(queries)

        async def worker() -> None:
            for query in pending:
                await deliver(query)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        per_s = lookups / (time.perf_counter() - started)

        enqueue: list[float] = []
        for _ in range(50 if quick else 300):
            query = valid_request("transactions", now=datetime.now(UTC), target=BANK)
            started = time.perf_counter()
            reply = await deliver(query)
            enqueue.append((time.perf_counter() - started) * 1000)
            assert reply.HasField("queued")
    finally:
        await channel.close(None)
        await node.stop(grace=None)
    return {
        "node_stop_payment_p50_ms": (percentile(latencies, 0.5), "ms"),
        "node_stop_payment_p99_ms": (percentile(latencies, 0.99), "ms"),
        "node_account_holder_per_s": (per_s, "requests/s"),
        "node_queue_enqueue_p50_ms": (percentile(enqueue, 0.5), "ms"),
    }


def run(quick: bool) -> dict[str, tuple[float, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        return asyncio.run(_measure(quick, Path(tmp)))
