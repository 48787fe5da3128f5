"""Fixtures for agency-node tests: a real federation PKI, a small seeded world, real nodes on
loopback mTLS, and a ``Kit`` that plays the police (signing) and the gateway (calling)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.bank.node import BankNode
from adapters.carrier.node import CarrierNode
from adapters.config import ActionMode, NodeConfig
from adapters.node import AgencyNode
from adapters.staff import STAFF_METADATA
from adapters.synth import FraudChain, Hop, World, seed_world
from fedgate.envelope import (
    Domain,
    Signer,
    decode_response,
    sign_envelope,
    verify_envelope,
    verify_response_binding,
)
from fedgate.pki import init_federation
from fedgate.registry import Registry
from fedgate.testing import valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import KeyId, MemberId
from fedgate.v1 import (
    agency_service_pb2,
    agency_service_pb2_grpc,
    envelope_pb2,
    request_pb2,
    staff_service_pb2_grpc,
)

POLICE = MemberId("police.gd.afc")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Link:
    """A channel to a node as some member (the gateway unless said otherwise)."""

    channel: grpc.aio.Channel
    agency: agency_service_pb2_grpc.AgencyServiceStub
    staff: staff_service_pb2_grpc.StaffServiceStub

    async def handle(
        self, envelope: envelope_pb2.SignedEnvelope, *, leaf_index: int = 7, metadata: Any = None
    ) -> agency_service_pb2.HandleResponse:
        return await self.agency.Handle(
            agency_service_pb2.HandleRequest(
                envelope=envelope, log_origin="test/gateway/shard-0", leaf_index=leaf_index
            ),
            metadata=metadata,
            timeout=10,
        )

    async def get_result(self, request_id: str) -> agency_service_pb2.GetResultResponse:
        return await self.agency.GetResult(
            agency_service_pb2.GetResultRequest(request_id=request_id), timeout=10
        )


class Kit:
    """Plays the police and the gateway against real nodes."""

    def __init__(self, fed_dir: Path, world: World) -> None:
        self.fed_dir = fed_dir
        self.world = world
        self.registry = Registry.load_dir(fed_dir)
        self._creds: dict[str, MemberCredentials] = {}
        self._channels: list[grpc.aio.Channel] = []

    def creds(self, member: str) -> MemberCredentials:
        if member not in self._creds:
            self._creds[member] = MemberCredentials.load(self.fed_dir, MemberId(member))
        return self._creds[member]

    def signer(self, member: str = POLICE) -> Signer:
        return Signer.from_key(self.creds(member).signing_key)

    def request(self, action: str, *, target: str = "bank.icbc", **kw: Any) -> request_pb2.Request:
        return valid_request(action, now=datetime.now(UTC), target=target, **kw)

    def sign(
        self, request: request_pb2.Request, member: str = POLICE
    ) -> envelope_pb2.SignedEnvelope:
        return sign_envelope(request.SerializeToString(), self.signer(member), Domain.REQUEST)

    def link(self, node: AgencyNode | str, *, as_member: str = "gateway") -> Link:
        endpoint = node.endpoint if isinstance(node, AgencyNode) else node
        target = node.member_id if isinstance(node, AgencyNode) else "bank.icbc"
        channel = grpc.aio.secure_channel(
            endpoint,
            channel_credentials(self.creds(as_member)),
            options=channel_options(MemberId(target)),
        )
        self._channels.append(channel)
        return Link(
            channel,
            agency_service_pb2_grpc.AgencyServiceStub(channel),
            staff_service_pb2_grpc.StaffServiceStub(channel),
        )

    async def ask(self, node: AgencyNode, request: request_pb2.Request) -> request_pb2.Response:
        """Sign as the police, deliver as the gateway, verify the signed answer."""
        envelope = self.sign(request)
        return self.verify(envelope, await self.link(node).handle(envelope))

    def verify(
        self, envelope: envelope_pb2.SignedEnvelope, reply: agency_service_pb2.HandleResponse
    ) -> request_pb2.Response:
        """Check the answer is signed by the target bank and bound to this request."""
        assert reply.HasField("response"), reply
        return self.verify_signed(envelope, reply.response)

    def verify_signed(
        self, envelope: envelope_pb2.SignedEnvelope, signed: envelope_pb2.SignedEnvelope
    ) -> request_pb2.Response:
        request = request_pb2.Request.FromString(envelope.body)
        response = decode_response(signed.body)
        member, key = self.registry.signing_key(
            KeyId(signed.key_id), at=response.answered_at.ToDatetime(tzinfo=UTC)
        )
        assert member.id == request.target_agency
        verify_envelope(signed, key, Domain.RESPONSE)
        verify_response_binding(
            response,
            request_body=envelope.body,
            request_id=request.request_id,
            responder=request.target_agency,
        )
        return response

    def hop_into(self, bank: str) -> tuple[FraudChain, Hop]:
        """A fraud-chain transfer received by an account at ``bank``."""
        for chain in self.world.chains:
            for hop in chain.hops:
                if hop.to_bank == bank:
                    return chain, hop
        raise LookupError(f"no chain hop into {bank}")

    def hops_into(self, bank: str) -> Iterable[Hop]:
        return [h for c in self.world.chains for h in c.hops if h.to_bank == bank]

    def stop_request(self, hop: Hop, **changes: Any) -> request_pb2.Request:
        request = self.request("stop_payment", target=hop.to_bank)
        order = request.stop_payment
        order.account_number = hop.to_account
        order.account_name = hop.to_name
        order.payer_account = hop.from_account
        order.payer_name = hop.from_name
        order.payer_bank = hop.from_bank
        order.amount.currency = hop.currency
        order.amount.minor_units = hop.amount_minor
        order.transfer_time.FromDatetime(hop.ts)
        # Each call is a new order on its own notice; a repeat of one (same account, case and
        # document) would be answered with the order in force instead of executing again.
        request.legal_document.number += f"-{uuid.uuid4().hex[:8]}"
        for name, value in changes.items():
            setattr(order, name, value)
        return request

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)


def staff_metadata(staff_id: str) -> tuple[tuple[str, str], ...]:
    return ((STAFF_METADATA, staff_id),)


@pytest.fixture(scope="session")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_federation(tmp_path_factory.mktemp("adapters-fed") / "fed")


@pytest.fixture(scope="session")
def world_template(tmp_path_factory: pytest.TempPathFactory) -> World:
    return seed_world(
        tmp_path_factory.mktemp("adapters-world"), seed=11, customers_per_bank=30, fraud_chains=4
    )


@pytest.fixture
def world(world_template: World, tmp_path: Path) -> World:
    """A private copy of the seeded world (orders change the databases)."""
    copy = tmp_path / "world"
    shutil.copytree(world_template.directory, copy)
    return replace(world_template, directory=copy)


@pytest.fixture
async def kit(fed_dir: Path, world: World) -> AsyncIterator[Kit]:
    k = Kit(fed_dir, world)
    yield k
    await k.close()


NodeFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def agency_node(fed_dir: Path, world: World, tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start bank or carrier nodes (by the member id) on the seeded world:
    ``await agency_node("bank.icbc", manual={"transactions"}, clock=...)``."""
    nodes: list[AgencyNode] = []

    async def make(
        member: str = "bank.icbc",
        *,
        manual: Iterable[str] = (),
        staff: tuple[str, ...] = ("icbc.zhang", "icbc.li"),
        **kwargs: Any,
    ) -> AgencyNode:
        config = NodeConfig(
            member_id=MemberId(member),
            federation_dir=fed_dir,
            state_dir=tmp_path / "state" / member,
            listen="127.0.0.1:0",
            staff=staff,
            backend_path=world.database(member),
            modes=dict.fromkeys(manual, ActionMode.MANUAL),
            monitor_poll_s=kwargs.pop("monitor_poll_s", 3600.0),
            gateway_endpoint=kwargs.pop("gateway_endpoint", None),
        )
        kind = CarrierNode if member.startswith("carrier.") else BankNode
        node = kind.open(config, **kwargs)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop(grace=None)


@pytest.fixture
def bank_node(agency_node: NodeFactory) -> NodeFactory:
    return agency_node


@pytest.fixture
def carrier_node(agency_node: NodeFactory) -> NodeFactory:
    return agency_node


@pytest.fixture
def clock() -> FakeClock:
    """A hand-moved clock, starting now (to the second)."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))
