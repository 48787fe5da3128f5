"""Live monitoring (动态查询): push a monitored account's new transactions to the police.

The bank's backend knows which accounts are monitored; the node remembers, per account, which
police member asked (the ``monitor_start`` request), under which case, and the last transaction
it delivered. ``MonitorPusher.push_once`` sends each new transaction as a signed
``monitored_transaction`` report through the gateway, oldest first.

Contract:

- A transaction MUST be marked delivered only after the gateway accepted its report; if the
  gateway cannot be reached the pusher stops for this round and tries again next round, so
  nothing is skipped (a transient failure never loses a transaction).
- A report the gateway refuses for good (e.g. policy) is logged and skipped, so that one bad
  report cannot block the account's later transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from adapters import telemetry
from adapters._sqlite import Database, from_us, to_us
from adapters.bank.backend import CoreBanking
from adapters.bank.convert import transaction_pb
from adapters.reports import ReportSender, is_transient
from fedgate.errors import FedgateError
from fedgate.storage import Schema
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, report_pb2

__all__ = ["MONITOR_FILE", "MonitorLedger", "MonitorPusher", "Watch"]

MONITOR_FILE = "monitors.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watches (
    account_number TEXT PRIMARY KEY,
    police TEXT NOT NULL,
    monitor_request_id TEXT NOT NULL,
    case_info BLOB NOT NULL,
    until_us INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0
);
"""
_STORE = Schema(store="bank monitor ledger", version=1, create=_SCHEMA, legacy_table="watches")


@dataclass(frozen=True, slots=True)
class Watch:
    """Who watches an account, and the last transaction id delivered to them."""

    account_number: str
    police: MemberId
    monitor_request_id: str
    case: common_pb2.CaseInfo
    until: datetime
    last_id: int


class MonitorLedger:
    """The node's record of live monitoring orders (``monitors.sqlite`` in the state dir)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(path, schema=_STORE)

    def close(self) -> None:
        self._db.close()

    def start(
        self,
        *,
        account_number: str,
        police: str,
        monitor_request_id: str,
        case: common_pb2.CaseInfo,
        until: datetime,
        start_after_id: int,
    ) -> None:
        """Record a start order; a new order for the same account takes over (keeping the
        delivery position, so nothing is sent twice)."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO watches(account_number, police, monitor_request_id, case_info,"
                " until_us, last_id) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(account_number) DO UPDATE SET police = excluded.police,"
                " monitor_request_id = excluded.monitor_request_id,"
                " case_info = excluded.case_info, until_us = excluded.until_us, stopped = 0,"
                " last_id = MAX(last_id, excluded.last_id)",
                (account_number, police, monitor_request_id, case.SerializeToString(),
                 to_us(until), start_after_id),
            )  # fmt: skip

    def stop(self, account_number: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE watches SET stopped = 1 WHERE account_number = ?", (account_number,)
            )

    def active(self, now: datetime) -> tuple[Watch, ...]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT account_number, police, monitor_request_id, case_info, until_us, last_id"
                " FROM watches WHERE stopped = 0 AND until_us > ? ORDER BY account_number",
                (to_us(now),),
            ).fetchall()
        return tuple(
            Watch(
                account_number=acct,
                police=MemberId(police),
                monitor_request_id=rid,
                case=common_pb2.CaseInfo.FromString(case),
                until=from_us(until),
                last_id=last,
            )
            for acct, police, rid, case, until, last in rows
        )

    def delivered(self, account_number: str, transaction_id: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE watches SET last_id = MAX(last_id, ?) WHERE account_number = ?",
                (transaction_id, account_number),
            )


class MonitorPusher:
    """Delivers new transactions of watched accounts as signed reports through the gateway."""

    def __init__(
        self,
        *,
        core: CoreBanking,
        ledger: MonitorLedger,
        sender: Callable[[], ReportSender],
        clock: Callable[[], datetime],
    ) -> None:
        self._core = core
        self._ledger = ledger
        self._sender = sender
        self._clock = clock

    async def push_once(self) -> int:
        """One round over every active watch; returns how many transactions were delivered."""
        delivered = 0
        watches = await asyncio.to_thread(self._ledger.active, self._clock())
        for watch in watches:
            try:
                delivered += await self._push(watch)
            except FedgateError as exc:
                telemetry.log_event(
                    "monitored transactions not delivered; will retry",
                    logging.WARNING,
                    account=telemetry.mask(watch.account_number),
                    police=watch.police,
                    error=exc.message,
                )
        return delivered

    async def _push(self, watch: Watch) -> int:
        new = await asyncio.to_thread(
            self._core.new_transactions_since, watch.account_number, watch.last_id
        )
        count = 0
        for tx in new:
            report = report_pb2.MonitoredTransaction(
                account_number=watch.account_number,
                monitor_request_id=watch.monitor_request_id,
                transaction=transaction_pb(tx),
            )
            try:
                await self._sender().send(
                    target=watch.police,
                    report=report,
                    case=watch.case,
                    reference=f"动态查询推送-{tx.id}",
                    purpose="动态查询：推送被监控账户的新交易",
                )
                count += 1
            except FedgateError as exc:
                if is_transient(exc):
                    raise
                telemetry.log_event(
                    "monitored transaction refused by the gateway; skipped",
                    logging.ERROR,
                    account=telemetry.mask(watch.account_number),
                    transaction_id=tx.id,
                    reason=exc.reason,
                    error=exc.message,
                )
            await asyncio.to_thread(self._ledger.delivered, watch.account_number, tx.id)
        return count
