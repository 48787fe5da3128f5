"""The centre's countermeasure statistics (a projection of the audit log and the risk list log)
and the auditor console's countermeasures page: counts per day, never a number or a name."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fedgate.audit_entry import EventEntry, RequestLeg
from fedgate.keys import load_private_key
from fedgate.note import NoteSigner
from fedgate.pki import FederationLayout, init_federation
from fedgate.registry import Registry
from fedgate.risklist import risklist_origin
from fedgate.types import CHINA_TIME, MemberId
from fedgate.v1 import risklist_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from gateway.audit.insights import LogInsights
from gateway.audit.log import AuditLog
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.console import AuditorConsole, Countermeasures
from gateway.risklist import CentreStats, RiskListLog

ORIGIN = "fedgate.test/gateway/shard-0"
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
R = risklist_pb2
VICTIM = "13912345678"


@dataclass
class Centre:
    log: AuditLog
    risklist: RiskListLog
    stats: CentreStats
    client: httpx.AsyncClient
    insights: LogInsights
    users: UserStore


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_federation(tmp_path_factory.mktemp("counter-console") / "fed")


@pytest.fixture
async def centre(federation: Path, tmp_path: Path) -> AsyncIterator[Centre]:
    key = load_private_key(FederationLayout(federation).signing_key(MemberId("gateway")))
    db = tmp_path / "audit.sqlite"
    log = await AuditLog.open(
        store=await open_sqlite_store(db, origin=ORIGIN),
        origin=ORIGIN,
        signer=NoteSigner(name=ORIGIN, private_key=key),
    )
    origin = risklist_origin(ORIGIN)
    risklist = RiskListLog.open(
        tmp_path / "risklist.sqlite", origin=origin, signer=NoteSigner(name=origin, private_key=key)
    )
    registry = Registry.load_dir(federation)

    def kind(member: str) -> str:
        found = registry.find(member)
        return found.kind.value if found is not None else ""

    stats = CentreStats(tmp_path / "stats.sqlite", member_kind=kind)
    insights = await LogInsights.open(db, catch_up=log.catch_up_soon)
    users = UserStore.in_state_dir(tmp_path)
    users.add_user(
        "audit.wang",
        member_id=MemberId("audit.office"),
        display_name="王审计",
        role=Role.AUDITOR,
        password=PASSWORD,
        params=ScryptParams(n=2**10, r=8, p=1),
    )
    console = AuditorConsole(
        log=log,
        insights=insights,
        registry=lambda: registry,
        users=users,
        state_dir=tmp_path,
        countermeasures=Countermeasures(stats=stats, audit=log, risklist=risklist),
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=console.app), base_url="http://console.test"
    )
    try:
        yield Centre(log, risklist, stats, client, insights, users)
    finally:
        await client.aclose()
        await insights.close()
        await log.close()
        await risklist.close()
        stats.close()
        users.close()


def _change(category: int, value: str, at: datetime) -> R.RiskListChange:
    change = R.RiskListChange(kind=R.RISK_CHANGE_KIND_ADD, reason="test")
    change.changed_at.FromDatetime(at)
    change.entry.category = category
    change.entry.value = value
    change.entry.expires_at.FromDatetime(at + timedelta(days=90))
    return change


async def _fill(c: Centre, now: datetime) -> None:
    for category, value in (
        (R.RISK_CATEGORY_PHONE_NUMBER, "15212345678"),
        (R.RISK_CATEGORY_PHONE_NUMBER, "15212345679"),
        (R.RISK_CATEGORY_DOMAIN, "fake-bank.example"),
    ):
        change = _change(category, value, now)
        await c.risklist.change(lambda _, ch=change: ch)
    for i in range(3):
        await c.log.append(
            RequestLeg(
                envelope=b"x",
                peer="carrier.cmcc",
                peer_cert_sha256="0" * 64,
                received_at=now,
                decision="allowed" if i < 2 else "refused",
                rule="",
                request_id=f"r{i}",
                requesting_agency="carrier.cmcc",
                action="early_warning",
                target_agency="police.gd.afc",
                subjects=(VICTIM,),
            )
        )
    day = now.astimezone(CHINA_TIME).date().isoformat()
    for blocked in ("5", "9"):  # a later report of the same day replaces the earlier one
        await c.log.append(
            EventEntry(
                kind="interception_counts",
                actor="carrier.cmcc.node",
                member="carrier.cmcc",
                at=now,
                detail=(("day", day), ("kind", "voice"), ("seen", "100"), ("blocked", blocked)),
            )
        )
    # a bank may record events, but its "interception counts" and "contacts" count for nothing
    for kind, detail in (
        ("interception_counts", (("day", day), ("kind", "voice"), ("blocked", "1000"))),
        ("dissuasion_contact", (("outcome", "persuaded"), ("within_deadline", "yes"))),
    ):
        await c.log.append(
            EventEntry(kind=kind, actor="x", member="bank.icbc", at=now, detail=detail)
        )
    for outcome, in_time in (("persuaded", "yes"), ("not_reached", "yes"), ("reached", "no")):
        await c.log.append(
            EventEntry(
                kind="dissuasion_contact",
                actor="440100123",
                member="police.gd.afc",
                at=now,
                detail=(("task", "t"), ("outcome", outcome), ("within_deadline", in_time)),
            )
        )


class TestCentreStats:
    async def test_counts_per_day_from_both_logs_incrementally(self, centre: Centre) -> None:
        now = datetime.now(UTC)
        await _fill(centre, now)
        await centre.stats.catch_up(centre.log, centre.risklist)
        await centre.stats.catch_up(centre.log, centre.risklist)  # nothing counted twice
        first = now.astimezone(CHINA_TIME).date() - timedelta(days=1)

        def counts(metric: str) -> dict[str, int]:
            return {c.key: c.count for c in centre.stats.per_day(metric, first, 3)}

        assert counts("listed") == {"phone": 2, "domain": 1}
        assert counts("warnings") == {"carrier.cmcc": 2}
        assert counts("intercepted") == {"voice": 9}
        assert counts("dissuasion") == {"contacted_in_time": 1, "persuaded": 1}


class TestPage:
    async def test_the_auditor_sees_the_charts_and_no_personal_data(self, centre: Centre) -> None:
        await _fill(centre, datetime.now(UTC))
        page = await centre.client.get("/login")
        token = CSRF.search(page.text)
        assert token is not None
        login = await centre.client.post(
            "/login",
            data={"csrf": token.group(1), "user": "audit.wang", "password": PASSWORD, "next": "/"},
        )
        assert login.status_code == 303
        response = await centre.client.get("/countermeasures?lang=en")
        assert response.status_code == 200
        html = response.text
        for title in (
            "Fraud calls and SMS intercepted",
            "Entries listed, by category",
            "Early warnings, by reporting member",
            "Dissuasion",
        ):
            assert title in html
        for chart in ("chart-intercepted", "chart-listed", "chart-warnings", "chart-dissuasion"):
            assert f'id="{chart}"' in html
        assert "<svg" in html
        assert "Phone numbers" in html
        assert "Calls" in html
        assert "Persuaded" in html
        assert VICTIM not in html
        assert "15212345678" not in html
        assert "fake-bank" not in html
        chinese = await centre.client.get("/countermeasures?lang=zh")
        assert "技术反制与预警劝阻" in chinese.text
        assert '"/countermeasures"' in chinese.text  # in the navigation

    async def test_the_page_needs_a_login(self, centre: Centre) -> None:
        response = await centre.client.get("/countermeasures")
        assert response.status_code in (302, 303)
