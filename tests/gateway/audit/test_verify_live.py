"""Verifying a shard its gateway instance is still writing: checkpoints signed after the
verification read the store's end are not a truncation, a store that really ends early is."""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING

import pytest

from fedgate.auditverify import VerifyOptions, VerifyReport, verify_log
from fedgate.evidence import log_verifiers
from gateway.audit.sqlite_store import SqliteDatabase
from tests.gateway.audit.test_rollback import ORIGIN, truncated_copy

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import LogFactory


@pytest.fixture
def store_kind() -> str:
    """The SQLite store: the test reads its file directly."""
    return "sqlite"


class _StartedEarlier(SqliteDatabase):
    """The store as a verification that began ``behind`` appends ago saw its end first."""

    behind = 0

    def next_index(self) -> int:
        end = super().next_index()
        if self.behind:
            end, self.behind = end - self.behind, 0
            type(self).behind = 0
        return end


def _verify(opener: functools.partial[SqliteDatabase], logs: LogFactory) -> VerifyReport:
    return verify_log(
        opener,
        log_keys=log_verifiers(logs.fed.registry, ORIGIN),
        options=VerifyOptions(check_index=False),
    )


class TestLiveShard:
    async def test_appends_during_the_verification_are_not_a_truncation(
        self, logs: LogFactory
    ) -> None:
        log = await logs.open()
        for _ in range(4):
            request = logs.fed.request()
            receipt = await log.append(request)
            await log.append(logs.fed.response(request, receipt.index))
        await log.close()
        _StartedEarlier.behind = 2  # the last exchange was appended after the start
        report = _verify(
            functools.partial(_StartedEarlier, logs.db, origin=None, writer=False), logs
        )
        assert report.ok, report.failure
        # It carries on to the store's end: the entries read at the start are signed only by
        # the head, which has moved on (only every 256th checkpoint is kept besides it).
        assert report.entries == 8

    async def test_a_store_that_ends_before_its_checkpoint_is_still_refused(
        self, logs: LogFactory, tmp_path: Path
    ) -> None:
        log = await logs.open()
        for _ in range(4):
            request = logs.fed.request()
            receipt = await log.append(request)
            await log.append(logs.fed.response(request, receipt.index))
        await log.close()
        lite = sqlite3.connect(logs.db)
        (head,) = lite.execute("SELECT note FROM heads WHERE kind = 'signed'").fetchone()
        lite.close()
        copy = truncated_copy(logs.db, tmp_path / "copy", 8, head)
        lite = sqlite3.connect(copy, isolation_level=None)
        lite.execute("DELETE FROM leaves WHERE idx >= 6")  # entries gone, checkpoint kept
        lite.close()
        report = _verify(functools.partial(SqliteDatabase, copy, origin=None, writer=False), logs)
        assert report.failure is not None
        assert "the log was truncated: the checkpoint of size 8" in report.failure.message
        assert "the store ends at 6" in report.failure.message
