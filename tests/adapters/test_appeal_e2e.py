"""Appeals (Art. 32) end to end over real gRPC: a bank files a restricted person's appeal to the
police unit that froze the account; the unit lists it, lifts it with a release citing the
freeze, and decides; the bank's account is no longer frozen. Every hostile filing and decision
is refused at the gateway with its rule, and logged."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2

from adapters.bank.node import BankNode
from adapters.synth import World
from fedgate.cli import main
from fedgate.client import FedgateClient
from fedgate.commands._police import SentStore
from fedgate.errors import FedgateError
from fedgate.testing import case_number, officer, resident_id
from fedgate.types import MemberId
from fedgate.v1 import appeal_pb2, bank_pb2, common_pb2, request_pb2
from gateway.appeals import AppealBook
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

GD = MemberId("police.gd.afc")
GZ = MemberId("police.gz.unit")
OK = request_pb2.RESPONSE_STATUS_OK
PENDING = appeal_pb2.APPEAL_STATE_PENDING
LIFTED = appeal_pb2.APPEAL_STATE_LIFTED
UPHELD = appeal_pb2.APPEAL_STATE_UPHELD


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


@dataclass
class Appeals:
    live: Live
    clients: dict[str, FedgateClient]
    serial: int = 0

    def client(self, member: str) -> FedgateClient:
        if member not in self.clients:
            self.clients[member] = FedgateClient.from_federation(
                self.live.fed_dir, MemberId(member), endpoint=self.live.gateway.endpoint
            )
        return self.clients[member]

    def _doc(self, kind: int) -> common_pb2.LegalDocument:
        self.serial += 1
        now = datetime.now(UTC)
        return common_pb2.LegalDocument(
            kind=kind,  # type: ignore[arg-type]
            number=f"穗公(反诈)字〔{now.year}〕{self.serial:05d}号",
            issued_at=stamp(now - timedelta(hours=1)),
        )

    async def freeze(self, *, by: str = GD) -> request_pb2.Request:
        """A receive-only freeze of a fraud chain's last mule account, executed."""
        self.serial += 1
        chain = self.live.world.chains[self.serial % len(self.live.world.chains)]
        hop = chain.hops[-1]
        now = datetime.now(UTC).replace(microsecond=0)
        request = self.client(by).new_request(
            action=bank_pb2.FreezeOrder(
                account_number=hop.to_account,
                account_name=hop.to_name,
                method=bank_pb2.FREEZE_METHOD_RECEIVE_ONLY,
                start=stamp(now),
                end=stamp(now + timedelta(days=90)),
                duty_phone="020-83113110",
                bulk_count=1,
            ),
            officer=officer(self.serial % 40),
            target=hop.to_bank,
            case=common_pb2.CaseInfo(
                case_number=case_number(700 + self.serial, when=now.date()),
                case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            ),
            legal_document=self._doc(common_pb2.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION),
            purpose="已立案，冻结涉案账户",
            action_name="freeze",
        )
        answer = await self.client(by).ask(request)
        assert answer.response.status == OK, answer.response.detail
        return request

    def appeal(
        self, order: request_pb2.Request, *, by: str | None = None, to: str | None = None
    ) -> request_pb2.Request:
        bank = by or order.target_agency
        self.serial += 1
        return self.client(bank).new_request(
            action=appeal_pb2.AppealFiling(
                appellant_name=order.freeze.account_name,
                appellant_id_number=resident_id(self.serial + 30),
                appellant_phone="13800138000",
                subject=order.freeze.account_number,
                grounds="账户为本人经营收款账户，所收款项为货款，附购销合同",
                received_at=stamp(datetime.now(UTC) - timedelta(minutes=5)),
                recorded_by=f"{bank.split('.')[1]}.zhang",
            ),
            officer=common_pb2.Person(
                id=f"{bank.split('.')[1]}-staff-001",
                name="张敏",
                role=common_pb2.ROLE_BANK_STAFF,
            ),
            target=to or order.requesting_agency,
            case=common_pb2.CaseInfo(case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD),
            legal_document=self._doc(common_pb2.LEGAL_DOCUMENT_KIND_APPEAL),
            purpose="转递当事人申诉（反电信网络诈骗法第三十二条）",
            original_request_id=order.request_id,
            action_name="appeal",
        )

    def decision(
        self,
        appeal_id: str,
        outcome: appeal_pb2.AppealOutcome.ValueType,
        *,
        by: str = GD,
        lift: str = "",
        case: str = "",
    ) -> request_pb2.Request:
        self.serial += 1
        return self.client(by).new_request(
            action=appeal_pb2.AppealDecision(
                appeal_id=appeal_id,
                outcome=outcome,
                reason="经核查，所收款项为正常货款" if lift else "经核查，账户确系涉诈，维持冻结",
                lift_request_id=lift,
            ),
            officer=officer(3),
            target="gateway",
            case=common_pb2.CaseInfo(
                case_number=case or case_number(700 + self.serial),
                case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
            ),
            legal_document=self._doc(common_pb2.LEGAL_DOCUMENT_KIND_APPEAL_DECISION),
            purpose="申诉核查",
            action_name="appeal_decision",
        )

    def release(self, freeze: request_pb2.Request, *, by: str = GD) -> request_pb2.Request:
        return self.client(by).new_request(
            action=bank_pb2.FreezeReleaseOrder(
                account_number=freeze.freeze.account_number, reason="申诉核实，解除冻结"
            ),
            officer=officer(3),
            target=freeze.target_agency,
            case=freeze.case,
            legal_document=self._doc(common_pb2.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE),
            purpose="申诉核实，解除冻结",
            original_request_id=freeze.request_id,
            action_name="freeze_release",
        )

    async def refused(self, request: request_pb2.Request, member: str) -> FedgateError:
        with pytest.raises(FedgateError) as info:
            await self.client(member).submit(request)
        return info.value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def appeals(
    fed_dir: Path, world_template: World, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Appeals]:
    base = tmp_path_factory.mktemp("appeals")
    shutil.copytree(world_template.directory, base / "world")
    world = replace(world_template, directory=base / "world")
    async with live_federation(fed_dir, world, base / "state") as live:
        a = Appeals(live=live, clients={GD: live.police})
        try:
            yield a
        finally:
            for member, client in a.clients.items():
                if member != GD:
                    await client.close()


class TestLift:
    async def test_appeal_lift_and_the_release_at_the_node(self, appeals: Appeals) -> None:
        freeze = await appeals.freeze()
        bank = freeze.target_agency
        node = appeals.live.nodes[bank]
        assert isinstance(node, BankNode)
        assert node.core.account_holder(freeze.freeze.account_number).frozen

        filing = appeals.appeal(freeze)
        asked = datetime.now(UTC)  # before the gateway files it: its due time counts from later
        answer = await appeals.client(bank).ask(filing)
        result = answer.response.appeal
        assert answer.response.responder == "gateway"
        assert (result.appeal_id, result.order_request_id, result.ordering_agency) == (
            filing.request_id,
            freeze.request_id,
            GD,
        )
        assert result.state == PENDING
        assert result.due_at.ToDatetime(tzinfo=UTC) - asked >= timedelta(days=3)

        # The ordering unit sees it; so does the bank that filed it; another bank does not.
        (seen,) = await appeals.client(GD).list_appeals(appeal_id=filing.request_id)
        assert (seen.state, seen.order_action, seen.filed_by, seen.overdue) == (
            PENDING,
            "freeze",
            bank,
            False,
        )
        assert seen.subject == freeze.freeze.account_number
        assert seen.appellant == freeze.freeze.account_name[0] + "*" * (
            len(freeze.freeze.account_name) - 1
        )
        assert seen.case_number == freeze.case.case_number
        assert [a.appeal_id for a in await appeals.client(bank).list_appeals()].count(
            filing.request_id
        ) == 1
        other = next(b for b in appeals.live.world.banks if b != bank)
        assert filing.request_id not in [
            a.appeal_id for a in await appeals.client(other).list_appeals()
        ]

        # The unit lifts: the release through the pipeline, citing the freeze, then the decision.
        release = appeals.release(freeze)
        assert (await appeals.client(GD).ask(release)).response.status == OK
        assert not node.core.account_holder(freeze.freeze.account_number).frozen
        decided = await appeals.client(GD).ask(
            appeals.decision(
                filing.request_id, appeal_pb2.APPEAL_OUTCOME_LIFT, lift=release.request_id
            )
        )
        assert decided.response.appeal.state == LIFTED
        (after,) = await appeals.client(bank).list_appeals(appeal_id=filing.request_id)
        assert (after.state, after.lift_request_id, after.decided_by) == (
            LIFTED,
            release.request_id,
            GD,
        )
        assert after.decision_reason == "经核查，所收款项为正常货款"

        # Decided once: a second decision is refused.
        again = appeals.decision(filing.request_id, appeal_pb2.APPEAL_OUTCOME_UPHOLD)
        error = await appeals.refused(again, GD)
        assert error.message.startswith("RULE appeal_decision.cites_pending_appeal:")


class TestRefusals:
    async def test_filing_rules(self, appeals: Appeals) -> None:
        freeze = await appeals.freeze()
        other = next(b for b in appeals.live.world.banks if b != freeze.target_agency)
        by_other = appeals.appeal(freeze, by=other)
        error = await appeals.refused(by_other, other)
        assert error.message.startswith("RULE appeal.cites_own_restriction:")
        wrong_unit = appeals.appeal(freeze, to=GZ)
        error = await appeals.refused(wrong_unit, freeze.target_agency)
        assert error.message.startswith("RULE appeal.to_ordering_unit:")
        assert "police.gd.afc" in error.message
        first = appeals.appeal(freeze)
        assert (await appeals.client(freeze.target_agency).ask(first)).response.status == OK
        second = appeals.appeal(freeze)
        error = await appeals.refused(second, freeze.target_agency)
        assert error.message.startswith("RULE appeal.one_pending_per_order:")

    async def test_decision_rules(self, appeals: Appeals) -> None:
        freeze = await appeals.freeze()
        filing = appeals.appeal(freeze)
        assert (await appeals.client(freeze.target_agency).ask(filing)).response.status == OK
        # A unit below the one that froze may not decide.
        below = appeals.decision(filing.request_id, appeal_pb2.APPEAL_OUTCOME_UPHOLD, by=GZ)
        error = await appeals.refused(below, GZ)
        assert error.reason == "POLICY_DENIED"
        assert error.message.startswith("RULE appeal_decision.by_ordering_unit_or_above:")
        # A lift must cite an executed release of the appealed order.
        not_a_release = appeals.decision(
            filing.request_id, appeal_pb2.APPEAL_OUTCOME_LIFT, lift=freeze.request_id
        )
        error = await appeals.refused(not_a_release, GD)
        assert error.message.startswith("RULE appeal_decision.lift_cites_release:")
        # Upheld, with a reason.
        upheld = await appeals.client(GD).ask(
            appeals.decision(filing.request_id, appeal_pb2.APPEAL_OUTCOME_UPHOLD)
        )
        assert upheld.response.appeal.state == UPHELD


class TestOverdue:
    async def test_pending_past_its_due_time_is_overdue(self, appeals: Appeals) -> None:
        freeze = await appeals.freeze()
        filing = appeals.appeal(freeze)
        assert (await appeals.client(freeze.target_agency).ask(filing)).response.status == OK
        log = appeals.live.gateway.audit
        today = AppealBook(log=log)
        (appeal,) = [a for a in await today.appeals() if a.appeal_id == filing.request_id]
        assert not appeal.overdue(datetime.now(UTC))
        later = appeal.due_at + timedelta(seconds=1)
        assert appeal.overdue(later)
        assert appeal.record(later).overdue
        # One working day configured: overdue a working day after filing.
        short = AppealBook(log=log, working_days=1, now=lambda: later)
        (quick,) = [a for a in await short.appeals() if a.appeal_id == filing.request_id]
        assert quick.due_at < appeal.due_at
        assert quick.overdue(later)


class TestCommandLine:
    async def test_list_show_and_decide_with_a_lift(
        self, appeals: Appeals, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        freeze = await appeals.freeze()
        filing = appeals.appeal(freeze)
        assert (await appeals.client(freeze.target_agency).ask(filing)).response.status == OK
        connection = [
            "--federation",
            str(appeals.live.fed_dir),
            "--endpoint",
            appeals.live.gateway.endpoint,
            "--sent-dir",
            str(tmp_path / "sent"),
            "--json",
        ]
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["appeal", "list", "--state", "pending", *connection])
        listed = json.loads(capsys.readouterr().out)["appeals"]
        assert code == 0
        mine = next(a for a in listed if a["appeal_id"] == filing.request_id)
        assert (mine["state"], mine["order_action"], mine["overdue"]) == (
            "pending",
            "freeze",
            False,
        )
        assert mine["filed_at"].endswith("+08:00")
        assert mine["due_at"].endswith("+08:00")
        assert mine["decided_at"] is None

        code = await asyncio.to_thread(
            main,
            [
                "appeal",
                "decide",
                filing.request_id,
                "--lift",
                "--reason",
                "经核查为正常货款",
                "--doc-number",
                "穗公(反诈)申核字〔2026〕00009号",
                "--release-doc-number",
                "穗公(反诈)解字〔2026〕00010号",
                "--officer-id",
                "440100123",
                "--officer-name",
                "王伟",
                *connection,
            ],
        )
        decided = json.loads(capsys.readouterr().out)
        assert code == 0, decided
        assert decided["state"] == "lifted"
        assert decided["decided_at"].endswith("+08:00")
        assert decided["lift_request_id"]
        # The bank executed the release: its signed answer, read back through the gateway.
        lift_id = decided["lift_request_id"]
        body = SentStore(tmp_path / "sent").load(lift_id)
        assert body is not None
        _, answer = await appeals.client(GD).get_outcome(lift_id, request_body=body)
        assert answer is not None
        assert answer.response.responder == freeze.target_agency
        assert answer.response.freeze.account_number == freeze.freeze.account_number
        assert not answer.response.freeze.in_force

        code = await asyncio.to_thread(main, ["appeal", "show", filing.request_id, *connection])
        shown = json.loads(capsys.readouterr().out)
        assert (code, shown["state"], shown["decided_by"]) == (0, "lifted", GD)
