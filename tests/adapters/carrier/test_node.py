"""Every carrier action end to end through the node (gateway certificate, police-signed
envelope) on the seeded world: signed, hash-bound answers and refusals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fedgate.testing import mobile_number
from fedgate.v1 import carrier_pb2, request_pb2

OK = request_pb2.RESPONSE_STATUS_OK
REFUSED = request_pb2.RESPONSE_STATUS_REFUSED
NOT_FOUND = request_pb2.RESPONSE_STATUS_NOT_FOUND
INVALID = request_pb2.RESPONSE_STATUS_INVALID


def fraud_number(kit: Any) -> tuple[Any, Any]:
    chain = kit.world.chains[0]
    return chain, chain.fraud_numbers[0]


class TestCarrierQueries:
    async def test_registered_owner_status_and_sim_count(self, kit: Any, carrier_node: Any) -> None:
        victim = kit.world.chains[0].victim
        node = await carrier_node(victim.carrier_id)
        request = kit.request("subscriber", target=victim.carrier_id, phone_number=victim.phone)
        owner = (await kit.ask(node, request)).subscriber
        assert (owner.phone_number, owner.name, owner.id_number) == (
            victim.phone,
            victim.name,
            victim.id_number,
        )
        assert owner.status == "active"
        assert owner.channel in ("store", "online", "agent")
        status = await kit.ask(
            node, kit.request("number_status", target=victim.carrier_id, phone_number=victim.phone)
        )
        assert status.number_status.status == "active"
        count_query = kit.request("sim_count", target=victim.carrier_id)
        count_query.sim_count.id_number = victim.id_number
        count = (await kit.ask(node, count_query)).sim_count
        assert count.id_number == victim.id_number
        assert count.live_sims >= 1

    async def test_stage_one_says_hit_not_how_many(self, kit: Any, carrier_node: Any) -> None:
        """Staged disclosure, stage 1: whether a live SIM is registered under the ID, not the
        count; automatically even where staff answer the details."""
        victim = kit.world.chains[0].victim
        node = await carrier_node(victim.carrier_id, manual={"sim_count"})
        for id_number, hit in ((victim.id_number, True), ("440106195001019976", False)):
            request = kit.request("sim_count", target=victim.carrier_id)
            request.sim_count.id_number = id_number
            request.disclosure.stage = request_pb2.DISCLOSURE_STAGE_HITS
            response = await kit.ask(node, request)
            assert response.status == request_pb2.RESPONSE_STATUS_OK
            assert response.WhichOneof("result") == "hit"
            assert response.hit.hit is hit

    async def test_call_records_show_the_fraud_calls(self, kit: Any, carrier_node: Any) -> None:
        chain, fraud = fraud_number(kit)
        node = await carrier_node(fraud.carrier_id)
        request = kit.request("call_records", target=fraud.carrier_id, phone_number=fraud.number)
        window = request.call_records.window
        window.start.FromDatetime(chain.first_contact - timedelta(hours=1))
        window.end.FromDatetime(chain.first_contact + timedelta(hours=2))
        result = (await kit.ask(node, request)).call_records
        assert result.phone_number == fraud.number
        assert chain.victim.phone in {r.counterparty for r in result.records}
        assert {r.kind for r in result.records} <= {"call", "sms"}
        times = [r.time.ToDatetime() for r in result.records]
        assert times == sorted(times)

    async def test_location_is_answered_or_not_found(self, kit: Any, carrier_node: Any) -> None:
        _, fraud = fraud_number(kit)
        node = await carrier_node(fraud.carrier_id)
        request = kit.request("location", target=fraud.carrier_id, phone_number=fraud.number)
        response = await kit.ask(node, request)
        assert response.status in (OK, NOT_FOUND)
        if response.status == OK:
            assert response.location.cell_id

    async def test_numbers_out_of_range_and_unknown_numbers(
        self, kit: Any, carrier_node: Any
    ) -> None:
        node = await carrier_node("carrier.cmcc")
        foreign = kit.request(
            "subscriber", target="carrier.cmcc", phone_number=mobile_number("carrier.cucc", 3)
        )
        response = await kit.ask(node, foreign)
        assert response.status == INVALID
        assert "phone_number" in response.detail
        unknown = kit.request(
            "subscriber", target="carrier.cmcc", phone_number=mobile_number("carrier.cmcc", 99_999)
        )
        assert (await kit.ask(node, unknown)).status == NOT_FOUND


class TestCarrierOrders:
    async def test_suspend_block_and_restore_each_execute_once(
        self, kit: Any, carrier_node: Any
    ) -> None:
        _, fraud = fraud_number(kit)
        node = await carrier_node(fraud.carrier_id)
        suspend = kit.request("number_suspend", target=fraud.carrier_id, phone_number=fraud.number)
        envelope = kit.sign(suspend)
        link = kit.link(node)
        first = await link.handle(envelope)
        second = await link.handle(envelope)
        assert first.response.SerializeToString() == second.response.SerializeToString()
        ack = kit.verify(envelope, first).number_order
        assert (ack.subject, ack.kind, ack.status) == (
            fraud.number,
            carrier_pb2.NUMBER_ORDER_KIND_SUSPEND,
            "suspended",
        )
        again = await kit.ask(
            node, kit.request("number_suspend", target=fraud.carrier_id, phone_number=fraud.number)
        )
        assert again.status == REFUSED
        assert "it is suspended" in again.detail
        block = kit.request("number_block", target=fraud.carrier_id, phone_number=fraud.number)
        assert (await kit.ask(node, block)).number_order.status == "blocked"
        restore = kit.request(
            "number_restore",
            target=fraud.carrier_id,
            phone_number=fraud.number,
            original_request_id=block.request_id,
        )
        assert (await kit.ask(node, restore)).number_order.status == "active"
        status = kit.request("number_status", target=fraud.carrier_id, phone_number=fraud.number)
        assert (await kit.ask(node, status)).number_status.status == "active"

    async def test_sms_block_is_acknowledged_once(self, kit: Any, carrier_node: Any) -> None:
        node = await carrier_node("carrier.cmcc")
        request = kit.request("sms_block", target="carrier.cmcc")
        ack = (await kit.ask(node, request)).number_order
        assert (ack.subject, ack.status) == (request.sms_block.sender, "sms_blocked")
        again = kit.request("sms_block", target="carrier.cmcc")
        refused = await kit.ask(node, again)
        assert refused.status == REFUSED
        assert "already blocked" in refused.detail
