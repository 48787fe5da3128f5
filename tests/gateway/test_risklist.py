"""The shared risk list through the gateway: changes are signed requests through the pipeline,
refused by policy when the member may not list the value, appended to the list's own log and
answered by the gateway; extension, removal and expiry."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from fedgate.audit_entry import RequestLeg, ResponseLeg
from fedgate.checkpoint import open_checkpoint
from fedgate.errors import InvalidArgument, LogInconsistent, PolicyDenied
from fedgate.merkle import leaf_hash
from fedgate.note import NoteSigner
from fedgate.risklist import CompactRange, decode_change, risklist_origin
from fedgate.testing import card_number, mobile_number
from fedgate.v1 import request_pb2, risklist_pb2
from gateway.risklist import RiskListLog

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

R = risklist_pb2


def risk(
    h: GatewayHarness,
    action: str = "risk_list_add",
    *,
    member: str = "police.gd.afc",
    category: int = R.RISK_CATEGORY_PHONE_NUMBER,
    value: str = "",
    expires_at: datetime | None = None,
) -> request_pb2.Request:
    request = h.request(action, requesting_agency=member)
    change = getattr(request, action)
    change.category = category
    if value:
        change.value = value
    if expires_at is not None:
        change.expires_at.FromDatetime(expires_at)
    return request


async def ok(h: GatewayHarness, request: request_pb2.Request, member: str) -> R.RiskListChange:
    answer = await h.client(member).ask(request)
    response = answer.response
    assert response.status == request_pb2.RESPONSE_STATUS_OK, response.detail
    assert response.responder == "gateway"
    return response.risk_list_change.change


class TestChanges:
    async def test_police_list_a_number_and_it_is_in_the_list_log(
        self, harness: GatewayHarness
    ) -> None:
        number = mobile_number("carrier.cucc", 501)
        before = harness.gateway.audit.size
        size = harness.gateway.risklist.size
        answer = await harness.client().ask(risk(harness, value=number))
        result = answer.response.risk_list_change
        assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
        assert result.list_origin == risklist_origin(harness.config().audit.origin)
        assert result.list_index == size
        entry = result.change.entry
        assert (entry.value, entry.issuing_agency) == (number, "police.gd.afc")
        assert entry.case_number
        assert entry.legal_basis.startswith("countermeasure_order ")
        ttl = entry.expires_at.ToDatetime(tzinfo=UTC) - entry.added_at.ToDatetime(tzinfo=UTC)
        assert ttl == timedelta(days=90)
        # the exchange is in the audit log, both legs
        request_leg, response_leg = await harness.entries(before)
        assert isinstance(request_leg, RequestLeg)
        assert isinstance(response_leg, ResponseLeg)
        assert request_leg.action == "risk_list_add"
        assert request_leg.target_agency == "gateway"
        assert "risk_list.police_case" in request_leg.rule
        assert response_leg.status == "ok"
        # and the change is the leaf at that index of the list's own, signed log
        log = harness.gateway.risklist
        leaves, note = log.read(0, log.size)
        assert decode_change(leaves[result.list_index]) == result.change
        tree = CompactRange()
        for leaf in leaves:
            tree.append(leaf_hash(leaf))
        cp = open_checkpoint(note, signer_of(harness).verifier(), origin=log.origin)
        assert (cp.size, cp.root_hash) == (log.size, tree.root())

    async def test_a_bank_lists_its_own_account(self, harness: GatewayHarness) -> None:
        account = card_number("bank.icbc", 502)
        request = risk(
            harness, member="bank.icbc", category=R.RISK_CATEGORY_BANK_ACCOUNT, value=account
        )
        change = await ok(harness, request, "bank.icbc")
        assert change.entry.issuing_agency == "bank.icbc"
        assert not change.entry.case_number

    async def test_a_bank_may_not_list_another_banks_account(self, harness: GatewayHarness) -> None:
        request = risk(
            harness,
            member="bank.icbc",
            category=R.RISK_CATEGORY_BANK_ACCOUNT,
            value=card_number("bank.ccb", 503),
        )
        refusal = await harness.refusal(harness.sign(request, "bank.icbc"), member="bank.icbc")
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
        assert isinstance(refusal.error, PolicyDenied)
        assert "risk_list.bank_own_accounts" in refusal.error.message
        entry = await harness.last_entry()
        assert isinstance(entry, RequestLeg)
        assert entry.decision == "refused"

    async def test_a_bank_may_not_list_a_number(self, harness: GatewayHarness) -> None:
        request = risk(harness, member="bank.icbc", value=mobile_number("carrier.cmcc", 504))
        refusal = await harness.refusal(harness.sign(request, "bank.icbc"), member="bank.icbc")
        assert "risk_list.bank_own_accounts" in refusal.error.message

    async def test_a_carrier_lists_its_own_numbers_only(self, harness: GatewayHarness) -> None:
        own = risk(harness, member="carrier.cmcc", value=mobile_number("carrier.cmcc", 505))
        await ok(harness, own, "carrier.cmcc")
        other = risk(harness, member="carrier.cmcc", value=mobile_number("carrier.cucc", 506))
        refusal = await harness.refusal(harness.sign(other, "carrier.cmcc"), member="carrier.cmcc")
        assert "risk_list.carrier_own_numbers" in refusal.error.message

    async def test_the_regulators_list_what_they_govern(self, harness: GatewayHarness) -> None:
        number = risk(harness, member="regulator.gdca", value=mobile_number("carrier.cucc", 507))
        await ok(harness, number, "regulator.gdca")
        domain = risk(
            harness,
            member="regulator.gdcac",
            category=R.RISK_CATEGORY_DOMAIN,
            value="Fake-Bank-Refund.EXAMPLE.",
        )
        change = await ok(harness, domain, "regulator.gdcac")
        assert change.entry.value == "fake-bank-refund.example"
        no = risk(
            harness,
            member="regulator.gdcac",
            value=mobile_number("carrier.cucc", 508),
        )
        refusal = await harness.refusal(
            harness.sign(no, "regulator.gdcac"), member="regulator.gdcac"
        )
        assert "risk_list.cyberspace_internet" in refusal.error.message

    async def test_police_need_a_case(self, harness: GatewayHarness) -> None:
        request = risk(harness, value=mobile_number("carrier.cucc", 509))
        request.ClearField("case")
        request.case.case_type = 1
        refusal = await harness.refusal(harness.sign(request))
        assert "risk_list.police_case" in refusal.error.message

    async def test_the_central_bank_may_not_change_the_list(self, harness: GatewayHarness) -> None:
        request = risk(harness, member="pboc.gz", value=mobile_number("carrier.cucc", 510))
        request.officer.role = 6  # central bank analyst
        refusal = await harness.refusal(harness.sign(request, "pboc.gz"), member="pboc.gz")
        assert isinstance(refusal.error, PolicyDenied)

    async def test_bad_values_name_the_field(self, harness: GatewayHarness) -> None:
        request = risk(harness, category=R.RISK_CATEGORY_DOMAIN, value="not a domain")
        refusal = await harness.refusal(harness.sign(request))
        assert isinstance(refusal.error, InvalidArgument)
        assert "risk_list_add.value" in refusal.error.message
        removal = risk(harness, "risk_list_remove", value=mobile_number("carrier.cucc", 511))
        removal.risk_list_remove.reason = ""
        refusal = await harness.refusal(harness.sign(removal))
        assert "risk_list_remove.reason" in refusal.error.message

    async def test_extend_then_remove_with_a_reason(self, harness: GatewayHarness) -> None:
        number = mobile_number("carrier.cucc", 512)
        await ok(harness, risk(harness, value=number), "police.gd.afc")
        later = datetime.now(UTC) + timedelta(days=200)
        extended = await ok(
            harness,
            risk(harness, "risk_list_extend", value=number, expires_at=later),
            "police.gd.afc",
        )
        assert extended.kind == R.RISK_CHANGE_KIND_EXTEND
        assert abs(extended.entry.expires_at.ToDatetime(tzinfo=UTC) - later) < timedelta(seconds=1)
        removed = await ok(
            harness, risk(harness, "risk_list_remove", value=number), "police.gd.afc"
        )
        assert removed.kind == R.RISK_CHANGE_KIND_REMOVE
        assert removed.reason == "申诉核实，误列"
        # gone: a second removal is a signed NOT_FOUND, logged
        again = await harness.client().ask(risk(harness, "risk_list_remove", value=number))
        assert again.response.status == request_pb2.RESPONSE_STATUS_NOT_FOUND
        assert "not on the list" in again.response.detail

    async def test_listing_twice_is_refused_and_only_the_issuer_or_police_change_it(
        self, harness: GatewayHarness
    ) -> None:
        number = mobile_number("carrier.cmcc", 513)
        await ok(harness, risk(harness, member="carrier.cmcc", value=number), "carrier.cmcc")
        twice = await harness.client().ask(risk(harness, value=number))
        assert twice.response.status == request_pb2.RESPONSE_STATUS_REFUSED
        assert "already listed by carrier.cmcc" in twice.response.detail
        # the telecom regulator did not list it: it may not remove it
        theirs = await harness.client("regulator.gdca").ask(
            risk(harness, "risk_list_remove", member="regulator.gdca", value=number)
        )
        assert theirs.response.status == request_pb2.RESPONSE_STATUS_REFUSED
        # police may
        await ok(harness, risk(harness, "risk_list_remove", value=number), "police.gd.afc")

    async def test_an_expired_entry_lapses_and_may_be_listed_again(
        self, harness: GatewayHarness
    ) -> None:
        number = mobile_number("carrier.cucc", 514)
        soon = datetime.now(UTC) + timedelta(seconds=1)
        await ok(harness, risk(harness, value=number, expires_at=soon), "police.gd.afc")
        key = (R.RISK_CATEGORY_PHONE_NUMBER, number)
        assert harness.gateway.risklist.entry(key) is not None
        while datetime.now(UTC) < soon + timedelta(milliseconds=50):
            await _sleep(0.1)
        lapsed = await harness.client().ask(risk(harness, "risk_list_extend", value=number))
        assert lapsed.response.status == request_pb2.RESPONSE_STATUS_NOT_FOUND
        again = await ok(harness, risk(harness, value=number), "police.gd.afc")
        assert again.kind == R.RISK_CHANGE_KIND_ADD


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def sample_leaves(count: int) -> list[bytes]:
    """``count`` valid ADD changes of distinct numbers, as leaves."""
    out = []
    for i in range(count):
        change = R.RiskListChange(kind=R.RISK_CHANGE_KIND_ADD, reason="test")
        change.entry.category = R.RISK_CATEGORY_PHONE_NUMBER
        change.entry.value = mobile_number("carrier.cucc", 900 + i)
        change.entry.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=1))
        out.append(change.SerializeToString())
    return out


def signer_of(h: GatewayHarness) -> NoteSigner:
    from fedgate.tls import MemberCredentials
    from fedgate.types import MemberId

    creds = MemberCredentials.load(h.federation, MemberId("gateway"))
    return NoteSigner(name=h.gateway.risklist.origin, private_key=creds.signing_key)


class TestListLog:
    async def test_reopens_and_refuses_leaves_that_do_not_match_its_checkpoint(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        signer = signer_of(harness)
        path = tmp_path / "risklist.sqlite"
        log = RiskListLog.open(path, origin=signer.name, signer=signer)
        leaves = sample_leaves(2)
        for leaf in leaves:
            await log.change(lambda _, leaf=leaf: decode_change(leaf))
        assert log.size == 2
        await log.close()
        reopened = RiskListLog.open(path, origin=signer.name, signer=signer)
        assert reopened.size == 2
        assert len(reopened.entries()) >= 1
        await reopened.close()
        # a leaf slipped in behind the log's back (triggers dropped first, as an attacker would)
        import sqlite3

        db = sqlite3.connect(path)
        db.execute("INSERT INTO leaves (idx, data) VALUES (2, ?)", (leaves[0],))
        db.commit()
        db.close()
        with pytest.raises(LogInconsistent, match="do not match the last signed checkpoint"):
            RiskListLog.open(path, origin=signer.name, signer=signer)

    async def test_leaves_are_append_only(self, harness: GatewayHarness, tmp_path: Path) -> None:
        import sqlite3

        signer = signer_of(harness)
        path = tmp_path / "ro.sqlite"
        log = RiskListLog.open(path, origin=signer.name, signer=signer)
        leaves = sample_leaves(1)
        await log.change(lambda _: decode_change(leaves[0]))
        await log.close()
        db = sqlite3.connect(path)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM leaves")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE checkpoints SET note = 'x'")
        db.close()


class TestWitnessed:
    async def test_the_witnesses_cosign_the_list_log_and_refuse_a_rollback(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        from fedgate.checkpoint import cosignatures_in
        from fedgate.keys import generate_signing_key
        from fedgate.witness import Witness

        signer = signer_of(harness)
        witnesses = [
            Witness(
                name=name,
                private_key=generate_signing_key(),
                state_path=tmp_path / f"{name}.json",
                logs={signer.name: signer.verifier()},
            )
            for name in ("pboc.gz", "audit.office")
        ]
        path = tmp_path / "witnessed.sqlite"
        log = RiskListLog.open(path, origin=signer.name, signer=signer, witnesses=witnesses)
        log.start()
        leaves = sample_leaves(2)
        try:
            for leaf in leaves:
                await log.change(lambda _, leaf=leaf: decode_change(leaf))
            verifiers = [w.verifier for w in witnesses]
            for _ in range(100):
                if len(cosignatures_in(log.latest_checkpoint(), verifiers)) == 2:
                    break
                await _sleep(0.05)
            note = log.latest_checkpoint()
            assert sorted(cosignatures_in(note, verifiers)) == ["audit.office", "pboc.gz"]
            assert note.startswith(f"{signer.name}\n2\n")
        finally:
            await log.close()
        # the store restored from an older copy: the witnesses remember size 2 and refuse
        import shutil
        import sqlite3

        older = tmp_path / "older.sqlite"
        shutil.copy(path, older)
        db = sqlite3.connect(older)
        db.execute("DROP TRIGGER leaves_no_delete")
        db.execute("DROP TRIGGER checkpoints_no_delete")
        db.execute("DELETE FROM leaves WHERE idx = 1")
        db.execute("DELETE FROM checkpoints WHERE size = 2")
        db.execute("DELETE FROM cosigned")
        db.commit()
        db.close()
        rolled = RiskListLog.open(older, origin=signer.name, signer=signer, witnesses=witnesses)
        rolled.start()
        try:
            for _ in range(100):
                if len(rolled.witness_errors) == 2:
                    break
                await _sleep(0.05)
            assert all("rolled back" in e for e in rolled.witness_errors.values())
        finally:
            await rolled.close()


class TestListLogDown:
    async def test_a_change_the_list_log_cannot_take_is_refused_and_logged(
        self, gw_federation: Path, tmp_path: Path, harness_factory: Any
    ) -> None:
        from fedgate.errors import AuditUnavailable

        h = await harness_factory(gw_federation, tmp_path)
        try:
            # the risk list's database goes away under the gateway
            h.gateway.risklist._store._db.close()
            before = h.gateway.audit.size
            request = risk(h, value=mobile_number("carrier.cucc", 601))
            with pytest.raises(AuditUnavailable):
                await h.client().submit(request)
            request_leg, response_leg = await h.entries(before)
            assert isinstance(request_leg, RequestLeg)
            assert request_leg.decision == "allowed"
            assert isinstance(response_leg, ResponseLeg)
            assert response_leg.status == "unavailable"
            assert "AUDIT_UNAVAILABLE" in response_leg.detail
            assert h.gateway.risklist.size == 0
        finally:
            h.gateway.risklist._store._db = sqlite3.connect(":memory:")
            await h.close()
