"""The durable request ledger and staff queue: manual requests wait, deadlines expire with a
signed EXPIRED answer (injected clock), reminders fire once, stored answers never change."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.queue import Entry, RequestStore
from fedgate.errors import InvalidArgument, NotFound, RuleViolated
from fedgate.types import RequestId
from fedgate.v1 import envelope_pb2, request_pb2, ticket_pb2

WAITING = ticket_pb2.TICKET_STATE_WAITING
CLAIMED = ticket_pb2.TICKET_STATE_CLAIMED
ANSWERED = ticket_pb2.TICKET_STATE_ANSWERED
EXPIRED = ticket_pb2.TICKET_STATE_EXPIRED


class TestManualQueue:
    async def test_a_manual_action_is_queued_until_its_deadline(
        self, kit: Any, bank_node: Any, clock: Any
    ) -> None:
        node = await bank_node("bank.icbc", manual={"transactions"}, clock=clock)
        request = kit.request("transactions")
        envelope = kit.sign(request)
        link = kit.link(node)
        reply = await link.handle(envelope)
        assert reply.queued.request_id == request.request_id
        assert reply.queued.deadline == request.answer_deadline
        again = await link.handle(envelope)
        assert again.SerializeToString() == reply.SerializeToString()
        result = await link.get_result(request.request_id)
        assert result.state == WAITING
        assert not result.HasField("response")
        automatic = await link.handle(kit.sign(kit.request("account_holder")))
        assert automatic.HasField("response")

    async def test_default_deadline_and_reminder(
        self, kit: Any, bank_node: Any, clock: Any
    ) -> None:
        node = await bank_node("bank.icbc", manual={"transactions"}, clock=clock)
        request = kit.request("transactions")
        request.ClearField("answer_deadline")
        reply = await kit.link(node).handle(kit.sign(request))
        deadline = reply.queued.deadline.ToDatetime(tzinfo=UTC)
        assert deadline == clock.now + timedelta(hours=24)
        entry = node.store.get(request.request_id)
        assert entry.remind_at == deadline - timedelta(minutes=15)

        clock.advance(timedelta(hours=23, minutes=44))
        assert await node.send_reminders() == ()
        clock.advance(timedelta(minutes=2))
        (due,) = await node.send_reminders()
        assert due.request_id == request.request_id
        assert await node.send_reminders() == ()  # once only

    @pytest.mark.parametrize("claimed", [False, True])
    async def test_an_unanswered_query_expires_with_a_signed_answer(
        self, kit: Any, bank_node: Any, clock: Any, claimed: bool
    ) -> None:
        node = await bank_node("bank.icbc", manual={"transactions"}, clock=clock)
        request = kit.request("transactions")
        request.ClearField("answer_deadline")
        envelope = kit.sign(request)
        link = kit.link(node)
        await link.handle(envelope)
        if claimed:
            node.store.claim(request.request_id, "icbc.zhang")
        clock.advance(timedelta(hours=24) - timedelta(seconds=1))
        assert (await link.get_result(request.request_id)).state in (WAITING, CLAIMED)
        clock.advance(timedelta(seconds=1))
        result = await link.get_result(request.request_id)
        assert result.state == EXPIRED
        response = kit.verify_signed(envelope, result.response)
        assert response.status == request_pb2.RESPONSE_STATUS_EXPIRED
        assert "did not answer before the deadline" in response.detail
        assert response.answered_at.ToDatetime(tzinfo=UTC) == clock.now
        replay = await link.handle(envelope)
        assert replay.response.SerializeToString() == result.response.SerializeToString()
        with pytest.raises(RuleViolated, match="expired"):
            node.store.claim(request.request_id, "icbc.li")


def _entry(request_id: str, deadline: datetime, now: datetime) -> Entry:
    request = request_pb2.Request(request_id=request_id, requesting_agency="police.gd.afc")
    request.transactions.account_number = "6222020000000000000"
    body = request.SerializeToString()
    return Entry(
        request_id=RequestId(request_id),
        request_hash=b"h" * 32,
        envelope=envelope_pb2.SignedEnvelope(body=body).SerializeToString(),
        action="transactions",
        manual=True,
        state=WAITING,
        received_at=now,
        deadline=deadline,
        remind_at=deadline - timedelta(minutes=15),
        claimed_by="",
        answered_by="",
        answered_at=None,
        response=None,
        log_origin="",
        leaf_index=0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = RequestStore.in_state_dir(tmp_path / "state")
    yield s
    s.close()


class TestRequestStore:
    def test_the_queue_lists_earliest_deadline_first_in_pages(self, store: Any) -> None:
        now = datetime.now(UTC)
        for i in (3, 1, 4, 0, 2):
            store.enqueue(_entry(f"r{i}", now + timedelta(hours=i + 1), now))
        seen: list[str] = []
        token = ""
        while True:
            page, token = store.list([WAITING], page_size=2, page_token=token)
            assert len(page) <= 2
            seen += [e.request_id for e in page]
            if not token:
                break
        assert seen == ["r0", "r1", "r2", "r3", "r4"]
        with pytest.raises(InvalidArgument, match="page_size"):
            store.list([WAITING], page_size=501)
        with pytest.raises(InvalidArgument, match="page_token"):
            store.list([CLAIMED], page_token=store.list([WAITING], page_size=1)[1])

    def test_claims_belong_to_their_claimant(self, store: Any) -> None:
        now = datetime.now(UTC)
        store.enqueue(_entry("r1", now + timedelta(hours=1), now))
        with pytest.raises(RuleViolated, match="claim it first"):
            store.answer("r1", "icbc.zhang", lambda e: b"x", now)
        assert store.claim("r1", "icbc.zhang").claimed_by == "icbc.zhang"
        assert store.claim("r1", "icbc.zhang").state == CLAIMED  # claiming again is a no-op
        with pytest.raises(RuleViolated, match=r"claimed by icbc\.zhang"):
            store.claim("r1", "icbc.li")
        with pytest.raises(RuleViolated, match=r"claimed by icbc\.zhang, not icbc\.li"):
            store.release("r1", "icbc.li")
        assert store.release("r1", "icbc.zhang").state == WAITING
        with pytest.raises(NotFound, match="no queued request nope"):
            store.claim("nope", "icbc.zhang")

    def test_a_stored_answer_never_changes(self, store: Any, tmp_path: Path) -> None:
        now = datetime.now(UTC)
        store.enqueue(_entry("r1", now + timedelta(hours=1), now))
        store.claim("r1", "icbc.zhang")
        answered = store.answer("r1", "icbc.zhang", lambda e: b"signed", now)
        assert (answered.state, answered.answered_by, answered.response) == (
            ANSWERED,
            "icbc.zhang",
            b"signed",
        )
        with pytest.raises(RuleViolated, match="answered"):
            store.claim("r1", "icbc.li")
        conn = sqlite3.connect(tmp_path / "state" / "node.sqlite")
        try:
            with pytest.raises(sqlite3.IntegrityError, match="never changes"):
                conn.execute("UPDATE requests SET response = x'00' WHERE request_id = 'r1'")
            with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
                conn.execute("DELETE FROM requests")
        finally:
            conn.close()

    def test_the_first_entry_for_a_request_id_wins(self, store: Any) -> None:
        now = datetime.now(UTC)
        first = store.enqueue(_entry("r1", now + timedelta(hours=1), now))
        second = store.enqueue(_entry("r1", now + timedelta(hours=9), now))
        assert second == first
