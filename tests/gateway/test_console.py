"""The auditor console over HTTP (httpx's ASGI transport) on a real SQLite audit log of signed
exchanges: who may log in, search, the verified exchange, masked identifiers and audited
reveals, evidence bundles, the log's state, charts and flags; and the gateway serving it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedgate.audit_entry import EventEntry, RequestLeg, ResponseLeg, decode_entry
from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.evidence import log_verifiers, verify_bundle
from fedgate.keys import load_private_key
from fedgate.note import NoteSigner
from fedgate.pki import FederationLayout, init_federation, revoke_member
from fedgate.registry import Registry
from fedgate.testing import card_number, officer, valid_request
from fedgate.tlogproof import parse_tlog_proof, verify_tlog_proof_hash
from fedgate.types import MemberId
from fedgate.v1 import request_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from fedgate.web.headers import CSP
from fedgate.web.text import BEIJING, mask_identifier
from fedgate.witness import Witness
from gateway.audit.insights import DayCount, LogInsights, ReasonCount
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.config import (
    ConfigError,
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    ServerConfig,
)
from gateway.console import PAGE_SIZE, AuditorConsole
from gateway.console._charts import MAX_SERIES, OTHER, day_chart, reason_chart
from gateway.console._state import SEEN_FILE
from gateway.server import Gateway

ORIGIN = "fedgate.test/gateway/shard-0"
PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)
BASE = "http://console.test"
POLICE = MemberId("police.gd.afc")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def old_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation issued 120 days ago, so exchanges dated weeks back verify. Read-only."""
    return init_federation(
        tmp_path_factory.mktemp("console-fed") / "fed",
        now=datetime.now(UTC) - timedelta(days=120),
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Bench:
    """A real audit log, its console, accounts of three kinds, and a browser-less client."""

    fed: Path
    tmp: Path
    log: AuditLog
    insights: LogInsights
    users: UserStore
    clock: Clock
    registry: dict[str, Registry]
    console: AuditorConsole
    client: httpx.AsyncClient
    signers: dict[str, Signer] = field(default_factory=dict)
    serial: int = 0

    def signer(self, member: str) -> Signer:
        if member not in self.signers:
            key = load_private_key(FederationLayout(self.fed).signing_key(MemberId(member)))
            self.signers[member] = Signer.from_key(key)
        return self.signers[member]

    async def exchange(
        self,
        *,
        at: datetime | None = None,
        action: str = "account_holder",
        officer_serial: int = 0,
        case: str | None = None,
        account: str | None = None,
        decision: str = "allowed",
        reason: str = "POLICY_DENIED: no rule allows it",
        status: str | None = "ok",
        detail: str = "不符合协查条件",
    ) -> tuple[int, int | None, request_pb2.Request]:
        """A signed request (and the target's signed answer) logged as the gateway would."""
        self.serial += 1
        at = at or self.clock.now
        request = valid_request(
            action, now=at, serial=self.serial, case=case, account_number=account
        )
        request.officer.CopyFrom(officer(officer_serial))
        body = request.SerializeToString()
        envelope = sign_envelope(body, self.signer(POLICE), Domain.REQUEST)
        fields = request.WhichOneof("action")
        subject = getattr(getattr(request, fields or ""), "account_number", "") or getattr(
            getattr(request, fields or ""), "phone_number", ""
        )
        leg = RequestLeg(
            envelope=envelope.SerializeToString(),
            peer=POLICE,
            peer_cert_sha256=self.registry["now"].member(POLICE).cert_fingerprint,
            received_at=at,
            decision=decision,
            rule=f"p, police_investigator, police, {action}, bank, allow"
            if decision == "allowed"
            else reason,
            request_id=request.request_id,
            requesting_agency=request.requesting_agency,
            officer_id=request.officer.id,
            case_number=request.case.case_number,
            action=action,
            target_agency=request.target_agency,
            subjects=(subject,) if subject else (),
        )
        receipt = await self.log.append(leg)
        if decision != "allowed" or status is None:
            return receipt.index, None, request
        responder = request.target_agency
        response = request_pb2.Response(
            request_id=request.request_id,
            request_hash=hashlib.sha256(body).digest(),
            responder=responder,
            status=request_pb2.RESPONSE_STATUS_OK
            if status == "ok"
            else request_pb2.RESPONSE_STATUS_REFUSED,
            detail="" if status == "ok" else detail,
        )
        response.answered_at.FromDatetime(at + timedelta(seconds=1))
        if status == "ok" and action == "account_holder":
            response.account_holder.account_number = subject
            response.account_holder.account_name = "张伟"
            response.account_holder.id_number = "440106198803091234"
        signed = sign_envelope(
            response.SerializeToString(), self.signer(responder), Domain.RESPONSE
        )
        answer = await self.log.append(
            ResponseLeg(
                request_id=request.request_id,
                request_leaf_index=receipt.index,
                responder=responder,
                received_at=at + timedelta(seconds=1),
                status=status,
                response_hash=hashlib.sha256(signed.body).digest(),
                responder_signature=signed.signature,
                responder_key_id=signed.key_id,
                detail=response.detail,
                response_envelope=signed.SerializeToString(),
            )
        )
        return receipt.index, answer.index, request

    async def csrf(self, path: str = "/login") -> str:
        response = await self.client.get(path)
        match = CSRF.search(response.text)
        assert match, response.text[:500]
        return match.group(1)

    async def login(self, user: str = "audit.wang", password: str = PASSWORD) -> httpx.Response:
        token = await self.csrf()
        return await self.client.post(
            "/login", data={"csrf": token, "user": user, "password": password, "next": "/"}
        )

    async def events(self, kind: str) -> list[EventEntry]:
        found = []
        for i in range(self.log.size):
            entry = decode_entry(await self.log.get_entry(i))
            if isinstance(entry, EventEntry) and entry.kind == kind:
                found.append(entry)
        return found


async def open_bench(fed: Path, tmp: Path) -> Bench:
    clock = Clock()
    key = load_private_key(FederationLayout(fed).signing_key(MemberId("gateway")))
    db = tmp / "audit.sqlite"
    log_signer = NoteSigner(name=ORIGIN, private_key=key)
    witness = Witness(
        name="pboc.gz",
        private_key=load_private_key(FederationLayout(fed).signing_key(MemberId("pboc.gz"))),
        state_path=tmp / "witness-pboc",
        logs={ORIGIN: log_signer.verifier()},
    )
    log = await AuditLog.open(
        store=await open_sqlite_store(db, origin=ORIGIN),
        origin=ORIGIN,
        signer=log_signer,
        witnesses=[witness],
    )
    insights = await LogInsights.open(db, catch_up=log.catch_up_soon)
    users = UserStore.in_state_dir(tmp, clock=clock)
    for user_id, member, role in (
        ("audit.wang", "audit.office", Role.AUDITOR),
        ("icbc.audit", "bank.icbc", Role.AUDITOR),
        ("icbc.zhang", "bank.icbc", Role.STAFF),
    ):
        users.add_user(
            user_id, member_id=member, display_name="王审计", role=role, password=PASSWORD,
            params=FAST,
        )  # fmt: skip
    registry = {"now": Registry.load_dir(fed)}
    console = AuditorConsole(
        log=log,
        insights=insights,
        registry=lambda: registry["now"],
        users=users,
        state_dir=tmp,
        clock=clock,
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=console.app), base_url=BASE)
    return Bench(fed, tmp, log, insights, users, clock, registry, console, client)


@pytest.fixture
async def bench(old_federation: Path, tmp_path: Path) -> AsyncIterator[Bench]:
    b = await open_bench(old_federation, tmp_path)
    yield b
    await b.client.aclose()
    await b.insights.close()
    await b.log.close()
    b.users.close()


@pytest.fixture
async def auditor(bench: Bench) -> Bench:
    """The bench with audit.wang logged in."""
    response = await bench.login()
    assert response.status_code == 303, response.text[:300]
    return bench


def form_token(html: str) -> str:
    match = CSRF.search(html)
    assert match
    return match.group(1)


# ------------------------------------------------------------------------------------ access


class TestWhoMayLogIn:
    async def test_an_auditor_of_the_audit_office_logs_in_and_the_login_is_logged(
        self, bench: Bench
    ) -> None:
        response = await bench.login()
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        home = await bench.client.get("/")
        assert home.status_code == 200
        assert "检索审计日志" in home.text
        (event,) = await bench.events("console_login")
        assert (event.actor, event.member) == ("audit.wang", "audit.office")

    async def test_an_auditor_account_of_a_bank_is_refused_and_the_refusal_logged(
        self, bench: Bench
    ) -> None:
        response = await bench.login("icbc.audit")
        assert response.status_code == 403
        assert "不能登录本控制台" in response.text
        (event,) = await bench.events("console_login_refused")
        assert event.actor == "icbc.audit"
        assert dict(event.detail)["reason"] == "WRONG_CONSOLE"
        assert (await bench.client.get("/")).status_code == 303

    async def test_a_staff_account_is_refused(self, bench: Bench) -> None:
        assert (await bench.login("icbc.zhang")).status_code == 403

    async def test_a_wrong_password_and_a_logout_are_logged(self, bench: Bench) -> None:
        assert (await bench.login(password="wrong password!")).status_code == 401
        assert (await bench.login()).status_code == 303
        token = await bench.csrf("/")
        assert (await bench.client.post("/logout", data={"csrf": token})).status_code == 303
        assert len(await bench.events("console_login_failed")) == 1
        assert len(await bench.events("console_logout")) == 1
        assert (await bench.client.get("/")).status_code == 303

    async def test_pages_need_a_login(self, bench: Bench) -> None:
        for path in ("/", "/entries/0", "/log", "/charts", "/flags"):
            response = await bench.client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login")

    async def test_revoking_the_member_ends_its_sessions(self, auditor: Bench) -> None:
        copy = auditor.tmp / "fed-copy"
        shutil.copytree(auditor.fed, copy)
        revoke_member(copy, MemberId("audit.office"), reason="test")
        auditor.registry["now"] = Registry.load_dir(copy)
        response = await auditor.client.get("/")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")

    async def test_a_console_event_that_cannot_be_logged_refuses_the_login(
        self, bench: Bench
    ) -> None:
        token = await bench.csrf()
        await bench.log.close()
        response = await bench.client.post(
            "/login", data={"csrf": token, "user": "audit.wang", "password": PASSWORD}
        )
        assert response.status_code == 503
        assert "审计记录暂时无法写入" in response.text


# ------------------------------------------------------------------------------------ search


class TestSearch:
    async def test_the_officer_filter_finds_officers_by_name(self, auditor: Bench) -> None:
        first, _, request = await auditor.exchange(officer_serial=7, status=None)
        other, _, _ = await auditor.exchange(officer_serial=27, status=None)  # same surname
        name = request.officer.name
        page = await auditor.client.get("/", params={"officer": name})
        found = {int(i) for i in re.findall(r'id="entry-(\d+)"', page.text)}
        assert first in found
        assert other not in found
        surname = await auditor.client.get("/", params={"officer": name[0]})
        assert 'id="officer-matches"' in surname.text  # a surname may name several officers
        none = await auditor.client.get("/", params={"officer": "欧阳无名"})
        assert "没有名为“欧阳无名”的民警" in none.text

    async def test_the_action_filter_is_grouped_and_sorted(self, auditor: Bench) -> None:
        page = await auditor.client.get("/")
        select = page.text.split('id="s-action"', 1)[1].split("</select>", 1)[0]
        groups = re.findall(r'<optgroup label="([^"]+)">(.*?)</optgroup>', select, re.S)
        assert [g for g, _ in groups] == ["查询", "指令", "单位报告", "控制台事件"]
        for _, options in groups:
            labels = re.findall(r">([^<]+)</option>", options)
            assert labels == sorted(labels)
        assert 'value="stop_payment"' in groups[1][1]
        assert 'value="account_holder"' in groups[0][1]

    async def test_event_rows_read_as_sentences(self, auditor: Bench) -> None:
        target, _, _ = await auditor.exchange(status=None)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        await auditor.client.post(
            f"/entries/{target}/reveal",
            data={"csrf": token, "leg": str(target), "field": "action.account_number",
                  "reason": "核查冻结依据"},
        )  # fmt: skip
        page = await auditor.client.get("/?kind=event")
        assert "理由 核查冻结依据" in page.text
        assert "request_id=" not in page.text
        assert "字段 账号" in page.text

    async def test_an_empty_log_says_so(self, auditor: Bench) -> None:
        page = await auditor.client.get("/?kind=request")
        assert "没有符合条件的记录" in page.text

    async def test_newest_first_in_pages(self, auditor: Bench) -> None:
        for _ in range(PAGE_SIZE + 5):
            await auditor.exchange(status=None)
        first = await auditor.client.get("/?kind=request")
        indices = [int(i) for i in re.findall(r'id="entry-(\d+)"', first.text)]
        assert len(indices) == PAGE_SIZE
        assert indices == sorted(indices, reverse=True)
        older = re.search(r'href="(/\?[^"]*before=\d+)" id="older"', first.text)
        assert older
        second = await auditor.client.get(older.group(1).replace("&amp;", "&"))
        rest = [int(i) for i in re.findall(r'id="entry-(\d+)"', second.text)]
        assert len(rest) == 5
        assert max(rest) < min(indices)
        assert 'id="older"' not in second.text
        assert 'id="newest"' in second.text

    async def test_filters_by_case_officer_subject_action_outcome_and_time(
        self, auditor: Bench
    ) -> None:
        now = auditor.clock.now
        account = card_number("bank.icbc", 777)
        target, answer, request = await auditor.exchange(account=account, officer_serial=7)
        case = request.case.case_number
        await auditor.exchange(action="stop_payment", officer_serial=8)
        await auditor.exchange(
            decision="refused", officer_serial=9, at=now - timedelta(days=2), status=None
        )

        async def hits(query: str) -> set[int]:
            page = await auditor.client.get(f"/?{query}")
            assert page.status_code == 200, page.text[:300]
            return {int(i) for i in re.findall(r'id="entry-(\d+)"', page.text)}

        assert await hits(f"case={case}") == {target, answer}
        assert await hits(f"case={case}&kind=request") == {target}
        assert await hits(f"officer={request.officer.id}") == {target, answer}
        assert await hits(f"subject={account}") == {target, answer}
        assert await hits(f"subject={account[:-1]}") == set()
        orders = await hits("action=stop_payment")
        assert orders
        assert target not in orders
        refused = await hits("outcome=refused")
        assert len(refused) == 1
        since = (now - timedelta(hours=1)).astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M")
        assert refused.isdisjoint(await hits(f"since={since}"))
        assert await hits("member=bank.icbc&kind=request") >= {target}

    async def test_subjects_are_masked_in_the_list(self, auditor: Bench) -> None:
        account = card_number("bank.icbc", 4242)
        await auditor.exchange(account=account)
        page = await auditor.client.get(f"/?subject={account}")
        rows = page.text.split('id="results"', 1)[1]
        assert mask_identifier(account) in rows
        assert account not in rows

    async def test_identifiers_in_free_text_are_masked_in_the_list(self, auditor: Bench) -> None:
        """Issue 10: an agency's detail ("no account 6222 …") reached the search page."""
        case = "A4401000000202612990001"
        for written in ("6222 0212 3456 7891 234", "6222-0212-3456-7891-234"):
            await auditor.exchange(
                case=case, status="refused", detail=f"no account {written} at this bank"
            )
        page = await auditor.client.get(f"/?case={case}&kind=response")
        rows = page.text.split('id="results"', 1)[1]
        assert "no account 622****1234 at this bank" in rows
        assert "6222 0212" not in rows
        assert "6222-0212" not in rows

    async def test_a_bad_time_is_explained(self, auditor: Bench) -> None:
        page = await auditor.client.get("/?since=yesterday&case=A1")
        assert page.status_code == 400
        assert "检索条件有误" in page.text
        assert "since" in page.text
        assert 'value="A1"' in page.text


# ------------------------------------------------------------------------------------ one entry


class TestEntry:
    async def test_the_exchange_is_shown_verified_and_masked(self, auditor: Bench) -> None:
        account = card_number("bank.icbc", 31)
        target, answer, request = await auditor.exchange(account=account)
        assert answer is not None
        page = await auditor.client.get(f"/entries/{answer}")
        assert page.status_code == 200
        html = page.text
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-security-policy"] == CSP
        assert f'id="leg-{target}"' in html
        assert f'id="leg-{answer}"' in html
        assert "请求签名有效，由 police.gd.afc" in html
        assert "答复由 bank.icbc 签名，并绑定到本请求" in html
        assert html.count("包含在共") == 2
        assert "最新检查点" in html
        assert 'class="check failed"' not in html
        assert request.case.case_number in html
        assert account not in html
        assert request.officer.phone not in html
        assert "440106198803091234" not in html
        assert mask_identifier(account) in html

    async def test_a_reveal_is_audited_then_shown_to_that_session_only(
        self, auditor: Bench
    ) -> None:
        account = card_number("bank.icbc", 32)
        target, answer, _ = await auditor.exchange(account=account)
        page = await auditor.client.get(f"/entries/{target}")
        field_id = f"reveal-{target}-action-account_number"
        assert field_id in page.text
        field = {"leg": str(target), "field": "action.account_number", "reason": "核查冻结依据"}
        response = await auditor.client.post(
            f"/entries/{target}/reveal", data={"csrf": form_token(page.text), **field}
        )
        assert response.status_code == 303
        assert response.headers["location"].startswith(f"/entries/{target}?notice=revealed#")
        (event,) = await auditor.events("console_reveal")
        detail = dict(event.detail)
        assert (event.actor, event.member) == ("audit.wang", "audit.office")
        assert detail["entry"] == str(target)
        assert detail["field"] == "action.account_number"
        assert detail["reason"] == "核查冻结依据"
        assert account not in repr(event)
        shown = await auditor.client.get(f"/entries/{target}?notice=revealed")
        assert account in shown.text
        assert "已显示该字段" in shown.text
        # One reveal per identifier: the response leg's copy of the number opened with it,
        # under the same single event.
        leg = shown.text.split(f'id="leg-{answer}"', 1)[1]
        assert account in leg
        assert f"{answer}:" in detail["places"]
        # Another session of the same auditor sees it masked.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=auditor.console.app), base_url=BASE
        )
        try:
            token = CSRF.search((await other.get("/login")).text)
            assert token
            await other.post(
                "/login", data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD}
            )
            assert account not in (await other.get(f"/entries/{target}")).text
        finally:
            await other.aclose()

    async def test_a_reveal_expires(self, auditor: Bench) -> None:
        account = card_number("bank.icbc", 33)
        target, _, _ = await auditor.exchange(account=account, status=None)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        await auditor.client.post(
            f"/entries/{target}/reveal",
            data={
                "csrf": token,
                "leg": str(target),
                "field": "action.account_number",
                "reason": "核查冻结依据",
            },
        )
        assert account in (await auditor.client.get(f"/entries/{target}")).text
        auditor.clock.now += timedelta(minutes=11)
        assert account not in (await auditor.client.get(f"/entries/{target}")).text

    async def test_a_reveal_without_the_csrf_token_is_refused_and_nothing_shown(
        self, auditor: Bench
    ) -> None:
        account = card_number("bank.icbc", 34)
        target, _, _ = await auditor.exchange(account=account, status=None)
        response = await auditor.client.post(
            f"/entries/{target}/reveal", data={"leg": str(target), "field": "action.account_number"}
        )
        assert response.status_code == 403
        assert await auditor.events("console_reveal") == []
        assert account not in (await auditor.client.get(f"/entries/{target}")).text

    async def test_only_masked_fields_of_the_exchange_can_be_revealed(self, auditor: Bench) -> None:
        target, _, _ = await auditor.exchange(status=None)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        wrong = (
            (str(target), "action.holder"),
            (str(target + 5), "action.account_number"),
            ("x", "action.account_number"),
        )
        for leg, name in wrong:
            response = await auditor.client.post(
                f"/entries/{target}/reveal",
                data={"csrf": token, "leg": leg, "field": name, "reason": "核查冻结依据"},
            )
            assert response.status_code == 400
        assert await auditor.events("console_reveal") == []

    async def test_free_text_is_masked_and_revealable(self, auditor: Bench) -> None:
        written = "6222 0212 3456 7891 234"
        _, answer, _ = await auditor.exchange(
            status="refused", detail=f"no account {written} at this bank"
        )
        assert answer is not None
        page = await auditor.client.get(f"/entries/{answer}")
        assert written not in page.text
        assert "no account 622****1234 at this bank" in page.text
        field_id = f"reveal-{answer}-detail"
        assert field_id in page.text
        response = await auditor.client.post(
            f"/entries/{answer}/reveal",
            data={
                "csrf": form_token(page.text),
                "leg": str(answer),
                "field": "detail",
                "reason": "the bank says the account is unknown",
            },
        )
        assert response.status_code == 303
        (event,) = await auditor.events("console_reveal")
        assert dict(event.detail)["field"] == "detail"
        assert written in (await auditor.client.get(f"/entries/{answer}")).text

    @pytest.mark.parametrize("reason", ["", "   ", "看看"])
    async def test_a_reveal_needs_a_reason(self, auditor: Bench, reason: str) -> None:
        account = card_number("bank.icbc", 34)
        target, _, _ = await auditor.exchange(account=account, status=None)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        response = await auditor.client.post(
            f"/entries/{target}/reveal",
            data={"csrf": token, "leg": str(target), "field": "action.account_number",
                  "reason": reason},
        )  # fmt: skip
        assert response.status_code == 400
        assert "reason" in response.text
        assert await auditor.events("console_reveal") == []
        assert account not in (await auditor.client.get(f"/entries/{target}")).text

    async def test_a_request_refused_for_its_signature_is_shown_as_such(
        self, auditor: Bench
    ) -> None:
        request = valid_request("account_holder", now=auditor.clock.now, serial=99)
        envelope = sign_envelope(
            request.SerializeToString(), auditor.signer("bank.icbc"), Domain.REQUEST
        )
        leg = RequestLeg(
            envelope=envelope.SerializeToString(),
            peer=POLICE,
            peer_cert_sha256="",
            received_at=auditor.clock.now,
            decision="refused",
            rule="PEER_MISMATCH: the key is not the peer's",
            request_id=request.request_id,
            requesting_agency=POLICE,
        )
        index = (await auditor.log.append(leg)).index
        garbage = RequestLeg(
            envelope=b"\x00garbage",
            peer=POLICE,
            peer_cert_sha256="",
            received_at=auditor.clock.now,
            decision="refused",
            rule="MALFORMED: not a SignedEnvelope",
        )
        broken = (await auditor.log.append(garbage)).index
        html = (await auditor.client.get(f"/entries/{index}")).text
        assert "签名未通过验证" in html
        assert 'class="check failed"' not in html
        html = (await auditor.client.get(f"/entries/{broken}")).text
        assert "请求信封无法解码" in html

    async def test_an_event_entry_and_an_unknown_entry(self, auditor: Bench) -> None:
        (login,) = [
            i
            for i in range(auditor.log.size)
            if isinstance(decode_entry(await auditor.log.get_entry(i)), EventEntry)
        ]
        html = (await auditor.client.get(f"/entries/{login}")).text
        assert "console_login" in html
        assert "audit.wang" in html
        missing = await auditor.client.get(f"/entries/{auditor.log.size + 10}")
        assert missing.status_code == 404
        assert "没有这个页面或记录" in missing.text

    async def test_pages_render_in_english(self, auditor: Bench) -> None:
        target, answer, _ = await auditor.exchange()
        for path in ("/", f"/entries/{answer}", "/log", "/charts", "/flags"):
            page = await auditor.client.get(f"{path}?lang=en")
            assert page.status_code == 200, path
            assert "Auditor console" in page.text
        assert (
            "Verified: the request is signed by police.gd.afc"
            in (await auditor.client.get(f"/entries/{target}?lang=en")).text
        )


class TestEvidence:
    async def test_the_bundle_verifies_offline_and_the_export_is_logged(
        self, auditor: Bench
    ) -> None:
        target, answer, _ = await auditor.exchange()
        for _ in range(500):  # the default witness policy: 1 of 2 witnesses cosigned
            if auditor.log.latest_cosigned_size() == auditor.log.size:
                break
            await asyncio.sleep(0.01)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        full = {"csrf": token, "full": "1", "reason": "移送检察院"}
        response = await auditor.client.post(f"/entries/{target}/evidence", data=full)
        assert response.status_code == 200
        assert response.headers["content-disposition"] == (
            f'attachment; filename="fedgate-evidence-{target}.json"'
        )
        assert response.headers["cache-control"] == "no-store"
        report = verify_bundle(response.content, Registry.load_dir(auditor.fed))
        assert report.index == target
        assert {i for i, _ in report.entries} == {target, answer}
        (event,) = await auditor.events("console_export")
        assert dict(event.detail) == {"entry": str(target), "reason": "移送检察院"}

    async def test_the_default_download_is_masked_and_still_proves_inclusion(
        self, auditor: Bench
    ) -> None:
        account = card_number("bank.icbc", 35)
        target, answer, _ = await auditor.exchange(account=account)
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        response = await auditor.client.post(f"/entries/{target}/evidence", data={"csrf": token})
        assert response.status_code == 200
        assert response.headers["content-disposition"] == (
            f'attachment; filename="fedgate-evidence-{target}-masked.json"'
        )
        assert account not in response.text
        assert mask_identifier(account) in response.text
        doc = json.loads(response.content)
        assert doc["format"] == "fedgate-evidence-masked/v1"
        assert {leg["index"] for leg in doc["legs"]} == {target, answer}
        registry = Registry.load_dir(auditor.fed)
        for leg in doc["legs"]:
            proof = parse_tlog_proof(leg["tlog_proof"])
            verifiers = log_verifiers(registry, doc["origin"])
            verify_tlog_proof_hash(proof, bytes.fromhex(leg["leaf_hash"]), verifiers[-1])
        (event,) = await auditor.events("console_export_masked")
        assert dict(event.detail) == {"entry": str(target)}
        assert await auditor.events("console_export") == []

    async def test_the_full_bundle_needs_a_reason(self, auditor: Bench) -> None:
        target, _, _ = await auditor.exchange()
        token = form_token((await auditor.client.get(f"/entries/{target}")).text)
        response = await auditor.client.post(
            f"/entries/{target}/evidence", data={"csrf": token, "full": "1", "reason": ""}
        )
        assert response.status_code == 400
        assert await auditor.events("console_export") == []

    async def test_the_export_needs_a_post_with_the_token(self, auditor: Bench) -> None:
        target, _, _ = await auditor.exchange()
        assert (await auditor.client.get(f"/entries/{target}/evidence")).status_code == 405
        assert (await auditor.client.post(f"/entries/{target}/evidence")).status_code == 403
        assert await auditor.events("console_export") == []


# ------------------------------------------------------------------------------------ the log


class TestLogState:
    async def test_checkpoint_witnesses_and_consistency_are_shown(self, auditor: Bench) -> None:
        await auditor.exchange()
        html = (await auditor.client.get("/log")).text
        assert "由网关密钥签署" in html
        assert f'id="log-size">{auditor.log.size}<' in html
        assert re.search(r"共 \d+ 条的检查点是共 \d+ 条检查点的延续", html)
        for witness in ("audit.office", "pboc.gz"):
            assert witness in html
        assert (auditor.tmp / SEEN_FILE).exists()
        first = auditor.log.size
        await auditor.exchange()
        html = (await auditor.client.get("/log")).text
        assert f"共 {auditor.log.size} 条的检查点是共 {first} 条检查点的延续" in html

    async def test_a_log_that_does_not_extend_what_the_console_saw_is_alarmed(
        self, auditor: Bench
    ) -> None:
        await auditor.exchange()
        key = load_private_key(FederationLayout(auditor.fed).signing_key(MemberId("gateway")))
        forged = sign_checkpoint(
            Checkpoint(ORIGIN, 1, b"\x07" * 32), NoteSigner(name=ORIGIN, private_key=key)
        )
        (auditor.tmp / SEEN_FILE).write_text(forged, "utf-8")
        fresh = AuditorConsole(
            log=auditor.log,
            insights=auditor.insights,
            registry=lambda: auditor.registry["now"],
            users=auditor.users,
            state_dir=auditor.tmp,
            clock=auditor.clock,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fresh.app), base_url=BASE
        ) as client:
            token = CSRF.search((await client.get("/login")).text)
            assert token
            await client.post(
                "/login", data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD}
            )
            html = (await client.get("/log")).text
        assert "一致性检查失败" in html
        assert "日志可能被回滚或篡改" in html
        assert (auditor.tmp / SEEN_FILE).read_text("utf-8") == forged


# ------------------------------------------------------------------------------------ charts


class TestCharts:
    async def test_requests_per_day_by_member_and_action_and_refusals_by_reason(
        self, auditor: Bench
    ) -> None:
        now = auditor.clock.now
        await auditor.exchange(at=now - timedelta(days=1))
        await auditor.exchange(at=now - timedelta(days=1), action="stop_payment")
        await auditor.exchange(decision="refused", status=None)
        await auditor.exchange(decision="refused", status=None, reason="QUOTA_EXCEEDED: slow")
        await auditor.exchange(status="refused")
        html = (await auditor.client.get("/charts?days=7")).text
        assert html.count("<svg") == 3
        yesterday = (now - timedelta(days=1)).astimezone(BEIJING).date().isoformat()
        assert re.search(rf"{yesterday} · [^<]*\(police.gd.afc\)：2", html)
        assert f"{yesterday} · 紧急止付：1" in html
        assert "访问策略不允许: 1" in html
        assert "超出查询配额: 1" in html
        assert "机构拒绝: 1" in html
        target = (await auditor.client.get("/charts?days=7&by=target")).text
        assert re.search(rf"{yesterday} · [^<]*\(bank.icbc\)：2", target)

    async def test_empty_periods_say_so(self, auditor: Bench) -> None:
        html = (await auditor.client.get("/charts?days=1")).text
        assert "该时间范围内没有请求" in html
        assert "该时间范围内没有拒绝" in html
        assert "<svg" not in html


class TestChartGeometry:
    def test_the_largest_series_are_drawn_and_the_rest_added_up(self) -> None:
        day = date(2026, 11, 1)
        counts = [DayCount(day, f"m{i}", 20 - i) for i in range(MAX_SERIES + 3)]
        chart = day_chart(counts, first=day, days=3, label=str, title=lambda d, n, c: f"{n}={c}")
        assert [item.key for item in chart.legend][-1] == OTHER
        assert len(chart.legend) == MAX_SERIES + 1
        other = chart.legend[-1]
        assert other.total == sum(20 - i for i in range(MAX_SERIES, MAX_SERIES + 3))
        assert chart.total == sum(c.count for c in counts)
        assert chart.table == (
            (day.isoformat(), tuple(i.total for i in chart.legend), chart.total),
        )
        tallest = max(b.y + b.height for b in chart.bars)
        assert tallest == pytest.approx(chart.baseline)
        assert min(b.y for b in chart.bars) >= chart.top - 0.01
        assert chart.yticks[0].label == "0"

    def test_reasons_are_sorted_and_scaled(self) -> None:
        chart = reason_chart(
            [ReasonCount("A", 3), ReasonCount("B", 12), ReasonCount("C", 1)], label=str.lower
        )
        assert [b.key for b in chart.bars] == ["B", "A", "C"]
        assert [b.label for b in chart.bars] == ["b", "a", "c"]
        assert chart.bars[0].width > chart.bars[1].width > chart.bars[2].width
        assert chart.total == 16


# ------------------------------------------------------------------------------------ flags


class TestFlags:
    async def test_each_pattern_is_flagged_and_the_quiet_ones_are_not(self, auditor: Bench) -> None:
        # Midday China time, some days back, so every day is whole and in working hours.
        today = auditor.clock.now.astimezone(BEIJING).replace(hour=12, minute=0, second=0)
        days = [today - timedelta(days=n) for n in range(12, 0, -1)]
        # Officer 1: 2 a day for 5 days, then 21 in one day (median 2 → flagged).
        for d in days[:5]:
            for _ in range(2):
                await auditor.exchange(at=d, officer_serial=1, status=None)
        for _ in range(21):
            await auditor.exchange(at=days[6], officer_serial=1, status=None)
        # Officer 2: 19 in a day (below the minimum) at 03:00 China time.
        night = days[3].replace(hour=3)
        for _ in range(19):
            await auditor.exchange(at=night, officer_serial=2, status=None)
        # Officer 3: a query 10 days ago, then a stop-payment in the same case 2 days later.
        _, _, followed = await auditor.exchange(at=days[2], officer_serial=3)
        await auditor.exchange(
            at=days[4], officer_serial=3, action="stop_payment", case=followed.case.case_number
        )
        # Officer 4: three refusals in one day; officer 5: two.
        for _ in range(3):
            await auditor.exchange(at=days[8], officer_serial=4, decision="refused", status=None)
        for _ in range(2):
            await auditor.exchange(at=days[8], officer_serial=5, decision="refused", status=None)
        # Officer 6: a recent query without an order (too recent to judge).
        await auditor.exchange(at=days[-1], officer_serial=6)

        html = (await auditor.client.get("/flags?days=30")).text

        def table(name: str) -> str:
            match = re.search(rf'id="flags-{name}">(.*?)</table>', html, re.S)
            return match.group(1) if match else ""

        badge = officer
        volume = table("volume")
        assert badge(1).id in volume
        assert "<strong>21</strong>" in volume
        assert "中位数 2（5 天）" in volume
        assert badge(2).id not in volume
        assert badge(2).id in table("off-hours")
        assert badge(1).id not in table("off-hours")
        no_order = table("no-order")
        assert badge(1).id in no_order
        assert followed.case.case_number not in no_order
        assert badge(6).id not in no_order
        refusals = table("refusals")
        assert badge(4).id in refusals
        assert badge(5).id not in refusals
        assert "<strong>3</strong>" in refusals

    async def test_a_quiet_log_has_no_flags(self, auditor: Bench) -> None:
        await auditor.exchange(at=auditor.clock.now.astimezone(BEIJING).replace(hour=12))
        html = (await auditor.client.get("/flags")).text
        assert "共 0 项提示" in html
        assert html.count("无。") == 4


# ------------------------------------------------------------------------------------ config


class TestConsoleConfig:
    def config(self, tmp_path: Path, **console: Any) -> GatewayConfig:
        return GatewayConfig.from_mapping(
            {
                "federation": {"dir": str(tmp_path / "fed")},
                "pipeline": {"state_dir": str(tmp_path / "state")},
                "console": console,
            }
        )

    def test_off_by_default_and_users_in_the_state_dir(self, tmp_path: Path) -> None:
        config = self.config(tmp_path)
        assert config.console == ConsoleConfig()
        assert config.console_users_dir == tmp_path / "state"

    def test_a_loopback_listener_and_a_users_dir(self, tmp_path: Path) -> None:
        config = self.config(tmp_path, listen="127.0.0.1:51051", users_dir="users")
        assert config.console.listen == "127.0.0.1:51051"
        assert config.console_users_dir == Path.cwd() / "users"

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"listen": "0.0.0.0:51051"}, "console.listen must be a loopback address"),
            ({"listen": "51051"}, "console.listen must be host:port"),
            ({"port": 1}, "unknown option"),
        ],
    )
    def test_mistakes_are_named(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            self.config(tmp_path, **options)

    def test_behind_an_https_proxy_it_may_listen_elsewhere(self, tmp_path: Path) -> None:
        config = self.config(tmp_path, listen="0.0.0.0:8443", secure_cookies=True)
        assert config.console.secure_cookies


class TestServedByTheGateway:
    async def test_the_gateway_serves_it_and_logs_its_events(
        self, old_federation: Path, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        users = UserStore.in_state_dir(state)
        users.add_user(
            "audit.wang", member_id="audit.office", display_name="王审计", role=Role.AUDITOR,
            password=PASSWORD, params=FAST,
        )  # fmt: skip
        users.close()
        config = GatewayConfig(
            federation=FederationConfig(dir=old_federation, reload_interval_s=0),
            pipeline=PipelineConfig(state_dir=state),
            server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
            console=ConsoleConfig(listen="127.0.0.1:0"),
        )
        gateway = await Gateway.start(config)
        try:
            url = gateway.console_url
            assert url is not None
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url) as client:
                token = CSRF.search((await client.get("/login")).text)
                assert token
                response = await client.post(
                    "/login",
                    data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD},
                )
                assert response.status_code == 303
                assert "检索审计日志" in (await client.get("/")).text
            last = decode_entry(await gateway.audit.get_entry(gateway.audit.size - 1))
            assert isinstance(last, EventEntry)
            assert (last.kind, last.actor) == ("console_login", "audit.wang")
        finally:
            await gateway.stop(0)
        assert gateway.console is None
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"{url}/login")

    async def test_a_console_address_in_use_stops_the_gateway_cleanly(
        self, old_federation: Path, tmp_path: Path
    ) -> None:
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            config = GatewayConfig(
                federation=FederationConfig(dir=old_federation, reload_interval_s=0),
                pipeline=PipelineConfig(state_dir=tmp_path / "state"),
                server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
                console=ConsoleConfig(listen=f"127.0.0.1:{port}"),
            )
            with pytest.raises(Exception, match="cannot listen"):
                await Gateway.start(config)
        # The audit log was closed: a new gateway can open the same state.
        again = await Gateway.start(
            GatewayConfig(
                federation=config.federation, pipeline=config.pipeline, server=config.server
            )
        )
        await again.stop(0)
