"""Shared test configuration.

Tests that need PostgreSQL or Chromium skip when those are missing, with a reason
that says how to enable them. With FEDGATE_REQUIRE_SERVICES=1 (set by .ci/run)
every skip is turned into a failure, so CI always runs them.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

REQUIRE_SERVICES = os.environ.get("FEDGATE_REQUIRE_SERVICES") == "1"


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
