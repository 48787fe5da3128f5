"""Police → real gateway → real bank node and back: automatic answers, and a manual query
answered by stationed staff from the terminal and fetched by ticket."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from adapters.bank.backend import Direction
from fedgate.client import FedgateClient
from fedgate.commands import staff as staff_command
from fedgate.testing import free_port
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, request_pb2, ticket_pb2
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    TicketsConfig,
)
from gateway.server import Gateway


@pytest.fixture
async def federation(
    fed_dir: Path, bank_node: Any, tmp_path: Path
) -> AsyncIterator[tuple[Any, FedgateClient]]:
    listen = f"127.0.0.1:{free_port()}"
    node = await bank_node("bank.icbc", manual={"transactions"}, gateway_endpoint=listen)
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=listen, grace_period_s=1.0),
        routing=RoutingConfig(timeout_s=5.0, endpoints={MemberId("bank.icbc"): node.endpoint}),
        tickets=TicketsConfig(poll_interval_s=0.05),
    )
    gateway = await Gateway.start(config)
    client = FedgateClient.from_federation(
        fed_dir, MemberId("police.gd.afc"), endpoint=gateway.endpoint
    )
    try:
        yield node, client
    finally:
        await client.close()
        await gateway.stop(0.5)


class TestThroughTheGateway:
    async def test_stop_payment_is_answered_signed_countersigned_and_logged(
        self, kit: Any, federation: Any
    ) -> None:
        _, client = federation
        _, hop = kit.hop_into("bank.icbc")
        answer = await client.ask(kit.stop_request(hop))
        assert answer.response.responder == "bank.icbc"
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        assert answer.response.stop_payment.in_force
        assert answer.receipt.leaf_index > answer.receipt.request_leaf_index

    async def test_a_staff_answer_from_the_terminal_reaches_the_police_by_ticket(
        self, kit: Any, federation: Any
    ) -> None:
        node, client = federation
        _, hop = kit.hop_into("bank.icbc")
        request = kit.request("transactions")
        request.transactions.account_number = hop.to_account
        submitted = await client.submit(request)
        assert submitted.ticket is not None
        assert submitted.ticket.state == ticket_pb2.TICKET_STATE_WAITING

        result = bank_pb2.TransactionsResult(account_number=hop.to_account)
        args = argparse.ArgumentParser()
        staff_command.register(args.add_subparsers(dest="command", required=True))
        parsed = args.parse_args(
            ["staff", "answer", request.request_id, "--result-json",
             json_format.MessageToJson(result), "--federation", str(kit.fed_dir),
             "--member", "bank.icbc", "--staff", "icbc.zhang", "--endpoint", node.endpoint]
        )  # fmt: skip
        assert await asyncio.to_thread(parsed.func, parsed) == 0

        for _ in range(100):
            ticket, answer = await client.get_ticket(submitted.ticket.ticket_id)
            if answer is not None:
                break
            await asyncio.sleep(0.05)
        assert answer is not None
        assert ticket.state == ticket_pb2.TICKET_STATE_ANSWERED
        assert answer.response.answered_by == "icbc.zhang"
        assert answer.response.transactions == result

    async def test_monitored_transactions_are_delivered_through_the_gateway(
        self, kit: Any, federation: Any
    ) -> None:
        node, client = federation
        _, hop = kit.hop_into("bank.icbc")
        start = kit.request("monitor_start")
        start.monitor_start.account_number = hop.to_account
        assert (await client.ask(start)).response.monitor.active
        node.core.record_transaction(
            hop.to_account,
            direction=Direction.IN,
            amount_minor=8_800,
            counterparty_account=hop.from_account,
            counterparty_name=hop.from_name,
            counterparty_bank=hop.from_bank,
        )
        assert await node.push_monitored() == 1
        assert await node.push_monitored() == 0

    async def test_a_case_report_from_the_bank_is_acknowledged(
        self, kit: Any, federation: Any
    ) -> None:
        node, _ = federation
        template = kit.request("case_report", target="police.gd.afc")
        submitted = await node.send_report(
            target=MemberId("police.gd.afc"),
            report=template.case_report,
            case=template.case,
            reference="ICBC-GZ-20260001",
        )
        assert submitted.answer is not None
        assert submitted.answer.response.status == request_pb2.RESPONSE_STATUS_OK
