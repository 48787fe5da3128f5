"""Nothing executed goes missing: a request leg left without its response leg (the exchange cut
off after the node executed it) is reconciled with the node when the gateway starts again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fedgate.audit_entry import EntryKind, RequestLeg, ResponseLeg, decode_entry
from fedgate.cli import main as fedgate_main
from fedgate.client import FedgateClient
from fedgate.errors import AgencyUnavailable, AuditUnavailable, RuleViolated
from fedgate.evidence import HistoricalKeys, check_response_leg
from fedgate.registry import Registry
from fedgate.testing import free_port
from fedgate.types import MemberId
from fedgate.v1 import request_pb2, ticket_pb2
from gateway.audit.sqlite_store import SqliteDatabase, open_sqlite_store
from gateway.audit.store import AuditStore, CommitBatch, IndexedRow, SearchQuery, StoredLog
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway


class NoResponseLegs:
    """The gateway's store, refusing every batch holding a response leg: the exchange is cut
    off after the node answered and before the response leg is durable, as by a crash."""

    def __init__(self, inner: AuditStore) -> None:
        self._inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        # Everything else of the store (tiles, searches) is the inner store's.
        return getattr(self._inner, name)

    @property
    def origin(self) -> str:
        return self._inner.origin

    @property
    def state_path(self) -> Path | None:
        return self._inner.state_path

    async def load(self) -> StoredLog:
        return await self._inner.load()

    async def commit(self, batch: CommitBatch) -> None:
        if self.armed and any(leaf.columns[0] == EntryKind.RESPONSE for leaf in batch.leaves):
            raise OSError("disk unplugged")
        await self._inner.commit(batch)

    async def add_cosigned(self, size: int, note: str) -> None:
        await self._inner.add_cosigned(size, note)

    async def leaves(self, start: int, stop: int) -> list[bytes]:
        return await self._inner.leaves(start, stop)

    async def shard_leaf(self, origin: str, index: int) -> bytes | None:
        return await self._inner.shard_leaf(origin, index)

    async def checkpoint(self, size: int) -> str | None:
        return await self._inner.checkpoint(size)

    async def search(self, query: SearchQuery) -> list[IndexedRow]:
        return await self._inner.search(query)

    async def close(self) -> None:
        await self._inner.close()


Start = Callable[..., Awaitable[tuple[Gateway, FedgateClient]]]


@pytest.fixture
async def start_gateway(
    fed_dir: Path, bank_node: Any, tmp_path: Path
) -> AsyncIterator[tuple[Start, GatewayConfig]]:
    listen = f"127.0.0.1:{free_port()}"
    node = await bank_node("bank.icbc", manual={"transactions"}, gateway_endpoint=listen)
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=listen, grace_period_s=1.0),
        routing=RoutingConfig(
            timeout_s=2.0,
            max_attempts=1,
            endpoints={MemberId("bank.icbc"): node.endpoint},
        ),
    )
    running: list[tuple[Gateway, FedgateClient]] = []

    async def start(
        *, cut_off: bool = False, node_endpoint: str | None = None
    ) -> tuple[Gateway, FedgateClient]:
        for gateway, client in running:
            await client.close()
            await gateway.stop(0.5)
        running.clear()
        cfg = config
        if node_endpoint is not None:
            routing = RoutingConfig(
                timeout_s=1.0,
                max_attempts=1,
                endpoints={MemberId("bank.icbc"): node_endpoint},
            )
            cfg = GatewayConfig(
                federation=config.federation,
                pipeline=config.pipeline,
                server=config.server,
                routing=routing,
            )
        store: AuditStore | None = None
        if cut_off:
            store = NoResponseLegs(await open_sqlite_store(cfg.audit_path, origin=cfg.audit.origin))
        gateway = await Gateway.start(cfg, audit_store=store)
        client = FedgateClient.from_federation(
            fed_dir, MemberId("police.gd.afc"), endpoint=gateway.endpoint
        )
        running.append((gateway, client))
        return gateway, client

    yield start, config
    for gateway, client in running:
        await client.close()
        await gateway.stop(0.5)


def _legs_of(config: GatewayConfig, request_id: str) -> list[tuple[int, Any]]:
    db = SqliteDatabase(config.audit_path, origin=config.audit.origin, writer=False)
    try:
        hits = db.search(SearchQuery(request_id=request_id, limit=10))
        return [(h.index, decode_entry(db.leaves(h.index, h.index + 1)[0])) for h in hits]
    finally:
        db.close()


def _verify_log(config: GatewayConfig, fed_dir: Path) -> int:
    return fedgate_main(
        ["audit", "verify", "--db", str(config.audit_path), "--federation", str(fed_dir),
         "--quiet"]
    )  # fmt: skip


class TestReconciledAtStartUp:
    async def test_an_executed_stop_cut_off_before_its_response_leg_is_logged_and_counted(
        self, kit: Any, fed_dir: Path, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        _, client = await start(cut_off=True)
        _, hop = kit.hop_into("bank.icbc")
        first = kit.stop_request(hop)
        with pytest.raises(AuditUnavailable):
            await client.ask(first)
        legs = _legs_of(config, first.request_id)
        assert [type(e) for _, e in legs] == [RequestLeg]

        _, client = await start()
        legs = _legs_of(config, first.request_id)
        assert [type(e) for _, e in legs] == [RequestLeg, ResponseLeg]
        (request_index, request_leg), (_, response_leg) = legs
        assert response_leg.status == "ok"
        assert response_leg.detail.startswith("reconciled: ")
        assert response_leg.request_leaf_index == request_index
        # The node's own signed answer, checked like any answer.
        keys = HistoricalKeys(Registry.load_dir(fed_dir))
        assert (
            check_response_leg(response_leg, keys, request_body=request_leg.envelope) == "bank.icbc"
        )
        assert _verify_log(config, fed_dir) == 0

        # The executed stop counts: one more is allowed, a third is refused at the gateway.
        answer = await client.ask(kit.stop_request(hop))
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        with pytest.raises(RuleViolated, match=r"stop_payment\.max_two_per_account"):
            await client.ask(kit.stop_request(hop))

    async def test_a_request_the_node_never_got_is_logged_as_not_executed(
        self, kit: Any, fed_dir: Path, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        nowhere = f"127.0.0.1:{free_port()}"
        _, client = await start(cut_off=True, node_endpoint=nowhere)
        _, hop = kit.hop_into("bank.icbc")
        lost = kit.stop_request(hop)
        with pytest.raises((AuditUnavailable, AgencyUnavailable)):
            await client.ask(lost)
        assert [type(e) for _, e in _legs_of(config, lost.request_id)] == [RequestLeg]

        await start()
        legs = _legs_of(config, lost.request_id)
        assert [type(e) for _, e in legs] == [RequestLeg, ResponseLeg]
        response_leg = legs[1][1]
        assert response_leg.status == "unavailable"
        assert response_leg.detail.startswith("reconciled: bank.icbc never received")
        assert _verify_log(config, fed_dir) == 0

    async def test_a_request_queued_for_staff_gets_a_pending_leg_and_a_ticket(
        self, kit: Any, fed_dir: Path, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        _, client = await start(cut_off=True)
        _, hop = kit.hop_into("bank.icbc")
        queued = kit.request("transactions")
        queued.transactions.account_number = hop.to_account
        with pytest.raises(AuditUnavailable):
            await client.submit(queued)
        assert [type(e) for _, e in _legs_of(config, queued.request_id)] == [RequestLeg]

        _, client = await start()
        legs = _legs_of(config, queued.request_id)
        assert [type(e) for _, e in legs] == [RequestLeg, ResponseLeg]
        assert legs[1][1].status == "pending"
        assert legs[1][1].detail.startswith("reconciled: queued for staff")
        # The police system follows it by ticket: the ticket id is the request id.
        ticket, answer = await client.get_ticket(queued.request_id)
        assert ticket.state == ticket_pb2.TICKET_STATE_WAITING
        assert answer is None
        assert _verify_log(config, fed_dir) == 0


class TestReconciledPeriodically:
    async def test_a_leg_cut_off_while_serving_is_reconciled_once_past_the_grace(
        self, kit: Any, fed_dir: Path, start_gateway: tuple[Start, GatewayConfig]
    ) -> None:
        start, config = start_gateway
        gateway, client = await start(cut_off=True)
        _, hop = kit.hop_into("bank.icbc")
        first = kit.stop_request(hop)
        with pytest.raises(AuditUnavailable):
            await client.ask(first)
        store = gateway.audit._store
        assert isinstance(store, NoResponseLegs)
        store.armed = False

        reconciler = gateway.pipeline.reconciler
        young = await reconciler.run_once(grace=timedelta(hours=1))
        assert (young.open, young.reconciled, young.left_open) == (1, 0, 1)
        assert [type(e) for _, e in _legs_of(config, first.request_id)] == [RequestLeg]

        due = await reconciler.run_once(grace=timedelta(0))
        assert (due.reconciled, due.left_open) == (1, 0)
        legs = _legs_of(config, first.request_id)
        assert [type(e) for _, e in legs] == [RequestLeg, ResponseLeg]
        assert legs[1][1].status == "ok"
        assert (await reconciler.run_once(grace=timedelta(0))).open == 0
