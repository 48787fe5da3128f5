"""Shared test configuration.

Tests that need PostgreSQL or Chromium skip when those are missing, with a reason
that says how to enable them. With FEDGATE_REQUIRE_SERVICES=1 (set by .ci/run)
every skip is turned into a failure, so CI always runs them.

The browser tests share ``chromium``: one headless Debian chromium per module, driven by
Playwright in its own thread (``BrowserThread``), screenshots under ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

REQUIRE_SERVICES = os.environ.get("FEDGATE_REQUIRE_SERVICES") == "1"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_MISSING = "chromium not found at /usr/bin/chromium: run scripts/install-browser.sh"
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"

_T = TypeVar("_T")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if REQUIRE_SERVICES and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under FEDGATE_REQUIRE_SERVICES=1, which forbids skips: {reason}"
    return report


class BrowserThread:
    """Playwright's sync API confined to one thread; ``run`` awaits a step done there, so the
    test's event loop keeps serving meanwhile. ``shot`` saves a page's screenshot (in a step)."""

    shots = SCREENSHOTS

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright: Any = None
        self.browser: Any = None

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )

    def _close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    def start(self) -> None:
        self._pool.submit(self._launch).result()

    def stop(self) -> None:
        self._pool.submit(self._close).result()
        self._pool.shutdown()

    async def run(self, step: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, step, *args)

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / name), full_page=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[BrowserThread]:
    """One headless Debian chromium per test module; skips when it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    thread = BrowserThread()
    thread.start()
    yield thread
    thread.stop()


# -- PostgreSQL: a schema of its own per test ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgTarget:
    dsn: str
    schema: str


@pytest.fixture
def pg() -> Iterator[PgTarget]:
    """A unique, empty schema on the test PostgreSQL, dropped afterwards."""
    dsn = os.environ.get("FEDGATE_PG_DSN", DEFAULT_PG_DSN)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip(
            "PostgreSQL not reachable at 127.0.0.1:5432: start it (pg_ctlcluster <ver> main "
            "start) or set FEDGATE_PG_DSN"
        )
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    try:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        yield PgTarget(dsn, schema)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.close()


@pytest.fixture
def pg_dsn(pg: PgTarget) -> str:
    """The DSN of ``pg`` with its unique schema as search path."""
    return f"{pg.dsn}?options=-csearch_path%3D{pg.schema}"
