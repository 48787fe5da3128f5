"""The police CLI end to end: real gateway, real bank and carrier nodes, seeded data.

Each command group's happy path and refusal paths, judged by exit code and message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import json_format

from adapters.synth import Hop
from fedgate.commands import staff as staff_command
from fedgate.commands._police import ExitCode
from fedgate.testing import card_number, case_number, json_times, mobile_number
from fedgate.v1 import bank_pb2

if TYPE_CHECKING:
    from conftest import LiveFederation, Run

CASE = case_number(7, when=date(2026, 11, 1))
HEADER = (
    "--case",
    CASE,
    "--doc-number",
    "穗公(反诈)查字〔2026〕00007号",
    "--purpose",
    "核查涉案线索",
)


def _hops_into(live: LiveFederation, bank: str) -> list[Hop]:
    return [h for c in live.world.chains for h in c.hops if h.to_bank == bank]


def _accounts_at(live: LiveFederation, bank: str) -> list[tuple[str, str]]:
    """(account, holder) of every chain account at ``bank``: the main lines' mules first, then
    the other accounts holding a victim's money (split-off side accounts)."""
    found = [(h.to_account, h.to_name) for h in _hops_into(live, bank)]
    for chain in live.world.chains:
        found += [(h.account, h.name) for h in chain.holdings if h.bank == bank]
    return list(dict.fromkeys(found))


def _fraud_number(live: LiveFederation, carrier: str) -> str:
    return next(
        n.number for c in live.world.chains for n in c.fraud_numbers if n.carrier_id == carrier
    )


def _yuan(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _stop_payment(hop: Hop, *, amount: int | None = None) -> tuple[str, ...]:
    return (
        *("order", "stop-payment", "--account", hop.to_account, "--name", hop.to_name),
        *("--payer-account", hop.from_account, "--payer-name", hop.from_name),
        *("--payer-bank", hop.from_bank, "--currency", hop.currency),
        *("--amount", _yuan(hop.amount_minor if amount is None else amount)),
        *("--transfer-time", hop.ts.isoformat(), "--victim-application", "SQ20261127001"),
    )


@pytest.fixture
def police(cli: Callable[..., Run], live_federation: LiveFederation) -> Callable[..., Run]:
    """The CLI pointed at the live gateway, with the case header."""

    def run(*argv: str, header: bool = True) -> Run:
        extra = HEADER if header else ()
        return cli(*argv, *extra, "--endpoint", live_federation.endpoint)

    return run


class TestLiveQuery:
    def test_subscriber(self, police: Callable[..., Run], live_federation: LiveFederation) -> None:
        number = _fraud_number(live_federation, "carrier.cmcc")
        run = police("query", "subscriber", "--phone", number, "--json")
        assert run.code == ExitCode.OK, run.out + run.err
        doc = run.json()
        assert doc["status"] == "OK"
        assert doc["response"]["subscriber"]["phone_number"] == number
        assert doc["response"]["subscriber"]["name"]
        assert doc["verification"]["signed_by"] == "carrier.cmcc"
        assert doc["verification"]["leaf_index"] > doc["verification"]["request_leaf_index"]
        times = json_times(doc)  # answered_at at least: every time in China time
        assert times
        assert all(t.endswith("+08:00") for t in times), times

    def test_subscriber_text(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        run = police(
            "query", "subscriber", "--phone", _fraud_number(live_federation, "carrier.cucc")
        )
        assert run.code == ExitCode.OK, run.err
        assert "carrier.cucc (中国联通) answered OK automatically" in run.out
        assert "✓ signed by carrier.cucc" in run.out
        assert "✓ countersigned by gateway ✓ in audit log at index" in run.out

    def test_unknown_number_is_not_found(self, police: Callable[..., Run]) -> None:
        run = police("query", "subscriber", "--phone", mobile_number("carrier.cmcc", 9_999))
        assert run.code == ExitCode.AGENCY_DECLINED
        assert "answered NOT_FOUND" in run.out

    def test_invalid_card_names_the_field(self, police: Callable[..., Run]) -> None:
        bad = card_number("bank.icbc", 5)[:-1] + "0"
        if bad == card_number("bank.icbc", 5):
            bad = bad[:-1] + "1"
        run = police("query", "account-holder", "--account", bad)
        assert run.code == ExitCode.REFUSED
        assert "refused by the gateway: INVALID_ARGUMENT" in run.err
        assert "✗ --account (account_holder.account_number):" in run.err

    def test_missing_header_fields_are_listed(self, police: Callable[..., Run]) -> None:
        run = police("query", "account-holder", "--account", card_number(), header=False)
        assert run.code == ExitCode.REFUSED
        assert "✗ --case (case.case_number):" in run.err
        assert "✗ --purpose (purpose):" in run.err

    def test_call_records_need_a_second_officer(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        number = _fraud_number(live_federation, "carrier.cmcc")
        run = police(
            *("query", "call-records", "--phone", number, "--from=-14d"),
            *("--doc-kind", "evidence_notice"),
        )
        assert run.code == ExitCode.REFUSED
        assert "RULE_VIOLATED" in run.err
        assert "call_records.requires_second_officer" in run.err

    def test_call_records_with_a_second_officer(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        number = _fraud_number(live_federation, "carrier.cmcc")
        run = police(
            *("query", "call-records", "--phone", number, "--from=-30d", "--sms"),
            *("--doc-kind", "evidence_notice"),
            *("--second-officer-id", "440100999", "--second-officer-name", "李娜"),
        )
        assert run.code == ExitCode.OK, run.out + run.err
        assert "记录 records (" in run.out


class TestLiveStaged:
    """``query sim-count --all-carriers``: both stages of a staged disclosure in one command."""

    def _person(self, live: LiveFederation) -> str:
        return live.world.chains[0].victim.id_number

    def test_text_shows_the_hits_then_the_details(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        victim = live_federation.world.chains[0].victim
        run = police("query", "sim-count", "--id-number", victim.id_number, "--all-carriers")
        assert run.code == ExitCode.OK, run.out + run.err
        lines = run.out.splitlines()
        assert lines[0].startswith("stage 1 — hit / no hit at 3 members (request ")
        assert lines[1].split() == ["member", "answer", "receipt"]
        rows = {line.split()[0]: line for line in lines[2:5]}
        assert set(rows) == {"carrier.cmcc", "carrier.cucc", "carrier.ctcc"}
        assert "HIT" in rows[victim.carrier_id]
        stage2 = next(i for i, line in enumerate(lines) if line.startswith("stage 2 — details"))
        assert stage2 > 5
        details = "\n".join(lines[stage2:])
        assert f"— {victim.carrier_id}" in details
        assert "answered OK automatically" in details
        assert "live SIMs" in details
        assert "✓ signed by" in details
        # the details come after the hits, and only from members that hit
        for member, row in rows.items():
            if "no hit" in row:
                assert f"— {member}" not in details

    def test_json_links_the_stages(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        victim = live_federation.world.chains[0].victim
        run = police(
            "query", "sim-count", "--id-number", victim.id_number, "--all-carriers", "--json"
        )
        assert run.code == ExitCode.OK, run.out + run.err
        doc = run.json()
        assert doc["outcome"] == "staged"
        members = {m["member"]: m for m in doc["stage1"]["members"]}
        assert set(members) == {"carrier.cmcc", "carrier.cucc", "carrier.ctcc"}
        assert members[victim.carrier_id]["hit"] is True
        hit = {m for m, row in members.items() if row["hit"]}
        assert doc["stage2"]["hits_request_id"] == doc["stage1"]["request_id"]
        assert {m["member"] for m in doc["stage2"]["members"]} == hit
        for answer in doc["stage2"]["members"]:
            assert answer["status"] == "OK"
            assert answer["response"]["sim_count"]["id_number"] == victim.id_number
            assert answer["verification"]["signed_by"] == answer["member"]

    def test_nobody_hit_sends_no_second_stage(self, police: Callable[..., Run]) -> None:
        from fedgate.testing import resident_id

        nobody = resident_id(998, born=date(1950, 1, 1))
        run = police("query", "sim-count", "--id-number", nobody, "--all-carriers", "--json")
        assert run.code == ExitCode.AGENCY_DECLINED, run.out + run.err
        doc = run.json()
        assert doc["stage2"] is None
        assert all(m["hit"] is False for m in doc["stage1"]["members"])

    def test_a_refused_first_stage_is_printed_with_its_reason(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        # a duty officer may not ask for SIMs under an ID at all: stage 1 is refused as a whole
        argv = ("query", "sim-count", "--id-number", self._person(live_federation))
        run = police(*argv, "--all-carriers", "--officer-role", "duty_officer", "--json")
        assert run.code == ExitCode.REFUSED, run.out + run.err
        doc = run.json()
        assert doc["exit_code"] == ExitCode.REFUSED
        assert doc["stage1"]["error"]["reason"] == "POLICY_DENIED"
        assert doc["stage2"] is None
        text = police(*argv, "--all-carriers", "--officer-role", "duty_officer")
        assert text.code == ExitCode.REFUSED
        assert "refused by the gateway: POLICY_DENIED" in text.err

    def test_target_and_all_carriers_together_is_a_usage_error(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        run = police(
            "query",
            "sim-count",
            *("--id-number", self._person(live_federation), "--all-carriers"),
            *("--target", "carrier.cmcc"),
        )
        assert run.code == ExitCode.USAGE
        assert "not both" in run.err

    def test_one_carrier_is_asked_directly(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        victim = live_federation.world.chains[0].victim
        run = police(
            "query", "sim-count", "--id-number", victim.id_number, "--target", victim.carrier_id
        )
        assert run.code == ExitCode.OK, run.out + run.err
        assert "live SIMs" in run.out


class TestLiveOrder:
    def test_stop_payment(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        hop = _hops_into(live_federation, "bank.icbc")[0]
        run = police(*_stop_payment(hop))
        assert run.code == ExitCode.OK, run.out + run.err
        assert "bank.icbc (中国工商银行) answered OK" in run.out
        assert "生效 in force" in run.out
        assert "是 yes" in run.out

    def test_stop_payment_that_does_not_match_is_refused_by_the_bank(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        hop = _hops_into(live_federation, "bank.icbc")[1]
        run = police(*_stop_payment(hop, amount=hop.amount_minor + 100))
        assert run.code == ExitCode.AGENCY_DECLINED
        assert "answered REFUSED" in run.out

    def test_freeze_needs_a_case_filing_decision(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        account, name = _accounts_at(live_federation, "bank.icbc")[2]
        run = police(
            *("order", "freeze", "--account", account, "--name", name),
            *("--method", "receive-only", "--end", "+90d", "--duty-phone", "020-83113110"),
            *("--doc-kind", "query_notice"),
        )
        assert run.code == ExitCode.REFUSED
        assert "RULE_VIOLATED" in run.err

    def test_duty_officer_may_not_freeze(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        account, name = _accounts_at(live_federation, "bank.icbc")[2]
        run = police(
            *("order", "freeze", "--account", account, "--name", name),
            *("--method", "receive-only", "--end", "+90d", "--duty-phone", "020-83113110"),
            *("--officer-role", "duty_officer"),
        )
        assert run.code == ExitCode.REFUSED
        assert "POLICY_DENIED" in run.err

    def test_a_bulk_freeze_cites_a_supervisors_approval(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        account, name = _accounts_at(live_federation, "bank.icbc")[3]
        freeze = (
            *("order", "freeze", "--account", account, "--name", name),
            *("--method", "receive-only", "--end", "+90d", "--duty-phone", "020-83113110"),
            *("--bulk-count", "250", "--doc-kind", "case_filing"),
        )
        refused = police(*freeze)
        assert refused.code == ExitCode.REFUSED
        assert "freeze.bulk_requires_approval" in refused.err
        assert "cite the approval exchange in approval_request_id" in refused.err
        approval = police(
            *("order", "approval", "--max-count", "300", "--expires", "+7d"),
            *("--approval-doc", "粤公反诈审〔2026〕0001号", "--json"),
            *("--officer-id", "440100600", "--officer-role", "supervisor"),
        )
        assert approval.code == ExitCode.OK, approval.out + approval.err
        doc = approval.json()
        assert doc["verification"]["signed_by"] == "gateway"
        approval_id = doc["response"]["approval"]["approval_request_id"]
        approved = police(*freeze, "--approval", approval_id)
        assert approved.code != ExitCode.REFUSED, approved.out + approved.err
        assert "freeze.bulk_requires_approval" not in approved.err

    def test_suspend_a_number(
        self, police: Callable[..., Run], live_federation: LiveFederation
    ) -> None:
        number = [
            n.number
            for c in live_federation.world.chains
            for n in c.fraud_numbers
            if n.carrier_id == "carrier.cmcc"
        ][-1]
        run = police("order", "number-suspend", "--phone", number, "--reason", "冒充客服诈骗")
        assert run.code == ExitCode.OK, run.out + run.err
        assert "carrier.cmcc (中国移动) answered OK" in run.out
        status = police("query", "number-status", "--phone", number, "--json")
        assert status.code == ExitCode.OK
        assert status.json()["response"]["number_status"]["status"] == "suspended"


class TestLiveTicket:
    def test_manual_answer_followed_by_ticket(
        self,
        police: Callable[..., Run],
        cli: Callable[..., Run],
        live_federation: LiveFederation,
        federation_dir: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        hop = _hops_into(live_federation, "bank.icbc")[0]
        queued = police(
            *("query", "transactions", "--account", hop.to_account, "--from=-30d", "--json")
        )
        assert queued.code == ExitCode.QUEUED, queued.out + queued.err
        ticket_id = queued.json()["ticket"]["ticket_id"]

        waiting = cli("ticket", "get", ticket_id, "--endpoint", live_federation.endpoint)
        assert waiting.code == ExitCode.QUEUED, waiting.err
        assert f"ticket {ticket_id} at bank.icbc (中国工商银行): WAITING" in waiting.out

        result = bank_pb2.TransactionsResult(account_number=hop.to_account)
        _staff_answer(federation_dir, live_federation.nodes["bank.icbc"], ticket_id, result)
        capsys.readouterr()

        watched = cli("ticket", "watch", ticket_id, "--endpoint", live_federation.endpoint)
        assert watched.code == ExitCode.OK, watched.out + watched.err
        assert "answered OK by staff icbc.zhang" in watched.out
        assert "✓ bound to request" in watched.out

    def test_unknown_ticket(self, cli: Callable[..., Run], live_federation: LiveFederation) -> None:
        run = cli(
            "ticket", "get", "01936f3e-8c1a-7000-8000-0000000000ff",
            "--endpoint", live_federation.endpoint,
        )  # fmt: skip
        assert run.code == ExitCode.REFUSED
        assert "NOT_FOUND" in run.err


def _staff_answer(
    federation_dir: Path, node: Any, request_id: str, result: bank_pb2.TransactionsResult
) -> None:
    """Answer a queued query as stationed staff, through ``fedgate staff answer``."""
    parser = argparse.ArgumentParser()
    staff_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["staff", "answer", request_id, "--result-json", json_format.MessageToJson(result),
         "--federation", str(federation_dir), "--member", "bank.icbc", "--staff", "icbc.zhang",
         "--endpoint", node.endpoint]
    )  # fmt: skip
    assert args.func(args) == 0
