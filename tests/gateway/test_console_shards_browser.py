"""The auditor console over every audit shard, in a real browser (Debian's chromium driven by
Playwright): two gateway instances share one PostgreSQL database (each its own audit shard,
the shared state on the same database), a real bank node answers both, the central bank's
witness cosigns both shards. The police ask the bank once through each instance; the auditor on
instance 0's console finds both exchanges by their case number (each with its shard's origin),
opens both, downloads the evidence bundle of the one in instance 1's shard and ``fedgate audit
verify-bundle`` accepts it offline; the log page checks both shards' checkpoints and
cosignatures. Screenshots go to ``tests/artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from adapters.bank.node import BankNode
from adapters.config import NodeConfig
from adapters.synth import World, seed_world
from adapters.witness import WitnessNode
from fedgate.audit_entry import EventEntry, decode_entry
from fedgate.client import Answer, FedgateClient
from fedgate.testing import free_port, valid_request
from fedgate.types import MemberId
from fedgate.v1 import request_pb2
from fedgate.web.auth import Role, ScryptParams, UserStore
from gateway.config import (
    AuditConfig,
    ConsoleConfig,
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
    SharedConfig,
)
from gateway.console._shards import shard_key
from gateway.server import Gateway
from tests.gateway.test_console_browser import new_page

PASSWORD = "correct horse battery"
FAST = ScryptParams(n=2**10, r=8, p=1)
POLICE = MemberId("police.gd.afc")
BANK = MemberId("bank.icbc")
PBOC = MemberId("pboc.gz")
ORIGINS = ("fedgate.test/gateway/shard-0", "fedgate.test/gateway/shard-1")

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # the chromium fixture skips if it is missing


@dataclass
class Federation:
    """Two gateway instances on one PostgreSQL database; the console is instance 0's."""

    fed: Path
    world: World
    gateways: list[Gateway]
    police: list[FedgateClient]

    @property
    def url(self) -> str:
        url = self.gateways[0].console_url
        assert url is not None
        return url


def drop_schemas(dsn: str, prefix: str) -> None:
    """The shared stores' schemas (``<schema>_replay``, ...); the ``pg`` fixture drops its own."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        names = admin.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix + "_",)
        ).fetchall()
        for (name,) in names:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
async def federation(gw_federation: Path, tmp_path: Path, pg: Any) -> AsyncIterator[Federation]:
    fed = tmp_path / "fed"
    shutil.copytree(gw_federation, fed)
    world = seed_world(tmp_path / "world", seed=7, customers_per_bank=20, fraud_chains=3)
    node = BankNode.open(
        NodeConfig(
            member_id=BANK,
            federation_dir=fed,
            state_dir=tmp_path / "node",
            listen="127.0.0.1:0",
            backend_path=world.database(BANK),
            monitor_poll_s=3600.0,
        )
    )
    await node.start()
    witness_listen = f"127.0.0.1:{free_port()}"
    witness = WitnessNode(
        federation=fed, member=PBOC, state=tmp_path / "pboc", origins=list(ORIGINS),
        listen=witness_listen,
    )  # fmt: skip
    await witness.start()
    gateways: list[Gateway] = []
    police: list[FedgateClient] = []
    try:
        for n, origin in enumerate(ORIGINS):
            state = tmp_path / f"gateway-{n}"
            if n == 0:
                users = UserStore.in_state_dir(state)
                users.add_user(
                    "audit.wang", member_id="audit.office", display_name="王审计",
                    role=Role.AUDITOR, password=PASSWORD, params=FAST,
                )  # fmt: skip
                users.close()
            gateway = await Gateway.start(
                GatewayConfig(
                    federation=FederationConfig(dir=fed, reload_interval_s=0),
                    pipeline=PipelineConfig(state_dir=state, replay_store=""),
                    server=ServerConfig(listen="127.0.0.1:0", grace_period_s=0.5),
                    audit=AuditConfig(
                        store="postgres",
                        dsn=pg.dsn,
                        schema=pg.schema,
                        origin=origin,
                        witnesses=(PBOC,),
                    ),
                    shared=SharedConfig(store="postgres", schema=pg.schema),
                    routing=RoutingConfig(
                        timeout_s=5.0, endpoints={BANK: node.endpoint, PBOC: witness_listen}
                    ),
                    **({"console": ConsoleConfig(listen="127.0.0.1:0")} if n == 0 else {}),
                )
            )
            gateways.append(gateway)
            police.append(FedgateClient.from_federation(fed, POLICE, endpoint=gateway.endpoint))
        yield Federation(fed, world, gateways, police)
    finally:
        for client in police:
            await client.close()
        for gateway in reversed(gateways):
            await gateway.stop(0.5)
        await node.stop(grace=None)
        await witness.stop(0)
        drop_schemas(pg.dsn, pg.schema)


class TestTheConsoleCoversEveryShard:
    async def test_an_auditor_finds_opens_and_exports_both_instances_exchanges(
        self, chromium: Any, federation: Federation, tmp_path: Path
    ) -> None:
        # One exchange through each instance, both in one case.
        hops = [h for c in federation.world.chains for h in c.hops if h.to_bank == BANK]
        case = ""
        answers: list[Answer] = []
        for n, client in enumerate(federation.police):
            request = valid_request("account_holder", now=datetime.now(UTC), serial=3 + n)
            request.account_holder.account_number = hops[n].to_account
            if case:
                request.case.case_number = case
            case = request.case.case_number
            answer = await client.ask(request)
            assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
            assert answer.receipt.log_origin == ORIGINS[n]
            answers.append(answer)
        for gateway in federation.gateways:
            await gateway.audit.cosigned_covering(gateway.audit.size, timeout_s=10.0)
        url = federation.url
        other = shard_key(ORIGINS[1])
        mine_leaf = answers[0].receipt.request_leaf_index
        theirs_leaf = answers[1].receipt.request_leaf_index
        theirs_answer = answers[1].receipt.leaf_index
        bundle_path = tmp_path / "bundle.json"
        page = await chromium.run(new_page, chromium.browser)

        def find_and_open() -> dict[str, str]:
            page.goto(f"{url}/")
            page.wait_for_url(f"{url}/login?next=/")
            page.fill("#user", "audit.wang")
            page.fill("#password", PASSWORD)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{url}/")
            page.focus("#s-case")
            page.keyboard.type(case)
            page.keyboard.press("Enter")
            page.wait_for_selector("#results")
            chromium.shot(page, "audit-shards-search.png")
            seen = {"results": page.inner_text("#results")}
            page.click(f"#open-{mine_leaf}")
            page.wait_for_url(f"{url}/entries/{mine_leaf}")
            seen["mine"] = page.inner_text("main")
            page.go_back()
            page.click(f"#open-{other}-{theirs_leaf}")
            page.wait_for_url(f"{url}/shards/{other}/entries/{theirs_leaf}")
            chromium.shot(page, "audit-shards-entry.png")
            seen["theirs"] = page.inner_text("main")
            page.click("#full-evidence summary")
            page.fill("#export-reason", "移送检察院")
            with page.expect_download() as download:
                page.click("#download-full")
            seen["bundle_name"] = download.value.suggested_filename
            download.value.save_as(str(bundle_path))
            page.goto(f"{url}/log")
            chromium.shot(page, "audit-shards-log.png")
            seen["log"] = page.inner_text("main")
            page.goto(f"{url}/charts?days=7")
            seen["bars"] = str(page.locator("svg rect.bar").count())
            return seen

        seen = await chromium.run(find_and_open)
        await chromium.run(lambda: page.context.close())
        results = seen["results"]
        assert results.count(case) == 4  # both legs of both exchanges
        assert all(origin in results for origin in ORIGINS)
        for text, leaf, origin in ((seen["mine"], mine_leaf, 0), (seen["theirs"], theirs_leaf, 1)):
            assert ORIGINS[origin] in text
            assert "请求签名有效，由 police.gd.afc" in text
            assert "答复由 bank.icbc 签名，并绑定到本请求" in text
            assert f"第 {leaf} 条记录包含在" in text
            assert "验证失败" not in text
        assert f"第 {theirs_answer} 条记录包含在" in seen["theirs"]
        assert seen["bundle_name"] == f"fedgate-evidence-{other}-{theirs_leaf}.json"
        # The log page checks each shard: signed by the gateway's key, cosigned by the witness.
        log_page = seen["log"]
        assert all(origin in log_page for origin in ORIGINS)
        assert log_page.count("由网关密钥签署") == 2
        assert log_page.count("pboc.gz") >= 2
        assert "验证失败" not in log_page
        assert int(seen["bars"]) >= 1

        # The bundle of instance 1's exchange verifies offline, with the federation's keys only.
        verified = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "fedgate.cli", "audit", "verify-bundle", str(bundle_path),
             "--federation", str(federation.fed)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert f"evidence bundle for entry {theirs_leaf} of {ORIGINS[1]}" in verified.stdout
        assert f"signed by {BANK}" in verified.stdout
        assert "pboc.gz" in verified.stdout

        # The export is an entry of instance 0's own log, naming the shard; the other shard is
        # untouched by the console (read-only).
        log = federation.gateways[0].audit
        events = [decode_entry(await log.get_entry(i)) for i in range(log.size)]
        exports = [dict(e.detail) for e in events if isinstance(e, EventEntry)]
        assert {
            "entry": str(theirs_leaf),
            "reason": "移送检察院",
            "shard": ORIGINS[1],
        } in exports
        theirs = federation.gateways[1].audit
        kinds = [decode_entry(await theirs.get_entry(i)) for i in range(theirs.size)]
        assert not any(isinstance(e, EventEntry) for e in kinds)
