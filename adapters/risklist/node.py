"""The risk list at an agency node: the follower, and the checks on the node's own paths.

``Countermeasures(config)`` gives the background jobs an agency node runs when
``[risklist] follow = true``: the replica and its follower (every kind), and for a carrier with
``feed_per_second > 0`` the interception of a bounded call/SMS feed generated from the world,
sending early warnings to police through the gateway (``[risklist] warn``). A warning that
cannot be sent now (gateway down, over quota) is kept and sent again later, oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from adapters._lifecycle import Background
from adapters.carrier.backend import SubscriberSystem
from adapters.carrier.intercept import COUNTS_FILE, CallEvent, Interceptor, world_feed
from adapters.config import NodeConfig
from adapters.node import AgencyNode, CoreNode
from adapters.reports import is_transient
from adapters.risklist.follower import Follower
from adapters.risklist.replica import Replica, ReplicaKeys
from fedgate.errors import FedgateError, NotFound
from fedgate.federation import MemberKind
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, report_pb2

__all__ = ["REPLICA_FILE", "Countermeasures", "warning_case"]

_log = logging.getLogger("adapters.risklist")
REPLICA_FILE = "risklist.sqlite"
_TICK_S = 0.2
_REPORT_S = 5.0
"""How often a carrier sends the centre its interception counts (when they changed)."""
_MAX_UNSENT = 10_000


def warning_case() -> common_pb2.CaseInfo:
    """The case header of an early warning: none filed yet, telecom fraud suspected."""
    return common_pb2.CaseInfo(
        case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD, reason="疑似电信网络诈骗潜在受害人预警"
    )


class Countermeasures:
    """The risk list jobs of one node (see the module's docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.replica: Replica | None = None
        self.follower: Follower | None = None
        self.interceptor: Interceptor | None = None
        self.ready = asyncio.Event()
        self.unsent: list[report_pb2.EarlyWarning] = []
        self.sent = 0
        self.reported: dict[tuple[str, str], tuple[int, int, int]] = {}
        """The interception counts the centre has acknowledged, per (day, kind)."""

    def jobs(self, kind: MemberKind) -> tuple[Background, ...]:
        """The background jobs for a node of ``kind`` (empty when not following the list)."""
        if not self.config.risklist_follow:
            return ()
        jobs: list[Background] = [self.follow]
        if kind == MemberKind.CARRIER and self.config.feed_per_s > 0:
            jobs.append(self.intercept)
        return tuple(jobs)

    async def follow(self, node: AgencyNode) -> None:
        """Keep the replica up to date with the gateway until cancelled."""
        keys = ReplicaKeys.from_registry(
            node.registry,
            origin=self.config.risklist_origin,
            min_cosignatures=self.config.risklist_min_cosignatures,
        )
        replica = await asyncio.to_thread(
            Replica.open, Path(self.config.state_dir) / REPLICA_FILE, keys=keys
        )
        endpoint = self.config.gateway_endpoint or node.registry.member(node.gateway_id).endpoint
        follower = Follower(replica=replica, endpoint=endpoint, credentials=node.credentials)
        self.replica, self.follower = replica, follower
        follower.start()
        self.ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await follower.stop()
            if self.interceptor is not None:
                self.interceptor.close()
            replica.close()

    async def intercept(self, node: AgencyNode) -> None:
        """Run the world's call/SMS feed through the interceptor, warning police."""
        from adapters.synth import load_world

        assert isinstance(node, CoreNode)
        await self.ready.wait()
        assert self.replica is not None
        assert self.follower is not None
        await self.follower.synced.wait()  # never intercept against a list not yet caught up
        config = self.config
        carrier: SubscriberSystem = node.core
        backend = config.backend_path
        if backend is None:
            _log.error("risk list: the call feed needs backend.path (the world's database)")
            return
        world = await asyncio.to_thread(load_world, backend.parent)
        fraud = sorted({n.number for c in world.chains for n in c.fraud_numbers})

        def name_of(number: str) -> str:
            try:
                return str(carrier.subscriber(number).name)
            except (FedgateError, NotFound):
                return ""

        interceptor = Interceptor(
            index=self.replica.index,
            is_subscriber=lambda n: _is_ours(carrier, n),
            name_of=name_of,
            counts_path=Path(config.state_dir) / COUNTS_FILE,
            window=config.warning_window,
        )
        self.interceptor = interceptor
        start = datetime.now(UTC)
        feed = world_feed(
            backend,
            fraud,
            count=config.feed_max or 1_000_000,
            seed=world.seed,
            start=start,
            per_second=config.feed_per_s,
        )
        pending: CallEvent | None = next(feed, None)
        next_report = time.monotonic() + _REPORT_S
        while pending is not None:
            now = datetime.now(UTC)
            while pending is not None and pending.at <= now:
                verdict = interceptor.process(pending)
                if verdict.warning is not None and len(self.unsent) < _MAX_UNSENT:
                    self.unsent.append(verdict.warning)
                pending = next(feed, None)
            await asyncio.to_thread(interceptor.flush)
            await self._send_warnings(node)
            if time.monotonic() >= next_report:
                await self._report_counts(node, interceptor)
                next_report = time.monotonic() + _REPORT_S
            await asyncio.sleep(_TICK_S)
        while self.unsent:  # the feed is over: deliver what is left
            await self._send_warnings(node)
            await asyncio.sleep(1.0)
        await self._report_counts(node, interceptor)

    async def _report_counts(self, node: AgencyNode, interceptor: Interceptor) -> None:
        """Send the centre the daily counts that changed, as audited events (counts only)."""
        rows = await asyncio.to_thread(interceptor.daily_counts)
        for day, kind, seen, blocked, warned in rows:
            if self.reported.get((day, kind)) == (seen, blocked, warned):
                continue
            try:
                await node.report_sender().client.record_event(
                    kind="interception_counts",
                    actor=f"{node.member_id}.node",
                    at=datetime.now(UTC),
                    detail=[
                        ("day", day),
                        ("kind", kind),
                        ("seen", str(seen)),
                        ("blocked", str(blocked)),
                        ("warned", str(warned)),
                    ],
                )
            except FedgateError as exc:
                _log.warning("risk list: interception counts not reported: %s", exc.message)
                return  # again next round
            self.reported[(day, kind)] = (seen, blocked, warned)

    async def _send_warnings(self, node: AgencyNode) -> None:
        while self.unsent:
            warning = self.unsent[0]
            try:
                await node.send_report(
                    target=MemberId(self.config.warn_police),
                    report=warning,
                    case=warning_case(),
                    reference=f"EW-{node.member_id}-{warning.contact_time.seconds}",
                    urgency=common_pb2.URGENCY_EMERGENCY,
                    purpose="潜在受害人预警，请尽快劝阻",
                )
            except FedgateError as exc:
                if is_transient(exc):
                    return  # try again next round
                _log.error("risk list: an early warning was refused: %s", exc.message)
            self.unsent.pop(0)
            self.sent += 1


def _is_ours(carrier: SubscriberSystem, number: str) -> bool:
    try:
        carrier.number_status(number)
    except FedgateError:
        return False
    return True
