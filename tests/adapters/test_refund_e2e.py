"""Refunds to victims (资金返还) end to end: police client → real gateway → real bank nodes on a
seeded world, over loopback mTLS.

A refund cites the freeze in force (``original_request_id``) and a refund decision; the bank
moves the money from the frozen account to the victim's and reduces the freeze. The limits —
the frozen amount, the victim's reported loss, a freeze in force, the unit that froze the funds,
the document kind, no second refund beyond what is left — are refused at the gateway (audited
request leg, nothing forwarded) and, for what only the bank knows (a receive-only freeze holds
the balance), by the bank in a signed REFUSED answer.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2

from adapters.bank.backend import Direction
from adapters.bank.node import BankNode
from adapters.synth import FraudChain, World
from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.client import FedgateClient
from fedgate.errors import FedgateError
from fedgate.testing import case_number, officer
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, common_pb2, request_pb2
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio(loop_scope="module")

GZ = MemberId("police.gz.unit")
OK = request_pb2.RESPONSE_STATUS_OK
REFUSED = request_pb2.RESPONSE_STATUS_REFUSED
DOC = common_pb2
YUAN = 100


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def cny(minor: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor)


@dataclass
class Refunds:
    live: Live
    gz: FedgateClient
    serial: int = 0
    taken: set[int] = field(default_factory=set)

    def chain(self, *, own: bool = False) -> FraudChain:
        """A fraud chain with money still held at a member bank: ``own`` for one no other test
        uses (its balances are asserted), else the last one, shared by small freezes each in
        a case of their own."""
        held = [c for c in self.live.world.chains if c.holdings and c.index not in self.taken]
        if not held:
            raise LookupError("no untaken chain with holdings in the seeded world")
        chain = held[0] if own else held[-1]
        if own:
            self.taken.add(chain.index)
        return chain

    def bank(self, member: str) -> BankNode:
        node = self.live.nodes[member]
        assert isinstance(node, BankNode)
        return node

    def request(
        self,
        name: str,
        action: object,
        *,
        target: str,
        case: str,
        kind: int,
        original_request_id: str = "",
        client: FedgateClient | None = None,
    ) -> request_pb2.Request:
        self.serial += 1
        now = datetime.now(UTC)
        return (client or self.live.police).new_request(
            action=action,  # type: ignore[arg-type]
            officer=officer(self.serial % 50),
            target=target,
            case=common_pb2.CaseInfo(
                case_number=case,
                case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
                reason="受害人被冒充客服诱导转账",
            ),
            legal_document=common_pb2.LegalDocument(
                kind=kind,  # type: ignore[arg-type]
                number=f"穗公(反诈)字〔{now.year}〕{self.serial:05d}号",
                issued_at=stamp(now - timedelta(hours=1)),
            ),
            purpose="已立案，返还受害人被骗资金",
            original_request_id=original_request_id,
            action_name=name,
        )

    def new_case(self) -> str:
        self.serial += 1
        return case_number(900 + self.serial, when=datetime.now(UTC).date())

    async def freeze(
        self,
        chain: FraudChain,
        case: str,
        *,
        amount: int | None,
        client: FedgateClient | None = None,
    ) -> request_pb2.Request:
        """Freeze ``amount`` (fixed) or all outflows (``None``) on the chain's first holding."""
        holding = chain.holdings[0]
        now = datetime.now(UTC).replace(microsecond=0)
        order = bank_pb2.FreezeOrder(
            account_number=holding.account,
            account_name=holding.name,
            method=(
                bank_pb2.FREEZE_METHOD_RECEIVE_ONLY
                if amount is None
                else bank_pb2.FREEZE_METHOD_FIXED_AMOUNT
            ),
            start=stamp(now),
            end=stamp(now + timedelta(days=90)),
            duty_phone="020-83113110",
            bulk_count=1,
        )
        if amount is not None:
            order.amount.CopyFrom(cny(amount))
        request = self.request(
            "freeze",
            order,
            target=holding.bank,
            case=case,
            kind=DOC.LEGAL_DOCUMENT_KIND_CASE_FILING_DECISION,
            client=client,
        )
        answer = await (client or self.live.police).ask(request)
        assert answer.response.status == OK, answer.response.detail
        return request

    def refund(
        self,
        chain: FraudChain,
        freeze: request_pb2.Request,
        *,
        amount: int,
        loss: int,
        kind: int = DOC.LEGAL_DOCUMENT_KIND_REFUND_DECISION,
        client: FedgateClient | None = None,
        account: str | None = None,
    ) -> request_pb2.Request:
        victim = chain.hops[0]
        return self.request(
            "refund",
            bank_pb2.RefundOrder(
                account_number=account or freeze.freeze.account_number,
                victim_account=victim.from_account,
                victim_name=victim.from_name,
                victim_bank=victim.from_bank,
                amount=cny(amount),
                reported_loss=cny(loss),
                victim_application=f"FH{self.serial:06d}",
            ),
            target=freeze.target_agency,
            case=freeze.case.case_number,
            kind=kind,
            original_request_id=freeze.request_id,
            client=client,
        )

    async def refused(
        self, request: request_pb2.Request, *, client: FedgateClient | None = None
    ) -> FedgateError:
        """The gateway refuses: the error; its refused request leg is the only entry."""
        log = self.live.gateway.audit
        start = log.size
        with pytest.raises(FedgateError) as info:
            await (client or self.live.police).submit(request)
        entries = [decode_entry(await log.get_entry(i)) for i in range(start, log.size)]
        mine = [e for e in entries if getattr(e, "request_id", None) == request.request_id]
        assert len(mine) == 1
        assert isinstance(mine[0], RequestLeg)
        assert mine[0].decision == "refused"
        assert mine[0].rule == f"{info.value.reason}: {info.value.message}"
        return info.value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def refunds(
    fed_dir: Path, world_template: World, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Refunds]:
    base = tmp_path_factory.mktemp("refunds")
    shutil.copytree(world_template.directory, base / "world")
    world = replace(world_template, directory=base / "world")
    async with live_federation(fed_dir, world, base / "state") as live:
        gz = FedgateClient.from_federation(fed_dir, GZ, endpoint=live.gateway.endpoint)
        try:
            yield Refunds(live=live, gz=gz)
        finally:
            await gz.close()


class TestRefundMovesTheMoney:
    async def test_partial_then_rest_then_nothing_left(self, refunds: Refunds) -> None:
        chain = refunds.chain(own=True)
        holding, victim = chain.holdings[0], chain.hops[0]
        core = refunds.bank(holding.bank).core
        before = core.account_holder(holding.account).balance_minor
        held = min(holding.amount_minor, victim.amount_minor, before) // 2
        assert held >= 2 * YUAN
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=held)

        first = refunds.refund(chain, freeze, amount=held - YUAN, loss=victim.amount_minor)
        answer = await refunds.live.police.ask(first)
        assert answer.response.status == OK, answer.response.detail
        assert answer.response.responder == holding.bank
        moved = answer.response.refund
        assert (moved.account_number, moved.victim_account, moved.victim_bank) == (
            holding.account,
            victim.from_account,
            victim.from_bank,
        )
        assert moved.amount == cny(held - YUAN)
        assert moved.frozen_remaining == cny(YUAN)
        assert moved.freeze_in_force
        assert moved.balance == cny(before - (held - YUAN))
        # The movement is a real debit on the frozen account, to the victim.
        page = core.transactions(
            holding.account,
            datetime.now(UTC) - timedelta(hours=1),
            datetime.now(UTC) + timedelta(hours=1),
            page_size=100,
            page_token="",
        )
        debit = next(t for t in page.transactions if str(t.id) == moved.movement_id)
        assert (debit.direction, debit.amount_minor, debit.counterparty_account) == (
            Direction.OUT,
            held - YUAN,
            victim.from_account,
        )
        # When the victim banks at a member bank, the money arrives there.
        if victim.from_bank == holding.bank:
            assert core.account_holder(victim.from_account).balance_minor > 0

        rest = refunds.refund(chain, freeze, amount=YUAN, loss=victim.amount_minor)
        last = (await refunds.live.police.ask(rest)).response
        assert last.status == OK, last.detail
        assert last.refund.frozen_remaining == cny(0)
        assert not last.refund.freeze_in_force
        assert not core.account_holder(holding.account).frozen

        # Twice: nothing is left on the freeze, the gateway says so and forwards nothing.
        again = refunds.refund(chain, freeze, amount=YUAN, loss=victim.amount_minor)
        error = await refunds.refused(again)
        assert "refund.max_frozen_amount" in error.message
        assert "at most ¥0.00 remains" in error.message
        # The same signed request again is a safe retry: the first refund's recorded answer,
        # not a second movement.
        retried = await refunds.live.police.ask(first)
        assert retried.response.request_id == answer.response.request_id
        assert retried.response.refund == moved
        assert core.account_holder(holding.account).balance_minor == before - held


class TestRefundLimits:
    async def test_over_the_frozen_amount(self, refunds: Refunds) -> None:
        chain = refunds.chain()
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=10 * YUAN)
        request = refunds.refund(chain, freeze, amount=10 * YUAN + 1, loss=1_000 * YUAN)
        error = await refunds.refused(request)
        assert error.reason == "RULE_VIOLATED"
        assert error.message.startswith("RULE refund.max_frozen_amount: ¥10.01 would exceed")

    async def test_over_the_reported_loss_and_a_changed_loss(self, refunds: Refunds) -> None:
        chain = refunds.chain()
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=50 * YUAN)
        over = refunds.refund(chain, freeze, amount=30 * YUAN, loss=20 * YUAN)
        error = await refunds.refused(over)
        assert "RULE refund.max_reported_loss" in error.message
        assert "reported loss of ¥20.00" in error.message
        first = refunds.refund(chain, freeze, amount=15 * YUAN, loss=20 * YUAN)
        assert (await refunds.live.police.ask(first)).response.status == OK
        # The victim's loss is what the first refund said; a later one may not raise it.
        raised = refunds.refund(chain, freeze, amount=10 * YUAN, loss=40 * YUAN)
        assert "RULE refund.same_reported_loss" in (await refunds.refused(raised)).message
        beyond = refunds.refund(chain, freeze, amount=10 * YUAN, loss=20 * YUAN)
        error = await refunds.refused(beyond)
        assert "RULE refund.max_reported_loss" in error.message
        assert "at most ¥5.00 remains" in error.message

    async def test_no_freeze_in_force(self, refunds: Refunds) -> None:
        chain = refunds.chain()
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=10 * YUAN)
        release = refunds.request(
            "freeze_release",
            bank_pb2.FreezeReleaseOrder(account_number=freeze.freeze.account_number, reason="误冻"),
            target=freeze.target_agency,
            case=case,
            kind=DOC.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
            original_request_id=freeze.request_id,
        )
        assert (await refunds.live.police.ask(release)).response.status == OK
        request = refunds.refund(chain, freeze, amount=YUAN, loss=100 * YUAN)
        error = await refunds.refused(request)
        assert error.message.startswith(
            f"RULE refund.cites_freeze_in_force: freeze {freeze.request_id} was released"
        )
        # Citing something that is not a freeze at all.
        not_a_freeze = refunds.refund(chain, release, amount=YUAN, loss=100 * YUAN)
        not_a_freeze.refund.account_number = freeze.freeze.account_number
        error = await refunds.refused(not_a_freeze)
        assert "refund.cites_freeze_in_force" in error.message

    async def test_someone_elses_freeze(self, refunds: Refunds) -> None:
        chain = refunds.chain()
        case = refunds.new_case()
        # The provincial centre froze; the city unit below it may not refund from it.
        freeze = await refunds.freeze(chain, case, amount=10 * YUAN)
        request = refunds.refund(chain, freeze, amount=YUAN, loss=100 * YUAN, client=refunds.gz)
        error = await refunds.refused(request, client=refunds.gz)
        assert error.reason == "POLICY_DENIED"
        assert error.message.startswith("RULE refund.by_ordering_unit_or_above:")
        assert "police.gd.afc" in error.message

    async def test_wrong_document_kind(self, refunds: Refunds) -> None:
        chain = refunds.chain()
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=10 * YUAN)
        request = refunds.refund(
            chain,
            freeze,
            amount=YUAN,
            loss=100 * YUAN,
            kind=DOC.LEGAL_DOCUMENT_KIND_RELEASE_NOTICE,
        )
        error = await refunds.refused(request)
        assert error.message == (
            "RULE legal_document.accepted_kind: refund must cite 资金返还决定书 (refund_decision), "
            "not 解除冻结/止付通知书 (release_notice)"
        )

    async def test_the_bank_refuses_beyond_a_receive_only_freeze(self, refunds: Refunds) -> None:
        chain = refunds.chain(own=True)
        holding = chain.holdings[0]
        balance = refunds.bank(holding.bank).core.account_holder(holding.account).balance_minor
        case = refunds.new_case()
        freeze = await refunds.freeze(chain, case, amount=None)
        # The gateway cannot know what a receive-only freeze holds; the bank does.
        request = refunds.refund(chain, freeze, amount=balance + 1, loss=balance + 1)
        answer = (await refunds.live.police.ask(request)).response
        assert answer.status == REFUSED
        assert "refund limit is the frozen amount" in answer.detail
