"""Tests for rebuilding the replay cache from the audit log (gateway.replay.rebuild_from_audit):
what a power loss takes from a ``synchronous=NORMAL`` cache comes back before the gateway serves.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.actions import new_request_id
from fedgate.audit_entry import RequestLeg
from fedgate.errors import AuditUnavailable, Replayed
from fedgate.note import NoteSigner
from fedgate.v1 import envelope_pb2, request_pb2
from gateway.audit import sqlite_store
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import SqliteDatabase, open_sqlite_store
from gateway.replay import ReplayCache, SeenRequest, rebuild_from_audit

if TYPE_CHECKING:
    from conftest import GatewayHarness

ORIGIN = "fedgate.example/replay-test"
NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
SKEW = timedelta(minutes=5)
WINDOW = timedelta(minutes=10)
WINDOW_START = NOW - WINDOW - SKEW


def leg(
    *,
    received_at: datetime,
    issued_at: datetime | None = None,
    decision: str = "allowed",
    rule: str = "p, police, stop_payment",
    envelope: bytes | None = None,
) -> tuple[RequestLeg, str, bytes]:
    """A request leg as the pipeline logs it, with the request id and nonce it carries."""
    request_id, nonce = new_request_id(int(received_at.timestamp() * 1000)), os.urandom(16)
    request = request_pb2.Request(request_id=request_id, nonce=nonce)
    request.issued_at.FromDatetime(issued_at or received_at)
    body = envelope_pb2.SignedEnvelope(body=request.SerializeToString()).SerializeToString()
    entry = RequestLeg(
        envelope=body if envelope is None else envelope,
        peer="police.gd.afc",
        peer_cert_sha256="",
        received_at=received_at,
        decision=decision,
        rule=rule,
        request_id=request_id,
    )
    return entry, request_id, nonce


@pytest_asyncio.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    store = await open_sqlite_store(tmp_path / "audit.sqlite", origin=ORIGIN)
    log = await AuditLog.open(
        store=store,
        origin=ORIGIN,
        signer=NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate()),
    )
    yield log
    await log.close()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ReplayCache]:
    c = ReplayCache.open(tmp_path / "replay.sqlite", window=WINDOW, synchronous="NORMAL")
    yield c
    c.close()


def rebuild(cache: ReplayCache, tmp_path: Path) -> Any:
    db = SqliteDatabase(tmp_path / "audit.sqlite", origin=ORIGIN, writer=False)
    try:
        return rebuild_from_audit(cache, db, origin=ORIGIN, skew=SKEW, now=NOW)
    finally:
        db.close()


class TestRebuildFromAudit:
    async def test_a_logged_request_is_a_replay_after_its_cache_entry_is_lost(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path
    ) -> None:
        entry, request_id, nonce = leg(received_at=NOW - timedelta(minutes=1))
        await audit.append(entry)
        rebuilt = rebuild(cache, tmp_path)
        assert (rebuilt.legs, rebuilt.remembered) == (1, 1)
        with pytest.raises(Replayed, match=f"request id {request_id} and its nonce"):
            cache.check_and_remember(request_id, nonce, NOW - timedelta(minutes=1), now=NOW)

    async def test_the_rebuilt_entry_expires_with_the_original(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path
    ) -> None:
        issued = NOW - timedelta(minutes=9)
        entry, request_id, nonce = leg(received_at=issued)
        await audit.append(entry)
        rebuild(cache, tmp_path)
        before = issued + WINDOW - timedelta(seconds=1)
        with pytest.raises(Replayed):
            cache.check_and_remember(request_id, nonce, issued, now=before)
        after = issued + WINDOW + timedelta(seconds=31)  # the next pruning is due
        cache.check_and_remember("other", b"other", after, now=after)
        assert cache.stored_keys() == 2  # only the other request's keys

    @pytest.mark.parametrize(
        "rule",
        [
            "QUOTA_EXCEEDED: officer over quota",
            "POLICY_DENIED: no rule",
            "RULE_VIOLATED: over the limit",
            "INVALID_ARGUMENT: amount must be positive",  # also stage 2: the safe side
            "MEMBER_REFUSED: the target is suspended",
            "AUDIT_UNAVAILABLE: replay cache unavailable",
            "INTERNAL: internal error at stage validation",
        ],
    )
    async def test_refusals_after_stage_4_stay_remembered(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path, rule: str
    ) -> None:
        entry, request_id, nonce = leg(received_at=NOW, decision="refused", rule=rule)
        await audit.append(entry)
        assert rebuild(cache, tmp_path).remembered == 1
        with pytest.raises(Replayed, match="already used"):
            cache.check_and_remember(request_id, nonce, NOW, now=NOW)

    @pytest.mark.parametrize(
        "rule",
        [
            "SIGNATURE_INVALID: bad signature",
            "UNKNOWN_KEY: no such key",
            "KEY_NOT_VALID: expired key",
            "PEER_MISMATCH: signed by another member",
            "UNAUTHENTICATED: no certificate",
            "MALFORMED: not a SubmitRequest",
            "STALE: issued_at is 7m in the past",
            "REPLAYED: request id was already used",
        ],
    )
    async def test_refusals_before_stage_4_are_not_remembered(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path, rule: str
    ) -> None:
        entry, request_id, nonce = leg(received_at=NOW, decision="refused", rule=rule)
        await audit.append(entry)
        rebuilt = rebuild(cache, tmp_path)
        assert (rebuilt.legs, rebuilt.remembered) == (1, 0)
        cache.check_and_remember(request_id, nonce, NOW, now=NOW)  # as before the loss: passes

    async def test_an_envelope_that_does_not_decode_is_skipped(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path
    ) -> None:
        entry, _, _ = leg(
            received_at=NOW, decision="refused", rule="INVALID_ARGUMENT: x", envelope=b"\xff\x00"
        )
        await audit.append(entry)
        assert rebuild(cache, tmp_path).remembered == 0

    @pytest.mark.parametrize("seconds", [2**62, -(2**40)])
    async def test_an_issued_at_out_of_range_is_skipped(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path, seconds: int
    ) -> None:
        # A hostile request refused at stage 2; it must not stop the gateway from starting.
        request = request_pb2.Request(request_id="r", nonce=b"n" * 16)
        request.issued_at.seconds = seconds
        envelope = envelope_pb2.SignedEnvelope(body=request.SerializeToString())
        entry, _, _ = leg(
            received_at=NOW,
            decision="refused",
            rule="INVALID_ARGUMENT: issued_at: not a valid timestamp",
            envelope=envelope.SerializeToString(),
        )
        await audit.append(entry)
        rebuilt = rebuild(cache, tmp_path)
        assert (rebuilt.legs, rebuilt.remembered) == (1, 0)

    async def test_only_request_legs_of_the_window_are_read(
        self, audit: AuditLog, cache: ReplayCache, tmp_path: Path
    ) -> None:
        for minutes in range(1, 41):  # before the window: never read
            old, _, _ = leg(received_at=WINDOW_START - timedelta(minutes=minutes))
            await audit.append(old)
        # received at the window's start, issued a skew ahead: live until exactly now
        edge, edge_id, edge_nonce = leg(received_at=WINDOW_START, issued_at=NOW - WINDOW)
        inside, _, _ = leg(received_at=NOW - timedelta(seconds=5))
        for entry in (edge, inside):
            await audit.append(entry)
        rebuilt = rebuild(cache, tmp_path)
        assert (rebuilt.legs, rebuilt.remembered) == (2, 2)
        with pytest.raises(Replayed):
            cache.check_and_remember(edge_id, edge_nonce, NOW - WINDOW, now=NOW)

    def test_the_window_is_found_through_the_time_index(self, tmp_path: Path) -> None:
        con = sqlite3.connect(tmp_path / "plan.sqlite")
        con.executescript(sqlite_store._SCHEMA)
        plan = con.execute(
            "EXPLAIN QUERY PLAN " + sqlite_store._REQUEST_LEGS_SINCE, (0, 1)
        ).fetchall()
        con.close()
        assert [row[3] for row in plan] == ["SEARCH leaves USING INDEX leaves_time (time_us>?)"]

    def test_a_missing_audit_log_fails_closed(self, cache: ReplayCache, tmp_path: Path) -> None:
        with pytest.raises(AuditUnavailable, match="no audit log database"):
            rebuild(cache, tmp_path)


class TestRestore:
    def test_keys_already_held_are_kept_with_the_later_expiry(self, cache: ReplayCache) -> None:
        request_id, nonce = new_request_id(0), os.urandom(16)
        cache.check_and_remember(request_id, nonce, NOW, now=NOW)
        older = SeenRequest(request_id=request_id, nonce=nonce, issued_at=NOW - WINDOW / 2)
        assert cache.restore([older], now=NOW) == 1
        assert cache.stored_keys() == 2
        late = NOW + WINDOW - timedelta(seconds=1)  # past the restored expiry, not the original
        with pytest.raises(Replayed):
            cache.check_and_remember(request_id, nonce, late - SKEW, now=late)

    def test_expired_and_incomplete_requests_are_skipped(self, cache: ReplayCache) -> None:
        seen = [
            SeenRequest(request_id="r1", nonce=b"n1", issued_at=NOW - WINDOW - SKEW),
            SeenRequest(request_id="", nonce=b"n2", issued_at=NOW),
            SeenRequest(request_id="r3", nonce=b"", issued_at=NOW),
        ]
        assert cache.restore(seen, now=NOW) == 0
        assert cache.stored_keys() == 0

    def test_a_closed_cache_fails_closed(self, cache: ReplayCache) -> None:
        cache._db.close()
        seen = [SeenRequest(request_id="r1", nonce=b"n1", issued_at=NOW)]
        with pytest.raises(AuditUnavailable, match="cannot restore"):
            cache.restore(seen, now=NOW)


@pytest_asyncio.fixture
async def gateway(
    gw_federation: Path, tmp_path: Path, harness_factory: Callable[..., Any]
) -> AsyncIterator[GatewayHarness]:
    h: GatewayHarness = await harness_factory(gw_federation, tmp_path)
    try:
        yield h
    finally:
        await h.close()


def replay_files(h: GatewayHarness) -> list[Path]:
    db = h.state_dir / "replay.sqlite"
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


async def power_loss(h: GatewayHarness, keep: Path | None = None) -> None:
    """Stop the gateway and let its replay cache lose its last commits: it comes back empty,
    or as the older copy ``keep``, while the audit log keeps every entry (it fsyncs)."""
    await h.gateway.stop()
    lose_commits(h, keep)


def lose_commits(h: GatewayHarness, keep: Path | None) -> None:
    for f in replay_files(h):
        f.unlink(missing_ok=True)
    if keep is not None:
        keep.rename(replay_files(h)[0])


class TestGatewayAfterPowerLoss:
    async def test_a_replay_is_refused_although_the_cache_came_back_empty(
        self, gateway: GatewayHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        h = gateway
        envelope = h.sign(h.request())
        assert (await h.client().submit(envelope)).answer is not None
        forwarded = len(h.node.received)
        await power_loss(h)
        with caplog.at_level(logging.INFO, logger="gateway.server"):
            await h.restart()
        assert any("replay cache rebuilt" in r.getMessage() for r in caplog.records)
        refusal = await h.refusal(envelope)
        assert (refusal.code, refusal.error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REPLAYED")
        assert len(h.node.received) == forwarded

    async def test_a_replay_is_refused_although_the_cache_came_back_older(
        self, gateway: GatewayHarness, tmp_path: Path
    ) -> None:
        h = gateway
        first = h.sign(h.request())
        assert (await h.client().submit(first)).answer is not None
        older = tmp_path / "older-replay.sqlite"
        with (
            sqlite3.connect(replay_files(h)[0]) as live,
            sqlite3.connect(older) as copy,
        ):
            live.backup(copy)  # a consistent copy holding only the first request
        live.close()
        copy.close()
        second = h.sign(h.request())
        assert (await h.client().submit(second)).answer is not None
        await power_loss(h, keep=older)
        await h.restart()
        for envelope in (second, first):
            refusal = await h.refusal(envelope)
            assert refusal.error.reason == "REPLAYED", refusal.error.message
