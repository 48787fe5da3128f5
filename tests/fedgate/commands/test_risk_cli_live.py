"""``fedgate risk add|extend|remove`` against a live gateway: the gateway's signed answer with the
change and its place in the risk list's log; refusals named; removal needs a reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from fedgate.commands._police import ExitCode
from fedgate.testing import mobile_number

if TYPE_CHECKING:
    from conftest import LiveFederation, Run

CASE = "A44010000000020261100007"
HEADER = (
    "--case",
    CASE,
    "--doc-number",
    "穗公(反诈)反制字〔2026〕00007号",
    "--purpose",
    "技术反制",
)


@pytest.fixture
def police(cli: Callable[..., Run], live_federation: LiveFederation) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        return cli(*argv, *HEADER, "--endpoint", live_federation.endpoint)

    return run


class TestRiskCli:
    def test_add_extend_remove(self, police: Callable[..., Run]) -> None:
        number = mobile_number("carrier.cucc", 4242)
        entry = ("--category", "phone", "--value", number)
        run = police("risk", "add", *entry, "--reason", "冒充客服诈骗来电", "--json")
        assert run.code == ExitCode.OK, run.out + run.err
        doc = run.json()
        assert doc["status"] == "OK"
        change = doc["response"]["risk_list_change"]
        assert change["change"]["entry"]["value"] == number
        assert change["list_origin"].endswith("/risklist")
        assert doc["verification"]["signed_by"] == "gateway"
        run = police("risk", "extend", *entry, "--reason", "案件未结", "--expires", "+200d")
        assert run.code == ExitCode.OK, run.out + run.err
        run = police("risk", "remove", *entry, "--reason", "申诉核实，误列", "--json")
        assert run.code == ExitCode.OK, run.out + run.err
        again = police("risk", "remove", *entry, "--reason", "再次移出")
        assert again.code == ExitCode.AGENCY_DECLINED
        assert "NOT_FOUND" in again.out

    def test_verify_replays_the_whole_list(
        self, police: Callable[..., Run], cli: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        number = mobile_number("carrier.cucc", 4343)
        run = police("risk", "add", "--category", "phone", "--value", number, "--reason", "x")
        assert run.code == ExitCode.OK, run.out + run.err
        run = cli("risk", "verify", "--endpoint", live_federation.endpoint)
        assert run.code == ExitCode.OK, run.out + run.err
        assert "change(s) verified" in run.out
        assert "phone" in run.out
        assert run.out.rstrip().endswith("OK")
        assert number not in run.out

    def test_a_bad_domain_names_the_field(self, police: Callable[..., Run]) -> None:
        run = police(
            "risk", "add", "--category", "domain", "--value", "not a domain", "--reason", "x"
        )
        assert run.code != ExitCode.OK
        assert "risk_list_add.value" in run.out + run.err

    def test_removal_needs_a_reason(self, police: Callable[..., Run]) -> None:
        run = police("risk", "remove", "--category", "phone", "--value", "13800138000")
        assert run.code == ExitCode.USAGE
        assert "--reason" in run.err
