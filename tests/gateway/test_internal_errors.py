"""Issue 10, item 8: an unexpected error after stage 7 leaves as INTERNAL without internal text,
with a ``gateway_fault`` response leg; a batch item failing so does not hold up the batch.

The fault is real: another connection holds the gateway's ticket database locked, so opening
the ticket of a queued request fails inside the gateway after the request leg is durable.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import gateway_service_pb2, gateway_service_pb2_grpc

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

_INTERNAL_TEXT = re.compile(r"locked|sqlite|Operational|Traceback|\.py", re.IGNORECASE)


@contextmanager
def tickets_locked(h: GatewayHarness) -> Iterator[None]:
    """Another writer holds the gateway's ticket database for the duration."""
    db = sqlite3.connect(h.config().tickets_path, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


async def _legs_of(h: GatewayHarness, request_id: str) -> list[RequestLeg | ResponseLeg]:
    return [
        e
        for e in await h.entries()
        if isinstance(e, RequestLeg | ResponseLeg) and e.request_id == request_id
    ]


class TestAfterStageSeven:
    async def test_internal_without_text_and_a_response_leg(self, harness: GatewayHarness) -> None:
        request = harness.request()
        harness.node.modes[request.request_id] = "queue"
        with tickets_locked(harness):
            refusal = await harness.refusal(harness.sign(request), timeout=30)
        assert refusal.code == grpc.StatusCode.INTERNAL
        assert refusal.error.reason == "INTERNAL"
        assert not _INTERNAL_TEXT.search(refusal.error.message), refusal.error.message
        trace_id = re.fullmatch(
            r"internal error at stage [a-z_]+; trace id ([0-9a-f]{32})", refusal.error.message
        )
        assert trace_id is not None, refusal.error.message
        legs = await _legs_of(harness, request.request_id)
        assert [type(leg).__name__ for leg in legs] == ["RequestLeg", "ResponseLeg", "ResponseLeg"]
        request_leg, pending, fault = legs
        assert isinstance(request_leg, RequestLeg)
        assert request_leg.decision == "allowed"
        assert isinstance(pending, ResponseLeg)
        assert pending.status == "pending"
        assert isinstance(fault, ResponseLeg)
        assert fault.status == "gateway_fault"
        assert fault.detail == f"INTERNAL: {refusal.error.message}"
        assert trace_id.group(1) in fault.detail
        assert not _INTERNAL_TEXT.search(fault.detail)

    async def test_batch_with_one_failing_item_returns_its_error(
        self, harness: GatewayHarness
    ) -> None:
        requests = [harness.request() for _ in range(3)]
        harness.node.modes[requests[1].request_id] = "queue"
        batch = gateway_service_pb2.SubmitBatchRequest(
            envelopes=[harness.sign(r) for r in requests]
        )
        creds = MemberCredentials.load(harness.federation, MemberId("police.gd.afc"))
        async with grpc.aio.secure_channel(
            harness.endpoint,
            channel_credentials(creds),
            options=channel_options(MemberId("gateway")),
        ) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            with tickets_locked(harness):
                # A generous deadline: before the fix the call waited for all of it and failed
                # with DEADLINE_EXCEEDED; now it ends as soon as the failing item has failed.
                items = [item async for item in stub.SubmitBatch(batch, timeout=60)]
        by_id = {item.request_id: item for item in items}
        assert sorted(by_id) == sorted(r.request_id for r in requests)
        failed = by_id[requests[1].request_id]
        assert failed.WhichOneof("outcome") == "error"
        assert failed.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert failed.error.reason == "INTERNAL"
        assert not _INTERNAL_TEXT.search(failed.error.message)
        for ok in (requests[0], requests[2]):
            assert by_id[ok.request_id].WhichOneof("outcome") == "response"
        legs = await _legs_of(harness, requests[1].request_id)
        assert isinstance(legs[-1], ResponseLeg)
        assert legs[-1].status == "gateway_fault"
