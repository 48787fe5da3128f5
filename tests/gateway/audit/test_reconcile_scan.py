"""The reconciler's scan over a real SQLite log: every open request leg is found, whichever page
of the search its request leg and its response leg fall in (``gateway.pipeline._reconcile``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from fedgate.audit_entry import RequestLeg
from gateway.audit.log import AuditLog
from gateway.pipeline import _reconcile
from gateway.pipeline._reconcile import Reconciler

if TYPE_CHECKING:
    from conftest import Fed, LogFactory

NOTHING_DUE = timedelta(days=1)
"""A grace no leg of these tests is past: a pass only scans, and never calls the node."""


def _reconciler(log: AuditLog) -> Reconciler:
    # The node, tickets and legs are reached only for a leg past the grace: none here.
    unused = cast(Any, None)
    return Reconciler(
        audit=log, router=unused, tickets=unused, forwarder=unused, legs=unused, node_timeout_s=1
    )


async def _requests(log: AuditLog, fed: Fed, count: int) -> list[tuple[RequestLeg, int]]:
    legs = [fed.request(decision="allowed" if i % 5 else "refused") for i in range(count)]
    receipts = await asyncio.gather(*(log.append(leg) for leg in legs))
    return [(leg, receipt.index) for leg, receipt in zip(legs, receipts, strict=True)]


class TestScanAcrossPages:
    async def test_every_unanswered_allowed_leg_is_open_whatever_page_holds_its_legs(
        self, sqlite_logs: LogFactory, fed: Fed
    ) -> None:
        log = await sqlite_logs.open()
        page = _reconcile._PAGE
        requests = await _requests(log, fed, 2 * page + 7)  # three pages of request legs
        allowed = [(leg, i) for leg, i in requests if leg.decision == "allowed"]
        # Answered: all but every seventh, their response legs pages after their request legs.
        unanswered = {i for n, (_, i) in enumerate(allowed) if n % 7 == 0}
        await asyncio.gather(
            *(log.append(fed.response(leg, i)) for leg, i in allowed if i not in unanswered)
        )

        reconciler = _reconciler(log)
        report = await reconciler.run_once(grace=NOTHING_DUE)

        assert len(unanswered) > 2
        assert len(allowed) - len(unanswered) > page
        assert (report.open, report.reconciled, report.left_open) == (
            len(unanswered),
            0,
            len(unanswered),
        )
        assert set(reconciler._open) == unanswered

    async def test_a_later_pass_reads_only_what_was_appended_and_closes_answered_legs(
        self, sqlite_logs: LogFactory, fed: Fed
    ) -> None:
        log = await sqlite_logs.open()
        reconciler = _reconciler(log)
        first = await _requests(log, fed, _reconcile._PAGE + 3)
        opened = {i for leg, i in first if leg.decision == "allowed"}
        assert (await reconciler.run_once(grace=NOTHING_DUE)).open == len(opened)

        # The answers to the first legs and new legs, all in one later pass.
        await asyncio.gather(*(log.append(fed.response(leg, i)) for leg, i in first if i in opened))
        second = await _requests(log, fed, 4)
        report = await reconciler.run_once(grace=NOTHING_DUE)

        assert set(reconciler._open) == {i for leg, i in second if leg.decision == "allowed"}
        assert report.open == report.left_open == len(reconciler._open)
