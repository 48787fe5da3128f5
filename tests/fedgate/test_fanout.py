"""A fan-out's target set (``fedgate.fanout``): each MUST of the module contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fedgate.errors import InvalidArgument
from fedgate.fanout import MAX_FANOUT, addressed_to, resolve_targets
from fedgate.registry import Registry
from fedgate.testing import valid_request
from fedgate.types import MemberId
from fedgate.v1 import request_pb2

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
BANKS = ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb")


def fan(action: str = "accounts_by_id", **targets: object) -> request_pb2.Request:
    request = valid_request(action, now=NOW)
    request.target_agency = ""
    request.target_set.CopyFrom(request_pb2.TargetSet(**targets))  # type: ignore[arg-type]
    return request


class TestResolveTargets:
    def test_every_bank_in_registry_order(self, federation_registry: Registry) -> None:
        request = fan(group=request_pb2.TARGET_GROUP_ALL_BANKS)
        assert resolve_targets(request, federation_registry) == BANKS

    def test_every_carrier(self, federation_registry: Registry) -> None:
        request = fan("sim_count", group=request_pb2.TARGET_GROUP_ALL_CARRIERS)
        assert resolve_targets(request, federation_registry) == (
            "carrier.cmcc", "carrier.cucc", "carrier.ctcc",
        )  # fmt: skip

    def test_a_list_in_its_order(self, federation_registry: Registry) -> None:
        request = fan(members=["bank.ccb", "bank.icbc"])
        assert resolve_targets(request, federation_registry) == ("bank.ccb", "bank.icbc")

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda r: setattr(r, "target_agency", "bank.icbc"), "target_agency"),
            (lambda r: r.ClearField("target_set"), "target_set"),
            (lambda r: r.target_set.members.append("bank.ccb"), "target_set.members"),
        ],
    )
    def test_malformed_sets_name_the_field(
        self, federation_registry: Registry, change: object, field: str
    ) -> None:
        request = fan(group=request_pb2.TARGET_GROUP_ALL_BANKS)
        change(request)  # type: ignore[operator]
        with pytest.raises(InvalidArgument) as info:
            resolve_targets(request, federation_registry)
        assert [v.field for v in info.value.violations] == [field]

    def test_duplicates_empty_and_too_many_are_refused(self, federation_registry: Registry) -> None:
        for members in (
            [],
            ["bank.icbc", "bank.icbc"],
            [f"bank.b{i}" for i in range(MAX_FANOUT + 1)],
        ):
            with pytest.raises(InvalidArgument, match=r"target_set\.members"):
                resolve_targets(fan(members=members), federation_registry)

    @pytest.mark.parametrize(
        "action", ["stop_payment", "freeze", "number_suspend", "aggregate_stats"]
    )
    def test_orders_and_statistics_do_not_fan_out(
        self, federation_registry: Registry, action: str
    ) -> None:
        with pytest.raises(InvalidArgument, match="send orders to one member"):
            resolve_targets(fan(action, members=["bank.icbc"]), federation_registry)


class TestAddressedTo:
    def test_a_member_of_the_set(self, federation_registry: Registry) -> None:
        request = fan(group=request_pb2.TARGET_GROUP_ALL_BANKS)
        assert addressed_to(request, MemberId("bank.abc"), federation_registry)
        assert not addressed_to(request, MemberId("carrier.cmcc"), federation_registry)

    def test_a_malformed_set_addresses_nobody(self, federation_registry: Registry) -> None:
        request = fan("stop_payment", members=["bank.icbc"])
        assert not addressed_to(request, MemberId("bank.icbc"), federation_registry)

    def test_a_single_target(self, federation_registry: Registry) -> None:
        request = valid_request("account_holder", now=NOW)
        assert addressed_to(request, MemberId(request.target_agency), federation_registry)
        assert not addressed_to(request, MemberId("bank.zzz"), federation_registry)
