"""Tickets for answers an agency's staff give by hand: Submit returns a ticket at once,
GetTicket and WatchTicket deliver the signed answer (checked, logged, countersigned) once the
node has it, an expired query is DEADLINE_EXCEEDED, and only the requester may read a ticket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from fedgate.audit_entry import EventEntry, ResponseLeg
from fedgate.errors import AuditUnavailable, Expired, NotFound
from fedgate.v1 import request_pb2, ticket_pb2

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def queueing(harness: GatewayHarness) -> Iterator[GatewayHarness]:
    harness.node.mode = "queue"
    yield harness
    harness.node.mode = "ok"


async def open_ticket(h: GatewayHarness) -> ticket_pb2.Ticket:
    submitted = await h.client().submit(h.request())
    assert submitted.answer is None
    assert submitted.ticket is not None
    return submitted.ticket


class TestSubmit:
    async def test_queued_request_returns_a_ticket_at_once(self, queueing: GatewayHarness) -> None:
        before = queueing.gateway.audit.size
        ticket = await open_ticket(queueing)
        assert ticket.state == ticket_pb2.TICKET_STATE_WAITING
        assert ticket.target_agency == "bank.icbc"
        assert ticket.request_receipt.leaf_index == before
        pending = await queueing.last_entry()
        assert isinstance(pending, ResponseLeg)
        assert (pending.status, pending.request_id) == ("pending", ticket.ticket_id)


class TestGetTicket:
    async def test_answer_arrives_verified_and_logged(self, queueing: GatewayHarness) -> None:
        client = queueing.client()
        ticket = await open_ticket(queueing)
        state, answer = await client.get_ticket(ticket.ticket_id)
        assert (state.state, answer) == (ticket_pb2.TICKET_STATE_WAITING, None)
        queueing.node.claim(ticket.ticket_id)
        state, _ = await client.get_ticket(ticket.ticket_id)
        assert state.state == ticket_pb2.TICKET_STATE_CLAIMED
        queueing.node.answer(ticket.ticket_id)
        state, answer = await client.get_ticket(ticket.ticket_id)
        assert state.state == ticket_pb2.TICKET_STATE_ANSWERED
        assert answer is not None  # verified by the client, receipt included
        assert answer.response.answered_by == "staff-007"
        leg = await queueing.last_entry()
        assert isinstance(leg, ResponseLeg)
        assert (leg.status, leg.request_id) == ("ok", ticket.ticket_id)
        assert answer.receipt.leaf_index == queueing.gateway.audit.size - 1
        # A second read returns the stored answer without logging it again.
        size = queueing.gateway.audit.size
        _, again = await client.get_ticket(ticket.ticket_id)
        assert again is not None
        assert again.signed == answer.signed
        assert queueing.gateway.audit.size == size

    async def test_concurrent_reads_log_the_answer_once(self, queueing: GatewayHarness) -> None:
        client = queueing.client()
        ticket = await open_ticket(queueing)
        queueing.node.answer(ticket.ticket_id)
        size = queueing.gateway.audit.size
        results = await asyncio.gather(*(client.get_ticket(ticket.ticket_id) for _ in range(4)))
        assert all(answer is not None for _, answer in results)
        assert queueing.gateway.audit.size == size + 1

    async def test_expired_query_is_deadline_exceeded_with_the_reason(
        self, queueing: GatewayHarness
    ) -> None:
        ticket = await open_ticket(queueing)
        queueing.node.expire(ticket.ticket_id)
        with pytest.raises(Expired, match="did not answer before the deadline"):
            await queueing.client().get_ticket(ticket.ticket_id)
        leg = await queueing.last_entry()
        assert isinstance(leg, ResponseLeg)
        assert (leg.status, leg.request_id) == ("expired", ticket.ticket_id)
        with pytest.raises(Expired):
            await queueing.client().get_ticket(ticket.ticket_id)

    async def test_only_the_requester_may_read_its_ticket(self, queueing: GatewayHarness) -> None:
        ticket = await open_ticket(queueing)
        with pytest.raises(NotFound, match="no ticket"):
            await queueing.client("police.gz.unit").get_ticket(ticket.ticket_id)
        with pytest.raises(NotFound):
            await queueing.client("bank.icbc").get_ticket(ticket.ticket_id)

    async def test_a_probe_of_another_members_ticket_is_logged(
        self, queueing: GatewayHarness
    ) -> None:
        ticket = await open_ticket(queueing)
        for prober in ("police.gz.unit", "bank.icbc"):
            with pytest.raises(NotFound) as refused:
                await queueing.client(prober).get_ticket(ticket.ticket_id)
            assert "police.gd.afc" not in refused.value.message  # the owner is not revealed
            entry = await queueing.last_entry()
            assert isinstance(entry, EventEntry)
            assert (entry.kind, entry.actor, entry.member) == (
                "ticket_read_refused",
                prober,
                prober,
            )
            assert dict(entry.detail) == {
                "ticket_id": ticket.ticket_id,
                "owner": "police.gd.afc",
                "reason": "NOT_FOUND",
            }

    async def test_a_watch_of_a_ticket_that_does_not_exist_is_logged(
        self, queueing: GatewayHarness
    ) -> None:
        async def follow() -> None:
            async for _ in queueing.client("police.gz.unit").watch_ticket("no-such-ticket"):
                pass

        with pytest.raises(NotFound):
            await follow()
        entry = await queueing.last_entry()
        assert isinstance(entry, EventEntry)
        assert entry.kind == "ticket_read_refused"
        assert dict(entry.detail)["owner"] == "none"

    async def test_a_probe_that_cannot_be_logged_is_audit_unavailable(
        self, queueing: GatewayHarness
    ) -> None:
        ticket = await open_ticket(queueing)
        queueing.store.failing = True
        try:
            with pytest.raises(AuditUnavailable):
                await queueing.client("police.gz.unit").get_ticket(ticket.ticket_id)
        finally:
            queueing.store.failing = False

    async def test_tickets_survive_a_gateway_restart(self, queueing: GatewayHarness) -> None:
        client = queueing.client()
        request = queueing.request()
        envelope = client.sign(request)
        submitted = await client.submit(envelope)
        assert submitted.ticket is not None
        await queueing.restart()
        queueing.node.answer(request.request_id)
        client = queueing.client()
        client.remember(envelope.body)
        state, answer = await client.get_ticket(request.request_id)
        assert state.state == ticket_pb2.TICKET_STATE_ANSWERED
        assert answer is not None


async def until(condition: Callable[[], bool], watcher: asyncio.Future[Any]) -> None:
    """Wait (at most 10 s, checking every 10 ms) until ``condition`` holds; fail at once if
    ``watcher`` ended first."""
    for _ in range(1000):
        if condition():
            return
        if watcher.done():
            watcher.result()
            raise AssertionError("the stream ended before the expected state")
        await asyncio.sleep(0.01)
    raise AssertionError("the expected state never came")


class TestWatchTicket:
    async def test_stream_follows_the_ticket_to_its_answer(self, queueing: GatewayHarness) -> None:
        ticket = await open_ticket(queueing)
        seen: list[int] = []

        async def follow() -> request_pb2.Response:
            async for state, answer in queueing.client().watch_ticket(ticket.ticket_id):
                seen.append(state.state)
                if answer is not None:
                    return answer.response
            raise AssertionError("the stream ended without an answer")

        watcher = asyncio.ensure_future(follow())
        # each change only once the stream has shown the state before it: no fixed sleeps
        await until(lambda: seen == [ticket_pb2.TICKET_STATE_WAITING], watcher)
        queueing.node.claim(ticket.ticket_id)
        await until(lambda: seen[-1] == ticket_pb2.TICKET_STATE_CLAIMED, watcher)
        queueing.node.answer(ticket.ticket_id)
        response = await asyncio.wait_for(watcher, timeout=5)
        assert response.status == request_pb2.RESPONSE_STATUS_OK
        assert seen == [
            ticket_pb2.TICKET_STATE_WAITING,
            ticket_pb2.TICKET_STATE_CLAIMED,
            ticket_pb2.TICKET_STATE_ANSWERED,
        ]

    async def test_stream_ends_with_deadline_exceeded_on_expiry(
        self, queueing: GatewayHarness
    ) -> None:
        ticket = await open_ticket(queueing)
        states: list[int] = []

        async def follow() -> None:
            async for state, _ in queueing.client().watch_ticket(ticket.ticket_id):
                states.append(state.state)

        watcher = asyncio.ensure_future(follow())
        await until(lambda: states == [ticket_pb2.TICKET_STATE_WAITING], watcher)
        queueing.node.expire(ticket.ticket_id)
        with pytest.raises(Expired):
            await asyncio.wait_for(watcher, timeout=5)
        assert states[-1] == ticket_pb2.TICKET_STATE_EXPIRED
