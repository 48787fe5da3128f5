"""Countermeasures end to end over real gRPC: police list numbers and accounts at a real gateway;
a carrier node follows the list, blocks listed callers in its call/SMS feed and warns police of
likely victims (de-duplicated); a bank holds a transfer to a listed account, reports it, and
releases it when the list says so or the hold expires."""

from __future__ import annotations

import asyncio
import shutil
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.asyncresolver
import dns.resolver
import grpc
import pytest

from adapters.bank.holds import (
    Hold,
    HoldState,
    Transfer,
    TransferGuard,
    TransferPath,
    hold_warning,
)
from adapters.bank.node import BankNode
from adapters.carrier.node import CarrierNode
from adapters.config import NodeConfig
from adapters.risklist import Follower, Replica
from adapters.risklist.node import Countermeasures, warning_case
from adapters.risklist.replica import ReplicaKeys
from adapters.risklist.rpz import DEFAULT_ZONE
from adapters.risklist.rpz import main as rpz_main
from adapters.synth import World
from fedgate.audit_entry import EventEntry, decode_entry
from fedgate.cli import main as cli_main
from fedgate.client import FedgateClient
from fedgate.dissuasion import (
    Outcome,
    TaskState,
    TaskStore,
    claim,
    pull_warnings,
    record_contact,
)
from fedgate.errors import PermissionRefused, PolicyDenied
from fedgate.federation import MemberKind
from fedgate.registry import Registry
from fedgate.risklist import risklist_origin
from fedgate.testing import free_port, valid_request
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import (
    alert_service_pb2,
    alert_service_pb2_grpc,
    common_pb2,
    request_pb2,
    risklist_pb2,
)
from gateway.config import (
    AuditConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway

POLICE = MemberId("police.gd.afc")
R = risklist_pb2


@dataclass
class Centre:
    gateway: Gateway
    police: FedgateClient
    fed: Path
    listen: dict[str, str]
    """Where the nodes the gateway routes to will listen."""

    async def list(self, category: int, value: str, **fields: object) -> None:
        request = valid_request("risk_list_add", now=datetime.now(UTC), serial=len(value))
        request.risk_list_add.category = category
        request.risk_list_add.value = value
        answer = await self.police.ask(request)
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK, answer.response.detail

    async def remove(self, category: int, value: str) -> None:
        request = valid_request("risk_list_remove", now=datetime.now(UTC))
        request.risk_list_remove.category = category
        request.risk_list_remove.value = value
        answer = await self.police.ask(request)
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK, answer.response.detail

    async def alerts(self, count: int, timeout: float = 20.0) -> list[request_pb2.Request]:
        """The first ``count`` early warnings on the police member's alert stream."""
        creds = MemberCredentials.load(self.fed, POLICE)
        out: list[request_pb2.Request] = []
        async with grpc.aio.secure_channel(
            self.gateway.endpoint,
            channel_credentials(creds),
            options=channel_options(MemberId("gateway")),
        ) as channel:
            stub = alert_service_pb2_grpc.AlertServiceStub(channel)
            call = stub.SubscribeAlerts(
                alert_service_pb2.SubscribeAlertsRequest(kinds=["early_warning"])
            )
            async with asyncio.timeout(timeout):
                async for alert in call:
                    out.append(request_pb2.Request.FromString(alert.report.body))
                    if len(out) >= count:
                        break
            call.cancel()
        return out


@pytest.fixture
async def centre(fed_dir: Path, tmp_path: Path) -> AsyncIterator[Centre]:
    listen = {"carrier.cmcc": f"127.0.0.1:{free_port()}"}
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=f"127.0.0.1:{free_port()}", grace_period_s=1.0),
        audit=AuditConfig(),
        routing=RoutingConfig(endpoints={MemberId(m): e for m, e in listen.items()}),
    )
    gateway = await Gateway.start(config)
    police = FedgateClient.from_federation(fed_dir, POLICE, endpoint=gateway.endpoint)
    try:
        yield Centre(gateway, police, fed_dir, listen)
    finally:
        await police.close()
        await gateway.stop(0.5)


def _node_config(
    member: str, fed_dir: Path, world: World, tmp_path: Path, centre: Centre, **kw: object
) -> NodeConfig:
    return NodeConfig(
        member_id=MemberId(member),
        federation_dir=fed_dir,
        state_dir=tmp_path / "state" / member,
        listen=centre.listen.get(member, "127.0.0.1:0"),
        backend_path=world.database(member),
        gateway_endpoint=centre.gateway.endpoint,
        risklist_follow=True,
        risklist_origin=risklist_origin(AuditConfig().origin),
        monitor_poll_s=3600.0,
        **kw,  # type: ignore[arg-type]
    )


class TestCarrierInterception:
    async def test_listed_callers_are_blocked_and_their_victims_warned_once(
        self, centre: Centre, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        fraud = sorted({n.number for c in world.chains for n in c.fraud_numbers})
        for number in fraud:
            await centre.list(R.RISK_CATEGORY_PHONE_NUMBER, number)
        config = _node_config(
            "carrier.cmcc",
            fed_dir,
            world,
            tmp_path,
            centre,
            feed_per_s=400.0,
            feed_max=1200,
        )
        cm = Countermeasures(config)
        node = CarrierNode.open(config, background=cm.jobs(MemberKind.CARRIER))
        await node.start()
        try:
            counts: list[tuple[str, str, int, int, int]] = []
            async with asyncio.timeout(30):
                while True:  # the whole bounded feed has run and every warning went out
                    await asyncio.sleep(0.2)
                    if cm.interceptor is None:
                        continue
                    counts = cm.interceptor.daily_counts()
                    if sum(c[2] for c in counts) >= 1200 and not cm.unsent:
                        break
            seen = sum(c[2] for c in counts)
            blocked = sum(c[3] for c in counts)
            warned = sum(c[4] for c in counts)
            assert seen == 1200
            assert blocked > 0, counts
            assert 0 < warned == cm.sent
            assert warned < blocked + 100  # de-duplicated: far fewer warnings than fraud events
            warnings = await centre.alerts(warned)
            subjects = [w.early_warning.subject for w in warnings]
            assert len(subjects) == len(set(subjects)), "one warning per person and window"
            for w in warnings:
                assert w.requesting_agency == "carrier.cmcc"
                assert w.early_warning.flagged in fraud
                assert w.early_warning.name  # police need to know whom to call
            await self._dissuade(centre, tmp_path, warnings)
            await self._regulator_figures(centre, fed_dir, counts)
            await self._counts_reach_the_centre(centre, counts)
        finally:
            await node.stop(grace=None)

    async def _counts_reach_the_centre(
        self, centre: Centre, counts: list[tuple[str, str, int, int, int]]
    ) -> None:
        """The carrier reports its daily counts to the centre as audited events."""
        latest: dict[tuple[str, str], str] = {}
        async with asyncio.timeout(20):
            while True:
                for i in range(centre.gateway.audit.size):
                    entry = decode_entry(await centre.gateway.audit.get_entry(i))
                    if isinstance(entry, EventEntry) and entry.kind == "interception_counts":
                        assert entry.member == "carrier.cmcc"
                        d = dict(entry.detail)
                        latest[(d["day"], d["kind"])] = d["blocked"]
                if latest == {(c[0], c[1]): str(c[3]) for c in counts}:
                    break
                await asyncio.sleep(0.5)

    async def _regulator_figures(
        self, centre: Centre, fed_dir: Path, counts: list[tuple[str, str, int, int, int]]
    ) -> None:
        """The telecom regulator receives the carrier's interception statistics (counts)."""
        regulator = FedgateClient.from_federation(
            fed_dir, MemberId("regulator.gdca"), endpoint=centre.gateway.endpoint
        )
        expected = {
            "calls_intercepted": sum(c[3] for c in counts if c[1] == "voice"),
            "sms_intercepted": sum(c[3] for c in counts if c[1] == "sms"),
            "early_warnings": sum(c[4] for c in counts),
        }
        try:
            for metric, count in expected.items():
                request = valid_request(
                    "aggregate_stats",
                    now=datetime.now(UTC),
                    requesting_agency="regulator.gdca",
                    target="carrier.cmcc",
                )
                request.officer.role = common_pb2.ROLE_REGULATOR_STAFF
                request.aggregate_stats.metric = metric
                answer = await regulator.ask(request)
                assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
                assert answer.response.aggregate_stats.count == count, metric
            # the cyberspace administration may not ask a carrier
            other = FedgateClient.from_federation(
                fed_dir, MemberId("regulator.gdcac"), endpoint=centre.gateway.endpoint
            )
            request = valid_request(
                "aggregate_stats",
                now=datetime.now(UTC),
                requesting_agency="regulator.gdcac",
                target="carrier.cmcc",
            )
            request.officer.role = common_pb2.ROLE_REGULATOR_STAFF
            request.aggregate_stats.metric = "calls_intercepted"
            with pytest.raises(PolicyDenied):
                await other.ask(request)
            await other.close()
        finally:
            await regulator.close()

    async def _dissuade(
        self, centre: Centre, tmp_path: Path, warnings: list[request_pb2.Request]
    ) -> None:
        """The warnings become dissuasion tasks at the police member; an officer claims one and
        records the contact, both logged in the gateway's audit log first."""
        store = TaskStore(tmp_path / "tasks.sqlite")
        result = await pull_warnings(centre.police, store, wait_s=0.5)
        assert len(result.new) == len(warnings)
        assert result.refused == 0
        again = await pull_warnings(centre.police, store, wait_s=0.3)
        assert (again.new, again.known) == ((), 0)  # the cursor moved on; nothing twice
        task = store.tasks(state=TaskState.OPEN)[0]
        assert task.deadline - task.received_at == timedelta(minutes=10)
        before = centre.gateway.audit.size
        claimed = await claim(centre.police, store, task.task_id, officer="440100123")
        assert claimed.state == TaskState.CLAIMED
        with pytest.raises(PermissionRefused):
            await claim(centre.police, store, task.task_id, officer="440100999")
        with pytest.raises(PermissionRefused):
            await record_contact(
                centre.police, store, task.task_id, officer="440100999", outcome=Outcome.REACHED
            )
        tried = await record_contact(
            centre.police, store, task.task_id, officer="440100123", outcome=Outcome.NOT_REACHED
        )
        assert tried.state == TaskState.CLAIMED  # try again
        done = await record_contact(
            centre.police, store, task.task_id, officer="440100123", outcome=Outcome.PERSUADED
        )
        assert done.state == TaskState.CLOSED
        assert done.contacted_in_time
        events = [
            decode_entry(await centre.gateway.audit.get_entry(i))
            for i in range(before, centre.gateway.audit.size)
        ]
        kinds = [
            (e.kind, dict(e.detail).get("outcome", "")) for e in events if isinstance(e, EventEntry)
        ]
        assert kinds == [
            ("dissuasion_claimed", ""),
            ("dissuasion_contact", "not_reached"),
            ("dissuasion_contact", "persuaded"),
        ]
        assert all(task.subject not in repr(e) for e in events)  # no number in the events
        ((_, count, in_time, persuaded, paid),) = store.stats()
        assert (count, in_time, persuaded, paid) == (len(warnings), 1, 1, 0)
        store.close()
        # the same through the CLI
        common = ["--federation", str(centre.fed), "--endpoint", centre.gateway.endpoint,
                  "--tasks", str(tmp_path / "tasks.sqlite")]  # fmt: skip
        second = next(t for t in TaskStore(tmp_path / "tasks.sqlite").tasks(state=TaskState.OPEN))
        officer = ["--officer", "440100124"]
        for argv in (
            ["warn", "claim", second.task_id, *officer, *common],
            ["warn", "record", second.task_id, *officer, "--outcome", "already_paid", *common],
            ["warn", "list", "--state", "closed", *common],
        ):
            assert await asyncio.to_thread(cli_main, argv) == 0, argv
        stats = TaskStore(tmp_path / "tasks.sqlite").stats()
        assert [row[1:] for row in stats] == [(len(warnings), 2, 1, 1)]


class TestBankHold:
    async def test_a_transfer_to_a_listed_account_is_held_reported_and_released(
        self, centre: Centre, fed_dir: Path, world: World, tmp_path: Path
    ) -> None:
        mule = world.chains[0].hops[0].to_account
        victim = world.chains[0].victim
        await centre.list(R.RISK_CATEGORY_BANK_ACCOUNT, mule)
        bank = victim.bank_id
        config = _node_config(bank, fed_dir, world, tmp_path, centre)
        cm = Countermeasures(config)
        node = BankNode.open(config, background=cm.jobs(MemberKind.BANK))
        await node.start()
        try:
            await asyncio.wait_for(cm.ready.wait(), 10)
            assert cm.replica is not None
            assert cm.follower is not None
            await cm.follower.wait_for_size(centre.gateway.risklist.size, timeout=10)
            guard = TransferGuard(index=cm.replica.index, path=tmp_path / "holds.sqlite")
            path = TransferPath(core=node.core, guard=guard)
            now = datetime.now(UTC)

            def transfer(tid: str, to: str, minor: int = 500) -> Transfer:
                return Transfer(tid, victim.account_number, victim.name, to, minor, "CNY", now)

            def posted() -> list[str]:
                page = node.core.transactions(
                    victim.account_number,
                    now - timedelta(minutes=1),
                    now + timedelta(minutes=1),
                    page_size=100,
                    page_token="",
                )
                return [t.memo for t in page.transactions]

            other = world.chains[1].victim.account_number
            ok = path.send(transfer("T-ok", other))
            assert not isinstance(ok, Hold)  # not listed: posted at once
            assert posted() == ["transfer T-ok"]
            hold = path.send(transfer("T-1", mule))
            assert isinstance(hold, Hold)
            assert hold.state == HoldState.HELD
            assert posted() == ["transfer T-ok"]  # held: the money has not left
            short = TransferGuard(
                index=cm.replica.index, path=tmp_path / "short.sqlite", hold_for=timedelta(0)
            )
            assert short.check(transfer("T-2", mule)) is not None
            # reported to police through the gateway
            await node.send_report(
                target=POLICE, report=hold_warning(hold), case=warning_case(), reference="H-1"
            )
            (warning,) = await centre.alerts(1)
            assert warning.early_warning.flagged == mule
            assert warning.early_warning.subject == victim.account_number
            # still listed: the hold stays; the short hold expires on its own
            assert path.sweep() == []
            (expired,) = short.sweep()
            assert expired.state == HoldState.RELEASED_EXPIRED
            # the list says so: removed at the gateway, followed, released and posted
            await centre.remove(R.RISK_CATEGORY_BANK_ACCOUNT, mule)
            await cm.follower.wait_for_size(centre.gateway.risklist.size, timeout=10)
            ((released, tx),) = path.sweep()
            assert released.state == HoldState.RELEASED_DELISTED
            assert released.transfer.transfer_id == "T-1"
            assert tx is not None
            assert tx.counterparty_account == mule
            assert posted() == ["transfer T-ok", "transfer T-1"]
            assert [h.state for h in guard.holds()] == [HoldState.RELEASED_DELISTED]
            guard.close()
            short.close()
        finally:
            await node.stop(grace=None)


UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
UNBOUND_MISSING = (
    None
    if Path(UNBOUND).exists()
    else f"Unbound not found at {UNBOUND}: run scripts/install-system-deps.sh"
)


# Both names resolve from this zone, served inside the same Unbound (no outside network); the
# listed one must still be refused: RPZ, not a missing record, is what answers NXDOMAIN.
_EXAMPLE_ZONE = """$ORIGIN example.
$TTL 60
@ SOA ns.example. hostmaster.example. 1 300 60 86400 60
@ NS ns.example.
ns A 192.0.2.1
shop A 192.0.2.10
fake-bank-refund A 192.0.2.66
pay.fake-bank-refund A 192.0.2.67
"""


def _unbound_conf(root: Path, port: int, zone: Path) -> str:
    (root / "example.zone").write_text(_EXAMPLE_ZONE)
    return f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 1
    username: ""
    chroot: ""
    directory: "{root}"
    pidfile: "{root}/unbound.pid"
    access-control: 127.0.0.0/8 allow
    module-config: "respip validator iterator"
auth-zone:
    name: "example."
    zonefile: "{root}/example.zone"
    for-downstream: no
    for-upstream: yes
    fallback-enabled: no
rpz:
    name: "{DEFAULT_ZONE}."
    zonefile: "{zone}"
    rpz-log: yes
"""


class TestDomainBlocking:
    async def test_a_listed_domain_is_refused_by_a_real_resolver_loading_the_rpz(
        self, centre: Centre, fed_dir: Path, tmp_path: Path
    ) -> None:
        if UNBOUND_MISSING:
            pytest.skip(UNBOUND_MISSING)
        # the cyberspace administration lists a phishing domain through the gateway
        cac = FedgateClient.from_federation(
            fed_dir, MemberId("regulator.gdcac"), endpoint=centre.gateway.endpoint
        )
        request = valid_request(
            "risk_list_add", now=datetime.now(UTC), requesting_agency="regulator.gdcac"
        )
        request.risk_list_add.category = R.RISK_CATEGORY_DOMAIN
        request.risk_list_add.value = "Fake-Bank-Refund.example"
        try:
            answer = await cac.ask(request)
        finally:
            await cac.close()
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK, answer.response.detail
        # a member's verified replica follows the list; the zone is written from it
        keys = ReplicaKeys.from_registry(
            Registry.load_dir(fed_dir), origin=risklist_origin(AuditConfig().origin)
        )
        follower = Follower(
            replica=Replica.open(tmp_path / "replica.sqlite", keys=keys),
            endpoint=centre.gateway.endpoint,
            credentials=MemberCredentials.load(fed_dir, MemberId("regulator.gdcac")),
        )
        follower.start()
        try:
            await follower.wait_for_size(centre.gateway.risklist.size, timeout=10)
        finally:
            await follower.stop()
            follower.replica.close()
        zone = tmp_path / "risklist.rpz"
        assert rpz_main(["--replica", str(tmp_path / "replica.sqlite"), "--out", str(zone)]) == 0
        text = zone.read_text()
        assert "fake-bank-refund.example CNAME ." in text
        assert "*.fake-bank-refund.example CNAME ." in text
        # a real Unbound on loopback loads it
        port = free_port()
        conf = tmp_path / "unbound.conf"
        conf.write_text(_unbound_conf(tmp_path, port, zone))
        check = await asyncio.create_subprocess_exec(
            UNBOUND + "-checkconf", str(conf), stdout=PIPE, stderr=STDOUT
        )
        checked, _ = await check.communicate()
        assert check.returncode == 0, checked.decode(errors="replace")
        proc = await asyncio.create_subprocess_exec(
            UNBOUND, "-d", "-c", str(conf), stdout=PIPE, stderr=STDOUT
        )
        try:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
            resolver.port = port
            resolver.lifetime = 2.0
            answer_ok = None
            for _ in range(50):  # until Unbound listens (bounded: 5 s)
                try:
                    answer_ok = await resolver.resolve("shop.example", "A")
                    break
                except (dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers):
                    await asyncio.sleep(0.1)
            assert answer_ok is not None, "unbound did not answer"
            assert [r.address for r in answer_ok] == ["192.0.2.10"]
            for name in ("fake-bank-refund.example", "pay.fake-bank-refund.example"):
                with pytest.raises(dns.resolver.NXDOMAIN):
                    await resolver.resolve(name, "A")
        finally:
            proc.terminate()
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert b"rpz: applied" in out, out.decode(errors="replace")
